//! The four DORA figures from a [`History`], as of a moment, computed exactly from every
//! deploy in the window: a pure function, so a hand-computed example checks it, and the
//! reference the day ledger ([`super::days`]) is checked against.
//!
//! - A **deployment** is a deploy rollout that ended in the window, however it ended.
//! - A **failed change** is one that was aborted or failed, rolled back by a later
//!   rollback (plan, playbook or person) within the failure window and before the
//!   service's next deploy, or linked to an incident by triage.
//! - **Time to restore** runs from the failure (the incident's detection, else the
//!   faulty version taking traffic, else the deploy's end) to the first recovery:
//!   traffic back after an abort, a completed rollback, or the incident mitigated or
//!   resolved.
//! - **Lead time** runs from the commit time the task carried to the deploy's end, for
//!   deploys that succeeded.

use chrono::{DateTime, Duration, Utc};
use toronto_protocol::tasks::{DoraFailureCauses, DoraQuery, DoraReport, DoraWeek};

use std::collections::HashMap;

use uuid::Uuid;

use super::history::{Deploy, Ending, History, IncidentRecord};
use super::judge::{Lookup, judge, seconds};

/// The most weeks a trend may ask for.
pub const MAX_WEEKS: u32 = 13;

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// The figures over `deploys` (already filtered to the window and the query's service
/// and environment) with `history` to judge them.
struct Figures {
    deployments: u64,
    failed: u64,
    causes: DoraFailureCauses,
    lead_times: Vec<f64>,
    restores: Vec<f64>,
}

fn figures(deploys: &[&Deploy], index: &Index<'_>, failure_window: u32) -> Figures {
    let mut out = Figures {
        deployments: deploys.len() as u64,
        failed: 0,
        causes: DoraFailureCauses::default(),
        lead_times: Vec::new(),
        restores: Vec::new(),
    };
    for deploy in deploys {
        if deploy.ending == Ending::Succeeded
            && let Some(commit) = deploy.plan_id.and_then(|p| index.history.commits.get(&p))
        {
            let lead = seconds(deploy.ended_at - *commit);
            if lead >= 0.0 {
                out.lead_times.push(lead);
            }
        }
        let c = judge(deploy, index).for_window(failure_window);
        if c.failed() {
            out.failed += 1;
            out.causes.aborted += c.causes.aborted;
            out.causes.rolled_back += c.causes.rolled_back;
            out.causes.incident += c.causes.incident;
            out.restores.extend(c.restore);
        }
    }
    out
}

/// The history arranged for lookups, so that judging a deploy costs a few binary
/// searches instead of a scan of every other record.
struct Index<'a> {
    history: &'a History,
    /// End times of succeeded deploys, per service and environment, sorted.
    succeeded: HashMap<(&'a str, &'a str), Vec<DateTime<Utc>>>,
    /// Completed rollbacks, per service and environment, sorted.
    rollbacks: HashMap<(&'a str, &'a str), Vec<DateTime<Utc>>>,
    /// Incidents per linked rollout, earliest detected first.
    incidents: HashMap<Uuid, Vec<&'a IncidentRecord>>,
}

impl<'a> Index<'a> {
    fn new(history: &'a History) -> Self {
        let mut succeeded: HashMap<_, Vec<_>> = HashMap::new();
        for d in history
            .deploys
            .iter()
            .filter(|d| d.ending == Ending::Succeeded)
        {
            succeeded
                .entry((d.service.as_str(), d.environment.as_str()))
                .or_default()
                .push(d.ended_at);
        }
        let mut rollbacks: HashMap<_, Vec<_>> = HashMap::new();
        for r in &history.rollbacks {
            rollbacks
                .entry((r.service.as_str(), r.environment.as_str()))
                .or_default()
                .push(r.at);
        }
        for times in succeeded.values_mut().chain(rollbacks.values_mut()) {
            times.sort();
        }
        let mut incidents: HashMap<Uuid, Vec<&IncidentRecord>> = HashMap::new();
        for i in history.incidents.values() {
            for change in &i.changes {
                incidents.entry(*change).or_default().push(i);
            }
        }
        for list in incidents.values_mut() {
            list.sort_by_key(|i| i.detected_at);
        }
        Self {
            history,
            succeeded,
            rollbacks,
            incidents,
        }
    }

    /// The first time in `sorted` after `t`.
    fn first_after(sorted: Option<&Vec<DateTime<Utc>>>, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let sorted = sorted?;
        sorted.get(sorted.partition_point(|x| *x <= t)).copied()
    }
}

impl Lookup for Index<'_> {
    fn next_succeeded(&self, service: &str, env: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        Self::first_after(self.succeeded.get(&(service, env)), t)
    }

    fn first_rollback(&self, service: &str, env: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        Self::first_after(self.rollbacks.get(&(service, env)), t)
    }

    fn first_incident(&self, rollout: Uuid) -> Option<&IncidentRecord> {
        self.incidents
            .get(&rollout)
            .and_then(|l| l.first().copied())
    }
}

/// The figures for `query` from `history`, as of `now`.
pub fn compute(query: &DoraQuery, history: &History, now: DateTime<Utc>) -> DoraReport {
    let environment = query
        .environment
        .clone()
        .unwrap_or_else(|| "production".into());
    let days = query.window_days.unwrap_or(30).max(1);
    let failure_window = query.failure_window_hours.unwrap_or(24);
    let in_scope = |d: &&Deploy| {
        d.environment == environment && query.service.as_deref().is_none_or(|s| d.service == s)
    };
    let between = |start: DateTime<Utc>, end: DateTime<Utc>| -> Vec<&Deploy> {
        history
            .deploys
            .iter()
            .filter(in_scope)
            .filter(|d| d.ended_at > start && d.ended_at <= end)
            .collect()
    };
    let index = Index::new(history);
    let window_start = now - Duration::days(days as i64);
    let mut all = figures(&between(window_start, now), &index, failure_window);
    let trend = (0..query.weeks.unwrap_or(0).min(MAX_WEEKS))
        .rev()
        .map(|back| {
            let end = now - Duration::weeks(back as i64);
            let start = end - Duration::weeks(1);
            let mut week = figures(&between(start, end), &index, failure_window);
            DoraWeek {
                start,
                end,
                deployments: week.deployments,
                failed_changes: week.failed,
                lead_time_median_seconds: median(&mut week.lead_times),
                time_to_restore_median_seconds: median(&mut week.restores),
            }
        })
        .collect();
    let n = all.deployments;
    DoraReport {
        service: query.service.clone(),
        environment,
        window_start,
        window_end: now,
        deployments: n,
        deployment_frequency_per_day: n as f64 / days as f64,
        lead_time_mean_seconds: (!all.lead_times.is_empty())
            .then(|| all.lead_times.iter().sum::<f64>() / all.lead_times.len() as f64),
        lead_time_median_seconds: median(&mut all.lead_times),
        failed_changes: all.failed,
        failures_by_cause: all.causes,
        change_failure_rate: (n > 0).then(|| all.failed as f64 / n as f64),
        time_to_restore_median_seconds: median(&mut all.restores),
        trend,
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::Rollback;
    use super::*;

    fn deploy(service: &str, ended: DateTime<Utc>, ending: Ending) -> Deploy {
        Deploy {
            rollout_id: Uuid::now_v7(),
            service: service.into(),
            environment: "production".into(),
            plan_id: Some(Uuid::now_v7()),
            started_at: ended - Duration::minutes(10),
            ended_at: ended,
            ending,
        }
    }

    #[test]
    fn every_kind_of_failure_counts_once_with_its_restore_time() {
        let now = Utc::now();
        let mut h = History::default();
        // Aborted canary: restored when traffic went back, 10 minutes after it began.
        h.deploys
            .push(deploy("shop", now - Duration::days(3), Ending::Aborted));
        // Rolled back 30 minutes later and also linked to an incident detected 5
        // minutes after the deploy and mitigated at 20: one failure, restored by the
        // incident's mitigation 15 minutes after its detection.
        let both = deploy("shop", now - Duration::days(2), Ending::Succeeded);
        h.rollbacks.push(Rollback {
            service: "shop".into(),
            environment: "production".into(),
            at: both.ended_at + Duration::minutes(30),
        });
        h.incidents.insert(
            Uuid::now_v7(),
            IncidentRecord {
                detected_at: both.ended_at + Duration::minutes(5),
                changes: vec![both.rollout_id],
                restored_at: Some(both.ended_at + Duration::minutes(20)),
            },
        );
        h.deploys.push(both.clone());
        // Healthy, with a commit 2 hours before its end.
        let good = deploy("shop", now - Duration::days(1), Ending::Succeeded);
        h.commits
            .insert(good.plan_id.unwrap(), good.ended_at - Duration::hours(2));
        h.deploys.push(good);
        let r = compute(
            &DoraQuery {
                weeks: Some(2),
                ..Default::default()
            },
            &h,
            now,
        );
        assert_eq!(r.deployments, 3);
        assert_eq!(r.failed_changes, 2);
        assert_eq!(
            r.failures_by_cause,
            DoraFailureCauses {
                aborted: 1,
                rolled_back: 1,
                incident: 1
            }
        );
        // 600 s and 900 s.
        assert_eq!(r.time_to_restore_median_seconds, Some(750.0));
        assert_eq!(r.lead_time_median_seconds, Some(7200.0));
        assert_eq!(r.trend.len(), 2);
        assert_eq!(r.trend[0].deployments, 0);
        assert_eq!(r.trend[1].deployments, 3);
        assert_eq!(r.trend[1].time_to_restore_median_seconds, Some(750.0));
    }

    #[test]
    fn a_rollback_after_the_next_deploy_or_the_window_blames_nothing() {
        let now = Utc::now();
        let mut h = History::default();
        h.deploys
            .push(deploy("shop", now - Duration::days(5), Ending::Succeeded));
        h.deploys
            .push(deploy("shop", now - Duration::days(4), Ending::Succeeded));
        // Two days after the second deploy: outside the 24 h failure window.
        h.rollbacks.push(Rollback {
            service: "shop".into(),
            environment: "production".into(),
            at: now - Duration::days(2),
        });
        let r = compute(&DoraQuery::default(), &h, now);
        assert_eq!((r.deployments, r.failed_changes), (2, 0));
        assert_eq!(r.change_failure_rate, Some(0.0));
        assert_eq!(r.time_to_restore_median_seconds, None);
    }
}
