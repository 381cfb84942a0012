//! The incident page: the timeline, alerts, the linked change, pages sent, the
//! postmortem, and the actions on an open incident.

use std::fmt::Write as _;

use toronto_protocol::incidents::{Incident, IncidentState, Postmortem, TimelineKind};

use super::View;
use crate::html::{Ctx, E, action, actions_box, badge, opt_time, time, wire};
use crate::markdown;

/// The incident page; `postmortem` when the incident is closed.
pub fn page(ctx: &Ctx, i: &Incident, postmortem: Option<&Postmortem>) -> View {
    let mut out = String::with_capacity(8192);
    let state = wire(&i.state);
    let _ = write!(
        out,
        "<p>{} {} · <b>{}</b> in <b>{}</b> · <span class=\"muted\">{}</span></p>",
        badge(&wire(&i.severity), i.severity.label()),
        badge(&state, &state),
        E(&i.service),
        E(&i.environment),
        E(&i.severity_reason)
    );
    let _ = write!(
        out,
        "<div class=\"cards\"><div class=\"card\">detected<br>{}</div><div class=\"card\">opened<br>{}</div>\
         <div class=\"card\">acknowledged<br>{}</div><div class=\"card\">mitigated<br>{}</div><div class=\"card\">resolved<br>{}</div></div>",
        time(&i.detected_at),
        time(&i.opened_at),
        opt_time(i.acknowledged_at.as_ref()),
        opt_time(i.mitigated_at.as_ref()),
        opt_time(i.resolved_at.as_ref()),
    );
    if let Some(c) = &i.commander {
        let _ = write!(out, "<p>commander: <b>{}</b></p>", E(c));
    }
    out.push_str("<h2>Timeline</h2><ol class=\"timeline\" id=\"timeline\">");
    for t in &i.timeline {
        let _ = write!(
            out,
            "<li><span class=\"muted\">{}</span> {} {}{}</li>",
            time(&t.at),
            badge(t.kind.as_str(), t.kind.as_str()),
            E(&t.text),
            t.by.as_deref()
                .map(|b| format!(" <span class=\"muted\">by {}</span>", E(b)))
                .unwrap_or_default()
        );
    }
    out.push_str("</ol><h2>Alerts</h2>");
    let _ = write!(
        out,
        "<p id=\"alerts\">{} firing of {} distinct alerts ({} duplicates folded in), from {}</p>",
        i.alerts_firing,
        i.alerts_total,
        i.duplicates,
        E(&i.origin)
    );
    if !i.labels.is_empty() {
        out.push_str("<table id=\"labels\"><tr><th>label</th><th>value</th></tr>");
        for (k, v) in &i.labels {
            let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", E(k), E(v));
        }
        out.push_str("</table>");
    }
    out.push_str("<h2>Linked change</h2>");
    if i.changes.is_empty() {
        out.push_str("<p class=\"muted\" id=\"changes\">No recent change was linked.</p>");
    } else {
        out.push_str("<ul id=\"changes\">");
        for c in &i.changes {
            let _ = write!(
                out,
                "<li><a href=\"{}\">{} {}</a> in {} (from {}), finished {} — {}s before the first alert</li>",
                E(&ctx.href(&format!("/rollouts/{}", c.rollout_id))),
                E(&c.service),
                E(&c.version),
                E(&c.environment),
                E(c.previous_version.as_deref().unwrap_or("?")),
                time(&c.finished_at),
                c.seconds_before_alert
            );
        }
        out.push_str("</ul>");
    }
    let _ = write!(
        out,
        "<h2>Pages sent</h2><p>{} page(s) sent; escalation level {}{}</p><ul id=\"pages\">",
        i.escalation.pages_sent,
        i.escalation.level,
        i.escalation
            .policy
            .as_deref()
            .map(|p| format!(" of policy {}", E(p)))
            .unwrap_or_default()
    );
    for t in i.timeline.iter().filter(|t| t.kind == TimelineKind::Page) {
        let _ = write!(out, "<li>{} {}</li>", time(&t.at), E(&t.text));
    }
    out.push_str("</ul>");
    if let Some(pb) = &i.playbook {
        let _ = write!(
            out,
            "<h2>Playbook</h2><p>{} · {}{}</p>",
            E(&pb.name),
            badge(pb.state.as_str(), pb.state.as_str()),
            pb.detail
                .as_deref()
                .map(|d| format!(" · {}", E(d)))
                .unwrap_or_default()
        );
    }
    out.push_str("<h2>Postmortem</h2>");
    match postmortem {
        Some(pm) => {
            let _ = write!(
                out,
                "<div class=\"postmortem\" id=\"postmortem\">{}</div>",
                markdown::render(&pm.markdown)
            );
        }
        None => out.push_str(
            "<p class=\"muted\" id=\"postmortem\">Written when the incident is closed.</p>",
        ),
    }
    let mut forms = Vec::new();
    let base = format!("/incidents/{}", i.id);
    if i.state == IncidentState::Triggered {
        forms.push(action(ctx, &format!("{base}/ack"), "acknowledge", false));
    }
    if i.state.is_open() {
        forms.push(action(ctx, &format!("{base}/resolve"), "resolve", true));
    }
    View {
        title: format!("Incident: {}", i.title),
        live: out,
        after: actions_box(ctx, &forms),
    }
}
