//! The planner's own settings, from `TORONTO_PLANNER_*` variables.

use std::collections::HashMap;
use std::time::Duration;

use toronto_runtime::config::{SettingsError, ValueError, Var, parse, vars};

/// How plans are built and run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long a peer (security, QA) or the deployer may take to answer a step.
    pub gate_timeout: Duration,
    /// Roles whose members may approve or reject a plan.
    pub approver_roles: Vec<String>,
    /// Environments whose plans need a human approval.
    pub approval_environments: Vec<String>,
    /// Environments whose deploys need the QA gate.
    pub qa_environments: Vec<String>,
    /// The QA suite asked for.
    pub qa_suite: String,
    /// Attempts at handing a task to the deployer before the plan fails.
    pub execute_attempts: u32,
    /// How long one planner instance owns a plan's execution before another may take
    /// it over (also the runner's ack deadline).
    pub lease: Duration,
    /// Promotion order: a deploy to the first environment needs the same version to
    /// have succeeded in the second.
    pub promotion: Vec<(String, String)>,
    /// Windows in which deploys to an environment are refused.
    pub freeze_windows: Vec<FreezeWindow>,
    /// Roles that may override the policy gate.
    pub admin_roles: Vec<String>,
    /// Environments whose deploys pass the error-budget gate (asked of the monitor).
    pub budget_environments: Vec<String>,
    /// Environments whose infrastructure changes (first deploy, change of strategy
    /// family, scaling beyond `architect_scale_factor`) pass the architect gate; `*`
    /// for every environment. Any name given also gates `provision_environment`.
    pub architect_environments: Vec<String>,
    /// A scale to more than this many times the replicas running (or fewer than
    /// them divided by it) is reviewed by the architect.
    pub architect_scale_factor: f64,
    /// How often each planner looks at the plan holding every turn and repairs what
    /// a lost event left undone (zero: never).
    pub sweep: Duration,
}

impl Settings {
    /// Whether infrastructure changes in `environment` pass the architect gate.
    pub fn architect_reviews(&self, environment: &str) -> bool {
        self.architect_environments
            .iter()
            .any(|e| e == "*" || e == environment)
    }
}

/// A period in which deploys to an environment are refused (rollbacks still pass).
#[derive(Debug, Clone, PartialEq)]
pub struct FreezeWindow {
    /// The environment.
    pub environment: String,
    /// From (inclusive).
    pub start: chrono::DateTime<chrono::Utc>,
    /// Until (exclusive).
    pub end: chrono::DateTime<chrono::Utc>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            gate_timeout: Duration::from_secs(30),
            approver_roles: vec!["approver".into(), "operator".into(), "admin".into()],
            approval_environments: vec!["production".into()],
            qa_environments: vec!["staging".into(), "production".into()],
            qa_suite: "regression".into(),
            execute_attempts: 3,
            lease: Duration::from_secs(60),
            promotion: vec![("production".into(), "staging".into())],
            freeze_windows: Vec::new(),
            admin_roles: vec!["admin".into()],
            budget_environments: vec!["production".into()],
            architect_environments: Vec::new(),
            architect_scale_factor: 2.0,
            sweep: Duration::from_secs(15),
        }
    }
}

/// The prefix of the planner's variables.
pub const PREFIX: &str = "TORONTO_PLANNER_";

/// Every `TORONTO_PLANNER_*` variable: its doc, default and setter.
pub const PLANNER_VARS: &[Var<Settings>] = &[
    Var::new(
        "TORONTO_PLANNER_GATE_TIMEOUT_MS",
        "Milliseconds a peer (security, QA) or the deployer may take to answer a step; no answer fails it.",
        "30000",
        |s, v| {
            s.gate_timeout = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_APPROVER_ROLES",
        "Roles that may approve or reject plans, comma-separated (by default the chat roles operator and admin approve).",
        "approver,operator,admin",
        |s, v| {
            s.approver_roles = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_APPROVAL_ENVIRONMENTS",
        "Environments whose plans need a human approval, comma-separated; empty: none does.",
        "production",
        |s, v| {
            s.approval_environments = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_QA_ENVIRONMENTS",
        "Environments whose deploys pass the QA gate, comma-separated; empty: none does.",
        "staging,production",
        |s, v| {
            s.qa_environments = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_ARCHITECT_ENVIRONMENTS",
        "Environments whose infrastructure changes (first deploy of a service, change of strategy family, scaling beyond the factor) pass the architect gate, comma-separated; `*`: every environment; any name also gates provision_environment; empty: none does.",
        "",
        |s, v| {
            s.architect_environments = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_ARCHITECT_SCALE_FACTOR",
        "A scale to more than this many times the running replicas (or below them divided by it) passes the architect gate (a number above 0; 1 reviews every change).",
        "2",
        |s, v| {
            s.architect_scale_factor = parse::positive_f64(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_QA_SUITE",
        "The QA suite the QA gate asks for.",
        "regression",
        |s, v| {
            s.qa_suite = v.trim().to_owned();
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_EXECUTE_ATTEMPTS",
        "Attempts at handing a task to the deployer before the plan fails.",
        "3",
        |s, v| {
            s.execute_attempts = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_PROMOTION",
        "Promotion order as `target=source` pairs, comma-separated: a version reaches the target only after it succeeded in the source; empty disables.",
        "production=staging",
        |s, v| {
            s.promotion = parse::list(v)
                .iter()
                .map(|pair| promotion(pair))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_FREEZE_WINDOWS",
        "Deploy freezes as `environment=start/end` (RFC 3339), comma-separated, e.g. `production=2026-12-20T00:00:00Z/2027-01-04T00:00:00Z`.",
        "",
        |s, v| {
            s.freeze_windows = parse::list(v)
                .iter()
                .map(|w| freeze_window(w))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_ADMIN_ROLES",
        "Roles that may override the policy gate with a recorded reason, comma-separated.",
        "admin",
        |s, v| {
            s.admin_roles = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_BUDGET_ENVIRONMENTS",
        "Environments whose deploys need error budget left (asked of the monitor; fixes pass), comma-separated; empty: none.",
        "production",
        |s, v| {
            s.budget_environments = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_LEASE_SECONDS",
        "Seconds a planner instance owns a plan before another may take it over (fractions allowed; longer than the gate timeout).",
        "60",
        |s, v| {
            s.lease = parse::seconds(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_PLANNER_SWEEP_SECONDS",
        "Seconds between two sweeps: each planner reads the plan holding every service and environment's turn and does what a lost event would have done (releases a turn whose plan ended, wakes a plan whose rollout ended, runs again a plan nobody worked on for two leases, wakes the first plan queued behind a free turn); 0: never.",
        "15",
        |s, v| {
            s.sweep = parse::seconds_or_zero(v)?;
            Ok(())
        },
    ),
    Var::deprecated(
        "TORONTO_PLANNER_LEASE_MS",
        "Milliseconds a planner instance owns a plan.",
        "TORONTO_PLANNER_LEASE_SECONDS",
        |s, v| {
            s.lease = parse::millis(v)?;
            Ok(())
        },
    ),
];

fn promotion(pair: &str) -> Result<(String, String), ValueError> {
    pair.split_once('=')
        .map(|(t, f)| (t.trim().to_owned(), f.trim().to_owned()))
        .ok_or_else(|| ValueError::Invalid(format!("`{pair}` is not target=source")))
}

fn freeze_window(w: &str) -> Result<FreezeWindow, ValueError> {
    let bad = || {
        ValueError::Invalid(format!(
            "`{w}` is not environment=start/end with RFC 3339 times"
        ))
    };
    let (environment, period) = w.split_once('=').ok_or_else(bad)?;
    let (start, end) = period.split_once('/').ok_or_else(bad)?;
    let parse = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t.trim())
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| bad())
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if end <= start {
        return Err(ValueError::Invalid(format!("`{w}` ends before it starts")));
    }
    Ok(FreezeWindow {
        environment: environment.trim().to_owned(),
        start,
        end,
    })
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&vars::env_vars())
    }

    /// From a set of variables; the ones not given keep their defaults. An unknown
    /// `TORONTO_PLANNER_*` variable is refused.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        vars::refuse_unknown(PREFIX, &vars::docs(PLANNER_VARS), vars)?;
        let mut s = Self::default();
        vars::read(&mut s, PLANNER_VARS, vars)?;
        if s.lease <= s.gate_timeout {
            return Err(SettingsError::Inconsistent(format!(
                "TORONTO_PLANNER_LEASE_SECONDS ({} ms) must be longer than the gate timeout ({} ms)",
                s.lease.as_millis(),
                s.gate_timeout.as_millis()
            )));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_override_defaults_and_bad_values_are_named() {
        let vars: HashMap<String, String> = [
            ("TORONTO_PLANNER_GATE_TIMEOUT_MS", "500"),
            ("TORONTO_PLANNER_APPROVER_ROLES", "sre, release-manager"),
            ("TORONTO_PLANNER_LEASE_SECONDS", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = Settings::from_vars(&vars).unwrap();
        assert_eq!(s.gate_timeout, Duration::from_millis(500));
        assert_eq!(s.approver_roles, vec!["sre", "release-manager"]);
        assert_eq!(s.approval_environments, vec!["production"]);
        let frozen: HashMap<String, String> = [(
            "TORONTO_PLANNER_FREEZE_WINDOWS".to_owned(),
            "production=2026-12-20T00:00:00Z/2027-01-04T00:00:00Z".to_owned(),
        )]
        .into();
        let s = Settings::from_vars(&frozen).unwrap();
        assert_eq!(s.freeze_windows[0].environment, "production");
        let inverted: HashMap<String, String> = [(
            "TORONTO_PLANNER_FREEZE_WINDOWS".to_owned(),
            "production=2027-01-04T00:00:00Z/2026-12-20T00:00:00Z".to_owned(),
        )]
        .into();
        assert!(
            Settings::from_vars(&inverted)
                .unwrap_err()
                .to_string()
                .contains("ends before it starts")
        );
        let bad: HashMap<String, String> = [(
            "TORONTO_PLANNER_GATE_TIMEOUT_MS".to_owned(),
            "soon".to_owned(),
        )]
        .into();
        assert!(
            Settings::from_vars(&bad)
                .unwrap_err()
                .to_string()
                .contains("TORONTO_PLANNER_GATE_TIMEOUT_MS")
        );
        let short: HashMap<String, String> = [(
            "TORONTO_PLANNER_LEASE_SECONDS".to_owned(),
            "0.01".to_owned(),
        )]
        .into();
        assert!(
            Settings::from_vars(&short)
                .unwrap_err()
                .to_string()
                .contains("longer than the gate timeout")
        );
    }

    use toronto_runtime::config::var_map as vars;

    #[test]
    fn the_table_parses_its_defaults_and_names_each_variable_once() {
        let defaults: HashMap<String, String> = PLANNER_VARS
            .iter()
            .filter(|v| v.replaced_by.is_none())
            .map(|v| (v.name.to_owned(), v.default.to_owned()))
            .collect();
        assert_eq!(Settings::from_vars(&defaults).unwrap(), Settings::default());
        let mut names: Vec<&str> = PLANNER_VARS.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PLANNER_VARS.len());
        assert!(names.iter().all(|n| n.starts_with(PREFIX)));
    }

    #[test]
    fn typos_zero_and_the_old_lease_name() {
        let err = Settings::from_vars(&vars(&[("TORONTO_PLANNER_GATE_TIMEOUT", "5")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable TORONTO_PLANNER_GATE_TIMEOUT (did you mean TORONTO_PLANNER_GATE_TIMEOUT_MS?)"
        );
        let err =
            Settings::from_vars(&vars(&[("TORONTO_PLANNER_EXECUTE_ATTEMPTS", "0")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TORONTO_PLANNER_EXECUTE_ATTEMPTS: must be more than 0"
        );
        let s = Settings::from_vars(&vars(&[("TORONTO_PLANNER_LEASE_MS", "90000")])).unwrap();
        assert_eq!(s.lease, Duration::from_secs(90));
    }
}
