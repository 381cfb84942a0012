//! Task intake through both doors, against a real nats-server.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, Plan, PlanGet, PlanList, PlanState, PlanTask, Plans, ScaleTask,
    Strategy, SubmitAccepted,
};
use toronto_protocol::{Encoding, Envelope, ErrorCode, Message, encode};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;

const SUBMIT: &str = "toronto.devops.v1.planner.submit";

fn deploy(service: &str, environment: &str) -> DeployTask {
    DeployTask {
        service: service.into(),
        version: "2.4.1".into(),
        image: None,
        environment: environment.into(),
        strategy: Strategy::Canary { steps: vec![] },
        change: None,
        fix: false,
        policy_override: None,
    }
}

struct Planner {
    server: NatsServer,
    client: async_nats::Client,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>,
}

/// Short deadlines so that silent peers fail gates quickly in tests.
fn settings() -> toronto_planner::Settings {
    toronto_planner::Settings {
        gate_timeout: Duration::from_millis(800),
        lease: Duration::from_secs(3),
        // Promotion order and the error budget have their own tests; the others go
        // straight to production with no monitor running.
        promotion: Vec::new(),
        budget_environments: Vec::new(),
        ..Default::default()
    }
}

async fn start_planner(
    url: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>,
) {
    let mut config = Config::default();
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start_with(config, settings(), shutdown.clone())
        .await
        .unwrap();
    (shutdown, tokio::spawn(rt.run_until_shutdown()))
}

async fn planner() -> Planner {
    let server = NatsServer::start().await;
    let (shutdown, running) = start_planner(&server.url()).await;
    let client = server.client().await;
    Planner {
        server,
        client,
        shutdown,
        running,
    }
}

impl Planner {
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
        drop(self.server);
    }

    async fn submit<T: Message>(&self, task: &Envelope<T>) -> Result<SubmitAccepted, CallError> {
        call(
            &self.client,
            SUBMIT,
            task,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .map(|r: Envelope<SubmitAccepted>| r.data)
    }

    async fn plan(&self, plan_id: uuid::Uuid) -> Result<Plan, CallError> {
        let req = Envelope::builder("toronto://test", PlanGet { plan_id }).build();
        call(
            &self.client,
            "toronto.devops.v1.planner.plan.get",
            &req,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .map(|r: Envelope<Plan>| r.data)
    }

    async fn plans(&self, service: &str) -> Vec<Plan> {
        self.list(PlanList {
            service: Some(service.into()),
            ..Default::default()
        })
        .await
    }

    async fn list(&self, query: PlanList) -> Vec<Plan> {
        let req = Envelope::builder("toronto://test", query).build();
        call(
            &self.client,
            "toronto.devops.v1.planner.plan.list",
            &req,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .map(|r: Envelope<Plans>| r.data.plans)
        .unwrap()
    }

    async fn cancel(&self, plan_id: uuid::Uuid, by: &str, reason: &str) -> Result<Plan, CallError> {
        let req = Envelope::builder(
            "toronto://test",
            toronto_protocol::tasks::PlanCancel {
                plan_id,
                by: by.into(),
                reason: reason.into(),
            },
        )
        .build();
        call(
            &self.client,
            "toronto.devops.v1.planner.plan.cancel",
            &req,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .map(|r: Envelope<Plan>| r.data)
    }

    async fn wait_for_state(&self, plan_id: uuid::Uuid, state: PlanState) -> Plan {
        let mut last = String::new();
        for _ in 0..150 {
            // Right after a planner was killed, the server can answer "no responders"
            // once while it drops the dead member of the queue group: ask again.
            match self.plan(plan_id).await {
                Ok(plan) if plan.state == state => return plan,
                Ok(plan) => last = format!("{plan:#?}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("plan {plan_id} never reached {state:?}; last seen: {last}");
    }

    async fn wait_for_plans(&self, service: &str, n: usize) -> Vec<Plan> {
        for _ in 0..100 {
            let plans = self.plans(service).await;
            if plans.len() >= n {
                return plans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{service} never had {n} plans");
    }
}

#[tokio::test]
async fn submit_accepts_a_task_once_and_announces_the_plan() {
    let p = planner().await;
    let mut events = p
        .client
        .subscribe("toronto.devops.v1.events.plan.created")
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("shop-api", "production"),
    )
    .build();
    let accepted = p.submit(&task).await.unwrap();
    assert!(!accepted.duplicate);

    let plan = p.plan(accepted.plan_id).await.unwrap();
    assert_eq!(plan.task_id, task.id);
    assert_eq!(plan.requested_by, "toronto://agents/developer/alice");
    assert_eq!(plan.intake, "submit");
    assert!(matches!(&plan.task, PlanTask::Deploy(d) if d.version == "2.4.1"));

    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    let event: Envelope<Plan> = toronto_protocol::decode(&event.payload, Encoding::Json).unwrap();
    assert_eq!(event.data.id, accepted.plan_id);
    assert_eq!(
        event.correlationid, task.correlationid,
        "the event continues the task's flow"
    );
    assert_eq!(event.subject.as_deref(), Some("shop-api"));

    // The same task again: the same plan, no second one.
    let again = p.submit(&task).await.unwrap();
    assert_eq!(again.plan_id, accepted.plan_id);
    assert!(again.duplicate);
    assert_eq!(p.plans("shop-api").await.len(), 1);
    let by_bob = p
        .list(PlanList {
            requested_by: Some("toronto://agents/qa/bob".into()),
            ..Default::default()
        })
        .await;
    assert!(by_bob.is_empty(), "filtered by requester");
    // No security agent answers here: the plan fails closed at its first gate.
    let failed = p.wait_for_state(accepted.plan_id, PlanState::Failed).await;
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("no security agent answers"),
        "{:?}",
        failed.reason
    );
    let failed_plans = p
        .list(PlanList {
            state: Some(PlanState::Failed),
            requested_by: Some("toronto://agents/developer/alice".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(failed_plans.len(), 1);
    // A new task for the same change is a new plan.
    let other = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("shop-api", "staging"),
    )
    .build();
    assert_ne!(p.submit(&other).await.unwrap().plan_id, accepted.plan_id);
    assert!(matches!(
        p.plan(uuid::Uuid::now_v7()).await,
        Err(CallError::Remote(e)) if e.code == ErrorCode::NotFound
    ));
    p.stop().await;
}

#[tokio::test]
async fn a_bad_task_is_rejected_with_every_reason() {
    let p = planner().await;
    let mut task = deploy("Shop_API", "prod uction");
    task.version = "".into();
    task.strategy = Strategy::Canary {
        steps: vec![
            CanaryStep {
                weight: 50,
                pause_seconds: None,
            },
            CanaryStep {
                weight: 25,
                pause_seconds: None,
            },
        ],
    };
    let err = p
        .submit(&Envelope::builder("toronto://test", task).build())
        .await
        .unwrap_err();
    let CallError::Remote(body) = err else {
        panic!("expected a rejection, got {err}")
    };
    assert_eq!(body.code, ErrorCode::BadRequest);
    let reasons: Vec<String> =
        serde_json::from_value(body.details.unwrap()["reasons"].clone()).unwrap();
    assert_eq!(reasons.len(), 5, "{reasons:#?}");
    for expected in [
        "service `Shop_API`",
        "environment `prod uction`",
        "version ``",
        "must increase",
        "last canary step must be 100",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason about {expected}: {reasons:#?}"
        );
    }
    let scale = Envelope::builder(
        "toronto://test",
        ScaleTask {
            service: "shop-api".into(),
            environment: "production".into(),
            replicas: 5000,
        },
    )
    .build();
    let err = p.submit(&scale).await.unwrap_err();
    assert!(err.to_string().contains("replicas 5000"), "{err}");
    assert!(p.plans("shop-api").await.is_empty(), "nothing was planned");
    p.stop().await;
}

#[tokio::test]
async fn the_work_queue_is_the_same_door() {
    let p = planner().await;
    let js = async_nats::jetstream::new(p.client.clone());
    let mut dlq = p
        .client
        .subscribe("toronto.devops.v1.dlq.planner")
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let publish = |bytes: Vec<u8>, msg_id: &str, content_type: &str| {
        let js = js.clone();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        headers.insert("Content-Type", content_type);
        async move {
            js.publish_with_headers("toronto.agents.devops.tasks", headers, bytes.into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };

    // A task published twice with the same Nats-Msg-Id makes one plan, in MessagePack too.
    let task = Envelope::builder("toronto://agents/qa/bob", deploy("cart", "staging")).build();
    let bytes = encode(&task, Encoding::MessagePack).unwrap();
    let first = publish(bytes.clone(), "task-1", "application/cloudevents+msgpack").await;
    let second = publish(bytes, "task-1", "application/cloudevents+msgpack").await;
    assert!(second.duplicate && first.sequence == second.sequence);
    let plans = p.wait_for_plans("cart", 1).await;
    assert_eq!(plans[0].intake, "queue");
    assert_eq!(plans[0].requested_by, "toronto://agents/qa/bob");

    // The same task through the other door is recognised as the same task.
    let again = p.submit(&task).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.plan_id, plans[0].id);

    // Malformed, unknown and invalid tasks are parked with their reasons, never dropped.
    publish(
        b"{not json".to_vec(),
        "bad-1",
        "application/cloudevents+json",
    )
    .await;
    let reason = |m: async_nats::Message| {
        m.headers
            .unwrap()
            .get("Toronto-Dlq-Reason")
            .unwrap()
            .as_str()
            .to_owned()
    };
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parked.payload.as_ref(), b"{not json");
    assert!(reason(parked).contains("malformed"));

    let mut unknown = serde_json::to_value(&task).unwrap();
    unknown["type"] = "ai.toronto.devops.task.teleport.v1".into();
    publish(
        serde_json::to_vec(&unknown).unwrap(),
        "bad-2",
        "application/cloudevents+json",
    )
    .await;
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert!(reason(parked).contains("task.teleport"));

    let invalid = Envelope::builder("toronto://test", deploy("cart", "")).build();
    publish(
        encode(&invalid, Encoding::Json).unwrap(),
        "bad-3",
        "application/cloudevents+json",
    )
    .await;
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert!(reason(parked).contains("environment ``"));

    assert_eq!(p.plans("cart").await.len(), 1, "refused tasks made no plan");
    p.stop().await;
}

#[tokio::test]
async fn a_plan_can_be_cancelled_once() {
    use toronto_protocol::tasks::PlanCancel;
    let p = planner().await;
    let mut events = p
        .client
        .subscribe("toronto.devops.v1.events.plan.cancelled")
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    // A production scale change waits for approval: a plan that is still open.
    let task = Envelope::builder(
        "toronto://test",
        ScaleTask {
            service: "search".into(),
            environment: "production".into(),
            replicas: 4,
        },
    )
    .build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    p.wait_for_state(plan_id, PlanState::Waiting).await;
    let cancel = |by: &str, reason: &str, plan_id| {
        let req = Envelope::builder(
            "toronto://humans/carol",
            PlanCancel {
                plan_id,
                by: by.into(),
                reason: reason.into(),
            },
        )
        .build();
        let client = p.client.clone();
        async move {
            call::<_, Plan>(
                &client,
                "toronto.devops.v1.planner.plan.cancel",
                &req,
                Encoding::Json,
                Duration::from_secs(5),
            )
            .await
            .map(|r| r.data)
        }
    };

    let err = cancel("", "", plan_id).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Remote(e) if e.code == ErrorCode::BadRequest),
        "{err}"
    );
    let cancelled = cancel("carol", "wrong version", plan_id).await.unwrap();
    assert_eq!(cancelled.state, PlanState::Cancelled);
    assert_eq!(cancelled.cancellation.as_ref().unwrap().by, "carol");
    assert_eq!(
        p.plan(plan_id).await.unwrap().state,
        PlanState::Cancelled,
        "stored"
    );
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    let event: Envelope<Plan> = toronto_protocol::decode(&event.payload, Encoding::Json).unwrap();
    assert_eq!(event.data.id, plan_id);

    let again = cancel("carol", "twice", plan_id).await.unwrap_err();
    assert!(
        matches!(&again, CallError::Remote(e) if e.code == ErrorCode::Conflict),
        "{again}"
    );
    let missing = cancel("carol", "no such plan", uuid::Uuid::now_v7())
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, CallError::Remote(e) if e.code == ErrorCode::NotFound),
        "{missing}"
    );
    p.stop().await;
}

// ---- plans running their steps, with peers that pass, fail or never answer ----

use std::sync::{Arc, Mutex};

use toronto_protocol::ErrorBody;
use toronto_protocol::tasks::{
    ExecuteAccepted, ExecuteRequest, GateVerdict, PlanDecision, QaTestRequest, SecurityScanRequest,
    StepState,
};
use toronto_runtime::Metrics;
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};

/// How a fake peer answers.
#[derive(Clone, Copy)]
enum Peer {
    Pass,
    Fail,
    Silent,
}

fn verdict(peer: Peer) -> Option<GateVerdict> {
    match peer {
        Peer::Pass => Some(GateVerdict {
            passed: true,
            reason: Some("clean".into()),
            findings: None,
        }),
        Peer::Fail => Some(GateVerdict {
            passed: false,
            reason: Some("CVE-2026-1234 in libfoo".into()),
            findings: Some(serde_json::json!([{"id": "CVE-2026-1234", "severity": "critical"}])),
        }),
        Peer::Silent => None,
    }
}

/// Testkit peers standing in for the security and QA agents and the deployer (a peer
/// service of ours not built yet). The deployer records each idempotency key it sees.
struct Peers {
    hosts: Vec<ServiceHost>,
    executed: Arc<Mutex<Vec<String>>>,
    scans: Arc<Mutex<u32>>,
}

impl Peers {
    async fn stop(self) {
        for host in self.hosts {
            host.stop(Duration::from_millis(100)).await;
        }
    }
}

async fn peers(client: &async_nats::Client, security: Peer, qa: Peer) -> Peers {
    peers_with(client, move |_| security, qa).await
}

async fn peers_with(
    client: &async_nats::Client,
    security: impl Fn(u32) -> Peer + Send + Sync + 'static,
    qa: Peer,
) -> Peers {
    let spec = |name: &str| ServiceSpec {
        name: name.into(),
        version: "0.0.1".into(),
        description: "test peer".into(),
        metadata: Default::default(),
        queue_group: name.into(),
        source: format!("toronto://agents/{name}"),
    };
    let host = |name: &str| {
        ServiceHost::start(
            client.clone(),
            spec(name),
            EndpointConfig::default(),
            Metrics::new(),
            None,
        )
    };
    let scans = Arc::new(Mutex::new(0u32));
    let security_host = host("fake-security").await.unwrap();
    let counter = scans.clone();
    let security = Arc::new(security);
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
                let answer = verdict(security(n));
                async move {
                    match answer {
                        Some(v) => Ok::<_, ErrorBody>(v),
                        None => std::future::pending().await,
                    }
                }
            },
        )
        .await
        .unwrap();
    let qa_host = host("fake-qa").await.unwrap();
    qa_host
        .add_endpoint(
            "test",
            "toronto.agents.qa.v1.test",
            move |_req: Request<QaTestRequest>| async move {
                match verdict(qa) {
                    Some(v) => Ok::<_, ErrorBody>(v),
                    None => std::future::pending().await,
                }
            },
        )
        .await
        .unwrap();
    let executed = Arc::new(Mutex::new(Vec::new()));
    let deployer = host("fake-deployer").await.unwrap();
    for verb in [
        "rollout.start",
        "rollback",
        "scale",
        "environment.provision",
        "environment.teardown",
    ] {
        let seen = executed.clone();
        deployer
            .add_endpoint(
                verb,
                format!("toronto.devops.v1.deployer.{verb}"),
                move |req: Request<ExecuteRequest>| {
                    let seen = seen.clone();
                    async move {
                        let key = req.data().idempotency_key.clone();
                        let mut seen = seen.lock().unwrap();
                        if !seen.contains(&key) {
                            seen.push(key.clone());
                        }
                        Ok::<_, ErrorBody>(ExecuteAccepted {
                            reference: Some(format!("rollout-{key}")),
                        })
                    }
                },
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    Peers {
        hosts: vec![security_host, qa_host, deployer],
        executed,
        scans,
    }
}

fn step<'a>(plan: &'a Plan, id: &str) -> &'a toronto_protocol::tasks::Step {
    plan.steps
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("plan has no step {id}: {:?}", plan.steps))
}

async fn decide(
    p: &Planner,
    verb: &str,
    plan_id: uuid::Uuid,
    by: &str,
    role: &str,
) -> Result<Plan, CallError> {
    let req = Envelope::builder(
        "toronto://humans/chat",
        PlanDecision {
            plan_id,
            by: by.into(),
            role: role.into(),
            comment: Some("looks fine".into()),
        },
    )
    .build();
    call(
        &p.client,
        &format!("toronto.devops.v1.planner.plan.{verb}"),
        &req,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .map(|r: Envelope<Plan>| r.data)
}

#[tokio::test]
async fn a_staging_deploy_passes_its_gates_and_reaches_the_deployer_once() {
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let mut events = p
        .client
        .subscribe("toronto.devops.v1.events.>")
        .await
        .unwrap();
    let mut notified = p
        .client
        .subscribe("toronto.agents.developer.v1.notify")
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("cart", "staging"),
    )
    .build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    let plan = p.wait_for_state(plan_id, PlanState::Completed).await;
    let steps: Vec<(&str, StepState)> = plan
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.state))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("policy", StepState::Succeeded),
            ("security-scan", StepState::Succeeded),
            ("qa-test", StepState::Succeeded),
            ("execute", StepState::Succeeded)
        ],
        "no approval outside production"
    );
    assert_eq!(
        *peers.executed.lock().unwrap(),
        vec![format!("{plan_id}:execute")]
    );
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        seen.push(
            m.subject
                .to_string()
                .trim_start_matches("toronto.devops.v1.events.")
                .to_owned(),
        );
    }
    for expected in [
        "plan.created",
        "step.started",
        "gate.passed",
        "step.finished",
        "plan.completed",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "no {expected} event in {seen:?}"
        );
    }
    // The requesting peer heard of its plan on its own notify subject.
    let mut told = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), notified.next()).await
    {
        let e: Envelope<Plan> = toronto_protocol::decode(&m.payload, Encoding::Json).unwrap();
        assert_eq!(e.data.id, plan_id);
        told += 1;
    }
    assert_eq!(
        told,
        seen.len(),
        "every event of the plan reached the requester"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_failing_or_silent_gate_fails_the_plan_with_the_reason() {
    let p = planner().await;
    let failing = peers(&p.client, Peer::Fail, Peer::Silent).await;
    let task = Envelope::builder("toronto://test", deploy("cart", "staging")).build();
    let plan = p
        .wait_for_state(p.submit(&task).await.unwrap().plan_id, PlanState::Failed)
        .await;
    let reason = plan.reason.clone().unwrap();
    assert!(
        reason.contains("security-scan") && reason.contains("CVE-2026-1234"),
        "{reason}"
    );
    assert_eq!(
        step(&plan, "security-scan").findings.as_ref().unwrap()[0]["severity"],
        "critical",
        "findings kept"
    );
    assert!(
        failing.executed.lock().unwrap().is_empty(),
        "nothing reached the deployer"
    );
    failing.stop().await;

    let _passing_security = peers(&p.client, Peer::Pass, Peer::Silent).await;
    let task = Envelope::builder("toronto://test", deploy("shop", "staging")).build();
    let plan = p
        .wait_for_state(p.submit(&task).await.unwrap().plan_id, PlanState::Failed)
        .await;
    let reason = plan.reason.unwrap();
    assert!(
        reason.contains("qa-test") && reason.contains("did not answer within 0.8 s"),
        "{reason}"
    );
    p.stop().await;
}

#[tokio::test]
async fn production_needs_an_approver_who_is_not_the_requester() {
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("cart", "production"),
    )
    .build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    let waiting = p.wait_for_state(plan_id, PlanState::Waiting).await;
    assert_eq!(step(&waiting, "approval").state, StepState::Waiting);
    assert!(peers.executed.lock().unwrap().is_empty());

    let own = decide(&p, "approve", plan_id, "alice", "approver")
        .await
        .unwrap_err();
    assert!(
        matches!(&own, CallError::Remote(e) if e.code == ErrorCode::Forbidden),
        "{own}"
    );
    let viewer = decide(&p, "approve", plan_id, "dave", "viewer")
        .await
        .unwrap_err();
    assert!(
        matches!(&viewer, CallError::Remote(e) if e.code == ErrorCode::Forbidden),
        "{viewer}"
    );
    let approved = decide(&p, "approve", plan_id, "carol", "approver")
        .await
        .unwrap();
    assert_eq!(approved.decisions[0].by, "carol");
    let done = p.wait_for_state(plan_id, PlanState::Completed).await;
    assert!(
        step(&done, "approval")
            .reason
            .as_deref()
            .unwrap()
            .contains("approved by carol")
    );
    assert_eq!(peers.executed.lock().unwrap().len(), 1);
    let late = decide(&p, "approve", plan_id, "carol", "approver")
        .await
        .unwrap_err();
    assert!(
        matches!(&late, CallError::Remote(e) if e.code == ErrorCode::Conflict),
        "{late}"
    );

    // A rejection fails the plan.
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("cart", "production"),
    )
    .build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    p.wait_for_state(plan_id, PlanState::Waiting).await;
    decide(&p, "reject", plan_id, "carol", "admin")
        .await
        .unwrap();
    let failed = p.wait_for_state(plan_id, PlanState::Failed).await;
    assert!(failed.reason.unwrap().contains("rejected by carol"));
    assert_eq!(
        peers.executed.lock().unwrap().len(),
        1,
        "the rejected plan never reached the deployer"
    );
    p.stop().await;
}

#[tokio::test]
async fn one_active_plan_per_service_and_environment_the_rest_queue() {
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let first = p
        .submit(
            &Envelope::builder(
                "toronto://agents/developer/alice",
                deploy("cart", "production"),
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(first, PlanState::Waiting).await;
    let second = p
        .submit(
            &Envelope::builder(
                "toronto://agents/developer/bob",
                deploy("cart", "production"),
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    // Another service, or another environment, is not held up.
    let elsewhere = p
        .submit(&Envelope::builder("toronto://test", deploy("cart", "staging")).build())
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(elsewhere, PlanState::Completed).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queue = p
        .list(PlanList {
            service: Some("cart".into()),
            environment: Some("production".into()),
            state: Some(PlanState::Queued),
            ..Default::default()
        })
        .await;
    assert_eq!(
        queue.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![second],
        "the queue is visible"
    );

    decide(&p, "approve", first, "carol", "approver")
        .await
        .unwrap();
    p.wait_for_state(first, PlanState::Completed).await;
    // The turn passes to the queued plan, which runs up to its own approval.
    p.wait_for_state(second, PlanState::Waiting).await;
    assert_eq!(peers.executed.lock().unwrap().len(), 2);
    p.stop().await;
}

#[tokio::test]
async fn a_second_planner_resumes_a_plan_after_the_first_is_killed() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    // The first scan hangs (the planner doing it will be killed); later scans pass.
    let peers = peers_with(
        &client,
        |n| if n == 1 { Peer::Silent } else { Peer::Pass },
        Peer::Pass,
    )
    .await;
    let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_toronto-planner"))
        .env("TORONTO_NATS_URL", server.url())
        .env("TORONTO_HTTP_ADDR", "")
        .env("TORONTO_PLANNER_GATE_TIMEOUT_MS", "2500")
        .env("TORONTO_PLANNER_LEASE_MS", "3000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let task = Envelope::builder("toronto://test", deploy("cart", "staging")).build();
    let mut accepted = None;
    for _ in 0..100 {
        if let Ok(r) = call::<_, SubmitAccepted>(
            &client,
            SUBMIT,
            &task,
            Encoding::Json,
            Duration::from_secs(1),
        )
        .await
        {
            accepted = Some(r.data);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plan_id = accepted.expect("the first planner took the task").plan_id;
    for _ in 0..100 {
        if *peers.scans.lock().unwrap() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *peers.scans.lock().unwrap(),
        1,
        "the first planner is mid-gate"
    );
    first.kill().await.unwrap();
    first.wait().await.unwrap();

    // A second planner (with the lease length of the first) carries on from the stored state.
    let (shutdown, running) = start_planner(&server.url()).await;
    let p = Planner {
        server,
        client,
        shutdown,
        running,
    };
    let plan = p.wait_for_state(plan_id, PlanState::Completed).await;
    assert_eq!(
        step(&plan, "security-scan").attempts,
        2,
        "the interrupted gate ran again"
    );
    assert_eq!(step(&plan, "execute").attempts, 1);
    assert_eq!(
        *peers.executed.lock().unwrap(),
        vec![format!("{plan_id}:execute")],
        "the deployer saw the step once"
    );
    p.stop().await;
}

#[tokio::test]
async fn the_policy_gate_keeps_promotion_order_and_freeze_windows() {
    use toronto_protocol::tasks::{PolicyOverride, RollbackTask};
    let server = NatsServer::start().await;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let now = chrono::Utc::now();
    let policy = toronto_planner::Settings {
        promotion: vec![("production".into(), "staging".into())],
        freeze_windows: vec![toronto_planner::settings::FreezeWindow {
            environment: "qa".into(),
            start: now - chrono::Duration::hours(1),
            end: now + chrono::Duration::hours(1),
        }],
        ..settings()
    };
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start_with(config, policy, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let p = Planner {
        server,
        client,
        shutdown,
        running,
    };
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;

    // Production before staging: refused with the reason.
    let early = p
        .submit(
            &Envelope::builder(
                "toronto://agents/developer/alice",
                deploy("cart", "production"),
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    let failed = p.wait_for_state(early, PlanState::Failed).await;
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap()
            .contains("cart 2.4.1 has not succeeded in staging before production"),
        "{:?}",
        failed.reason
    );

    // A non-admin override is refused; an admin's passes and is recorded.
    let mut task = deploy("cart", "production");
    task.policy_override = Some(PolicyOverride {
        by: "dave".into(),
        role: "developer".into(),
        reason: "hotfix".into(),
    });
    let refused = p
        .submit(&Envelope::builder("toronto://test", task.clone()).build())
        .await
        .unwrap()
        .plan_id;
    let refused = p.wait_for_state(refused, PlanState::Failed).await;
    assert!(refused.reason.unwrap().contains("not an admin role"));
    task.policy_override = Some(PolicyOverride {
        by: "erin".into(),
        role: "admin".into(),
        reason: "hotfix for INC-42".into(),
    });
    let overridden = p
        .submit(&Envelope::builder("toronto://test", task).build())
        .await
        .unwrap()
        .plan_id;
    let waiting = p.wait_for_state(overridden, PlanState::Waiting).await;
    assert!(
        step(&waiting, "policy")
            .reason
            .as_deref()
            .unwrap()
            .contains("overridden by erin (admin): hotfix for INC-42")
    );
    p.client.flush().await.unwrap();
    p.cancel(overridden, "erin", "done testing").await.unwrap();

    // After the same version succeeded in staging, production passes the policy gate.
    let staging = p
        .submit(&Envelope::builder("toronto://test", deploy("cart", "staging")).build())
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(staging, PlanState::Completed).await;
    let promoted = p
        .submit(
            &Envelope::builder(
                "toronto://agents/developer/alice",
                deploy("cart", "production"),
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    let waiting = p.wait_for_state(promoted, PlanState::Waiting).await;
    assert_eq!(step(&waiting, "policy").state, StepState::Succeeded);

    // A frozen environment refuses deploys but lets a rollback through.
    let frozen = p
        .submit(&Envelope::builder("toronto://test", deploy("search", "qa")).build())
        .await
        .unwrap()
        .plan_id;
    let frozen = p.wait_for_state(frozen, PlanState::Failed).await;
    assert!(frozen.reason.unwrap().contains("qa is frozen until"));
    let rollback = p
        .submit(
            &Envelope::builder(
                "toronto://test",
                RollbackTask {
                    service: "search".into(),
                    environment: "qa".into(),
                    target_version: None,
                },
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(rollback, PlanState::Completed).await;
    assert!(
        peers
            .executed
            .lock()
            .unwrap()
            .contains(&format!("{rollback}:execute"))
    );
    p.stop().await;
}

#[tokio::test]
async fn dora_figures_match_a_hand_computed_event_history() {
    use toronto_protocol::tasks::{Change, DoraQuery, DoraReport, PlanState as S, RollbackTask};
    let server = NatsServer::start().await;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start_with(config, settings(), shutdown.clone())
        .await
        .unwrap();
    let metrics = rt.http_addr.unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());

    // The history, as completed-plan events in the stream (times are the events' own).
    let now = chrono::Utc::now();
    let h = chrono::Duration::hours;
    let d = chrono::Duration::days;
    let completed = |task: PlanTask, at: chrono::DateTime<chrono::Utc>| {
        let plan = Plan {
            id: uuid::Uuid::now_v7(),
            task_id: uuid::Uuid::now_v7(),
            task,
            state: S::Completed,
            requested_by: "toronto://test".into(),
            correlationid: "c".into(),
            intake: "submit".into(),
            created_at: at,
            cancellation: None,
            steps: vec![],
            reason: None,
            decisions: vec![],
            updated_at: Some(at),
            artifacts: vec![],
            lease: None,
            delegation: None,
        };
        let mut event = Envelope::builder("toronto://devops/planner", plan).build();
        event.time = Some(at);
        event
    };
    let deploy_at =
        |service: &str, env: &str, version: &str, commit: chrono::DateTime<chrono::Utc>| {
            let mut t = deploy(service, env);
            t.version = version.into();
            t.change = Some(Change {
                commit: Some("abc".into()),
                author: None,
                link: None,
                commit_time: Some(commit),
            });
            PlanTask::Deploy(Box::new(t))
        };
    let rollback = |service: &str| {
        PlanTask::Rollback(RollbackTask {
            service: service.into(),
            environment: "production".into(),
            target_version: None,
        })
    };
    let history = vec![
        completed(
            deploy_at("shop", "production", "1.0", now - d(10) - h(2)),
            now - d(10),
        ), // lead 2 h
        completed(
            deploy_at("shop", "production", "1.1", now - d(5) - h(4)),
            now - d(5),
        ), // lead 4 h, fails
        completed(rollback("shop"), now - d(5) + chrono::Duration::minutes(30)), // restored after 30 min
        completed(
            deploy_at("shop", "production", "1.2", now - d(1) - h(6)),
            now - d(1),
        ), // lead 6 h
        completed(
            deploy_at("shop", "production", "0.9", now - d(40)),
            now - d(40),
        ), // outside the window
        completed(deploy_at("shop", "staging", "1.3", now - h(3)), now - h(1)), // another environment
        completed(
            deploy_at("cart", "production", "7.0", now - h(5)),
            now - h(2),
        ), // another service
    ];
    for event in &history {
        toronto_runtime::jetstream::publish_envelope(
            &js,
            "toronto.devops.v1.events.plan.completed",
            event,
        )
        .await
        .unwrap();
    }

    let query = Envelope::builder(
        "toronto://test",
        DoraQuery {
            service: Some("shop".into()),
            ..Default::default()
        },
    )
    .build();
    let report: DoraReport = call(
        &client,
        "toronto.devops.v1.planner.dora.get",
        &query,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .map(|r: Envelope<DoraReport>| r.data)
    .unwrap();
    assert_eq!(report.deployments, 3);
    assert!(
        (report.deployment_frequency_per_day - 0.1).abs() < 1e-9,
        "{report:?}"
    );
    assert_eq!(report.lead_time_median_seconds, Some(4.0 * 3600.0));
    assert_eq!(report.lead_time_mean_seconds, Some(4.0 * 3600.0));
    assert_eq!(report.failed_changes, 1);
    assert!((report.change_failure_rate.unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(report.time_to_restore_median_seconds, Some(1800.0));

    // All services in production: shop's three and cart's one, no failure for cart.
    let all = Envelope::builder("toronto://test", DoraQuery::default()).build();
    let report: DoraReport = call(
        &client,
        "toronto.devops.v1.planner.dora.get",
        &all,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .map(|r: Envelope<DoraReport>| r.data)
    .unwrap();
    assert_eq!(report.deployments, 4);
    assert_eq!(report.failed_changes, 1);

    let text = http_get(&format!("http://{metrics}/metrics")).await;
    assert!(
        text.contains(
            "toronto_dora_change_failure_rate{service=\"shop\",environment=\"production\"} 0.333"
        ),
        "{text}"
    );
    assert!(
        text.contains("toronto_dora_deployments_per_day{service=\"*\",environment=\"production\"}"),
        "{text}"
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A plain HTTP GET on loopback (no client library needed for one request).
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// check-jsonschema (installed by `scripts/install-tools --test`), which carries the
/// GitHub Actions and GitLab CI schemas.
fn check_jsonschema() -> std::path::PathBuf {
    let path = std::env::var_os("TORONTO_CHECK_JSONSCHEMA_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.tools/venv/bin/check-jsonschema")
        });
    assert!(
        path.is_file(),
        "check-jsonschema not found at {}: run scripts/install-tools --test (pip install check-jsonschema==0.39.0 into .tools/venv)",
        path.display()
    );
    path
}

#[tokio::test]
async fn pipelines_are_generated_and_follow_each_tools_schema() {
    use toronto_protocol::tasks::{CiSystem, Language, PipelineTask, Stages};
    let validator = check_jsonschema();
    let p = planner().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            CiSystem::GithubActions,
            Language::Rust,
            "vendor.github-workflows",
            ".github/workflows/ci.yml",
        ),
        (
            CiSystem::GithubActions,
            Language::Node,
            "vendor.github-workflows",
            ".github/workflows/ci.yml",
        ),
        (
            CiSystem::GitlabCi,
            Language::Python,
            "vendor.gitlab-ci",
            ".gitlab-ci.yml",
        ),
        (
            CiSystem::GitlabCi,
            Language::Java,
            "vendor.gitlab-ci",
            ".gitlab-ci.yml",
        ),
    ];
    for (i, (ci, language, schema, path)) in cases.into_iter().enumerate() {
        let task = PipelineTask {
            service: "shop-api".into(),
            repository: "github.com/acme/shop-api".into(),
            language,
            ci,
            stages: Stages::default(),
            environments: vec!["staging".into(), "production".into()],
            image: Some("ghcr.io/acme/shop-api".into()),
        };
        let plan_id = p
            .submit(&Envelope::builder("toronto://agents/architect/ann", task).build())
            .await
            .unwrap()
            .plan_id;
        let plan = p.wait_for_state(plan_id, PlanState::Completed).await;
        let artifact = &plan.artifacts[0];
        assert_eq!(artifact.path, path);
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&artifact.content).expect("the pipeline parses");
        let text = &artifact.content;
        assert!(
            text.contains("staging") && text.contains("production"),
            "{text}"
        );
        assert!(
            text.contains("toronto.devops.v1.planner.submit"),
            "deploys go through the agent: {text}"
        );
        match ci {
            CiSystem::GithubActions => {
                assert!(
                    doc["jobs"]["deploy-production"]["needs"][0] == "deploy-staging",
                    "{text}"
                );
            }
            CiSystem::GitlabCi => {
                let stages: Vec<&str> = doc["stages"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect();
                assert_eq!(
                    stages,
                    [
                        "build",
                        "test",
                        "scan",
                        "deploy-staging",
                        "deploy-production"
                    ]
                );
            }
        }
        let file = dir.path().join(format!("pipeline-{i}.yml"));
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(&validator)
            .args(["--builtin-schema", schema])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{ci:?}/{language:?} does not follow {schema}:\n{}\n{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn an_exhausted_error_budget_refuses_production_deploys_but_not_fixes() {
    use toronto_protocol::tasks::{RollbackTask, SloStatus};
    let server = NatsServer::start().await;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let monitor = toronto_monitor::start(config.clone(), shutdown.clone())
        .await
        .unwrap();
    let monitor = tokio::spawn(monitor.run_until_shutdown());
    let budgeted = toronto_planner::Settings {
        budget_environments: vec!["production".into()],
        ..settings()
    };
    let rt = toronto_planner::start_with(config, budgeted, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let p = Planner {
        server,
        client,
        shutdown,
        running,
    };
    let _peers = peers(&p.client, Peer::Pass, Peer::Pass).await;

    // The monitor's status bucket says cart has spent its budget.
    let js = async_nats::jetstream::new(p.client.clone());
    let status = js.get_key_value("toronto_slo_status").await.unwrap();
    let spent = SloStatus {
        service: "cart".into(),
        slo: "availability".into(),
        objective: 0.999,
        budget_remaining: -0.25,
        exhausted: true,
        burn_rates: Default::default(),
        evaluated_at: chrono::Utc::now(),
    };
    status
        .put(
            "cart.availability",
            serde_json::to_vec(&spent).unwrap().into(),
        )
        .await
        .unwrap();

    let refused = p
        .submit(
            &Envelope::builder(
                "toronto://agents/developer/alice",
                deploy("cart", "production"),
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    let refused = p.wait_for_state(refused, PlanState::Failed).await;
    assert!(
        refused
            .reason
            .as_deref()
            .unwrap()
            .contains("error budget is exhausted for availability (-25.0% of the budget left)"),
        "{:?}",
        refused.reason
    );

    let mut fix = deploy("cart", "production");
    fix.fix = true;
    let fix = p
        .submit(&Envelope::builder("toronto://agents/developer/alice", fix).build())
        .await
        .unwrap()
        .plan_id;
    let waiting = p.wait_for_state(fix, PlanState::Waiting).await;
    assert!(
        step(&waiting, "error-budget")
            .reason
            .as_deref()
            .unwrap()
            .contains("the change is the fix")
    );

    let other = p
        .submit(&Envelope::builder("toronto://test", deploy("shop", "production")).build())
        .await
        .unwrap()
        .plan_id;
    let waiting = p.wait_for_state(other, PlanState::Waiting).await;
    assert_eq!(
        step(&waiting, "error-budget").reason.as_deref(),
        Some("shop has no SLO")
    );

    // The fix holds cart's production turn while it waits for approval; a rollback
    // needs no budget but queues behind it, so end the fix first.
    p.cancel(fix, "erin", "rolling back instead").await.unwrap();
    let rollback = p
        .submit(
            &Envelope::builder(
                "toronto://test",
                RollbackTask {
                    service: "cart".into(),
                    environment: "production".into(),
                    target_version: None,
                },
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(rollback, PlanState::Completed).await;
    p.stop().await;
    monitor.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_ephemeral_environment_is_torn_down_after_its_ttl() {
    use toronto_protocol::tasks::{ProvisionEnvironmentTask, ServiceVersion};
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let env = |ttl_seconds| ProvisionEnvironmentTask {
        name: "qa-pr-1234".into(),
        services: vec![ServiceVersion {
            service: "cart".into(),
            version: "2.4.1".into(),
        }],
        ttl_seconds,
    };
    let err = p
        .submit(&Envelope::builder("toronto://agents/qa/bob", env(0)).build())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ttl_seconds 0"), "{err}");

    let plan_id = p
        .submit(&Envelope::builder("toronto://agents/qa/bob", env(2)).build())
        .await
        .unwrap()
        .plan_id;
    // Provisioned at once; the teardown waits for the TTL.
    let mut provisioned = None;
    for _ in 0..50 {
        let plan = p.plan(plan_id).await.unwrap();
        if step(&plan, "execute").state == StepState::Succeeded {
            provisioned = Some(plan);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let provisioned = provisioned.expect("the environment was provisioned");
    let due = step(&provisioned, "teardown")
        .not_before
        .expect("a teardown time");
    assert!(due > chrono::Utc::now(), "the teardown is still ahead");
    assert_eq!(step(&provisioned, "teardown").state, StepState::Pending);
    assert_eq!(
        *peers.executed.lock().unwrap(),
        vec![format!("{plan_id}:execute")]
    );

    let done = p.wait_for_state(plan_id, PlanState::Completed).await;
    let torn_down = step(&done, "teardown").finished_at.unwrap();
    assert!(torn_down >= due, "not torn down before its time");
    assert_eq!(
        *peers.executed.lock().unwrap(),
        vec![format!("{plan_id}:execute"), format!("{plan_id}:teardown")]
    );
    p.stop().await;
}

/// The real deployer on its simulated cluster (a simulation), quick enough for a test.
async fn real_deployer(url: &str) -> (CancellationToken, toronto_deployer::Started) {
    let mut config = Config::default();
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = String::new();
    let settings = toronto_deployer::Settings {
        lease: Duration::from_secs(2),
        analysis_interval: Duration::from_millis(200),
        analysis_window: Duration::from_secs(2),
        analysis_timeout: Duration::from_millis(300),
        step_pause: Duration::from_secs(1),
        drift_interval: Duration::ZERO,
        sim: toronto_deployer::SimSettings {
            tick: Duration::from_millis(50),
            pod_start: Duration::from_millis(100),
            ..Default::default()
        },
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let started = toronto_deployer::start_with(config, settings, None, shutdown.clone())
        .await
        .unwrap();
    (shutdown, started)
}

#[tokio::test]
async fn a_plan_ends_with_its_rollout_on_the_real_deployer() {
    let p = planner().await;
    let mut peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    // The fake deployer steps aside for the real one.
    peers
        .hosts
        .pop()
        .unwrap()
        .stop(Duration::from_millis(100))
        .await;
    let (deployer_stop, deployer) = real_deployer(&p.server.url()).await;

    let mut first = deploy("basket", "staging");
    first.version = "1.0.0".into();
    let accepted = p
        .submit(&Envelope::builder("toronto://agents/developer", first).build())
        .await
        .unwrap();
    let plan = p
        .wait_for_state(accepted.plan_id, PlanState::Completed)
        .await;
    let execute = step(&plan, "execute");
    assert!(
        execute
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("shipped 1.0.0 in staging"),
        "{execute:?}"
    );

    // A version that fails: the plan waits for its rollout, then fails with the reason.
    let fault = Envelope::builder(
        "toronto://test",
        toronto_protocol::rollout::SimFault {
            service: "basket".into(),
            environment: "staging".into(),
            version: "2.0.0".into(),
            error_rate: 0.5,
            ..Default::default()
        },
    )
    .build();
    call::<_, toronto_protocol::rollout::SimService>(
        &p.client,
        "toronto.devops.v1.deployer.sim.fault",
        &fault,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut second = deploy("basket", "staging");
    second.version = "2.0.0".into();
    second.strategy = Strategy::Canary {
        steps: vec![
            CanaryStep {
                weight: 50,
                pause_seconds: Some(30),
            },
            CanaryStep {
                weight: 100,
                pause_seconds: None,
            },
        ],
    };
    let accepted = p
        .submit(&Envelope::builder("toronto://agents/developer", second).build())
        .await
        .unwrap();
    let plan = p.wait_for_state(accepted.plan_id, PlanState::Failed).await;
    let reason = plan.reason.clone().unwrap_or_default();
    assert!(reason.contains("aborted and rolled back"), "{reason}");
    assert!(
        step(&plan, "execute").findings.is_some(),
        "the analysis is attached"
    );

    // A chaos experiment: the plan waits for it and completes when it ran its course.
    let chaos = toronto_protocol::tasks::ChaosExperimentTask {
        service: "basket".into(),
        environment: "staging".into(),
        fault: toronto_protocol::tasks::ChaosFault::PodKill { count: 1 },
        duration_seconds: 1,
        abort_conditions: vec![toronto_protocol::tasks::AbortCondition::AlertFiring],
    };
    let accepted = p
        .submit(&Envelope::builder("toronto://agents/qa", chaos).build())
        .await
        .unwrap();
    let plan = p
        .wait_for_state(accepted.plan_id, PlanState::Completed)
        .await;
    let execute = step(&plan, "execute");
    assert!(
        execute
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("completed: ran 1 s; no abort condition held"),
        "{execute:?}"
    );

    deployer_stop.cancel();
    deployer.runtime.run_until_shutdown().await.unwrap();
    peers.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn a_delegated_task_is_answered_in_the_agents_vocabulary() {
    use toronto_protocol::delegation::{
        AcceptTask, AssignTask, ProgressUpdate, RejectTask, TaskCompleted,
    };
    use toronto_protocol::tasks::{CiSystem, Language, PipelineTask, Stages};
    let p = planner().await;
    let mut notify = p
        .client
        .subscribe("toronto.agents.developer.v1.notify")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&p.client).await;
    let assign = |task_id: &str, service: &str| AssignTask {
        task_id: task_id.into(),
        from_role: "developer".into(),
        from_agent: Some("dev-7".into()),
        title: Some("CI for the shop".into()),
        task: PlanTask::Pipeline(PipelineTask {
            service: service.into(),
            repository: "github.com/acme/shop-api".into(),
            language: Language::Rust,
            ci: CiSystem::GithubActions,
            stages: Stages::default(),
            environments: vec!["staging".into()],
            image: None,
        }),
    };
    // Through the work queue, as peers hand tasks over.
    let envelope = Envelope::builder(
        "toronto://agents/developer/dev-7",
        assign("T-42", "shop-api"),
    )
    .build();
    let js = async_nats::jetstream::new(p.client.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
    headers.insert("Content-Type", "application/json");
    js.publish_with_headers(
        "toronto.agents.devops.tasks",
        headers,
        encode(&envelope, Encoding::Json).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut seen = Vec::new();
    let completed = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), notify.next())
            .await
            .expect("the developer hears back")
            .unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let ty = raw["type"].as_str().unwrap().to_owned();
        seen.push(ty.clone());
        if ty == TaskCompleted::message_type().to_string() {
            break serde_json::from_value::<TaskCompleted>(raw["data"].clone()).unwrap();
        }
        if ty == AcceptTask::message_type().to_string() {
            let accept: AcceptTask = serde_json::from_value(raw["data"].clone()).unwrap();
            assert_eq!(accept.task_id, "T-42");
        }
        if ty == ProgressUpdate::message_type().to_string() {
            let update: ProgressUpdate = serde_json::from_value(raw["data"].clone()).unwrap();
            assert_eq!(update.task_id, "T-42");
            assert!((0.0..=1.0).contains(&update.progress));
        }
    };
    assert_eq!(
        seen.first().map(String::as_str),
        Some("ai.toronto.devops.agent.accept_task.v1")
    );
    assert!(
        seen.iter()
            .any(|t| t == "ai.toronto.devops.agent.progress_update.v1"),
        "{seen:?}"
    );
    assert_eq!(completed.task_id, "T-42");
    assert!(completed.success, "{completed:?}");
    assert_eq!(completed.artifacts[0].path, ".github/workflows/ci.yml");

    // A task the planner cannot take is refused with every reason, to the assigner.
    let bad = Envelope::builder(
        "toronto://agents/developer/dev-7",
        assign("T-43", "Shop API"),
    )
    .build();
    let err = p.submit(&bad).await.unwrap_err();
    assert!(matches!(err, CallError::Remote(ref b) if b.code == ErrorCode::BadRequest));
    let reject = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), notify.next())
            .await
            .expect("the developer hears the refusal")
            .unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if raw["type"] == RejectTask::message_type().to_string() {
            break serde_json::from_value::<RejectTask>(raw["data"].clone()).unwrap();
        }
    };
    assert_eq!(reject.task_id, "T-43");
    assert!(
        reject
            .reasons
            .iter()
            .any(|r| r.contains("must be a DNS label")),
        "{reject:?}"
    );
    p.stop().await;
}
