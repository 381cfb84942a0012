//! The SLO page (budget burn-down, burn rates per window pair, firing alerts) and the
//! DORA page (the four figures per service and environment, last 7 against last 30
//! days).

use std::fmt::Write as _;

use toronto_protocol::alerts::SloEntry;
use toronto_protocol::tasks::{DoraReport, DoraWeek};

use super::View;
use crate::history::SloHistory;
use crate::html::{Ctx, E, badge, time};
use crate::svg::{self, trim_num};

/// The multi-window pairs of the burn-rate alerts: (long, short, threshold, severity).
pub const WINDOW_PAIRS: [(&str, &str, f64, &str); 4] = [
    ("1h", "5m", 14.4, "page"),
    ("6h", "30m", 6.0, "page"),
    ("1d", "2h", 3.0, "ticket"),
    ("3d", "6h", 1.0, "ticket"),
];

/// The compact SLO table of the overview.
pub fn slo_table(slos: &[SloEntry]) -> String {
    if slos.is_empty() {
        return "<p class=\"muted\">No SLOs.</p>".into();
    }
    let mut out = String::from(
        "<table id=\"slos\"><tr><th>service</th><th>SLO</th><th>objective</th><th>budget left</th><th>firing</th></tr>",
    );
    for e in slos {
        let d = &e.definition;
        let left = e.status.as_ref().map(|s| s.budget_remaining);
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}%</td><td>{} {}</td><td>{}</td></tr>",
            E(&d.service),
            E(&d.slo),
            trim_num(d.objective * 100.0),
            left.map(|l| format!("{}%", trim_num(l * 100.0)))
                .unwrap_or_else(|| "not evaluated yet".into()),
            left.map(|l| svg::bar(l, "budget left")).unwrap_or_default(),
            firing(e)
        );
    }
    out.push_str("</table>");
    out
}

fn firing(e: &SloEntry) -> String {
    if e.firing.is_empty() {
        "–".into()
    } else {
        e.firing
            .iter()
            .map(|f| badge("fail", f))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The SLO page.
pub fn page(_ctx: &Ctx, slos: &[SloEntry], history: &SloHistory) -> View {
    let mut out = String::with_capacity(4096 + slos.len() * 4096);
    if slos.is_empty() {
        out.push_str("<p class=\"muted\">The monitor has no SLOs.</p>");
    }
    for (n, e) in slos.iter().enumerate() {
        let d = &e.definition;
        let _ = write!(
            out,
            "<section class=\"slo\" id=\"slo-{n}\"><h2>{} · {} <span class=\"muted\">({}, objective {}% over {} days, from {})</span></h2><p>firing: {}</p>",
            E(&d.service),
            E(&d.slo),
            E(&d.environment),
            trim_num(d.objective * 100.0),
            d.window_days,
            E(&d.source),
            firing(e)
        );
        let Some(s) = &e.status else {
            out.push_str("<p class=\"muted\">Not evaluated yet.</p></section>");
            continue;
        };
        let _ = write!(
            out,
            "<p>budget left <b>{}%</b> {}{} <span class=\"muted\">at {}</span></p>",
            trim_num(s.budget_remaining * 100.0),
            svg::bar(s.budget_remaining, "budget left"),
            if s.exhausted {
                " · <b>exhausted</b>"
            } else {
                ""
            },
            time(&s.evaluated_at)
        );
        let points: Vec<_> = history
            .points(&d.service, &d.slo)
            .into_iter()
            .map(|(t, v)| (t, v * 100.0))
            .collect();
        let low = points.iter().map(|p| p.1).fold(0.0_f64, f64::min);
        out.push_str(&svg::over_time(
            &format!("burndown-{n}"),
            "error budget left over time",
            &points,
            low.floor(),
            100.0,
            "%",
            false,
        ));
        out.push_str("<table class=\"burn\"><tr><th>window pair</th><th>long</th><th>short</th><th>threshold</th><th>alert</th><th>state</th></tr>");
        for (long, short, threshold, severity) in WINDOW_PAIRS {
            let rate = |w: &str| s.burn_rates.get(w).copied();
            let (l, sh) = (rate(long), rate(short));
            let hot = matches!((l, sh), (Some(a), Some(b)) if a > threshold && b > threshold);
            let show = |v: Option<f64>| v.map(trim_num).unwrap_or_else(|| "–".into());
            let _ = write!(
                out,
                "<tr><td>{long} / {short}</td><td>{}</td><td>{}</td><td>{}×</td><td>{severity}</td><td>{}</td></tr>",
                show(l),
                show(sh),
                trim_num(threshold),
                if hot {
                    badge("fail", "burning")
                } else {
                    badge("pass", "ok")
                }
            );
        }
        out.push_str("</table></section>");
    }
    View {
        title: "SLOs".into(),
        live: out,
        after: String::new(),
    }
}

/// One row of the DORA page: a service in an environment.
#[derive(Debug, Clone)]
pub struct DoraRow {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The last 30 days with the last weeks one by one, or why not.
    pub report: Result<DoraReport, String>,
}

/// Deploys and failed changes per week, oldest first.
fn weekly(trend: &[DoraWeek]) -> Vec<(u64, u64)> {
    trend
        .iter()
        .map(|w| (w.deployments, w.failed_changes))
        .collect()
}

/// The weekly trend as bars (deploys, with the failed ones in red), oldest left.
fn trend_svg(weeks: &[(u64, u64)]) -> String {
    let max = weeks.iter().map(|w| w.0).max().unwrap_or(0).max(1) as f64;
    let (w, h, gap) = (18.0, 28.0, 4.0);
    let width = weeks.len() as f64 * (w + gap);
    let mut out = format!(
        "<svg class=\"trend\" width=\"{width}\" height=\"{h}\" viewBox=\"0 0 {width} {h}\" role=\"img\"><title>deploys per week, failed in red, oldest first: {}</title>",
        weeks
            .iter()
            .map(|(d, f)| format!("{d} ({f} failed)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (i, (deploys, failed)) in weeks.iter().enumerate() {
        let x = i as f64 * (w + gap);
        let dh = (*deploys as f64 / max * h).max(if *deploys > 0 { 1.0 } else { 0.0 });
        let fh = *failed as f64 / max * h;
        let _ = write!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{}\" class=\"ok\"/>",
            trim_num(h - dh),
            trim_num(dh)
        );
        if *failed > 0 {
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{}\" class=\"bad\"/>",
                trim_num(h - fh),
                trim_num(fh)
            );
        }
    }
    out.push_str("</svg>");
    out
}

fn or_dash(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

fn rate(failed: u64, deploys: u64) -> Option<f64> {
    (deploys > 0).then(|| failed as f64 / deploys as f64)
}

/// The four figures of the last week (from the trend) and of the whole window.
fn figures(r: &DoraReport) -> [(String, String); 4] {
    let week = r.trend.last();
    let month = (
        format!(
            "{}/day ({})",
            trim_num(r.deployment_frequency_per_day),
            r.deployments
        ),
        or_dash(r.lead_time_median_seconds, duration),
        or_dash(r.change_failure_rate, |c| {
            format!("{}% ({})", trim_num(c * 100.0), r.failed_changes)
        }),
        or_dash(r.time_to_restore_median_seconds, duration),
    );
    let week = match week {
        Some(w) => (
            format!(
                "{}/day ({})",
                trim_num(w.deployments as f64 / 7.0),
                w.deployments
            ),
            or_dash(w.lead_time_median_seconds, duration),
            or_dash(rate(w.failed_changes, w.deployments), |c| {
                format!("{}% ({})", trim_num(c * 100.0), w.failed_changes)
            }),
            or_dash(w.time_to_restore_median_seconds, duration),
        ),
        None => ("–".into(), "–".into(), "–".into(), "–".into()),
    };
    [
        (week.0, month.0),
        (week.1, month.1),
        (week.2, month.2),
        (week.3, month.3),
    ]
}

/// One figure per week, oldest first, joined with dots.
fn per_week(trend: &[DoraWeek], f: impl Fn(&DoraWeek) -> String) -> String {
    trend.iter().map(f).collect::<Vec<_>>().join(" · ")
}

fn duration(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{}s", trim_num(seconds))
    } else if seconds < 7200.0 {
        format!("{}m", trim_num(seconds / 60.0))
    } else {
        format!("{}h", trim_num(seconds / 3600.0))
    }
}

/// The DORA page.
pub fn dora(_ctx: &Ctx, rows: &[DoraRow]) -> View {
    let mut out = String::from(
        "<p class=\"muted\">Computed by the planner from the event stream; each cell shows the last 7 days → the last 30 days. The trend covers the last 4 weeks, oldest first: deploys per week (failed changes in red), then each week's change failure rate, median lead time and median time to restore.</p>",
    );
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">No deploys yet.</p>");
    } else {
        out.push_str("<table id=\"dora\"><tr><th>service</th><th>environment</th><th>deployment frequency</th><th>lead time (median)</th><th>change failure rate</th><th>time to restore (median)</th><th>last 4 weeks</th></tr>");
        for r in rows {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td>",
                E(&r.service),
                E(&r.environment)
            );
            let report = match &r.report {
                Ok(report) => report,
                Err(e) => {
                    let _ = write!(
                        out,
                        "<td colspan=\"5\"><span class=\"error\">{}</span></td></tr>",
                        E(e)
                    );
                    continue;
                }
            };
            for (week, month) in figures(report) {
                let _ = write!(out, "<td>{week} → {month}</td>");
            }
            if report.trend.is_empty() {
                out.push_str("<td>–</td></tr>");
                continue;
            }
            let t = &report.trend;
            let rates = per_week(t, |w| {
                or_dash(rate(w.failed_changes, w.deployments), |c| {
                    format!("{}%", trim_num(c * 100.0))
                })
            });
            let leads = per_week(t, |w| or_dash(w.lead_time_median_seconds, duration));
            let restores = per_week(t, |w| or_dash(w.time_to_restore_median_seconds, duration));
            let _ = write!(
                out,
                "<td>{}<br><span class=\"muted\">failure rate {}<br>lead time {}<br>time to restore {}</span></td></tr>",
                trend_svg(&weekly(t)),
                E(&rates),
                E(&leads),
                E(&restores)
            );
        }
        out.push_str("</table>");
    }
    View {
        title: "DORA".into(),
        live: out,
        after: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn week(deployments: u64, failed: u64, lead: Option<f64>, restore: Option<f64>) -> DoraWeek {
        DoraWeek {
            start: chrono::Utc::now(),
            end: chrono::Utc::now(),
            deployments,
            failed_changes: failed,
            lead_time_median_seconds: lead,
            time_to_restore_median_seconds: restore,
        }
    }

    #[test]
    fn the_trend_shows_every_figure_week_by_week() {
        let report = DoraReport {
            service: Some("shop".into()),
            environment: "production".into(),
            window_start: chrono::Utc::now(),
            window_end: chrono::Utc::now(),
            deployments: 12,
            deployment_frequency_per_day: 0.4,
            lead_time_median_seconds: Some(5400.0),
            lead_time_mean_seconds: None,
            failed_changes: 2,
            failures_by_cause: Default::default(),
            change_failure_rate: Some(2.0 / 12.0),
            time_to_restore_median_seconds: Some(600.0),
            trend: vec![
                week(2, 0, Some(3600.0), None),
                week(4, 1, Some(7200.0), Some(90.0)),
                week(0, 0, None, None),
                week(3, 1, Some(9000.0), Some(900.0)),
            ],
        };
        let row = DoraRow {
            service: "shop".into(),
            environment: "production".into(),
            report: Ok(report),
        };
        let page = dora(&Ctx::default(), std::slice::from_ref(&row)).live;
        assert!(page.contains("<svg class=\"trend\""), "{page}");
        assert!(
            page.contains("failure rate 0% · 25% · – · 33.33%"),
            "{page}"
        );
        assert!(page.contains("lead time 60m · 2h · – · 2.5h"), "{page}");
        assert!(page.contains("time to restore – · 90s · – · 15m"), "{page}");
        // The last week's figures stand before the 30 days'.
        assert!(page.contains("<td>33.33% (1) → 16.67% (2)</td>"), "{page}");
        let broken = DoraRow {
            report: Err("timeout".into()),
            ..row
        };
        let page = dora(&Ctx::default(), &[broken]).live;
        assert!(
            page.contains("<span class=\"error\">timeout</span>"),
            "{page}"
        );
    }
}
