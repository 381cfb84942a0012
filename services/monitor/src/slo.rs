//! Service level objectives: a subset of OpenSLO v1 in YAML, and the Prometheus
//! recording and multi-window multi-burn-rate alerting rules they imply (as Sloth
//! writes them).
//!
//! ```yaml
//! apiVersion: openslo/v1
//! kind: SLO
//! metadata:
//!   name: shop-api-availability
//! spec:
//!   service: shop-api
//!   budgetingMethod: Occurrences
//!   timeWindow:
//!     - duration: 30d
//!       isRolling: true
//!   objectives:
//!     - target: 0.999
//!   indicator:
//!     spec:
//!       ratioMetric:
//!         bad:   { metricSource: { type: Prometheus, spec: { query: 'sum(rate(http_requests_total{code=~"5.."}[{{.window}}]))' } } }
//!         total: { metricSource: { type: Prometheus, spec: { query: 'sum(rate(http_requests_total[{{.window}}]))' } } }
//! ```
//!
//! A ratio SLI gives `good` or `bad` over `total`; a latency SLI (our extension,
//! `latencyMetric`) counts requests slower than a threshold from a histogram. Queries
//! use `{{.window}}` where the rate window goes.
//!
//! A ratio SLI may also read the metrics pushed over the bus (our extension,
//! `metricSource.type: Bus`): each `query` is then a series selector,
//! `http_errors{service="shop-api",environment="production"}` (a name and exact label
//! matchers), whose per-tick values are summed over each window; the Prometheus rules of
//! such an SLO use `sum_over_time` of the same series. `metadata.labels.environment`
//! names the SLO's environment (the monitor's default otherwise).

use serde::{Deserialize, Serialize};

/// The windows the rules record error ratios over.
pub const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// Multi-window multi-burn-rate alert tiers: (severity, burn rate, long window, short window).
pub const TIERS: [(&str, f64, &str, &str); 4] = [
    ("page", 14.4, "1h", "5m"),
    ("page", 6.0, "6h", "30m"),
    ("ticket", 3.0, "1d", "2h"),
    ("ticket", 1.0, "3d", "6h"),
];

/// Why an SLO document is refused: the field and the reason.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid SLO at `{field}`: {reason}")]
pub struct SloError {
    /// The field, as a path (`spec.objectives[0].target`).
    pub field: String,
    /// Why.
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> SloError {
    SloError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

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

/// A validated SLO, ready for rules and evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// Its name.
    pub name: String,
    /// The service.
    pub service: String,
    /// Its environment, when the file names one (`metadata.labels.environment`).
    pub environment: Option<String>,
    /// Target fraction of good events.
    pub objective: f64,
    /// Window in days.
    pub window_days: u32,
    /// PromQL of the error ratio, with `{{.window}}` for the rate window.
    pub error_ratio_query: String,
    /// The SLI from bus metrics, when its sources are of type `Bus`.
    pub bus: Option<BusSli>,
}

/// A series selector over the store: a name and exact label matchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The series name.
    pub name: String,
    /// Labels the series must have.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A ratio SLI over bus metrics: per-tick counts summed over each window.
#[derive(Debug, Clone, PartialEq)]
pub struct BusSli {
    /// Bad events (`true`) or good events (`false`) in `events`.
    pub counts_bad: bool,
    /// Good or bad events.
    pub events: Selector,
    /// All events.
    pub total: Selector,
}

/// Parses `name{a="x",b="y"}` (or a bare name).
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    let text = text.trim();
    let (name, rest) = match text.find('{') {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let metric_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !metric_name(name) {
        return Err(format!("`{name}` is not a metric name"));
    }
    let mut labels = std::collections::BTreeMap::new();
    if let Some(rest) = rest {
        let inner = rest
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or_else(|| format!("`{text}`: unbalanced braces"))?;
        let mut chars = inner.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_owned();
            if !metric_name(&key) || key.contains(':') {
                return Err(format!("`{text}`: `{key}` is not a label name"));
            }
            if chars.next() != Some('"') {
                return Err(format!(
                    "`{text}`: only exact matchers (label=\"value\") are supported"
                ));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => return Err(format!("`{text}`: unterminated value")),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("`{text}`: unterminated value")),
                }
            }
            labels.insert(key, value);
        }
    }
    Ok(Selector {
        name: name.to_owned(),
        labels,
    })
}

fn bus_selector(field: &str, source: &MetricSource) -> Result<Selector, SloError> {
    parse_selector(&source.metric_source.spec.query)
        .map_err(|reason| invalid(&format!("{field}.metricSource.spec.query"), reason))
}

fn promql(sel: &Selector) -> String {
    let m = sel
        .labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",");
    format!("sum(sum_over_time({}{{{m}}}[{{{{.window}}}}]))", sel.name)
}

impl Slo {
    /// The error budget as a fraction (1 - objective).
    pub fn error_budget(&self) -> f64 {
        1.0 - self.objective
    }
}

fn dns_label(field: &str, value: &str) -> Result<(), SloError> {
    toronto_protocol::domain::check_dns_label(value)
        .map_err(|problem| invalid(field, format!("`{value}` {problem}")))
}

fn query(field: &str, source: &MetricSource) -> Result<String, SloError> {
    if source.metric_source.kind != "Prometheus" {
        return Err(invalid(
            &format!("{field}.metricSource.type"),
            format!(
                "`{}` is not supported; use Prometheus (or Bus for both sources of a ratio)",
                source.metric_source.kind
            ),
        ));
    }
    let q = source.metric_source.spec.query.trim();
    if q.is_empty() {
        return Err(invalid(
            &format!("{field}.metricSource.spec.query"),
            "is empty",
        ));
    }
    if !q.contains("{{.window}}") {
        return Err(invalid(
            &format!("{field}.metricSource.spec.query"),
            "must use {{.window}} as the rate window",
        ));
    }
    Ok(q.to_owned())
}

/// Parses and validates an SLO document; a malformed one is refused with the field
/// and the reason.
pub fn parse(yaml: &str) -> Result<Slo, SloError> {
    let de = serde_yaml_ng::Deserializer::from_str(yaml);
    let doc: SloDocument = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        invalid(
            if field == "." { "(document)" } else { &field },
            e.into_inner().to_string(),
        )
    })?;
    if doc.api_version != "openslo/v1" {
        return Err(invalid(
            "apiVersion",
            format!("`{}` is not openslo/v1", doc.api_version),
        ));
    }
    if doc.kind != "SLO" {
        return Err(invalid("kind", format!("`{}` is not SLO", doc.kind)));
    }
    dns_label("metadata.name", &doc.metadata.name)?;
    let spec = &doc.spec;
    dns_label("spec.service", &spec.service)?;
    if spec.budgeting_method != "Occurrences" {
        return Err(invalid(
            "spec.budgetingMethod",
            format!(
                "`{}` is not supported; use Occurrences",
                spec.budgeting_method
            ),
        ));
    }
    let [window] = spec.time_window.as_slice() else {
        return Err(invalid("spec.timeWindow", "give exactly one window"));
    };
    let window_days = match window.duration.as_str() {
        "28d" => 28,
        "30d" => 30,
        other => {
            return Err(invalid(
                "spec.timeWindow[0].duration",
                format!("`{other}` is not supported; use 28d or 30d"),
            ));
        }
    };
    if !window.is_rolling {
        return Err(invalid(
            "spec.timeWindow[0].isRolling",
            "only rolling windows are supported",
        ));
    }
    let [objective] = spec.objectives.as_slice() else {
        return Err(invalid("spec.objectives", "give exactly one objective"));
    };
    if !(objective.target > 0.0 && objective.target < 1.0) {
        return Err(invalid(
            "spec.objectives[0].target",
            format!("{} must be between 0 and 1 (exclusive)", objective.target),
        ));
    }
    let indicator = &spec.indicator.spec;
    let mut bus = None;
    let error_ratio_query = match (&indicator.ratio_metric, &indicator.latency_metric) {
        (Some(ratio), None) if ratio.total.metric_source.kind == "Bus" => {
            let field = "spec.indicator.spec.ratioMetric";
            let total = bus_selector(&format!("{field}.total"), &ratio.total)?;
            let (counts_bad, events) = match (&ratio.good, &ratio.bad) {
                (Some(good), None) => (false, ("good", good)),
                (None, Some(bad)) => (true, ("bad", bad)),
                _ => return Err(invalid(field, "give exactly one of good and bad")),
            };
            if events.1.metric_source.kind != "Bus" {
                return Err(invalid(
                    &format!("{field}.{}.metricSource.type", events.0),
                    "must be Bus like total",
                ));
            }
            let events_sel = bus_selector(&format!("{field}.{}", events.0), events.1)?;
            let query = if counts_bad {
                format!("({}) / ({})", promql(&events_sel), promql(&total))
            } else {
                format!("1 - (({}) / ({}))", promql(&events_sel), promql(&total))
            };
            bus = Some(BusSli {
                counts_bad,
                events: events_sel,
                total,
            });
            query
        }
        (Some(ratio), None) => {
            if !ratio.counter {
                return Err(invalid(
                    "spec.indicator.spec.ratioMetric.counter",
                    "only counters are supported",
                ));
            }
            let total = query("spec.indicator.spec.ratioMetric.total", &ratio.total)?;
            match (&ratio.good, &ratio.bad) {
                (Some(good), None) => {
                    let good = query("spec.indicator.spec.ratioMetric.good", good)?;
                    format!("1 - (({good}) / ({total}))")
                }
                (None, Some(bad)) => {
                    let bad = query("spec.indicator.spec.ratioMetric.bad", bad)?;
                    format!("({bad}) / ({total})")
                }
                _ => {
                    return Err(invalid(
                        "spec.indicator.spec.ratioMetric",
                        "give exactly one of good and bad",
                    ));
                }
            }
        }
        (None, Some(latency)) => {
            if latency.threshold_seconds.is_nan() || latency.threshold_seconds <= 0.0 {
                return Err(invalid(
                    "spec.indicator.spec.latencyMetric.thresholdSeconds",
                    "must be positive",
                ));
            }
            if latency.histogram.is_empty()
                || !latency
                    .histogram
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                return Err(invalid(
                    "spec.indicator.spec.latencyMetric.histogram",
                    format!("`{}` is not a metric name", latency.histogram),
                ));
            }
            let sel = latency
                .selector
                .trim()
                .trim_matches(|c| c == '{' || c == '}');
            let join = |extra: &str| {
                if sel.is_empty() {
                    format!("{{{extra}}}")
                } else if extra.is_empty() {
                    format!("{{{sel}}}")
                } else {
                    format!("{{{sel},{extra}}}")
                }
            };
            let h = &latency.histogram;
            format!(
                "1 - ((sum(rate({h}_bucket{}[{{{{.window}}}}]))) / (sum(rate({h}_count{}[{{{{.window}}}}]))))",
                join(&format!("le=\"{}\"", latency.threshold_seconds)),
                join(""),
            )
        }
        _ => {
            return Err(invalid(
                "spec.indicator.spec",
                "give exactly one of ratioMetric and latencyMetric",
            ));
        }
    };
    let environment = doc.metadata.labels.get("environment").cloned();
    if let Some(env) = &environment {
        dns_label("metadata.labels.environment", env)?;
    }
    Ok(Slo {
        name: doc.metadata.name.clone(),
        service: spec.service.clone(),
        environment,
        objective: objective.target,
        window_days,
        error_ratio_query,
        bus,
    })
}

/// The Prometheus rules (recording and alerting) of an SLO, as a rules file.
pub fn prometheus_rules(slo: &Slo) -> String {
    use serde_json::json;
    let labels = json!({"slo": slo.name, "service": slo.service});
    let mut recording = Vec::new();
    for w in WINDOWS {
        recording.push(json!({
            "record": format!("slo:sli_error:ratio_rate{w}"),
            "expr": slo.error_ratio_query.replace("{{.window}}", w),
            "labels": labels,
        }));
    }
    recording.push(json!({"record": "slo:objective:ratio", "expr": format!("vector({})", slo.objective), "labels": labels}));
    recording.push(json!({"record": "slo:error_budget:ratio", "expr": format!("vector(1 - {})", slo.objective), "labels": labels}));
    let budget = slo.error_budget();
    let selector = format!("{{slo=\"{}\", service=\"{}\"}}", slo.name, slo.service);
    let mut alerts = Vec::new();
    for severity in ["page", "ticket"] {
        let clauses: Vec<String> = TIERS
            .iter()
            .filter(|t| t.0 == severity)
            .map(|(_, rate, long, short)| {
                let threshold = rate * budget;
                format!(
                    "(slo:sli_error:ratio_rate{long}{selector} > {threshold} and slo:sli_error:ratio_rate{short}{selector} > {threshold})"
                )
            })
            .collect();
        alerts.push(json!({
            "alert": format!("SLOErrorBudgetBurn{}", if severity == "page" { "Page" } else { "Ticket" }),
            "expr": clauses.join("\nor\n"),
            "labels": {"slo": slo.name, "service": slo.service, "severity": severity, "tier": severity},
            "annotations": {
                "summary": format!("{} is burning its error budget ({})", slo.service, slo.name),
                "description": format!(
                    "The {} SLO ({}% over {} days) is burning its error budget fast enough to {}.",
                    slo.name, slo.objective * 100.0, slo.window_days,
                    if severity == "page" { "page" } else { "open a ticket" }
                ),
            },
        }));
    }
    let doc = json!({
        "groups": [
            {"name": format!("slo-{}-sli-recordings", slo.name), "rules": recording},
            {"name": format!("slo-{}-alerts", slo.name), "rules": alerts},
        ]
    });
    format!(
        "# Generated by `toronto slo rules` for the SLO {} of {}.\n{}",
        slo.name,
        slo.service,
        serde_yaml_ng::to_string(&doc).expect("rules serialize")
    )
}

/// The burn rate of an error ratio against an objective: how many times faster than
/// sustainable the budget is being spent (1.0 spends it exactly over the window).
pub fn burn_rate(error_ratio: f64, objective: f64) -> f64 {
    let budget = 1.0 - objective;
    if budget <= 0.0 {
        return f64::INFINITY;
    }
    error_ratio / budget
}

/// An availability SLO over the simulated cluster's bus metrics (`http_errors` over
/// `http_requests` of one service in one environment), as an OpenSLO document: what
/// `toronto up --demo` loads, and what tests use.
pub fn bus_availability(name: &str, service: &str, environment: &str, objective: f64) -> String {
    format!(
        r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: {name}
  labels:
    environment: {environment}
spec:
  service: {service}
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: {objective}
  indicator:
    spec:
      ratioMetric:
        bad:
          metricSource: {{ type: Bus, spec: {{ query: 'http_errors{{service="{service}",environment="{environment}"}}' }} }}
        total:
          metricSource: {{ type: Bus, spec: {{ query: 'http_requests{{service="{service}",environment="{environment}"}}' }} }}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: openslo/v1
kind: SLO
metadata:
  name: shop-api-availability
spec:
  service: shop-api
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: 0.999
  indicator:
    spec:
      ratioMetric:
        counter: true
        bad:
          metricSource:
            type: Prometheus
            spec:
              query: sum(rate(http_requests_total{code=~"5.."}[{{.window}}]))
        total:
          metricSource:
            type: Prometheus
            spec:
              query: sum(rate(http_requests_total[{{.window}}]))
"#;

    #[test]
    fn parses_a_ratio_slo() {
        let slo = parse(GOOD).unwrap();
        assert_eq!(slo.name, "shop-api-availability");
        assert_eq!(slo.window_days, 30);
        assert!((slo.error_budget() - 0.001).abs() < 1e-12);
        assert!(
            slo.error_ratio_query
                .starts_with("(sum(rate(http_requests_total{code=~\"5..\"}")
        );
    }

    #[test]
    fn malformed_documents_name_the_field() {
        let cases = [
            (
                GOOD.replace("target: 0.999", "target: 1.5"),
                "spec.objectives[0].target",
            ),
            (
                GOOD.replace("duration: 30d", "duration: 7d"),
                "spec.timeWindow[0].duration",
            ),
            (
                GOOD.replace("target: 0.999", "target: high"),
                "spec.objectives[0].target",
            ),
            (
                GOOD.replace("budgetingMethod", "budgetMethod"),
                "spec.budgetMethod",
            ),
            (
                GOOD.replace("[{{.window}}]))\n        total", "[5m]))\n        total"),
                "spec.indicator.spec.ratioMetric.bad.metricSource.spec.query",
            ),
            (
                GOOD.replace("name: shop-api-availability", "name: Shop API"),
                "metadata.name",
            ),
        ];
        for (doc, field) in cases {
            let err = parse(&doc).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn parses_a_bus_slo_and_its_selectors() {
        let doc = r#"
apiVersion: openslo/v1
kind: SLO
metadata:
  name: cart-availability
  labels:
    environment: staging
spec:
  service: cart
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 28d
      isRolling: true
  objectives:
    - target: 0.99
  indicator:
    spec:
      ratioMetric:
        bad:
          metricSource: { type: Bus, spec: { query: 'http_errors{service="cart", environment="staging"}' } }
        total:
          metricSource: { type: Bus, spec: { query: 'http_requests{service="cart",environment="staging"}' } }
"#;
        let slo = parse(doc).unwrap();
        assert_eq!(slo.environment.as_deref(), Some("staging"));
        let bus = slo.bus.as_ref().unwrap();
        assert!(bus.counts_bad);
        assert_eq!(bus.events.name, "http_errors");
        assert_eq!(bus.total.labels["environment"], "staging");
        assert!(slo.error_ratio_query.starts_with(
            "(sum(sum_over_time(http_errors{environment=\"staging\",service=\"cart\"}[{{.window}}])))"
        ), "{}", slo.error_ratio_query);
        let mixed = doc.replacen("type: Bus", "type: Prometheus", 1);
        assert_eq!(
            parse(&mixed).unwrap_err().field,
            "spec.indicator.spec.ratioMetric.bad.metricSource.type"
        );
        let bad = doc.replace(
            r#"http_errors{service="cart", environment="staging"}"#,
            r#"http_errors{service=~"c.*"}"#,
        );
        assert_eq!(
            parse(&bad).unwrap_err().field,
            "spec.indicator.spec.ratioMetric.bad.metricSource.spec.query"
        );
        assert_eq!(parse_selector("up").unwrap().labels.len(), 0);
        assert_eq!(
            parse_selector(r#"m{a="x\"y,z"}"#).unwrap().labels["a"],
            "x\"y,z"
        );
    }

    #[test]
    fn burn_rates() {
        assert!((burn_rate(0.0144, 0.999) - 14.4).abs() < 1e-9);
        assert!((burn_rate(0.001, 0.999) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn rules_hold_every_window_and_tier() {
        let rules = prometheus_rules(&parse(GOOD).unwrap());
        for w in WINDOWS {
            assert!(
                rules.contains(&format!("slo:sli_error:ratio_rate{w}")),
                "{rules}"
            );
        }
        assert!(
            rules.contains("> 0.0144"),
            "14.4x of a 0.1% budget: {rules}"
        );
        assert!(
            rules.contains("SLOErrorBudgetBurnPage") && rules.contains("SLOErrorBudgetBurnTicket")
        );
    }
}
