//! The day ledger against the exact computation, on random histories whose events
//! arrive in any order (a rollback or an incident days after its deploy, a deploy's
//! event after later ones).

use chrono::{DateTime, Duration, Utc};
use toronto_protocol::incidents::{IncidentEvent, IncidentEventKind, IncidentState, Severity};
use toronto_protocol::rollout::{Rollout, RolloutEvent};
use toronto_protocol::tasks::{
    Change, DeployTask, DoraQuery, DoraReport, Plan, PlanState, PlanTask, Strategy,
};
use uuid::Uuid;

use super::days::Ledger;
use super::history::History;
use super::ledger::HORIZON;
use super::summary::RELATIVE_ERROR;

/// A small deterministic generator (xorshift), so a failure can be run again.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, max: Duration) -> Duration {
        Duration::milliseconds(self.below(max.num_milliseconds() as u64) as i64)
    }
}

enum Event {
    Rollout(RolloutEvent, Rollout),
    Plan(Plan),
    Incident(IncidentEventKind, IncidentEvent),
}

fn rollout(service: &str, env: &str, phase: &str, ended: DateTime<Utc>) -> Rollout {
    serde_json::from_value(serde_json::json!({
        "id": Uuid::now_v7(), "service": service, "environment": env,
        "version": "1.0.0", "image": "shop:1", "strategy": {"kind": "canary", "steps": []},
        "replicas": 3, "phase": phase, "steps": [], "step_index": 0, "weight": 0,
        "rolled_back": false, "is_rollback": false,
        "idempotency_key": "k", "created_at": ended - Duration::seconds(90),
        "updated_at": ended, "finished_at": ended,
    }))
    .unwrap()
}

fn plan(id: Uuid, commit: DateTime<Utc>) -> Plan {
    let task = DeployTask {
        service: "svc".into(),
        version: "1".into(),
        image: None,
        environment: "production".into(),
        strategy: Strategy::Rolling,
        change: Some(Change {
            commit: None,
            author: None,
            link: None,
            commit_time: Some(commit),
        }),
        fix: false,
        policy_override: None,
    };
    Plan {
        id,
        task_id: id.to_string(),
        task: PlanTask::Deploy(Box::new(task)),
        state: PlanState::Completed,
        requested_by: "toronto://test".into(),
        requested_by_principal: None,
        correlationid: "c".into(),
        intake: "submit".into(),
        created_at: commit,
        cancellation: None,
        steps: vec![],
        reason: None,
        decisions: vec![],
        updated_at: None,
        artifacts: vec![],
        lease: None,
        delegation: None,
    }
}

fn incident(
    id: Uuid,
    state: IncidentState,
    changes: Vec<Uuid>,
    detected: DateTime<Utc>,
    at: DateTime<Utc>,
) -> IncidentEvent {
    IncidentEvent {
        id,
        key: "k".into(),
        title: "t".into(),
        service: "svc".into(),
        environment: "production".into(),
        state,
        severity: Severity::Sev2,
        alerts_firing: 1,
        alerts_total: 1,
        change: "updated".into(),
        changes,
        detected_at: Some(detected),
        by: None,
        at,
    }
}

/// `deploys` deploys over `days` days before `now`, with rollbacks, commits and
/// incidents, shuffled.
fn history(seed: u64, now: DateTime<Utc>, deploys: usize, days: i64) -> Vec<Event> {
    let mut rng = Random(seed);
    let span = Duration::days(days);
    let services = ["a", "b", "c"];
    let mut events = Vec::new();
    let mut ended = Vec::new();
    for _ in 0..deploys {
        let service = services[rng.below(3) as usize];
        let env = if rng.below(5) == 0 {
            "staging"
        } else {
            "production"
        };
        let end = now - Duration::hours(1) - rng.millis(span);
        let aborted = rng.below(7) == 0;
        let (what, phase) = if aborted {
            (RolloutEvent::Aborted, "aborted")
        } else {
            (RolloutEvent::Succeeded, "succeeded")
        };
        let mut r = rollout(service, env, phase, end);
        if rng.below(2) == 0 {
            let plan_id = Uuid::now_v7();
            r.plan_id = Some(plan_id);
            events.push(Event::Plan(plan(
                plan_id,
                end - rng.millis(Duration::days(3)),
            )));
        }
        ended.push((r.id, end));
        events.push(Event::Rollout(what, r));
    }
    // Rollbacks, some right after a deploy, some days later.
    for _ in 0..deploys / 8 {
        let service = services[rng.below(3) as usize];
        let (_, after) = ended[rng.below(ended.len() as u64) as usize];
        let max = if rng.below(2) == 0 {
            Duration::hours(3)
        } else {
            Duration::days(8)
        };
        let later = rng.millis(max);
        let mut r = rollout(service, "production", "succeeded", (after + later).min(now));
        r.is_rollback = true;
        events.push(Event::Rollout(RolloutEvent::RolledBack, r));
    }
    // Incidents linked to deploys, detected up to two days after them, most mitigated.
    for _ in 0..deploys / 10 {
        let id = Uuid::now_v7();
        let (change, end) = ended[rng.below(ended.len() as u64) as usize];
        let detected = end + rng.millis(Duration::days(2));
        let mut changes = vec![change];
        // Sometimes a second change, deployed in the week before the detection.
        let (other, other_end) = ended[rng.below(ended.len() as u64) as usize];
        if rng.below(2) == 0 && other_end <= detected && detected - other_end < Duration::days(7) {
            changes.push(other);
        }
        events.push(Event::Incident(
            IncidentEventKind::Opened,
            incident(id, IncidentState::Triggered, vec![], detected, detected),
        ));
        events.push(Event::Incident(
            IncidentEventKind::Updated,
            incident(
                id,
                IncidentState::Triggered,
                changes.clone(),
                detected,
                detected,
            ),
        ));
        if rng.below(4) != 0 {
            let at = detected + rng.millis(Duration::hours(6));
            events.push(Event::Incident(
                IncidentEventKind::Mitigated,
                incident(id, IncidentState::Mitigated, changes, detected, at),
            ));
        }
    }
    // Any order (Fisher-Yates).
    for i in (1..events.len()).rev() {
        events.swap(i, rng.below(i as u64 + 1) as usize);
    }
    events
}

fn fold(events: &[Event], now: DateTime<Utc>) -> (Ledger, History) {
    let (mut ledger, mut exact) = (Ledger::default(), History::default());
    for e in events {
        match e {
            Event::Rollout(what, r) => {
                ledger.rollout(*what, r, now);
                exact.rollout(*what, r, now);
            }
            Event::Plan(p) => {
                ledger.plan_completed(p);
                exact.plan_completed(p);
            }
            Event::Incident(what, i) => {
                ledger.incident(*what, i);
                exact.incident(*what, i);
            }
        }
    }
    (ledger, exact)
}

fn close(ours: Option<f64>, exact: Option<f64>, what: &str) {
    match (ours, exact) {
        (Some(a), Some(e)) => assert!(
            (a - e).abs() <= RELATIVE_ERROR * e.abs() + 1e-3,
            "{what}: {a} against exact {e}"
        ),
        _ => assert_eq!(ours, exact, "{what}"),
    }
}

fn same(ours: &DoraReport, exact: &DoraReport, q: &DoraQuery) {
    let what = format!("{q:?}");
    assert_eq!(ours.deployments, exact.deployments, "{what}");
    assert_eq!(ours.failed_changes, exact.failed_changes, "{what}");
    assert_eq!(ours.failures_by_cause, exact.failures_by_cause, "{what}");
    assert_eq!(
        ours.change_failure_rate, exact.change_failure_rate,
        "{what}"
    );
    close(
        ours.lead_time_mean_seconds,
        exact.lead_time_mean_seconds,
        &what,
    );
    close(
        ours.lead_time_median_seconds,
        exact.lead_time_median_seconds,
        &what,
    );
    close(
        ours.time_to_restore_median_seconds,
        exact.time_to_restore_median_seconds,
        &what,
    );
    assert_eq!(ours.trend.len(), exact.trend.len());
    for (o, e) in ours.trend.iter().zip(&exact.trend) {
        assert_eq!((o.start, o.end), (e.start, e.end));
        assert_eq!(o.deployments, e.deployments, "{what}");
        assert_eq!(o.failed_changes, e.failed_changes, "{what}");
        close(
            o.lead_time_median_seconds,
            e.lead_time_median_seconds,
            &what,
        );
        close(
            o.time_to_restore_median_seconds,
            e.time_to_restore_median_seconds,
            &what,
        );
    }
}

fn queries() -> Vec<DoraQuery> {
    let mut out = Vec::new();
    for service in [None, Some("a"), Some("b")] {
        for hours in [0, 1, 5, 24, 100, 168] {
            for (days, weeks) in [(30, 0), (7, 1), (92, 13)] {
                out.push(DoraQuery {
                    service: service.map(String::from),
                    environment: None,
                    window_days: Some(days),
                    failure_window_hours: Some(hours),
                    weeks: Some(weeks),
                });
            }
        }
    }
    out.push(DoraQuery {
        environment: Some("staging".into()),
        weeks: Some(4),
        ..Default::default()
    });
    out
}

#[test]
fn the_day_ledger_gives_the_exact_figures_within_the_sketch_error() {
    let now = Utc::now();
    for (seed, deploys) in [(7, 60), (11, 400), (13, 3000)] {
        let events = history(seed, now, deploys, 100);
        let (mut ledger, exact) = fold(&events, now);
        for q in queries() {
            same(
                &ledger.report(&q, now),
                &super::compute(&q, &exact, now),
                &q,
            );
        }
    }
}

#[test]
fn dropping_old_days_keeps_every_window_the_same() {
    let now = Utc::now();
    let events = history(17, now, 2000, 130);
    let (mut ledger, mut exact) = fold(&events, now);
    ledger.retain_since(now - HORIZON);
    exact.retain_since(now - HORIZON);
    for q in queries() {
        same(
            &ledger.report(&q, now),
            &super::compute(&q, &exact, now),
            &q,
        );
    }
}

#[test]
fn a_failure_found_days_later_counts_against_its_deploy() {
    let now = Utc::now();
    let mut ledger = Ledger::default();
    let q = DoraQuery {
        failure_window_hours: Some(168),
        ..Default::default()
    };
    let deploy = rollout("shop", "production", "succeeded", now - Duration::days(6));
    ledger.rollout(RolloutEvent::Succeeded, &deploy, now);
    assert_eq!(ledger.report(&q, now).failed_changes, 0);
    // Three days later, a rollback.
    let mut back = rollout("shop", "production", "succeeded", now - Duration::days(3));
    back.is_rollback = true;
    ledger.rollout(RolloutEvent::RolledBack, &back, now);
    let r = ledger.report(&q, now);
    assert_eq!((r.failed_changes, r.failures_by_cause.rolled_back), (1, 1));
    assert_eq!(r.time_to_restore_median_seconds, Some(3.0 * 86_400.0));
    // With the default 24 h window it does not count.
    assert_eq!(ledger.report(&DoraQuery::default(), now).failed_changes, 0);
    // A deploy before the rollback, arriving last, takes the blame instead.
    let late = rollout("shop", "production", "succeeded", now - Duration::days(4));
    ledger.rollout(RolloutEvent::Succeeded, &late, now);
    let r = ledger.report(&q, now);
    assert_eq!((r.deployments, r.failed_changes), (2, 1));
    assert_eq!(r.time_to_restore_median_seconds, Some(86_400.0));
}
