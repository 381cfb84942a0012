//! Plans: the steps and gates the planner makes of a task, their state, the lease on
//! their execution, and the plan events.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Artifact, PlanTask};
use crate::event_kind::event_kinds;
use crate::message::Message;

/// Where a plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Taken in; waiting for its turn (one active plan per service and environment).
    Queued,
    /// Its steps are running.
    Running,
    /// Waiting for a human decision.
    Waiting,
    /// Every step succeeded.
    Completed,
    /// A step failed; `reason` says why.
    Failed,
    /// Stopped on request before it finished.
    Cancelled,
}

impl PlanState {
    /// Whether the plan has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PlanState::Completed | PlanState::Failed | PlanState::Cancelled
        )
    }
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Gate: the environment's policies (promotion order, freeze windows).
    Policy,
    /// Gate: the service's error budget, asked of the monitor.
    ErrorBudget,
    /// Gate: the security agent scans the image.
    SecurityScan,
    /// Gate: the QA agent tests the version.
    QaTest,
    /// Gate: the architect agent reviews an infrastructure change (first deploy, new
    /// environment, change of strategy family, large scale).
    ArchitectReview,
    /// Gate: a human with the right role approves.
    Approval,
    /// The deployer carries the task out.
    Execute,
    /// The planner produces artifacts itself (e.g. a CI pipeline).
    Generate,
    /// The deployer tears an ephemeral environment down (not before `not_before`).
    Teardown,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Started (its attempt count says how often).
    Running,
    /// Waiting for a human decision.
    Waiting,
    /// Done.
    Succeeded,
    /// Failed; the plan fails with its reason.
    Failed,
}

/// One step of a plan. Steps run in order; each is idempotent by `plan id:step id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Step {
    /// Unique within the plan, e.g. `security-scan`.
    pub id: String,
    /// What it does.
    pub kind: StepKind,
    /// Where it stands.
    pub state: StepState,
    /// How often it was started.
    pub attempts: u32,
    /// When it last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, or what decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What a gate found (e.g. the security agent's findings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
    /// The step does not start before this time (e.g. a teardown at the end of a TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The work the step started at the deployer and waits for (a rollout, a chaos
    /// experiment): what cancelling the plan stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<StepWork>,
}

/// Work a step started elsewhere and waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepWork {
    /// A rollout (a deploy, or a rollback to an earlier version) at the deployer.
    Rollout {
        /// The rollout's id.
        id: Uuid,
    },
    /// A chaos experiment at the deployer.
    Chaos {
        /// The experiment's id.
        id: Uuid,
    },
}

impl std::fmt::Display for StepWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepWork::Rollout { id } => write!(f, "rollout {id}"),
            StepWork::Chaos { id } => write!(f, "chaos experiment {id}"),
        }
    }
}

impl Step {
    /// A step not yet started.
    pub fn new(id: &str, kind: StepKind) -> Self {
        Self {
            id: id.to_owned(),
            kind,
            state: StepState::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            reason: None,
            findings: None,
            not_before: None,
            work: None,
        }
    }
}

/// A human decision on a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    /// Who decided.
    pub by: String,
    /// In which role.
    pub role: String,
    /// Approved (true) or rejected.
    pub approved: bool,
    /// What they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
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
    /// What cancelling stopped: the work the plan had started, and how each ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<Stopped>,
}

/// Work a cancellation stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Stopped {
    /// The step whose work it was.
    pub step: String,
    /// What was stopped; absent for an environment torn down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<StepWork>,
    /// Whether the deployer took the stop (an abort, a teardown).
    pub done: bool,
    /// What the deployer answered.
    pub detail: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A plan: what the planner made of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// The plan's id.
    pub id: Uuid,
    /// The id of the task's envelope (tasks are deduplicated by it): any non-empty
    /// string, as CloudEvents allows.
    pub task_id: String,
    /// The task.
    pub task: PlanTask,
    /// Where it stands.
    pub state: PlanState,
    /// Who asked (the task envelope's `source`).
    pub requested_by: String,
    /// The verified principal who asked (the human a delegate acted for, else the
    /// signer); the two-person rule compares principals, not names. Absent when the
    /// task was not verified (`TORONTO_AUTH=off` or `permissive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by_principal: Option<String>,
    /// The flow the task belongs to.
    pub correlationid: String,
    /// Which door it came through: `submit` or `queue`.
    pub intake: String,
    /// When the plan was made.
    pub created_at: DateTime<Utc>,
    /// Set when the plan was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<Cancellation>,
    /// The steps, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Why the plan failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human decisions taken on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    /// When it last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Files the plan produced (e.g. a generated CI pipeline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// The planner instance working on it, and until when (a dead owner's lease runs
    /// out and another instance carries on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// The agent that delegated the task (`agent.assign_task`), answered in the
    /// delegation vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<crate::delegation::Delegation>,
}

/// Ownership of a plan's execution for a while.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Lease {
    /// The planner instance.
    pub owner: String,
    /// Until when.
    pub until: DateTime<Utc>,
}

impl Message for Plan {
    const NAME: &'static str = "plan";
    const MAJOR: u32 = 1;
}

/// What the planner's runner is asked to do: advance a plan (internal work queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AdvancePlan {
    /// The plan.
    pub plan_id: Uuid,
}

impl Message for AdvancePlan {
    const NAME: &'static str = "planner.advance";
    const MAJOR: u32 = 1;
}

event_kinds! {
    /// The plan events the planner publishes (`events.plan.<kind>`; the data is the
    /// [`Plan`]).
    pub enum PlanEvent for "plan" {
        /// A task was accepted and planned.
        Created = "created",
        /// Every step finished.
        Completed = "completed",
        /// A step or gate failed.
        Failed = "failed",
        /// Stopped by request.
        Cancelled = "cancelled",
        /// Work a cancelled plan had started was stopped (a rollout aborted and
        /// rolled back, an environment torn down): `cancellation.stopped` says what.
        Stopped = "stopped",
    }
}

event_kinds! {
    /// The step events the planner publishes (`events.step.<kind>`; the data is the
    /// [`Plan`]).
    pub enum StepEvent for "step" {
        /// A step began.
        Started = "started",
        /// A step waits for something outside the planner (a rollout, a due time).
        Waiting = "waiting",
        /// A step ended (passed or failed).
        Finished = "finished",
    }
}

event_kinds! {
    /// The gate events the planner publishes (`events.gate.<kind>`; the data is the
    /// [`Plan`]).
    pub enum GateEvent for "gate" {
        /// A gate waits for a human decision.
        Waiting = "waiting",
        /// A gate passed.
        Passed = "passed",
        /// A gate failed.
        Failed = "failed",
    }
}

impl PlanEvent {
    /// Whether the plan has ended with this event.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Created)
    }
}
