use super::*;
use crate::engine::testing::{World, fire};
use chrono::Duration;
use toronto_protocol::incidents::Severity;
use toronto_protocol::rollout::RolloutEvent;
use uuid::Uuid;

const API: &[(&str, &str)] = &[
    ("alertname", "Errors"),
    ("service", "api"),
    ("environment", "production"),
];

fn change(w: &World, service: &str, env: &str, minutes_ago: i64, version: &str) -> RecentChange {
    RecentChange {
        rollout_id: Uuid::now_v7(),
        service: service.into(),
        environment: env.into(),
        version: version.into(),
        previous_version: Some("1.0.0".into()),
        finished_at: w.now - Duration::minutes(minutes_ago),
    }
}

#[test]
fn the_change_in_effect_before_the_first_alert_is_linked_and_raises_severity() {
    let mut w = World::new();
    let older = change(&w, "api", "production", 30, "1.1.0");
    let latest = change(&w, "api", "production", 10, "1.2.0");
    let elsewhere = change(&w, "api", "staging", 5, "1.3.0");
    let other = change(&w, "db", "production", 5, "9.0.0");
    for c in [older, latest.clone(), elsewhere, other] {
        w.run(|st, t| record_change(st, t, c));
    }
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    let inc = w.open_incident();
    assert_eq!(
        inc.changes.len(),
        1,
        "only the change in effect: {:?}",
        inc.changes
    );
    assert_eq!(inc.changes[0].rollout_id, latest.rollout_id);
    assert_eq!(inc.changes[0].seconds_before_alert, 600);
    assert_eq!(inc.severity, Severity::Sev2, "default SEV3 raised one step");
    assert!(inc.severity_reason.contains("recent change"));
    assert!(inc.timeline.iter().any(|e| e.kind == TimelineKind::Change));
}

#[test]
fn changes_outside_the_window_or_after_the_alert_are_not_linked() {
    let mut w = World::new();
    let window = w.settings.change_window.as_secs() as i64 / 60;
    let stale = change(&w, "api", "production", window + 1, "1.1.0");
    w.run(|st, t| record_change(st, t, stale));
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    assert!(w.open_incident().changes.is_empty());
    assert_eq!(w.open_incident().severity, Severity::Sev3);
    // A rollout that finished after the first alert did not cause it.
    w.advance(60);
    let after = change(&w, "api", "production", 0, "1.2.0");
    w.run(|st, t| record_change(st, t, after));
    assert!(w.open_incident().changes.is_empty());
}

#[test]
fn a_change_recorded_late_is_linked_to_the_open_incident() {
    let mut w = World::new();
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    w.effects.clear();
    let late = change(&w, "api", "production", 2, "1.2.0");
    w.run(|st, t| record_change(st, t, late.clone()));
    let inc = w.open_incident();
    assert_eq!(inc.changes.len(), 1);
    assert_eq!(inc.severity, Severity::Sev2);
    assert!(
        inc.timeline.iter().any(
            |e| e.kind == TimelineKind::Severity && e.text.starts_with("severity SEV3 -> SEV2")
        )
    );
    let events = w.take_incident_events();
    assert_eq!(events.len(), 1);
    assert!(
        events[0]
            .1
            .change
            .starts_with("change linked; severity SEV2")
    );
    // The same rollout recorded twice changes nothing.
    w.run(|st, t| record_change(st, t, late));
    assert!(w.take_incident_events().is_empty());
    assert_eq!(w.st.changes.len(), 1);
}

fn rules() -> World {
    World::with_policy(
        r#"
default_severity: sev4
severity_rules:
  - severity: sev1
    labels: { customer_facing: "true" }
    environments: [production]
  - severity: sev2
    slo_tiers: [gold]
  - severity: sev3
    min_services: 2
"#,
    )
}

#[test]
fn the_first_matching_severity_rule_wins() {
    let mut w = rules();
    let now = w.now;
    w.ingest(vec![
        fire(
            "cf",
            &[
                ("service", "a"),
                ("environment", "production"),
                ("customer_facing", "true"),
                ("slo_tier", "gold"),
            ],
            now,
        ),
        fire(
            "cfs",
            &[
                ("service", "b"),
                ("environment", "staging"),
                ("customer_facing", "true"),
                ("slo_tier", "gold"),
            ],
            now,
        ),
        fire(
            "plain",
            &[("service", "c"), ("environment", "production")],
            now,
        ),
    ]);
    let sev = |fp: &str| {
        let id = w.st.alert(fp).unwrap().incident.unwrap();
        let inc = w.st.incident(id).unwrap();
        (inc.severity, inc.severity_reason.clone())
    };
    assert_eq!(sev("cf"), (Severity::Sev1, "severity rule 1".into()));
    assert_eq!(
        sev("cfs"),
        (Severity::Sev2, "severity rule 2".into()),
        "rule 1 is production only"
    );
    assert_eq!(sev("plain"), (Severity::Sev4, "default severity".into()));
}

#[test]
fn a_second_service_joining_can_raise_severity_by_rule() {
    let mut w = World::with_policy(
        r#"
default_severity: sev4
severity_rules:
  - severity: sev2
    min_services: 2
"#,
    );
    w.settings.group_by = vec!["environment".into()];
    let now = w.now;
    w.ingest(vec![fire("a", &[("service", "a")], now)]);
    assert_eq!(w.open_incident().severity, Severity::Sev4);
    w.ingest(vec![fire("b", &[("service", "b")], now)]);
    let inc = w.open_incident();
    assert_eq!(inc.severity, Severity::Sev2);
    assert!(
        inc.timeline
            .iter()
            .any(|e| e.text == "severity SEV4 -> SEV2 (severity rule 1)")
    );
}

#[test]
fn a_severity_set_by_hand_is_kept() {
    let mut w = World::new();
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    let id = w.open_incident().id;
    let inc = w.st.incidents.get_mut(&id).unwrap();
    inc.severity = Severity::Sev4;
    inc.severity_manual = true;
    let late = change(&w, "api", "production", 1, "2.0.0");
    w.run(|st, t| record_change(st, t, late));
    let inc = w.open_incident();
    assert_eq!(inc.changes.len(), 1, "still linked");
    assert_eq!(inc.severity, Severity::Sev4, "not raised");
}

#[test]
fn rollout_events_go_once_on_the_timeline_of_affected_open_incidents() {
    let mut w = World::new();
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    let r: Rollout = serde_json::from_value(serde_json::json!({
        "id": Uuid::now_v7(), "service": "api", "environment": "production",
        "version": "1.0.1", "image": "api:1.0.1", "strategy": {"kind": "rolling"},
        "replicas": 3, "phase": "progressing", "steps": [], "step_index": 0, "weight": 0,
        "idempotency_key": "k", "created_at": now, "updated_at": now, "is_rollback": true
    }))
    .expect("a rollout");
    let mut other = r.clone();
    other.environment = "staging".into();
    w.advance(10);
    let at = w.now;
    w.run(|st, t| note_rollout(st, t, RolloutEvent::Succeeded, &r, at));
    w.run(|st, t| note_rollout(st, t, RolloutEvent::Succeeded, &r, at));
    w.run(|st, t| note_rollout(st, t, RolloutEvent::Started, &other, at));
    // Before the incident opened: not its business.
    let before = now - Duration::seconds(1);
    w.run(|st, t| note_rollout(st, t, RolloutEvent::Started, &r, before));
    let n = w
        .open_incident()
        .timeline
        .iter()
        .filter(|e| e.kind == TimelineKind::Rollout)
        .count();
    assert_eq!(n, 1);
    let entry = w.open_incident().timeline.last().unwrap().clone();
    assert_eq!(entry.by.as_deref(), Some("deployer"));
    assert!(entry.text.ends_with("(rollback)"), "{}", entry.text);
}

#[test]
fn the_severity_label_gives_the_severity_when_no_rule_matches() {
    let mut w = World::with_policy(
        r#"
default_severity: sev4
severity_rules:
  - severity: sev3
    labels: { team: "storage" }
severity_labels:
  map: { warning: sev2 }
"#,
    );
    let now = w.now;
    let alert = |fp: &'static str, labels: &[(&'static str, &'static str)]| {
        let mut all = vec![("alertname", fp), ("service", fp)];
        all.extend_from_slice(labels);
        fire(fp, &all, now)
    };
    w.ingest(vec![
        alert(
            "crit",
            &[("severity", "critical"), ("environment", "production")],
        ),
        alert(
            "crit-stg",
            &[("severity", "CRITICAL"), ("environment", "staging")],
        ),
        alert(
            "high-tier",
            &[
                ("severity", "high"),
                ("environment", "production"),
                ("slo_tier", "critical"),
            ],
        ),
        alert(
            "warn",
            &[("severity", "warning"), ("environment", "production")],
        ),
        alert(
            "info",
            &[("severity", "info"), ("environment", "production")],
        ),
        alert(
            "odd",
            &[("severity", "apocalyptic"), ("environment", "production")],
        ),
        alert(
            "ruled",
            &[
                ("severity", "critical"),
                ("environment", "production"),
                ("team", "storage"),
            ],
        ),
    ]);
    let sev = |fp: &str| {
        let id = w.st.alert(fp).unwrap().incident.unwrap();
        let inc = w.st.incident(id).unwrap();
        (inc.severity, inc.severity_reason.clone())
    };
    assert_eq!(
        sev("crit"),
        (Severity::Sev1, "label severity=critical".into())
    );
    assert_eq!(
        sev("crit-stg"),
        (
            Severity::Sev2,
            "label severity=CRITICAL, one step milder in staging".into()
        )
    );
    assert_eq!(
        sev("high-tier"),
        (
            Severity::Sev1,
            "label severity=high, one step worse for SLO tier critical".into()
        )
    );
    assert_eq!(sev("warn").0, Severity::Sev2, "the policy's map wins");
    assert_eq!(sev("info").0, Severity::Sev4);
    assert_eq!(
        sev("odd"),
        (Severity::Sev4, "default severity".into()),
        "an unknown value falls back to the default"
    );
    assert_eq!(
        sev("ruled"),
        (Severity::Sev3, "severity rule 1".into()),
        "rules come first"
    );
}
