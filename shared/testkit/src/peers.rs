//! Stand-ins for the peers a plan talks to: the security and QA agents that give gate
//! verdicts, and a deployer that accepts every execute request and records its
//! idempotency key (a test stops it with [`Peers::stop_deployer`] when a real deployer
//! takes over).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use toronto_protocol::ErrorBody;
use toronto_protocol::tasks::{
    ExecuteAccepted, ExecuteRequest, GateVerdict, QaTestRequest, SecurityScanRequest,
};
use toronto_runtime::service::{Request, ServiceHost};

use crate::fake::fake_service;

/// How a fake agent answers a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A passing verdict ("clean").
    Pass,
    /// A failing verdict naming a critical CVE.
    Fail,
    /// No answer at all: the gate times out.
    Silent,
}

impl Peer {
    /// The verdict it gives; `None` when it stays silent.
    pub fn verdict(self) -> Option<GateVerdict> {
        match self {
            Self::Pass => Some(GateVerdict {
                passed: true,
                reason: Some("clean".into()),
                findings: None,
            }),
            Self::Fail => Some(GateVerdict {
                passed: false,
                reason: Some("CVE-2026-1234 in libfoo".into()),
                findings: Some(
                    serde_json::json!([{"id": "CVE-2026-1234", "severity": "critical"}]),
                ),
            }),
            Self::Silent => None,
        }
    }
}

async fn answer(peer: Peer) -> Result<GateVerdict, ErrorBody> {
    match peer.verdict() {
        Some(v) => Ok(v),
        None => std::future::pending().await,
    }
}

/// The running stand-ins.
pub struct Peers {
    /// The fake security agent, the fake QA agent, and (last, unless stopped) the fake
    /// deployer.
    pub hosts: Vec<ServiceHost>,
    /// The idempotency keys the fake deployer accepted, each once, in order.
    pub executed: Arc<Mutex<Vec<String>>>,
    /// How many scans the security agent was asked for.
    pub scans: Arc<Mutex<u32>>,
    deployer: bool,
}

impl Peers {
    /// A passing security and QA agent and the fake deployer.
    pub async fn passing(client: &Client) -> Self {
        Self::start(client, |_| Peer::Pass, Peer::Pass, true).await
    }

    /// The security agent answers its `n`th scan (from 1) as `security(n)`, the QA
    /// agent as `qa`; with `deployer`, a fake deployer serves the execute verbs.
    pub async fn start(
        client: &Client,
        security: impl Fn(u32) -> Peer + Send + Sync + 'static,
        qa: Peer,
        deployer: bool,
    ) -> Self {
        let scans = Arc::new(Mutex::new(0u32));
        let security_host =
            fake_service(client, "fake-security", "toronto://agents/fake-security").await;
        let counter = scans.clone();
        security_host
            .add_endpoint(
                "scan",
                "toronto.agents.security.v1.scan",
                move |_req: Request<SecurityScanRequest>| {
                    let n = {
                        let mut c = counter.lock().unwrap();
                        *c += 1;
                        *c
                    };
                    answer(security(n))
                },
            )
            .await
            .unwrap();
        let qa_host = fake_service(client, "fake-qa", "toronto://agents/fake-qa").await;
        qa_host
            .add_endpoint(
                "test",
                "toronto.agents.qa.v1.test",
                move |_req: Request<QaTestRequest>| answer(qa),
            )
            .await
            .unwrap();
        let mut hosts = vec![security_host, qa_host];
        let executed = Arc::new(Mutex::new(Vec::new()));
        if deployer {
            hosts.push(fake_deployer(client, executed.clone()).await);
        }
        client.flush().await.unwrap();
        Self {
            hosts,
            executed,
            scans,
            deployer,
        }
    }

    /// Stops the fake deployer, so that a real one serves the execute verbs alone.
    pub async fn stop_deployer(&mut self) {
        if std::mem::take(&mut self.deployer)
            && let Some(host) = self.hosts.pop()
        {
            host.stop(Duration::from_millis(100)).await;
        }
    }

    /// Stops every stand-in.
    pub async fn stop(self) {
        for host in self.hosts {
            host.stop(Duration::from_millis(100)).await;
        }
    }
}

/// A deployer that accepts every execute request, recording each idempotency key once.
async fn fake_deployer(client: &Client, executed: Arc<Mutex<Vec<String>>>) -> ServiceHost {
    let host = fake_service(client, "fake-deployer", "toronto://agents/fake-deployer").await;
    for verb in [
        "rollout.start",
        "rollback",
        "scale",
        "environment.provision",
        "environment.teardown",
    ] {
        let seen = executed.clone();
        host.add_endpoint(
            &verb.replace('.', "-"),
            format!("toronto.devops.v1.deployer.{verb}"),
            move |req: Request<ExecuteRequest>| {
                let key = req.data().idempotency_key.clone();
                {
                    let mut seen = seen.lock().unwrap();
                    if !seen.contains(&key) {
                        seen.push(key.clone());
                    }
                }
                async move {
                    Ok::<_, ErrorBody>(ExecuteAccepted {
                        reference: Some(format!("rollout-{key}")),
                    })
                }
            },
        )
        .await
        .unwrap();
    }
    host
}
