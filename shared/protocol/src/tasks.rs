//! Tasks handed to the DevOps agent (by peers on `toronto.agents.devops.tasks`, or
//! through `toronto.devops.v1.planner.submit`) and the plans the planner makes of them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Message;

/// Ship a version of a service to an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployTask {
    /// The service, e.g. `shop-api` (a DNS label).
    pub service: String,
    /// The version to ship, e.g. `2.4.1`.
    pub version: String,
    /// The container image; defaults to the service's image at that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The target environment, e.g. `production`.
    pub environment: String,
    /// How to roll it out.
    #[serde(default)]
    pub strategy: Strategy,
    /// Where the change comes from (for DORA lead time and change-aware triage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// The change is the fix for an incident (the error-budget gate lets it through).
    #[serde(default)]
    pub fix: bool,
}

impl Message for DeployTask {
    const NAME: &'static str = "task.deploy";
    const MAJOR: u32 = 1;
}

/// A rollout strategy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Replace pods a few at a time.
    #[default]
    Rolling,
    /// Bring up the new colour, then switch traffic at once.
    BlueGreen,
    /// Shift traffic in steps, with analysis between them.
    Canary {
        /// Traffic weights in percent, increasing, ending at 100; default 10, 25, 50, 100.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        steps: Vec<CanaryStep>,
    },
}

/// One canary step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of traffic on the canary, 1 to 100.
    pub weight: u8,
    /// Seconds to wait (with analysis running) before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_seconds: Option<u64>,
}

/// Where a change comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Who wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A link to the change (pull request, commit page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// When it was committed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<DateTime<Utc>>,
}

/// Go back to an earlier version of a service in an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackTask {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The version to return to; the previous one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
}

impl Message for RollbackTask {
    const NAME: &'static str = "task.rollback";
    const MAJOR: u32 = 1;
}

/// Change the number of replicas of a service in an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleTask {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The replicas wanted.
    pub replicas: u32,
}

impl Message for ScaleTask {
    const NAME: &'static str = "task.scale";
    const MAJOR: u32 = 1;
}

/// The task a plan was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanTask {
    /// A deploy.
    Deploy(DeployTask),
    /// A rollback.
    Rollback(RollbackTask),
    /// A scale change.
    Scale(ScaleTask),
}

impl PlanTask {
    /// The service it concerns.
    pub fn service(&self) -> &str {
        match self {
            PlanTask::Deploy(t) => &t.service,
            PlanTask::Rollback(t) => &t.service,
            PlanTask::Scale(t) => &t.service,
        }
    }

    /// The environment it concerns.
    pub fn environment(&self) -> &str {
        match self {
            PlanTask::Deploy(t) => &t.environment,
            PlanTask::Rollback(t) => &t.environment,
            PlanTask::Scale(t) => &t.environment,
        }
    }
}

/// Where a plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Taken in; not started.
    Accepted,
    /// Stopped on request before it finished.
    Cancelled,
}

/// Who stopped a plan, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cancellation {
    /// Who cancelled it.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A plan: what the planner made of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// The plan's id.
    pub id: Uuid,
    /// The id of the task's envelope (tasks are deduplicated by it).
    pub task_id: Uuid,
    /// The task.
    pub task: PlanTask,
    /// Where it stands.
    pub state: PlanState,
    /// Who asked (the task envelope's `source`).
    pub requested_by: String,
    /// The flow the task belongs to.
    pub correlationid: String,
    /// Which door it came through: `submit` or `queue`.
    pub intake: String,
    /// When the plan was made.
    pub created_at: DateTime<Utc>,
    /// Set when the plan was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<Cancellation>,
}

impl Message for Plan {
    const NAME: &'static str = "plan";
    const MAJOR: u32 = 1;
}

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
    /// At most this many (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
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
}
