//! The deployer's own settings, from `TORONTO_DEPLOYER_*` variables.

use std::collections::HashMap;
use std::time::Duration;

use crate::sim::SimSettings;

/// Which target rollouts land on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// The in-process simulated cluster (a simulation).
    Simulated,
    /// A Kubernetes API server (kubeconfig or in-cluster).
    Kubernetes,
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
    /// Pause after each canary step (and each blue-green phase), with analysis.
    pub step_pause: Duration,
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
    /// The simulated cluster's behaviour.
    pub sim: SimSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            target: TargetKind::Simulated,
            lease: Duration::from_secs(30),
            analysis_interval: Duration::from_secs(1),
            analysis_window: Duration::from_secs(2),
            max_error_ratio_increase: 0.02,
            max_latency_increase: 0.25,
            analysis_timeout: Duration::from_secs(2),
            progress_deadline: Duration::from_secs(600),
            canary_steps: vec![10, 25, 50, 100],
            step_pause: Duration::from_secs(30),
            manual_promotion: Vec::new(),
            scale_down_delay: Duration::from_secs(30),
            abort_on_alert: true,
            drift_interval: Duration::from_secs(60),
            drift_remediate: false,
            sim: SimSettings::default(),
        }
    }
}

/// Every variable the deployer reads, with what it means (the README lists them).
pub const DEPLOYER_VARS: &[(&str, &str)] = &[
    (
        "TORONTO_DEPLOYER_TARGET",
        "`simulated` (default; the in-process simulated cluster) or `kubernetes` (kubeconfig or in-cluster)",
    ),
    (
        "TORONTO_DEPLOYER_LEASE_SECONDS",
        "how long a deployer owns a rollout before another replica may take it over (default 30)",
    ),
    (
        "TORONTO_DEPLOYER_ANALYSIS_INTERVAL_MS",
        "time between canary analyses while a step pauses (default 1000)",
    ),
    (
        "TORONTO_DEPLOYER_ANALYSIS_WINDOW_SECONDS",
        "how far back each analysis looks (default 2)",
    ),
    (
        "TORONTO_DEPLOYER_MAX_ERROR_RATIO_INCREASE",
        "largest error-ratio increase of canary over baseline that passes (default 0.02)",
    ),
    (
        "TORONTO_DEPLOYER_MAX_LATENCY_INCREASE",
        "largest relative latency increase of the canary that passes (default 0.25)",
    ),
    (
        "TORONTO_DEPLOYER_PROGRESS_DEADLINE_SECONDS",
        "time a workload may take to become ready before the rollout fails (default 600)",
    ),
    (
        "TORONTO_DEPLOYER_CANARY_STEPS",
        "canary weights when a deploy names none (default `10,25,50,100`)",
    ),
    (
        "TORONTO_DEPLOYER_STEP_PAUSE_SECONDS",
        "pause with analysis after each canary step and blue-green phase (default 30)",
    ),
    (
        "TORONTO_DEPLOYER_MANUAL_PROMOTION",
        "environments whose rollouts wait for `rollout.promote` between steps (default none)",
    ),
    (
        "TORONTO_DEPLOYER_SCALE_DOWN_DELAY_SECONDS",
        "blue-green: how long the old colour stays up after the switch (default 30)",
    ),
    (
        "TORONTO_DEPLOYER_ABORT_ON_ALERT",
        "abort a rollout when an alert fires on its service (default true)",
    ),
    (
        "TORONTO_DEPLOYER_DRIFT_INTERVAL_SECONDS",
        "time between drift checks of every service; 0 checks only on request (default 60)",
    ),
    (
        "TORONTO_DEPLOYER_DRIFT_REMEDIATE",
        "put the desired spec back when drift is found (default false)",
    ),
    (
        "TORONTO_DEPLOYER_SIM_TICK_MS",
        "simulated cluster: time between traffic ticks (default 100)",
    ),
    (
        "TORONTO_DEPLOYER_SIM_REQUESTS_PER_TICK",
        "simulated cluster: synthetic requests per tick and service (default 200)",
    ),
    (
        "TORONTO_DEPLOYER_SIM_POD_START_MS",
        "simulated cluster: time a new pod takes to become ready (default 300)",
    ),
];

/// A setting could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct SettingsError {
    /// The variable.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads the settings from `vars` (unknown `TORONTO_DEPLOYER_*` names are refused).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let mut s = Self::default();
        for name in vars.keys().filter(|k| k.starts_with("TORONTO_DEPLOYER_")) {
            let known = DEPLOYER_VARS.iter().any(|(n, _)| n == name)
                || crate::kube_vars().iter().any(|(n, _)| n == name);
            if !known {
                return Err(err(name, "unknown variable"));
            }
        }
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        if let Some(v) = get("TORONTO_DEPLOYER_TARGET") {
            s.target = match v {
                "simulated" => TargetKind::Simulated,
                "kubernetes" => TargetKind::Kubernetes,
                _ => {
                    return Err(err(
                        "TORONTO_DEPLOYER_TARGET",
                        "must be `simulated` or `kubernetes`",
                    ));
                }
            };
        }
        let secs = |name: &str, into: &mut Duration| -> Result<(), SettingsError> {
            if let Some(v) = get(name) {
                *into = Duration::from_secs_f64(parse::<f64>(name, v).and_then(|x| {
                    if x >= 0.0 && x.is_finite() {
                        Ok(x)
                    } else {
                        Err(err(name, "must be a number of seconds, 0 or more"))
                    }
                })?);
            }
            Ok(())
        };
        let millis = |name: &str, into: &mut Duration| -> Result<(), SettingsError> {
            if let Some(v) = get(name) {
                *into = Duration::from_millis(parse::<u64>(name, v)?);
            }
            Ok(())
        };
        secs("TORONTO_DEPLOYER_LEASE_SECONDS", &mut s.lease)?;
        millis(
            "TORONTO_DEPLOYER_ANALYSIS_INTERVAL_MS",
            &mut s.analysis_interval,
        )?;
        secs(
            "TORONTO_DEPLOYER_ANALYSIS_WINDOW_SECONDS",
            &mut s.analysis_window,
        )?;
        secs(
            "TORONTO_DEPLOYER_PROGRESS_DEADLINE_SECONDS",
            &mut s.progress_deadline,
        )?;
        secs("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", &mut s.step_pause)?;
        secs(
            "TORONTO_DEPLOYER_SCALE_DOWN_DELAY_SECONDS",
            &mut s.scale_down_delay,
        )?;
        secs(
            "TORONTO_DEPLOYER_DRIFT_INTERVAL_SECONDS",
            &mut s.drift_interval,
        )?;
        millis("TORONTO_DEPLOYER_SIM_TICK_MS", &mut s.sim.tick)?;
        millis("TORONTO_DEPLOYER_SIM_POD_START_MS", &mut s.sim.pod_start)?;
        if let Some(v) = get("TORONTO_DEPLOYER_SIM_REQUESTS_PER_TICK") {
            s.sim.requests_per_tick = parse("TORONTO_DEPLOYER_SIM_REQUESTS_PER_TICK", v)?;
        }
        if let Some(v) = get("TORONTO_DEPLOYER_MAX_ERROR_RATIO_INCREASE") {
            s.max_error_ratio_increase = parse("TORONTO_DEPLOYER_MAX_ERROR_RATIO_INCREASE", v)?;
        }
        if let Some(v) = get("TORONTO_DEPLOYER_MAX_LATENCY_INCREASE") {
            s.max_latency_increase = parse("TORONTO_DEPLOYER_MAX_LATENCY_INCREASE", v)?;
        }
        if let Some(v) = get("TORONTO_DEPLOYER_CANARY_STEPS") {
            let steps = v
                .split(',')
                .map(|w| parse::<u8>("TORONTO_DEPLOYER_CANARY_STEPS", w.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            crate::engine::check_weights(&steps)
                .map_err(|reason| err("TORONTO_DEPLOYER_CANARY_STEPS", &reason))?;
            s.canary_steps = steps;
        }
        if let Some(v) = get("TORONTO_DEPLOYER_MANUAL_PROMOTION") {
            s.manual_promotion = v.split(',').map(|e| e.trim().to_owned()).collect();
        }
        if let Some(v) = get("TORONTO_DEPLOYER_ABORT_ON_ALERT") {
            s.abort_on_alert = parse("TORONTO_DEPLOYER_ABORT_ON_ALERT", v)?;
        }
        if let Some(v) = get("TORONTO_DEPLOYER_DRIFT_REMEDIATE") {
            s.drift_remediate = parse("TORONTO_DEPLOYER_DRIFT_REMEDIATE", v)?;
        }
        if s.sim.tick.is_zero() {
            return Err(err("TORONTO_DEPLOYER_SIM_TICK_MS", "must be more than 0"));
        }
        if s.analysis_interval.is_zero() {
            return Err(err(
                "TORONTO_DEPLOYER_ANALYSIS_INTERVAL_MS",
                "must be more than 0",
            ));
        }
        if s.lease < Duration::from_secs(1) {
            return Err(err(
                "TORONTO_DEPLOYER_LEASE_SECONDS",
                "must be at least 1 second",
            ));
        }
        Ok(s)
    }
}

fn err(name: &str, reason: &str) -> SettingsError {
    SettingsError {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, SettingsError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| err(name, &format!("cannot read {value:?}: {e}")))
}
