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

mod document;
mod rules;
mod selector;

pub use document::{
    Indicator, IndicatorSpec, LatencyMetric, Metadata, MetricSource, Objective, QuerySpec,
    RatioMetric, SloDocument, SloSpec, Source, TimeWindow,
};
pub use rules::{TIERS, WINDOWS, burn_rate, bus_availability, prometheus_rules};
use selector::promql;
pub use selector::{Selector, parse_selector};

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

fn bus_selector(field: &str, source: &MetricSource) -> Result<Selector, SloError> {
    parse_selector(&source.metric_source.spec.query)
        .map_err(|reason| invalid(&format!("{field}.metricSource.spec.query"), reason))
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
    check_promql(q).map_err(|why| invalid(&format!("{field}.metricSource.spec.query"), why))?;
    Ok(q.to_owned())
}

/// Parses `query` (its `{{.window}}` as `5m`) with `promql-parser`, Prometheus' grammar.
fn check_promql(query: &str) -> Result<(), String> {
    promql_parser::parser::parse(&query.replace("{{.window}}", "5m"))
        .map(drop)
        .map_err(|e| format!("is not valid PromQL: {e}"))
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
    // `28d`, `4w`, `30d`, `720h`: any spelling humantime reads of 28 or 30 days.
    let window_days = match humantime::parse_duration(&window.duration).map(|d| d.as_secs()) {
        Ok(s) if s == 28 * 86_400 => 28,
        Ok(s) if s == 30 * 86_400 => 30,
        _ => {
            return Err(invalid(
                "spec.timeWindow[0].duration",
                format!("`{}` is not supported; use 28d or 30d", window.duration),
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
    check_promql(&error_ratio_query)
        .map_err(|why| invalid("spec.indicator.spec", format!("the error ratio {why}")))?;
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
    fn a_window_is_read_by_humantime_and_the_rules_are_promql() {
        let slo = parse(&GOOD.replace("duration: 30d", "duration: 4w")).unwrap();
        assert_eq!(slo.window_days, 28);
        let rules: serde_json::Value = serde_yaml_ng::from_str(&prometheus_rules(&slo)).unwrap();
        let mut exprs = 0;
        for group in rules["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let expr = rule["expr"].as_str().unwrap();
                promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
                exprs += 1;
            }
        }
        assert!(exprs > 8, "{rules}");
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
            (
                GOOD.replace(
                    "sum(rate(http_requests_total[{{.window}}]))",
                    "sum(rate(http_requests_total[{{.window}}])",
                ),
                "spec.indicator.spec.ratioMetric.total.metricSource.spec.query",
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
