//! The incident commander's side of the contract: incidents and their commands
//! (`toronto.devops.v1.incident.<verb>`), events (`...events.incident.<what>`,
//! `...events.page.sent`), silences, inhibition rules, postmortems and metrics.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Message;

/// Where an incident stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Opened; nobody owns it yet (escalation runs).
    Triggered,
    /// Someone acknowledged it and owns it.
    Acknowledged,
    /// The impact is contained (a remediation ran, or its alerts cleared and recovery
    /// is being confirmed).
    Mitigated,
    /// Recovery confirmed.
    Resolved,
    /// The postmortem is written.
    Closed,
}

impl IncidentState {
    /// Whether the incident is still open (not resolved or closed).
    pub fn is_open(self) -> bool {
        matches!(self, Self::Triggered | Self::Acknowledged | Self::Mitigated)
    }
}

/// Severity, SEV1 (worst) to SEV4.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Critical: a major customer-facing outage.
    Sev1,
    /// Major: significant impact.
    Sev2,
    /// Minor: limited impact.
    Sev3,
    /// Low: no customer impact yet.
    Sev4,
}

impl Severity {
    /// One step worse (SEV1 stays SEV1).
    pub fn raised(self) -> Self {
        match self {
            Self::Sev1 | Self::Sev2 => Self::Sev1,
            Self::Sev3 => Self::Sev2,
            Self::Sev4 => Self::Sev3,
        }
    }

    /// `SEV1` .. `SEV4`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sev1 => "SEV1",
            Self::Sev2 => "SEV2",
            Self::Sev3 => "SEV3",
            Self::Sev4 => "SEV4",
        }
    }
}

/// A change (rollout) linked to an incident by change-aware triage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkedChange {
    /// The rollout's id.
    pub rollout_id: Uuid,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The version it put in place.
    pub version: String,
    /// The version before it, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Seconds between its end and the incident's first alert.
    pub seconds_before_alert: i64,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TimelineEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What kind of entry: `alert`, `opened`, `acknowledged`, `escalated`, `page`,
    /// `assigned`, `severity`, `note`, `change`, `playbook`, `mitigated`, `resolved`,
    /// `reopened`, `closed`.
    pub kind: String,
    /// Who did it (a person, an agent or this service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// What happened.
    pub text: String,
}

/// Where an incident's escalation stands (persisted, so a restart neither loses nor
/// repeats a page).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EscalationState {
    /// The escalation policy, if one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The level paged last (0 = first).
    pub level: usize,
    /// How many times the policy went round (0 on the first pass).
    pub cycle: u32,
    /// When the next level is paged unless the incident is acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    /// Pages sent so far.
    pub pages_sent: u64,
    /// Every level and repeat was used.
    #[serde(default)]
    pub exhausted: bool,
}

/// A playbook running on an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlaybookRun {
    /// The playbook's name.
    pub name: String,
    /// The next action to run (index).
    pub step: usize,
    /// `running`, `waiting_approval`, `succeeded`, `failed`.
    pub state: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// What the last action did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An incident, as kept in the KV bucket `toronto_incidents` (`incident.<id>`); the
/// reply of most `incident.*` commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Incident {
    /// Its id.
    pub id: Uuid,
    /// Its group key: the values of the grouping labels.
    pub key: String,
    /// A one-line title.
    pub title: String,
    /// The main service affected.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// Every service its alerts name.
    #[serde(default)]
    pub services: Vec<String>,
    /// The labels of its first alert (the grouping labels among them); severity rules
    /// and playbooks match them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its state.
    pub state: IncidentState,
    /// Its severity.
    pub severity: Severity,
    /// Why it has that severity.
    pub severity_reason: String,
    /// Whether a human set the severity (rules no longer change it).
    #[serde(default)]
    pub severity_manual: bool,
    /// The incident commander (a person or an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commander: Option<String>,
    /// The scribe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scribe: Option<String>,
    /// The responders.
    #[serde(default)]
    pub responders: Vec<String>,
    /// Alerts of the incident that are firing now.
    pub alerts_firing: u64,
    /// Distinct alerts (fingerprints) it ever had.
    pub alerts_total: u64,
    /// Duplicate notifications folded into it.
    pub duplicates: u64,
    /// The first fingerprints, up to 100 (every alert is kept under `alert.<fingerprint>`).
    #[serde(default)]
    pub fingerprints: Vec<String>,
    /// Where its first alert came from: `bus`, `alertmanager`, `prometheus`,
    /// `pagerduty` or `manual`.
    pub origin: String,
    /// Recent rollouts linked by change-aware triage.
    #[serde(default)]
    pub changes: Vec<LinkedChange>,
    /// Escalation.
    #[serde(default)]
    pub escalation: EscalationState,
    /// The playbook running or run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<PlaybookRun>,
    /// When the first alert started (detection).
    pub detected_at: DateTime<Utc>,
    /// When the incident was opened.
    pub opened_at: DateTime<Utc>,
    /// When it was first acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When it was first mitigated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mitigated_at: Option<DateTime<Utc>>,
    /// When it was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// When it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    /// Since when every alert is resolved (it resolves after the hold time unless one
    /// fires again: hysteresis against flapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_since: Option<DateTime<Utc>>,
    /// Action items for the postmortem.
    #[serde(default)]
    pub action_items: Vec<String>,
    /// Every event about it, oldest first (alert notifications beyond the first 50
    /// are counted, not listed).
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
    /// Revision counter, bumped by every change.
    #[serde(default)]
    pub version: u64,
}

impl Message for Incident {
    const NAME: &'static str = "incident";
    const MAJOR: u32 = 1;
}

/// The data of every `toronto.devops.v1.events.incident.<what>` event: the incident
/// in short, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentEvent {
    /// The incident's id.
    pub id: Uuid,
    /// Its group key.
    pub key: String,
    /// Its title.
    pub title: String,
    /// The main service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// Its state after the change.
    pub state: IncidentState,
    /// Its severity after the change.
    pub severity: Severity,
    /// Alerts firing.
    pub alerts_firing: u64,
    /// Distinct alerts.
    pub alerts_total: u64,
    /// What happened (the timeline entry's text).
    pub change: String,
    /// Who did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl Message for IncidentEvent {
    const NAME: &'static str = "incident.event";
    const MAJOR: u32 = 1;
}

/// A page sent (`toronto.devops.v1.events.page.sent`); agents also get it on
/// `toronto.agents.<role>.v1.notify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Page {
    /// Idempotency key: `<incident>:<cycle>:<level>:<target>`.
    pub key: String,
    /// The incident.
    pub incident_id: Uuid,
    /// Its title.
    pub title: String,
    /// Its severity.
    pub severity: Severity,
    /// Who is paged: `user:<name>` or `agent:<role>` (schedules are resolved to the
    /// person on call).
    pub target: String,
    /// The escalation level (0 = first), if from escalation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<usize>,
    /// The round of the escalation policy.
    #[serde(default)]
    pub cycle: u32,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl Message for Page {
    const NAME: &'static str = "page";
    const MAJOR: u32 = 1;
}

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
    /// At most this many (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
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
    #[serde(default)]
    pub action_item: bool,
}

impl Message for IncidentNote {
    const NAME: &'static str = "incident.note";
    const MAJOR: u32 = 1;
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

/// A label matcher, as in Alertmanager's API: `name` equals (or, with `is_regex`,
/// fully matches) `value`; `is_equal: false` negates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Matcher {
    /// The label.
    pub name: String,
    /// The value or regular expression.
    pub value: String,
    /// `value` is a regular expression (anchored).
    #[serde(default)]
    pub is_regex: bool,
    /// Match (true, default) or not match.
    #[serde(default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

/// Creates a silence (`incident.silence.create`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceCreate {
    /// Every matcher must match for an alert to be silenced.
    pub matchers: Vec<Matcher>,
    /// From (default now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    /// Until.
    pub ends_at: DateTime<Utc>,
    /// Who.
    pub created_by: String,
    /// Why.
    pub comment: String,
}

impl Message for SilenceCreate {
    const NAME: &'static str = "incident.silence.create";
    const MAJOR: u32 = 1;
}

/// A silence, kept in the KV bucket `toronto_silences` (`silence.<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Silence {
    /// Its id.
    pub id: Uuid,
    /// The matchers.
    pub matchers: Vec<Matcher>,
    /// From.
    pub starts_at: DateTime<Utc>,
    /// Until (set to the expiry time when expired early).
    pub ends_at: DateTime<Utc>,
    /// Who.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// Who expired it early, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
}

impl Message for Silence {
    const NAME: &'static str = "silence";
    const MAJOR: u32 = 1;
}

/// Lists silences (`incident.silence.list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceList {
    /// Only those in force now.
    #[serde(default)]
    pub active: bool,
}

impl Message for SilenceList {
    const NAME: &'static str = "incident.silence.list";
    const MAJOR: u32 = 1;
}

/// Silences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Silences {
    /// Newest first.
    pub silences: Vec<Silence>,
}

impl Message for Silences {
    const NAME: &'static str = "silences";
    const MAJOR: u32 = 1;
}

/// Expires a silence now (`incident.silence.expire`); its alerts that still fire are
/// handled again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceExpire {
    /// The silence.
    pub id: Uuid,
    /// Who.
    pub by: String,
}

impl Message for SilenceExpire {
    const NAME: &'static str = "incident.silence.expire";
    const MAJOR: u32 = 1;
}

/// Creates an inhibition rule (`incident.inhibition.create`): while an alert matching
/// `source_matchers` fires, alerts matching `target_matchers` with the same values of
/// the `equal` labels are held back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InhibitionCreate {
    /// What the inhibiting alert matches.
    pub source_matchers: Vec<Matcher>,
    /// What the inhibited alert matches.
    pub target_matchers: Vec<Matcher>,
    /// Labels whose values must be equal in both.
    #[serde(default)]
    pub equal: Vec<String>,
    /// Who.
    pub created_by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
}

impl Message for InhibitionCreate {
    const NAME: &'static str = "incident.inhibition.create";
    const MAJOR: u32 = 1;
}

/// An inhibition rule, kept in the KV bucket `toronto_silences` (`inhibition.<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InhibitionRule {
    /// Its id.
    pub id: Uuid,
    /// What the inhibiting alert matches.
    pub source_matchers: Vec<Matcher>,
    /// What the inhibited alert matches.
    pub target_matchers: Vec<Matcher>,
    /// Labels whose values must be equal in both.
    #[serde(default)]
    pub equal: Vec<String>,
    /// Who.
    pub created_by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl Message for InhibitionRule {
    const NAME: &'static str = "inhibition.rule";
    const MAJOR: u32 = 1;
}

/// Lists inhibition rules (`incident.inhibition.list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InhibitionList {}

impl Message for InhibitionList {
    const NAME: &'static str = "incident.inhibition.list";
    const MAJOR: u32 = 1;
}

/// Inhibition rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InhibitionRules {
    /// Oldest first.
    pub rules: Vec<InhibitionRule>,
}

impl Message for InhibitionRules {
    const NAME: &'static str = "inhibition.rules";
    const MAJOR: u32 = 1;
}

/// Deletes an inhibition rule (`incident.inhibition.delete`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InhibitionDelete {
    /// The rule.
    pub id: Uuid,
    /// Who.
    pub by: String,
}

impl Message for InhibitionDelete {
    const NAME: &'static str = "incident.inhibition.delete";
    const MAJOR: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_and_raise() {
        assert!(Severity::Sev1 < Severity::Sev4);
        assert_eq!(Severity::Sev3.raised(), Severity::Sev2);
        assert_eq!(Severity::Sev1.raised(), Severity::Sev1);
        assert_eq!(
            serde_json::to_value(Severity::Sev2).unwrap(),
            serde_json::json!("sev2")
        );
        let m: Matcher = serde_json::from_str(r#"{"name":"a","value":"b"}"#).unwrap();
        assert!(m.is_equal && !m.is_regex);
    }
}
