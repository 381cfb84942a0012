//! The planner's requests and replies: submit, plan get/list/cancel/decide, DORA.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Plan, PlanState};
use crate::message::Message;

/// The answer to a submitted task that was accepted. A rejected task gets the error
/// envelope (`bad_request`) with every reason in `details.reasons`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitAccepted {
    /// The plan made of the task.
    pub plan_id: Uuid,
    /// True when this task (same envelope id) was submitted before: no new plan.
    pub duplicate: bool,
}

impl Message for SubmitAccepted {
    const NAME: &'static str = "planner.submit.accepted";
    const MAJOR: u32 = 1;
}

/// Asks for one plan (`toronto.devops.v1.planner.plan.get`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanGet {
    /// The plan's id.
    pub plan_id: Uuid,
}

impl Message for PlanGet {
    const NAME: &'static str = "planner.plan.get";
    const MAJOR: u32 = 1;
}

/// Asks for plans (`toronto.devops.v1.planner.plan.list`), newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanList {
    /// Only plans of this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only plans for this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Only plans in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PlanState>,
    /// Only plans asked for by this requester (the task's `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// At most this many (default 50, at most 500: see [`crate::page`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Where to go on: the `next_cursor` of the page before (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Message for PlanList {
    const NAME: &'static str = "planner.plan.list";
    const MAJOR: u32 = 1;
}

/// Plans, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plans {
    /// The plans.
    pub plans: Vec<Plan>,
    /// Present when there may be more: ask again with it as `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Message for Plans {
    const NAME: &'static str = "plans";
    const MAJOR: u32 = 1;
}

/// Stops a plan (`toronto.devops.v1.planner.plan.cancel`); the reply is the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanCancel {
    /// The plan's id.
    pub plan_id: Uuid,
    /// Who cancels it.
    pub by: String,
    /// Why.
    pub reason: String,
}

impl Message for PlanCancel {
    const NAME: &'static str = "planner.plan.cancel";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// A human decision on a plan waiting for approval
/// (`toronto.devops.v1.planner.plan.approve` or `.reject`); the reply is the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanDecision {
    /// The plan's id.
    pub plan_id: Uuid,
    /// Who decides (compared with the plan's requester: nobody approves their own change).
    pub by: String,
    /// Their role; only the configured approver roles may decide.
    pub role: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Message for PlanDecision {
    const NAME: &'static str = "planner.plan.decision";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::APPROVER;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// Asks for the DORA figures of a service or of everything
/// (`toronto.devops.v1.planner.dora.get`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DoraQuery {
    /// Only this service (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The environment (default `production`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The window, in days back from now (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_days: Option<u32>,
    /// A deploy followed by a rollback within this many hours counts as a failed
    /// change (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_window_hours: Option<u32>,
    /// Also give the figures of each of the last this many weeks (at most 13), oldest
    /// first, in [`DoraReport::trend`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weeks: Option<u32>,
}

impl Message for DoraQuery {
    const NAME: &'static str = "planner.dora.get";
    const MAJOR: u32 = 1;
}

/// DORA figures computed from the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DoraReport {
    /// The service, or absent for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The environment.
    pub environment: String,
    /// Start of the window.
    pub window_start: DateTime<Utc>,
    /// End of the window (now).
    pub window_end: DateTime<Utc>,
    /// Deploys that reached the environment and ended in the window (succeeded,
    /// aborted or failed; rollbacks are not deploys).
    pub deployments: u64,
    /// Deploys per day over the window.
    pub deployment_frequency_per_day: f64,
    /// Median seconds from commit to completed deploy (deploys with a commit time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_time_median_seconds: Option<f64>,
    /// Mean of the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_time_mean_seconds: Option<f64>,
    /// Deploys that failed: aborted or failed by the deployer, rolled back (by a plan,
    /// a playbook or a person) within the failure window, or linked to an incident by
    /// triage. A deploy with several of these counts once.
    pub failed_changes: u64,
    /// The failed changes by what showed the failure (one change may show several).
    #[serde(default)]
    pub failures_by_cause: DoraFailureCauses,
    /// `failed_changes / deployments`; absent without deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_failure_rate: Option<f64>,
    /// Median seconds from the failure (the incident's detection, else the faulty
    /// version taking traffic) to recovery (traffic back on the previous version, a
    /// completed rollback, or the incident mitigated or resolved, whichever is first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_restore_median_seconds: Option<f64>,
    /// The figures of each of the last [`DoraQuery::weeks`] weeks, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trend: Vec<DoraWeek>,
}

/// How the failed changes of a [`DoraReport`] showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DoraFailureCauses {
    /// Aborted by analysis, an alert or a person, or failed by the deployer.
    pub aborted: u64,
    /// Rolled back afterwards by a rollback (plan, playbook or person).
    pub rolled_back: u64,
    /// Linked to an incident by the incident commander's triage.
    pub incident: u64,
}

/// The DORA figures of one week (seven days ending at `end`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DoraWeek {
    /// Start of the week.
    pub start: DateTime<Utc>,
    /// Its end.
    pub end: DateTime<Utc>,
    /// Deploys that ended in it.
    pub deployments: u64,
    /// Of those, failed changes.
    pub failed_changes: u64,
    /// Median lead time of its deploys, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_time_median_seconds: Option<f64>,
    /// Median time to restore of its failed changes, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_restore_median_seconds: Option<f64>,
}

impl Message for DoraReport {
    const NAME: &'static str = "planner.dora.report";
    const MAJOR: u32 = 1;
}
