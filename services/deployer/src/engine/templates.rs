//! Analysis templates: which metrics a service's canary is judged by on Kubernetes,
//! as PromQL with placeholders the monitor fills per side (see
//! [`toronto_protocol::analysis::AnalysisTemplate`]).
//!
//! Built in:
//!
//! - `app`: the application's own `http_requests_total` (with a `code` label) and
//!   `http_request_duration_seconds` histogram, scraped from its pods with the pod
//!   labels kept (`namespace`, `app_kubernetes_io_name`, `app_kubernetes_io_version`,
//!   `track` or `colour`).
//! - `envoy-gateway`: Envoy Gateway's proxy metrics per HTTPRoute backend
//!   (`envoy_cluster_upstream_rq_xx`, `envoy_cluster_upstream_rq_time_bucket`, cluster
//!   `httproute/<namespace>/<service>/rule/0/backend/<0 stable, 1 canary>`).
//! - `istio`: `istio_requests_total` and `istio_request_duration_milliseconds_bucket`
//!   reported by the destination workload.
//! - `linkerd`: `response_total` (`classification="failure"`) and
//!   `response_latency_ms_bucket`, inbound, by deployment.
//!
//! Each has a critical error ratio (the canary fails when it exceeds the baseline's by
//! more than `TORONTO_DEPLOYER_MAX_ERROR_RATIO_INCREASE`) and a p99 latency (fails
//! beyond `TORONTO_DEPLOYER_MAX_LATENCY_INCREASE`, not critical), and names the
//! request and error counts its error ratio is made of, so that a comparison also runs
//! the sequential test (mSPRT) on them.

use std::collections::BTreeMap;
use std::path::Path;

use toronto_protocol::analysis::{AnalysisMetric, AnalysisTemplate, Direction, SequentialQueries};

use crate::settings::Settings;

/// The names of the built-in templates.
pub const BUILT_IN: &[&str] = &["app", "envoy-gateway", "istio", "linkerd"];

fn error_ratio(query: String, settings: &Settings) -> AnalysisMetric {
    AnalysisMetric {
        name: "error_ratio".into(),
        query: Some(query),
        direction: Direction::Increase,
        max_relative_effect: None,
        max_absolute_effect: Some(settings.max_error_ratio_increase),
        critical: true,
        must_have_data: false,
        max_value: None,
        min_value: None,
    }
}

fn latency(query: String, settings: &Settings) -> AnalysisMetric {
    AnalysisMetric {
        name: "latency_p99".into(),
        query: Some(query),
        direction: Direction::Increase,
        max_relative_effect: Some(settings.max_latency_increase),
        max_absolute_effect: None,
        critical: false,
        must_have_data: false,
        max_value: None,
        min_value: None,
    }
}

/// `errors / all` over the window; no error series at all counts as no errors, no
/// requests at all as no data.
fn ratio(errors: &str, all: &str) -> String {
    format!("(sum(rate({errors}[{{{{window}}}}])) or vector(0)) / sum(rate({all}[{{{{window}}}}]))")
}

/// The sequential test of `error_ratio` on `errors` and `all` counted per look
/// interval (the `{{window}}` of these queries).
fn counts(errors: &str, all: &str) -> SequentialQueries {
    SequentialQueries {
        metric: "error_ratio".into(),
        requests_query: format!("sum(increase({all}[{{{{window}}}}]))"),
        errors_query: format!("sum(increase({errors}[{{{{window}}}}]))"),
        interval_seconds: None,
    }
}

fn p99(buckets: &str) -> String {
    format!("histogram_quantile(0.99, sum by (le) (rate({buckets}[{{{{window}}}}])))")
}

/// A built-in template by name, with the thresholds of `settings`: its error ratio
/// (also judged by the sequential test on the same counts) and its p99 latency.
pub fn built_in(name: &str, settings: &Settings) -> Option<AnalysisTemplate> {
    // (failed requests, all requests, latency histogram buckets)
    let (errors, all, buckets) = match name {
        "app" => {
            let sel = r#"namespace="{{namespace}}",app_kubernetes_io_name="{{service}}",app_kubernetes_io_version="{{version}}",{{track_label}}="{{track}}""#;
            (
                format!(r#"http_requests_total{{{sel},code=~"5.."}}"#),
                format!("http_requests_total{{{sel}}}"),
                format!("http_request_duration_seconds_bucket{{{sel}}}"),
            )
        }
        "envoy-gateway" => {
            let cluster = r#"envoy_cluster_name="httproute/{{namespace}}/{{service}}/rule/0/backend/{{backend}}""#;
            (
                format!(
                    r#"envoy_cluster_upstream_rq_xx{{{cluster},envoy_response_code_class="5"}}"#
                ),
                format!("envoy_cluster_upstream_rq_xx{{{cluster}}}"),
                format!("envoy_cluster_upstream_rq_time_bucket{{{cluster}}}"),
            )
        }
        "istio" => {
            let sel = r#"reporter="destination",destination_workload_namespace="{{namespace}}",destination_workload="{{workload}}""#;
            (
                format!(r#"istio_requests_total{{{sel},response_code=~"5.."}}"#),
                format!("istio_requests_total{{{sel}}}"),
                format!("istio_request_duration_milliseconds_bucket{{{sel}}}"),
            )
        }
        "linkerd" => {
            let sel = r#"direction="inbound",namespace="{{namespace}}",deployment="{{workload}}""#;
            (
                format!(r#"response_total{{{sel},classification="failure"}}"#),
                format!("response_total{{{sel}}}"),
                format!("response_latency_ms_bucket{{{sel}}}"),
            )
        }
        _ => return None,
    };
    Some(AnalysisTemplate {
        name: name.to_owned(),
        metrics: vec![
            error_ratio(ratio(&errors, &all), settings),
            latency(p99(&buckets), settings),
        ],
        on_no_data: None,
        sequential: Some(counts(&errors, &all)),
    })
}

/// The template a service is analysed with: its own (`TORONTO_DEPLOYER_ANALYSIS_TEMPLATES`),
/// else the default (`TORONTO_DEPLOYER_ANALYSIS_TEMPLATE`); a template loaded from
/// `TORONTO_DEPLOYER_ANALYSIS_TEMPLATE_DIR` wins over a built-in of the same name.
pub fn template_for(service: &str, settings: &Settings) -> Result<AnalysisTemplate, String> {
    let name = settings
        .service_templates
        .get(service)
        .unwrap_or(&settings.analysis_template);
    if let Some(t) = settings.custom_templates.get(name) {
        return Ok(t.clone());
    }
    built_in(name, settings).ok_or_else(|| {
        let mut known: Vec<&str> = BUILT_IN.to_vec();
        known.extend(settings.custom_templates.keys().map(String::as_str));
        format!(
            "analysis template `{name}` of {service} does not exist (known: {})",
            known.join(", ")
        )
    })
}

/// The metrics a first deploy (nothing to compare with) is judged by, from the
/// service's template: its threshold checks as they are, and its comparisons turned
/// into thresholds where the limit is known: `error_ratio` at most
/// `TORONTO_DEPLOYER_FIRST_DEPLOY_MAX_ERROR_RATIO`, and a built-in template's
/// `latency_p99` at most `TORONTO_DEPLOYER_FIRST_DEPLOY_MAX_LATENCY_SECONDS` (in the
/// template's unit: seconds for `app`, milliseconds for the others). Any other
/// comparison is left out: it has no baseline to be compared with.
pub fn first_deploy_metrics(
    template: &AnalysisTemplate,
    settings: &Settings,
) -> Vec<AnalysisMetric> {
    let built_in = !settings.custom_templates.contains_key(&template.name)
        && BUILT_IN.contains(&template.name.as_str());
    let latency_unit = match template.name.as_str() {
        _ if !built_in => None,
        "app" => Some(1.0),
        _ => Some(1000.0),
    };
    template
        .metrics
        .iter()
        .filter_map(|m| {
            if m.is_threshold() {
                return Some(m.clone());
            }
            let max = match m.name.as_str() {
                "error_ratio" => settings.first_deploy_max_error_ratio,
                "latency_p99" => settings.first_deploy_max_latency_seconds * latency_unit?,
                _ => return None,
            };
            Some(AnalysisMetric {
                max_value: Some(max),
                max_relative_effect: None,
                max_absolute_effect: None,
                ..m.clone()
            })
        })
        .collect()
}

/// Largest template file read.
const MAX_TEMPLATE_BYTES: u64 = 64 * 1024;

/// Reads every `<name>.json` of `dir` as an analysis template (each at most 64 KiB,
/// its `name` the file's, every metric with a query that parses as PromQL).
pub fn load_templates(dir: &Path) -> Result<BTreeMap<String, AnalysisTemplate>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the directory {}: {e}", dir.display()))?;
    let mut out = BTreeMap::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read the directory {}: {e}", dir.display()))?
            .path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let bad = |why: String| format!("{}: {why}", path.display());
        let size = std::fs::metadata(&path)
            .map_err(|e| bad(e.to_string()))?
            .len();
        if size > MAX_TEMPLATE_BYTES {
            return Err(bad(format!("larger than {MAX_TEMPLATE_BYTES} bytes")));
        }
        let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let t: AnalysisTemplate =
            toronto_protocol::codec::from_json_bounded(&bytes).map_err(|e| bad(e.to_string()))?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if t.name != stem {
            return Err(bad(format!(
                "names the template {:?}, not {stem:?}",
                t.name
            )));
        }
        if t.metrics.is_empty() {
            return Err(bad("names no metric".into()));
        }
        if let Some(m) = t.metrics.iter().find(|m| m.query.is_none()) {
            return Err(bad(format!("metric {:?} has no query", m.name)));
        }
        crate::promql::check_template(&t).map_err(|e| bad(e.to_string()))?;
        if let Some(i) = t.sequential.as_ref().and_then(|s| s.interval_seconds)
            && !(0.1..=3600.0).contains(&i)
        {
            return Err(bad(format!(
                "the sequential test's interval_seconds {i} is not between 0.1 and 3600"
            )));
        }
        if let Some(seq) = &t.sequential
            && !t.metrics.iter().any(|m| {
                m.name == seq.metric && !m.is_threshold() && m.direction == Direction::Increase
            })
        {
            return Err(bad(format!(
                "the sequential test names {:?}, not one of its comparisons where higher is worse",
                seq.metric
            )));
        }
        out.insert(t.name.clone(), t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_name_their_metrics_and_use_only_known_placeholders() {
        let s = Settings::default();
        for name in BUILT_IN {
            let t = built_in(name, &s).expect(name);
            assert_eq!(t.metrics.len(), 2);
            assert!(t.metrics[0].critical);
            let seq = t.sequential.as_ref().expect("a sequential test");
            assert_eq!(seq.metric, t.metrics[0].name);
            let queries = t
                .metrics
                .iter()
                .map(|m| m.query.as_deref().unwrap())
                .chain([seq.requests_query.as_str(), seq.errors_query.as_str()]);
            for q in queries {
                for p in q.split("{{").skip(1) {
                    let p = p.split("}}").next().unwrap();
                    assert!(
                        [
                            "service",
                            "namespace",
                            "version",
                            "track",
                            "track_label",
                            "workload",
                            "backend",
                            "window"
                        ]
                        .contains(&p),
                        "{name}: {p} in {q}"
                    );
                }
            }
        }
        let app = built_in("app", &s).unwrap();
        assert_eq!(
            app.sequential.unwrap().errors_query,
            r#"sum(increase(http_requests_total{namespace="{{namespace}}",app_kubernetes_io_name="{{service}}",app_kubernetes_io_version="{{version}}",{{track_label}}="{{track}}",code=~"5.."}[{{window}}]))"#
        );
        assert_eq!(
            app.metrics[0].query.as_deref().unwrap(),
            r#"(sum(rate(http_requests_total{namespace="{{namespace}}",app_kubernetes_io_name="{{service}}",app_kubernetes_io_version="{{version}}",{{track_label}}="{{track}}",code=~"5.."}[{{window}}])) or vector(0)) / sum(rate(http_requests_total{namespace="{{namespace}}",app_kubernetes_io_name="{{service}}",app_kubernetes_io_version="{{version}}",{{track_label}}="{{track}}"}[{{window}}]))"#
        );
    }

    #[test]
    fn a_first_deploy_checks_thresholds_in_the_templates_unit() {
        let s = Settings::default();
        let app = first_deploy_metrics(&built_in("app", &s).unwrap(), &s);
        assert_eq!(app.len(), 2);
        assert_eq!(app[0].max_value, Some(s.first_deploy_max_error_ratio));
        assert_eq!(app[0].max_absolute_effect, None);
        assert_eq!(app[1].max_value, Some(s.first_deploy_max_latency_seconds));
        let istio = first_deploy_metrics(&built_in("istio", &s).unwrap(), &s);
        assert_eq!(
            istio[1].max_value,
            Some(s.first_deploy_max_latency_seconds * 1000.0)
        );
        // A user's template: its thresholds and its error ratio; an unknown latency
        // unit is left out.
        let mut custom = built_in("app", &s).unwrap();
        custom.name = "mine".into();
        let mut sat = custom.metrics[0].clone();
        sat.name = "saturation".into();
        sat.max_value = Some(0.9);
        custom.metrics.push(sat);
        let s = Settings {
            custom_templates: [("mine".to_owned(), custom.clone())].into(),
            ..Settings::default()
        };
        let names: Vec<_> = first_deploy_metrics(&custom, &s)
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["error_ratio", "saturation"]);
    }

    #[test]
    fn a_service_gets_its_own_or_the_default_template() {
        let mut s = Settings::default();
        s.service_templates.insert("cart".into(), "istio".into());
        assert_eq!(template_for("cart", &s).unwrap().name, "istio");
        assert_eq!(template_for("shop", &s).unwrap().name, "app");
        s.service_templates.insert("shop".into(), "nope".into());
        let err = template_for("shop", &s).unwrap_err();
        assert!(err.contains("`nope`") && err.contains("linkerd"), "{err}");
    }

    #[test]
    fn templates_load_from_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("slo.json"),
            r#"{"name":"slo","on_no_data":"fail","metrics":[{"name":"errors","query":"sum(x{track=\"{{track}}\"})","max_value":0.01}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let loaded = load_templates(dir.path()).unwrap();
        assert_eq!(loaded["slo"].metrics[0].max_value, Some(0.01));
        let s = Settings {
            custom_templates: loaded,
            analysis_template: "slo".into(),
            ..Settings::default()
        };
        assert_eq!(
            template_for("shop", &s).unwrap().on_no_data,
            Some(toronto_protocol::analysis::OnNoData::Fail)
        );
        std::fs::write(
            dir.path().join("seq.json"),
            r#"{"name":"seq","metrics":[{"name":"errors","query":"sum(x{track=\"{{track}}\"})","max_value":0.01}],"sequential":{"metric":"errors","requests_query":"sum(increase(r[{{window}}]))","errors_query":"sum(increase(e[{{window}}]))"}}"#,
        )
        .unwrap();
        let err = load_templates(dir.path()).unwrap_err();
        assert!(
            err.contains("seq.json") && err.contains("sequential"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("seq.json")).unwrap();
        std::fs::write(
            dir.path().join("other.json"),
            r#"{"name":"x","metrics":[]}"#,
        )
        .unwrap();
        let err = load_templates(dir.path()).unwrap_err();
        assert!(err.contains("other.json"), "{err}");
    }
}
