//! The incident commander's side of the contract: incidents and their commands
//! (`toronto.devops.v1.incident.<verb>`), events (`...events.incident.<what>`,
//! `...events.page.sent`), silences, inhibition rules, postmortems and metrics.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event_kind::event_kinds;
use crate::message::Message;

mod commands;
mod freeze;
mod silences;

pub use commands::*;
pub use freeze::*;
pub use silences::*;

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

    /// One step milder (SEV4 stays SEV4).
    pub fn lowered(self) -> Self {
        match self {
            Self::Sev1 => Self::Sev2,
            Self::Sev2 => Self::Sev3,
            Self::Sev3 | Self::Sev4 => Self::Sev4,
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

/// What a timeline entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimelineKind {
    /// An alert fired, joined, fired again or resolved.
    Alert,
    /// The incident was opened.
    Opened,
    /// Someone acknowledged it.
    Acknowledged,
    /// It escalated (by hand, by timeout or because recovery was not confirmed).
    Escalated,
    /// A page was sent.
    Page,
    /// A role was assigned.
    Assigned,
    /// Its severity changed.
    Severity,
    /// A note.
    Note,
    /// A note that is also an action item.
    ActionItem,
    /// A recent change was linked to it.
    Change,
    /// A playbook started, progressed or ended.
    Playbook,
    /// A rollout of an affected service moved.
    Rollout,
    /// It was mitigated.
    Mitigated,
    /// It was resolved.
    Resolved,
    /// An alert of its group fired again shortly after it resolved.
    Reopened,
    /// Its postmortem was written.
    Closed,
}

impl TimelineKind {
    /// Its name on the wire (`action_item`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Opened => "opened",
            Self::Acknowledged => "acknowledged",
            Self::Escalated => "escalated",
            Self::Page => "page",
            Self::Assigned => "assigned",
            Self::Severity => "severity",
            Self::Note => "note",
            Self::ActionItem => "action_item",
            Self::Change => "change",
            Self::Playbook => "playbook",
            Self::Rollout => "rollout",
            Self::Mitigated => "mitigated",
            Self::Resolved => "resolved",
            Self::Reopened => "reopened",
            Self::Closed => "closed",
        }
    }
}

impl std::fmt::Display for TimelineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TimelineEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What kind of entry.
    pub kind: TimelineKind,
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

/// Where a playbook run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlaybookState {
    /// Its actions are running.
    Running,
    /// It may change the target only once a human runs it (`incident.playbook.run`).
    WaitingApproval,
    /// Every action ran.
    Succeeded,
    /// An action failed; the incident escalated.
    Failed,
}

impl PlaybookState {
    /// Its name on the wire (`waiting_approval`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::WaitingApproval => "waiting_approval",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for PlaybookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A playbook running on an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlaybookRun {
    /// The playbook's name.
    pub name: String,
    /// The next action to run (index).
    pub step: usize,
    /// Where the run stands.
    pub state: PlaybookState,
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

event_kinds! {
    /// The incident events the incident commander publishes
    /// (`events.incident.<kind>`; the data is the [`IncidentEvent`]).
    pub enum IncidentEventKind for "incident" {
        /// A new incident: its first alert fired, or someone declared it.
        Opened = "opened",
        /// Someone acknowledged it and owns it.
        Acknowledged = "acknowledged",
        /// Its escalation moved to the next level (or started over).
        Escalated = "escalated",
        /// Anything else on its timeline: an alert, a linked change, a playbook, an
        /// assignment, a severity change, a note, a reopening.
        Updated = "updated",
        /// Users are no longer affected (by hand, or its alerts stopped).
        Mitigated = "mitigated",
        /// The cause is fixed.
        Resolved = "resolved",
        /// Closed after its postmortem.
        Closed = "closed",
        /// A notification about it was delivered.
        Notified = "notified",
        /// An attempt to deliver a notification about it failed.
        NotifyFailed = "notify_failed",
        /// A change freeze started for its service.
        Frozen = "frozen",
        /// The change freeze it started was lifted.
        Unfrozen = "unfrozen",
    }
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
    /// The rollouts triage linked to it as changes that may have caused it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Uuid>,
    /// When the first alert of it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<DateTime<Utc>>,
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

    #[test]
    fn timeline_kinds_and_playbook_states_keep_their_wire_names() {
        for kind in [
            TimelineKind::Alert,
            TimelineKind::Opened,
            TimelineKind::Acknowledged,
            TimelineKind::Escalated,
            TimelineKind::Page,
            TimelineKind::Assigned,
            TimelineKind::Severity,
            TimelineKind::Note,
            TimelineKind::ActionItem,
            TimelineKind::Change,
            TimelineKind::Playbook,
            TimelineKind::Rollout,
            TimelineKind::Mitigated,
            TimelineKind::Resolved,
            TimelineKind::Reopened,
            TimelineKind::Closed,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        for state in [
            PlaybookState::Running,
            PlaybookState::WaitingApproval,
            PlaybookState::Succeeded,
            PlaybookState::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert_eq!(TimelineKind::ActionItem.to_string(), "action_item");
        let s: PlaybookState = serde_json::from_str("\"waiting_approval\"").unwrap();
        assert_eq!(s, PlaybookState::WaitingApproval);
        assert_eq!(s.to_string(), "waiting_approval");
    }
}
