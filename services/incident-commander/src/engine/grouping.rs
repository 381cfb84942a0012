//! Grouping: a firing alert joins the open incident of its group (the values of the
//! grouping labels), reopens the group's incident that resolved within the reopen
//! window, or opens a new one. Manual incidents open here too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use toronto_protocol::incidents::IncidentEventKind;
use toronto_protocol::incidents::{
    EscalationState, Incident, IncidentOpen, IncidentState, Severity, TimelineKind,
};
use uuid::Uuid;

use super::error::EngineError;
use super::state::State;
use super::turn::{Turn, push_timeline};
use super::{alerts, escalation, playbooks, suppress, triage};

/// Fingerprints listed in an incident.
const FINGERPRINTS_MAX: usize = 100;

/// The group key of `labels` (`service=a,environment=b`) under `group_by`.
pub fn group_key(group_by: &[String], labels: &BTreeMap<String, String>) -> String {
    let mut key = String::new();
    for name in group_by {
        if !key.is_empty() {
            key.push(',');
        }
        key.push_str(name);
        key.push('=');
        key.push_str(labels.get(name).map(String::as_str).unwrap_or(""));
    }
    key
}

/// The service an alert is about: `service`, else `job`, else `unknown`.
fn service_of(labels: &BTreeMap<String, String>) -> String {
    labels
        .get("service")
        .or_else(|| labels.get("job"))
        .cloned()
        .unwrap_or_else(|| "unknown".into())
}

/// Puts a firing alert where it belongs: held back, or into an incident. Returns
/// false when it is held back.
pub fn route(st: &mut State, t: &mut Turn<'_>, fp: &str) -> bool {
    let Some(rec) = st.alerts.get(fp) else {
        return false;
    };
    if let Some(why) = suppress::suppression(st, rec, t.now) {
        if why.starts_with("silenced") {
            t.counters.silenced.inc();
        } else {
            t.counters.inhibited.inc();
        }
        if let Some(r) = st.alerts.get_mut(fp) {
            r.suppressed = Some(why);
        }
        st.suppressed.insert(fp.to_owned());
        return false;
    }
    let key = group_key(&t.settings.group_by, &rec.labels);
    let name = alerts::alert_name(&rec.labels);
    let service = service_of(&rec.labels);
    st.suppressed.remove(fp);
    if let Some(id) = st.open_by_key.get(&key).copied() {
        join(st, t, id, fp, &name, service);
        return true;
    }
    let rec = st.alerts[fp].clone();
    if reopen(st, t, &key, fp, &name, rec.incident) {
        return true;
    }
    let environment = rec
        .labels
        .get("environment")
        .cloned()
        .unwrap_or_else(|| t.settings.default_environment.clone());
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
        rec.starts_at.min(t.now),
        t.now,
    );
    inc.alerts_firing = 1;
    inc.alerts_total = 1;
    inc.fingerprints.push(fp.to_owned());
    let id = inc.id;
    let first = format!("alert {name} ({fp}) fired");
    open(st, t, inc, &rec.labels, None, Some(first));
    if let Some(r) = st.alerts.get_mut(fp) {
        r.incident = Some(id);
    }
    true
}

/// The alert joins (or fires again in) the open incident `id` of its group.
fn join(st: &mut State, t: &mut Turn<'_>, id: Uuid, fp: &str, name: &str, service: String) {
    let State {
        incidents,
        changes,
        alerts,
        pending,
        ..
    } = st;
    let Some(rec) = alerts.get_mut(fp) else {
        return;
    };
    let Some(inc) = incidents.get_mut(&id) else {
        return;
    };
    let known = rec.incident == Some(id);
    rec.incident = Some(id);
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
        triage::link_changes(t, inc, changes);
        triage::compute_severity(t, inc, &rec.labels);
    }
    let text = if known {
        format!("alert {name} ({fp}) firing again")
    } else {
        format!("alert {name} ({fp}) joined")
    };
    pending.push((id, text));
}

/// Reopens the group's last incident if it resolved within the reopen window.
fn reopen(
    st: &mut State,
    t: &mut Turn<'_>,
    key: &str,
    fp: &str,
    name: &str,
    known: Option<Uuid>,
) -> bool {
    let Some(id) = st.resolved_by_key.get(key).copied() else {
        return false;
    };
    let Some(inc) = st.incidents.get_mut(&id) else {
        return false;
    };
    let recent = inc
        .resolved_at
        .is_some_and(|at| (t.now - at).to_std().unwrap_or_default() < t.settings.reopen_window);
    if inc.state != IncidentState::Resolved || !recent {
        return false;
    }
    inc.state = IncidentState::Triggered;
    inc.resolved_at = None;
    inc.quiet_since = None;
    inc.alerts_firing += 1;
    if known != Some(id) {
        inc.alerts_total += 1;
    }
    let text = format!("reopened: alert {name} ({fp}) fired again");
    t.emit(
        inc,
        IncidentEventKind::Updated,
        TimelineKind::Reopened,
        text,
        None,
    );
    escalation::start(t, inc);
    st.resolved_by_key.remove(key);
    st.open_by_key.insert(key.to_owned(), id);
    if let Some(r) = st.alerts.get_mut(fp) {
        r.incident = Some(id);
    }
    true
}

/// Opens an incident: links changes, computes its severity, announces it, starts its
/// escalation and matches a playbook.
fn open(
    st: &mut State,
    t: &mut Turn<'_>,
    mut inc: Incident,
    labels: &BTreeMap<String, String>,
    by: Option<&str>,
    first: Option<String>,
) -> Incident {
    if let Some(text) = first {
        let at = inc.detected_at;
        push_timeline(&mut inc, at, TimelineKind::Alert, None, text);
    }
    triage::link_changes(t, &mut inc, &st.changes);
    triage::compute_severity(t, &mut inc, labels);
    let text = format!(
        "opened {} {}: {} (severity: {})",
        inc.severity.label(),
        inc.id,
        inc.title,
        inc.severity_reason
    );
    t.emit(
        &mut inc,
        IncidentEventKind::Opened,
        TimelineKind::Opened,
        text,
        by,
    );
    escalation::start(t, &mut inc);
    playbooks::match_playbook(t, &mut inc);
    st.open_by_key.insert(inc.key.clone(), inc.id);
    st.incidents.insert(inc.id, inc.clone());
    inc
}

/// `incident.open`: an incident opened by hand.
pub fn open_manual(
    st: &mut State,
    t: &mut Turn<'_>,
    req: &IncidentOpen,
) -> Result<Incident, EngineError> {
    for (field, v) in [
        ("title", &req.title),
        ("service", &req.service),
        ("environment", &req.environment),
        ("by", &req.by),
    ] {
        if v.trim().is_empty() {
            return Err(EngineError::Empty { field });
        }
    }
    let mut labels = req.labels.clone();
    labels.insert("service".into(), req.service.clone());
    labels.insert("environment".into(), req.environment.clone());
    let mut key = group_key(&t.settings.group_by, &labels);
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
        t.now,
        t.now,
    );
    if let Some(sev) = req.severity {
        inc.severity = sev;
        inc.severity_manual = true;
        inc.severity_reason = format!("set by {}", req.by);
    }
    Ok(open(st, t, inc, &labels, Some(&req.by), None))
}

/// A new triggered incident with nothing in it yet.
#[allow(clippy::too_many_arguments)]
pub fn new_incident(
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

#[cfg(test)]
#[path = "grouping_tests.rs"]
mod tests;
