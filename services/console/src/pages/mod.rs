//! The pages, rendered from what the services answered. Each function returns a
//! [`View`]: the title, the live section (re-fetched on every event) and the part
//! that stays (action forms).

pub mod incident;
pub mod lists;
pub mod plan;
pub mod rollout;
pub mod slo;

use std::fmt::Write as _;

use toronto_protocol::ServiceKind;
use toronto_protocol::alerts::SloEntry;
use toronto_protocol::incidents::{Incident, Severity};
use toronto_protocol::rollout::Rollout;
use toronto_protocol::status::Status;
use toronto_protocol::tasks::Plan;

use crate::html::{Ctx, E, badge, layout, time, wire};
use crate::svg;

/// A rendered page before the layout.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The page title.
    pub title: String,
    /// The live section.
    pub live: String,
    /// What stays (actions).
    pub after: String,
}

impl View {
    /// The whole document.
    pub fn render(&self, ctx: &Ctx) -> String {
        layout(ctx, &self.title, &self.live, &self.after)
    }
}

/// What the overview shows.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// Each service's status, or why it did not answer.
    pub health: Vec<(ServiceKind, Result<Status, String>)>,
    /// Rollouts that have not ended.
    pub active: Vec<Rollout>,
    /// Open incidents (one page).
    pub open: Vec<Incident>,
    /// Whether more open incidents exist than listed.
    pub more_open: bool,
    /// Every SLO.
    pub slos: Vec<SloEntry>,
    /// The last plans.
    pub plans: Vec<Plan>,
}

/// The overview page.
pub fn overview(ctx: &Ctx, o: &Overview) -> View {
    let mut out = String::with_capacity(8192);
    out.push_str("<h2>Services</h2><div class=\"cards\" id=\"health\">");
    for (kind, status) in &o.health {
        let (state, detail) = match status {
            Ok(s) => (
                "up",
                format!("v{} · up {:.0}s", s.version, s.uptime_seconds),
            ),
            Err(e) => ("down", e.clone()),
        };
        let _ = write!(
            out,
            "<div class=\"card\"><div>{}</div>{} <span class=\"muted\">{}</span></div>",
            E(kind.service_name()),
            badge(state, state),
            E(&detail)
        );
    }
    out.push_str("</div><h2>Active rollouts</h2>");
    if o.active.is_empty() {
        out.push_str("<p class=\"muted\" id=\"active-rollouts\">No rollout is running.</p>");
    } else {
        out.push_str("<table id=\"active-rollouts\"><tr><th>service</th><th>environment</th><th>version</th><th>phase</th><th>weight</th><th>step</th></tr>");
        for r in &o.active {
            let _ = write!(
                out,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
                 <td class=\"weight\">{}% {}</td><td>{}/{}</td></tr>",
                E(&ctx.href(&format!("/rollouts/{}", r.id))),
                E(&r.service),
                E(&r.environment),
                E(&r.version),
                badge(&wire(&r.phase), &wire(&r.phase)),
                r.weight,
                svg::bar(f64::from(r.weight) / 100.0, "weight"),
                (r.step_index + 1).min(r.steps.len()),
                r.steps.len()
            );
        }
        out.push_str("</table>");
    }
    out.push_str("<h2>Open incidents</h2><div class=\"cards\" id=\"by-severity\">");
    for sev in [
        Severity::Sev1,
        Severity::Sev2,
        Severity::Sev3,
        Severity::Sev4,
    ] {
        let n = o.open.iter().filter(|i| i.severity == sev).count();
        let more = if o.more_open { "+" } else { "" };
        let _ = write!(
            out,
            "<div class=\"card\">{}<div class=\"big\">{n}{more}</div></div>",
            badge(&wire(&sev), sev.label())
        );
    }
    out.push_str("</div>");
    if !o.open.is_empty() {
        out.push_str(&lists::incident_table(ctx, &o.open));
    }
    out.push_str("<h2>SLOs</h2>");
    out.push_str(&slo::slo_table(&o.slos));
    out.push_str("<h2>Last plans</h2>");
    out.push_str(&lists::plan_table(ctx, &o.plans));
    View {
        title: "Overview".into(),
        live: out,
        after: String::new(),
    }
}

/// The page of an error: what failed, in words, and the way back.
pub fn error(ctx: &Ctx, status: u16, message: &str) -> View {
    let title = match status {
        404 => "Not found",
        401 => "Sign in needed",
        403 => "Not allowed",
        409 => "Conflict",
        503 => "Starting",
        _ => "Something failed",
    };
    View {
        title: title.into(),
        live: format!(
            "<p class=\"error\" id=\"error\">{}</p><p><a href=\"{}\">Back to the overview</a></p>",
            E(message),
            E(&ctx.href("/"))
        ),
        after: String::new(),
    }
}

/// A short time or a dash, for tables.
pub(crate) fn when(t: Option<&chrono::DateTime<chrono::Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "–".into())
}
