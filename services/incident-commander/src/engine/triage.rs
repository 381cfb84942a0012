//! Change-aware triage: finished rollouts linked to the incidents they may have
//! caused, rollout events on the timelines of affected incidents, and severity from
//! the policy's rules (raised one step by a linked change).

use std::collections::BTreeMap;
use toronto_protocol::rollout::RolloutEvent;

use chrono::{DateTime, Utc};
use toronto_protocol::incidents::IncidentEventKind;
use toronto_protocol::incidents::{Incident, LinkedChange, Severity, TimelineKind};
use toronto_protocol::rollout::Rollout;

use super::state::{RecentChange, State};
use super::turn::{Turn, push_timeline};
use crate::settings::SeverityLabels;

/// Recent changes kept.
const CHANGES_MAX: usize = 1000;

/// Records a finished rollout; open incidents it explains link it late (its event may
/// arrive after the first alert).
pub fn record_change(st: &mut State, t: &mut Turn<'_>, change: RecentChange) {
    if st.changes.iter().any(|c| c.rollout_id == change.rollout_id) {
        return;
    }
    st.changes.push(change);
    if st.changes.len() > CHANGES_MAX {
        st.changes.remove(0);
    }
    let State {
        incidents,
        changes,
        index,
        ..
    } = st;
    for id in index.open() {
        let Some(inc) = incidents.get_mut(id) else {
            continue;
        };
        let before = inc.changes.len();
        link_changes(t, inc, changes);
        if inc.changes.len() > before {
            let labels = inc.labels.clone();
            compute_severity(t, inc, &labels);
            let text = format!(
                "change linked; severity {} ({})",
                inc.severity.label(),
                inc.severity_reason
            );
            t.emit(
                inc,
                IncidentEventKind::Updated,
                TimelineKind::Change,
                text,
                None,
            );
        }
    }
}

/// Puts a rollout event of an affected service on the timeline of its open incidents
/// (the rollback a playbook asked for, a fix rolled out by hand), once.
pub fn note_rollout(
    st: &mut State,
    t: &mut Turn<'_>,
    what: RolloutEvent,
    r: &Rollout,
    at: DateTime<Utc>,
) {
    let text = format!(
        "rollout {} {what}: {} {} in {}{}",
        r.id,
        r.service,
        r.version,
        r.environment,
        if r.is_rollback { " (rollback)" } else { "" }
    );
    let State {
        incidents, index, ..
    } = st;
    for id in index.open() {
        let Some(inc) = incidents.get_mut(id) else {
            continue;
        };
        if inc.services.contains(&r.service)
            && inc.environment == r.environment
            && at >= inc.opened_at
            && !inc
                .timeline
                .iter()
                .any(|e| e.kind == TimelineKind::Rollout && e.text == text)
        {
            t.emit(
                inc,
                IncidentEventKind::Updated,
                TimelineKind::Rollout,
                text.clone(),
                Some("deployer"),
            );
        }
    }
}

/// Links the change in effect for each affected service: the last rollout that
/// finished before the first alert, within the change window.
pub fn link_changes(t: &Turn<'_>, inc: &mut Incident, changes: &[RecentChange]) {
    let window = chrono::Duration::from_std(t.settings.change_window).unwrap_or_default();
    let mut added = Vec::new();
    // An earlier rollout of the service that a later one replaced is not running.
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
            inc.changes.push(LinkedChange {
                rollout_id: c.rollout_id,
                service: c.service.clone(),
                environment: c.environment.clone(),
                version: c.version.clone(),
                previous_version: c.previous_version.clone(),
                finished_at: c.finished_at,
                seconds_before_alert: before.num_seconds(),
            });
            added.push(format!(
                "linked change: rollout {} of {} {} (from {}) finished {}s before the first alert",
                c.rollout_id,
                c.service,
                c.version,
                c.previous_version.as_deref().unwrap_or("nothing"),
                before.num_seconds()
            ));
        }
    }
    for text in added {
        push_timeline(inc, t.now, TimelineKind::Change, None, text);
    }
}

/// Severity from the first matching rule (else the default), raised one step when a
/// change is linked; a severity set by hand stays.
pub fn compute_severity(t: &Turn<'_>, inc: &mut Incident, labels: &BTreeMap<String, String>) {
    if inc.severity_manual {
        return;
    }
    let policy = &t.settings.policy;
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
        None => from_label(&policy.severity_labels, &all, &inc.environment, &tier)
            .unwrap_or_else(|| (policy.default_severity, "default severity".to_owned())),
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
            push_timeline(inc, t.now, TimelineKind::Severity, None, text);
        }
        inc.severity = sev;
        inc.severity_reason = reason;
    }
}

/// The severity the alert's `severity` label gives, milder outside production and
/// worse for a critical SLO tier, with the reason; `None` without a known label.
fn from_label(
    labels: &SeverityLabels,
    all: &BTreeMap<String, String>,
    environment: &str,
    tier: &str,
) -> Option<(Severity, String)> {
    let value = all.get("severity")?;
    let mut sev = labels.severity_of(value)?;
    let mut reason = format!("label severity={value}");
    if !labels
        .production_environments
        .iter()
        .any(|e| e == environment)
    {
        sev = sev.lowered();
        reason.push_str(&format!(", one step milder in {environment}"));
    }
    if !tier.is_empty() && labels.critical_slo_tiers.iter().any(|t| t == tier) {
        sev = sev.raised();
        reason.push_str(&format!(", one step worse for SLO tier {tier}"));
    }
    Some((sev, reason))
}

#[cfg(test)]
#[path = "triage_tests.rs"]
mod tests;
