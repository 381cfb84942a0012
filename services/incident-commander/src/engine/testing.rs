//! Helpers for the engine's unit tests: a state, settings and a clock, no NATS.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use toronto_protocol::Envelope;
use toronto_protocol::incidents::{Incident, IncidentEvent, IncidentState};

use super::grouping::new_incident;
use super::state::{AlertIn, AlertRecord, AlertState, State};
use super::turn::{Counters, Effect, Record, Turn};
use crate::settings::{Policy, Settings};

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A firing alert record.
pub fn firing(fp: &str, pairs: &[(&str, &str)], at: DateTime<Utc>) -> AlertRecord {
    AlertRecord {
        fingerprint: fp.to_owned(),
        state: AlertState::Firing,
        labels: labels(pairs),
        annotations: BTreeMap::new(),
        starts_at: at,
        ends_at: None,
        origin: "bus".into(),
        incident: None,
        suppressed: None,
        duplicates: 0,
    }
}

/// An incident in `state` with group key `key`.
pub fn incident(key: &str, state: IncidentState, resolved_at: Option<DateTime<Utc>>) -> Incident {
    let now = Utc::now();
    let mut inc = new_incident(
        key.into(),
        format!("incident {key}"),
        "shop".into(),
        "production".into(),
        BTreeMap::new(),
        "bus".into(),
        now,
        now,
    );
    inc.state = state;
    inc.resolved_at = resolved_at;
    inc
}

/// An alert notification, firing.
pub fn fire(fp: &str, pairs: &[(&str, &str)], at: DateTime<Utc>) -> AlertIn {
    AlertIn {
        fingerprint: fp.to_owned(),
        state: AlertState::Firing,
        labels: labels(pairs),
        annotations: BTreeMap::new(),
        starts_at: at,
        ends_at: None,
        origin: "bus",
    }
}

/// An alert notification, resolved.
pub fn clear(fp: &str, pairs: &[(&str, &str)], at: DateTime<Utc>) -> AlertIn {
    AlertIn {
        state: AlertState::Resolved,
        ends_at: Some(at),
        ..fire(fp, pairs, at)
    }
}

/// An engine state with settings and a clock of its own.
pub struct World {
    /// The state.
    pub st: State,
    /// The settings.
    pub settings: Settings,
    /// The counters.
    pub counters: Counters,
    /// Now.
    pub now: DateTime<Utc>,
    /// Effects of every turn so far.
    pub effects: Vec<Effect>,
    /// Playbooks started so far.
    pub playbooks: Vec<uuid::Uuid>,
}

impl World {
    /// Default settings, the clock at a fixed instant.
    pub fn new() -> Self {
        Self::with(Settings::default())
    }

    /// These settings.
    pub fn with(settings: Settings) -> Self {
        Self {
            st: State::default(),
            settings,
            counters: Counters::default(),
            now: "2026-11-26T12:00:00Z".parse().expect("a time"),
            effects: Vec::new(),
            playbooks: Vec::new(),
        }
    }

    /// A policy from YAML.
    pub fn with_policy(yaml: &str) -> Self {
        let policy = Policy::from_yaml(yaml).expect("a valid policy");
        policy.check().expect("a consistent policy");
        Self::with(Settings {
            policy,
            ..Settings::default()
        })
    }

    /// Moves the clock on.
    pub fn advance(&mut self, seconds: i64) {
        self.now += chrono::Duration::seconds(seconds);
    }

    /// Runs a verb at the current time, keeping its effects.
    pub fn run<T>(&mut self, verb: impl FnOnce(&mut State, &mut Turn<'_>) -> T) -> T {
        let mut t = Turn::new(
            &self.settings,
            self.now,
            "toronto://test",
            "toronto",
            &self.counters,
        );
        let out = verb(&mut self.st, &mut t);
        self.st.reindex(&t.effects);
        self.effects.extend(t.effects);
        self.playbooks.extend(t.playbooks);
        out
    }

    /// Takes alerts at the current time and announces their notes.
    pub fn ingest(&mut self, alerts: Vec<AlertIn>) -> super::alerts::Intake {
        self.run(|st, t| {
            let out = super::alerts::ingest(st, t, alerts);
            super::alerts::announce(st, t);
            out
        })
    }

    /// The only open incident.
    pub fn open_incident(&self) -> &Incident {
        let open: Vec<&Incident> = self
            .st
            .incidents
            .values()
            .filter(|i| i.state.is_open())
            .collect();
        assert_eq!(open.len(), 1, "one open incident");
        open[0]
    }

    /// Incident events published so far (`what`, event), emptied.
    pub fn take_incident_events(&mut self) -> Vec<(String, IncidentEvent)> {
        std::mem::take(&mut self.effects)
            .into_iter()
            .filter_map(|e| match e {
                Effect::Event {
                    subject, payload, ..
                } => {
                    let what = subject.strip_prefix("toronto.devops.v1.events.incident.")?;
                    let env: Envelope<IncidentEvent> = serde_json::from_slice(&payload).ok()?;
                    Some((what.to_owned(), env.data))
                }
                _ => None,
            })
            .collect()
    }

    /// Whether a record was asked to be written.
    pub fn persisted(&self, record: &Record) -> bool {
        self.effects
            .iter()
            .any(|e| matches!(e, Effect::Persist(r) if r == record))
    }
}
