//! Whether one deploy failed, how, and how long the service took to come back: the one
//! definition both the day ledger ([`super::days`]) and the exact computation
//! ([`super::compute`]) use.
//!
//! Only one part of a deploy's judgement depends on the query: a rollback counts against
//! the deploy if it came within the query's failure window. So a deploy is judged once
//! into what it counts without its rollback and, if a rollback followed it within the
//! longest failure window, what it counts with it and how many hours after it came
//! ([`Judgement::slot`]); a query picks one of the two.

use chrono::{DateTime, Duration, Utc};
use toronto_protocol::tasks::DoraFailureCauses;
use uuid::Uuid;

use super::history::{Deploy, Ending, IncidentRecord};
use super::ledger::MAX_FAILURE_HOURS;

/// The records a judgement looks up.
pub trait Lookup {
    /// The end of the first succeeded deploy of `service` in `environment` after `t`.
    fn next_succeeded(
        &self,
        service: &str,
        environment: &str,
        t: DateTime<Utc>,
    ) -> Option<DateTime<Utc>>;
    /// The first completed rollback of `service` in `environment` after `t`.
    fn first_rollback(
        &self,
        service: &str,
        environment: &str,
        t: DateTime<Utc>,
    ) -> Option<DateTime<Utc>>;
    /// The incident linked to `rollout` that was detected first.
    fn first_incident(&self, rollout: Uuid) -> Option<&IncidentRecord>;
}

/// What one deploy counts for, for one failure window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Contribution {
    /// What showed its failure (each 0 or 1); all 0 when it did not fail.
    pub causes: DoraFailureCauses,
    /// Seconds from its failure to recovery, when it failed and recovered.
    pub restore: Option<f64>,
}

impl Contribution {
    /// Whether the deploy failed.
    pub fn failed(&self) -> bool {
        self.causes != DoraFailureCauses::default()
    }
}

/// A deploy's judgement for every failure window at once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Judgement {
    /// What it counts when no rollback counts against it.
    pub without: Contribution,
    /// The rollback that followed it within the longest failure window: after how many
    /// whole hours (rounded up) it came, and what the deploy counts with it.
    pub rollback: Option<(u8, Contribution)>,
}

impl Judgement {
    /// What the deploy counts for a failure window of `hours`.
    pub fn for_window(&self, hours: u32) -> Contribution {
        match self.rollback {
            Some((slot, with)) if u32::from(slot) <= hours => with,
            _ => self.without,
        }
    }
}

/// `d` as seconds, to the millisecond.
pub fn seconds(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// The whole hours, rounded up, of a positive `gap`.
pub fn slot(gap: Duration) -> i64 {
    let hours = gap.num_hours();
    if Duration::hours(hours) < gap {
        hours + 1
    } else {
        hours
    }
}

/// Judges `deploy` against the records of `lookup`.
pub fn judge(deploy: &Deploy, lookup: &impl Lookup) -> Judgement {
    let incident = lookup.first_incident(deploy.rollout_id);
    let rollback = if deploy.ending == Ending::Succeeded {
        let (service, env) = (deploy.service.as_str(), deploy.environment.as_str());
        // The next deploy of the service ends what a later rollback can undo.
        let next = lookup.next_succeeded(service, env, deploy.ended_at);
        lookup
            .first_rollback(service, env, deploy.ended_at)
            .filter(|at| next.is_none_or(|n| *at < n))
            .map(|at| (at, slot(at - deploy.ended_at)))
            .filter(|(_, slot)| *slot <= i64::from(MAX_FAILURE_HOURS))
    } else {
        None
    };
    Judgement {
        without: contribution(deploy, None, incident),
        rollback: rollback.map(|(at, slot)| (slot as u8, contribution(deploy, Some(at), incident))),
    }
}

/// What `deploy` counts, rolled back at `rollback` or not, with its first incident.
fn contribution(
    deploy: &Deploy,
    rollback: Option<DateTime<Utc>>,
    incident: Option<&IncidentRecord>,
) -> Contribution {
    let mut causes = DoraFailureCauses::default();
    let mut start = None;
    let mut restored: Option<DateTime<Utc>> = None;
    fn restored_at(at: DateTime<Utc>, restored: &mut Option<DateTime<Utc>>) {
        *restored = Some(restored.map_or(at, |r| r.min(at)));
    }
    if deploy.ending == Ending::Aborted {
        causes.aborted = 1;
        start = Some(deploy.started_at);
        restored_at(deploy.ended_at, &mut restored);
    }
    if let Some(at) = rollback {
        causes.rolled_back = 1;
        start.get_or_insert(deploy.ended_at);
        restored_at(at, &mut restored);
    }
    if let Some(first) = incident {
        causes.incident = 1;
        // The incident's detection is when users were first seen hurting.
        start = Some(first.detected_at);
        if let Some(at) = first.restored_at {
            restored_at(at, &mut restored);
        }
        // A recovery before the incident was detected does not end it.
        if restored.is_some_and(|r| r < first.detected_at) {
            restored = first.restored_at;
        }
    }
    let restore = match (start, restored) {
        (Some(start), Some(end)) if causes != DoraFailureCauses::default() => {
            Some(seconds(end - start).max(0.0))
        }
        _ => None,
    };
    Contribution { causes, restore }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_the_hours_rounded_up() {
        assert_eq!(slot(Duration::minutes(1)), 1);
        assert_eq!(slot(Duration::hours(1)), 1);
        assert_eq!(slot(Duration::hours(1) + Duration::nanoseconds(1)), 2);
        assert_eq!(slot(Duration::hours(24)), 24);
    }

    #[test]
    fn a_rollback_counts_from_its_slot_on() {
        let with = Contribution {
            causes: DoraFailureCauses {
                rolled_back: 1,
                ..Default::default()
            },
            restore: Some(5.0),
        };
        let j = Judgement {
            without: Contribution::default(),
            rollback: Some((3, with)),
        };
        assert_eq!(j.for_window(2), Contribution::default());
        assert_eq!(j.for_window(3), with);
        assert!(j.for_window(168).failed());
    }
}
