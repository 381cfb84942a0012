//! The monitor's own settings, from `TORONTO_MONITOR_*` variables, parsed once at start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// A configured target: a name and a URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its name (the `job` label of scraped series, the `probe` label of probes).
    pub name: String,
    /// Its URL.
    pub url: String,
}

/// What the monitor watches and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long samples stay in the in-memory store.
    pub retention: Duration,
    /// Samples kept per series.
    pub max_samples_per_series: usize,
    /// Series kept in the store.
    pub max_series: usize,
    /// Fewer samples than this on either side makes a metric inconclusive.
    pub min_samples: usize,
    /// Base URL of a Prometheus HTTP API (e.g. `http://127.0.0.1:9090`), if any.
    pub prometheus_url: Option<String>,
    /// How long a Prometheus query or a scrape may take.
    pub http_timeout: Duration,
    /// Prometheus exposition endpoints to scrape.
    pub scrape_targets: Vec<Target>,
    /// Time between two scrapes of a target.
    pub scrape_interval: Duration,
    /// Directory of OpenSLO files (`*.yaml`, `*.yml`) loaded at start.
    pub slo_dir: Option<PathBuf>,
    /// Time between two SLO evaluations (real time, not compressed).
    pub slo_interval: Duration,
    /// Time compression of SLO windows: every SLO duration (burn-rate windows, the
    /// SLO window, history buckets) is divided by it. 1 in production; e.g. 60 in a
    /// test makes the 1h window last one minute and the 5m window five seconds.
    pub time_scale: f64,
    /// Consecutive evaluations an alert's condition must be clear before it resolves.
    pub resolve_evaluations: u32,
    /// The `environment` label of SLOs whose file does not name one.
    pub default_environment: String,
    /// Synthetic HTTP probes.
    pub probes: Vec<Target>,
    /// Time between two probes of a target.
    pub probe_interval: Duration,
    /// Metrics watched for anomalies (series names in the store).
    pub anomaly_metrics: Vec<String>,
    /// Robust z-score (distance from the median in scaled MADs) that is an anomaly.
    pub anomaly_threshold: f64,
    /// Time between two anomaly checks.
    pub anomaly_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(15 * 60),
            max_samples_per_series: 10_000,
            max_series: 100_000,
            min_samples: 3,
            prometheus_url: None,
            http_timeout: Duration::from_secs(5),
            scrape_targets: Vec::new(),
            scrape_interval: Duration::from_secs(15),
            slo_dir: None,
            slo_interval: Duration::from_secs(30),
            time_scale: 1.0,
            resolve_evaluations: 3,
            default_environment: "production".into(),
            probes: Vec::new(),
            probe_interval: Duration::from_secs(10),
            anomaly_metrics: Vec::new(),
            anomaly_threshold: 5.0,
            anomaly_interval: Duration::from_secs(10),
        }
    }
}

/// Every `TORONTO_MONITOR_*` variable with what it sets.
pub const MONITOR_VARS: &[(&str, &str)] = &[
    (
        "TORONTO_MONITOR_RETENTION_SECS",
        "Seconds samples stay in the in-memory store (default 900).",
    ),
    (
        "TORONTO_MONITOR_MAX_SAMPLES_PER_SERIES",
        "Samples kept per series; the oldest go first (default 10000).",
    ),
    (
        "TORONTO_MONITOR_MAX_SERIES",
        "Series kept in the store; samples of further series are refused and counted (default 100000).",
    ),
    (
        "TORONTO_MONITOR_MIN_SAMPLES",
        "Fewer samples than this on either side makes a canary metric inconclusive (default 3).",
    ),
    (
        "TORONTO_MONITOR_PROMETHEUS_URL",
        "Base URL of a Prometheus HTTP API, e.g. `http://prometheus:9090`, for canary metrics with a `query` and SLOs of type Prometheus (default none).",
    ),
    (
        "TORONTO_MONITOR_HTTP_TIMEOUT_MS",
        "Milliseconds a Prometheus query, a scrape or a probe may take (default 5000).",
    ),
    (
        "TORONTO_MONITOR_SCRAPE_TARGETS",
        "Prometheus exposition endpoints to scrape into the store, comma-separated `job=url` (or a bare URL, job `scrape`) (default none).",
    ),
    (
        "TORONTO_MONITOR_SCRAPE_INTERVAL_MS",
        "Milliseconds between two scrapes of a target (default 15000).",
    ),
    (
        "TORONTO_MONITOR_SLO_DIR",
        "Directory of OpenSLO files (`*.yaml`, `*.yml`) loaded at start (default none).",
    ),
    (
        "TORONTO_MONITOR_SLO_INTERVAL_MS",
        "Milliseconds between two SLO evaluations, real time (default 30000).",
    ),
    (
        "TORONTO_MONITOR_TIME_SCALE",
        "Time compression of SLO windows: every SLO duration is divided by it, e.g. 60 makes 1h last a minute (default 1; for tests and demos).",
    ),
    (
        "TORONTO_MONITOR_RESOLVE_EVALUATIONS",
        "Consecutive evaluations a burn-rate alert's condition must be clear before it resolves (default 3).",
    ),
    (
        "TORONTO_MONITOR_DEFAULT_ENVIRONMENT",
        "The environment of SLOs whose file names none in `metadata.labels.environment` (default `production`).",
    ),
    (
        "TORONTO_MONITOR_PROBES",
        "Synthetic HTTP probes, comma-separated `name=url` (default none).",
    ),
    (
        "TORONTO_MONITOR_PROBE_INTERVAL_MS",
        "Milliseconds between two probes of a target (default 10000).",
    ),
    (
        "TORONTO_MONITOR_ANOMALY_METRICS",
        "Series names watched for anomalies (median/MAD), comma-separated (default none).",
    ),
    (
        "TORONTO_MONITOR_ANOMALY_THRESHOLD",
        "Robust z-score (distance from the median in scaled MADs) that raises a warning alert (default 5).",
    ),
    (
        "TORONTO_MONITOR_ANOMALY_INTERVAL_MS",
        "Milliseconds between two anomaly checks (default 10000).",
    ),
];

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn millis(var: &str, v: &str) -> Result<Duration, String> {
    match v.trim().parse::<u64>() {
        Ok(0) | Err(_) => Err(format!(
            "{var}: `{v}` is not a positive whole number of milliseconds"
        )),
        Ok(n) => Ok(Duration::from_millis(n)),
    }
}

fn count(var: &str, v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("{var}: `{v}` is not a positive whole number")),
        Ok(n) => Ok(n),
    }
}

fn positive(var: &str, v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{var}: `{v}` is not a positive number")),
    }
}

fn url(var: &str, v: &str) -> Result<String, String> {
    let v = v.trim();
    if (v.starts_with("http://") || v.starts_with("https://")) && v.len() > "https://".len() {
        Ok(v.trim_end_matches('/').to_owned())
    } else {
        Err(format!("{var}: `{v}` is not an http:// or https:// URL"))
    }
}

fn targets(var: &str, v: &str, default_name: &str) -> Result<Vec<Target>, String> {
    list(v)
        .into_iter()
        .map(|t| {
            let (name, u) = match t.split_once('=') {
                Some((n, u)) if !n.contains(':') => (n.trim().to_owned(), u),
                _ => (default_name.to_owned(), t.as_str()),
            };
            if name.is_empty() {
                return Err(format!("{var}: `{t}` has an empty name"));
            }
            Ok(Target {
                name,
                url: url(var, u)?,
            })
        })
        .collect()
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// From a set of variables; the ones not given keep their defaults. A malformed
    /// value is refused with the variable named.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        let mut s = Self::default();
        for (name, _) in MONITOR_VARS {
            let Some(v) = vars.get(*name) else { continue };
            match *name {
                "TORONTO_MONITOR_RETENTION_SECS" => {
                    s.retention = Duration::from_secs(count(name, v)? as u64)
                }
                "TORONTO_MONITOR_MAX_SAMPLES_PER_SERIES" => {
                    s.max_samples_per_series = count(name, v)?
                }
                "TORONTO_MONITOR_MAX_SERIES" => s.max_series = count(name, v)?,
                "TORONTO_MONITOR_MIN_SAMPLES" => s.min_samples = count(name, v)?,
                "TORONTO_MONITOR_PROMETHEUS_URL" => {
                    s.prometheus_url = if v.trim().is_empty() {
                        None
                    } else {
                        Some(url(name, v)?)
                    }
                }
                "TORONTO_MONITOR_HTTP_TIMEOUT_MS" => s.http_timeout = millis(name, v)?,
                "TORONTO_MONITOR_SCRAPE_TARGETS" => s.scrape_targets = targets(name, v, "scrape")?,
                "TORONTO_MONITOR_SCRAPE_INTERVAL_MS" => s.scrape_interval = millis(name, v)?,
                "TORONTO_MONITOR_SLO_DIR" => {
                    s.slo_dir = (!v.trim().is_empty()).then(|| PathBuf::from(v.trim()))
                }
                "TORONTO_MONITOR_SLO_INTERVAL_MS" => s.slo_interval = millis(name, v)?,
                "TORONTO_MONITOR_TIME_SCALE" => s.time_scale = positive(name, v)?,
                "TORONTO_MONITOR_RESOLVE_EVALUATIONS" => {
                    s.resolve_evaluations = count(name, v)? as u32
                }
                "TORONTO_MONITOR_DEFAULT_ENVIRONMENT" => {
                    if v.trim().is_empty() {
                        return Err(format!("{name}: must not be empty"));
                    }
                    s.default_environment = v.trim().to_owned()
                }
                "TORONTO_MONITOR_PROBES" => s.probes = targets(name, v, "probe")?,
                "TORONTO_MONITOR_PROBE_INTERVAL_MS" => s.probe_interval = millis(name, v)?,
                "TORONTO_MONITOR_ANOMALY_METRICS" => s.anomaly_metrics = list(v),
                "TORONTO_MONITOR_ANOMALY_THRESHOLD" => s.anomaly_threshold = positive(name, v)?,
                "TORONTO_MONITOR_ANOMALY_INTERVAL_MS" => s.anomaly_interval = millis(name, v)?,
                _ => {}
            }
        }
        if let Some(dir) = &s.slo_dir
            && !dir.is_dir()
        {
            return Err(format!(
                "TORONTO_MONITOR_SLO_DIR: `{}` is not a directory",
                dir.display()
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_override_defaults_and_bad_values_are_named() {
        let s = Settings::from_vars(&vars(&[
            ("TORONTO_MONITOR_RETENTION_SECS", "60"),
            ("TORONTO_MONITOR_PROMETHEUS_URL", "http://127.0.0.1:9090/"),
            (
                "TORONTO_MONITOR_SCRAPE_TARGETS",
                "shop=http://127.0.0.1:8080/metrics, http://10.0.0.1:9100/metrics",
            ),
            ("TORONTO_MONITOR_TIME_SCALE", "60"),
        ]))
        .unwrap();
        assert_eq!(s.retention, Duration::from_secs(60));
        assert_eq!(s.prometheus_url.as_deref(), Some("http://127.0.0.1:9090"));
        assert_eq!(s.scrape_targets[0].name, "shop");
        assert_eq!(s.scrape_targets[1].name, "scrape");
        assert_eq!(s.scrape_targets[1].url, "http://10.0.0.1:9100/metrics");
        assert_eq!(s.time_scale, 60.0);
        assert_eq!(s.min_samples, 3);
        for (var, value) in [
            ("TORONTO_MONITOR_RETENTION_SECS", "soon"),
            ("TORONTO_MONITOR_PROMETHEUS_URL", "prometheus:9090"),
            ("TORONTO_MONITOR_TIME_SCALE", "-1"),
            ("TORONTO_MONITOR_SLO_INTERVAL_MS", "0"),
            ("TORONTO_MONITOR_SLO_DIR", "/nonexistent/slos"),
            ("TORONTO_MONITOR_PROBES", "=http://x"),
        ] {
            let err = Settings::from_vars(&vars(&[(var, value)])).unwrap_err();
            assert!(err.contains(var), "{err}");
        }
    }

    #[test]
    fn every_variable_is_monitor_prefixed() {
        for (name, description) in MONITOR_VARS {
            assert!(name.starts_with("TORONTO_MONITOR_"));
            assert!(!description.is_empty());
        }
    }
}
