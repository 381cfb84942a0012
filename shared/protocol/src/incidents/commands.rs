//! Commands on incidents (`toronto.devops.v1.incident.<verb>`) and their replies.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Message;

use super::{Incident, IncidentState, Severity};

/// Opens an incident by hand (`incident.open`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentOpen {
    /// A one-line title.
    pub title: String,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// Severity; from the rules when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// Extra labels (matched by severity rules and playbooks).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Who opens it.
    pub by: String,
}

impl Message for IncidentOpen {
    const NAME: &'static str = "incident.open";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// Names an incident (`incident.get`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentGet {
    /// The incident's id.
    pub id: Uuid,
}

impl Message for IncidentGet {
    const NAME: &'static str = "incident.get";
    const MAJOR: u32 = 1;
}

/// Lists incidents (`incident.list`), newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentList {
    /// Only this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<IncidentState>,
    /// Only this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only open ones (triggered, acknowledged, mitigated).
    #[serde(default)]
    pub open: bool,
    /// At most this many (default 50, at most 500: see [`crate::page`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Where to go on: the `next_cursor` of the page before (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Message for IncidentList {
    const NAME: &'static str = "incident.list";
    const MAJOR: u32 = 1;
}

/// Incidents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Incidents {
    /// Newest first.
    pub incidents: Vec<Incident>,
    /// Present when there may be more: ask again with it as `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Message for Incidents {
    const NAME: &'static str = "incidents";
    const MAJOR: u32 = 1;
}

/// An action on an incident by someone (`incident.ack`, `incident.escalate`,
/// `incident.mitigate`, `incident.resolve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentAction {
    /// The incident.
    pub id: Uuid,
    /// Who.
    pub by: String,
    /// Why (goes to the timeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Message for IncidentAction {
    const NAME: &'static str = "incident.action";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// A role on an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentRole {
    /// Runs the response.
    Commander,
    /// Keeps the notes.
    Scribe,
    /// Works on it (added to the responders).
    Responder,
}

/// Gives someone a role (`incident.assign`). `agent:<role>` names an agent, which is
/// then notified on `toronto.agents.<role>.v1.notify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentAssign {
    /// The incident.
    pub id: Uuid,
    /// The role.
    pub role: IncidentRole,
    /// Who gets it.
    pub who: String,
    /// Who assigns it.
    pub by: String,
}

impl Message for IncidentAssign {
    const NAME: &'static str = "incident.assign";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// Sets the severity by hand (`incident.severity`); rules no longer change it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentSeveritySet {
    /// The incident.
    pub id: Uuid,
    /// The severity.
    pub severity: Severity,
    /// Who.
    pub by: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Message for IncidentSeveritySet {
    const NAME: &'static str = "incident.severity";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// Adds a note to the timeline (`incident.note`), from a human or an agent; with
/// `action_item`, it is also an action item of the postmortem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentNote {
    /// The incident.
    pub id: Uuid,
    /// Who writes it.
    pub by: String,
    /// The note.
    pub text: String,
    /// Also an action item.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub action_item: bool,
}

impl Message for IncidentNote {
    const NAME: &'static str = "incident.note";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// Runs a playbook on an incident under a human's authority (`incident.playbook.run`),
/// e.g. one the autonomy policy held for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaybookRunRequest {
    /// The incident.
    pub id: Uuid,
    /// The playbook (default: the one that matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    /// Who approves it.
    pub by: String,
}

impl Message for PlaybookRunRequest {
    const NAME: &'static str = "incident.playbook.run";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// Writes the postmortem (`incident.postmortem`) of a resolved incident and closes it;
/// asked again, it answers the same document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostmortemRequest {
    /// The incident.
    pub id: Uuid,
    /// Who.
    pub by: String,
    /// Action items to add.
    #[serde(default)]
    pub action_items: Vec<String>,
}

impl Message for PostmortemRequest {
    const NAME: &'static str = "incident.postmortem";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// A postmortem: Markdown and the durations it was computed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Postmortem {
    /// The incident.
    pub incident_id: Uuid,
    /// The document.
    pub markdown: String,
    /// Seconds from the first alert's start to the incident's opening.
    pub time_to_detect_seconds: f64,
    /// Seconds from opening to the first acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_acknowledge_seconds: Option<f64>,
    /// Seconds from opening to mitigation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_mitigate_seconds: Option<f64>,
    /// Seconds from opening to resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_resolve_seconds: Option<f64>,
}

impl Message for Postmortem {
    const NAME: &'static str = "postmortem";
    const MAJOR: u32 = 1;
}

/// Asks for incident metrics (`incident.metrics`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentMetricsQuery {
    /// Only this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Message for IncidentMetricsQuery {
    const NAME: &'static str = "incident.metrics.get";
    const MAJOR: u32 = 1;
}

/// Incident metrics, computed from the incidents' recorded times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentMetrics {
    /// Incidents counted.
    pub incidents: u64,
    /// Of which open.
    pub open: u64,
    /// By severity (`sev1` .. `sev4`).
    pub by_severity: BTreeMap<String, u64>,
    /// Mean time to acknowledge, seconds (over acknowledged incidents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtta_seconds: Option<f64>,
    /// Mean time to resolve, seconds (over resolved incidents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mttr_seconds: Option<f64>,
    /// Mean time between failures: mean seconds between consecutive incident
    /// openings of the same service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtbf_seconds: Option<f64>,
}

impl Message for IncidentMetrics {
    const NAME: &'static str = "incident.metrics";
    const MAJOR: u32 = 1;
}
