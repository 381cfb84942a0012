//! The records DORA is computed from, folded from the event stream: deploy and
//! rollback rollouts (the deployer's `rollout.*` events), completed deploy plans (for
//! their commit time) and incidents (with the changes triage linked to them).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use toronto_protocol::incidents::{IncidentEvent, IncidentEventKind, IncidentState};
use toronto_protocol::rollout::{Rollout, RolloutEvent, RolloutPhase};
use toronto_protocol::tasks::{Plan, PlanTask};
use uuid::Uuid;

/// How a deploy rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The new version serves all traffic.
    Succeeded,
    /// Stopped by analysis, an alert or a person, or failed by the deployer; traffic
    /// went back to the previous version.
    Aborted,
}

/// A deploy rollout (not a rollback) that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Deploy {
    /// The rollout.
    pub rollout_id: Uuid,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The plan that asked for it.
    pub plan_id: Option<Uuid>,
    /// When the new version began taking traffic (the rollout's start).
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
    /// How.
    pub ending: Ending,
}

/// A rollback rollout that completed: the service was restored at `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// When traffic was back on the old version.
    pub at: DateTime<Utc>,
}

/// An incident, as its events tell it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRecord {
    /// When its first alert fired.
    pub detected_at: DateTime<Utc>,
    /// The rollouts triage linked to it.
    pub changes: Vec<Uuid>,
    /// When it was first mitigated or resolved.
    pub restored_at: Option<DateTime<Utc>>,
}

impl IncidentRecord {
    /// The record of an incident whose first event is `e`.
    pub fn new(e: &IncidentEvent) -> Self {
        Self {
            detected_at: e.detected_at.unwrap_or(e.at),
            changes: Vec::new(),
            restored_at: None,
        }
    }

    /// Folds in one of its events (`what`): the earliest detection, the changes linked
    /// to it, when it was first restored. Returns the changes this event linked first.
    pub fn fold(&mut self, what: IncidentEventKind, e: &IncidentEvent) -> Vec<Uuid> {
        if let Some(detected) = e.detected_at {
            self.detected_at = self.detected_at.min(detected);
        }
        let mut linked = Vec::new();
        for c in &e.changes {
            if !self.changes.contains(c) {
                self.changes.push(*c);
                linked.push(*c);
            }
        }
        let restored = matches!(
            what,
            IncidentEventKind::Mitigated | IncidentEventKind::Resolved
        ) || matches!(
            e.state,
            IncidentState::Mitigated | IncidentState::Resolved | IncidentState::Closed
        );
        if restored && self.restored_at.is_none() {
            self.restored_at = Some(e.at);
        }
        linked
    }
}

/// Everything DORA needs from a stretch of the event stream.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Deploy rollouts that ended.
    pub deploys: Vec<Deploy>,
    /// Rollback rollouts that completed.
    pub rollbacks: Vec<Rollback>,
    /// Commit time of completed deploy plans, by plan.
    pub commits: HashMap<Uuid, DateTime<Utc>>,
    /// Incidents by id.
    pub incidents: HashMap<Uuid, IncidentRecord>,
    /// The deploy rollouts recorded (one record each).
    recorded: HashSet<Uuid>,
}

impl History {
    /// Adds a rollout event (`what`) published at `at`.
    pub fn rollout(&mut self, what: RolloutEvent, r: &Rollout, at: DateTime<Utc>) {
        let ended_at = r.finished_at.unwrap_or(at);
        if r.is_rollback {
            // A rollback that completed is announced as `rolled_back` (older records:
            // `succeeded`).
            if matches!(what, RolloutEvent::Succeeded | RolloutEvent::RolledBack)
                && r.phase == RolloutPhase::Succeeded
            {
                self.rollbacks.push(Rollback {
                    service: r.service.clone(),
                    environment: r.environment.clone(),
                    at: ended_at,
                });
            }
            return;
        }
        let ending = match what {
            RolloutEvent::Succeeded => Ending::Succeeded,
            RolloutEvent::Aborted | RolloutEvent::Failed => Ending::Aborted,
            _ => return,
        };
        // One record a rollout: an abort is followed by `rolled_back`, which is ignored.
        if !self.recorded.insert(r.id) {
            return;
        }
        self.deploys.push(Deploy {
            rollout_id: r.id,
            service: r.service.clone(),
            environment: r.environment.clone(),
            plan_id: r.plan_id,
            started_at: r.created_at,
            ended_at,
            ending,
        });
    }

    /// Drops the records that ended before `since`: deploys and rollbacks by their end,
    /// incidents by their detection. Commit times are kept while a deploy of theirs is.
    pub fn retain_since(&mut self, since: DateTime<Utc>) {
        self.deploys.retain(|d| d.ended_at >= since);
        self.rollbacks.retain(|r| r.at >= since);
        self.incidents.retain(|_, i| i.detected_at >= since);
        self.recorded = self.deploys.iter().map(|d| d.rollout_id).collect();
        let plans: HashSet<Uuid> = self.deploys.iter().filter_map(|d| d.plan_id).collect();
        self.commits
            .retain(|plan, at| *at >= since || plans.contains(plan));
    }

    /// Adds a completed plan; only deploys with a commit time matter.
    pub fn plan_completed(&mut self, plan: &Plan) {
        if let PlanTask::Deploy(d) = &plan.task
            && let Some(commit) = d.change.as_ref().and_then(|c| c.commit_time)
        {
            self.commits.insert(plan.id, commit);
        }
    }

    /// Adds an incident event (`what`).
    pub fn incident(&mut self, what: IncidentEventKind, e: &IncidentEvent) {
        self.incidents
            .entry(e.id)
            .or_insert_with(|| IncidentRecord::new(e))
            .fold(what, e);
    }
}
