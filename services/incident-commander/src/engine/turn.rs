//! One turn of the engine: the settings and the clock reading a verb runs with, and
//! the effects it leaves (events to publish, records to write, playbooks to start).

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use toronto_protocol::incidents::IncidentEventKind;
use toronto_protocol::incidents::{Incident, IncidentEvent, TimelineEntry, TimelineKind};
use toronto_protocol::{Envelope, Message};
use uuid::Uuid;

use crate::settings::Settings;

/// Alert notifications listed one by one in a timeline; later ones are counted.
const TIMELINE_ALERTS: usize = 50;
/// Timeline entries kept per incident.
const TIMELINE_MAX: usize = 1000;

/// What a change must be followed by.
#[derive(Debug)]
pub enum Effect {
    /// Publish an event (JetStream, `Nats-Msg-Id` = `msg_id`).
    Event {
        /// The subject.
        subject: String,
        /// The encoded envelope.
        payload: bytes::Bytes,
        /// Its id.
        msg_id: String,
    },
    /// Publish a plain message (an agent's notify subject).
    Notify {
        /// The subject.
        subject: String,
        /// The encoded envelope.
        payload: bytes::Bytes,
    },
    /// Write the current state of a record to KV.
    Persist(Record),
    /// Answer once everything before has been written.
    Barrier(oneshot::Sender<()>),
    /// Alert notes wait to be announced ([`super::Engine::announce_pending`]).
    Announce,
}

/// A record kept in KV.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Record {
    /// `incident.<id>` in the incidents bucket.
    Incident(Uuid),
    /// `alert.<key>` in the incidents bucket.
    Alert(String),
    /// `silence.<id>` in the silences bucket.
    Silence(Uuid),
    /// `inhibition.<id>` in the silences bucket.
    Inhibition(Uuid),
}

/// Counters the service exports.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Alert notifications received.
    pub received: prometheus_client::metrics::counter::Counter,
    /// Of which duplicates.
    pub duplicates: prometheus_client::metrics::counter::Counter,
    /// Alerts held back by a silence.
    pub silenced: prometheus_client::metrics::counter::Counter,
    /// Alerts held back by an inhibition rule.
    pub inhibited: prometheus_client::metrics::counter::Counter,
    /// Pages sent.
    pub pages: prometheus_client::metrics::counter::Counter,
    /// Events or records that could not be encoded (and so were not written).
    pub encode_failures: prometheus_client::metrics::counter::Counter,
}

/// The settings, clock and identity a verb runs with, and what it leaves to do.
#[derive(Debug)]
pub struct Turn<'a> {
    /// The settings and policy.
    pub settings: &'a Settings,
    /// Now, as the caller's clock says.
    pub now: DateTime<Utc>,
    /// The `source` of events.
    pub source: &'a str,
    /// The subject prefix.
    pub prefix: &'a str,
    /// Counters to bump.
    pub counters: &'a Counters,
    /// Effects, in order.
    pub effects: Vec<Effect>,
    /// Incidents whose playbook should run.
    pub playbooks: Vec<Uuid>,
}

impl<'a> Turn<'a> {
    /// A turn at `now`.
    pub fn new(
        settings: &'a Settings,
        now: DateTime<Utc>,
        source: &'a str,
        prefix: &'a str,
        counters: &'a Counters,
    ) -> Self {
        Self {
            settings,
            now,
            source,
            prefix,
            counters,
            effects: Vec::new(),
            playbooks: Vec::new(),
        }
    }

    /// Leaves an effect.
    pub fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// Asks for a record to be written.
    pub fn persist(&mut self, record: Record) {
        self.effects.push(Effect::Persist(record));
    }

    /// An envelope around `data` (with `id` when given), encoded; None (logged and
    /// counted) when it cannot be encoded.
    pub fn envelope<T: Message>(
        &self,
        data: T,
        about: &str,
        id: Option<Uuid>,
    ) -> Option<(Vec<u8>, String)> {
        self.encode_envelope(Envelope::builder(self.source.to_owned(), data), about, id)
    }

    fn encode_envelope<T: Message>(
        &self,
        builder: toronto_protocol::EnvelopeBuilder<T>,
        about: &str,
        id: Option<Uuid>,
    ) -> Option<(Vec<u8>, String)> {
        let mut env = builder.subject(about.to_owned()).build();
        if let Some(id) = id {
            env.id = id.to_string();
        }
        match toronto_protocol::encode(&env, toronto_protocol::Encoding::Json) {
            Ok(bytes) => Some((bytes, env.id)),
            Err(e) => {
                self.counters.encode_failures.inc();
                tracing::error!(ty = T::NAME, error = %e, "cannot encode an event; not published");
                None
            }
        }
    }

    /// Publishes `<prefix>.devops.v1.events.<entity>.<what>`.
    pub fn event<T: Message>(
        &mut self,
        entity: &str,
        what: &str,
        about: &str,
        data: T,
        id: Option<Uuid>,
    ) {
        let builder = Envelope::builder(self.source.to_owned(), data).event(entity, what);
        let Some((payload, id)) = self.encode_envelope(builder, about, id) else {
            return;
        };
        let subject = format!("{}.devops.v1.events.{entity}.{what}", self.prefix);
        self.push(Effect::Event {
            subject,
            payload: payload.into(),
            msg_id: id,
        });
    }

    /// Records a change of an incident: timeline entry, event, persistence.
    pub fn emit(
        &mut self,
        inc: &mut Incident,
        what: IncidentEventKind,
        kind: TimelineKind,
        text: String,
        by: Option<&str>,
    ) {
        self.emit_with(inc, what, kind, text.clone(), text, by);
    }

    /// Like [`Turn::emit`], with the event's text apart from the timeline's.
    pub fn emit_with(
        &mut self,
        inc: &mut Incident,
        what: IncidentEventKind,
        kind: TimelineKind,
        entry: String,
        text: String,
        by: Option<&str>,
    ) {
        push_timeline(inc, self.now, kind, by, entry);
        inc.version += 1;
        let event = IncidentEvent {
            id: inc.id,
            key: inc.key.clone(),
            title: inc.title.clone(),
            service: inc.service.clone(),
            environment: inc.environment.clone(),
            state: inc.state,
            severity: inc.severity,
            alerts_firing: inc.alerts_firing,
            alerts_total: inc.alerts_total,
            change: text,
            changes: inc.changes.iter().map(|c| c.rollout_id).collect(),
            detected_at: Some(inc.detected_at),
            by: by.map(str::to_owned),
            at: self.now,
        };
        self.event("incident", what.as_str(), &inc.id.to_string(), event, None);
        self.persist(Record::Incident(inc.id));
    }
}

/// Adds an entry to an incident's timeline (alerts past the first
/// [`TIMELINE_ALERTS`] are left out; past [`TIMELINE_MAX`] the oldest after the
/// first go).
pub fn push_timeline(
    inc: &mut Incident,
    at: DateTime<Utc>,
    kind: TimelineKind,
    by: Option<&str>,
    text: String,
) {
    if kind == TimelineKind::Alert {
        let listed = inc
            .timeline
            .iter()
            .filter(|t| t.kind == TimelineKind::Alert)
            .count();
        if listed >= TIMELINE_ALERTS {
            return;
        }
    }
    if inc.timeline.len() >= TIMELINE_MAX {
        inc.timeline.remove(1);
    }
    inc.timeline.push(TimelineEntry {
        at,
        kind,
        by: by.map(str::to_owned),
        text,
    });
}

/// FNV-1a over a string, 64 bits.
pub fn fnv(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The KV key of an alert: the fingerprint when it is a valid key token, else a hash.
pub fn alert_key(fingerprint: &str) -> String {
    let valid = !fingerprint.is_empty()
        && fingerprint.len() <= 128
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        format!("alert.{fingerprint}")
    } else {
        format!(
            "alert.h{:016x}{:016x}",
            fnv(fingerprint),
            fnv(&format!("{fingerprint}#"))
        )
    }
}

/// A UUID derived from a key (the same key gives the same id), so that a page
/// published twice is stored once by the events stream's deduplication.
pub fn derived_id(key: &str) -> Uuid {
    uuid::Builder::from_custom_bytes(
        ((u128::from(fnv(key)) << 64) | u128::from(fnv(&format!("{key}/page")))).to_be_bytes(),
    )
    .into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::incident;
    use toronto_protocol::incidents::IncidentState;

    #[test]
    fn alert_keys_are_kv_tokens() {
        assert_eq!(alert_key("abc-1_2"), "alert.abc-1_2");
        let hashed = alert_key("a.b c");
        assert!(hashed.starts_with("alert.h") && hashed.len() == "alert.h".len() + 32);
        assert_ne!(alert_key("a.b c"), alert_key("a.b d"));
        assert_ne!(alert_key(""), "alert.");
        assert_eq!(derived_id("k"), derived_id("k"));
        assert_ne!(derived_id("k"), derived_id("l"));
    }

    #[test]
    fn timeline_caps_alert_entries_and_length() {
        let mut inc = incident("k", IncidentState::Triggered, None);
        let now = Utc::now();
        for i in 0..60 {
            push_timeline(&mut inc, now, TimelineKind::Alert, None, format!("a{i}"));
        }
        assert_eq!(inc.timeline.len(), TIMELINE_ALERTS);
        for i in 0..TIMELINE_MAX {
            push_timeline(&mut inc, now, TimelineKind::Note, None, format!("n{i}"));
        }
        assert_eq!(inc.timeline.len(), TIMELINE_MAX);
        assert_eq!(inc.timeline[0].text, "a0", "the first entry stays");
        assert_eq!(
            inc.timeline.last().unwrap().text,
            format!("n{}", TIMELINE_MAX - 1)
        );
    }
}
