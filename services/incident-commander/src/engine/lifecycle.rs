//! An incident's life: acknowledge, escalate, mitigate, resolve, close; roles,
//! severity by hand and notes; incidents whose alerts went quiet, and recovery that
//! the monitor has not confirmed yet.

use toronto_protocol::incidents::IncidentEventKind;
use toronto_protocol::incidents::{
    Incident, IncidentAssign, IncidentList, IncidentNote, IncidentRole, IncidentSeveritySet,
    IncidentState, PlaybookState, TimelineKind,
};
use uuid::Uuid;

use super::error::EngineError;
use super::state::State;
use super::turn::{Record, Turn};
use super::{alerts, escalation};
use crate::outbound::{self, NotifyAction};

fn suffix(reason: Option<&str>) -> String {
    reason.map(|r| format!(": {r}")).unwrap_or_default()
}

fn incident_mut(st: &mut State, id: Uuid) -> Result<&mut Incident, EngineError> {
    st.incidents.get_mut(&id).ok_or(EngineError::NoIncident(id))
}

fn open_mut(st: &mut State, id: Uuid) -> Result<&mut Incident, EngineError> {
    let inc = incident_mut(st, id)?;
    if !inc.state.is_open() {
        return Err(EngineError::NotOpen(id));
    }
    Ok(inc)
}

/// `incident.get`.
pub fn get(st: &State, id: Uuid) -> Result<Incident, EngineError> {
    st.incidents
        .get(&id)
        .cloned()
        .ok_or(EngineError::NoIncident(id))
}

/// How many pages' worth of incidents one `incident.list` may pass over while its
/// filters drop them; past that the page ends early, with a cursor to go on from.
const SCAN_PAGES: usize = 10;

/// `incident.list`: newest first, filtered, with the cursor of the next page when
/// there may be more. Walks the incidents by id from the cursor down and stops after
/// a page, or after [`SCAN_PAGES`] pages' worth that the filters dropped, so its cost
/// does not grow with history.
pub fn list(st: &State, q: &IncidentList, before: Option<Uuid>) -> (Vec<Incident>, Option<Uuid>) {
    // Ids are UUID v7: id order is opening order, and the cursor is the last id seen.
    let limit = toronto_protocol::page::limit(q.limit);
    let newest_first = match before {
        Some(b) => st.incidents.range(..b),
        None => st.incidents.range(..),
    }
    .rev();
    let mut out = Vec::new();
    let mut last = None;
    for (scanned, (id, i)) in newest_first.enumerate() {
        if out.len() == limit || scanned == limit * SCAN_PAGES {
            return (out, last);
        }
        last = Some(*id);
        if q.state.is_none_or(|s| i.state == s)
            && q.service.as_ref().is_none_or(|s| &i.service == s)
            && (!q.open || i.state.is_open())
        {
            out.push(i.clone());
        }
    }
    (out, None)
}

/// `incident.ack`: stops the escalation; the first to acknowledge becomes commander.
pub fn ack(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    by: &str,
    reason: Option<&str>,
) -> Result<Incident, EngineError> {
    let inc = incident_mut(st, id)?;
    if !inc.state.is_open() {
        return Err(EngineError::Finished {
            id,
            state: inc.state,
        });
    }
    if inc.state == IncidentState::Triggered {
        inc.state = IncidentState::Acknowledged;
    }
    inc.acknowledged_at.get_or_insert(t.now);
    inc.escalation.next_at = None;
    if inc.commander.is_none() {
        inc.commander = Some(by.to_owned());
    }
    let text = format!("acknowledged by {by}{}", suffix(reason));
    t.emit(
        inc,
        IncidentEventKind::Acknowledged,
        TimelineKind::Acknowledged,
        text,
        Some(by),
    );
    let policy = escalation::policy_of(t, inc);
    let why = reason.unwrap_or("acknowledged");
    outbound::follow_up(t, inc, policy, NotifyAction::Acknowledge, Some(by), why);
    Ok(inc.clone())
}

/// Acknowledges the incident holding an alert (PagerDuty `acknowledge`).
pub fn ack_alert(
    st: &mut State,
    t: &mut Turn<'_>,
    fingerprint: &str,
    by: &str,
) -> Option<Incident> {
    let id = alerts::incident_of(st, fingerprint)?;
    let reason = Some("acknowledged through the PagerDuty Events API");
    ack(st, t, id, by, reason).ok()
}

/// `incident.escalate` (and a failed playbook or recovery check): triggered again,
/// next level paged.
pub fn escalate(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    by: Option<&str>,
    reason: &str,
) -> Result<Incident, EngineError> {
    let inc = open_mut(st, id)?;
    inc.state = IncidentState::Triggered;
    escalation::advance(t, inc, reason, by);
    Ok(inc.clone())
}

/// `incident.mitigate` (and a remediation that ran).
pub fn mitigate(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    by: &str,
    reason: &str,
) -> Result<Incident, EngineError> {
    let inc = open_mut(st, id)?;
    inc.state = IncidentState::Mitigated;
    inc.mitigated_at.get_or_insert(t.now);
    inc.escalation.next_at = None;
    let text = format!("mitigated: {reason}");
    t.emit(
        inc,
        IncidentEventKind::Mitigated,
        TimelineKind::Mitigated,
        text,
        Some(by),
    );
    Ok(inc.clone())
}

/// `incident.resolve` (and confirmed recovery): the group's next alert within the
/// reopen window reopens it.
pub fn resolve(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    by: &str,
    reason: &str,
) -> Result<Incident, EngineError> {
    alerts::announce(st, t);
    let inc = open_mut(st, id)?;
    inc.state = IncidentState::Resolved;
    inc.resolved_at = Some(t.now);
    inc.mitigated_at.get_or_insert(t.now);
    inc.escalation.next_at = None;
    inc.quiet_since = None;
    let text = format!("resolved: {reason}");
    t.emit(
        inc,
        IncidentEventKind::Resolved,
        TimelineKind::Resolved,
        text,
        Some(by),
    );
    let policy = escalation::policy_of(t, inc);
    outbound::follow_up(t, inc, policy, NotifyAction::Resolve, Some(by), reason);
    let out = inc.clone();
    if st.open_by_key.get(&out.key) == Some(&id) {
        st.open_by_key.remove(&out.key);
    }
    st.resolved_by_key.insert(out.key.clone(), id);
    Ok(out)
}

/// `incident.assign`: an agent given a role is paged.
pub fn assign(
    st: &mut State,
    t: &mut Turn<'_>,
    req: &IncidentAssign,
) -> Result<Incident, EngineError> {
    if req.who.trim().is_empty() {
        return Err(EngineError::Empty { field: "who" });
    }
    let inc = incident_mut(st, req.id)?;
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
        escalation::page(t, inc, &req.who, None, &format!("assigned as {role}"));
    }
    let text = format!("{} is {role} (assigned by {})", req.who, req.by);
    t.emit(
        inc,
        IncidentEventKind::Updated,
        TimelineKind::Assigned,
        text,
        Some(&req.by),
    );
    Ok(inc.clone())
}

/// `incident.severity`: set by hand, rules no longer change it.
pub fn set_severity(
    st: &mut State,
    t: &mut Turn<'_>,
    req: &IncidentSeveritySet,
) -> Result<Incident, EngineError> {
    let inc = incident_mut(st, req.id)?;
    let from = inc.severity;
    let why = suffix(req.reason.as_deref());
    inc.severity = req.severity;
    inc.severity_manual = true;
    inc.severity_reason = format!("set by {}{why}", req.by);
    let text = format!(
        "severity {} -> {} by {}{why}",
        from.label(),
        req.severity.label(),
        req.by,
    );
    t.emit(
        inc,
        IncidentEventKind::Updated,
        TimelineKind::Severity,
        text,
        Some(&req.by),
    );
    Ok(inc.clone())
}

/// `incident.note`: a note, or an action item for the postmortem.
pub fn note(st: &mut State, t: &mut Turn<'_>, req: &IncidentNote) -> Result<Incident, EngineError> {
    if req.text.trim().is_empty() {
        return Err(EngineError::Empty { field: "text" });
    }
    let inc = incident_mut(st, req.id)?;
    let kind = if req.action_item {
        inc.action_items.push(req.text.clone());
        TimelineKind::ActionItem
    } else {
        TimelineKind::Note
    };
    t.emit(
        inc,
        IncidentEventKind::Updated,
        kind,
        req.text.clone(),
        Some(&req.by),
    );
    Ok(inc.clone())
}

/// Closes a resolved incident (its postmortem was written); closing it again adds
/// action items only.
pub fn close(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    by: &str,
    action_items: &[String],
) -> Result<Incident, EngineError> {
    let inc = incident_mut(st, id)?;
    match inc.state {
        IncidentState::Resolved => {}
        IncidentState::Closed => {
            if !action_items.is_empty() {
                inc.action_items.extend(action_items.iter().cloned());
                t.persist(Record::Incident(id));
            }
            return Ok(inc.clone());
        }
        _ => return Err(EngineError::NotResolved(id)),
    }
    inc.action_items.extend(action_items.iter().cloned());
    inc.state = IncidentState::Closed;
    inc.closed_at = Some(t.now);
    let text = format!("postmortem written by {by}; closed");
    t.emit(
        inc,
        IncidentEventKind::Closed,
        TimelineKind::Closed,
        text,
        Some(by),
    );
    Ok(inc.clone())
}

/// Open incidents whose alerts have all been resolved for the hold time (and whose
/// playbook is not running): recovery is to be confirmed, then they resolve.
pub fn quiet(st: &State, t: &Turn<'_>) -> Vec<Uuid> {
    let hold = chrono::Duration::from_std(t.settings.resolve_hold).unwrap_or_default();
    st.index
        .quiet_since(t.now - hold)
        .into_iter()
        .filter_map(|id| st.incidents.get(&id))
        .filter(|i| {
            i.state.is_open()
                && i.alerts_firing == 0
                && i.quiet_since.is_some_and(|at| t.now - at >= hold)
                && i.playbook
                    .as_ref()
                    .is_none_or(|p| p.state != PlaybookState::Running)
        })
        .map(|i| i.id)
        .collect()
}

/// Whether an incident is still quiet (its alerts did not fire again).
pub fn still_quiet(st: &State, id: Uuid) -> bool {
    st.incidents
        .get(&id)
        .is_some_and(|i| i.state.is_open() && i.alerts_firing == 0 && i.quiet_since.is_some())
}

/// Recovery could not be confirmed yet: the incident is mitigated, and once the
/// recovery timeout passed it escalates again (and the timeout starts over).
pub fn recovery_pending(st: &mut State, t: &mut Turn<'_>, id: Uuid, why: &str) {
    let timeout = chrono::Duration::from_std(t.settings.recovery_timeout).unwrap_or_default();
    let Ok(inc) = incident_mut(st, id) else {
        return;
    };
    if inc.state != IncidentState::Mitigated {
        inc.state = IncidentState::Mitigated;
        inc.mitigated_at.get_or_insert(t.now);
        let text = format!("alerts resolved; waiting for the monitor to confirm recovery: {why}");
        t.emit(
            inc,
            IncidentEventKind::Mitigated,
            TimelineKind::Mitigated,
            text,
            None,
        );
    }
    if inc.quiet_since.is_some_and(|at| t.now - at >= timeout) {
        inc.quiet_since = Some(t.now);
        let reason = format!("recovery not confirmed by the monitor: {why}");
        let _ = escalate(st, t, id, None, &reason);
    }
}

/// A notification's delivery status: on the timeline (a `page` entry) and as the event
/// `incident.notified` (delivered) or `incident.notify_failed` (an attempt failed).
pub fn notified(st: &mut State, t: &mut Turn<'_>, id: Uuid, ok: bool, text: String) {
    let Some(inc) = st.incidents.get_mut(&id) else {
        return;
    };
    let what = if ok {
        IncidentEventKind::Notified
    } else {
        IncidentEventKind::NotifyFailed
    };
    t.emit(inc, what, TimelineKind::Page, text, None);
}

/// A note from outside the engine (a freeze started or lifted): a timeline entry and
/// the event `incident.<what>`.
pub fn remark(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    what: IncidentEventKind,
    text: String,
    by: Option<&str>,
) {
    let Some(inc) = st.incidents.get_mut(&id) else {
        return;
    };
    t.emit(inc, what, TimelineKind::Note, text, by);
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
