//! Paging and escalation: the policy's levels paged in turn until someone
//! acknowledges, rounds repeated as the policy says, schedules resolved to the person
//! on call.

use toronto_protocol::incidents::IncidentEventKind;
use toronto_protocol::incidents::{EscalationState, Incident, IncidentState, Page, TimelineKind};
use uuid::Uuid;

use super::state::State;
use super::turn::{Effect, Record, Turn, derived_id, push_timeline};
use crate::settings::EscalationPolicy;

/// The escalation policy of an incident, if it has one.
pub fn policy_of<'s>(t: &Turn<'s>, inc: &Incident) -> Option<&'s EscalationPolicy> {
    let name = inc.escalation.policy.as_ref()?;
    t.settings
        .policy
        .escalation_policies
        .iter()
        .find(|p| &p.name == name)
}

/// Starts (or, on reopening, restarts in a new round) the escalation of an incident:
/// its policy's first level is paged.
pub fn start(t: &mut Turn<'_>, inc: &mut Incident) {
    let policy = &t.settings.policy;
    let name = policy
        .service_escalation
        .get(&inc.service)
        .or(policy.default_escalation.as_ref())
        .cloned();
    let cycle = inc.escalation.cycle + u32::from(inc.escalation.pages_sent > 0);
    let paged = name.is_some();
    inc.escalation = EscalationState {
        policy: name,
        level: 0,
        cycle,
        next_at: None,
        pages_sent: inc.escalation.pages_sent,
        exhausted: false,
    };
    if paged {
        page_level(t, inc, "incident opened");
    }
}

/// Pages every target of the current level and sets when the next is due.
fn page_level(t: &mut Turn<'_>, inc: &mut Incident, reason: &str) {
    let Some(policy) = policy_of(t, inc) else {
        return;
    };
    let Some(level) = policy.levels.get(
        inc.escalation
            .level
            .min(policy.levels.len().saturating_sub(1)),
    ) else {
        return;
    };
    let mut paged = Vec::with_capacity(level.notify.len());
    for target in &level.notify {
        paged.push(page(t, inc, target, Some(inc.escalation.level), reason));
    }
    crate::outbound::trigger(
        t,
        inc,
        inc.escalation.level,
        &level.channels,
        &paged,
        reason,
    );
    let wait = chrono::Duration::milliseconds((level.ack_timeout_seconds * 1000.0) as i64);
    inc.escalation.next_at = Some(t.now + wait);
    t.persist(Record::Incident(inc.id));
}

/// A target as paged now: a schedule resolves to `user:<on call>`.
pub fn resolve_target(t: &Turn<'_>, target: &str) -> String {
    match target.split_once(':') {
        Some(("schedule", name)) => t
            .settings
            .policy
            .schedules
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.on_call(t.now))
            .map(|who| format!("user:{who}"))
            .unwrap_or_else(|| target.to_owned()),
        _ => target.to_owned(),
    }
}

/// Pages one target (a schedule resolves to the person on call); an agent is also
/// notified on its notify subject. `level` is None for a page outside escalation.
/// Returns the target as resolved.
pub fn page(
    t: &mut Turn<'_>,
    inc: &mut Incident,
    target: &str,
    level: Option<usize>,
    reason: &str,
) -> String {
    let resolved = resolve_target(t, target);
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
        at: t.now,
    };
    let id = derived_id(&key);
    let about = inc.id.to_string();
    if let Some(role) = resolved.strip_prefix("agent:")
        && let Some((payload, _)) = t.envelope(page.clone(), &about, Some(id))
    {
        let subject = format!("{}.agents.{role}.v1.notify", t.prefix);
        t.push(Effect::Notify {
            subject,
            payload: payload.into(),
        });
    }
    t.event("page", "sent", &about, page, Some(id));
    t.counters.pages.inc();
    inc.escalation.pages_sent += 1;
    let lvl = level
        .map(|l| format!(" (level {l}, round {})", inc.escalation.cycle))
        .unwrap_or_default();
    push_timeline(
        inc,
        t.now,
        TimelineKind::Page,
        None,
        format!("paged {resolved}{lvl}: {reason}"),
    );
    resolved
}

/// Moves to the next level (or the next round, or marks the policy exhausted) and
/// pages it.
pub fn advance(t: &mut Turn<'_>, inc: &mut Incident, reason: &str, by: Option<&str>) {
    let Some(policy) = policy_of(t, inc) else {
        inc.escalation.next_at = None;
        let text = format!("escalated: {reason} (no escalation policy)");
        t.emit(
            inc,
            IncidentEventKind::Escalated,
            TimelineKind::Escalated,
            text,
            by,
        );
        return;
    };
    let mut level = inc.escalation.level + 1;
    if level >= policy.levels.len() {
        if inc.escalation.cycle >= policy.repeat {
            inc.escalation.exhausted = true;
            inc.escalation.next_at = None;
            let text = format!("escalation exhausted: {reason}");
            t.emit(
                inc,
                IncidentEventKind::Escalated,
                TimelineKind::Escalated,
                text,
                by,
            );
            return;
        }
        inc.escalation.cycle += 1;
        level = 0;
    }
    inc.escalation.level = level;
    page_level(t, inc, reason);
    let text = format!(
        "escalated to level {level} (round {}): {reason}",
        inc.escalation.cycle
    );
    t.emit(
        inc,
        IncidentEventKind::Escalated,
        TimelineKind::Escalated,
        text,
        by,
    );
}

/// Escalates every triggered incident whose level was not acknowledged in time (found
/// by when its escalation is due, not by walking every incident).
/// Returns the incidents escalated.
pub fn escalate_due(st: &mut State, t: &mut Turn<'_>) -> Vec<Uuid> {
    let now = t.now;
    let mut due = st.index.escalations_due(now);
    due.retain(|id| {
        st.incidents.get_mut(id).is_some_and(|inc| {
            let is_due = inc.state == IncidentState::Triggered
                && inc.escalation.next_at.is_some_and(|at| at <= now);
            if is_due {
                advance(t, inc, "not acknowledged in time", None);
            }
            is_due
        })
    });
    due
}

#[cfg(test)]
#[path = "escalation_tests.rs"]
mod tests;
