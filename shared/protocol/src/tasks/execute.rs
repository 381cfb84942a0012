//! The planner asks the deployer to carry a task out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::PlanTask;
use crate::message::Message;

/// The planner asks the deployer to carry a task out
/// (`toronto.devops.v1.deployer.rollout.start`, `.rollback` or `.scale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecuteRequest {
    /// The plan asking.
    pub plan_id: Uuid,
    /// Same key, same work: carry it out once.
    pub idempotency_key: String,
    /// What to do.
    pub task: PlanTask,
}

impl Message for ExecuteRequest {
    const NAME: &'static str = "deployer.execute";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;
}

/// The deployer took the work on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecuteAccepted {
    /// The deployer's reference for it (e.g. the rollout id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Message for ExecuteAccepted {
    const NAME: &'static str = "deployer.execute.accepted";
    const MAJOR: u32 = 1;
}
