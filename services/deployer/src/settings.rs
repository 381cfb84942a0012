//! The deployer's own settings, from `TORONTO_DEPLOYER_*` variables.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use toronto_protocol::analysis::{AnalysisTemplate, OnNoData};

pub use toronto_runtime::config::SettingsError;
use toronto_runtime::config::{ValueError, Var, VarDoc, parse, vars};

use crate::sim::SimSettings;

/// Which target rollouts land on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// The in-process simulated cluster (a simulation).
    Simulated,
    /// A Kubernetes API server (kubeconfig or in-cluster).
    Kubernetes,
}

/// What a canary is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnalysisMode {
    /// Templates on Kubernetes, bus metrics on the simulated cluster.
    Auto,
    /// The metrics the simulated cluster (or an agent) pushes over the bus.
    Bus,
    /// The service's analysis template (PromQL read by the monitor from Prometheus).
    Templates,
}

/// How rollouts run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where rollouts land.
    pub target: TargetKind,
    /// How long one deployer owns a rollout before another may take it over (also the
    /// runner's ack deadline; progress acks keep it while the owner lives).
    pub lease: Duration,
    /// Time between canary analyses while a step pauses.
    pub analysis_interval: Duration,
    /// How far back each analysis looks.
    pub analysis_window: Duration,
    /// Judge the critical error metric with the sequential test (mSPRT) beside the
    /// windowed test: on bus metrics, analysing every `sequential_interval`; on a
    /// template's request and error counts when it names them.
    pub sequential_analysis: bool,
    /// Time between analyses while the sequential test runs.
    pub sequential_interval: Duration,
    /// Largest error-ratio increase of the canary over the baseline that passes.
    pub max_error_ratio_increase: f64,
    /// Largest relative latency increase of the canary that passes.
    pub max_latency_increase: f64,
    /// How long the monitor may take to answer an analysis.
    pub analysis_timeout: Duration,
    /// Seconds a workload may take to become ready before the rollout fails.
    pub progress_deadline: Duration,
    /// Canary steps when a deploy names none (percent).
    pub canary_steps: Vec<u8>,
    /// Rolling rollouts: the share of replicas (percent) on the new version in each
    /// analysed batch before it takes everything.
    pub rolling_batches: Vec<u8>,
    /// Pause after each canary step (and each blue-green phase), with analysis.
    pub step_pause: Duration,
    /// A first deploy's pause with threshold analysis before it succeeds (at most
    /// `step_pause`).
    pub first_deploy_pause: Duration,
    /// A first deploy fails when its error ratio is above this.
    pub first_deploy_max_error_ratio: f64,
    /// A first deploy fails when its latency is above this many seconds.
    pub first_deploy_max_latency_seconds: f64,
    /// Environments whose rollouts wait for `rollout.promote` between steps.
    pub manual_promotion: Vec<String>,
    /// Blue-green: how long the old colour stays up after the switch.
    pub scale_down_delay: Duration,
    /// Abort a rollout when the monitor fires an alert on its service.
    pub abort_on_alert: bool,
    /// Time between drift checks of every service (zero: only on request).
    pub drift_interval: Duration,
    /// Put the desired spec back when drift is found.
    pub drift_remediate: bool,
    /// What canaries are judged by.
    pub analysis: AnalysisMode,
    /// What a rollout does when its template analysis sees no data.
    pub on_no_data: OnNoData,
    /// The analysis template of services not named in `service_templates`.
    pub analysis_template: String,
    /// The analysis template per service.
    pub service_templates: BTreeMap<String, String>,
    /// Templates loaded from a directory, by name.
    pub custom_templates: BTreeMap<String, AnalysisTemplate>,
    /// Workload templates read from a directory of manifests.
    pub workload_manifests: crate::engine::ManifestWorkloads,
    /// The simulated cluster's behaviour.
    pub sim: SimSettings,
}

impl Settings {
    /// Whether canaries are judged by templates (else by bus metrics).
    pub fn uses_templates(&self) -> bool {
        match self.analysis {
            AnalysisMode::Auto => self.target == TargetKind::Kubernetes,
            AnalysisMode::Bus => false,
            AnalysisMode::Templates => true,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            target: TargetKind::Simulated,
            lease: Duration::from_secs(30),
            analysis_interval: Duration::from_secs(1),
            analysis_window: Duration::from_secs(2),
            sequential_analysis: true,
            sequential_interval: Duration::from_millis(200),
            max_error_ratio_increase: 0.02,
            max_latency_increase: 0.25,
            analysis_timeout: Duration::from_secs(2),
            progress_deadline: Duration::from_secs(600),
            canary_steps: vec![10, 25, 50, 100],
            rolling_batches: vec![25, 50],
            step_pause: Duration::from_secs(30),
            first_deploy_pause: Duration::from_secs(5),
            first_deploy_max_error_ratio: 0.05,
            first_deploy_max_latency_seconds: 1.0,
            manual_promotion: Vec::new(),
            scale_down_delay: Duration::from_secs(30),
            abort_on_alert: true,
            drift_interval: Duration::from_secs(60),
            drift_remediate: false,
            analysis: AnalysisMode::Auto,
            on_no_data: OnNoData::Pause,
            analysis_template: "app".into(),
            service_templates: BTreeMap::new(),
            custom_templates: BTreeMap::new(),
            workload_manifests: BTreeMap::new(),
            sim: SimSettings::default(),
        }
    }
}

/// The prefix of the deployer's variables (its own and the Kubernetes target's).
pub const PREFIX: &str = "TORONTO_DEPLOYER_";

/// Every variable of the deployer's own settings: its doc, default and setter (the
/// Kubernetes target's are in [`crate::kube::KUBE_VARS`]).
pub const DEPLOYER_VARS: &[Var<Settings>] = &[
    Var::new(
        "TORONTO_DEPLOYER_TARGET",
        "`simulated` (the simulated cluster, one world kept in KV and shared by every deployer) or `kubernetes` (kubeconfig or in-cluster).",
        "simulated",
        |s, v| {
            s.target = parse::one_of(
                v,
                &[
                    ("simulated", TargetKind::Simulated),
                    ("kubernetes", TargetKind::Kubernetes),
                ],
            )?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_LEASE_SECONDS",
        "Seconds a deployer owns a rollout before another replica may take it over (at least 1; fractions allowed).",
        "30",
        |s, v| {
            s.lease = lease(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ANALYSIS_INTERVAL_MS",
        "Milliseconds between canary analyses while a step pauses.",
        "1000",
        |s, v| {
            s.analysis_interval = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ANALYSIS_WINDOW_SECONDS",
        "Seconds each analysis looks back.",
        "2",
        |s, v| {
            s.analysis_window = parse::seconds(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_SEQUENTIAL_ANALYSIS",
        "Judge a canary's error ratio with the sequential test (mSPRT, always-valid p-value below 0.01) beside the windowed test, so a failing canary aborts without waiting for a window (bus metrics, asked every `TORONTO_DEPLOYER_SEQUENTIAL_INTERVAL_MS`; an analysis template that names its request and error counts, as the built-in ones do, runs it on those counts read from Prometheus at the analysis interval).",
        "true",
        |s, v| {
            s.sequential_analysis = parse::boolean(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_SEQUENTIAL_INTERVAL_MS",
        "Milliseconds between canary analyses while the sequential test runs (at least 100).",
        "200",
        |s, v| {
            let d = parse::millis(v)?;
            if d < Duration::from_millis(100) {
                return Err(ValueError::Invalid("must be at least 100 ms".into()));
            }
            s.sequential_interval = d;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_MAX_ERROR_RATIO_INCREASE",
        "Largest error-ratio increase of canary over baseline that passes (0 or more).",
        "0.02",
        |s, v| {
            s.max_error_ratio_increase = parse::non_negative_f64(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_MAX_LATENCY_INCREASE",
        "Largest relative latency increase of the canary that passes (0 or more).",
        "0.25",
        |s, v| {
            s.max_latency_increase = parse::non_negative_f64(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_PROGRESS_DEADLINE_SECONDS",
        "Seconds a workload may take to become ready before the rollout fails.",
        "600",
        |s, v| {
            s.progress_deadline = parse::seconds(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_CANARY_STEPS",
        "Canary weights in percent, comma-separated, when a deploy names none.",
        "10,25,50,100",
        |s, v| {
            s.canary_steps = canary_steps(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ROLLING_BATCHES",
        "Rolling rollouts: percent of the replicas on the new version in each analysed batch before it takes all, comma-separated and increasing.",
        "25,50",
        |s, v| {
            s.rolling_batches = canary_steps(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_STEP_PAUSE_SECONDS",
        "Seconds of pause with analysis after each canary step and blue-green phase; 0 does not pause.",
        "30",
        |s, v| {
            s.step_pause = parse::seconds_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_FIRST_DEPLOY_PAUSE_SECONDS",
        "Seconds a service's first deploy (nothing to compare with) runs with threshold analysis before it succeeds, at most the step pause; 0 does not pause.",
        "5",
        |s, v| {
            s.first_deploy_pause = parse::seconds_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_FIRST_DEPLOY_MAX_ERROR_RATIO",
        "A first deploy aborts when its error ratio is above this (0 to 1).",
        "0.05",
        |s, v| {
            s.first_deploy_max_error_ratio = parse::non_negative_f64(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_FIRST_DEPLOY_MAX_LATENCY_SECONDS",
        "A first deploy aborts when its latency (p99 with templates, the simulated cluster's mean on bus metrics) is above this many seconds.",
        "1",
        |s, v| {
            s.first_deploy_max_latency_seconds = parse::non_negative_f64(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_MANUAL_PROMOTION",
        "Environments whose rollouts wait for `rollout.promote` between steps, comma-separated.",
        "",
        |s, v| {
            s.manual_promotion = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_SCALE_DOWN_DELAY_SECONDS",
        "Blue-green: seconds the old colour stays up after the switch; 0 scales it down at once.",
        "30",
        |s, v| {
            s.scale_down_delay = parse::seconds_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ABORT_ON_ALERT",
        "Abort a rollout when an alert fires on its service.",
        "true",
        |s, v| {
            s.abort_on_alert = parse::boolean(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_DRIFT_INTERVAL_SECONDS",
        "Seconds between drift checks of every service; 0 checks only on request.",
        "60",
        |s, v| {
            s.drift_interval = parse::seconds_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_DRIFT_REMEDIATE",
        "Put the desired spec back when drift is found.",
        "false",
        |s, v| {
            s.drift_remediate = parse::boolean(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ANALYSIS",
        "What canaries are judged by: `auto` (analysis templates on Kubernetes, bus metrics on the simulated cluster), `bus` or `templates`.",
        "auto",
        |s, v| {
            s.analysis = parse::one_of(
                v,
                &[
                    ("auto", AnalysisMode::Auto),
                    ("bus", AnalysisMode::Bus),
                    ("templates", AnalysisMode::Templates),
                ],
            )?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ON_NO_DATA",
        "What a rollout judged by a template does when its analysis has no data at the end of a step (no series, or Prometheus or the monitor unreachable): `pause` (hold with the reason until resumed, promoted or aborted), `fail` (abort and roll back) or `promote` (go on unverified, recorded on the rollout). A template's own `on_no_data` wins.",
        "pause",
        |s, v| {
            s.on_no_data = parse::one_of(
                v,
                &[
                    ("pause", OnNoData::Pause),
                    ("fail", OnNoData::Fail),
                    ("promote", OnNoData::Promote),
                ],
            )?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ANALYSIS_TEMPLATE",
        "The analysis template of every service not named in TORONTO_DEPLOYER_ANALYSIS_TEMPLATES: a built-in (`app`, `envoy-gateway`, `istio`, `linkerd`) or one loaded from TORONTO_DEPLOYER_ANALYSIS_TEMPLATE_DIR.",
        "app",
        |s, v| {
            s.analysis_template = parse::non_empty(v.trim())?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ANALYSIS_TEMPLATES",
        "Analysis template per service, `service=template` pairs separated by commas (e.g. `shop=istio,cart=my-slo`).",
        "",
        |s, v| {
            s.service_templates = pairs(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_ANALYSIS_TEMPLATE_DIR",
        "Directory of analysis templates, one JSON file each (`<name>.json`, an `AnalysisTemplate`: `name`, `metrics` with PromQL `query`s, optional `on_no_data`), read at start; empty reads none.",
        "",
        |s, v| {
            s.custom_templates = match parse::optional_path(v) {
                None => BTreeMap::new(),
                Some(dir) => crate::engine::load_templates(&dir).map_err(ValueError::Invalid)?,
            };
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_WORKLOAD_DIR",
        "Directory of Kubernetes manifests (`*.yaml`, `*.yml`, `*.json`, read at start): each Deployment annotated `toronto.dev/service` and `toronto.dev/environment` is that service's workload template there, unless one is registered with `workload.put`; empty reads none.",
        "",
        |s, v| {
            s.workload_manifests = match parse::optional_path(v) {
                None => BTreeMap::new(),
                Some(dir) => crate::engine::load_workloads(&dir).map_err(ValueError::Invalid)?,
            };
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_SIM_TICK_MS",
        "Simulated cluster: milliseconds between traffic ticks.",
        "100",
        |s, v| {
            s.sim.tick = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_SIM_REQUESTS_PER_TICK",
        "Simulated cluster: synthetic requests per tick and service; 0 sends none.",
        "200",
        |s, v| {
            s.sim.requests_per_tick = parse::whole_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_SIM_POD_START_MS",
        "Simulated cluster: milliseconds a new pod takes to become ready; 0 is at once.",
        "300",
        |s, v| {
            s.sim.pod_start = parse::millis_or_zero(v)?;
            Ok(())
        },
    ),
];

/// The documentation of every `TORONTO_DEPLOYER_*` variable: the deployer's own, then
/// the Kubernetes target's.
pub fn docs() -> Vec<VarDoc> {
    let mut docs = vars::docs(DEPLOYER_VARS);
    docs.extend(vars::docs(crate::kube::KUBE_VARS));
    docs
}

fn lease(v: &str) -> Result<Duration, ValueError> {
    let lease = parse::seconds(v)?;
    if lease < Duration::from_secs(1) {
        return Err(ValueError::Invalid("must be at least 1 second".into()));
    }
    Ok(lease)
}

fn pairs(v: &str) -> Result<BTreeMap<String, String>, ValueError> {
    let mut out = BTreeMap::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, t) = pair
            .split_once('=')
            .map(|(k, t)| (k.trim(), t.trim()))
            .filter(|(k, t)| !k.is_empty() && !t.is_empty())
            .ok_or_else(|| {
                ValueError::Invalid(format!("{pair:?} is not of the form service=template"))
            })?;
        if out.insert(k.to_owned(), t.to_owned()).is_some() {
            return Err(ValueError::Invalid(format!("service {k:?} is named twice")));
        }
    }
    Ok(out)
}

fn canary_steps(v: &str) -> Result<Vec<u8>, ValueError> {
    let steps = v
        .split(',')
        .map(parse::whole_or_zero::<u8>)
        .collect::<Result<Vec<_>, _>>()?;
    crate::engine::check_weights(&steps).map_err(|e| ValueError::Invalid(e.to_string()))?;
    Ok(steps)
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&vars::env_vars())
    }

    /// Reads the settings from `vars` (unknown `TORONTO_DEPLOYER_*` names are refused).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        vars::refuse_unknown(PREFIX, &docs(), vars)?;
        let mut s = Self::default();
        vars::read(&mut s, DEPLOYER_VARS, vars)?;
        // Every template named must exist (a typo would pause every canary).
        for service in std::iter::once("").chain(s.service_templates.keys().map(String::as_str)) {
            if let Err(e) = crate::engine::template_for(service, &s) {
                return Err(SettingsError::Inconsistent(format!(
                    "TORONTO_DEPLOYER_ANALYSIS_TEMPLATE(S): {}",
                    e.replace(" of  ", " ")
                )));
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use toronto_runtime::config::var_map as vars;

    #[test]
    fn the_table_parses_its_defaults_and_names_each_variable_once() {
        let defaults: HashMap<String, String> = docs()
            .iter()
            .map(|v| (v.name.to_owned(), v.default.to_owned()))
            .collect();
        assert_eq!(Settings::from_vars(&defaults).unwrap(), Settings::default());
        let mut names: Vec<&str> = docs().iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), docs().len());
        assert!(names.iter().all(|n| n.starts_with(PREFIX)));
    }

    #[test]
    fn typos_zero_and_bad_values_name_the_variable() {
        let err = Settings::from_vars(&vars(&[("TORONTO_DEPLOYER_LEASE_SECS", "5")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable TORONTO_DEPLOYER_LEASE_SECS (did you mean TORONTO_DEPLOYER_LEASE_SECONDS?)"
        );
        // The Kubernetes target's variables are known too.
        assert!(Settings::from_vars(&vars(&[("TORONTO_DEPLOYER_GATEWAY", "infra/gw")])).is_ok());
        for (var, value, needle) in [
            ("TORONTO_DEPLOYER_SIM_TICK_MS", "0", "must be more than 0"),
            (
                "TORONTO_DEPLOYER_ANALYSIS_INTERVAL_MS",
                "0",
                "must be more than 0",
            ),
            ("TORONTO_DEPLOYER_LEASE_SECONDS", "0.5", "at least 1 second"),
            ("TORONTO_DEPLOYER_TARGET", "mars", "simulated, kubernetes"),
            ("TORONTO_DEPLOYER_CANARY_STEPS", "10,x", "`x`"),
        ] {
            let err = Settings::from_vars(&vars(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(var) && err.contains(needle), "{err}");
        }
        let s = Settings::from_vars(&vars(&[
            ("TORONTO_DEPLOYER_DRIFT_INTERVAL_SECONDS", "0"),
            ("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", "0.25"),
            ("TORONTO_DEPLOYER_TARGET", "kubernetes"),
        ]))
        .unwrap();
        let err = Settings::from_vars(&vars(&[(
            "TORONTO_DEPLOYER_ANALYSIS_TEMPLATES",
            "shop=istoi",
        )]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`istoi` of shop does not exist"), "{err}");
        assert!(s.drift_interval.is_zero());
        assert_eq!(s.step_pause, Duration::from_millis(250));
        assert_eq!(s.target, TargetKind::Kubernetes);
    }
}
