//! OpenSLO documents the tests and benchmarks put in the monitor.

/// An availability SLO named `name` of `service` on bus metrics: the ratio of
/// `http_errors` to `http_requests`, both selected by `selector` (the label matchers
/// inside the braces, e.g. `service="cart",environment="production"`), `target` over a
/// rolling 30 days.
pub fn bus_availability(name: &str, service: &str, selector: &str, target: f64) -> String {
    format!(
        r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: {name}
spec:
  service: {service}
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: {target}
  indicator:
    spec:
      ratioMetric:
        bad:
          metricSource: {{ type: Bus, spec: {{ query: 'http_errors{{{selector}}}' }} }}
        total:
          metricSource: {{ type: Bus, spec: {{ query: 'http_requests{{{selector}}}' }} }}
"#
    )
}
