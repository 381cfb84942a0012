//! The Prometheus rules written for an SLO, checked and exercised by the real promtool
//! (Debian's `prometheus` package, installed by `scripts/test`).

use std::path::PathBuf;
use std::process::Command;

use toronto_monitor::slo::{parse, prometheus_rules};

fn promtool() -> PathBuf {
    let path = std::env::var_os("TORONTO_PROMTOOL_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("promtool"))
                    .find(|p| p.is_file())
            })
        });
    path.unwrap_or_else(|| {
        panic!("promtool not found: run scripts/install-tools --test (apt-get install prometheus), or set TORONTO_PROMTOOL_BIN")
    })
}

fn slo_file(indicator: &str) -> String {
    format!(
        r#"apiVersion: openslo/v1
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
{indicator}"#
    )
}

const RATIO: &str = r#"      ratioMetric:
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

const LATENCY: &str = r#"      latencyMetric:
        histogram: http_request_duration_seconds
        selector: 'service="shop-api"'
        thresholdSeconds: 0.3
"#;

fn run(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn generated_rules_pass_promtool_check() {
    let dir = tempfile::tempdir().unwrap();
    for (name, indicator) in [("ratio", RATIO), ("latency", LATENCY)] {
        let slo = parse(&slo_file(indicator)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let file = dir.path().join(format!("{name}.rules.yml"));
        std::fs::write(&file, prometheus_rules(&slo)).unwrap();
        let (ok, out) = run(&["check", "rules", file.to_str().unwrap()], dir.path());
        assert!(ok, "{name}: promtool check rules failed:\n{out}");
        assert!(out.contains("SUCCESS: 11 rules found"), "{name}: {out}");
    }
}

#[test]
fn the_page_alert_fires_on_a_fast_burn_and_not_on_a_slow_one() {
    let dir = tempfile::tempdir().unwrap();
    let slo = parse(&slo_file(RATIO)).unwrap();
    std::fs::write(dir.path().join("rules.yml"), prometheus_rules(&slo)).unwrap();
    // 10% of requests fail (100x the 0.1% budget) in the first series set, 0.05% in
    // the second: the first pages within the hour, the second never does.
    let test = r#"rule_files:
  - rules.yml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'http_requests_total{code="500"}'
        values: '0+10x120'
      - series: 'http_requests_total{code="200"}'
        values: '0+90x120'
    alert_rule_test:
      - eval_time: 70m
        alertname: SLOErrorBudgetBurnPage
        exp_alerts:
          - exp_labels:
              slo: shop-api-availability
              service: shop-api
              severity: page
              tier: page
            exp_annotations:
              summary: shop-api is burning its error budget (shop-api-availability)
              description: The shop-api-availability SLO (99.9% over 30 days) is burning its error budget fast enough to page.
  - interval: 1m
    input_series:
      - series: 'http_requests_total{code="500"}'
        values: '0+1x120'
      - series: 'http_requests_total{code="200"}'
        values: '0+1999x120'
    alert_rule_test:
      - eval_time: 70m
        alertname: SLOErrorBudgetBurnPage
        exp_alerts: []
"#;
    std::fs::write(dir.path().join("test.yml"), test).unwrap();
    let (ok, out) = run(&["test", "rules", "test.yml"], dir.path());
    assert!(ok, "promtool test rules failed:\n{out}");
}
