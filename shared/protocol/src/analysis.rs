//! Metrics on the bus and canary analysis: what the simulated cluster (or an agent
//! without a Prometheus) pushes on `toronto.metrics.<service>.<environment>`, and what
//! the deployer asks of `toronto.devops.v1.monitor.canary.analyze`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Message;

/// Samples pushed over the bus (`toronto.metrics.<service>.<environment>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricBatch {
    /// The service the samples are about.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// Who measured them, e.g. `simulated-cluster`.
    pub source: String,
    /// The samples.
    pub samples: Vec<MetricSample>,
}

impl Message for MetricBatch {
    const NAME: &'static str = "metrics.batch";
    const MAJOR: u32 = 1;
}

/// One sample of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSample {
    /// The metric's name, e.g. `http_error_ratio`.
    pub name: String,
    /// Its labels, e.g. `version`, `track` (`stable` or `canary`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
    /// When it was measured.
    pub timestamp: DateTime<Utc>,
}

/// Which deviation of the canary from the baseline counts as a failure (as in Kayenta).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Higher is worse (errors, latency).
    #[default]
    Increase,
    /// Lower is worse (throughput, success ratio).
    Decrease,
    /// Any significant change is a failure.
    Either,
}

/// One metric to compare in a canary analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisMetric {
    /// The metric's name: a series name on the bus or in a scraped endpoint.
    pub name: String,
    /// A PromQL expression to read it from Prometheus instead; `{{selector}}` is
    /// replaced by the canary or baseline label matchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Which deviation fails.
    #[serde(default)]
    pub direction: Direction,
    /// Largest relative effect allowed (canary median / baseline median - 1), e.g. 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_relative_effect: Option<f64>,
    /// Largest absolute difference of the medians allowed, e.g. 0.02 for an error ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_absolute_effect: Option<f64>,
    /// A failing critical metric fails the whole analysis.
    #[serde(default)]
    pub critical: bool,
    /// Without data this metric fails instead of being inconclusive.
    #[serde(default)]
    pub must_have_data: bool,
    /// A threshold check instead of a comparison: the canary fails when the median of
    /// its samples is above this value (no baseline is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value: Option<f64>,
    /// A threshold check instead of a comparison: the canary fails when the median of
    /// its samples is below this value (no baseline is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_value: Option<f64>,
}

impl AnalysisMetric {
    /// Whether the metric is checked against thresholds rather than compared with the
    /// baseline.
    pub fn is_threshold(&self) -> bool {
        self.max_value.is_some() || self.min_value.is_some()
    }
}

/// What a rollout does when its analysis sees no data (no samples, no series, or no
/// answer from Prometheus or the monitor) by the end of a step's pause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnNoData {
    /// Hold the rollout (phase `paused`, with the reason) until an operator resumes
    /// (analyse again), promotes (go on unverified) or aborts it.
    #[default]
    Pause,
    /// Abort the rollout and roll back.
    Fail,
    /// Go on to the next step unverified; the rollout records that it did.
    Promote,
}

impl OnNoData {
    /// Its name as written in settings and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Fail => "fail",
            Self::Promote => "promote",
        }
    }
}

/// A named set of metrics a service is analysed with, as PromQL with placeholders
/// (like Argo Rollouts' AnalysisTemplate or Flagger's MetricTemplate).
///
/// Each metric's `query` may use `{{service}}`, `{{namespace}}`, `{{version}}`,
/// `{{track}}` (`stable`, `canary`, `blue`, `green`), `{{track_label}}` (`track` or
/// `colour`, the pod label that tells the tracks apart), `{{workload}}` (the
/// Deployment's name), `{{backend}}` (the HTTPRoute backend index: 0 stable, 1 canary)
/// and `{{window}}` (the analysis window as a PromQL duration, e.g. `30s`). The monitor
/// fills them per side: once for the canary, once for the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisTemplate {
    /// Its name, e.g. `app`, `istio`.
    pub name: String,
    /// The metrics (at least one, each with a `query`).
    pub metrics: Vec<AnalysisMetric>,
    /// What a rollout does when the analysis sees no data (the deployer's setting
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<OnNoData>,
    /// The sequential test of one of its error-ratio metrics, on request and error
    /// counts read from Prometheus (absent: the windowed test alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<SequentialQueries>,
}

/// The counts a template's sequential test reads: PromQL with the template's
/// placeholders, each giving one side's count in one look's interval (its
/// `{{window}}` is that interval, e.g. `sum(increase(http_requests_total{...}[{{window}}]))`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequentialQueries {
    /// The metric whose failures the test decides (one of the template's, a
    /// comparison where higher is worse), e.g. `error_ratio`.
    pub metric: String,
    /// The requests served in the interval.
    pub requests_query: String,
    /// The requests that failed in the interval.
    pub errors_query: String,
    /// The shortest look interval in seconds (default 1): at least twice Prometheus'
    /// scrape interval, so that `increase()` over one interval sees two scrapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<f64>,
}

/// Asks whether a canary is healthy compared with its baseline
/// (`toronto.devops.v1.monitor.canary.analyze`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryAnalyze {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// Labels that select the canary's series, e.g. `{"track": "canary"}`; they are
    /// also the values of a query's placeholders (`{{track}}`, `{{version}}`, ...).
    pub canary: BTreeMap<String, String>,
    /// Labels that select the baseline's series, e.g. `{"track": "stable"}`.
    pub baseline: BTreeMap<String, String>,
    /// The metrics to compare (at least one).
    pub metrics: Vec<AnalysisMetric>,
    /// How far back to look, in seconds.
    pub window_seconds: f64,
    /// Confidence of the Mann-Whitney U test, e.g. 0.95 (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// The rollout this analysis is for, if any (carried into the verdict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<Uuid>,
    /// A sequential test of an error ratio beside the windowed test: the metric it
    /// names fails as soon as the test rejects (absent: the windowed test alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<SequentialAnalysis>,
}

/// The sequential test of a canary analysis: an always-valid test (mSPRT) that the
/// canary's error ratio exceeds the baseline's by more than the metric's
/// `max_absolute_effect`, on the requests and errors counted on each side since
/// `since`. It may be looked at as often as wanted without raising false failures,
/// so the metric it names fails as soon as it rejects, without waiting for a window
/// to fill; the windowed test still decides the other metrics, and whether this one
/// passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequentialAnalysis {
    /// The metric (one of the request's, compared with the baseline, read from the
    /// bus) whose failure the test decides, e.g. `http_error_ratio`.
    #[serde(default = "default_sequential_metric")]
    pub metric: String,
    /// The series of requests counted per interval, e.g. `http_requests`.
    #[serde(default = "default_sequential_requests")]
    pub requests: String,
    /// The series of failed requests counted per interval, e.g. `http_errors`.
    #[serde(default = "default_sequential_errors")]
    pub errors: String,
    /// Counting starts here, e.g. when the step began to take traffic.
    pub since: DateTime<Utc>,
    /// PromQL counting one side's requests in one look's interval (see
    /// [`SequentialQueries`]): with `errors_query`, the counts are read from
    /// Prometheus instead of the bus series `requests` and `errors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_query: Option<String>,
    /// PromQL counting one side's failed requests in one look's interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_query: Option<String>,
    /// The shortest look interval of the counts read from Prometheus, in seconds
    /// (default 1; see [`SequentialQueries::interval_seconds`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<f64>,
}

fn default_sequential_metric() -> String {
    "http_error_ratio".into()
}

fn default_sequential_requests() -> String {
    "http_requests".into()
}

fn default_sequential_errors() -> String {
    "http_errors".into()
}

impl SequentialAnalysis {
    /// The test of `http_error_ratio`, counted from `http_requests` and `http_errors`
    /// since `since`.
    pub fn error_ratio_since(since: DateTime<Utc>) -> Self {
        Self {
            metric: default_sequential_metric(),
            requests: default_sequential_requests(),
            errors: default_sequential_errors(),
            since,
            requests_query: None,
            errors_query: None,
            interval_seconds: None,
        }
    }
}

impl Message for CanaryAnalyze {
    const NAME: &'static str = "canary.analyze";
    const MAJOR: u32 = 1;
}

/// The outcome of an analysis or of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisOutcome {
    /// The canary is no worse than the baseline.
    Pass,
    /// The canary is worse.
    Fail,
    /// Not enough data to tell.
    Inconclusive,
}

/// Summary of one side's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SampleSummary {
    /// How many samples.
    pub count: usize,
    /// Their median (absent without samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    /// Their mean (absent without samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
}

/// The evidence for one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricEvidence {
    /// The metric.
    pub name: String,
    /// Its outcome.
    pub outcome: AnalysisOutcome,
    /// Whether it was critical.
    pub critical: bool,
    /// The canary's samples.
    pub canary: SampleSummary,
    /// The baseline's samples.
    pub baseline: SampleSummary,
    /// The Mann-Whitney U statistic, when computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<f64>,
    /// Its p-value, when computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// The effect size measured (relative, or absolute when the baseline median is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<f64>,
    /// Why, in a sentence (e.g. the threshold that was crossed).
    pub reason: String,
}

/// The verdict of a canary analysis (the answer of `canary.analyze`, and the data of
/// `analysis.result` events in continuous mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CanaryVerdict {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The rollout it is for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<Uuid>,
    /// The overall outcome.
    pub outcome: AnalysisOutcome,
    /// Why, in a sentence.
    pub reason: String,
    /// Every metric's evidence.
    pub metrics: Vec<MetricEvidence>,
    /// When it was computed.
    pub analyzed_at: DateTime<Utc>,
}

impl Message for CanaryVerdict {
    const NAME: &'static str = "canary.verdict";
    const MAJOR: u32 = 1;
}

/// Asks the monitor to analyse a canary continuously
/// (`toronto.devops.v1.monitor.canary.watch`): every `interval_ms` it publishes the
/// verdict as a `canary.verdict` event on `toronto.devops.v1.events.analysis.result`,
/// until `duration_seconds` have passed, `canary.unwatch` is asked, or a
/// `rollout.succeeded`, `rollout.aborted` or `rollout.failed` event names the rollout.
/// `analyze.rollout_id` is required; watching the same rollout again replaces the watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryWatch {
    /// The analysis to repeat (with its `rollout_id`).
    pub analyze: CanaryAnalyze,
    /// Milliseconds between two verdicts (at least 100).
    pub interval_ms: u64,
    /// How long to watch at most, in seconds (at least 1).
    pub duration_seconds: u64,
}

impl Message for CanaryWatch {
    const NAME: &'static str = "canary.watch";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;
}

/// Stops a continuous analysis (`toronto.devops.v1.monitor.canary.unwatch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryUnwatch {
    /// The rollout whose watch stops.
    pub rollout_id: Uuid,
}

impl Message for CanaryUnwatch {
    const NAME: &'static str = "canary.unwatch";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;
}

/// Where a continuous analysis stands (the answer of `canary.watch` and
/// `canary.unwatch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CanaryWatchStatus {
    /// The rollout watched.
    pub rollout_id: Uuid,
    /// Whether it is being watched now (false after `canary.unwatch`).
    pub watching: bool,
    /// Milliseconds between two verdicts.
    pub interval_ms: u64,
    /// When the watch ends at the latest (absent when it is not watching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Verdicts published so far by this watch.
    pub verdicts: u64,
}

impl Message for CanaryWatchStatus {
    const NAME: &'static str = "canary.watch.status";
    const MAJOR: u32 = 1;
}
