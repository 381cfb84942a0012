//! Replies turned into plain text, the same for chat and the terminal: one line for a
//! change, a small table for a list. The text is not escaped: chat escapes it for its
//! own markup.

use serde::de::DeserializeOwned;
use serde_json::Value;
use toronto_protocol::ErrorBody;
use toronto_protocol::alerts::SloEntries;
use toronto_protocol::rollout::{Rollout, Rollouts};
use toronto_protocol::tasks::{DoraReport, Plan, PlanTask, Plans, Strategy, SubmitAccepted};

use crate::Command;

fn typed<T: DeserializeOwned>(data: &Value) -> Option<T> {
    serde_json::from_value(data.clone()).ok()
}

/// Columns padded to their widest cell, separated by two spaces. Widths are display
/// columns (a CJK character or an emoji takes two), so the columns line up in a
/// terminal whatever the text.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    use unicode_width::UnicodeWidthStr;
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.width());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.width());
                format!("{c}{}", " ".repeat(pad))
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

fn strategy(s: &Strategy) -> String {
    match s {
        Strategy::Rolling => "rolling".into(),
        Strategy::BlueGreen => "blue-green".into(),
        Strategy::Canary { steps } if steps.is_empty() => "canary".into(),
        Strategy::Canary { steps } => format!(
            "canary {}",
            steps
                .iter()
                .map(|s| s.weight.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// What a plan's task is, in a few words.
pub fn describe_task(task: &PlanTask) -> String {
    match task {
        PlanTask::Deploy(t) => format!(
            "deploy {} {} to {} ({})",
            t.service,
            t.version,
            t.environment,
            strategy(&t.strategy)
        ),
        PlanTask::Rollback(t) => format!(
            "rollback {} in {}{}{}",
            t.service,
            t.environment,
            t.target_version
                .as_ref()
                .map(|v| format!(" to {v}"))
                .unwrap_or_default(),
            if t.emergency { " (emergency)" } else { "" }
        ),
        PlanTask::Scale(t) => format!("scale {} in {} to {}", t.service, t.environment, t.replicas),
        PlanTask::Pipeline(t) => format!("pipeline for {}", t.service),
        PlanTask::ProvisionEnvironment(t) => format!("environment {}", t.name),
        PlanTask::ChaosExperiment(t) => format!(
            "chaos experiment on {} in {} for {}",
            t.service,
            t.environment,
            human_duration(t.duration_seconds)
        ),
    }
}

fn state<T: serde::Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn rollout_line(r: &Rollout) -> Vec<String> {
    vec![
        r.service.clone(),
        r.environment.clone(),
        r.version.clone(),
        strategy(&r.strategy),
        state(&r.phase),
        format!("{}%", r.weight),
        r.reason.clone().unwrap_or_default(),
    ]
}

fn plan_line(p: &Plan) -> Vec<String> {
    vec![
        p.id.to_string(),
        describe_task(&p.task),
        state(&p.state),
        p.requested_by.clone(),
        p.reason.clone().unwrap_or_default(),
    ]
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// A duration in the unit that reads best: `40s`, `12m`, `4.0h`, `3.5d`.
fn hours(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        Some(s) => format!("{:.1}d", s / 86_400.0),
    }
}

fn str_field<'a>(v: &'a Value, keys: &[&str]) -> &'a str {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .unwrap_or("")
}

/// A reply of the incident commander (loosely typed): a list of incidents, one
/// incident, a silence, or anything else as compact JSON.
fn incident_reply(cmd: &Command, data: &Value) -> String {
    if let Some(list) = data.get("incidents").and_then(Value::as_array) {
        if list.is_empty() {
            return "no open incidents".into();
        }
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|i| {
                vec![
                    str_field(i, &["id", "incident_id"]).to_owned(),
                    str_field(i, &["severity"]).to_uppercase(),
                    str_field(i, &["state", "status"]).to_owned(),
                    str_field(i, &["service"]).to_owned(),
                    str_field(i, &["title", "summary"]).to_owned(),
                ]
            })
            .collect();
        return table(
            &["INCIDENT", "SEVERITY", "STATE", "SERVICE", "TITLE"],
            &rows,
        );
    }
    let incident = data.get("incident").unwrap_or(data);
    let id = str_field(incident, &["id", "incident_id"]);
    let state = str_field(incident, &["state", "status"]);
    match cmd {
        Command::Ack { incident_id } | Command::Resolve { incident_id } => format!(
            "incident {} is {}",
            if id.is_empty() {
                incident_id.to_string()
            } else {
                id.to_owned()
            },
            if state.is_empty() {
                if matches!(cmd, Command::Ack { .. }) {
                    "acknowledged"
                } else {
                    "resolved"
                }
            } else {
                state
            }
        ),
        Command::Note { incident_id, .. } => format!("note added to incident {incident_id}"),
        Command::Silence {
            matchers,
            duration_seconds,
            ..
        } => {
            let silence = data.get("silence").unwrap_or(data);
            format!(
                "silence {}for {} on {}",
                match str_field(silence, &["id", "silence_id"]) {
                    "" => String::new(),
                    id => format!("{id} "),
                },
                human_duration(*duration_seconds),
                matchers
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        _ => data.to_string(),
    }
}

/// `2h`, `1d6h`, `45m`, `30s`.
pub fn human_duration(seconds: u64) -> String {
    if seconds < 60 {
        return format!("{seconds}s");
    }
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    let mut out = String::new();
    if d > 0 {
        out.push_str(&format!("{d}d"));
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 || out.is_empty() {
        out.push_str(&format!("{m}m"));
    }
    out
}

/// The text of a successful reply to `cmd` (the reply envelope's `data`).
pub fn render(cmd: &Command, data: &Value) -> String {
    let fallback = || data.to_string();
    match cmd {
        Command::Deploy { .. } | Command::Rollback { .. } => match typed::<SubmitAccepted>(data) {
            Some(a) => format!(
                "plan {} {} for {}{}",
                a.plan_id,
                if a.duplicate {
                    "already exists"
                } else {
                    "accepted"
                },
                crate::render::command_summary(cmd),
                if cmd.environment() == Some("production") {
                    "; production needs an approval by another operator"
                } else {
                    ""
                }
            ),
            None => fallback(),
        },
        Command::Promote { .. } | Command::Abort { .. } => match typed::<Rollout>(data) {
            Some(r) => format!(
                "rollout {} of {} {} in {}: {} at {}%{}",
                r.id,
                r.service,
                r.version,
                r.environment,
                state(&r.phase),
                r.weight,
                r.pending
                    .as_ref()
                    .map(|_| format!(" ({} requested)", cmd.name()))
                    .unwrap_or_default()
            ),
            None => fallback(),
        },
        Command::Status { .. } => match typed::<Rollouts>(data) {
            Some(r) if r.rollouts.is_empty() => "no rollouts".into(),
            Some(r) => table(
                &[
                    "SERVICE", "ENV", "VERSION", "STRATEGY", "PHASE", "WEIGHT", "REASON",
                ],
                &r.rollouts.iter().map(rollout_line).collect::<Vec<_>>(),
            ),
            None => fallback(),
        },
        Command::Plans { .. } => match typed::<Plans>(data) {
            Some(p) if p.plans.is_empty() => "no plans".into(),
            Some(p) => table(
                &["PLAN", "TASK", "STATE", "REQUESTED BY", "REASON"],
                &p.plans.iter().map(plan_line).collect::<Vec<_>>(),
            ),
            None => fallback(),
        },
        Command::Approve { .. } | Command::Reject { .. } => match typed::<Plan>(data) {
            Some(p) => format!(
                "plan {} ({}) {}; now {}",
                p.id,
                describe_task(&p.task),
                if matches!(cmd, Command::Approve { .. }) {
                    "approved"
                } else {
                    "rejected"
                },
                state(&p.state)
            ),
            None => fallback(),
        },
        Command::Incidents
        | Command::Ack { .. }
        | Command::Resolve { .. }
        | Command::Note { .. }
        | Command::Silence { .. } => incident_reply(cmd, data),
        Command::Slo { service } => match typed::<SloEntries>(data) {
            Some(e) if e.slos.is_empty() => format!("{service} has no SLO"),
            Some(e) => table(
                &["SLO", "OBJECTIVE", "BUDGET LEFT", "BURN 1H", "FIRING"],
                &e.slos
                    .iter()
                    .map(|s| {
                        vec![
                            s.definition.slo.clone(),
                            format!("{}%", s.definition.objective * 100.0),
                            pct(s.status.as_ref().map(|st| st.budget_remaining)),
                            s.status
                                .as_ref()
                                .and_then(|st| st.burn_rates.get("1h"))
                                .map(|b| format!("{b:.2}x"))
                                .unwrap_or_else(|| "-".into()),
                            s.firing.join(","),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ),
            None => fallback(),
        },
        Command::Dora { .. } => match typed::<DoraReport>(data) {
            Some(d) => format!(
                "DORA for {} in {} over {} days: {} deploys ({:.2}/day), lead time {} (median), change failure rate {} ({} failed: {} aborted, {} rolled back, {} with an incident), time to restore {} (median)",
                d.service.as_deref().unwrap_or("all services"),
                d.environment,
                (d.window_end - d.window_start).num_days(),
                d.deployments,
                d.deployment_frequency_per_day,
                hours(d.lead_time_median_seconds),
                pct(d.change_failure_rate),
                d.failed_changes,
                d.failures_by_cause.aborted,
                d.failures_by_cause.rolled_back,
                d.failures_by_cause.incident,
                hours(d.time_to_restore_median_seconds),
            ),
            None => fallback(),
        },
        Command::Help { command } => Command::help_text(command.as_deref()),
    }
}

/// The command in a few words, e.g. `deploy shop-api 2.4.1 to staging (canary)`.
pub fn command_summary(cmd: &Command) -> String {
    match cmd {
        Command::Deploy {
            service,
            version,
            environment,
            strategy,
            steps,
            ..
        } => {
            let s = match strategy {
                None | Some(crate::StrategyArg::Rolling) => "rolling".to_owned(),
                Some(crate::StrategyArg::BlueGreen) => "blue-green".to_owned(),
                Some(crate::StrategyArg::Canary) if steps.is_empty() => "canary".to_owned(),
                Some(crate::StrategyArg::Canary) => format!(
                    "canary {}",
                    steps
                        .iter()
                        .map(u8::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            format!("deploy {service} {version} to {environment} ({s})")
        }
        Command::Rollback {
            service,
            environment,
            to,
            emergency,
        } => format!(
            "rollback {service} in {environment}{}{}",
            to.as_ref().map(|v| format!(" to {v}")).unwrap_or_default(),
            if *emergency { " (emergency)" } else { "" }
        ),
        other => other.name().to_owned(),
    }
}

/// The text of an error reply to `cmd`: the service's message, and its reasons when it
/// gave some (`details.reasons`).
pub fn render_error(cmd: &Command, error: &ErrorBody) -> String {
    let mut text = format!(
        "{} failed ({}): {}",
        cmd.name(),
        error.code.as_str(),
        error.message
    );
    if let Some(reasons) = error
        .details
        .as_ref()
        .and_then(|d| d.get("reasons"))
        .and_then(Value::as_array)
    {
        for r in reasons.iter().filter_map(Value::as_str) {
            text.push_str("\n- ");
            text.push_str(r);
        }
    }
    text
}
