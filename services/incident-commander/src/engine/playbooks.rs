//! Playbooks on incidents: which playbook applies, whether it may act alone under the
//! autonomy policy, runs started by a human, and the progress of a run.

use toronto_protocol::incidents::IncidentEventKind;
use toronto_protocol::incidents::{Incident, PlaybookRun, PlaybookState, TimelineKind};
use uuid::Uuid;

use super::error::EngineError;
use super::escalation;
use super::state::State;
use super::turn::{Record, Turn, push_timeline};
use crate::settings::{Playbook, Settings};

/// Whether a playbook's conditions hold for an incident.
pub fn applies(pb: &Playbook, inc: &Incident) -> bool {
    let w = &pb.when;
    (w.services.is_empty() || w.services.iter().any(|s| inc.services.contains(s)))
        && (w.environments.is_empty() || w.environments.contains(&inc.environment))
        && w.labels.iter().all(|(k, v)| inc.labels.get(k) == Some(v))
        && w.min_severity.is_none_or(|s| inc.severity <= s)
        && w.change_linked.is_none_or(|c| c != inc.changes.is_empty())
}

/// Whether playbooks may change the target for this incident without a human.
pub fn autonomous(settings: &Settings, inc: &Incident) -> bool {
    let a = &settings.policy.autonomy;
    a.severities.contains(&inc.severity) && a.environments.contains(&inc.environment)
}

/// Attaches the first playbook that applies to a new incident: running when it may
/// act alone (or changes nothing), else waiting for a human.
pub fn match_playbook(t: &mut Turn<'_>, inc: &mut Incident) {
    let Some(pb) = t.settings.policy.playbooks.iter().find(|p| applies(p, inc)) else {
        return;
    };
    let allowed = autonomous(t.settings, inc) || !pb.actions.iter().any(|a| a.changes_target());
    let state = if allowed {
        PlaybookState::Running
    } else {
        PlaybookState::WaitingApproval
    };
    inc.playbook = Some(PlaybookRun {
        name: pb.name.clone(),
        step: 0,
        state,
        started_at: t.now,
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
    push_timeline(inc, t.now, TimelineKind::Playbook, None, text);
    if allowed {
        t.playbooks.push(inc.id);
    }
}

/// `incident.playbook.run`: starts (or restarts) a playbook under a human's authority.
pub fn run(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    name: Option<&str>,
    by: &str,
) -> Result<Incident, EngineError> {
    let inc = st
        .incidents
        .get_mut(&id)
        .ok_or(EngineError::NoIncident(id))?;
    if !inc.state.is_open() {
        return Err(EngineError::NotOpen(id));
    }
    let name = name
        .map(str::to_owned)
        .or_else(|| inc.playbook.as_ref().map(|p| p.name.clone()))
        .ok_or(EngineError::NoPlaybookNamed)?;
    if !t.settings.policy.playbooks.iter().any(|p| p.name == name) {
        return Err(EngineError::NoPlaybook(name));
    }
    if inc
        .playbook
        .as_ref()
        .is_some_and(|p| p.state == PlaybookState::Running)
    {
        return Err(EngineError::PlaybookRunning);
    }
    inc.playbook = Some(PlaybookRun {
        name: name.clone(),
        step: 0,
        state: PlaybookState::Running,
        started_at: t.now,
        detail: Some(format!("approved by {by}")),
    });
    let text = format!("playbook {name} started by {by}");
    t.emit(
        inc,
        IncidentEventKind::Updated,
        TimelineKind::Playbook,
        text,
        Some(by),
    );
    t.playbooks.push(id);
    Ok(inc.clone())
}

/// Incidents with a playbook running (resumed after a restart).
pub fn running(st: &State) -> Vec<Uuid> {
    st.incidents
        .values()
        .filter(|i| {
            i.playbook
                .as_ref()
                .is_some_and(|p| p.state == PlaybookState::Running)
        })
        .map(|i| i.id)
        .collect()
}

/// The incident, its playbook and the next action, while the run goes on.
pub fn next_step(st: &State, settings: &Settings, id: Uuid) -> Option<(Incident, Playbook, usize)> {
    let inc = st.incidents.get(&id)?;
    let run = inc.playbook.as_ref()?;
    if run.state != PlaybookState::Running || !inc.state.is_open() {
        return None;
    }
    let pb = settings
        .policy
        .playbooks
        .iter()
        .find(|p| p.name == run.name)?;
    Some((inc.clone(), pb.clone(), run.step))
}

/// Records what action `step` did, moves to the next, and ends the run with `state`.
pub fn progress(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    step: usize,
    text: String,
    state: Option<PlaybookState>,
) {
    let Some(inc) = st.incidents.get_mut(&id) else {
        return;
    };
    if let Some(run) = inc.playbook.as_mut()
        && run.step == step
    {
        run.step = step + 1;
        run.detail = Some(text.clone());
        if let Some(s) = state {
            run.state = s;
        }
    }
    t.emit(
        inc,
        IncidentEventKind::Updated,
        TimelineKind::Playbook,
        text,
        Some("playbook"),
    );
}

/// Pages a target for a playbook.
pub fn page(st: &mut State, t: &mut Turn<'_>, id: Uuid, target: &str, reason: &str) {
    let Some(inc) = st.incidents.get_mut(&id) else {
        return;
    };
    let _ = escalation::page(t, inc, target, None, reason);
    t.persist(Record::Incident(id));
}

#[cfg(test)]
#[path = "playbooks_tests.rs"]
mod tests;
