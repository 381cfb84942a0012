//! The metric families: the table in `docs/operations.md` ("Metrics") against what each
//! of the five services exports right after it starts, before any work, parsed with
//! `openmetrics-parser` (the OpenMetrics grammar); and every name against Prometheus'
//! naming rules (https://prometheus.io/docs/practices/naming/).

use super::*;

use openmetrics_parser::OpenMetricsType;
use tokio_util::sync::CancellationToken;

/// One row of the docs' table: the name as queried (`_total` on counters), its type,
/// the services that export it (`None`: every service), and whether from start (else
/// with its first series).
struct Documented {
    name: String,
    kind: String,
    services: Option<Vec<String>>,
    from_start: bool,
}

fn documented() -> Vec<Documented> {
    let docs = read("docs/operations.md");
    let section = docs
        .split("\n## Metrics\n")
        .nth(1)
        .expect("docs/operations.md has a Metrics section");
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter(|l| l.starts_with("| `toronto_"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let services = cells[3];
            Documented {
                name: cells[1].trim_matches('`').to_owned(),
                kind: cells[2].to_owned(),
                services: (services != "every service")
                    .then(|| services.split(',').map(|s| s.trim().to_owned()).collect()),
                from_start: cells[5] == "from start",
            }
        })
        .collect()
}

/// The short name the docs use for a service (`toronto-planner` → `planner`).
fn short(kind: ServiceKind) -> &'static str {
    kind.service_name().trim_start_matches("toronto-")
}

/// What Prometheus' naming rules say against `name` (as queried: `_total` on counters)
/// of a family of `kind`.
fn naming_problems(name: &str, kind: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut say = |why: &str| problems.push(format!("{name}: {why}"));
    if !name.starts_with("toronto_") {
        say("does not start with the application prefix `toronto_`");
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
        || name.contains("__")
    {
        say("is not snake_case (colons are for recording rules)");
    }
    if (kind == "counter") != name.ends_with("_total") {
        say("`_total` ends counters, and only counters");
    }
    let words: Vec<&str> = name.trim_end_matches("_total").split('_').collect();
    const NOT_BASE: [&str; 16] = [
        "ms",
        "us",
        "ns",
        "sec",
        "secs",
        "milliseconds",
        "microseconds",
        "nanoseconds",
        "minutes",
        "hours",
        "days",
        "day",
        "weeks",
        "percent",
        "kilobytes",
        "megabytes",
    ];
    if let Some(unit) = words.iter().find(|w| NOT_BASE.contains(w)) {
        say(&format!("`{unit}` is not a base unit (seconds, bytes)"));
    }
    if words.windows(2).any(|w| w[0] == "per" && w[1] != "second") {
        say("a frequency is per second");
    }
    if words.last() == Some(&"rate") {
        say("a ratio ends in `_ratio`; a rate is what `rate()` computes");
    }
    for type_word in ["counter", "gauge", "histogram", "summary"] {
        if words.contains(&type_word) {
            say(&format!("the type `{type_word}` is in the name"));
        }
    }
    let stems: Vec<&str> = words.iter().map(|w| w.trim_end_matches('s')).collect();
    for (i, stem) in stems.iter().enumerate() {
        if stem.len() > 2 && stems[i + 1..].contains(stem) {
            say(&format!("`{}` is said twice", words[i]));
        }
    }
    if kind == "histogram" && !(name.ends_with("_seconds") || name.ends_with("_bytes")) {
        say("a histogram names its unit (`_seconds`, `_bytes`)");
    }
    problems
}

#[test]
fn the_naming_rules_catch_what_prometheus_warns_about() {
    for (name, kind) in [
        ("toronto_requests_total", "counter"),
        ("toronto_request_duration_seconds", "histogram"),
        ("toronto_dora_deployments_per_second", "gauge"),
        ("toronto_dora_change_failure_ratio", "gauge"),
        ("toronto_incidents_open", "gauge"),
        ("toronto_incident_time_to_acknowledge_seconds", "histogram"),
    ] {
        assert_eq!(naming_problems(name, kind), Vec::<String>::new(), "{name}");
    }
    for (name, kind) in [
        ("toronto_incident_incidents", "gauge"),
        ("toronto_dora_deployments_per_day", "gauge"),
        ("toronto_dora_change_failure_rate", "gauge"),
        ("toronto_requests", "counter"),
        ("toronto_open_total", "gauge"),
        ("toronto_latency_ms", "gauge"),
        ("toronto_latency", "histogram"),
        ("toronto_Requests_total", "counter"),
        ("slo:error_budget:ratio", "gauge"),
        ("requests_total", "counter"),
        ("toronto_queue_gauge", "gauge"),
    ] {
        assert!(!naming_problems(name, kind).is_empty(), "{name} passed");
    }
}

/// (name as queried, type) of every family in an OpenMetrics exposition.
fn families(text: &str) -> Result<BTreeMap<String, String>, String> {
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .map_err(|e| format!("not OpenMetrics: {e}"))?;
    let mut out = BTreeMap::new();
    for (name, family) in exposition.families {
        let kind = match family.family_type {
            OpenMetricsType::Counter => "counter",
            OpenMetricsType::Gauge => "gauge",
            OpenMetricsType::Histogram => "histogram",
            OpenMetricsType::GaugeHistogram => "gaugehistogram",
            OpenMetricsType::StateSet => "stateset",
            OpenMetricsType::Info => "info",
            OpenMetricsType::Summary => "summary",
            OpenMetricsType::Unknown => "unknown",
        };
        if family.help.trim().is_empty() {
            return Err(format!("{name} has no help"));
        }
        let queried = if kind == "counter" {
            format!("{name}_total")
        } else {
            name
        };
        out.insert(queried, kind.to_owned());
    }
    Ok(out)
}

#[tokio::test]
async fn every_documented_family_is_exported_from_start_and_named_by_the_rules() {
    let docs = documented();
    assert!(docs.len() > 20, "the Metrics table is read");
    let mut problems = Vec::new();
    for d in &docs {
        problems.extend(naming_problems(&d.name, &d.kind));
    }

    let server = toronto_testkit::NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let stack = toronto_cli::up::Stack::start(&config, 0, shutdown.clone())
        .await
        .unwrap();
    for (kind, http) in &stack.services {
        let service = short(*kind);
        let http = http.unwrap_or_else(|| panic!("{service} serves HTTP"));
        let text = reqwest::get(format!("http://{http}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let exported = match families(&text) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{service}: {e}"));
                continue;
            }
        };
        for d in &docs {
            let here = d
                .services
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == service));
            match (here, exported.get(&d.name)) {
                (true, None) if d.from_start => {
                    problems.push(format!("{service} does not export {} from start", d.name))
                }
                (true, Some(k)) if *k != d.kind => problems.push(format!(
                    "{service}: {} is a {k}, the docs say {}",
                    d.name, d.kind
                )),
                (false, Some(_)) => problems.push(format!(
                    "{service} exports {}, the docs do not say so",
                    d.name
                )),
                _ => {}
            }
        }
        for (name, k) in &exported {
            if !docs.iter().any(|d| &d.name == name) {
                problems.push(format!(
                    "{service} exports {name} ({k}), not in docs/operations.md"
                ));
            }
        }
    }
    shutdown.cancel();
    stack.wait().await.unwrap();
    fail_if_any("metric families", problems);
}
