//! Alert intake: dedup by fingerprint, firing and resolved notifications, the alert
//! notes announced once per incident per batch, and forgetting alerts resolved long
//! ago.

use std::collections::BTreeMap;

use toronto_protocol::incidents::IncidentEventKind;
use toronto_protocol::incidents::TimelineKind;
use uuid::Uuid;

use super::state::{AlertIn, AlertRecord, AlertState, State};
use super::turn::{Effect, Record, Turn, push_timeline};
use super::{grouping, suppress};

/// What one intake did with its alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Intake {
    /// New alerts, alerts firing again and resolutions.
    pub fresh: usize,
    /// Notifications about what was already known.
    pub duplicates: usize,
    /// Alerts held back by a silence or an inhibition rule.
    pub held: usize,
}

/// The name of an alert: its `alertname`, else `alert`.
pub fn alert_name(labels: &BTreeMap<String, String>) -> String {
    labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| "alert".to_owned())
}

/// Takes alerts (already validated as a whole).
pub fn ingest(st: &mut State, t: &mut Turn<'_>, alerts: Vec<AlertIn>) -> Intake {
    let mut out = Intake::default();
    let mut released = false;
    for a in alerts {
        t.counters.received.inc();
        match a.state {
            AlertState::Firing => {
                if let Some(rec) = st.alerts.get_mut(&a.fingerprint)
                    && rec.state == AlertState::Firing
                {
                    rec.duplicates += 1;
                    out.duplicates += 1;
                    t.counters.duplicates.inc();
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
                if grouping::route(st, t, &a.fingerprint) {
                    out.fresh += 1;
                } else {
                    out.held += 1;
                }
                t.persist(Record::Alert(a.fingerprint));
            }
            AlertState::Resolved => {
                let Some(rec) = st.alerts.get_mut(&a.fingerprint) else {
                    continue;
                };
                if rec.state == AlertState::Resolved {
                    out.duplicates += 1;
                    t.counters.duplicates.inc();
                    continue;
                }
                rec.state = AlertState::Resolved;
                rec.ends_at = Some(a.ends_at.unwrap_or(t.now));
                let was_suppressed = rec.suppressed.take().is_some();
                let incident = rec.incident;
                let name = alert_name(&rec.labels);
                out.fresh += 1;
                t.persist(Record::Alert(a.fingerprint.clone()));
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
                        inc.quiet_since = Some(t.now);
                    }
                    let text = format!("alert {name} ({}) resolved", a.fingerprint);
                    st.pending.push((id, text));
                }
            }
        }
    }
    if released && !st.suppressed.is_empty() && !st.inhibitions.is_empty() {
        suppress::reevaluate(st, t);
    }
    if !st.pending.is_empty() {
        // Announced by the publisher when it takes its next batch: under load, one
        // `updated` event per incident for many requests.
        t.push(Effect::Announce);
    }
    out
}

/// Announces the pending alert notes: one `updated` event per incident, each note on
/// its timeline.
pub fn announce(st: &mut State, t: &mut Turn<'_>) {
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
    for (id, mut texts) in by_incident {
        let Some(inc) = st.incidents.get_mut(&id) else {
            continue;
        };
        let text = texts.join("; ");
        let last = texts.pop().unwrap_or_default();
        for earlier in texts {
            push_timeline(inc, t.now, TimelineKind::Alert, None, earlier);
        }
        // The last note goes to the timeline through emit; the event lists all.
        t.emit_with(
            inc,
            IncidentEventKind::Updated,
            TimelineKind::Alert,
            last,
            text,
            None,
        );
    }
}

/// Forgets alerts resolved longer ago than the reopen window and an hour (the alert
/// log drops them at its next compaction). Returns how many went.
pub fn forget_resolved(st: &mut State, t: &Turn<'_>) -> usize {
    let keep = chrono::Duration::from_std(t.settings.reopen_window).unwrap_or_default()
        + chrono::Duration::hours(1);
    let now = t.now;
    let before = st.alerts.len();
    st.alerts
        .retain(|_, a| a.state == AlertState::Firing || a.ends_at.is_none_or(|at| now - at < keep));
    before - st.alerts.len()
}

/// The incident holding an alert.
pub fn incident_of(st: &State, fingerprint: &str) -> Option<Uuid> {
    st.alerts.get(fingerprint).and_then(|a| a.incident)
}

#[cfg(test)]
#[path = "alerts_tests.rs"]
mod tests;
