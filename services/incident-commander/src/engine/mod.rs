//! The incident engine: alerts in, incidents out.
//!
//! Each concern is a module of pure functions over [`State`], called with a [`Turn`]
//! (settings, the clock reading, and the effects the verb leaves):
//!
//! - [`alerts`]: intake and dedup, alert notes, forgetting old alerts;
//! - [`suppress`]: silences and inhibition rules;
//! - [`grouping`]: alerts into incidents by group key, reopening, manual incidents;
//! - [`triage`]: recent changes linked to incidents, severity rules;
//! - [`escalation`]: pages, levels, rounds, schedules;
//! - [`lifecycle`]: acknowledge, mitigate, resolve, close, roles, notes, recovery;
//! - [`playbooks`]: which playbook applies, autonomy, runs and their progress;
//! - [`metrics`]: MTTA, MTTR, MTBF.
//!
//! [`Engine`] holds the state under one lock, runs each verb with the wall clock and
//! hands its effects on: events and records to the [`crate::publisher`] (which writes
//! them to JetStream in order, pipelined), playbooks to the playbook runner.

pub mod alerts;
mod error;
pub mod escalation;
pub mod grouping;
mod index;
pub mod lifecycle;
pub mod metrics;
pub mod playbooks;
mod state;
pub mod suppress;
#[cfg(test)]
pub(crate) mod testing;
pub mod triage;
mod turn;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use toronto_protocol::rollout::RolloutEvent;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use toronto_protocol::incidents::IncidentEventKind;
use toronto_protocol::incidents::{
    Incident, IncidentAssign, IncidentList, IncidentMetrics, IncidentNote, IncidentOpen,
    IncidentSeveritySet, InhibitionCreate, InhibitionRule, PlaybookState, Silence, SilenceCreate,
};
use toronto_protocol::rollout::Rollout;
use uuid::Uuid;

pub use alerts::{Intake, alert_name};
pub use error::EngineError;
pub use index::Times;
pub use state::{AlertIn, AlertRecord, AlertState, RecentChange, State};
pub use turn::{Counters, Effect, Record, Turn, alert_key, derived_id, fnv};

use crate::settings::{Playbook, Settings};

/// How often alerts resolved long ago are forgotten.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// A record as written to KV.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// In the incidents bucket (else the silences bucket).
    pub in_incidents: bool,
    /// The key.
    pub key: String,
    /// The JSON value.
    pub value: Vec<u8>,
}

/// The engine: the state under one lock, and where its effects go.
#[derive(Debug)]
pub struct Engine {
    state: Mutex<State>,
    /// The settings.
    pub settings: Settings,
    source: String,
    prefix: String,
    out: mpsc::UnboundedSender<Effect>,
    /// Counters.
    pub counters: Counters,
    playbooks: mpsc::UnboundedSender<Uuid>,
}

impl Engine {
    /// A new engine; effects go to `out`, incidents whose playbook should run to
    /// `playbooks`.
    pub fn new(
        settings: Settings,
        source: String,
        prefix: String,
        out: mpsc::UnboundedSender<Effect>,
        playbooks: mpsc::UnboundedSender<Uuid>,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            settings,
            source,
            prefix,
            out,
            counters: Counters::default(),
            playbooks,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `verb` on the state at the wall clock's now, then hands its effects on.
    fn turn<T>(&self, verb: impl FnOnce(&mut State, &mut Turn<'_>) -> T) -> T {
        let mut st = self.lock();
        let mut turn = Turn::new(
            &self.settings,
            Utc::now(),
            &self.source,
            &self.prefix,
            &self.counters,
        );
        let out = verb(&mut st, &mut turn);
        st.reindex(&turn.effects);
        // Sent under the lock, so effects of two turns never interleave.
        for effect in turn.effects {
            let _ = self.out.send(effect);
        }
        for id in turn.playbooks {
            let _ = self.playbooks.send(id);
        }
        out
    }

    /// Reads the state.
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    /// Loads what was kept in KV (at start).
    pub fn restore(
        &self,
        incidents: Vec<Incident>,
        alerts: Vec<AlertRecord>,
        silences: Vec<Silence>,
        inhibitions: Vec<InhibitionRule>,
    ) {
        *self.lock() = State::restored(incidents, alerts, silences, inhibitions);
    }

    /// Waits until every change made so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        let _ = self.out.send(Effect::Barrier(tx));
        let _ = rx.await;
    }

    /// The records as they are now, encoded for KV (Ok(None): the record is gone).
    pub fn snapshot(
        &self,
        records: &[Record],
    ) -> Vec<(Record, Result<Option<Snapshot>, EngineError>)> {
        let st = self.lock();
        records
            .iter()
            .map(|r| (r.clone(), snapshot(&st, r)))
            .collect()
    }

    /// These alerts (every alert with None) encoded as entries of the alert log, at
    /// most `chunk` a piece.
    pub fn alert_log(
        &self,
        fingerprints: Option<&[String]>,
        chunk: usize,
    ) -> Result<Vec<Vec<u8>>, EngineError> {
        let st = self.lock();
        let records: Vec<&AlertRecord> = match fingerprints {
            Some(fps) => fps.iter().filter_map(|fp| st.alerts.get(fp)).collect(),
            None => st.alerts.values().collect(),
        };
        records
            .chunks(chunk.max(1))
            .map(|c| {
                serde_json::to_vec(c).map_err(|source| EngineError::Encode {
                    what: "alert log entry".into(),
                    source,
                })
            })
            .collect()
    }

    /// Takes alerts (already validated as a whole).
    pub fn ingest(&self, alerts: Vec<AlertIn>) -> Intake {
        self.turn(|st, t| alerts::ingest(st, t, alerts))
    }

    /// Announces the alert notes gathered since the last call (the publisher calls it).
    pub fn announce_pending(&self) {
        self.turn(alerts::announce);
    }

    /// `incident.open`.
    pub fn open_manual(&self, req: &IncidentOpen) -> Result<Incident, EngineError> {
        self.turn(|st, t| grouping::open_manual(st, t, req))
    }

    /// Records a finished rollout.
    pub fn record_change(&self, change: RecentChange) {
        self.turn(|st, t| triage::record_change(st, t, change));
    }

    /// Puts a rollout event on the timeline of the open incidents it touches.
    pub fn note_rollout(&self, what: RolloutEvent, r: &Rollout, at: DateTime<Utc>) {
        self.turn(|st, t| triage::note_rollout(st, t, what, r, at));
    }

    /// The incident an alert belongs to, if any.
    pub fn incident_of(&self, fingerprint: &str) -> Option<Uuid> {
        self.read(|st| st.alerts.get(fingerprint).and_then(|a| a.incident))
    }

    /// `incident.get`.
    pub fn get(&self, id: Uuid) -> Result<Incident, EngineError> {
        self.read(|st| lifecycle::get(st, id))
    }

    /// `incident.list`.
    pub fn list(
        &self,
        q: &IncidentList,
    ) -> Result<toronto_protocol::incidents::Incidents, EngineError> {
        let before = match &q.cursor {
            None => None,
            Some(c) => Some(
                c.parse::<Uuid>()
                    .map_err(|_| EngineError::BadCursor(c.clone()))?,
            ),
        };
        let (incidents, next) = self.read(|st| lifecycle::list(st, q, before));
        Ok(toronto_protocol::incidents::Incidents {
            incidents,
            next_cursor: next.map(|id| id.to_string()),
        })
    }

    /// `incident.ack`.
    pub fn ack(&self, id: Uuid, by: &str, reason: Option<&str>) -> Result<Incident, EngineError> {
        self.turn(|st, t| lifecycle::ack(st, t, id, by, reason))
    }

    /// Acknowledges the incident holding an alert (PagerDuty `acknowledge`).
    pub fn ack_alert(&self, fingerprint: &str, by: &str) -> Option<Incident> {
        self.turn(|st, t| lifecycle::ack_alert(st, t, fingerprint, by))
    }

    /// `incident.escalate` (and a failed playbook).
    pub fn escalate(
        &self,
        id: Uuid,
        by: Option<&str>,
        reason: &str,
    ) -> Result<Incident, EngineError> {
        self.turn(|st, t| lifecycle::escalate(st, t, id, by, reason))
    }

    /// `incident.mitigate` (and a remediation that ran).
    pub fn mitigate(&self, id: Uuid, by: &str, reason: &str) -> Result<Incident, EngineError> {
        self.turn(|st, t| lifecycle::mitigate(st, t, id, by, reason))
    }

    /// `incident.resolve` (and confirmed recovery).
    pub fn resolve(&self, id: Uuid, by: &str, reason: &str) -> Result<Incident, EngineError> {
        self.turn(|st, t| lifecycle::resolve(st, t, id, by, reason))
    }

    /// `incident.assign`.
    pub fn assign(&self, req: &IncidentAssign) -> Result<Incident, EngineError> {
        self.turn(|st, t| lifecycle::assign(st, t, req))
    }

    /// `incident.severity`.
    pub fn set_severity(&self, req: &IncidentSeveritySet) -> Result<Incident, EngineError> {
        self.turn(|st, t| lifecycle::set_severity(st, t, req))
    }

    /// `incident.note`.
    pub fn note(&self, req: &IncidentNote) -> Result<Incident, EngineError> {
        self.turn(|st, t| lifecycle::note(st, t, req))
    }

    /// Closes a resolved incident (its postmortem was written).
    pub fn close(
        &self,
        id: Uuid,
        by: &str,
        action_items: &[String],
    ) -> Result<Incident, EngineError> {
        self.turn(|st, t| lifecycle::close(st, t, id, by, action_items))
    }

    /// `incident.silence.create`.
    pub fn create_silence(&self, req: &SilenceCreate) -> Result<Silence, EngineError> {
        self.turn(|st, t| suppress::create_silence(st, t, req))
    }

    /// `incident.silence.list`.
    pub fn list_silences(&self, active: bool) -> Vec<Silence> {
        self.read(|st| suppress::list_silences(st, Utc::now(), active))
    }

    /// `incident.silence.expire`.
    pub fn expire_silence(&self, id: Uuid, by: &str) -> Result<Silence, EngineError> {
        self.turn(|st, t| suppress::expire_silence(st, t, id, by))
    }

    /// `incident.inhibition.create`.
    pub fn create_inhibition(&self, req: &InhibitionCreate) -> Result<InhibitionRule, EngineError> {
        self.turn(|st, t| suppress::create_inhibition(st, t, req))
    }

    /// `incident.inhibition.list`.
    pub fn list_inhibitions(&self) -> Vec<InhibitionRule> {
        self.read(suppress::list_inhibitions)
    }

    /// `incident.inhibition.delete`.
    pub fn delete_inhibition(&self, id: Uuid) -> Result<InhibitionRule, EngineError> {
        self.turn(|st, t| suppress::delete_inhibition(st, t, id))
    }

    /// `incident.playbook.run`.
    pub fn run_playbook(
        &self,
        id: Uuid,
        name: Option<&str>,
        by: &str,
    ) -> Result<Incident, EngineError> {
        self.turn(|st, t| playbooks::run(st, t, id, name, by))
    }

    /// Incidents with a playbook still running (resumed after a restart).
    pub fn running_playbooks(&self) -> Vec<Uuid> {
        self.read(playbooks::running)
    }

    /// The incident, playbook and next action of an incident whose playbook runs.
    pub fn playbook_step(&self, id: Uuid) -> Option<(Incident, Playbook, usize)> {
        self.read(|st| playbooks::next_step(st, &self.settings, id))
    }

    /// Records what an action did and moves to the next (or ends the run).
    pub fn playbook_progress(
        &self,
        id: Uuid,
        step: usize,
        text: String,
        state: Option<PlaybookState>,
    ) {
        self.turn(|st, t| playbooks::progress(st, t, id, step, text, state));
    }

    /// Writes a notification's delivery status on its incident's timeline and as an
    /// event.
    pub fn notified(&self, id: Uuid, ok: bool, text: String) {
        self.turn(|st, t| lifecycle::notified(st, t, id, ok, text));
    }

    /// An entry on an incident's timeline from outside the engine (a freeze), also
    /// published as the event `incident.<what>`.
    pub fn remark(&self, id: Uuid, what: IncidentEventKind, text: String, by: Option<&str>) {
        self.turn(|st, t| lifecycle::remark(st, t, id, what, text, by));
    }

    /// Open incidents of these severities.
    pub fn severe_open(
        &self,
        severities: &[toronto_protocol::incidents::Severity],
    ) -> Vec<Incident> {
        if severities.is_empty() {
            return Vec::new();
        }
        self.read(|st| {
            st.open_incidents()
                .filter(|i| severities.contains(&i.severity))
                .cloned()
                .collect()
        })
    }

    /// The ids of the open incidents.
    pub fn open_ids(&self) -> std::collections::BTreeSet<Uuid> {
        self.read(|st| st.index.open().clone())
    }

    /// Pages a target for a playbook.
    pub fn page_now(&self, id: Uuid, target: &str, reason: &str) {
        self.turn(|st, t| playbooks::page(st, t, id, target, reason));
    }

    /// The deadlines: pending alert notes announced, escalations that are due,
    /// alerts whose silence ended. Returns incidents whose alerts have been quiet for
    /// the hold time (to confirm recovery and resolve).
    pub fn deadlines(&self) -> Vec<Uuid> {
        self.turn(|st, t| {
            alerts::announce(st, t);
            escalation::escalate_due(st, t);
            suppress::release_expired(st, t);
            lifecycle::quiet(st, t)
        })
    }

    /// Forgets alerts resolved long ago; returns how many went.
    pub fn housekeeping(&self) -> usize {
        self.turn(|st, t| alerts::forget_resolved(st, t))
    }

    /// Whether an incident is still quiet (its alerts did not fire again).
    pub fn still_quiet(&self, id: Uuid) -> bool {
        self.read(|st| lifecycle::still_quiet(st, id))
    }

    /// Recovery could not be confirmed yet (see [`lifecycle::recovery_pending`]).
    pub fn recovery_pending(&self, id: Uuid, why: &str) {
        self.turn(|st, t| lifecycle::recovery_pending(st, t, id, why));
    }

    /// MTTA, MTTR, MTBF and counts.
    pub fn metrics(&self, service: Option<&str>) -> IncidentMetrics {
        self.read(|st| metrics::metrics(st, service))
    }

    /// Times to acknowledge and to resolve (see [`metrics::response_times`]).
    pub fn response_times(&self) -> (Times, Times) {
        self.read(metrics::response_times)
    }
}

/// A record encoded for KV (Ok(None): gone).
fn snapshot(st: &State, record: &Record) -> Result<Option<Snapshot>, EngineError> {
    fn encode<T: serde::Serialize>(
        in_incidents: bool,
        key: String,
        value: &T,
    ) -> Result<Option<Snapshot>, EngineError> {
        match serde_json::to_vec(value) {
            Ok(value) => Ok(Some(Snapshot {
                in_incidents,
                key,
                value,
            })),
            Err(source) => Err(EngineError::Encode { what: key, source }),
        }
    }
    match record {
        Record::Incident(id) => st
            .incidents
            .get(id)
            .map_or(Ok(None), |i| encode(true, format!("incident.{id}"), i)),
        Record::Alert(fp) => st
            .alerts
            .get(fp)
            .map_or(Ok(None), |a| encode(true, alert_key(fp), a)),
        Record::Silence(id) => st
            .silences
            .get(id)
            .map_or(Ok(None), |s| encode(false, format!("silence.{id}"), s)),
        Record::Inhibition(id) => st
            .inhibitions
            .get(id)
            .map_or(Ok(None), |r| encode(false, format!("inhibition.{id}"), r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::fire;

    #[tokio::test]
    async fn the_engine_hands_effects_on_in_order_and_snapshots_what_it_keeps() {
        let (out, mut effects) = mpsc::unbounded_channel();
        let (playbooks, _started) = mpsc::unbounded_channel();
        let engine = Engine::new(
            Settings::default(),
            "toronto://test".into(),
            "toronto".into(),
            out,
            playbooks,
        );
        let intake = engine.ingest(vec![fire("fp1", &[("service", "api")], Utc::now())]);
        assert_eq!(intake.fresh, 1);
        let mut seen = Vec::new();
        while let Ok(e) = effects.try_recv() {
            seen.push(e);
        }
        let opened = seen.iter().position(|e| {
            matches!(e, Effect::Event { subject, .. } if subject == "toronto.devops.v1.events.incident.opened")
        });
        let alert = seen
            .iter()
            .position(|e| matches!(e, Effect::Persist(Record::Alert(fp)) if fp == "fp1"));
        assert!(
            opened.unwrap() < alert.unwrap(),
            "the incident first, then its alert"
        );
        let id = engine.list(&IncidentList::default()).unwrap().incidents[0].id;
        let snaps = engine.snapshot(&[Record::Incident(id), Record::Silence(Uuid::nil())]);
        let first = snaps[0].1.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(
            (first.in_incidents, first.key.clone()),
            (true, format!("incident.{id}"))
        );
        let back: Incident = serde_json::from_slice(&first.value).unwrap();
        assert_eq!(back.id, id);
        assert!(
            matches!(snaps[1].1, Ok(None)),
            "a record that is gone is deleted"
        );
        let log = engine.alert_log(None, 1000).unwrap();
        let records: Vec<AlertRecord> = serde_json::from_slice(&log[0]).unwrap();
        assert_eq!(records[0].incident, Some(id));
        // A fresh alert is not forgotten by housekeeping.
        assert_eq!(engine.housekeeping(), 0);
    }
}
