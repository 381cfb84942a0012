//! The task-delegation vocabulary the TORONTO agents speak to one another, as the
//! DevOps agent takes it: `assign_task` in (on `toronto.agents.devops.tasks` or
//! `planner.submit`), and `accept_task` or `reject_task`, `progress_update` and
//! `task_completed` out, to the assigning agent on `toronto.agents.<role>.v1.notify`.
//! Each carries the assigner's own `task_id`, so it can match the answers to its task.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Message;
use crate::tasks::{Artifact, PlanState, PlanTask};

/// Another agent hands the DevOps agent a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignTask {
    /// The assigner's id for the task (echoed in every answer).
    pub task_id: String,
    /// The assigner's role, e.g. `developer`: answers go to
    /// `toronto.agents.<role>.v1.notify`.
    pub from_role: String,
    /// The assigning agent's own id, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<String>,
    /// A title for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What to do: any task the planner takes (`kind`: deploy, rollback, scale,
    /// pipeline, provision_environment, chaos_experiment).
    pub task: PlanTask,
}

impl Message for AssignTask {
    const NAME: &'static str = "agent.assign_task";
    const MAJOR: u32 = 1;
}

/// The DevOps agent took the task on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AcceptTask {
    /// The assigner's id for the task.
    pub task_id: String,
    /// The plan that carries it out.
    pub plan_id: Uuid,
    /// Who took it: `devops`.
    pub agent: String,
}

impl Message for AcceptTask {
    const NAME: &'static str = "agent.accept_task";
    const MAJOR: u32 = 1;
}

/// The DevOps agent will not do the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RejectTask {
    /// The assigner's id for the task.
    pub task_id: String,
    /// Who refused: `devops`.
    pub agent: String,
    /// Every reason.
    pub reasons: Vec<String>,
}

impl Message for RejectTask {
    const NAME: &'static str = "agent.reject_task";
    const MAJOR: u32 = 1;
}

/// How a delegated task is going.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressUpdate {
    /// The assigner's id for the task.
    pub task_id: String,
    /// The plan.
    pub plan_id: Uuid,
    /// Where the plan stands.
    pub state: PlanState,
    /// The step concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What happened, in a sentence.
    pub message: String,
    /// Share of the plan's steps done, 0 to 1.
    pub progress: f64,
}

impl Message for ProgressUpdate {
    const NAME: &'static str = "agent.progress_update";
    const MAJOR: u32 = 1;
}

/// A delegated task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCompleted {
    /// The assigner's id for the task.
    pub task_id: String,
    /// The plan.
    pub plan_id: Uuid,
    /// Whether it was done (false: failed or cancelled).
    pub success: bool,
    /// What came of it, in a sentence.
    pub summary: String,
    /// Files it produced (e.g. a CI pipeline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
}

impl Message for TaskCompleted {
    const NAME: &'static str = "agent.task_completed";
    const MAJOR: u32 = 1;
}

/// Who delegated a plan's task (kept in the plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delegation {
    /// The assigner's id for the task.
    pub task_id: String,
    /// The assigner's role.
    pub role: String,
    /// The assigning agent, if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}
