//! What the engine keeps in memory: incidents, alerts, silences, inhibition rules and
//! recent changes, with the indexes that find an incident by its group key.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use toronto_protocol::incidents::{Incident, InhibitionRule, Silence};
use uuid::Uuid;

use super::index::Index;
use super::turn::{Effect, Record};

/// Whether an alert fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Firing.
    Firing,
    /// Resolved.
    Resolved,
}

/// An alert as every intake hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertIn {
    /// Identity (fingerprint or dedup key).
    pub fingerprint: String,
    /// Firing or resolved.
    pub state: AlertState,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// When it started.
    pub starts_at: DateTime<Utc>,
    /// When it ended, if resolved.
    pub ends_at: Option<DateTime<Utc>>,
    /// `bus`, `alertmanager`, `prometheus` or `pagerduty`.
    pub origin: &'static str,
}

/// An alert as kept (`alert.<fingerprint>` in the incidents bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Identity.
    pub fingerprint: String,
    /// Firing or resolved.
    pub state: AlertState,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it started.
    pub starts_at: DateTime<Utc>,
    /// When it ended.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Where it came from.
    pub origin: String,
    /// The incident it belongs to.
    #[serde(default)]
    pub incident: Option<Uuid>,
    /// Why it is held back (silence or inhibition), if it is.
    #[serde(default)]
    pub suppressed: Option<String>,
    /// Duplicate notifications received.
    #[serde(default)]
    pub duplicates: u64,
}

/// A rollout that finished, for change-aware triage.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentChange {
    /// The rollout.
    pub rollout_id: Uuid,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The version.
    pub version: String,
    /// The version before.
    pub previous_version: Option<String>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

/// Everything the engine knows. Its fields are the engine's own: callers go through
/// [`super::Engine`].
#[derive(Debug, Default)]
pub struct State {
    /// Incidents by id.
    pub(super) incidents: BTreeMap<Uuid, Incident>,
    /// The open incident of each group key.
    pub(super) open_by_key: HashMap<String, Uuid>,
    /// The last resolved incident of each group key.
    pub(super) resolved_by_key: HashMap<String, Uuid>,
    /// Alerts by fingerprint.
    pub(super) alerts: HashMap<String, AlertRecord>,
    /// Fingerprints held back.
    pub(super) suppressed: HashSet<String>,
    /// Silences.
    pub(super) silences: HashMap<Uuid, Silence>,
    /// Inhibition rules.
    pub(super) inhibitions: HashMap<Uuid, InhibitionRule>,
    /// Finished rollouts, newest last.
    pub(super) changes: Vec<RecentChange>,
    /// Alert notes not yet announced: one `updated` event per incident per intake.
    pub(super) pending: Vec<(Uuid, String)>,
    /// Compiled regular expressions of matchers (None: invalid).
    pub(super) regexes: RefCell<HashMap<String, Option<regex::Regex>>>,
    /// The open incidents, escalations by when they are due, and running totals.
    pub(super) index: Index,
}

impl State {
    /// The state kept in KV, loaded at start.
    pub fn restored(
        incidents: Vec<Incident>,
        alerts: Vec<AlertRecord>,
        silences: Vec<Silence>,
        inhibitions: Vec<InhibitionRule>,
    ) -> Self {
        let mut st = Self::default();
        for inc in incidents {
            if inc.state.is_open() {
                st.open_by_key.insert(inc.key.clone(), inc.id);
            } else if st
                .resolved_by_key
                .get(&inc.key)
                .and_then(|id| st.incidents.get(id))
                .is_none_or(|other| other.resolved_at < inc.resolved_at)
            {
                st.resolved_by_key.insert(inc.key.clone(), inc.id);
            }
            st.index.update(inc.id, Some(&inc));
            st.incidents.insert(inc.id, inc);
        }
        for a in alerts {
            if a.suppressed.is_some() && a.state == AlertState::Firing {
                st.suppressed.insert(a.fingerprint.clone());
            }
            st.alerts.insert(a.fingerprint.clone(), a);
        }
        for s in silences {
            st.silences.insert(s.id, s);
        }
        for r in inhibitions {
            st.inhibitions.insert(r.id, r);
        }
        st
    }

    /// Brings the index up to date with the incidents a turn asked to persist (every
    /// change of an incident is persisted) and those with alert notes not yet
    /// announced (an alert that resolved, persisted when its note is announced).
    pub(super) fn reindex(&mut self, effects: &[Effect]) {
        for e in effects {
            if let Effect::Persist(Record::Incident(id)) = e {
                self.index.update(*id, self.incidents.get(id));
            }
        }
        for (id, _) in &self.pending {
            self.index.update(*id, self.incidents.get(id));
        }
    }

    /// The open incidents.
    pub(super) fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.index
            .open()
            .iter()
            .filter_map(|id| self.incidents.get(id))
    }

    /// One incident.
    pub fn incident(&self, id: Uuid) -> Option<&Incident> {
        self.incidents.get(&id)
    }

    /// One alert.
    pub fn alert(&self, fingerprint: &str) -> Option<&AlertRecord> {
        self.alerts.get(fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{firing, incident};
    use toronto_protocol::incidents::IncidentState;

    #[test]
    fn restore_indexes_open_and_latest_resolved_incidents() {
        let now = Utc::now();
        let open = incident("k1", IncidentState::Acknowledged, None);
        let old = incident(
            "k2",
            IncidentState::Resolved,
            Some(now - chrono::Duration::hours(2)),
        );
        let new = incident(
            "k2",
            IncidentState::Closed,
            Some(now - chrono::Duration::hours(1)),
        );
        let mut held = firing("held", &[("service", "a")], now);
        held.suppressed = Some("silenced by x".into());
        let st = State::restored(
            vec![new.clone(), open.clone(), old],
            vec![held, firing("free", &[("service", "b")], now)],
            vec![],
            vec![],
        );
        assert_eq!(st.open_by_key.get("k1"), Some(&open.id));
        assert_eq!(st.resolved_by_key.get("k2"), Some(&new.id));
        assert!(st.suppressed.contains("held"));
        assert!(!st.suppressed.contains("free"));
        assert_eq!(st.incidents.len(), 3);
    }
}
