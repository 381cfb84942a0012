//! The architect gate: infrastructure changes (a first deploy, a change of strategy
//! family, a scale beyond the factor, a new environment) ask the architect agent and
//! fail closed; an ordinary deploy does not ask. The architect and the deployer's
//! `rollout.list` are fakes answering on the real server (no such agent runs here).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_protocol::rollout::{Rollout, RolloutList, Rollouts};
use toronto_protocol::tasks::{
    ArchitectReviewRequest, GateVerdict, InfraChange, Plan, PlanState, ProvisionEnvironmentTask,
    ScaleTask, ServiceVersion, StepState, Strategy,
};
use toronto_protocol::{Encoding, Envelope};
use toronto_runtime::Config;

use crate::support::*;

const ENV: &str = "qa";

/// How the fake architect answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Approve,
    Refuse,
    Silent,
    Garbage,
}

struct Architect {
    mode: Arc<Mutex<Mode>>,
    asked: Arc<Mutex<Vec<ArchitectReviewRequest>>>,
}

impl Architect {
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn asked(&self, service: &str) -> Vec<ArchitectReviewRequest> {
        let asked = self.asked.lock().unwrap();
        asked
            .iter()
            .filter(|r| r.service == service)
            .cloned()
            .collect()
    }
}

/// A fake architect on `toronto.agents.architect.v1.review` (replies unsigned).
async fn architect(client: &async_nats::Client) -> Architect {
    let mode = Arc::new(Mutex::new(Mode::Approve));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut sub = client
        .subscribe("toronto.agents.architect.v1.review")
        .await
        .unwrap();
    let (m, a, c) = (mode.clone(), asked.clone(), client.clone());
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Ok(req) =
                toronto_protocol::decode::<ArchitectReviewRequest>(&msg.payload, Encoding::Json)
            {
                a.lock().unwrap().push(req.data);
            }
            let mode = *m.lock().unwrap();
            let body = match mode {
                Mode::Silent => continue,
                Mode::Garbage => b"{ this is not a verdict".to_vec(),
                Mode::Approve | Mode::Refuse => {
                    let verdict = GateVerdict {
                        passed: mode == Mode::Approve,
                        reason: Some(match mode {
                            Mode::Approve => "fits the platform".into(),
                            _ => "a new service needs a capacity review first".into(),
                        }),
                        findings: None,
                    };
                    let env = Envelope::builder("toronto://agents/architect", verdict).build();
                    toronto_protocol::codec::encode(&env, Encoding::Json).unwrap()
                }
            };
            if let Some(reply) = msg.reply {
                let _ = c.publish(reply, body.into()).await;
            }
        }
    });
    client.flush().await.unwrap();
    Architect { mode, asked }
}

/// What the fake deployer says serves each service: its strategy and replicas.
type Serving = Arc<Mutex<HashMap<String, (serde_json::Value, u32)>>>;

/// A fake `deployer.rollout.list`: one succeeded rollout per service in `serving`.
async fn rollout_list(client: &async_nats::Client, serving: Serving) {
    let mut sub = client
        .subscribe("toronto.devops.v1.deployer.rollout.list")
        .await
        .unwrap();
    let c = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Ok(req) = toronto_protocol::decode::<RolloutList>(&msg.payload, Encoding::Json)
            else {
                continue;
            };
            let service = req.data.service.unwrap_or_default();
            let found = serving.lock().unwrap().get(&service).cloned();
            let rollouts = found
                .map(|(strategy, replicas)| {
                    let now = chrono::Utc::now();
                    let r: Rollout = serde_json::from_value(serde_json::json!({
                        "id": uuid::Uuid::now_v7(), "service": service, "environment": ENV,
                        "version": "1.0.0", "image": "x:1.0.0", "strategy": strategy,
                        "replicas": replicas, "phase": "succeeded", "steps": [],
                        "step_index": 0, "weight": 100, "idempotency_key": "k",
                        "created_at": now, "updated_at": now, "finished_at": now
                    }))
                    .unwrap();
                    vec![r]
                })
                .unwrap_or_default();
            let env = Envelope::builder(
                "toronto://test",
                Rollouts {
                    rollouts,
                    next_cursor: None,
                },
            )
            .build();
            let body = toronto_protocol::codec::encode(&env, Encoding::Json).unwrap();
            if let Some(reply) = msg.reply {
                let _ = c.publish(reply, body.into()).await;
            }
        }
    });
    client.flush().await.unwrap();
}

/// A planner whose `qa` environment has the architect gate (no QA gate, no approval).
async fn gated_planner() -> Planner {
    let server = toronto_testkit::NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let settings = toronto_planner::Settings {
        architect_environments: vec![ENV.into()],
        qa_environments: Vec::new(),
        ..settings()
    };
    let rt = toronto_planner::start_with(config, settings, shutdown.clone())
        .await
        .unwrap();
    let client = server.client().await;
    Planner {
        server,
        client,
        shutdown,
        running: tokio::spawn(rt.run_until_shutdown()),
    }
}

/// Waits until the plan's architect gate has decided.
async fn gate(p: &Planner, plan_id: uuid::Uuid) -> Plan {
    for _ in 0..100 {
        let plan = p.plan(plan_id).await.unwrap();
        let s = step(&plan, "architect-review");
        if matches!(s.state, StepState::Succeeded | StepState::Failed) {
            return plan;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the architect gate of {plan_id} never decided");
}

async fn submit<T: toronto_protocol::Message>(p: &Planner, task: T) -> uuid::Uuid {
    let task = Envelope::builder("toronto://test", task).build();
    p.submit(&task).await.unwrap().plan_id
}

fn scale(service: &str, replicas: u32) -> ScaleTask {
    ScaleTask {
        service: service.into(),
        environment: ENV.into(),
        replicas,
    }
}

#[tokio::test]
async fn every_infrastructure_change_asks_the_architect_and_an_ordinary_deploy_does_not() {
    let p = gated_planner().await;
    let _peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let architect = architect(&p.client).await;
    let serving: Serving = Arc::default();
    let canary = serde_json::json!({"kind": "canary"});
    for service in ["same", "switch", "grow", "nudge"] {
        serving
            .lock()
            .unwrap()
            .insert(service.into(), (canary.clone(), 3));
    }
    rollout_list(&p.client, serving).await;

    // First deploy: nothing of `fresh` runs in qa.
    let plan = gate(&p, submit(&p, deploy("fresh", ENV)).await).await;
    assert_eq!(step(&plan, "architect-review").state, StepState::Succeeded);
    assert_eq!(
        step(&plan, "architect-review").reason.as_deref(),
        Some("fits the platform")
    );
    assert_eq!(
        architect.asked("fresh")[0].changes,
        [InfraChange::FirstDeploy]
    );

    // Same strategy family as what serves: an ordinary deploy, not asked.
    let plan = gate(&p, submit(&p, deploy("same", ENV)).await).await;
    let s = step(&plan, "architect-review");
    assert_eq!(s.state, StepState::Succeeded);
    assert!(
        s.reason
            .as_deref()
            .unwrap_or("")
            .contains("not an infrastructure change"),
        "{s:?}"
    );
    assert!(architect.asked("same").is_empty());

    // From canary to rolling.
    let mut rolling = deploy("switch", ENV);
    rolling.strategy = Strategy::Rolling;
    gate(&p, submit(&p, rolling).await).await;
    assert_eq!(
        architect.asked("switch")[0].changes,
        [InfraChange::StrategyChange {
            from: Strategy::Canary { steps: vec![] },
            to: Strategy::Rolling
        }]
    );

    // 3 → 10 replicas is beyond the factor (2); 3 → 4 is not.
    gate(&p, submit(&p, scale("grow", 10)).await).await;
    assert_eq!(
        architect.asked("grow")[0].changes,
        [InfraChange::Scale {
            from: 3,
            to: 10,
            factor: 2.0
        }]
    );
    let plan = gate(&p, submit(&p, scale("nudge", 4)).await).await;
    assert_eq!(step(&plan, "architect-review").state, StepState::Succeeded);
    assert!(architect.asked("nudge").is_empty());

    // A new environment.
    let provision = ProvisionEnvironmentTask {
        name: "qa-pr-7".into(),
        services: vec![ServiceVersion {
            service: "fresh".into(),
            version: "2.4.1".into(),
        }],
        ttl_seconds: 600,
    };
    let plan = gate(&p, submit(&p, provision).await).await;
    assert_eq!(step(&plan, "architect-review").state, StepState::Succeeded);
    assert_eq!(
        architect.asked("qa-pr-7")[0].changes,
        [InfraChange::ProvisionEnvironment]
    );
    p.stop().await;
}

#[tokio::test]
async fn the_architect_gate_fails_closed_with_the_reason() {
    let p = gated_planner().await;
    let _peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    rollout_list(&p.client, Arc::default()).await;

    // No architect at all.
    let plan_id = submit(&p, deploy("a", ENV)).await;
    let failed = p.wait_for_state(plan_id, PlanState::Failed).await;
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("no architect agent answers"), "{reason}");

    let architect = architect(&p.client).await;
    for (service, mode, expected) in [
        (
            "b",
            Mode::Refuse,
            "the architect agent failed the gate: a new service needs a capacity review first",
        ),
        (
            "c",
            Mode::Silent,
            "the architect agent did not answer within",
        ),
        (
            "d",
            Mode::Garbage,
            "the architect agent's answer is unusable",
        ),
    ] {
        architect.set(mode);
        let plan_id = submit(&p, deploy(service, ENV)).await;
        let failed = p.wait_for_state(plan_id, PlanState::Failed).await;
        assert_eq!(step(&failed, "architect-review").state, StepState::Failed);
        assert_eq!(step(&failed, "execute").state, StepState::Pending);
        let reason = failed.reason.unwrap_or_default();
        assert!(reason.contains(expected), "{reason}");
    }
    p.stop().await;
}

/// Once a principal owns `toronto://agents/architect`, only its signed verdict counts.
#[tokio::test]
async fn an_architect_verdict_not_signed_by_the_architect_fails_the_gate() {
    use toronto_protocol::auth::{PrincipalKind, Role};
    let p = gated_planner().await;
    let _peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    rollout_list(&p.client, Arc::default()).await;
    let _architect = architect(&p.client).await;
    let (_, mut owner) = toronto_testkit::principal("architect-agent", &[Role::Operator]);
    owner.kind = PrincipalKind::Agent;
    owner.sources = vec!["toronto://agents/architect".into()];
    toronto_testkit::put_principal(&p.client, &owner).await;

    let plan_id = submit(&p, deploy("e", ENV)).await;
    let failed = p.wait_for_state(plan_id, PlanState::Failed).await;
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("the architect agent's verdict is refused"),
        "{reason}"
    );
    p.stop().await;
}
