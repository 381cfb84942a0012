//! `toronto up --demo`: everything a first look needs beside the five services, all of
//! it labelled as a demo. Demo security and QA peers that answer every gate (they scan
//! and test nothing), the service `shop` at 1.0.0 in `staging` and `production` on the
//! simulated cluster, an availability SLO for it in each environment, fed by the
//! simulated traffic and evaluated with SLO time compressed ([`TIME_SCALE`]), and the
//! demo incident policy (`deploy/demo/incident-policy.yaml`: an on-call schedule of two,
//! escalation, severity rules, a playbook that rolls back the change linked to an
//! incident). [`incident`] plays the incident story against it (`toronto demo incident`).

pub mod incident;
mod story;

use std::time::Duration;

use anyhow::Context;
use toronto_protocol::alerts::{SloDefinition, SloPut};
use toronto_protocol::rollout::{DriftCheck, DriftReport, Rollout, RolloutRef, SimService};
use toronto_protocol::tasks::{
    DeployTask, ExecuteAccepted, ExecuteRequest, GateVerdict, PlanTask, QaTestRequest,
    SecurityScanRequest, Strategy,
};
use toronto_protocol::{Encoding, Envelope, ErrorBody, Message, ServiceKind, Subjects};
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::rpc::call;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_runtime::{Config, Metrics};

/// The demo service.
pub const SERVICE: &str = "shop";
/// Its first version.
pub const FIRST_VERSION: &str = "1.0.0";
/// The environments it runs in.
pub const ENVIRONMENTS: [&str; 2] = ["staging", "production"];
/// The demo's two operators: the on-call schedule of the demo policy takes turns
/// between them, and one approves what the other asks for.
pub const OPERATORS: [&str; 2] = ["alice", "bob"];
/// SLO time compression of the demo: SLO durations are divided by it, so 1 h of SLO
/// time lasts 10 s and the 30-day window 2 h (`TORONTO_MONITOR_TIME_SCALE` wins).
pub const TIME_SCALE: f64 = 360.0;
/// The demo incident policy, built in from `deploy/demo/incident-policy.yaml`.
pub const INCIDENT_POLICY: &str = include_str!("../../../deploy/demo/incident-policy.yaml");
/// Where the demo incident policy lives in the repository.
pub const INCIDENT_POLICY_PATH: &str = "deploy/demo/incident-policy.yaml";

/// Variables the demo sets when the environment does not: SLO time compressed, SLOs
/// evaluated twice a second, recovery asked about twice a second.
pub const DEMO_VARS: [(&str, &str); 5] = [
    ("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", "3"),
    ("TORONTO_MONITOR_TIME_SCALE", "360"),
    ("TORONTO_MONITOR_SLO_INTERVAL_MS", "500"),
    ("TORONTO_INCIDENT_RECOVERY_POLL_MS", "500"),
    ("TORONTO_INCIDENT_TICK_MS", "250"),
];

/// The monitor's and the incident commander's settings in the demo: their variables,
/// with [`DEMO_VARS`] where unset, and the demo incident policy unless
/// `TORONTO_INCIDENT_POLICY_FILE` names another.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// The deployer's (shorter pauses between steps, so a rollout is quick to watch).
    pub deployer: toronto_deployer::Settings,
    /// The monitor's.
    pub monitor: toronto_monitor::Settings,
    /// The incident commander's.
    pub incident: toronto_incident_commander::Settings,
    /// Where the incident policy comes from.
    pub policy_from: String,
}

impl DemoSettings {
    /// From the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(&toronto_runtime::config::vars::env_vars())
    }

    /// From a set of variables.
    pub fn from_vars(vars: &std::collections::HashMap<String, String>) -> anyhow::Result<Self> {
        let mut vars = vars.clone();
        for (name, value) in DEMO_VARS {
            vars.entry(name.to_owned())
                .or_insert_with(|| value.to_owned());
        }
        let deployer = toronto_deployer::Settings::from_vars(&vars)?;
        let monitor = toronto_monitor::Settings::from_vars(&vars)?;
        let mut incident = toronto_incident_commander::Settings::from_vars(&vars)?;
        let policy_from = match vars.get("TORONTO_INCIDENT_POLICY_FILE") {
            Some(file) if !file.trim().is_empty() => file.trim().to_owned(),
            _ => {
                incident.policy = demo_policy()?;
                format!("{INCIDENT_POLICY_PATH} (built in)")
            }
        };
        Ok(Self {
            deployer,
            monitor,
            incident,
            policy_from,
        })
    }

    /// The SLO time compression in effect.
    pub fn time_scale(&self) -> f64 {
        self.monitor.time_scale
    }

    /// The settings `toronto up` gives the services.
    pub fn overrides(&self) -> crate::up::Overrides {
        crate::up::Overrides {
            deployer: Some(self.deployer.clone()),
            monitor: Some(self.monitor.clone()),
            incident: Some(self.incident.clone()),
        }
    }

    /// What `toronto up --demo` says about the demo, one line each.
    pub fn describe(&self) -> Vec<String> {
        let policy = &self.incident.policy;
        let names = |v: Vec<&str>| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        vec![
            format!(
                "DEMO on: demo security and QA agents answer every gate (they check nothing); \
                 `{SERVICE}` {FIRST_VERSION} runs in {} on the simulated cluster (a simulation)",
                ENVIRONMENTS.join(" and ")
            ),
            format!(
                "DEMO SLOs {}: {}",
                ENVIRONMENTS
                    .map(|e| slo_name(e, self.time_scale()))
                    .join(", "),
                compression(self.time_scale())
            ),
            format!(
                "DEMO incident policy {}: schedules {}; escalation {}; playbooks {}; \
                 `toronto demo incident` plays an incident from a bad change to its postmortem",
                self.policy_from,
                names(policy.schedules.iter().map(|s| s.name.as_str()).collect()),
                names(
                    policy
                        .escalation_policies
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect()
                ),
                names(policy.playbooks.iter().map(|p| p.name.as_str()).collect()),
            ),
        ]
    }
}

/// The demo incident policy, parsed.
pub fn demo_policy() -> anyhow::Result<toronto_incident_commander::settings::Policy> {
    toronto_incident_commander::settings::Policy::from_yaml(INCIDENT_POLICY)
        .map_err(|e| anyhow::anyhow!("{INCIDENT_POLICY_PATH}: {e}"))
}

/// How long `secs` of real time is, said briefly (`10 s`, `2 h`, `1 h 30 min`).
pub fn brief(secs: f64) -> String {
    if secs < 120.0 {
        return format!("{} s", (secs * 10.0).round() / 10.0);
    }
    let minutes = (secs / 60.0).round() as u64;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// What a time compression means, said once for users: `SLO time compressed 360x: 1 h
/// of SLO time lasts 10 s, the 30-day window 2 h`; at 1, that SLO time is real.
pub fn compression(scale: f64) -> String {
    if scale == 1.0 {
        return "SLO time is real time (not compressed)".to_owned();
    }
    format!(
        "SLO time compressed {}x: 1 h of SLO time lasts {}, the 30-day window {}",
        scale_label(scale),
        brief(3600.0 / scale),
        brief(30.0 * 86_400.0 / scale)
    )
}

fn scale_label(scale: f64) -> String {
    if scale.fract() == 0.0 {
        format!("{scale:.0}")
    } else {
        format!("{scale}")
    }
}

/// The demo SLO's name in `env`: it says the time is compressed, and by how much
/// (`demo-availability-production-compressed-360x`).
pub fn slo_name(env: &str, scale: f64) -> String {
    if scale == 1.0 {
        format!("demo-availability-{env}")
    } else {
        format!(
            "demo-availability-{env}-compressed-{}x",
            scale_label(scale).replace('.', "-")
        )
    }
}

/// The time compression a demo SLO's name says (1 when it says none).
pub fn scale_of(slo_name: &str) -> Option<f64> {
    let rest = slo_name.strip_prefix("demo-availability-")?;
    match rest.split_once("-compressed-") {
        None => Some(1.0),
        Some((_, x)) => x.strip_suffix('x')?.replace('-', ".").parse().ok(),
    }
}

const SOURCE: &str = "toronto://demo";

/// The stories of `toronto demo`, played against a running `toronto up --demo`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DemoCommand {
    /// The incident story: a version of `shop` that fails part of its requests reaches
    /// production without a canary (approved by the second operator); the SLO burns,
    /// the alert fires, an incident opens with the change linked, the person on call is
    /// paged, the playbook rolls back, the monitor confirms recovery, the incident
    /// resolves and its postmortem is written. Exits 1 with the reason when a step does
    /// not happen within its limit.
    Incident(incident::IncidentArgs),
}

/// The demo's running parts.
#[derive(Debug)]
pub struct Demo {
    peers: ServiceHost,
}

impl Demo {
    /// Starts the demo peers and seeds the demo service and its SLOs (idempotent
    /// across restarts).
    pub async fn start(config: &Config, settings: &DemoSettings) -> anyhow::Result<Self> {
        let client = toronto_runtime::connect::options(&config.nats, "toronto-demo")
            .await?
            .connect(toronto_runtime::connect::server_addrs(&config.nats)?)
            .await
            .context("the demo cannot connect to NATS")?;
        let subjects = config.subjects();
        let peers = ServiceHost::start(
            client.clone(),
            ServiceSpec {
                name: "toronto-demo-peers".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "DEMO security and QA agents: they pass every gate and check nothing"
                    .into(),
                metadata: [("demo".to_owned(), "true".to_owned())].into(),
                queue_group: "toronto-demo-peers".into(),
                source: SOURCE.into(),
            },
            EndpointConfig::default(),
            Metrics::new(),
            None,
        )
        .await?;
        peers
            .add_endpoint(
                "scan",
                subjects.peer("security", "scan"),
                |req: Request<SecurityScanRequest>| {
                    let image = req.data().image.clone();
                    async move {
                        Ok::<_, ErrorBody>(GateVerdict {
                            passed: true,
                            reason: Some(format!(
                                "DEMO security agent: {image} passes (nothing was scanned)"
                            )),
                            findings: None,
                        })
                    }
                },
            )
            .await?;
        peers
            .add_endpoint(
                "test",
                subjects.peer("qa", "test"),
                |req: Request<QaTestRequest>| {
                    let suite = req.data().suite.clone();
                    async move {
                        Ok::<_, ErrorBody>(GateVerdict {
                            passed: true,
                            reason: Some(format!(
                                "DEMO QA agent: suite {suite} passes (nothing was tested)"
                            )),
                            findings: None,
                        })
                    }
                },
            )
            .await?;
        for env in ENVIRONMENTS {
            seed(&client, &subjects, env, settings.time_scale()).await?;
        }
        Ok(Self { peers })
    }

    /// Stops the demo peers.
    pub async fn stop(self) {
        self.peers.stop(Duration::from_secs(1)).await;
    }
}

async fn ask<Req: Message, Resp: Message>(
    client: &async_nats::Client,
    subject: String,
    data: Req,
) -> anyhow::Result<Resp> {
    let envelope = Envelope::builder(SOURCE, data).build();
    let reply: Envelope<Resp> = call(
        client,
        &subject,
        &envelope,
        Encoding::Json,
        Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("demo setup: {subject}"))?;
    Ok(reply.data)
}

/// `shop` 1.0.0 running in `env` (first run only) and its availability SLO there.
async fn seed(
    client: &async_nats::Client,
    subjects: &Subjects,
    env: &str,
    time_scale: f64,
) -> anyhow::Result<()> {
    let existing = ask::<_, Rollout>(
        client,
        subjects.command(ServiceKind::Deployer, "rollout.get"),
        RolloutRef {
            service: Some(SERVICE.into()),
            environment: Some(env.into()),
            ..Default::default()
        },
    )
    .await;
    if existing.is_ok() {
        // A restart: the simulated cluster is kept in KV and normally still runs the
        // demo service; if it was lost (a data dir from before the world was kept, or
        // a wiped bucket), put the released version back once instead of leaving an
        // empty cluster that drifts forever.
        let world = ask::<_, SimService>(
            client,
            subjects.command(ServiceKind::Deployer, "sim.get"),
            RolloutRef {
                service: Some(SERVICE.into()),
                environment: Some(env.into()),
                ..Default::default()
            },
        )
        .await;
        if world.is_err() {
            let _: DriftReport = ask(
                client,
                subjects.command(ServiceKind::Deployer, "drift.check"),
                DriftCheck {
                    service: Some(SERVICE.into()),
                    environment: Some(env.into()),
                    remediate: Some(true),
                },
            )
            .await?;
        }
    } else {
        let _: ExecuteAccepted = ask(
            client,
            subjects.command(ServiceKind::Deployer, "rollout.start"),
            ExecuteRequest {
                plan_id: uuid::Uuid::now_v7(),
                idempotency_key: format!("demo:{SERVICE}:{FIRST_VERSION}:{env}"),
                task: PlanTask::Deploy(Box::new(DeployTask {
                    service: SERVICE.into(),
                    version: FIRST_VERSION.into(),
                    image: Some(format!("demo.local/{SERVICE}:{FIRST_VERSION}")),
                    environment: env.into(),
                    strategy: Strategy::Canary { steps: Vec::new() },
                    change: None,
                    fix: false,
                    policy_override: None,
                })),
            },
        )
        .await?;
    }
    let _: SloDefinition = ask(
        client,
        subjects.command(ServiceKind::Monitor, "slo.put"),
        SloPut {
            document: slo(env, time_scale),
        },
    )
    .await?;
    Ok(())
}

/// The demo SLO: 99% of `shop`'s requests in `env` succeed, over 30 days (compressed
/// by `time_scale`, which its name says), from the simulated cluster's metrics on the bus.
pub fn slo(env: &str, time_scale: f64) -> String {
    toronto_monitor::slo::bus_availability(&slo_name(env, time_scale), SERVICE, env, 0.99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_policy_has_two_people_on_call_escalation_and_a_rollback_playbook() {
        use toronto_incident_commander::settings::Action;
        let policy = demo_policy().unwrap();
        let schedule = &policy.schedules[0];
        assert_eq!(schedule.participants, OPERATORS);
        let noon = "2026-11-26T11:59:59Z".parse().unwrap();
        let after = "2026-11-26T12:00:00Z".parse().unwrap();
        assert_ne!(schedule.on_call(noon), schedule.on_call(after), "a handoff");
        assert!(policy.default_escalation.is_some());
        assert!(!policy.severity_rules.is_empty());
        let pb = &policy.playbooks[0];
        assert_eq!(pb.when.change_linked, Some(true));
        assert!(matches!(pb.actions[0], Action::Rollback { .. }));
        assert!(matches!(pb.actions[1], Action::WaitRecovery { .. }));
    }

    #[test]
    fn demo_settings_compress_time_unless_told_otherwise_and_names_say_so() {
        let s = DemoSettings::from_vars(&Default::default()).unwrap();
        assert_eq!(s.time_scale(), TIME_SCALE);
        assert!(s.policy_from.contains(INCIDENT_POLICY_PATH));
        assert!(!s.incident.policy.playbooks.is_empty());
        let name = slo_name("production", s.time_scale());
        assert_eq!(name, "demo-availability-production-compressed-360x");
        assert_eq!(scale_of(&name), Some(360.0));
        assert_eq!(scale_of("demo-availability-staging"), Some(1.0));
        assert_eq!(scale_of(&slo_name("staging", 2.5)), Some(2.5));
        assert!(toronto_monitor::slo::parse(&slo("production", 360.0)).is_ok());
        assert_eq!(
            compression(360.0),
            "SLO time compressed 360x: 1 h of SLO time lasts 10 s, the 30-day window 2 h"
        );
        let own = toronto_runtime::config::var_map(&[("TORONTO_MONITOR_TIME_SCALE", "60")]);
        assert_eq!(DemoSettings::from_vars(&own).unwrap().time_scale(), 60.0);
        for line in s.describe() {
            assert!(line.starts_with("DEMO"), "{line}");
        }
    }
}
