//! The planner's questions to peer agents at gates (security scan, QA test) and
//! their verdicts.

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
