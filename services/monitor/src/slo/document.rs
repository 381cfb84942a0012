//! The OpenSLO v1 `SLO` document as read from YAML (the subset we take), before
//! validation.

use serde::{Deserialize, Serialize};

/// An OpenSLO v1 `SLO` document (the subset we take).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SloDocument {
    /// `openslo/v1`.
    pub api_version: String,
    /// `SLO`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// The objective.
    pub spec: SloSpec,
}

/// Document metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The SLO's name (a DNS label).
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Labels; `environment` names the SLO's environment.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SloSpec {
    /// The service it is about.
    pub service: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Only `Occurrences` (ratio of events) is supported.
    pub budgeting_method: String,
    /// One rolling window of 28d or 30d.
    pub time_window: Vec<TimeWindow>,
    /// One objective.
    pub objectives: Vec<Objective>,
    /// What is measured.
    pub indicator: Indicator,
}

/// The SLO's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeWindow {
    /// `28d` or `30d`.
    pub duration: String,
    /// Must be true.
    pub is_rolling: bool,
}

/// The target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Objective {
    /// Fraction of good events wanted, e.g. 0.999.
    pub target: f64,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// The SLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Indicator {
    /// Its definition.
    pub spec: IndicatorSpec,
}

/// A ratio SLI or a latency SLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IndicatorSpec {
    /// Good or bad events over all events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_metric: Option<RatioMetric>,
    /// Requests slower than a threshold, from a Prometheus histogram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_metric: Option<LatencyMetric>,
}

/// Good (or bad) over total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RatioMetric {
    /// Counters (rates are taken over the window); must be true.
    #[serde(default = "yes")]
    pub counter: bool,
    /// Good events (give `good` or `bad`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good: Option<MetricSource>,
    /// Bad events (give `good` or `bad`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad: Option<MetricSource>,
    /// All events.
    pub total: MetricSource,
}

fn yes() -> bool {
    true
}

/// Slow requests over all requests, from a Prometheus histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LatencyMetric {
    /// The histogram's name, e.g. `http_request_duration_seconds`.
    pub histogram: String,
    /// Label matchers, e.g. `service="shop-api"` (optional).
    #[serde(default)]
    pub selector: String,
    /// The threshold in seconds; it must be one of the histogram's bucket bounds.
    pub threshold_seconds: f64,
}

/// Where a metric comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricSource {
    /// The source.
    pub metric_source: Source,
}

/// A Prometheus query, or a series selector of bus metrics (`type: Bus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// `Prometheus` or `Bus`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The query.
    pub spec: QuerySpec,
}

/// The query text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// PromQL with `{{.window}}` where the rate window goes.
    pub query: String,
}
