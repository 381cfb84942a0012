//! The audit trail: every authorization decision, allowed or refused, as an
//! `audit.decision` event on `<prefix>.devops.v1.events.audit.decision`.
//!
//! The service that decided publishes it; `toronto audit` lists and filters them.
//! An event names principals and public keys only, never a seed, token or password.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Message;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Verified and authorized: the request ran.
    Allowed,
    /// Refused (401, 403, or 503 when the check could not be made).
    Refused,
    /// Would have been refused; `TORONTO_AUTH=permissive` let it run.
    WouldRefuse,
}

impl AuditOutcome {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Allowed => "allowed",
            AuditOutcome::Refused => "refused",
            AuditOutcome::WouldRefuse => "would_refuse",
        }
    }

    /// Parses a wire name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "allowed" => Some(AuditOutcome::Allowed),
            "refused" => Some(AuditOutcome::Refused),
            "would_refuse" => Some(AuditOutcome::WouldRefuse),
            _ => None,
        }
    }
}

/// One authorization decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditDecision {
    /// The service that decided, e.g. `toronto-planner`.
    pub service: String,
    /// What was asked: the endpoint, e.g. `plan-approve`, or a rule the service
    /// checks itself, e.g. `plan-approve:two-person`.
    pub action: String,
    /// The NATS subject the request came on.
    pub subject: String,
    /// What it is about (the envelope's `subject` attribute), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The principal authorization was checked against (the human a delegate acts
    /// for, else the signer); absent when the request was not verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The principal whose key signed it, when verified and not the principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The public key that signed it, as presented (verified or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The principal named in `Toronto-On-Behalf-Of`, as presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Allowed, refused, or would have been refused.
    pub outcome: AuditOutcome,
    /// The error code of a refusal (`unauthorized`, `forbidden`, `unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request's envelope id.
    pub request_id: String,
    /// When it was decided.
    pub at: DateTime<Utc>,
}

impl Message for AuditDecision {
    const NAME: &'static str = "audit.decision";
    const MAJOR: u32 = 1;
}
