//! The steps of a plan named as a person would say them: which gate or step moved,
//! what it came to, and who or what decided it and why ("security gate passed: the
//! security agent found nothing").

use toronto_protocol::tasks::{Plan, Step, StepKind, StepState};

use super::{ours, strong, theirs};
use crate::markup::Part;
use crate::settings::Severity;

/// What a step is called: `security gate`, `approval`, `execute step`.
pub(super) fn label(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Policy => "policy gate",
        StepKind::ErrorBudget => "error budget gate",
        StepKind::SecurityScan => "security gate",
        StepKind::QaTest => "QA gate",
        StepKind::ArchitectReview => "architect gate",
        StepKind::Approval => "approval",
        StepKind::Execute => "execute step",
        StepKind::Generate => "generate step",
        StepKind::Teardown => "teardown step",
    }
}

/// The step an event about `plan` is about: the last one started (`started`,
/// `waiting`) or finished (`finished`, a gate's verdict).
fn latest<'p>(plan: &'p Plan, what: &str) -> Option<&'p Step> {
    match what {
        "step.started" | "step.waiting" => plan
            .steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Running | StepState::Waiting))
            .max_by_key(|s| s.started_at),
        _ => plan
            .steps
            .iter()
            .filter(|s| s.finished_at.is_some())
            .max_by_key(|s| s.finished_at),
    }
}

/// The note's severity and words for `step.started|waiting|finished` and
/// `gate.passed`, naming the step; None for other events or when no step matches.
pub(super) fn step_note(what: &str, plan: &Plan, task: &str) -> Option<(Severity, Vec<Part>)> {
    if !matches!(
        what,
        "step.started" | "step.waiting" | "step.finished" | "gate.passed"
    ) {
        return None;
    }
    let step = latest(plan, what)?;
    let name = label(step.kind);
    let why = step.reason.clone().filter(|r| !r.is_empty());
    let (severity, emoji, verb) = match (what, step.state) {
        ("step.started", _) => (Severity::Debug, "▶", "started"),
        ("step.waiting", _) => (Severity::Debug, "⏳", "is waiting"),
        (_, StepState::Succeeded) => (Severity::Debug, "✔", "passed"),
        (_, StepState::Failed) => (Severity::Warning, "✖", "failed"),
        _ => (Severity::Debug, "•", "moved"),
    };
    let verb = if verb == "passed" && !name.ends_with("gate") && step.kind != StepKind::Approval {
        "finished"
    } else {
        verb
    };
    let mut parts = vec![
        ours(format!("{emoji} ")),
        theirs(name),
        ours(format!(" {verb} for ")),
        strong(task),
    ];
    if let Some(why) = why.filter(|_| what != "step.started") {
        parts.push(ours(": "));
        parts.push(theirs(why));
    }
    Some((severity, parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markup::plain;

    fn plan(steps: serde_json::Value) -> Plan {
        serde_json::from_value(serde_json::json!({
            "id": "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1",
            "task_id": "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2",
            "task": {"kind": "deploy", "service": "shop", "version": "1.2.0",
                     "environment": "production", "strategy": {"kind": "rolling"}},
            "state": "running", "requested_by": "toronto://cli/alice", "correlationid": "c",
            "intake": "submit", "created_at": "2026-11-26T10:00:00Z", "steps": steps,
        }))
        .unwrap()
    }

    #[test]
    fn each_step_is_named_with_what_decided_it() {
        let p = plan(serde_json::json!([
            {"id": "policy", "kind": "policy", "state": "succeeded", "attempts": 1,
             "started_at": "2026-11-26T10:00:01Z", "finished_at": "2026-11-26T10:00:01Z",
             "reason": "promotion order and freeze windows allow it"},
            {"id": "security-scan", "kind": "security_scan", "state": "succeeded", "attempts": 1,
             "started_at": "2026-11-26T10:00:02Z", "finished_at": "2026-11-26T10:00:03Z",
             "reason": "the security agent found nothing"},
            {"id": "approval", "kind": "approval", "state": "waiting", "attempts": 1,
             "started_at": "2026-11-26T10:00:04Z"}
        ]));
        let text = |what: &str| {
            step_note(what, &p, "deploy shop 1.2.0 to production").map(|(_, parts)| plain(&parts))
        };
        assert_eq!(
            text("step.finished").as_deref(),
            Some(
                "✔ security gate passed for deploy shop 1.2.0 to production: the security agent found nothing"
            )
        );
        assert_eq!(
            text("step.started").as_deref(),
            Some("▶ approval started for deploy shop 1.2.0 to production")
        );
        assert_eq!(text("plan.created"), None);
    }
}
