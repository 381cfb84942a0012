//! The incident engine: alerts in, incidents out. Everything is decided in memory
//! under one lock (dedup, silences, inhibition, grouping, severity, triage,
//! escalation); every change leaves [`Effect`]s (events to publish, records to
//! persist) that the [`crate::publisher`] writes to JetStream in order, pipelined.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use toronto_protocol::incidents::{
    EscalationState, Incident, IncidentEvent, IncidentMetrics, IncidentState, InhibitionRule,
    LinkedChange, Matcher, Page, PlaybookRun, Severity, Silence, TimelineEntry,
};
use toronto_protocol::{Envelope, ErrorBody, ErrorCode, Message};
use uuid::Uuid;

use crate::settings::{Playbook, Settings};

/// Alert notifications listed one by one in a timeline; later ones are counted.
const TIMELINE_ALERTS: usize = 50;
/// Timeline entries kept per incident.
const TIMELINE_MAX: usize = 1000;
/// Fingerprints listed in an incident.
const FINGERPRINTS_MAX: usize = 100;

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
    /// Alert notes wait to be announced ([`Engine::announce_pending`]).
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
}

/// Everything in memory.
#[derive(Debug, Default)]
pub struct State {
    /// Incidents by id.
    pub incidents: HashMap<Uuid, Incident>,
    /// The open incident of each group key.
    pub open_by_key: HashMap<String, Uuid>,
    /// The last resolved incident of each group key.
    pub resolved_by_key: HashMap<String, Uuid>,
    /// Alerts by fingerprint.
    pub alerts: HashMap<String, AlertRecord>,
    /// Fingerprints held back.
    pub suppressed: HashSet<String>,
    /// Silences.
    pub silences: HashMap<Uuid, Silence>,
    /// Inhibition rules.
    pub inhibitions: HashMap<Uuid, InhibitionRule>,
    /// Finished rollouts, newest last.
    pub changes: Vec<RecentChange>,
    /// Alert notes not yet announced: one `updated` event per incident per intake.
    pending: Vec<(Uuid, String)>,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    state: Mutex<State>,
    /// The settings.
    pub settings: Settings,
    source: String,
    prefix: String,
    out: mpsc::UnboundedSender<Effect>,
    regexes: Mutex<HashMap<String, Option<regex::Regex>>>,
    /// Counters.
    pub counters: Counters,
    playbooks: mpsc::UnboundedSender<Uuid>,
}

fn bad(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, message)
}

fn not_found(id: Uuid) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("no incident {id}"))
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
            regexes: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            playbooks,
        }
    }

    /// The state, locked.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads what was kept in KV (at start).
    pub fn restore(
        &self,
        incidents: Vec<Incident>,
        alerts: Vec<AlertRecord>,
        silences: Vec<Silence>,
        inhibitions: Vec<InhibitionRule>,
    ) {
        let mut st = self.lock();
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
    }

    /// Incidents with a playbook still running (resumed after a restart).
    pub fn running_playbooks(&self) -> Vec<Uuid> {
        self.lock()
            .incidents
            .values()
            .filter(|i| i.playbook.as_ref().is_some_and(|p| p.state == "running"))
            .map(|i| i.id)
            .collect()
    }

    fn send(&self, effect: Effect) {
        let _ = self.out.send(effect);
    }

    /// Waits until every change made so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Effect::Barrier(tx));
        let _ = rx.await;
    }

    /// The serialized record, for the publisher: KV key, bucket, value (None: gone).
    pub fn snapshot(&self, st: &State, record: &Record) -> Option<(bool, String, Vec<u8>)> {
        let json = |v: &dyn erased::Ser| v.to_vec();
        match record {
            Record::Incident(id) => st
                .incidents
                .get(id)
                .map(|i| (true, format!("incident.{id}"), json(i))),
            Record::Alert(fp) => st.alerts.get(fp).map(|a| (true, alert_key(fp), json(a))),
            Record::Silence(id) => st
                .silences
                .get(id)
                .map(|s| (false, format!("silence.{id}"), json(s))),
            Record::Inhibition(id) => st
                .inhibitions
                .get(id)
                .map(|r| (false, format!("inhibition.{id}"), json(r))),
        }
    }

    fn event_envelope<T: Message>(
        &self,
        data: T,
        subject: &str,
        id: Option<Uuid>,
    ) -> (Vec<u8>, Uuid) {
        let mut env = Envelope::builder(self.source.clone(), data)
            .subject(subject.to_owned())
            .build();
        if let Some(id) = id {
            env.id = id;
        }
        let bytes =
            toronto_protocol::encode(&env, toronto_protocol::Encoding::Json).unwrap_or_default();
        (bytes, env.id)
    }

    fn publish_event<T: Message>(
        &self,
        entity: &str,
        what: &str,
        about: &str,
        data: T,
        id: Option<Uuid>,
    ) {
        let (payload, id) = self.event_envelope(data, about, id);
        self.send(Effect::Event {
            subject: format!("{}.devops.v1.events.{entity}.{what}", self.prefix),
            payload: payload.into(),
            msg_id: id.to_string(),
        });
    }

    /// Records a change of an incident: timeline entry, event, persistence.
    fn emit(&self, inc: &mut Incident, what: &str, kind: &str, text: String, by: Option<&str>) {
        self.emit_with(inc, what, kind, text.clone(), text, by);
    }

    /// Like `emit`, with the event's text apart from the timeline's.
    fn emit_with(
        &self,
        inc: &mut Incident,
        what: &str,
        kind: &str,
        entry: String,
        text: String,
        by: Option<&str>,
    ) {
        let now = Utc::now();
        push_timeline(inc, now, kind, by, entry);
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
            by: by.map(str::to_owned),
            at: now,
        };
        self.publish_event("incident", what, &inc.id.to_string(), event, None);
        self.send(Effect::Persist(Record::Incident(inc.id)));
    }

    fn group_key(&self, labels: &BTreeMap<String, String>) -> (String, BTreeMap<String, String>) {
        let mut key = String::new();
        let mut group = BTreeMap::new();
        for name in &self.settings.group_by {
            let value = labels.get(name).cloned().unwrap_or_default();
            if !key.is_empty() {
                key.push(',');
            }
            key.push_str(name);
            key.push('=');
            key.push_str(&value);
            group.insert(name.clone(), value);
        }
        (key, group)
    }

    // ---------------------------------------------------------------- matchers

    /// Whether every matcher matches `labels`.
    pub fn matches(&self, matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
        matchers.iter().all(|m| {
            let value = labels.get(&m.name).map(String::as_str).unwrap_or("");
            let hit = if m.is_regex {
                let mut cache = self.regexes.lock().unwrap_or_else(|e| e.into_inner());
                let re = cache
                    .entry(m.value.clone())
                    .or_insert_with(|| regex::Regex::new(&format!("^(?:{})$", m.value)).ok());
                re.as_ref().is_some_and(|re| re.is_match(value))
            } else {
                value == m.value
            };
            hit == m.is_equal
        })
    }

    /// Checks matchers: non-empty, named, valid regular expressions.
    pub fn check_matchers(what: &str, matchers: &[Matcher]) -> Result<(), ErrorBody> {
        if matchers.is_empty() {
            return Err(bad(format!("{what}: at least one matcher is needed")));
        }
        for (i, m) in matchers.iter().enumerate() {
            if m.name.trim().is_empty() {
                return Err(bad(format!("{what}[{i}].name: empty")));
            }
            if m.is_regex
                && let Err(e) = regex::Regex::new(&format!("^(?:{})$", m.value))
            {
                return Err(bad(format!(
                    "{what}[{i}].value: not a regular expression: {e}"
                )));
            }
        }
        Ok(())
    }

    fn suppression(&self, st: &State, rec: &AlertRecord, now: DateTime<Utc>) -> Option<String> {
        for s in st.silences.values() {
            if s.starts_at <= now && now < s.ends_at && self.matches(&s.matchers, &rec.labels) {
                return Some(format!("silenced by {}", s.id));
            }
        }
        if st.inhibitions.is_empty() {
            return None;
        }
        for rule in st.inhibitions.values() {
            if !self.matches(&rule.target_matchers, &rec.labels) {
                continue;
            }
            let source = st.alerts.values().find(|a| {
                a.fingerprint != rec.fingerprint
                    && a.state == AlertState::Firing
                    && a.suppressed.is_none()
                    && self.matches(&rule.source_matchers, &a.labels)
                    && rule
                        .equal
                        .iter()
                        .all(|l| a.labels.get(l) == rec.labels.get(l))
            });
            if let Some(source) = source {
                return Some(format!(
                    "inhibited by {} (rule {})",
                    source.fingerprint, rule.id
                ));
            }
        }
        None
    }

    // ---------------------------------------------------------------- intake

    /// Takes alerts (already validated as a whole). Returns how many were new,
    /// duplicates and held back.
    pub fn ingest(&self, alerts: Vec<AlertIn>) -> (usize, usize, usize) {
        let now = Utc::now();
        let mut st = self.lock();
        let (mut fresh, mut dups, mut held) = (0, 0, 0);
        let mut released = false;
        for a in alerts {
            self.counters.received.inc();
            match a.state {
                AlertState::Firing => {
                    let existing = st.alerts.get_mut(&a.fingerprint);
                    if let Some(rec) = existing
                        && rec.state == AlertState::Firing
                    {
                        rec.duplicates += 1;
                        dups += 1;
                        self.counters.duplicates.inc();
                        if let Some(id) = rec.incident
                            && let Some(inc) = st.incidents.get_mut(&id)
                        {
                            inc.duplicates += 1;
                        }
                        continue;
                    }
                    let previous = st.alerts.remove(&a.fingerprint);
                    let rec = AlertRecord {
                        fingerprint: a.fingerprint.clone(),
                        state: AlertState::Firing,
                        labels: a.labels,
                        annotations: a.annotations,
                        starts_at: a.starts_at,
                        ends_at: None,
                        origin: a.origin.to_owned(),
                        incident: previous.as_ref().and_then(|p| p.incident),
                        suppressed: None,
                        duplicates: previous.map(|p| p.duplicates).unwrap_or(0),
                    };
                    st.alerts.insert(a.fingerprint.clone(), rec);
                    if self.route(&mut st, &a.fingerprint, now) {
                        fresh += 1;
                    } else {
                        held += 1;
                    }
                    self.send(Effect::Persist(Record::Alert(a.fingerprint)));
                }
                AlertState::Resolved => {
                    let Some(rec) = st.alerts.get_mut(&a.fingerprint) else {
                        continue;
                    };
                    if rec.state == AlertState::Resolved {
                        dups += 1;
                        self.counters.duplicates.inc();
                        continue;
                    }
                    rec.state = AlertState::Resolved;
                    rec.ends_at = Some(a.ends_at.unwrap_or(now));
                    let was_suppressed = rec.suppressed.take().is_some();
                    let incident = rec.incident;
                    let name = alert_name(&rec.labels);
                    fresh += 1;
                    self.send(Effect::Persist(Record::Alert(a.fingerprint.clone())));
                    released = true;
                    if was_suppressed {
                        st.suppressed.remove(&a.fingerprint);
                        continue;
                    }
                    if let Some(id) = incident
                        && let Some(inc) = st.incidents.get_mut(&id)
                        && inc.state.is_open()
                    {
                        inc.alerts_firing = inc.alerts_firing.saturating_sub(1);
                        if inc.alerts_firing == 0 {
                            inc.quiet_since = Some(now);
                        }
                        let text = format!("alert {name} ({}) resolved", a.fingerprint);
                        st.pending.push((id, text));
                    }
                }
            }
        }
        if released && !st.suppressed.is_empty() && !st.inhibitions.is_empty() {
            self.reevaluate(&mut st, now);
        }
        if !st.pending.is_empty() {
            // Announced by the publisher when it takes its next batch: under load,
            // one `updated` event per incident for many requests.
            self.send(Effect::Announce);
        }
        (fresh, dups, held)
    }

    /// Announces the alert notes gathered since the last call (the publisher calls it).
    pub fn announce_pending(&self) {
        let mut st = self.lock();
        self.announce(&mut st);
    }

    /// Announces the pending alert notes: one `updated` event per incident, each note
    /// on its timeline.
    fn announce(&self, st: &mut State) {
        if st.pending.is_empty() {
            return;
        }
        let mut by_incident: Vec<(Uuid, Vec<String>)> = Vec::new();
        for (id, text) in std::mem::take(&mut st.pending) {
            match by_incident.iter_mut().find(|(i, _)| *i == id) {
                Some((_, texts)) => texts.push(text),
                None => by_incident.push((id, vec![text])),
            }
        }
        let now = Utc::now();
        for (id, texts) in by_incident {
            let Some(inc) = st.incidents.get_mut(&id) else {
                continue;
            };
            for text in &texts[..texts.len() - 1] {
                push_timeline(inc, now, "alert", None, text.clone());
            }
            let text = texts.join("; ");
            let last = texts.last().cloned().unwrap_or_default();
            // The last note goes to the timeline through emit; the event lists all.
            self.emit_with(inc, "updated", "alert", last, text, None);
        }
    }

    /// Puts a firing alert where it belongs: held back, or into an incident.
    /// Returns false when it is held back.
    fn route(&self, st: &mut State, fp: &str, now: DateTime<Utc>) -> bool {
        let Some(rec) = st.alerts.get(fp) else {
            return false;
        };
        if let Some(why) = self.suppression(st, rec, now) {
            if why.starts_with("silenced") {
                self.counters.silenced.inc();
            } else {
                self.counters.inhibited.inc();
            }
            if let Some(r) = st.alerts.get_mut(fp) {
                r.suppressed = Some(why);
            }
            st.suppressed.insert(fp.to_owned());
            return false;
        }
        let (key, _) = self.group_key(&rec.labels);
        let name = alert_name(&rec.labels);
        let service = rec
            .labels
            .get("service")
            .or_else(|| rec.labels.get("job"))
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        if !st.suppressed.is_empty() {
            st.suppressed.remove(fp);
        }
        if let Some(id) = st.open_by_key.get(&key).copied() {
            let State {
                incidents,
                changes,
                alerts,
                ..
            } = &mut *st;
            let rec = &alerts[fp];
            let inc = incidents.get_mut(&id).expect("open incident exists");
            let known = rec.incident == Some(id);
            inc.alerts_firing += 1;
            inc.quiet_since = None;
            if !known {
                inc.alerts_total += 1;
                if inc.fingerprints.len() < FINGERPRINTS_MAX {
                    inc.fingerprints.push(fp.to_owned());
                }
            }
            if !inc.services.contains(&service) {
                inc.services.push(service);
                self.link_changes(inc, changes);
                self.compute_severity(inc, &rec.labels);
            }
            let text = if known {
                format!("alert {name} ({fp}) firing again")
            } else {
                format!("alert {name} ({fp}) joined")
            };
            st.pending.push((id, text));
            if let Some(r) = st.alerts.get_mut(fp) {
                r.incident = Some(id);
            }
            return true;
        }
        let rec = st.alerts[fp].clone();
        // Reopen the group's last incident if it resolved a moment ago.
        if let Some(id) = st.resolved_by_key.get(&key).copied()
            && let Some(inc) = st.incidents.get_mut(&id)
            && inc.state == IncidentState::Resolved
            && inc.resolved_at.is_some_and(|t| {
                (now - t).to_std().unwrap_or_default() < self.settings.reopen_window
            })
        {
            inc.state = IncidentState::Triggered;
            inc.resolved_at = None;
            inc.quiet_since = None;
            inc.alerts_firing += 1;
            if rec.incident != Some(id) {
                inc.alerts_total += 1;
            }
            let text = format!("reopened: alert {name} ({fp}) fired again");
            self.emit(inc, "updated", "reopened", text, None);
            self.start_escalation(inc, now);
            st.resolved_by_key.remove(&key);
            st.open_by_key.insert(key, id);
            if let Some(r) = st.alerts.get_mut(fp) {
                r.incident = Some(id);
            }
            return true;
        }
        let environment = rec
            .labels
            .get("environment")
            .cloned()
            .unwrap_or_else(|| self.settings.default_environment.clone());
        let title = rec
            .annotations
            .get("summary")
            .cloned()
            .unwrap_or_else(|| format!("{name} on {service} ({environment})"));
        let mut inc = new_incident(
            key.clone(),
            title,
            service,
            environment,
            rec.labels.clone(),
            rec.origin.clone(),
            rec.starts_at.min(now),
            now,
        );
        inc.alerts_firing = 1;
        inc.alerts_total = 1;
        inc.fingerprints.push(fp.to_owned());
        self.open(
            st,
            inc,
            &rec.labels,
            None,
            Some(format!("alert {name} ({fp}) fired")),
        );
        let id = st.open_by_key[&key];
        if let Some(r) = st.alerts.get_mut(fp) {
            r.incident = Some(id);
        }
        true
    }

    fn open(
        &self,
        st: &mut State,
        mut inc: Incident,
        labels: &BTreeMap<String, String>,
        by: Option<&str>,
        first: Option<String>,
    ) -> Incident {
        let now = inc.opened_at;
        if let Some(text) = first {
            let at = inc.detected_at;
            push_timeline(&mut inc, at, "alert", None, text);
        }
        self.link_changes(&mut inc, &st.changes);
        if !inc.severity_manual {
            self.compute_severity(&mut inc, labels);
        }
        let text = format!("opened {} {}: {}", inc.severity.label(), inc.id, inc.title);
        self.emit(&mut inc, "opened", "opened", text, by);
        self.start_escalation(&mut inc, now);
        self.match_playbook(&mut inc);
        st.open_by_key.insert(inc.key.clone(), inc.id);
        st.incidents.insert(inc.id, inc.clone());
        inc
    }

    /// Opens an incident by hand (`incident.open`).
    pub fn open_manual(
        &self,
        req: &toronto_protocol::incidents::IncidentOpen,
    ) -> Result<Incident, ErrorBody> {
        for (field, v) in [
            ("title", &req.title),
            ("service", &req.service),
            ("environment", &req.environment),
            ("by", &req.by),
        ] {
            if v.trim().is_empty() {
                return Err(bad(format!("{field}: empty")));
            }
        }
        let now = Utc::now();
        let mut labels = req.labels.clone();
        labels.insert("service".into(), req.service.clone());
        labels.insert("environment".into(), req.environment.clone());
        let (mut key, _) = self.group_key(&labels);
        let mut st = self.lock();
        if st.open_by_key.contains_key(&key) {
            // A second manual incident for the same group stands on its own.
            key = format!("{key},manual={}", Uuid::now_v7());
        }
        let mut inc = new_incident(
            key,
            req.title.clone(),
            req.service.clone(),
            req.environment.clone(),
            labels.clone(),
            "manual".into(),
            now,
            now,
        );
        if let Some(sev) = req.severity {
            inc.severity = sev;
            inc.severity_manual = true;
            inc.severity_reason = format!("set by {}", req.by);
        }
        Ok(self.open(&mut st, inc, &labels, Some(&req.by), None))
    }

    /// Re-evaluates held-back alerts (a silence ended, an inhibiting alert resolved).
    fn reevaluate(&self, st: &mut State, now: DateTime<Utc>) {
        let held: Vec<String> = st.suppressed.iter().cloned().collect();
        for fp in held {
            let Some(rec) = st.alerts.get(&fp) else {
                st.suppressed.remove(&fp);
                continue;
            };
            if rec.state != AlertState::Firing {
                st.suppressed.remove(&fp);
                continue;
            }
            let mut probe = rec.clone();
            probe.suppressed = None;
            if self.suppression(st, &probe, now).is_none() {
                if let Some(r) = st.alerts.get_mut(&fp) {
                    r.suppressed = None;
                }
                self.route(st, &fp, now);
                self.send(Effect::Persist(Record::Alert(fp)));
            }
        }
        self.announce(st);
    }

    // ---------------------------------------------------------------- triage

    /// Records a finished rollout.
    pub fn record_change(&self, change: RecentChange) {
        let mut st = self.lock();
        if st.changes.iter().any(|c| c.rollout_id == change.rollout_id) {
            return;
        }
        st.changes.push(change);
        if st.changes.len() > 1000 {
            st.changes.remove(0);
        }
        // A change recorded after its incident opened (events race) is linked late.
        let State {
            incidents, changes, ..
        } = &mut *st;
        for inc in incidents.values_mut().filter(|i| i.state.is_open()) {
            let before = inc.changes.len();
            self.link_changes(inc, changes);
            if inc.changes.len() > before {
                let labels = inc.labels.clone();
                self.compute_severity(inc, &labels);
                let text = format!(
                    "change linked; severity {} ({})",
                    inc.severity.label(),
                    inc.severity_reason
                );
                self.emit(inc, "updated", "change", text, None);
            }
        }
    }

    /// Puts a rollout event of an affected service on the timeline of its open
    /// incidents (the rollback a playbook asked for, a fix rolled out by hand).
    pub fn note_rollout(
        &self,
        what: &str,
        r: &toronto_protocol::rollout::Rollout,
        at: DateTime<Utc>,
    ) {
        let mut st = self.lock();
        let text = format!(
            "rollout {} {what}: {} {} in {}{}",
            r.id,
            r.service,
            r.version,
            r.environment,
            if r.is_rollback { " (rollback)" } else { "" }
        );
        for inc in st.incidents.values_mut() {
            if inc.state.is_open()
                && inc.services.contains(&r.service)
                && inc.environment == r.environment
                && at >= inc.opened_at
                && !inc
                    .timeline
                    .iter()
                    .any(|t| t.kind == "rollout" && t.text == text)
            {
                self.emit(inc, "updated", "rollout", text.clone(), Some("deployer"));
            }
        }
    }

    fn link_changes(&self, inc: &mut Incident, changes: &[RecentChange]) {
        let window = chrono::Duration::from_std(self.settings.change_window).unwrap_or_default();
        let mut added = Vec::new();
        // The change in effect: per service, the last rollout that finished before the
        // first alert (an earlier one it replaced is not running any more).
        let mut latest: BTreeMap<&str, &RecentChange> = BTreeMap::new();
        for c in changes {
            if inc.services.contains(&c.service)
                && c.environment == inc.environment
                && c.finished_at <= inc.detected_at
                && latest
                    .get(c.service.as_str())
                    .is_none_or(|l| l.finished_at < c.finished_at)
            {
                latest.insert(&c.service, c);
            }
        }
        for c in latest.into_values() {
            let before = inc.detected_at - c.finished_at;
            if before <= window && !inc.changes.iter().any(|l| l.rollout_id == c.rollout_id) {
                let link = LinkedChange {
                    rollout_id: c.rollout_id,
                    service: c.service.clone(),
                    environment: c.environment.clone(),
                    version: c.version.clone(),
                    previous_version: c.previous_version.clone(),
                    finished_at: c.finished_at,
                    seconds_before_alert: before.num_seconds(),
                };
                added.push(format!(
                    "linked change: rollout {} of {} {} (from {}) finished {}s before the first alert",
                    c.rollout_id,
                    c.service,
                    c.version,
                    c.previous_version.as_deref().unwrap_or("nothing"),
                    before.num_seconds()
                ));
                inc.changes.push(link);
            }
        }
        for text in added {
            push_timeline(inc, Utc::now(), "change", None, text);
        }
    }

    fn compute_severity(&self, inc: &mut Incident, labels: &BTreeMap<String, String>) {
        if inc.severity_manual {
            return;
        }
        let policy = &self.settings.policy;
        let mut all = inc.labels.clone();
        for (k, v) in labels {
            all.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let tier = all.get("slo_tier").cloned().unwrap_or_default();
        let rule = policy.severity_rules.iter().enumerate().find(|(_, r)| {
            r.labels.iter().all(|(k, v)| all.get(k) == Some(v))
                && (r.environments.is_empty() || r.environments.contains(&inc.environment))
                && (r.slo_tiers.is_empty() || r.slo_tiers.contains(&tier))
                && r.min_services.is_none_or(|n| inc.services.len() >= n)
        });
        let (mut sev, mut reason) = match rule {
            Some((i, r)) => (r.severity, format!("severity rule {}", i + 1)),
            None => (policy.default_severity, "default severity".to_owned()),
        };
        if !inc.changes.is_empty() {
            sev = sev.raised();
            reason.push_str(", raised one step: a recent change is implicated");
        }
        if sev != inc.severity || reason != inc.severity_reason {
            if inc.version > 0 && sev != inc.severity {
                let text = format!(
                    "severity {} -> {} ({reason})",
                    inc.severity.label(),
                    sev.label()
                );
                push_timeline(inc, Utc::now(), "severity", None, text);
            }
            inc.severity = sev;
            inc.severity_reason = reason;
        }
    }

    // ---------------------------------------------------------------- escalation

    fn start_escalation(&self, inc: &mut Incident, now: DateTime<Utc>) {
        let policy = &self.settings.policy;
        let name = policy
            .service_escalation
            .get(&inc.service)
            .or(policy.default_escalation.as_ref());
        let cycle = inc.escalation.cycle + u32::from(inc.escalation.pages_sent > 0);
        inc.escalation = EscalationState {
            policy: name.cloned(),
            level: 0,
            cycle,
            next_at: None,
            pages_sent: inc.escalation.pages_sent,
            exhausted: false,
        };
        if name.is_some() {
            self.page_level(inc, now, "incident opened");
        }
    }

    fn page_level(&self, inc: &mut Incident, now: DateTime<Utc>, reason: &str) {
        let Some(policy) = inc.escalation.policy.as_ref().and_then(|n| {
            self.settings
                .policy
                .escalation_policies
                .iter()
                .find(|p| &p.name == n)
        }) else {
            return;
        };
        let level = &policy.levels[inc.escalation.level.min(policy.levels.len() - 1)];
        for target in &level.notify {
            self.page(inc, target, Some(inc.escalation.level), reason, now);
        }
        let wait = chrono::Duration::milliseconds((level.ack_timeout_seconds * 1000.0) as i64);
        inc.escalation.next_at = Some(now + wait);
        self.send(Effect::Persist(Record::Incident(inc.id)));
    }

    /// Pages one target (resolving a schedule to the person on call).
    pub fn page(
        &self,
        inc: &mut Incident,
        target: &str,
        level: Option<usize>,
        reason: &str,
        now: DateTime<Utc>,
    ) {
        let resolved = match target.split_once(':') {
            Some(("schedule", name)) => self
                .settings
                .policy
                .schedules
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.on_call(now))
                .map(|who| format!("user:{who}"))
                .unwrap_or_else(|| target.to_owned()),
            _ => target.to_owned(),
        };
        let key = match level {
            Some(l) => format!("{}:{}:{l}:{resolved}", inc.id, inc.escalation.cycle),
            None => format!("{}:playbook:{}:{resolved}", inc.id, inc.version),
        };
        let page = Page {
            key: key.clone(),
            incident_id: inc.id,
            title: inc.title.clone(),
            severity: inc.severity,
            target: resolved.clone(),
            level,
            cycle: inc.escalation.cycle,
            reason: reason.to_owned(),
            at: now,
        };
        let id = derived_id(&key);
        if let Some(role) = resolved.strip_prefix("agent:") {
            let (payload, _) = self.event_envelope(page.clone(), &inc.id.to_string(), Some(id));
            self.send(Effect::Notify {
                subject: format!("{}.agents.{role}.v1.notify", self.prefix),
                payload: payload.into(),
            });
        }
        self.publish_event("page", "sent", &inc.id.to_string(), page, Some(id));
        self.counters.pages.inc();
        inc.escalation.pages_sent += 1;
        let lvl = level
            .map(|l| format!(" (level {l}, round {})", inc.escalation.cycle))
            .unwrap_or_default();
        push_timeline(
            inc,
            now,
            "page",
            None,
            format!("paged {resolved}{lvl}: {reason}"),
        );
    }

    /// Moves to the next escalation level (or round) and pages it.
    fn advance(&self, inc: &mut Incident, now: DateTime<Utc>, reason: &str, by: Option<&str>) {
        let policy = inc
            .escalation
            .policy
            .as_ref()
            .and_then(|n| {
                self.settings
                    .policy
                    .escalation_policies
                    .iter()
                    .find(|p| &p.name == n)
            })
            .cloned();
        let Some(policy) = policy else {
            inc.escalation.next_at = None;
            self.emit(
                inc,
                "escalated",
                "escalated",
                format!("escalated: {reason} (no escalation policy)"),
                by,
            );
            return;
        };
        let mut level = inc.escalation.level + 1;
        if level >= policy.levels.len() {
            if inc.escalation.cycle >= policy.repeat {
                inc.escalation.exhausted = true;
                inc.escalation.next_at = None;
                self.emit(
                    inc,
                    "escalated",
                    "escalated",
                    format!("escalation exhausted: {reason}"),
                    by,
                );
                return;
            }
            inc.escalation.cycle += 1;
            level = 0;
        }
        inc.escalation.level = level;
        self.page_level(inc, now, reason);
        let text = format!(
            "escalated to level {level} (round {}): {reason}",
            inc.escalation.cycle
        );
        self.emit(inc, "escalated", "escalated", text, by);
    }

    // ---------------------------------------------------------------- commands

    fn with_incident<T>(
        &self,
        id: Uuid,
        f: impl FnOnce(&Self, &mut Incident) -> Result<T, ErrorBody>,
    ) -> Result<T, ErrorBody> {
        let mut st = self.lock();
        let inc = st.incidents.get_mut(&id).ok_or_else(|| not_found(id))?;
        f(self, inc)
    }

    /// One incident.
    pub fn get(&self, id: Uuid) -> Result<Incident, ErrorBody> {
        self.lock()
            .incidents
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Incidents, newest first.
    pub fn list(&self, q: &toronto_protocol::incidents::IncidentList) -> Vec<Incident> {
        let st = self.lock();
        let mut out: Vec<&Incident> = st
            .incidents
            .values()
            .filter(|i| q.state.is_none_or(|s| i.state == s))
            .filter(|i| q.service.as_ref().is_none_or(|s| &i.service == s))
            .filter(|i| !q.open || i.state.is_open())
            .collect();
        out.sort_by_key(|i| std::cmp::Reverse(i.opened_at));
        out.into_iter()
            .take(q.limit.unwrap_or(50))
            .cloned()
            .collect()
    }

    /// `incident.ack`.
    pub fn ack(&self, id: Uuid, by: &str, reason: Option<&str>) -> Result<Incident, ErrorBody> {
        self.with_incident(id, |e, inc| {
            if !inc.state.is_open() {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("incident {id} is {:?}", inc.state).to_lowercase(),
                ));
            }
            let now = Utc::now();
            if inc.state == IncidentState::Triggered {
                inc.state = IncidentState::Acknowledged;
            }
            inc.acknowledged_at.get_or_insert(now);
            inc.escalation.next_at = None;
            if inc.commander.is_none() {
                inc.commander = Some(by.to_owned());
            }
            let text = format!("acknowledged by {by}{}", suffix(reason));
            e.emit(inc, "acknowledged", "acknowledged", text, Some(by));
            Ok(inc.clone())
        })
    }

    /// `incident.escalate` (and a failed recovery check).
    pub fn escalate(
        &self,
        id: Uuid,
        by: Option<&str>,
        reason: &str,
    ) -> Result<Incident, ErrorBody> {
        self.with_incident(id, |e, inc| {
            if !inc.state.is_open() {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("incident {id} is not open"),
                ));
            }
            inc.state = IncidentState::Triggered;
            e.advance(inc, Utc::now(), reason, by);
            Ok(inc.clone())
        })
    }

    /// `incident.mitigate` (and a remediation that ran).
    pub fn mitigate(&self, id: Uuid, by: &str, reason: &str) -> Result<Incident, ErrorBody> {
        self.with_incident(id, |e, inc| {
            if !inc.state.is_open() {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("incident {id} is not open"),
                ));
            }
            inc.state = IncidentState::Mitigated;
            inc.mitigated_at.get_or_insert(Utc::now());
            inc.escalation.next_at = None;
            e.emit(
                inc,
                "mitigated",
                "mitigated",
                format!("mitigated: {reason}"),
                Some(by),
            );
            Ok(inc.clone())
        })
    }

    /// `incident.resolve` (and confirmed recovery).
    pub fn resolve(&self, id: Uuid, by: &str, reason: &str) -> Result<Incident, ErrorBody> {
        let mut st = self.lock();
        self.announce(&mut st);
        let inc = st.incidents.get_mut(&id).ok_or_else(|| not_found(id))?;
        if !inc.state.is_open() {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!("incident {id} is not open"),
            ));
        }
        let now = Utc::now();
        inc.state = IncidentState::Resolved;
        inc.resolved_at = Some(now);
        inc.mitigated_at.get_or_insert(now);
        inc.escalation.next_at = None;
        inc.quiet_since = None;
        self.emit(
            inc,
            "resolved",
            "resolved",
            format!("resolved: {reason}"),
            Some(by),
        );
        let out = inc.clone();
        if st.open_by_key.get(&out.key) == Some(&id) {
            st.open_by_key.remove(&out.key);
        }
        st.resolved_by_key.insert(out.key.clone(), id);
        Ok(out)
    }

    /// `incident.assign`.
    pub fn assign(
        &self,
        req: &toronto_protocol::incidents::IncidentAssign,
    ) -> Result<Incident, ErrorBody> {
        use toronto_protocol::incidents::IncidentRole;
        if req.who.trim().is_empty() {
            return Err(bad("who: empty"));
        }
        self.with_incident(req.id, |e, inc| {
            let role = match req.role {
                IncidentRole::Commander => {
                    inc.commander = Some(req.who.clone());
                    "commander"
                }
                IncidentRole::Scribe => {
                    inc.scribe = Some(req.who.clone());
                    "scribe"
                }
                IncidentRole::Responder => {
                    if !inc.responders.contains(&req.who) {
                        inc.responders.push(req.who.clone());
                    }
                    "responder"
                }
            };
            if req.who.starts_with("agent:") {
                e.page(
                    inc,
                    &req.who,
                    None,
                    &format!("assigned as {role}"),
                    Utc::now(),
                );
            }
            let text = format!("{} is {role} (assigned by {})", req.who, req.by);
            e.emit(inc, "updated", "assigned", text, Some(&req.by));
            Ok(inc.clone())
        })
    }

    /// `incident.severity`.
    pub fn set_severity(
        &self,
        req: &toronto_protocol::incidents::IncidentSeveritySet,
    ) -> Result<Incident, ErrorBody> {
        self.with_incident(req.id, |e, inc| {
            let from = inc.severity;
            inc.severity = req.severity;
            inc.severity_manual = true;
            inc.severity_reason = format!("set by {}{}", req.by, suffix(req.reason.as_deref()));
            let text = format!(
                "severity {} -> {} by {}{}",
                from.label(),
                req.severity.label(),
                req.by,
                suffix(req.reason.as_deref())
            );
            e.emit(inc, "updated", "severity", text, Some(&req.by));
            Ok(inc.clone())
        })
    }

    /// `incident.note`.
    pub fn note(
        &self,
        req: &toronto_protocol::incidents::IncidentNote,
    ) -> Result<Incident, ErrorBody> {
        if req.text.trim().is_empty() {
            return Err(bad("text: empty"));
        }
        self.with_incident(req.id, |e, inc| {
            if req.action_item {
                inc.action_items.push(req.text.clone());
            }
            let kind = if req.action_item {
                "action_item"
            } else {
                "note"
            };
            e.emit(inc, "updated", kind, req.text.clone(), Some(&req.by));
            Ok(inc.clone())
        })
    }

    /// Closes a resolved incident (its postmortem was written).
    pub fn close(
        &self,
        id: Uuid,
        by: &str,
        action_items: &[String],
    ) -> Result<Incident, ErrorBody> {
        self.with_incident(id, |e, inc| {
            match inc.state {
                IncidentState::Resolved => {}
                IncidentState::Closed => {
                    if !action_items.is_empty() {
                        inc.action_items.extend(action_items.iter().cloned());
                        e.send(Effect::Persist(Record::Incident(inc.id)));
                    }
                    return Ok(inc.clone());
                }
                _ => {
                    return Err(ErrorBody::new(
                        ErrorCode::Conflict,
                        format!("incident {id} is not resolved yet"),
                    ));
                }
            }
            inc.action_items.extend(action_items.iter().cloned());
            inc.state = IncidentState::Closed;
            inc.closed_at = Some(Utc::now());
            e.emit(
                inc,
                "closed",
                "closed",
                format!("postmortem written by {by}; closed"),
                Some(by),
            );
            Ok(inc.clone())
        })
    }

    // ---------------------------------------------------------------- silences

    /// `incident.silence.create`.
    pub fn create_silence(
        &self,
        req: &toronto_protocol::incidents::SilenceCreate,
    ) -> Result<Silence, ErrorBody> {
        Self::check_matchers("matchers", &req.matchers)?;
        let starts_at = req.starts_at.unwrap_or_else(Utc::now);
        if req.ends_at <= starts_at {
            return Err(bad("ends_at: not after starts_at"));
        }
        if req.created_by.trim().is_empty() {
            return Err(bad("created_by: empty"));
        }
        let silence = Silence {
            id: Uuid::now_v7(),
            matchers: req.matchers.clone(),
            starts_at,
            ends_at: req.ends_at,
            created_by: req.created_by.clone(),
            comment: req.comment.clone(),
            expired_by: None,
        };
        self.lock().silences.insert(silence.id, silence.clone());
        self.send(Effect::Persist(Record::Silence(silence.id)));
        Ok(silence)
    }

    /// `incident.silence.list`.
    pub fn list_silences(&self, active: bool) -> Vec<Silence> {
        let now = Utc::now();
        let mut out: Vec<Silence> = self
            .lock()
            .silences
            .values()
            .filter(|s| !active || (s.starts_at <= now && now < s.ends_at))
            .cloned()
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.id));
        out
    }

    /// `incident.silence.expire`: ends it now; its alerts that still fire are handled.
    pub fn expire_silence(&self, id: Uuid, by: &str) -> Result<Silence, ErrorBody> {
        let now = Utc::now();
        let mut st = self.lock();
        let s = st
            .silences
            .get_mut(&id)
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no silence {id}")))?;
        if s.ends_at <= now {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!("silence {id} already ended"),
            ));
        }
        s.ends_at = now;
        s.expired_by = Some(by.to_owned());
        let out = s.clone();
        self.send(Effect::Persist(Record::Silence(id)));
        self.reevaluate(&mut st, now);
        Ok(out)
    }

    /// `incident.inhibition.create`.
    pub fn create_inhibition(
        &self,
        req: &toronto_protocol::incidents::InhibitionCreate,
    ) -> Result<InhibitionRule, ErrorBody> {
        Self::check_matchers("source_matchers", &req.source_matchers)?;
        Self::check_matchers("target_matchers", &req.target_matchers)?;
        if req.created_by.trim().is_empty() {
            return Err(bad("created_by: empty"));
        }
        let rule = InhibitionRule {
            id: Uuid::now_v7(),
            source_matchers: req.source_matchers.clone(),
            target_matchers: req.target_matchers.clone(),
            equal: req.equal.clone(),
            created_by: req.created_by.clone(),
            comment: req.comment.clone(),
            created_at: Utc::now(),
        };
        self.lock().inhibitions.insert(rule.id, rule.clone());
        self.send(Effect::Persist(Record::Inhibition(rule.id)));
        Ok(rule)
    }

    /// `incident.inhibition.list`.
    pub fn list_inhibitions(&self) -> Vec<InhibitionRule> {
        let mut out: Vec<InhibitionRule> = self.lock().inhibitions.values().cloned().collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// `incident.inhibition.delete`: held-back alerts it no longer holds are handled.
    pub fn delete_inhibition(&self, id: Uuid) -> Result<InhibitionRule, ErrorBody> {
        let mut st = self.lock();
        let rule = st.inhibitions.remove(&id).ok_or_else(|| {
            ErrorBody::new(ErrorCode::NotFound, format!("no inhibition rule {id}"))
        })?;
        self.send(Effect::Persist(Record::Inhibition(id)));
        self.reevaluate(&mut st, Utc::now());
        Ok(rule)
    }

    /// Acknowledges the incident holding an alert (PagerDuty `acknowledge`).
    pub fn ack_alert(&self, fingerprint: &str, by: &str) -> Option<Incident> {
        let id = self
            .lock()
            .alerts
            .get(fingerprint)
            .and_then(|a| a.incident)?;
        self.ack(
            id,
            by,
            Some("acknowledged through the PagerDuty Events API"),
        )
        .ok()
    }

    // ---------------------------------------------------------------- playbooks

    fn match_playbook(&self, inc: &mut Incident) {
        let Some(pb) = self
            .settings
            .policy
            .playbooks
            .iter()
            .find(|p| playbook_applies(p, inc))
        else {
            return;
        };
        let allowed = self.autonomous(inc) || !pb.actions.iter().any(|a| a.changes_target());
        let state = if allowed {
            "running"
        } else {
            "waiting_approval"
        };
        inc.playbook = Some(PlaybookRun {
            name: pb.name.clone(),
            step: 0,
            state: state.into(),
            started_at: Utc::now(),
            detail: None,
        });
        let text = if allowed {
            format!("playbook {} started", pb.name)
        } else {
            format!(
                "playbook {} needs a human: {} in {} may not act alone (incident.playbook.run)",
                pb.name,
                inc.severity.label(),
                inc.environment
            )
        };
        push_timeline(inc, Utc::now(), "playbook", None, text);
        if allowed {
            let _ = self.playbooks.send(inc.id);
        }
    }

    fn autonomous(&self, inc: &Incident) -> bool {
        let a = &self.settings.policy.autonomy;
        a.severities.contains(&inc.severity) && a.environments.contains(&inc.environment)
    }

    /// `incident.playbook.run`: starts (or restarts) a playbook under a human's authority.
    pub fn run_playbook(
        &self,
        id: Uuid,
        name: Option<&str>,
        by: &str,
    ) -> Result<Incident, ErrorBody> {
        self.with_incident(id, |e, inc| {
            if !inc.state.is_open() {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("incident {id} is not open"),
                ));
            }
            let name = name
                .map(str::to_owned)
                .or_else(|| inc.playbook.as_ref().map(|p| p.name.clone()))
                .ok_or_else(|| bad("playbook: none matched this incident; name one"))?;
            if !e.settings.policy.playbooks.iter().any(|p| p.name == name) {
                return Err(ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("no playbook {name}"),
                ));
            }
            if inc.playbook.as_ref().is_some_and(|p| p.state == "running") {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    "a playbook is running".to_owned(),
                ));
            }
            inc.playbook = Some(PlaybookRun {
                name: name.clone(),
                step: 0,
                state: "running".into(),
                started_at: Utc::now(),
                detail: Some(format!("approved by {by}")),
            });
            e.emit(
                inc,
                "updated",
                "playbook",
                format!("playbook {name} started by {by}"),
                Some(by),
            );
            let _ = e.playbooks.send(id);
            Ok(inc.clone())
        })
    }

    /// The playbook and next action of an incident whose playbook runs.
    pub fn playbook_step(&self, id: Uuid) -> Option<(Incident, Playbook, usize)> {
        let st = self.lock();
        let inc = st.incidents.get(&id)?;
        let run = inc.playbook.as_ref()?;
        if run.state != "running" || !inc.state.is_open() {
            return None;
        }
        let pb = self
            .settings
            .policy
            .playbooks
            .iter()
            .find(|p| p.name == run.name)?;
        Some((inc.clone(), pb.clone(), run.step))
    }

    /// Records what an action did and moves to the next (or ends the run).
    pub fn playbook_progress(&self, id: Uuid, step: usize, text: String, state: Option<&str>) {
        let _ = self.with_incident(id, |e, inc| {
            if let Some(run) = inc.playbook.as_mut()
                && run.step == step
            {
                run.step = step + 1;
                run.detail = Some(text.clone());
                if let Some(s) = state {
                    run.state = s.to_owned();
                }
            }
            e.emit(inc, "updated", "playbook", text, Some("playbook"));
            Ok(())
        });
    }

    /// Pages a target for a playbook.
    pub fn page_now(&self, id: Uuid, target: &str, reason: &str) {
        let _ = self.with_incident(id, |e, inc| {
            e.page(inc, target, None, reason, Utc::now());
            e.send(Effect::Persist(Record::Incident(inc.id)));
            Ok(())
        });
    }

    // ---------------------------------------------------------------- deadlines

    /// Checks deadlines: escalations due, silences that ended. Returns incidents
    /// whose alerts have been quiet for the hold time (to confirm and resolve).
    pub fn tick(&self) -> Vec<Uuid> {
        let now = Utc::now();
        let hold = chrono::Duration::from_std(self.settings.resolve_hold).unwrap_or_default();
        let mut st = self.lock();
        self.announce(&mut st);
        let due: Vec<Uuid> = st
            .incidents
            .values()
            .filter(|i| {
                i.state == IncidentState::Triggered
                    && i.escalation.next_at.is_some_and(|t| t <= now)
            })
            .map(|i| i.id)
            .collect();
        for id in due {
            if let Some(inc) = st.incidents.get_mut(&id) {
                let reason = "not acknowledged in time";
                self.advance(inc, now, reason, None);
            }
        }
        if !st.suppressed.is_empty() {
            self.reevaluate(&mut st, now);
        }
        // Forget alerts resolved long ago (past the reopen window and an hour); the
        // alert log drops them at its next compaction.
        let keep = chrono::Duration::from_std(self.settings.reopen_window).unwrap_or_default()
            + chrono::Duration::hours(1);
        if now.timestamp() % 60 == 0 {
            st.alerts.retain(|_, a| {
                a.state == AlertState::Firing || a.ends_at.is_none_or(|t| now - t < keep)
            });
        }
        st.incidents
            .values()
            .filter(|i| {
                i.state.is_open()
                    && i.alerts_firing == 0
                    && i.quiet_since.is_some_and(|t| now - t >= hold)
                    && i.playbook.as_ref().is_none_or(|p| p.state != "running")
            })
            .map(|i| i.id)
            .collect()
    }

    /// Whether an incident is still quiet (its alerts did not fire again).
    pub fn still_quiet(&self, id: Uuid) -> bool {
        self.lock()
            .incidents
            .get(&id)
            .is_some_and(|i| i.state.is_open() && i.alerts_firing == 0 && i.quiet_since.is_some())
    }

    /// Recovery could not be confirmed yet: mitigated, and after the recovery timeout
    /// the incident escalates again.
    pub fn recovery_pending(&self, id: Uuid, why: &str) {
        let timeout =
            chrono::Duration::from_std(self.settings.recovery_timeout).unwrap_or_default();
        let now = Utc::now();
        let mut escalate = false;
        let _ = self.with_incident(id, |e, inc| {
            if inc.state != IncidentState::Mitigated {
                inc.state = IncidentState::Mitigated;
                inc.mitigated_at.get_or_insert(now);
                e.emit(
                    inc,
                    "mitigated",
                    "mitigated",
                    format!("alerts resolved; waiting for the monitor to confirm recovery: {why}"),
                    None,
                );
            }
            if inc.quiet_since.is_some_and(|t| now - t >= timeout) {
                inc.quiet_since = Some(now);
                escalate = true;
            }
            Ok(())
        });
        if escalate {
            let _ = self.escalate(
                id,
                None,
                &format!("recovery not confirmed by the monitor: {why}"),
            );
        }
    }

    // ---------------------------------------------------------------- metrics

    /// MTTA, MTTR, MTBF and counts.
    pub fn metrics(&self, service: Option<&str>) -> IncidentMetrics {
        let st = self.lock();
        let incidents: Vec<&Incident> = st
            .incidents
            .values()
            .filter(|i| service.is_none_or(|s| i.service == s))
            .collect();
        let mean =
            |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        let secs = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_milliseconds() as f64 / 1000.0;
        let mtta = mean(
            incidents
                .iter()
                .filter_map(|i| i.acknowledged_at.map(|t| secs(i.opened_at, t)))
                .collect(),
        );
        let mttr = mean(
            incidents
                .iter()
                .filter_map(|i| i.resolved_at.map(|t| secs(i.opened_at, t)))
                .collect(),
        );
        let mut by_service: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
        for i in &incidents {
            by_service.entry(&i.service).or_default().push(i.opened_at);
        }
        let mut gaps = Vec::new();
        for times in by_service.values_mut() {
            times.sort();
            gaps.extend(times.windows(2).map(|w| secs(w[0], w[1])));
        }
        let mut by_severity: BTreeMap<String, u64> = ["sev1", "sev2", "sev3", "sev4"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for i in &incidents {
            *by_severity
                .entry(i.severity.label().to_lowercase())
                .or_default() += 1;
        }
        IncidentMetrics {
            incidents: incidents.len() as u64,
            open: incidents.iter().filter(|i| i.state.is_open()).count() as u64,
            by_severity,
            mtta_seconds: mtta,
            mttr_seconds: mttr,
            mtbf_seconds: mean(gaps),
        }
    }
}

fn suffix(reason: Option<&str>) -> String {
    reason.map(|r| format!(": {r}")).unwrap_or_default()
}

/// The name of an alert: its `alertname`, else its summary.
pub fn alert_name(labels: &BTreeMap<String, String>) -> String {
    labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| "alert".to_owned())
}

fn push_timeline(
    inc: &mut Incident,
    at: DateTime<Utc>,
    kind: &str,
    by: Option<&str>,
    text: String,
) {
    if kind == "alert" {
        let listed = inc.timeline.iter().filter(|t| t.kind == "alert").count();
        if listed >= TIMELINE_ALERTS {
            return;
        }
    }
    if inc.timeline.len() >= TIMELINE_MAX {
        inc.timeline.remove(1);
    }
    inc.timeline.push(TimelineEntry {
        at,
        kind: kind.to_owned(),
        by: by.map(str::to_owned),
        text,
    });
}

#[allow(clippy::too_many_arguments)]
fn new_incident(
    key: String,
    title: String,
    service: String,
    environment: String,
    labels: BTreeMap<String, String>,
    origin: String,
    detected_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Incident {
    Incident {
        id: Uuid::now_v7(),
        key,
        title,
        services: vec![service.clone()],
        service,
        environment,
        labels,
        state: IncidentState::Triggered,
        severity: Severity::Sev3,
        severity_reason: String::new(),
        severity_manual: false,
        commander: None,
        scribe: None,
        responders: Vec::new(),
        alerts_firing: 0,
        alerts_total: 0,
        duplicates: 0,
        fingerprints: Vec::new(),
        origin,
        changes: Vec::new(),
        escalation: EscalationState::default(),
        playbook: None,
        detected_at,
        opened_at: now,
        acknowledged_at: None,
        mitigated_at: None,
        resolved_at: None,
        closed_at: None,
        quiet_since: None,
        action_items: Vec::new(),
        timeline: Vec::new(),
        version: 0,
    }
}

fn playbook_applies(pb: &Playbook, inc: &Incident) -> bool {
    let w = &pb.when;
    (w.services.is_empty() || w.services.iter().any(|s| inc.services.contains(s)))
        && (w.environments.is_empty() || w.environments.contains(&inc.environment))
        && w.labels.iter().all(|(k, v)| inc.labels.get(k) == Some(v))
        && w.min_severity.is_none_or(|s| inc.severity <= s)
        && w.change_linked.is_none_or(|c| c != inc.changes.is_empty())
}

/// Serialization behind a trait object, for snapshots.
mod erased {
    /// Something that serializes to JSON.
    pub trait Ser {
        /// The JSON bytes.
        fn to_vec(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_vec(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

/// Which services a set of incidents touches (for tests and metrics).
pub fn services_of(incidents: &[Incident]) -> BTreeSet<String> {
    incidents
        .iter()
        .flat_map(|i| i.services.iter().cloned())
        .collect()
}
