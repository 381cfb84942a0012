//! The incident commander's own settings, from `TORONTO_INCIDENT_*` variables, parsed
//! once at start; the policy (severity rules, schedules, escalation policies,
//! playbooks, autonomy) comes from the YAML file named by
//! `TORONTO_INCIDENT_POLICY_FILE`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;
use toronto_protocol::incidents::Severity;
use toronto_runtime::config::{SettingsError, ValueError, Var, parse, vars};

/// How alerts become incidents.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Labels whose values group alerts into one incident.
    pub group_by: Vec<String>,
    /// How long every alert of an incident must stay resolved before it resolves
    /// (hysteresis against flapping).
    pub resolve_hold: Duration,
    /// An alert of the same group firing again within this time after its incident
    /// resolved reopens that incident instead of opening a new one.
    pub reopen_window: Duration,
    /// Rollouts of the affected service that finished this long before the first
    /// alert are linked to the incident.
    pub change_window: Duration,
    /// How often deadlines (escalations, holds, silences) are checked.
    pub tick: Duration,
    /// How often the monitor is asked whether the service recovered.
    pub recovery_poll: Duration,
    /// How long recovery may take to be confirmed before the incident escalates again.
    pub recovery_timeout: Duration,
    /// Largest short-window burn rate that counts as recovered.
    pub recovery_max_burn_rate: f64,
    /// The short window the monitor is asked about (a key of `burn_rates`).
    pub recovery_window: String,
    /// PagerDuty routing keys accepted on `/v2/enqueue` (empty: any non-empty key).
    pub pagerduty_routing_keys: Vec<String>,
    /// Environment of alerts that do not name one.
    pub default_environment: String,
    /// Credentials the HTTP intake asks for (none: open).
    pub http_auth: crate::intake::HttpAuthSettings,
    /// Severity rules, schedules, escalation policies, playbooks, autonomy.
    pub policy: Policy,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            group_by: vec!["service".into(), "environment".into()],
            resolve_hold: Duration::from_secs(30),
            reopen_window: Duration::from_secs(300),
            change_window: Duration::from_secs(3600),
            tick: Duration::from_secs(1),
            recovery_poll: Duration::from_secs(5),
            recovery_timeout: Duration::from_secs(600),
            recovery_max_burn_rate: 1.0,
            recovery_window: "5m".into(),
            pagerduty_routing_keys: Vec::new(),
            default_environment: "production".into(),
            http_auth: Default::default(),
            policy: Policy::default(),
        }
    }
}

/// The incident policy (YAML).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Severity when no rule matches.
    pub default_severity: Severity,
    /// Rules over labels, environment, SLO tier and services affected; the first
    /// that matches gives the severity. A linked change raises it one step.
    pub severity_rules: Vec<SeverityRule>,
    /// When no rule matches: the alert's `severity` label (Prometheus, Alertmanager,
    /// PagerDuty) gives the severity, adjusted by environment and SLO tier.
    pub severity_labels: SeverityLabels,
    /// On-call schedules.
    pub schedules: Vec<Schedule>,
    /// Escalation policies.
    pub escalation_policies: Vec<EscalationPolicy>,
    /// The escalation policy of incidents whose service has none of its own.
    pub default_escalation: Option<String>,
    /// Escalation policy per service.
    pub service_escalation: BTreeMap<String, String>,
    /// Playbooks; the first whose conditions hold runs.
    pub playbooks: Vec<Playbook>,
    /// Which incidents playbooks may act on without a human.
    pub autonomy: Autonomy,
    /// Outbound notifications: channels (PagerDuty, Slack, Mattermost, signed
    /// webhooks), people's chat ids, retries.
    pub notifications: crate::outbound::Notifications,
    /// Blast-radius freezes: severities that freeze, the service-dependency map, what
    /// paused rollouts do when the freeze lifts.
    pub freeze: crate::freeze::FreezePolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default_severity: Severity::Sev3,
            severity_rules: Vec::new(),
            severity_labels: SeverityLabels::default(),
            schedules: Vec::new(),
            escalation_policies: Vec::new(),
            default_escalation: None,
            service_escalation: BTreeMap::new(),
            playbooks: Vec::new(),
            autonomy: Autonomy::default(),
            notifications: crate::outbound::Notifications::default(),
            freeze: crate::freeze::FreezePolicy::default(),
        }
    }
}

/// How an alert's `severity` label maps to a severity when no rule matches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityLabels {
    /// Label value (lower-cased) to severity. Entries given in the policy replace or add
    /// to the defaults: `critical` SEV1; `error`, `high` and `page` (the monitor's fast
    /// burn) SEV2; `warning` and `ticket` (slow burn) SEV3; `info` and `low` SEV4.
    pub map: BTreeMap<String, Severity>,
    /// Environments where the mapping applies as is; anywhere else it is one step
    /// milder.
    pub production_environments: Vec<String>,
    /// SLO tiers (label `slo_tier`) whose incidents are one step worse.
    pub critical_slo_tiers: Vec<String>,
}

impl Default for SeverityLabels {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            production_environments: vec!["production".into(), "prod".into()],
            critical_slo_tiers: vec!["critical".into()],
        }
    }
}

impl SeverityLabels {
    /// The severity a label value maps to: the policy's entry, else the default.
    pub fn severity_of(&self, value: &str) -> Option<Severity> {
        let value = value.trim().to_ascii_lowercase();
        if let Some(sev) = self.map.get(&value) {
            return Some(*sev);
        }
        Some(match value.as_str() {
            "critical" => Severity::Sev1,
            "error" | "high" | "page" => Severity::Sev2,
            "warning" | "ticket" => Severity::Sev3,
            "info" | "low" => Severity::Sev4,
            _ => return None,
        })
    }
}

/// A severity rule: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityRule {
    /// The severity it gives.
    pub severity: Severity,
    /// Labels that must have these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// One of these environments.
    #[serde(default)]
    pub environments: Vec<String>,
    /// One of these SLO tiers (label `slo_tier`).
    #[serde(default)]
    pub slo_tiers: Vec<String>,
    /// At least this many services affected.
    #[serde(default)]
    pub min_services: Option<usize>,
}

pub use crate::schedule::{Override, Schedule};

/// An escalation policy: notify a level, wait for an acknowledgement, go to the next;
/// go round `repeat` more times.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationPolicy {
    /// Its name.
    pub name: String,
    /// The levels, first first.
    pub levels: Vec<EscalationLevel>,
    /// Extra rounds after the first.
    #[serde(default)]
    pub repeat: u32,
}

/// One level of an escalation policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationLevel {
    /// Targets: `user:<name>`, `agent:<role>` or `schedule:<name>`.
    pub notify: Vec<String>,
    /// Seconds to wait for an acknowledgement before the next level (fractions allowed).
    pub ack_timeout_seconds: f64,
    /// Notification channels this level's pages go out on (names from
    /// `notifications.channels`); empty: `notifications.default_channels`.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// A playbook: conditions over the incident and actions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Its name.
    pub name: String,
    /// When it applies.
    #[serde(default)]
    pub when: PlaybookWhen,
    /// What it does, in order.
    pub actions: Vec<Action>,
}

/// Conditions of a playbook; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookWhen {
    /// One of these services.
    #[serde(default)]
    pub services: Vec<String>,
    /// One of these environments.
    #[serde(default)]
    pub environments: Vec<String>,
    /// Labels of the incident with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// At least this severe.
    #[serde(default)]
    pub min_severity: Option<Severity>,
    /// A recent change is (true) or is not (false) linked.
    #[serde(default)]
    pub change_linked: Option<bool>,
}

/// One action of a playbook: `action:` names it, e.g. `{ action: deployer.scale, replicas: 5 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "action", deny_unknown_fields)]
pub enum Action {
    /// Ask the deployer to roll the service back (`deployer.rollback`).
    #[serde(rename = "deployer.rollback")]
    Rollback {
        /// The version to return to (default: the previous one).
        #[serde(default)]
        target_version: Option<String>,
    },
    /// Ask the deployer to scale the service (`deployer.scale`).
    #[serde(rename = "deployer.scale")]
    Scale {
        /// Replicas wanted.
        replicas: u32,
    },
    /// Page someone.
    #[serde(rename = "page")]
    Page {
        /// `user:<name>`, `agent:<role>` or `schedule:<name>`.
        target: String,
    },
    /// Run an HTTP probe (GET); the playbook fails when it does not answer `expect_status`.
    #[serde(rename = "probe")]
    Probe {
        /// The URL.
        url: String,
        /// The status expected (default 200).
        #[serde(default = "ok_status")]
        expect_status: u16,
    },
    /// Wait for the monitor to confirm that the short-window SLI recovered; if it does
    /// not within the timeout, the incident escalates again.
    #[serde(rename = "wait_recovery")]
    WaitRecovery {
        /// Seconds to wait (default: `TORONTO_INCIDENT_RECOVERY_TIMEOUT_MS`).
        #[serde(default)]
        timeout_seconds: Option<f64>,
    },
}

fn ok_status() -> u16 {
    200
}

impl Action {
    /// Whether it changes the target (and so falls under the autonomy policy).
    pub fn changes_target(&self) -> bool {
        matches!(self, Action::Rollback { .. } | Action::Scale { .. })
    }
}

/// Which incidents playbooks may change things for without a human.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Autonomy {
    /// Severities that may act alone.
    pub severities: Vec<Severity>,
    /// Environments that may act alone.
    pub environments: Vec<String>,
}

impl Default for Autonomy {
    fn default() -> Self {
        Self {
            severities: vec![Severity::Sev3, Severity::Sev4],
            environments: vec!["staging".into(), "development".into()],
        }
    }
}

impl Policy {
    /// Parses a YAML policy; the error names the field.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let policy: Policy = serde_path_to_error::deserialize(de).map_err(|e| {
            let (path, inner) = (e.path().to_string(), e.inner().to_string());
            if inner.starts_with(&path) {
                inner
            } else {
                format!("{path}: {inner}")
            }
        })?;
        policy.check()?;
        Ok(policy)
    }

    /// Checks references between its parts.
    pub fn check(&self) -> Result<(), String> {
        let known = |name: &str| self.escalation_policies.iter().any(|p| p.name == name);
        for name in self
            .default_escalation
            .iter()
            .chain(self.service_escalation.values())
        {
            if !known(name) {
                return Err(format!("escalation policy `{name}` is not defined"));
            }
        }
        for schedule in &self.schedules {
            schedule.check()?;
        }
        for p in &self.escalation_policies {
            if p.levels.is_empty() {
                return Err(format!("escalation policy `{}` has no level", p.name));
            }
            for level in &p.levels {
                if level.ack_timeout_seconds <= 0.0 {
                    return Err(format!(
                        "escalation policy `{}`: ack_timeout_seconds must be positive",
                        p.name
                    ));
                }
                for t in &level.notify {
                    self.check_target(t)?;
                }
            }
        }
        self.notifications.check(
            self.escalation_policies
                .iter()
                .flat_map(|p| &p.levels)
                .flat_map(|l| &l.channels),
        )?;
        for pb in &self.playbooks {
            for a in &pb.actions {
                if let Action::Page { target } = a {
                    self.check_target(target)?;
                }
            }
        }
        Ok(())
    }

    fn check_target(&self, target: &str) -> Result<(), String> {
        match target.split_once(':') {
            Some(("user" | "agent", who)) if !who.is_empty() => Ok(()),
            Some(("schedule", name)) if self.schedules.iter().any(|s| s.name == name) => Ok(()),
            Some(("schedule", name)) => Err(format!("schedule `{name}` is not defined")),
            _ => Err(format!(
                "target `{target}` is not user:<name>, agent:<role> or schedule:<name>"
            )),
        }
    }
}

/// The prefix of the incident commander's variables.
pub const PREFIX: &str = "TORONTO_INCIDENT_";

/// Every `TORONTO_INCIDENT_*` variable: its doc, default and setter.
pub const INCIDENT_VARS: &[Var<Settings>] = &[
    Var::new(
        "TORONTO_INCIDENT_GROUP_BY",
        "Labels whose values group alerts into one incident, comma-separated (at least one).",
        "service,environment",
        |s, v| {
            s.group_by = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_RESOLVE_HOLD_MS",
        "Milliseconds every alert of an incident must stay resolved before the incident resolves: hysteresis against flapping; 0 resolves at once.",
        "30000",
        |s, v| {
            s.resolve_hold = parse::millis_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_REOPEN_WINDOW_MS",
        "Milliseconds after its resolution during which an alert of the same group reopens the incident instead of opening a new one; 0 never reopens.",
        "300000",
        |s, v| {
            s.reopen_window = parse::millis_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_CHANGE_WINDOW_MS",
        "Milliseconds before the first alert in which a finished rollout of the service is linked to the incident and raises its severity; 0 links no change.",
        "3600000",
        |s, v| {
            s.change_window = parse::millis_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_TICK_MS",
        "Milliseconds between two checks of deadlines: escalations, resolve holds, silence expiries.",
        "1000",
        |s, v| {
            s.tick = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_RECOVERY_POLL_MS",
        "Milliseconds between two questions to the monitor while recovery is being confirmed.",
        "5000",
        |s, v| {
            s.recovery_poll = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_RECOVERY_TIMEOUT_MS",
        "Milliseconds recovery may take to be confirmed by the monitor before the incident escalates again.",
        "600000",
        |s, v| {
            s.recovery_timeout = parse::millis(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_RECOVERY_MAX_BURN_RATE",
        "Largest short-window burn rate the monitor may report for the service to count as recovered (0 or more).",
        "1.0",
        |s, v| {
            s.recovery_max_burn_rate = parse::non_negative_f64(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_RECOVERY_WINDOW",
        "The short burn-rate window asked of the monitor's SLO status.",
        "5m",
        |s, v| {
            s.recovery_window = v.trim().to_owned();
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_PAGERDUTY_ROUTING_KEYS",
        "Routing keys accepted on POST /v2/enqueue, comma-separated; unset: any non-empty key.",
        "",
        |s, v| {
            s.pagerduty_routing_keys = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_DEFAULT_ENVIRONMENT",
        "Environment of alerts without an `environment` label.",
        "production",
        |s, v| {
            s.default_environment = v.trim().to_owned();
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_INCIDENT_HTTP_BEARER_TOKEN_FILE",
        "File holding the bearer token the HTTP intake (Alertmanager webhook, /api/v2/alerts, /v2/enqueue) asks for, read at start; with basic auth too, either is accepted. Unset (and no basic auth): the intake is open.",
        "",
        |s, v| s.http_auth.set_bearer_file(v),
    ),
    Var::new(
        "TORONTO_INCIDENT_HTTP_BASIC_USER",
        "User name of the basic authentication the HTTP intake asks for (with TORONTO_INCIDENT_HTTP_BASIC_PASSWORD_FILE).",
        "",
        |s, v| s.http_auth.set_basic_user(v),
    ),
    Var::new(
        "TORONTO_INCIDENT_HTTP_BASIC_PASSWORD_FILE",
        "File holding the basic-auth password of TORONTO_INCIDENT_HTTP_BASIC_USER, read at start.",
        "",
        |s, v| s.http_auth.set_basic_password_file(v),
    ),
    Var::new(
        "TORONTO_INCIDENT_POLICY_FILE",
        "YAML file with severity rules, on-call schedules, escalation policies, playbooks and the autonomy policy; unset: SEV3 for everything, no paging.",
        "",
        |s, v| {
            if let Some(path) = parse::optional(v) {
                s.policy = policy_file(&path)?;
            };
            Ok(())
        },
    ),
];

fn policy_file(path: &str) -> Result<Policy, ValueError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ValueError::Invalid(format!("{path}: {e}")))?;
    Policy::from_yaml(&text).map_err(|e| ValueError::Invalid(format!("{path}: {e}")))
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&vars::env_vars())
    }

    /// From a set of variables; the ones not given keep their defaults. An unknown
    /// `TORONTO_INCIDENT_*` variable is refused.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        vars::refuse_unknown(PREFIX, &vars::docs(INCIDENT_VARS), vars)?;
        let mut s = Self::default();
        vars::read(&mut s, INCIDENT_VARS, vars)?;
        s.http_auth.check().map_err(SettingsError::Inconsistent)?;
        if s.group_by.is_empty() {
            return Err(SettingsError::Inconsistent(
                "TORONTO_INCIDENT_GROUP_BY must name at least one label".into(),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
