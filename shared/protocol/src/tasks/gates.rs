//! The planner's questions to peer agents at gates (security scan, QA test,
//! architect review) and their verdicts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Message;

/// The security gate's question to the security agent (`toronto.agents.security.v1.scan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecurityScanRequest {
    /// The plan asking.
    pub plan_id: Uuid,
    /// Same key, same question: answer it once.
    pub idempotency_key: String,
    /// The service.
    pub service: String,
    /// The version.
    pub version: String,
    /// The image to scan.
    pub image: String,
}

impl Message for SecurityScanRequest {
    const NAME: &'static str = "gate.security.scan";
    const MAJOR: u32 = 1;
}

/// The QA gate's question to the QA agent (`toronto.agents.qa.v1.test`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QaTestRequest {
    /// The plan asking.
    pub plan_id: Uuid,
    /// Same key, same question: answer it once.
    pub idempotency_key: String,
    /// The environment the version goes to.
    pub environment: String,
    /// The service.
    pub service: String,
    /// The version.
    pub version: String,
    /// The suite to run.
    pub suite: String,
}

impl Message for QaTestRequest {
    const NAME: &'static str = "gate.qa.test";
    const MAJOR: u32 = 1;
}

/// The architect gate's question to the architect agent
/// (`toronto.agents.architect.v1.review`): an infrastructure change to review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ArchitectReviewRequest {
    /// The plan asking.
    pub plan_id: Uuid,
    /// Same key, same question: answer it once.
    pub idempotency_key: String,
    /// The service (for `provision_environment`, the new environment's name).
    pub service: String,
    /// The environment.
    pub environment: String,
    /// Why the change needs review (at least one).
    pub changes: Vec<InfraChange>,
    /// The whole task, as the plan has it.
    pub task: super::PlanTask,
}

impl Message for ArchitectReviewRequest {
    const NAME: &'static str = "gate.architect.review";
    const MAJOR: u32 = 1;
}

/// An infrastructure change the architect reviews.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InfraChange {
    /// The first deploy of the service to the environment (nothing of it runs there).
    FirstDeploy,
    /// A new (ephemeral) environment.
    ProvisionEnvironment,
    /// A change of strategy family (rolling, blue-green, canary).
    StrategyChange {
        /// The strategy of the version serving now.
        from: super::Strategy,
        /// The strategy asked for.
        to: super::Strategy,
    },
    /// A change of replicas beyond the configured factor, up or down.
    Scale {
        /// Replicas now.
        from: u32,
        /// Replicas asked for.
        to: u32,
        /// The factor beyond which a scale is reviewed.
        factor: f64,
    },
}

/// A peer's verdict on a gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateVerdict {
    /// Whether the gate passes.
    pub passed: bool,
    /// Why, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What was found (vulnerabilities, failed tests...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
}

impl Message for GateVerdict {
    const NAME: &'static str = "gate.verdict";
    const MAJOR: u32 = 1;
}
