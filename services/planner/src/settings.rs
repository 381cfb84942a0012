//! The planner's own settings, from `TORONTO_PLANNER_*` variables.

use std::collections::HashMap;
use std::time::Duration;

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
        }
    }
}

/// Every `TORONTO_PLANNER_*` variable with what it sets.
pub const PLANNER_VARS: &[(&str, &str)] = &[
    (
        "TORONTO_PLANNER_GATE_TIMEOUT_MS",
        "Milliseconds a peer (security, QA) or the deployer may take to answer a step; no answer fails it (default 30000).",
    ),
    (
        "TORONTO_PLANNER_APPROVER_ROLES",
        "Roles that may approve or reject plans, comma-separated (default `approver,operator,admin`: the chat roles operator and admin approve).",
    ),
    (
        "TORONTO_PLANNER_APPROVAL_ENVIRONMENTS",
        "Environments whose plans need a human approval, comma-separated (default `production`).",
    ),
    (
        "TORONTO_PLANNER_QA_ENVIRONMENTS",
        "Environments whose deploys pass the QA gate, comma-separated (default `staging,production`).",
    ),
    (
        "TORONTO_PLANNER_QA_SUITE",
        "The QA suite the QA gate asks for (default `regression`).",
    ),
    (
        "TORONTO_PLANNER_EXECUTE_ATTEMPTS",
        "Attempts at handing a task to the deployer before the plan fails (default 3).",
    ),
    (
        "TORONTO_PLANNER_PROMOTION",
        "Promotion order as `target=source` pairs, comma-separated: a version reaches the target only after it succeeded in the source (default `production=staging`; empty disables).",
    ),
    (
        "TORONTO_PLANNER_FREEZE_WINDOWS",
        "Deploy freezes as `environment=start/end` (RFC 3339), comma-separated, e.g. `production=2026-12-20T00:00:00Z/2027-01-04T00:00:00Z` (default none).",
    ),
    (
        "TORONTO_PLANNER_ADMIN_ROLES",
        "Roles that may override the policy gate with a recorded reason, comma-separated (default `admin`).",
    ),
    (
        "TORONTO_PLANNER_BUDGET_ENVIRONMENTS",
        "Environments whose deploys need error budget left (asked of the monitor; fixes pass), comma-separated (default `production`).",
    ),
    (
        "TORONTO_PLANNER_LEASE_MS",
        "Milliseconds a planner instance owns a plan before another may take it over (default 60000; more than the gate timeout).",
    ),
];

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn freeze_window(var: &str, w: &str) -> Result<FreezeWindow, String> {
    let bad = || format!("{var}: `{w}` is not environment=start/end with RFC 3339 times");
    let (environment, period) = w.split_once('=').ok_or_else(bad)?;
    let (start, end) = period.split_once('/').ok_or_else(bad)?;
    let parse = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t.trim())
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| bad())
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if end <= start {
        return Err(format!("{var}: `{w}` ends before it starts"));
    }
    Ok(FreezeWindow {
        environment: environment.trim().to_owned(),
        start,
        end,
    })
}

fn millis(var: &str, v: &str) -> Result<Duration, String> {
    v.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{var}: `{v}` is not a whole number of milliseconds"))
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// From a set of variables; the ones not given keep their defaults.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        let mut s = Self::default();
        for (name, _) in PLANNER_VARS {
            let Some(v) = vars.get(*name) else { continue };
            match *name {
                "TORONTO_PLANNER_GATE_TIMEOUT_MS" => s.gate_timeout = millis(name, v)?,
                "TORONTO_PLANNER_APPROVER_ROLES" => s.approver_roles = list(v),
                "TORONTO_PLANNER_APPROVAL_ENVIRONMENTS" => s.approval_environments = list(v),
                "TORONTO_PLANNER_QA_ENVIRONMENTS" => s.qa_environments = list(v),
                "TORONTO_PLANNER_QA_SUITE" => s.qa_suite = v.trim().to_owned(),
                "TORONTO_PLANNER_EXECUTE_ATTEMPTS" => {
                    s.execute_attempts = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("{name}: `{v}` is not a whole number of attempts"))?
                }
                "TORONTO_PLANNER_LEASE_MS" => s.lease = millis(name, v)?,
                "TORONTO_PLANNER_PROMOTION" => {
                    s.promotion = list(v)
                        .into_iter()
                        .map(|pair| {
                            pair.split_once('=')
                                .map(|(t, f)| (t.trim().to_owned(), f.trim().to_owned()))
                                .ok_or_else(|| format!("{name}: `{pair}` is not target=source"))
                        })
                        .collect::<Result<_, _>>()?
                }
                "TORONTO_PLANNER_FREEZE_WINDOWS" => {
                    s.freeze_windows = list(v)
                        .into_iter()
                        .map(|w| freeze_window(name, &w))
                        .collect::<Result<_, _>>()?
                }
                "TORONTO_PLANNER_ADMIN_ROLES" => s.admin_roles = list(v),
                "TORONTO_PLANNER_BUDGET_ENVIRONMENTS" => s.budget_environments = list(v),
                _ => {}
            }
        }
        if s.lease <= s.gate_timeout {
            return Err(format!(
                "TORONTO_PLANNER_LEASE_MS ({} ms) must be longer than the gate timeout ({} ms)",
                s.lease.as_millis(),
                s.gate_timeout.as_millis()
            ));
        }
        if s.execute_attempts == 0 {
            return Err("TORONTO_PLANNER_EXECUTE_ATTEMPTS must be at least 1".into());
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
            ("TORONTO_PLANNER_LEASE_MS", "2000"),
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
                .contains("TORONTO_PLANNER_GATE_TIMEOUT_MS")
        );
        let short: HashMap<String, String> =
            [("TORONTO_PLANNER_LEASE_MS".to_owned(), "10".to_owned())].into();
        assert!(
            Settings::from_vars(&short)
                .unwrap_err()
                .contains("longer than the gate timeout")
        );
    }
}
