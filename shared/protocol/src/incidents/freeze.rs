//! Blast-radius freezes: while a severe incident is open, the services it touches and
//! their direct dependents and dependencies take no new change
//! (`...events.freeze.started|lifted`, `incident.freeze.list`, `incident.freeze.lift`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event_kind::event_kinds;
use crate::message::Message;

use super::Severity;

event_kinds! {
    /// The freeze events the incident commander publishes (`events.freeze.<kind>`; the
    /// data is the [`Freeze`]).
    pub enum FreezeEvent for "freeze" {
        /// A severe incident froze its blast radius.
        Started = "started",
        /// The freeze was lifted (its incident mitigated or resolved, or by command).
        Lifted = "lifted",
    }
}

/// A freeze (`toronto.devops.v1.events.freeze.started|lifted`, and in
/// `incident.freeze.list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Freeze {
    /// The incident it protects.
    pub incident_id: Uuid,
    /// The incident's title.
    pub title: String,
    /// The incident's severity when it froze.
    pub severity: Severity,
    /// The environment frozen.
    pub environment: String,
    /// The services the incident affects.
    pub affected: Vec<String>,
    /// Every service frozen: the affected ones and their direct dependents and
    /// dependencies.
    pub services: Vec<String>,
    /// When it began.
    pub started_at: DateTime<Utc>,
    /// Rollouts in flight that it paused.
    #[serde(default)]
    pub paused_rollouts: Vec<Uuid>,
    /// When it was lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_at: Option<DateTime<Utc>>,
    /// Who lifted it (`incident-commander` when the incident resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_by: Option<String>,
    /// Why it was lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lift_reason: Option<String>,
}

impl Message for Freeze {
    const NAME: &'static str = "freeze";
    const MAJOR: u32 = 1;
}

/// Lists the freezes in force (`incident.freeze.list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeList {
    /// Only freezes covering this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only freezes of this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl Message for FreezeList {
    const NAME: &'static str = "incident.freeze.list";
    const MAJOR: u32 = 1;
}

/// The freezes in force (reply to `incident.freeze.list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Freezes {
    /// The freezes.
    pub freezes: Vec<Freeze>,
}

impl Message for Freezes {
    const NAME: &'static str = "incident.freezes";
    const MAJOR: u32 = 1;
}
