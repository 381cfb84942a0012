//! The planner with the monitor (the error-budget gate) and with the real deployer
//! (a plan ends with its rollout or chaos experiment), over a real nats-server. The
//! security and QA agents are fakes that pass.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, Plan, PlanGet, PlanState, Strategy, SubmitAccepted,
};
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;

use toronto_protocol::ErrorBody;
use toronto_protocol::tasks::{
    ExecuteAccepted, ExecuteRequest, GateVerdict, QaTestRequest, SecurityScanRequest,
};
use toronto_runtime::Metrics;
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};

const SUBMIT: &str = "toronto.devops.v1.planner.submit";

pub(crate) fn deploy(service: &str, environment: &str) -> DeployTask {
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

pub(crate) struct Planner {
    pub(crate) server: NatsServer,
    pub(crate) client: async_nats::Client,
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
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start_with(config, settings(), shutdown.clone())
        .await
        .unwrap();
    (shutdown, tokio::spawn(rt.run_until_shutdown()))
}

pub(crate) async fn planner() -> Planner {
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
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
        drop(self.server);
    }

    pub(crate) async fn submit<T: Message>(
        &self,
        task: &Envelope<T>,
    ) -> Result<SubmitAccepted, CallError> {
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

    pub(crate) async fn plan(&self, plan_id: uuid::Uuid) -> Result<Plan, CallError> {
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

    /// `who` as a verified principal (an operator and approver) and their key.
    pub(crate) async fn person(&self, who: &str) -> toronto_runtime::auth::Signer {
        use toronto_protocol::auth::Role;
        toronto_testkit::person(&self.client, who, &[Role::Operator, Role::Approver], &[]).await
    }

    pub(crate) async fn cancel(
        &self,
        plan_id: uuid::Uuid,
        by: &str,
        reason: &str,
    ) -> Result<Plan, CallError> {
        let signer = self.person(by).await;
        self.cancel_as(plan_id, &signer, reason).await
    }

    /// Cancels as the holder of `signer`.
    pub(crate) async fn cancel_as(
        &self,
        plan_id: uuid::Uuid,
        signer: &toronto_runtime::auth::Signer,
        reason: &str,
    ) -> Result<Plan, CallError> {
        let req = Envelope::builder(
            "toronto://test",
            toronto_protocol::tasks::PlanCancel {
                plan_id,
                // The planner records the verified signer, whatever this says.
                by: String::new(),
                reason: reason.into(),
            },
        )
        .build();
        toronto_runtime::rpc::call_signed(
            &self.client,
            Some(signer),
            "toronto.devops.v1.planner.plan.cancel",
            &req,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .map(|r: Envelope<Plan>| r.data)
    }

    pub(crate) async fn wait_for_state(&self, plan_id: uuid::Uuid, state: PlanState) -> Plan {
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
}

/// Fake security and QA agents that pass every gate, and a fake deployer that
/// accepts every execute request (a test stops it when the real one takes over).
pub(crate) struct Peers {
    pub(crate) hosts: Vec<ServiceHost>,
}

impl Peers {
    pub(crate) async fn stop(self) {
        for host in self.hosts {
            host.stop(Duration::from_millis(100)).await;
        }
    }
}

fn pass() -> GateVerdict {
    GateVerdict {
        passed: true,
        reason: Some("clean".into()),
        findings: None,
    }
}

pub(crate) async fn passing_peers(client: &async_nats::Client) -> Peers {
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
    let security = host("fake-security").await.unwrap();
    security
        .add_endpoint(
            "scan",
            "toronto.agents.security.v1.scan",
            |_req: Request<SecurityScanRequest>| async { Ok::<_, ErrorBody>(pass()) },
        )
        .await
        .unwrap();
    let qa = host("fake-qa").await.unwrap();
    qa.add_endpoint(
        "test",
        "toronto.agents.qa.v1.test",
        |_req: Request<QaTestRequest>| async { Ok::<_, ErrorBody>(pass()) },
    )
    .await
    .unwrap();
    let deployer = host("fake-deployer").await.unwrap();
    for verb in ["rollout.start", "rollback", "scale"] {
        deployer
            .add_endpoint(
                &verb.replace('.', "-"),
                format!("toronto.devops.v1.deployer.{verb}"),
                |req: Request<ExecuteRequest>| async move {
                    let key = req.data().idempotency_key.clone();
                    Ok::<_, ErrorBody>(ExecuteAccepted {
                        reference: Some(format!("rollout-{key}")),
                    })
                },
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    Peers {
        hosts: vec![security, qa, deployer],
    }
}

pub(crate) fn step<'a>(plan: &'a Plan, id: &str) -> &'a toronto_protocol::tasks::Step {
    plan.steps
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("plan has no step {id}: {:?}", plan.steps))
}

#[tokio::test]
async fn an_exhausted_error_budget_refuses_production_deploys_but_not_fixes() {
    use toronto_protocol::tasks::{RollbackTask, SloStatus};
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
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
    let _peers = passing_peers(&p.client).await;

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

    // `fix: true` is a claim: with no open incident of cart it passes nothing.
    let mut commander_config = toronto_testkit::with_test_admin(Config::default());
    commander_config.nats.urls = vec![p.server.url()];
    commander_config.http.addr = String::new();
    let commander = toronto_incident_commander::start(commander_config, p.shutdown.clone())
        .await
        .unwrap();
    let commander = tokio::spawn(commander.run_until_shutdown());
    let mut fix = deploy("cart", "production");
    fix.fix = true;
    let unfounded = p
        .submit(&Envelope::builder("toronto://agents/developer/alice", fix.clone()).build())
        .await
        .unwrap()
        .plan_id;
    let unfounded = p.wait_for_state(unfounded, PlanState::Failed).await;
    assert!(
        unfounded
            .reason
            .as_deref()
            .unwrap()
            .contains("`fix: true` is refused: cart has no open incident to fix"),
        "{:?}",
        unfounded.reason
    );
    // With an incident of cart open, the same claim is the fix of that incident.
    let opened: Envelope<toronto_protocol::incidents::Incident> = call(
        &p.client,
        "toronto.devops.v1.incident.open",
        &Envelope::builder(
            "toronto://test",
            toronto_protocol::incidents::IncidentOpen {
                title: "cart checkout errors".into(),
                service: "cart".into(),
                environment: "production".into(),
                severity: None,
                labels: Default::default(),
                by: "alice".into(),
            },
        )
        .build(),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
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
            .contains(&format!("the fix of incident {}", opened.data.id)),
        "{:?}",
        step(&waiting, "error-budget").reason
    );
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
                    emergency: false,
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
    commander.await.unwrap().unwrap();
}

/// The real deployer on its simulated cluster (a simulation), quick enough for a test.
pub(crate) async fn real_deployer(url: &str) -> (CancellationToken, toronto_deployer::Started) {
    let mut config = toronto_testkit::with_test_admin(Config::default());
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
    let mut peers = passing_peers(&p.client).await;
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

/// An SLO that exists but has not been evaluated yet is not "no SLO": the error-budget
/// gate waits for its first evaluation instead of passing the deploy.
#[tokio::test]
async fn an_slo_not_yet_evaluated_holds_the_error_budget_gate() {
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    // The monitor evaluates once at start, then only every hour.
    let monitor = toronto_monitor::start_with(
        config.clone(),
        toronto_monitor::Settings {
            slo_interval: Duration::from_secs(3600),
            ..Default::default()
        },
        shutdown.clone(),
    )
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
    let _peers = passing_peers(&p.client).await;
    // basket gets an SLO now, after the monitor's first evaluation.
    let document =
        toronto_monitor::slo::bus_availability("availability", "basket", "production", 0.99);
    let _: Envelope<toronto_protocol::alerts::SloDefinition> = call(
        &p.client,
        "toronto.devops.v1.monitor.slo.put",
        &Envelope::builder(
            "toronto://test",
            toronto_protocol::alerts::SloPut { document },
        )
        .build(),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    let plan_id = p
        .submit(&Envelope::builder("toronto://test", deploy("basket", "production")).build())
        .await
        .unwrap()
        .plan_id;
    let mut held = None;
    for _ in 0..100 {
        let plan = p.plan(plan_id).await.unwrap();
        let budget = step(&plan, "error-budget");
        if budget
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("waiting for the first evaluation of SLO availability"))
        {
            held = Some(plan);
            break;
        }
        assert_ne!(
            budget.state,
            toronto_protocol::tasks::StepState::Succeeded,
            "{budget:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = held.expect("the gate waited for the SLO's first evaluation");
    assert_ne!(held.state, PlanState::Waiting, "not past the gate");
    p.cancel(plan_id, "erin", "done").await.unwrap();
    p.stop().await;
    monitor.await.unwrap().unwrap();
}
