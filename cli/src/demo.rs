//! `toronto up --demo`: everything a first look needs beside the five services, all of
//! it labelled as a demo. Demo security and QA peers that answer every gate (they scan
//! and test nothing), the service `shop` at 1.0.0 in `staging` and `production` on the
//! simulated cluster, and an availability SLO for it in each environment, fed by the
//! simulated traffic.

use std::time::Duration;

use anyhow::Context;
use toronto_protocol::alerts::{SloDefinition, SloPut};
use toronto_protocol::rollout::{Rollout, RolloutRef};
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

const SOURCE: &str = "toronto://demo";

/// The demo's running parts.
#[derive(Debug)]
pub struct Demo {
    peers: ServiceHost,
}

impl Demo {
    /// Starts the demo peers and seeds the demo service (idempotent across restarts).
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
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
            seed(&client, &subjects, env).await?;
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
async fn seed(client: &async_nats::Client, subjects: &Subjects, env: &str) -> anyhow::Result<()> {
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
    if existing.is_err() {
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
        SloPut { document: slo(env) },
    )
    .await?;
    Ok(())
}

/// The demo SLO: 99% of `shop`'s requests in `env` succeed, over 30 days, from the
/// simulated cluster's metrics on the bus.
pub fn slo(env: &str) -> String {
    toronto_monitor::slo::bus_availability(&format!("demo-availability-{env}"), SERVICE, env, 0.99)
}
