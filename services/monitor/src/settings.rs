//! The monitor's own settings, from `TORONTO_MONITOR_*` variables, parsed once at start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use toronto_runtime::config::{SettingsError, ValueError, Var, parse, vars};

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
    /// Days every canary verdict's evidence is kept for `analysis.replay`.
    pub evidence_days: u64,
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
            evidence_days: 30,
        }
    }
}

/// The prefix of the monitor's variables.
pub const PREFIX: &str = "TORONTO_MONITOR_";

/// Every `TORONTO_MONITOR_*` variable: its doc, default and setter.
pub const MONITOR_VARS: &[Var<Settings>] = &[
    Var::new(
        "TORONTO_MONITOR_RETENTION_SECONDS",
        "Seconds samples stay in the in-memory store.",
        "900",
        |s, v| {
            s.retention = parse::seconds(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_MAX_SAMPLES_PER_SERIES",
        "Samples kept per series; the oldest go first.",
        "10000",
        |s, v| {
            s.max_samples_per_series = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_MAX_SERIES",
        "Series kept in the store; samples of further series are refused and counted.",
        "100000",
        |s, v| {
            s.max_series = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_MIN_SAMPLES",
        "Fewer samples than this on either side makes a canary metric inconclusive.",
        "3",
        |s, v| {
            s.min_samples = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_EVIDENCE_DAYS",
        "Days every canary verdict's evidence (its samples, capped at 512 per metric and side) is kept in the `<prefix>_analysis_evidence` bucket for `analysis.replay`.",
        "30",
        |s, v| {
            s.evidence_days = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_PROMETHEUS_URL",
        "Base URL of a Prometheus HTTP API, e.g. `http://prometheus:9090`, for canary metrics with a `query` and SLOs of type Prometheus.",
        "",
        |s, v| {
            s.prometheus_url = match v.trim() {
                "" => None,
                u => Some(parse::http_url(u)?),
            };
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_HTTP_TIMEOUT_MS",
        "Milliseconds a Prometheus query, a scrape or a probe may take.",
        "5000",
        |s, v| {
            s.http_timeout = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_SCRAPE_TARGETS",
        "Prometheus exposition endpoints to scrape into the store, comma-separated `job=url` (or a bare URL, job `scrape`).",
        "",
        |s, v| {
            s.scrape_targets = targets(v, "scrape")?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_SCRAPE_INTERVAL_MS",
        "Milliseconds between two scrapes of a target.",
        "15000",
        |s, v| {
            s.scrape_interval = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_SLO_DIR",
        "Directory of OpenSLO files (`*.yaml`, `*.yml`) loaded at start.",
        "",
        |s, v| {
            s.slo_dir = parse::optional_path(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_SLO_INTERVAL_MS",
        "Milliseconds between two SLO evaluations, real time.",
        "30000",
        |s, v| {
            s.slo_interval = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_TIME_SCALE",
        "Time compression of SLO windows: every SLO duration is divided by it, e.g. 60 makes 1h last a minute (for tests and demos).",
        "1",
        |s, v| {
            s.time_scale = parse::positive_f64(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_RESOLVE_EVALUATIONS",
        "Consecutive evaluations a burn-rate alert's condition must be clear before it resolves.",
        "3",
        |s, v| {
            s.resolve_evaluations = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_DEFAULT_ENVIRONMENT",
        "The environment of SLOs whose file names none in `metadata.labels.environment`.",
        "production",
        |s, v| {
            s.default_environment = parse::non_empty(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_PROBES",
        "Synthetic HTTP probes, comma-separated `name=url`.",
        "",
        |s, v| {
            s.probes = targets(v, "probe")?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_PROBE_INTERVAL_MS",
        "Milliseconds between two probes of a target.",
        "10000",
        |s, v| {
            s.probe_interval = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_ANOMALY_METRICS",
        "Series names watched for anomalies (median/MAD), comma-separated.",
        "",
        |s, v| {
            s.anomaly_metrics = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_ANOMALY_THRESHOLD",
        "Robust z-score (distance from the median in scaled MADs) that raises a warning alert.",
        "5",
        |s, v| {
            s.anomaly_threshold = parse::positive_f64(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MONITOR_ANOMALY_INTERVAL_MS",
        "Milliseconds between two anomaly checks.",
        "10000",
        |s, v| {
            s.anomaly_interval = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::deprecated(
        "TORONTO_MONITOR_RETENTION_SECS",
        "Seconds samples stay in the in-memory store.",
        "TORONTO_MONITOR_RETENTION_SECONDS",
        |s, v| {
            s.retention = parse::seconds(v)?;
            Ok(())
        },
    ),
];

fn targets(v: &str, default_name: &str) -> Result<Vec<Target>, ValueError> {
    parse::list(v)
        .into_iter()
        .map(|t| {
            let (name, u) = match t.split_once('=') {
                Some((n, u)) if !n.contains(':') => (n.trim().to_owned(), u),
                _ => (default_name.to_owned(), t.as_str()),
            };
            if name.is_empty() {
                return Err(ValueError::Invalid(format!("`{t}` has an empty name")));
            }
            Ok(Target {
                name,
                url: parse::http_url(u)?,
            })
        })
        .collect()
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&vars::env_vars())
    }

    /// From a set of variables; the ones not given keep their defaults. A malformed
    /// value or an unknown `TORONTO_MONITOR_*` variable is refused with its name.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        vars::refuse_unknown(PREFIX, &vars::docs(MONITOR_VARS), vars)?;
        let mut s = Self::default();
        vars::read(&mut s, MONITOR_VARS, vars)?;
        if let Some(dir) = &s.slo_dir
            && !dir.is_dir()
        {
            return Err(SettingsError::Inconsistent(format!(
                "TORONTO_MONITOR_SLO_DIR: `{}` is not a directory",
                dir.display()
            )));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use toronto_runtime::config::var_map as vars;

    #[test]
    fn variables_override_defaults_and_bad_values_are_named() {
        let s = Settings::from_vars(&vars(&[
            ("TORONTO_MONITOR_RETENTION_SECONDS", "60"),
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
            ("TORONTO_MONITOR_RETENTION_SECONDS", "soon"),
            ("TORONTO_MONITOR_RETENTION_SECS", "soon"),
            ("TORONTO_MONITOR_PROMETHEUS_URL", "prometheus:9090"),
            ("TORONTO_MONITOR_TIME_SCALE", "-1"),
            ("TORONTO_MONITOR_SLO_INTERVAL_MS", "0"),
            ("TORONTO_MONITOR_SLO_DIR", "/nonexistent/slos"),
            ("TORONTO_MONITOR_PROBES", "=http://x"),
        ] {
            let err = Settings::from_vars(&vars(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn every_variable_is_monitor_prefixed_documented_and_listed_once() {
        for var in MONITOR_VARS {
            assert!(var.name.starts_with(PREFIX));
            assert!(!var.description.is_empty());
        }
        let mut names: Vec<&str> = MONITOR_VARS.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MONITOR_VARS.len());
    }

    #[test]
    fn the_table_parses_its_defaults() {
        let defaults: HashMap<String, String> = MONITOR_VARS
            .iter()
            .filter(|v| v.replaced_by.is_none())
            .map(|v| (v.name.to_owned(), v.default.to_owned()))
            .collect();
        assert_eq!(Settings::from_vars(&defaults).unwrap(), Settings::default());
    }

    #[test]
    fn typos_zero_and_the_old_retention_name() {
        let err =
            Settings::from_vars(&vars(&[("TORONTO_MONITOR_PROBE", "x=http://a")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("did you mean TORONTO_MONITOR_PROBES?"),
            "{err}"
        );
        let err = Settings::from_vars(&vars(&[("TORONTO_MONITOR_MAX_SERIES", "0")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TORONTO_MONITOR_MAX_SERIES: must be more than 0"
        );
        let s = Settings::from_vars(&vars(&[("TORONTO_MONITOR_RETENTION_SECS", "60")])).unwrap();
        assert_eq!(s.retention, Duration::from_secs(60));
    }
}
