//! Notifications: events from the bus become short messages, routed to Slack or
//! Mattermost incoming webhooks by service, environment and severity. Each webhook has
//! one sender that gathers what arrives within the group window into one message
//! (keeping only the latest progress of a rollout), honours 429 with its `Retry-After`,
//! and backs off on server errors, so a busy stream never floods a channel.

use serde_json::Value;
use toronto_commands::render::describe_task;
use toronto_protocol::RawEnvelope;
use toronto_protocol::alerts::{Alert, AlertStatus};
use toronto_protocol::incidents::{IncidentEvent, IncidentEventKind, Page};
use toronto_protocol::rollout::{Rollout, RolloutEvent, RolloutPhase};
use toronto_protocol::tasks::{Plan, StepKind, StepState};

use crate::markup::Part;
use crate::settings::Severity;

mod deliver;
mod steps;

pub use deliver::{
    ATTEMPTS, MAX_LINES, Outgoing, QUEUE, Router, batch, follow_events, post, sender,
};

/// What an event says, before it is rendered for a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// How much it matters.
    pub severity: Severity,
    /// The service it is about.
    pub service: Option<String>,
    /// The environment it is about.
    pub environment: Option<String>,
    /// Notes with the same key replace each other within a group (rollout progress).
    pub group_key: Option<String>,
    /// A plan waiting for approval: Slack gets Approve and Reject buttons.
    pub approval: Option<uuid::Uuid>,
    /// The message.
    pub parts: Vec<Part>,
}

fn ours(s: impl Into<String>) -> Part {
    Part::Ours(s.into())
}
fn theirs(s: impl Into<String>) -> Part {
    Part::Theirs(s.into())
}
fn strong(s: impl Into<String>) -> Part {
    Part::Strong(s.into())
}

fn typed<T: serde::de::DeserializeOwned>(data: &Value) -> Option<T> {
    serde_json::from_value(data.clone()).ok()
}

fn str_of<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

fn plan_note(what: &str, plan: &Plan) -> Option<Note> {
    let task = describe_task(&plan.task);
    let mut note = Note {
        severity: Severity::Info,
        service: Some(plan.task.service().to_owned()),
        environment: Some(plan.task.environment().to_owned()),
        group_key: None,
        approval: None,
        parts: Vec::new(),
    };
    let id = plan.id.to_string();
    if let Some((severity, parts)) = steps::step_note(what, plan, &task) {
        note.severity = severity;
        note.parts = parts;
        return Some(note);
    }
    let (severity, parts) = match what {
        "plan.created" => (
            Severity::Info,
            vec![
                ours("📝 plan for "),
                strong(task),
                ours(" requested by "),
                Part::Requester(plan.requested_by.clone()),
                ours(" (plan "),
                Part::Code(id),
                ours(")"),
            ],
        ),
        "plan.completed" => (
            Severity::Info,
            vec![
                ours("✅ done: "),
                strong(task),
                ours(" (plan "),
                Part::Code(id),
                ours(")"),
            ],
        ),
        "plan.failed" => (
            Severity::Error,
            vec![
                ours("❌ failed: "),
                strong(task),
                ours(": "),
                theirs(plan.reason.clone().unwrap_or_default()),
                ours(" (plan "),
                Part::Code(id),
                ours(")"),
            ],
        ),
        "plan.cancelled" => (
            Severity::Warning,
            vec![
                ours("🚫 cancelled: "),
                strong(task),
                ours(" (plan "),
                Part::Code(id),
                ours(")"),
            ],
        ),
        "gate.waiting" => {
            let approval = plan
                .steps
                .iter()
                .any(|s| s.kind == StepKind::Approval && s.state == StepState::Waiting);
            if !approval {
                return None;
            }
            note.approval = Some(plan.id);
            (
                Severity::Warning,
                vec![
                    ours("✋ approval needed: "),
                    strong(task),
                    ours(" requested by "),
                    Part::Requester(plan.requested_by.clone()),
                    ours(". Another operator: "),
                    Part::Code(format!("approve {id}")),
                    ours(" or "),
                    Part::Code(format!("reject {id} REASON")),
                ],
            )
        }
        "gate.failed" => {
            let step = plan
                .steps
                .iter()
                .rev()
                .find(|s| s.state == StepState::Failed);
            (
                Severity::Error,
                vec![
                    ours("⛔ gate "),
                    theirs(step.map(|s| s.id.clone()).unwrap_or_default()),
                    ours(" failed for "),
                    strong(task),
                    ours(": "),
                    theirs(step.and_then(|s| s.reason.clone()).unwrap_or_default()),
                ],
            )
        }
        "gate.passed" => (
            Severity::Debug,
            vec![ours("gate passed for "), strong(task)],
        ),
        _ => (
            Severity::Debug,
            vec![theirs(what), ours(": "), strong(task)],
        ),
    };
    note.severity = severity;
    note.parts = parts;
    Some(note)
}

fn rollout_note(what: &str, r: &Rollout) -> Note {
    let head = |emoji: &str| {
        vec![
            ours(format!("{emoji} ")),
            strong(format!("{} {}", r.service, r.version)),
            ours(" in "),
            theirs(r.environment.clone()),
        ]
    };
    let reason = || {
        r.reason
            .as_ref()
            .map(|why| vec![ours(": "), theirs(why.clone())])
            .unwrap_or_default()
    };
    let kind = what.parse::<RolloutEvent>().ok();
    let (severity, mut parts, group) = match kind {
        Some(RolloutEvent::Started) => (Severity::Info, head("🚀"), false),
        Some(RolloutEvent::Progressed) => (Severity::Info, head("⏩"), true),
        Some(RolloutEvent::Paused) => (Severity::Warning, head("⏸"), false),
        Some(RolloutEvent::Promoted) => (Severity::Info, head("⏫"), false),
        Some(RolloutEvent::Succeeded) => (Severity::Info, head("✅"), false),
        Some(RolloutEvent::Aborted | RolloutEvent::RolledBack) => {
            (Severity::Critical, head("🛑"), false)
        }
        Some(RolloutEvent::Failed) => (Severity::Error, head("❌"), false),
        Some(RolloutEvent::Resumed) | None => (Severity::Debug, head("•"), false),
    };
    let phase = serde_json::to_value(r.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let label = match kind {
        Some(RolloutEvent::RolledBack) => "rolled back".to_owned(),
        Some(k @ (RolloutEvent::Progressed | RolloutEvent::Started | RolloutEvent::Promoted)) => {
            k.as_str().to_owned()
        }
        _ => phase,
    };
    parts.push(ours(format!(": {label} at {}%", r.weight)));
    if matches!(
        r.phase,
        RolloutPhase::Paused | RolloutPhase::Aborted | RolloutPhase::Failed
    ) || kind == Some(RolloutEvent::RolledBack)
    {
        parts.extend(reason());
    }
    Note {
        severity,
        service: Some(r.service.clone()),
        environment: Some(r.environment.clone()),
        group_key: group.then(|| format!("rollout:{}", r.id)),
        approval: None,
        parts,
    }
}

fn alert_note(a: &Alert) -> Note {
    let label = |k: &str| a.labels.get(k).cloned();
    let name = label("alertname").unwrap_or_else(|| a.fingerprint.clone());
    let severity = match (a.status, label("severity").as_deref()) {
        (AlertStatus::Resolved, _) => Severity::Info,
        (_, Some("page" | "critical")) => Severity::Critical,
        (_, Some("ticket" | "warning")) => Severity::Warning,
        _ => Severity::Warning,
    };
    let summary = a
        .annotations
        .get("summary")
        .or_else(|| a.annotations.get("description"))
        .cloned()
        .unwrap_or_default();
    let service = label("service");
    let environment = label("environment").or_else(|| label("env"));
    let mut parts = vec![
        ours(if a.status == AlertStatus::Resolved {
            "✅ resolved: "
        } else {
            "🔥 firing: "
        }),
        strong(name),
    ];
    if let Some(s) = &service {
        parts.push(ours(" on "));
        parts.push(theirs(s.clone()));
    }
    if let Some(e) = &environment {
        parts.push(ours(" in "));
        parts.push(theirs(e.clone()));
    }
    if !summary.is_empty() {
        parts.push(ours(": "));
        parts.push(theirs(summary));
    }
    Note {
        severity,
        service,
        environment,
        group_key: None,
        approval: None,
        parts,
    }
}

/// An incident event (`incident.<what>`): its title, what happened, its severity, and
/// for a new or escalated incident the command that acknowledges it.
fn incident_note(what: IncidentEventKind, i: &IncidentEvent) -> Note {
    use IncidentEventKind as K;
    use toronto_protocol::incidents::Severity as Sev;
    let severity = match (what, i.severity) {
        (K::Resolved | K::Closed | K::Mitigated, _) => Severity::Info,
        (_, Sev::Sev1) => Severity::Critical,
        (_, Sev::Sev2) => Severity::Error,
        (_, Sev::Sev3) => Severity::Warning,
        (K::Opened | K::Escalated, _) => Severity::Error,
        _ => Severity::Info,
    };
    let mut parts = vec![
        ours("🚨 incident "),
        strong(&i.title),
        ours(" "),
        theirs(what.as_str().replace('_', " ")),
        ours(" ("),
        theirs(i.severity.label()),
        ours(")"),
    ];
    if !i.change.is_empty() {
        parts.push(ours(": "));
        parts.push(theirs(&i.change));
    }
    if let Some(by) = &i.by {
        parts.push(ours(" by "));
        parts.push(theirs(by));
    }
    if matches!(what, K::Opened | K::Escalated) {
        parts.push(ours(" — "));
        parts.push(Part::Code(format!("ack {}", i.id)));
    }
    Note {
        severity,
        service: Some(i.service.clone()),
        environment: Some(i.environment.clone()),
        group_key: None,
        approval: None,
        parts,
    }
}

/// A page the incident commander sent (`page.sent`): who, for which incident, why.
fn page_note(page: &Page) -> Note {
    let mut parts = vec![
        ours("📟 paged "),
        theirs(&page.target),
        ours(" for "),
        strong(&page.title),
    ];
    if !page.reason.is_empty() {
        parts.push(ours(": "));
        parts.push(theirs(&page.reason));
    }
    Note {
        severity: Severity::Warning,
        service: None,
        environment: None,
        group_key: None,
        approval: None,
        parts,
    }
}

/// What an event (`entity.what` after `events.`) says; `None` for events not worth a
/// message at all.
pub fn describe(event: &str, envelope: &RawEnvelope) -> Option<Note> {
    let data = &envelope.data;
    let (entity, what) = event.split_once('.').unwrap_or((event, ""));
    match entity {
        "plan" | "gate" | "step" => plan_note(event, &typed::<Plan>(data)?),
        "rollout" => Some(rollout_note(what, &typed::<Rollout>(data)?)),
        "alert" => Some(alert_note(&typed::<Alert>(data)?)),
        "incident" => Some(incident_note(
            what.parse().ok()?,
            &typed::<IncidentEvent>(data)?,
        )),
        "page" if what == "sent" => Some(page_note(&typed::<Page>(data)?)),
        "slo" if what == "budget.exhausted" => {
            let service = str_of(data, &["service"]).map(str::to_owned);
            Some(Note {
                severity: Severity::Critical,
                environment: None,
                group_key: None,
                approval: None,
                parts: vec![
                    ours("💸 error budget spent: SLO "),
                    strong(str_of(data, &["slo"]).unwrap_or("?")),
                    ours(" of "),
                    theirs(service.clone().unwrap_or_default()),
                    ours("; production deploys wait until it recovers"),
                ],
                service,
            })
        }
        "drift" => Some(Note {
            severity: Severity::Warning,
            service: str_of(data, &["service"]).map(str::to_owned),
            environment: str_of(data, &["environment"]).map(str::to_owned),
            group_key: None,
            approval: None,
            parts: vec![
                ours("🧭 drift: "),
                theirs(str_of(data, &["object"]).unwrap_or("?")),
                ours(" "),
                theirs(str_of(data, &["field"]).unwrap_or("")),
            ],
        }),
        // Our own records, analysis verdicts and anything unknown: not posted by
        // default (a route with severity>=debug gets them).
        _ => Some(Note {
            severity: Severity::Debug,
            service: envelope.subject.clone(),
            environment: None,
            group_key: None,
            approval: None,
            parts: vec![ours("event "), theirs(event)],
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::markup::render;
    use crate::settings::ChatKind;

    fn incident_envelope(data: &IncidentEvent) -> RawEnvelope {
        serde_json::from_value(json!({
            "specversion": "1.0", "id": "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1",
            "source": "toronto://devops/incident", "type": "ai.toronto.devops.incident.opened.v1",
            "data": data,
        }))
        .unwrap()
    }

    #[test]
    fn incident_events_name_the_incident_and_how_to_acknowledge_it() {
        let id: uuid::Uuid = "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2".parse().unwrap();
        let mut event = IncidentEvent {
            id,
            key: "shop/production".into(),
            title: "shop <errors>".into(),
            service: "shop".into(),
            environment: "production".into(),
            state: toronto_protocol::incidents::IncidentState::Triggered,
            severity: toronto_protocol::incidents::Severity::Sev1,
            alerts_firing: 2,
            alerts_total: 2,
            change: "opened from 2 alerts".into(),
            changes: vec![],
            detected_at: None,
            by: None,
            at: chrono::Utc::now(),
        };
        let note = describe("incident.opened", &incident_envelope(&event)).unwrap();
        assert_eq!(note.severity, Severity::Critical);
        assert_eq!(note.environment.as_deref(), Some("production"));
        assert_eq!(
            render(ChatKind::Slack, &note.parts),
            "🚨 incident *shop &lt;errors&gt;* opened (SEV1): opened from 2 alerts — `ack 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2`"
        );
        event.change = "mitigated by hand".into();
        event.by = Some("alice".into());
        let note = describe("incident.notify_failed", &incident_envelope(&event)).unwrap();
        assert_eq!(note.severity, Severity::Critical);
        assert_eq!(
            render(ChatKind::Slack, &note.parts),
            "🚨 incident *shop &lt;errors&gt;* notify failed (SEV1): mitigated by hand by alice"
        );
        let note = describe("incident.mitigated", &incident_envelope(&event)).unwrap();
        assert_eq!(note.severity, Severity::Info);
        // An incident event of no kind the contract names is not posted.
        assert_eq!(describe("incident.bogus", &incident_envelope(&event)), None);
    }
}
