//! The rollout page: steps as a timeline, the traffic split over time, every analysis
//! with its per-metric evidence, and the actions on a running rollout.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use toronto_protocol::analysis::CanaryVerdict;
use toronto_protocol::rollout::{Rollout, RolloutPhase, RolloutStepKind};

use super::{View, when};
use crate::html::{Ctx, E, action, actions_box, badge, time, wire};
use crate::pages::lists::wire_tag;
use crate::svg::{self, trim_num};

/// The traffic on the new version over time: 0 at creation, each step's weight when
/// it was applied, and 0 again when traffic went back to the previous version.
pub fn traffic(r: &Rollout) -> Vec<(DateTime<Utc>, f64)> {
    let mut points = vec![(r.created_at, 0.0)];
    for s in &r.steps {
        if let Some(at) = s.applied_at {
            points.push((at, f64::from(s.weight)));
        }
    }
    match r.finished_at {
        Some(end) if r.rolled_back => points.push((end, 0.0)),
        Some(end) => points.push((end, f64::from(r.weight))),
        None => points.push((Utc::now().max(r.updated_at), f64::from(r.weight))),
    }
    points.sort_by_key(|(t, _)| *t);
    points
}

/// The rollout page.
pub fn page(ctx: &Ctx, r: &Rollout) -> View {
    let mut out = String::with_capacity(8192);
    let phase = wire(&r.phase);
    let _ = write!(
        out,
        "<p><b>{}</b> {} in <b>{}</b> · {} · {} · weight <b id=\"weight\">{}%</b> {}</p>",
        E(&r.service),
        E(&r.version),
        E(&r.environment),
        E(&wire_tag(&r.strategy)),
        badge(&phase, &phase),
        r.weight,
        svg::bar(f64::from(r.weight) / 100.0, "weight"),
    );
    if let Some(prev) = &r.previous {
        let _ = write!(
            out,
            "<p class=\"muted\">previous version {}</p>",
            E(&prev.version)
        );
    }
    if let Some(reason) = &r.reason {
        let _ = write!(out, "<p class=\"notice\" id=\"reason\">{}</p>", E(reason));
    }
    if let Some(plan) = r.plan_id {
        let _ = write!(
            out,
            "<p>From <a href=\"{}\">its plan</a>{}</p>",
            E(&ctx.href(&format!("/plans/{plan}"))),
            r.requested_by
                .as_deref()
                .map(|b| format!(", asked by {}", E(b)))
                .unwrap_or_default()
        );
    }
    out.push_str("<h2>Traffic on the new version</h2>");
    out.push_str(&svg::over_time(
        "traffic",
        "percent of traffic on the new version over time",
        &traffic(r),
        0.0,
        100.0,
        "%",
        true,
    ));
    out.push_str("<h2>Steps</h2><table id=\"steps\"><tr><th>#</th><th>step</th><th>kind</th><th>weight</th><th>state</th><th>applied</th><th>ready</th><th>done</th></tr>");
    for (i, s) in r.steps.iter().enumerate() {
        let current = if i == r.step_index && !r.phase.is_final() {
            " ◀"
        } else {
            ""
        };
        let kind = match s.kind {
            RolloutStepKind::Weight => "weight".to_owned(),
            other => wire(&other),
        };
        let _ = write!(
            out,
            "<tr><td>{}{current}</td><td>{}</td><td>{}</td><td>{}%</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            E(&s.id),
            E(&kind),
            s.weight,
            badge(&wire(&s.state), &wire(&s.state)),
            when(s.applied_at.as_ref()),
            when(s.ready_at.as_ref()),
            when(s.done_at.as_ref()),
        );
    }
    out.push_str("</table><h2>Analyses</h2>");
    if r.analyses.is_empty() {
        out.push_str("<p class=\"muted\">No analysis decided anything yet.</p>");
    }
    for (i, a) in r.analyses.iter().enumerate().rev() {
        let _ = write!(
            out,
            "<div class=\"analysis\" id=\"analysis-{i}\"><h3>step {} · from {} · {}</h3>",
            E(&a.step),
            E(&a.source),
            badge(&wire(&a.verdict.outcome), &wire(&a.verdict.outcome)),
        );
        out.push_str(&evidence(&a.verdict));
        out.push_str("</div>");
    }
    let mut forms = Vec::new();
    if !r.phase.is_final() {
        let base = format!("/rollouts/{}", r.id);
        forms.push(action(ctx, &format!("{base}/promote"), "promote", false));
        if r.phase == RolloutPhase::Paused {
            forms.push(action(ctx, &format!("{base}/resume"), "resume", false));
        } else {
            forms.push(action(ctx, &format!("{base}/pause"), "pause", false));
        }
        forms.push(action(ctx, &format!("{base}/abort"), "abort", true));
    }
    View {
        title: format!("Rollout of {} {}", r.service, r.version),
        live: out,
        after: actions_box(ctx, &forms),
    }
}

/// One verdict: its reason and a row per metric (canary against baseline, p-value,
/// effect, and why).
pub fn evidence(v: &CanaryVerdict) -> String {
    let mut out = String::with_capacity(512 + v.metrics.len() * 256);
    let _ = write!(
        out,
        "<p>{} <span class=\"muted\">at {}</span></p>\
         <table class=\"evidence\"><tr><th>metric</th><th>outcome</th><th>canary (n, median, mean)</th><th>baseline (n, median, mean)</th><th>p-value</th><th>effect</th><th>why</th></tr>",
        E(&v.reason),
        time(&v.analyzed_at)
    );
    let num = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into());
    for m in &v.metrics {
        let critical = if m.critical { " (critical)" } else { "" };
        let _ = write!(
            out,
            "<tr><td>{}{critical}</td><td>{}</td><td>{}, {}, {}</td><td>{}, {}, {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            E(&m.name),
            badge(&wire(&m.outcome), &wire(&m.outcome)),
            m.canary.count,
            num(m.canary.median),
            num(m.canary.mean),
            m.baseline.count,
            num(m.baseline.median),
            num(m.baseline.mean),
            num(m.p_value),
            m.effect.map(trim_num).unwrap_or_else(|| "–".into()),
            E(&m.reason),
        );
    }
    out.push_str("</table>");
    out
}
