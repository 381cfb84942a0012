//! `toronto analysis replay`: past rollouts judged again under new analysis rules
//! (`monitor.analysis.replay`), printed as a table: rollout, version, time, verdict then,
//! verdict now, what changed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use toronto_protocol::analysis::{AnalysisMetric, AnalysisOutcome, AnalysisTemplate, Direction};
use toronto_protocol::replay::{AnalysisReplay, ReplayChange, ReplayPage, RolloutReplay};
use toronto_protocol::{Encoding, Envelope, ServiceKind, Subjects};

use crate::out::Output;

/// `toronto analysis ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AnalysisAction {
    /// What-if: the verdict each past rollout got, and the one it would get under the
    /// rules given (a template file, or one metric's thresholds).
    Replay(ReplayArgs),
}

/// Options of `toronto analysis replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The service.
    #[arg(long)]
    pub service: String,
    /// Only this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// How far back to look, e.g. 30m, 2h, 7d.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub since: u64,
    /// Up to how long ago, e.g. 1h (now when absent).
    #[arg(long, value_parser = parse_duration)]
    pub until: Option<u64>,
    /// An analysis template (YAML or JSON: `name`, `metrics`): the new rules.
    #[arg(long, conflicts_with_all = ["max_value", "min_value", "max_relative_effect", "max_absolute_effect"])]
    pub template: Option<PathBuf>,
    /// The metric the thresholds below are for.
    #[arg(long, default_value = "http_error_ratio")]
    pub metric: String,
    /// Fail when the canary's median is above this value (a threshold check).
    #[arg(long)]
    pub max_value: Option<f64>,
    /// Fail when the canary's median is below this value (a threshold check).
    #[arg(long)]
    pub min_value: Option<f64>,
    /// Compare with the baseline: largest relative effect allowed, e.g. 0.1.
    #[arg(long)]
    pub max_relative_effect: Option<f64>,
    /// Compare with the baseline: largest absolute effect allowed, e.g. 0.02.
    #[arg(long)]
    pub max_absolute_effect: Option<f64>,
    /// Confidence of the test, e.g. 0.99 (each verdict's own when absent).
    #[arg(long)]
    pub confidence: Option<f64>,
    /// Rollouts per page (1 to 100).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue after this cursor (the one a page printed).
    #[arg(long)]
    pub cursor: Option<String>,
}

fn parse_duration(v: &str) -> Result<u64, String> {
    toronto_commands::parse_duration(v)
}

impl ReplayArgs {
    /// The request these options make (the template file read and parsed).
    pub fn request(&self, now: DateTime<Utc>) -> anyhow::Result<AnalysisReplay> {
        let ago = |s: u64| now - chrono::Duration::seconds(s as i64);
        let (template, metrics) = match &self.template {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let t: AnalysisTemplate = serde_yaml_ng::from_str(&text)
                    .with_context(|| format!("{} is not an analysis template", path.display()))?;
                (Some(t), Vec::new())
            }
            None => {
                let thresholds = [
                    self.max_value,
                    self.min_value,
                    self.max_relative_effect,
                    self.max_absolute_effect,
                ];
                if thresholds.iter().all(Option::is_none) {
                    bail!(
                        "give --template FILE, or thresholds (--max-value, --min-value, --max-relative-effect, --max-absolute-effect)"
                    );
                }
                let metric = AnalysisMetric {
                    name: self.metric.clone(),
                    query: None,
                    direction: Direction::Increase,
                    max_relative_effect: self.max_relative_effect,
                    max_absolute_effect: self.max_absolute_effect,
                    critical: true,
                    must_have_data: false,
                    max_value: self.max_value,
                    min_value: self.min_value,
                };
                (None, vec![metric])
            }
        };
        Ok(AnalysisReplay {
            service: self.service.clone(),
            environment: self.env.clone(),
            since: Some(ago(self.since)),
            until: self.until.map(ago),
            template,
            metrics,
            confidence: self.confidence,
            limit: Some(self.limit),
            cursor: self.cursor.clone(),
        })
    }
}

fn outcome(o: AnalysisOutcome) -> &'static str {
    match o {
        AnalysisOutcome::Pass => "pass",
        AnalysisOutcome::Fail => "fail",
        AnalysisOutcome::Inconclusive => "inconclusive",
    }
}

fn verdict(o: AnalysisOutcome, failed_at: Option<u32>, total: u32) -> String {
    match failed_at {
        Some(at) => format!("fail@{at}/{total}"),
        None => outcome(o).to_owned(),
    }
}

fn change(c: ReplayChange) -> &'static str {
    match c {
        ReplayChange::Unchanged => "no",
        ReplayChange::AbortsEarlier => "yes: aborts earlier",
        ReplayChange::AbortsLater => "yes: aborts later",
        ReplayChange::NoLongerAborts => "yes: no longer aborts",
        ReplayChange::NowAborts => "yes: now aborts",
        ReplayChange::VerdictsDiffer => "yes: verdicts differ",
    }
}

/// One row of the table.
pub fn row(r: &RolloutReplay) -> String {
    let id = r
        .rollout_id
        .map(|id| id.to_string()[..8].to_owned())
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<10} {:<12} {:<12} {:<20} {:<14} {:<14} {}",
        id,
        r.environment,
        r.version.as_deref().unwrap_or("-"),
        r.started_at.format("%Y-%m-%d %H:%M:%S"),
        verdict(r.then, r.then_failed_at, r.steps_total),
        verdict(r.now, r.now_failed_at, r.steps_total),
        change(r.change)
    )
}

/// The table of a page, with the line that continues it.
pub fn table(page: &ReplayPage) -> String {
    let mut lines = vec![format!(
        "{:<10} {:<12} {:<12} {:<20} {:<14} {:<14} CHANGED",
        "ROLLOUT", "ENV", "VERSION", "FIRST ANALYSIS", "THEN", "NOW"
    )];
    lines.extend(page.rollouts.iter().map(row));
    if page.rollouts.is_empty() {
        lines.push("no analysed rollout in the range".into());
    }
    let changed = page
        .rollouts
        .iter()
        .filter(|r| r.change != ReplayChange::Unchanged)
        .count();
    lines.push(format!(
        "{changed} of {} rollouts change under the new rules (fail@N/M: the N-th of M recorded analyses fails)",
        page.rollouts.len()
    ));
    if let Some(cursor) = &page.next_cursor {
        lines.push(format!("more: add --cursor {cursor} (same options)"));
    }
    lines.join("\n")
}

/// Asks the monitor and prints the page.
pub async fn run(
    client: &async_nats::Client,
    subjects: &Subjects,
    action: &AnalysisAction,
    output: Output,
) -> anyhow::Result<()> {
    let AnalysisAction::Replay(args) = action;
    let request = args.request(Utc::now())?;
    let envelope = Envelope::builder("toronto://cli", request).build();
    let reply: Envelope<ReplayPage> = toronto_runtime::rpc::call(
        client,
        &subjects.command(ServiceKind::Monitor, "analysis.replay"),
        &envelope,
        Encoding::Json,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| anyhow::anyhow!("monitor.analysis.replay: {e}"))?;
    let page = reply.data;
    let value = serde_json::to_value(&page)?;
    let text = output.render(&value, false, || table(&page));
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        action: AnalysisAction,
    }

    fn args(line: &[&str]) -> ReplayArgs {
        let AnalysisAction::Replay(a) = Cli::try_parse_from(["analysis"].iter().chain(line))
            .unwrap()
            .action;
        a
    }

    #[test]
    fn thresholds_or_a_template_make_the_request() {
        let now = Utc::now();
        let a = args(&[
            "replay",
            "--service",
            "shop",
            "--env",
            "production",
            "--since",
            "2d",
            "--max-value",
            "0.02",
        ]);
        let r = a.request(now).unwrap();
        assert_eq!(r.service, "shop");
        assert_eq!(r.environment.as_deref(), Some("production"));
        assert_eq!(r.since, Some(now - chrono::Duration::days(2)));
        assert_eq!(r.metrics[0].name, "http_error_ratio");
        assert_eq!(r.metrics[0].max_value, Some(0.02));
        assert!(r.metrics[0].critical);
        // Nothing to judge with: refused.
        assert!(args(&["replay", "--service", "shop"]).request(now).is_err());
        let dir = std::env::temp_dir().join(format!("replay-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.yaml");
        std::fs::write(
            &file,
            "name: strict\nmetrics:\n  - name: http_error_ratio\n    max_value: 0.01\n",
        )
        .unwrap();
        let t = args(&[
            "replay",
            "--service",
            "shop",
            "--template",
            file.to_str().unwrap(),
        ]);
        let r = t.request(now).unwrap();
        assert_eq!(r.template.unwrap().metrics[0].max_value, Some(0.01));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
