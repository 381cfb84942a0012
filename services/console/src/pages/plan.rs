//! The plan page: the task, each gate with what decided it and why, the decisions.

use std::fmt::Write as _;

use toronto_protocol::tasks::{Plan, PlanState, PlanTask, StepKind};

use super::{View, when};
use crate::html::{Ctx, E, action, actions_box, badge, time, wire};
use crate::pages::lists::wire_tag;

/// Who or what decides a step of this kind.
fn decider(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Policy => "the planner's environment policies",
        StepKind::ErrorBudget => "the monitor (error budget)",
        StepKind::SecurityScan => "the security agent",
        StepKind::QaTest => "the QA agent",
        StepKind::ArchitectReview => "the architect agent",
        StepKind::Approval => "a human approver",
        StepKind::Execute => "the deployer",
        StepKind::Generate => "the planner",
        StepKind::Teardown => "the deployer",
    }
}

fn task_line(task: &PlanTask) -> String {
    match task {
        PlanTask::Deploy(t) => format!(
            "deploy <b>{}</b> {} to <b>{}</b> ({})",
            E(&t.service),
            E(&t.version),
            E(&t.environment),
            E(&wire_tag(&t.strategy))
        ),
        PlanTask::Rollback(t) => format!(
            "roll <b>{}</b> in <b>{}</b> back{}",
            E(&t.service),
            E(&t.environment),
            t.target_version
                .as_deref()
                .map(|v| format!(" to {}", E(v)))
                .unwrap_or_default()
        ),
        other => format!(
            "{} of <b>{}</b> in <b>{}</b>",
            E(other.kind()),
            E(other.service()),
            E(other.environment())
        ),
    }
}

/// The plan page.
pub fn page(ctx: &Ctx, p: &Plan) -> View {
    let mut out = String::with_capacity(4096);
    let state = wire(&p.state);
    let _ = write!(
        out,
        "<p id=\"task\">{} · {}</p><p class=\"muted\">asked by <span id=\"requester\">{}</span> through {} at {}</p>",
        task_line(&p.task),
        badge(&state, &state),
        E(&p.requested_by),
        E(&p.intake),
        time(&p.created_at)
    );
    if let Some(reason) = &p.reason {
        let _ = write!(out, "<p class=\"error\" id=\"reason\">{}</p>", E(reason));
    }
    if let Some(c) = &p.cancellation {
        let _ = write!(
            out,
            "<p class=\"notice\">cancelled by {} at {}: {}</p>",
            E(&c.by),
            time(&c.at),
            E(&c.reason)
        );
    }
    out.push_str("<h2>Steps and gates</h2><table id=\"gates\"><tr><th>step</th><th>decided by</th><th>state</th><th>why</th><th>attempts</th><th>started</th><th>finished</th></tr>");
    for s in &p.steps {
        let findings = s
            .findings
            .as_ref()
            .map(|f| {
                format!(
                    "<details><summary>findings</summary><pre>{}</pre></details>",
                    E(&f.to_string())
                )
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{findings}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            E(&s.id),
            decider(s.kind),
            badge(&wire(&s.state), &wire(&s.state)),
            E(s.reason.as_deref().unwrap_or("")),
            s.attempts,
            when(s.started_at.as_ref()),
            when(s.finished_at.as_ref()),
        );
    }
    out.push_str("</table><h2>Approvals</h2>");
    if p.decisions.is_empty() {
        out.push_str("<p class=\"muted\" id=\"decisions\">No decision yet.</p>");
    } else {
        out.push_str("<ul id=\"decisions\">");
        for d in &p.decisions {
            let _ = write!(
                out,
                "<li>{} by <b>{}</b> ({}) at {}{}</li>",
                if d.approved { "approved" } else { "rejected" },
                E(&d.by),
                E(&d.role),
                time(&d.at),
                d.comment
                    .as_deref()
                    .map(|c| format!(": {}", E(c)))
                    .unwrap_or_default()
            );
        }
        out.push_str("</ul>");
    }
    let mut forms = Vec::new();
    if p.state == PlanState::Waiting {
        let base = format!("/plans/{}", p.id);
        forms.push(action(ctx, &format!("{base}/approve"), "approve", false));
        forms.push(action(ctx, &format!("{base}/reject"), "reject", true));
    }
    View {
        title: format!("Plan: {} {}", p.task.kind(), p.task.service()),
        live: out,
        after: actions_box(ctx, &forms),
    }
}
