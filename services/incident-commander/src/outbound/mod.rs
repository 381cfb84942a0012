//! Outbound notifications: pages, acknowledgements and resolutions sent to PagerDuty,
//! Slack, Mattermost and signed webhooks through a durable outbox.
//!
//! The engine decides what to send ([`trigger`], [`follow_up`]) and leaves one outbox
//! message per notification, published to the outbox stream with a `Nats-Msg-Id`
//! derived from incident, action, round, level, channel and person: a decision taken
//! again after a crash is stored once. The [`sender`] takes them from a durable
//! consumer, sends, and acknowledges only once the receiver accepted; failures are
//! retried with backoff (honouring `Retry-After`) and parked in the dead-letter stream
//! after `max_attempts`. Each outcome is written on the incident's timeline.

pub mod config;
pub mod formats;
pub mod sender;
pub mod start;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use toronto_protocol::incidents::{Incident, Severity};
use uuid::Uuid;

use crate::engine::{Effect, Turn, derived_id};
use crate::settings::EscalationPolicy;
pub use config::{Channel, Contact, Notifications, Secret};

/// The outbox stream of a subject prefix (`TORONTO_DEVOPS_OUTBOX` by default).
pub fn stream_name(prefix: &str) -> String {
    format!(
        "{}_DEVOPS_OUTBOX",
        prefix.to_ascii_uppercase().replace(['.', '-'], "_")
    )
}

/// Outbox subjects: `<prefix>.devops.v1.outbox.<channel>`.
pub fn subject(prefix: &str, channel: &str) -> String {
    format!("{prefix}.devops.v1.outbox.{channel}")
}

/// What a notification says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyAction {
    /// Someone is paged.
    Trigger,
    /// The incident was acknowledged.
    Acknowledge,
    /// The incident was resolved.
    Resolve,
}

impl NotifyAction {
    /// Its name (PagerDuty's `event_action`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::Acknowledge => "acknowledge",
            Self::Resolve => "resolve",
        }
    }
}

/// One notification to send: an outbox message (internal to the incident commander,
/// JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Its id (also the `Nats-Msg-Id` and the webhook's delivery id).
    pub id: Uuid,
    /// The incident.
    pub incident_id: Uuid,
    /// Its title.
    pub title: String,
    /// Its service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// Its severity.
    pub severity: Severity,
    /// What happened.
    pub action: NotifyAction,
    /// The escalation level paged (triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<usize>,
    /// The round of the escalation policy.
    pub cycle: u32,
    /// The channel (a name of the policy's `notifications.channels`).
    pub channel: String,
    /// The person addressed (chat channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    /// Everyone paged at this level (`user:<name>`, `agent:<role>`).
    #[serde(default)]
    pub targets: Vec<String>,
    /// Why.
    pub reason: String,
    /// Who acted (acknowledge, resolve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When it was decided.
    pub at: DateTime<Utc>,
}

impl Notification {
    /// A short description for timelines and logs (no secret in it).
    pub fn describe(&self) -> String {
        let to = self
            .person
            .as_deref()
            .map(|p| format!(" to {p}"))
            .unwrap_or_default();
        format!("{} {}{to}", self.channel, self.action.as_str())
    }
}

/// The channels of a level (its own, or the defaults).
fn channels_of<'a>(n: &'a Notifications, own: &'a [String]) -> &'a [String] {
    if own.is_empty() {
        &n.default_channels
    } else {
        own
    }
}

/// Leaves the outbox messages for a level just paged: one per channel, and for chat
/// channels one per person paged.
pub fn trigger(
    t: &mut Turn<'_>,
    inc: &Incident,
    level: usize,
    channels: &[String],
    targets: &[String],
    reason: &str,
) {
    let n = &t.settings.policy.notifications;
    let channels: Vec<String> = channels_of(n, channels).to_vec();
    let key = format!(
        "{}:{}:{level}",
        inc.escalation.cycle, inc.escalation.pages_sent
    );
    for name in channels {
        enqueue(
            t,
            inc,
            NotifyAction::Trigger,
            Some(level),
            &name,
            targets,
            reason,
            None,
            &key,
        );
    }
}

/// Leaves the outbox messages of an acknowledgement or resolution: to every channel
/// and person of the levels paged so far.
pub fn follow_up(
    t: &mut Turn<'_>,
    inc: &Incident,
    policy: Option<&EscalationPolicy>,
    action: NotifyAction,
    by: Option<&str>,
    reason: &str,
) {
    let Some(policy) = policy else { return };
    if inc.escalation.pages_sent == 0 {
        return;
    }
    let n = &t.settings.policy.notifications;
    let upto = if inc.escalation.cycle > 0 {
        policy.levels.len()
    } else {
        (inc.escalation.level + 1).min(policy.levels.len())
    };
    let mut channels = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for level in &policy.levels[..upto] {
        channels.extend(channels_of(n, &level.channels).iter().cloned());
        for target in &level.notify {
            targets.insert(crate::engine::escalation::resolve_target(t, target));
        }
    }
    let targets: Vec<String> = targets.into_iter().collect();
    let key = format!("{}:{}", inc.escalation.cycle, inc.escalation.pages_sent);
    for name in channels {
        enqueue(t, inc, action, None, &name, &targets, reason, by, &key);
    }
}

#[allow(clippy::too_many_arguments)]
fn enqueue(
    t: &mut Turn<'_>,
    inc: &Incident,
    action: NotifyAction,
    level: Option<usize>,
    name: &str,
    targets: &[String],
    reason: &str,
    by: Option<&str>,
    key: &str,
) {
    let Some(channel) = t.settings.policy.notifications.channels.get(name) else {
        return;
    };
    let people: Vec<Option<String>> = if channel.per_person() {
        targets
            .iter()
            .filter_map(|t| t.strip_prefix("user:"))
            .map(|p| Some(p.to_owned()))
            .collect()
    } else {
        vec![None]
    };
    for person in people {
        let who = person.as_deref().unwrap_or("-");
        let msg_key = format!("outbox:{}:{}:{key}:{name}:{who}", inc.id, action.as_str());
        let id = derived_id(&msg_key);
        let note = Notification {
            id,
            incident_id: inc.id,
            title: inc.title.clone(),
            service: inc.service.clone(),
            environment: inc.environment.clone(),
            severity: inc.severity,
            action,
            level,
            cycle: inc.escalation.cycle,
            channel: name.to_owned(),
            person,
            targets: targets.to_vec(),
            reason: reason.to_owned(),
            by: by.map(str::to_owned),
            at: t.now,
        };
        match serde_json::to_vec(&note) {
            Ok(payload) => t.push(Effect::Event {
                subject: subject(t.prefix, name),
                payload: payload.into(),
                msg_id: id.to_string(),
            }),
            Err(e) => {
                t.counters.encode_failures.inc();
                tracing::error!(error = %e, "cannot encode a notification; not sent");
            }
        }
    }
}
