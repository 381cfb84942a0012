//! The listing pages (rollouts, plans, incidents) and the tables they share with
//! the overview.

use std::fmt::Write as _;

use toronto_protocol::incidents::Incident;
use toronto_protocol::rollout::Rollout;
use toronto_protocol::tasks::Plan;

use super::View;
use crate::data::Page;
use crate::html::{Ctx, E, badge, pager, time, wire};

/// A table of rollouts.
pub fn rollout_table(ctx: &Ctx, rows: &[Rollout]) -> String {
    if rows.is_empty() {
        return "<p class=\"muted\">No rollouts.</p>".into();
    }
    let mut out = String::with_capacity(256 * rows.len() + 256);
    out.push_str("<table class=\"rollouts\"><tr><th>service</th><th>environment</th><th>version</th><th>strategy</th><th>phase</th><th>weight</th><th>created</th></tr>");
    for r in rows {
        let strategy = wire_tag(&r.strategy);
        let _ = write!(
            out,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}%</td><td>{}</td></tr>",
            E(&ctx.href(&format!("/rollouts/{}", r.id))),
            E(&r.service),
            E(&r.environment),
            E(&r.version),
            E(&strategy),
            badge(&wire(&r.phase), &wire(&r.phase)),
            r.weight,
            time(&r.created_at)
        );
    }
    out.push_str("</table>");
    out
}

/// A table of plans.
pub fn plan_table(ctx: &Ctx, rows: &[Plan]) -> String {
    if rows.is_empty() {
        return "<p class=\"muted\">No plans.</p>".into();
    }
    let mut out = String::with_capacity(256 * rows.len() + 256);
    out.push_str("<table class=\"plans\"><tr><th>task</th><th>service</th><th>environment</th><th>state</th><th>requested by</th><th>created</th></tr>");
    for p in rows {
        let _ = write!(
            out,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            E(&ctx.href(&format!("/plans/{}", p.id))),
            E(p.task.kind()),
            E(p.task.service()),
            E(p.task.environment()),
            badge(&wire(&p.state), &wire(&p.state)),
            E(&p.requested_by),
            time(&p.created_at)
        );
    }
    out.push_str("</table>");
    out
}

/// A table of incidents.
pub fn incident_table(ctx: &Ctx, rows: &[Incident]) -> String {
    if rows.is_empty() {
        return "<p class=\"muted\">No incidents.</p>".into();
    }
    let mut out = String::with_capacity(256 * rows.len() + 256);
    out.push_str("<table class=\"incidents\"><tr><th>severity</th><th>title</th><th>service</th><th>environment</th><th>state</th><th>alerts firing</th><th>opened</th></tr>");
    for i in rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            badge(&wire(&i.severity), i.severity.label()),
            E(&ctx.href(&format!("/incidents/{}", i.id))),
            E(&i.title),
            E(&i.service),
            E(&i.environment),
            badge(&wire(&i.state), &wire(&i.state)),
            i.alerts_firing,
            time(&i.opened_at)
        );
    }
    out.push_str("</table>");
    out
}

/// The rollouts page.
pub fn rollouts(ctx: &Ctx, page: &Page<Rollout>) -> View {
    View {
        title: "Rollouts".into(),
        live: rollout_table(ctx, &page.rows) + &pager(ctx, "/rollouts", page.page, page.has_next),
        after: String::new(),
    }
}

/// The plans page.
pub fn plans(ctx: &Ctx, page: &Page<Plan>) -> View {
    View {
        title: "Plans".into(),
        live: plan_table(ctx, &page.rows) + &pager(ctx, "/plans", page.page, page.has_next),
        after: String::new(),
    }
}

/// The incidents page.
pub fn incidents(ctx: &Ctx, page: &Page<Incident>) -> View {
    View {
        title: "Incidents".into(),
        live: incident_table(ctx, &page.rows) + &pager(ctx, "/incidents", page.page, page.has_next),
        after: String::new(),
    }
}

/// The `kind` (or `type`) tag of an internally tagged serde enum, or its name.
pub(crate) fn wire_tag<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(o)) => o
            .get("kind")
            .or_else(|| o.get("type"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| o.keys().next().cloned())
            .unwrap_or_default(),
        _ => String::new(),
    }
}
