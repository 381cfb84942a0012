//! The postmortem: Markdown drafted from an incident's timeline, with the durations
//! computed exactly from its recorded times.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use toronto_protocol::incidents::{Incident, Postmortem, TimelineKind};

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// A duration as `1h 2m 3.4s`.
pub fn human(secs: f64) -> String {
    let total = secs.max(0.0);
    let h = (total / 3600.0).floor();
    let m = ((total - h * 3600.0) / 60.0).floor();
    let s = total - h * 3600.0 - m * 60.0;
    match (h > 0.0, m > 0.0) {
        (true, _) => format!("{h:.0}h {m:.0}m {s:.1}s"),
        (false, true) => format!("{m:.0}m {s:.1}s"),
        _ => format!("{s:.1}s"),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// Writes the postmortem of `inc`.
pub fn write(inc: &Incident) -> Postmortem {
    let detect = seconds(inc.detected_at, inc.opened_at);
    let ack = inc.acknowledged_at.map(|t| seconds(inc.opened_at, t));
    let mitigate = inc.mitigated_at.map(|t| seconds(inc.opened_at, t));
    let resolve = inc.resolved_at.map(|t| seconds(inc.opened_at, t));
    let or_not = |d: Option<f64>, what: &str| d.map(human).unwrap_or_else(|| format!("not {what}"));
    let mut md = String::new();
    let _ = writeln!(md, "# Postmortem: {}\n", inc.title);
    let _ = writeln!(
        md,
        "Incident `{}` · {} · {} in {} · {:?}\n",
        inc.id,
        inc.severity.label(),
        inc.service,
        inc.environment,
        inc.state
    );
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "{} ({}) was opened at {} from {} alerts and resolved {}. {} distinct alert(s), {} duplicate notification(s).\n",
        inc.title,
        inc.severity.label(),
        time(inc.opened_at),
        inc.origin,
        inc.resolved_at
            .map(|t| format!(
                "at {} ({} after opening)",
                time(t),
                human(seconds(inc.opened_at, t))
            ))
            .unwrap_or_else(|| "not yet".into()),
        inc.alerts_total,
        inc.duplicates
    );
    let _ = writeln!(md, "## Impact\n");
    let _ = writeln!(
        md,
        "- Services affected: {}\n- Environment: {}\n- Severity: {} ({})\n- Impact lasted from {} to {}\n",
        inc.services.join(", "),
        inc.environment,
        inc.severity.label(),
        inc.severity_reason,
        time(inc.detected_at),
        inc.resolved_at
            .map(time)
            .unwrap_or_else(|| "ongoing".into())
    );
    let _ = writeln!(md, "## Detection\n");
    let _ = writeln!(
        md,
        "The first alert started at {}; the incident was opened at {} (time to detect {}), from {}.\n",
        time(inc.detected_at),
        time(inc.opened_at),
        human(detect),
        inc.origin
    );
    let _ = writeln!(md, "## Response\n");
    let _ = writeln!(
        md,
        "- Commander: {}\n- Scribe: {}\n- Responders: {}\n- Pages sent: {} (escalation level {}, round {}{})",
        inc.commander.as_deref().unwrap_or("none"),
        inc.scribe.as_deref().unwrap_or("none"),
        if inc.responders.is_empty() {
            "none".to_owned()
        } else {
            inc.responders.join(", ")
        },
        inc.escalation.pages_sent,
        inc.escalation.level,
        inc.escalation.cycle,
        inc.escalation
            .policy
            .as_deref()
            .map(|p| format!(", policy {p}"))
            .unwrap_or_default()
    );
    match &inc.playbook {
        Some(run) => {
            let _ = writeln!(
                md,
                "- Playbook: {} ({}){}\n",
                run.name,
                run.state,
                run.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(md, "- Playbook: none\n");
        }
    }
    let _ = writeln!(md, "## Timeline\n");
    let _ = writeln!(md, "| time (UTC) | event | by | what |");
    let _ = writeln!(md, "|---|---|---|---|");
    for e in &inc.timeline {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            time(e.at),
            e.kind,
            e.by.as_deref().unwrap_or(""),
            e.text.replace('|', "\\|")
        );
    }
    let _ = writeln!(md, "\n## Contributing change\n");
    if inc.changes.is_empty() {
        let _ = writeln!(
            md,
            "No rollout of the affected services finished shortly before the first alert.\n"
        );
    } else {
        for c in &inc.changes {
            let _ = writeln!(
                md,
                "- Rollout `{}`: {} {} (from {}) in {}, finished at {}, {}s before the first alert",
                c.rollout_id,
                c.service,
                c.version,
                c.previous_version.as_deref().unwrap_or("nothing"),
                c.environment,
                time(c.finished_at),
                c.seconds_before_alert
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Notes\n");
    let notes: Vec<_> = inc
        .timeline
        .iter()
        .filter(|e| e.kind == TimelineKind::Note)
        .collect();
    if notes.is_empty() {
        let _ = writeln!(md, "None.\n");
    }
    for n in notes {
        let _ = writeln!(
            md,
            "- {} ({}): {}",
            n.by.as_deref().unwrap_or("?"),
            time(n.at),
            n.text
        );
    }
    let _ = writeln!(md, "\n## Action items\n");
    if inc.action_items.is_empty() {
        let _ = writeln!(md, "None recorded.\n");
    }
    for item in &inc.action_items {
        let _ = writeln!(md, "- [ ] {item}");
    }
    let _ = writeln!(md, "\n## Durations\n");
    let _ = writeln!(md, "| measure | value |\n|---|---|");
    let _ = writeln!(md, "| time to detect | {} |", human(detect));
    let _ = writeln!(
        md,
        "| time to acknowledge | {} |",
        or_not(ack, "acknowledged")
    );
    let _ = writeln!(
        md,
        "| time to mitigate | {} |",
        or_not(mitigate, "mitigated")
    );
    let _ = writeln!(md, "| time to resolve | {} |", or_not(resolve, "resolved"));
    Postmortem {
        incident_id: inc.id,
        markdown: md,
        time_to_detect_seconds: detect,
        time_to_acknowledge_seconds: ack,
        time_to_mitigate_seconds: mitigate,
        time_to_resolve_seconds: resolve,
    }
}
