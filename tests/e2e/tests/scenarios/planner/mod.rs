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
use toronto_testkit::peers::Peers;

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
pub(crate) async fn passing_peers(client: &async_nats::Client) -> Peers {
    Peers::passing(client).await
}

pub(crate) fn step<'a>(plan: &'a Plan, id: &str) -> &'a toronto_protocol::tasks::Step {
    plan.steps
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("plan has no step {id}: {:?}", plan.steps))
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

mod budget;
mod rollout;
