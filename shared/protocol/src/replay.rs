//! What-if analysis: the evidence every canary verdict keeps, and
//! `toronto.devops.v1.monitor.analysis.replay`, which judges past rollouts' evidence
//! under new rules.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::analysis::{AnalysisMetric, AnalysisOutcome, AnalysisTemplate};
use crate::message::Message;

/// The largest number of samples kept per metric and side in a verdict's evidence (the
/// most recent ones of the window).
pub const MAX_EVIDENCE_SAMPLES: usize = 512;

/// The most rollouts a replay page holds; larger asks are cut to it.
pub const MAX_REPLAY_LIMIT: usize = 100;

/// The most analyses listed per rollout in a replay answer (every analysis is judged;
/// the first ones are listed).
pub const MAX_REPLAY_STEPS: usize = 20;

/// The samples one metric was judged on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSamples {
    /// The metric's name.
    pub name: String,
    /// The canary's samples in the window, oldest first (at most
    /// [`MAX_EVIDENCE_SAMPLES`]).
    pub canary: Vec<f64>,
    /// The baseline's samples in the window (empty for a threshold check).
    pub baseline: Vec<f64>,
    /// Whether older samples were left out to stay within the cap.
    #[serde(default)]
    pub truncated: bool,
}

/// One verdict with its evidence, as the monitor keeps it (KV bucket
/// `<prefix>_analysis_evidence`, for `TORONTO_MONITOR_EVIDENCE_DAYS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictEvidence {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The rollout analysed, if the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<Uuid>,
    /// The canary's version (its `version` label), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the verdict was given.
    pub analyzed_at: DateTime<Utc>,
    /// The window analysed, in seconds.
    pub window_seconds: f64,
    /// The confidence of the test, when the request gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// The rules applied.
    pub metrics: Vec<AnalysisMetric>,
    /// The verdict given.
    pub outcome: AnalysisOutcome,
    /// Its reason.
    pub reason: String,
    /// The samples each metric was judged on.
    pub samples: Vec<MetricSamples>,
}

/// Judges past rollouts' evidence under new rules
/// (`toronto.devops.v1.monitor.analysis.replay`); it changes nothing.
///
/// The new rules are the template's metrics, or `metrics` (comparisons or thresholds).
/// Each is matched by name with the samples kept for that metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisReplay {
    /// The service.
    pub service: String,
    /// Only this environment (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Verdicts from this time on (the last 7 days when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Verdicts up to this time (now when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The new rules as a template (its metrics are used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<AnalysisTemplate>,
    /// The new rules as metrics (when no template is given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<AnalysisMetric>,
    /// Confidence of the test under the new rules (each verdict's own when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Rollouts per page (default 50, at most [`MAX_REPLAY_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Where the page starts: the `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Message for AnalysisReplay {
    const NAME: &'static str = "analysis.replay";
    const MAJOR: u32 = 1;
}

/// How a rollout's fate changes under the new rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayChange {
    /// The same verdict at every analysis.
    Unchanged,
    /// It aborted, and would abort at an earlier analysis.
    AbortsEarlier,
    /// It aborted, and would abort at a later analysis.
    AbortsLater,
    /// It aborted, and no recorded analysis would fail now (it would have gone on past
    /// the last one recorded).
    NoLongerAborts,
    /// It did not abort, and would abort now.
    NowAborts,
    /// No abort either way, but some verdicts differ (e.g. inconclusive to pass).
    VerdictsDiffer,
}

/// One analysis of a rollout, then and now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepReplay {
    /// Its place among the rollout's recorded analyses (1 is the first).
    pub step: u32,
    /// When it was given.
    pub analyzed_at: DateTime<Utc>,
    /// The verdict it got.
    pub then: AnalysisOutcome,
    /// The verdict it gets under the new rules.
    pub now: AnalysisOutcome,
    /// Why, under the new rules.
    pub reason: String,
}

/// One past rollout, then and now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RolloutReplay {
    /// The rollout (absent for analyses that named none; each is then its own entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<Uuid>,
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The canary's version, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its first recorded analysis.
    pub started_at: DateTime<Utc>,
    /// Overall then: fail if any analysis failed, else the last one's verdict.
    pub then: AnalysisOutcome,
    /// Overall now, by the same rule.
    pub now: AnalysisOutcome,
    /// The analysis that failed it then, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then_failed_at: Option<u32>,
    /// The first analysis that fails it now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now_failed_at: Option<u32>,
    /// What changes.
    pub change: ReplayChange,
    /// How many analyses were recorded and judged.
    pub steps_total: u32,
    /// The recorded analyses, then and now (the first [`MAX_REPLAY_STEPS`]).
    pub steps: Vec<StepReplay>,
}

/// A page of replayed rollouts, oldest first (the answer of `analysis.replay`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplayPage {
    /// The rollouts of this page.
    pub rollouts: Vec<RolloutReplay>,
    /// Ask again with this cursor for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Message for ReplayPage {
    const NAME: &'static str = "analysis.replay.page";
    const MAJOR: u32 = 1;
}
