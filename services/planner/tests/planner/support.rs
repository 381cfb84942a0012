//! Shared helpers: a planner on a test server, and fake peers (security, QA, the
//! deployer) that pass, fail or never answer.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{
    DeployTask, Plan, PlanGet, PlanList, PlanState, Plans, Strategy, SubmitAccepted,
};
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;

use toronto_protocol::tasks::PlanDecision;

pub const SUBMIT: &str = "toronto.devops.v1.planner.submit";

pub fn deploy(service: &str, environment: &str) -> DeployTask {
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

pub struct Planner {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub shutdown: CancellationToken,
    pub running: tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>,
}

/// Short deadlines so that silent peers fail gates quickly in tests.
pub fn settings() -> toronto_planner::Settings {
    toronto_planner::Settings {
        gate_timeout: Duration::from_millis(800),
        lease: Duration::from_secs(3),
        sweep: Duration::from_millis(500),
        // Promotion order and the error budget have their own tests; the others go
        // straight to production with no monitor running.
        promotion: Vec::new(),
        budget_environments: Vec::new(),
        ..Default::default()
    }
}

pub async fn start_planner(
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

pub async fn planner() -> Planner {
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
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
        drop(self.server);
    }

    pub async fn submit<T: Message>(
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

    /// Submits a deploy asked by a developer agent; the plan's id.
    pub async fn deploy(&self, task: DeployTask) -> uuid::Uuid {
        let envelope = Envelope::builder("toronto://agents/developer/alice", task).build();
        self.submit(&envelope).await.unwrap().plan_id
    }

    /// Submits `task` signed by `signer`.
    pub async fn submit_as<T: Message>(
        &self,
        task: &Envelope<T>,
        signer: &toronto_runtime::auth::Signer,
    ) -> Result<SubmitAccepted, CallError> {
        toronto_runtime::rpc::call_signed(
            &self.client,
            Some(signer),
            SUBMIT,
            task,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .map(|r: Envelope<SubmitAccepted>| r.data)
    }

    pub async fn plan(&self, plan_id: uuid::Uuid) -> Result<Plan, CallError> {
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

    pub async fn plans(&self, service: &str) -> Vec<Plan> {
        self.list(PlanList {
            service: Some(service.into()),
            ..Default::default()
        })
        .await
    }

    pub async fn list(&self, query: PlanList) -> Vec<Plan> {
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

    pub async fn cancel(
        &self,
        plan_id: uuid::Uuid,
        by: &str,
        reason: &str,
    ) -> Result<Plan, CallError> {
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

    pub async fn wait_for_state(&self, plan_id: uuid::Uuid, state: PlanState) -> Plan {
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

    pub async fn wait_for_plans(&self, service: &str, n: usize) -> Vec<Plan> {
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

pub use toronto_testkit::peers::{Peer, Peers};

/// The fake security and QA agents answering `security` and `qa`, and the fake deployer.
pub async fn peers(client: &async_nats::Client, security: Peer, qa: Peer) -> Peers {
    Peers::start(client, move |_| security, qa, true).await
}

/// Like [`peers`], the security agent answering its `n`th scan as `security(n)`.
pub async fn peers_with(
    client: &async_nats::Client,
    security: impl Fn(u32) -> Peer + Send + Sync + 'static,
    qa: Peer,
) -> Peers {
    Peers::start(client, security, qa, true).await
}

pub fn step<'a>(plan: &'a Plan, id: &str) -> &'a toronto_protocol::tasks::Step {
    plan.steps
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("plan has no step {id}: {:?}", plan.steps))
}

pub async fn decide(
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
    // `by` is a verified principal holding what `role` names.
    use toronto_protocol::auth::Role;
    let roles = match role {
        "approver" => vec![Role::Approver, Role::Operator],
        "admin" => vec![Role::Admin],
        "operator" => vec![Role::Operator],
        _ => vec![],
    };
    let signer = toronto_testkit::person(&p.client, by, &roles, &[]).await;
    toronto_runtime::rpc::call_signed(
        &p.client,
        Some(&signer),
        &format!("toronto.devops.v1.planner.plan.{verb}"),
        &req,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .map(|r: Envelope<Plan>| r.data)
}
