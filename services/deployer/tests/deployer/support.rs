//! Shared helpers: deployers on a simulated cluster over a test server, and what
//! they announce.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_deployer::{Settings, SimCluster, SimSettings, Started, Target};
use toronto_protocol::rollout::{Rollout, RolloutRef, SimService};
use toronto_protocol::tasks::{ExecuteAccepted, ExecuteRequest, PlanTask, Strategy};
use toronto_protocol::{Encoding, Envelope, ErrorCode, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;
pub use toronto_testkit::rollouts::{RolloutEvents, canary, deploy_task, rollout_id};
use uuid::Uuid;

pub const ENV: &str = "production";

/// Short pauses, fast analysis and a quick simulated cluster.
pub fn settings() -> Settings {
    Settings {
        lease: Duration::from_secs(2),
        analysis_interval: Duration::from_millis(200),
        analysis_window: Duration::from_secs(2),
        analysis_timeout: Duration::from_millis(300),
        step_pause: Duration::from_secs(1),
        first_deploy_pause: Duration::from_millis(500),
        scale_down_delay: Duration::from_secs(1),
        progress_deadline: Duration::from_secs(30),
        drift_interval: Duration::ZERO,
        sim: SimSettings {
            tick: Duration::from_millis(50),
            requests_per_tick: 200,
            pod_start: Duration::from_millis(100),
            base_latency: Duration::from_millis(20),
        },
        ..Default::default()
    }
}

pub struct Stack {
    pub _server: NatsServer,
    pub client: async_nats::Client,
    pub sim: SimCluster,
    pub deployers: Vec<(CancellationToken, Started)>,
    pub rollouts: RolloutEvents,
}

pub async fn start_deployer(
    url: &str,
    settings: Settings,
    sim: &SimCluster,
) -> (CancellationToken, Started) {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = String::new();
    config.shutdown_grace_secs = 2;
    let shutdown = CancellationToken::new();
    let started =
        toronto_deployer::start_with(config, settings, Some(sim.clone()), shutdown.clone())
            .await
            .expect("deployer starts");
    (shutdown, started)
}

/// A nats-server, `deployers` deployers sharing one simulated cluster (the deployer
/// judges canaries by the cluster's own counts: no monitor runs here), and the
/// rollout events they publish.
pub async fn stack_with(settings: Settings, deployers: usize) -> Stack {
    let server = NatsServer::start().await;
    let sim = SimCluster::new(settings.sim.clone());
    let mut list = Vec::new();
    for _ in 0..deployers {
        list.push(start_deployer(&server.url(), settings.clone(), &sim).await);
    }
    stack_of(server, sim, list).await
}

/// A nats-server and one deployer per target (each on its own target, which may
/// reach the same cluster), and the rollout events they publish. (`sim` is unused.)
pub async fn stack_on(settings: Settings, targets: Vec<Arc<dyn Target>>) -> Stack {
    let server = NatsServer::start().await;
    let sim = SimCluster::new(settings.sim.clone());
    let mut list = Vec::new();
    for target in targets {
        let mut config = toronto_testkit::with_test_admin(Config::default());
        config.nats.urls = vec![server.url()];
        config.http.addr = String::new();
        config.shutdown_grace_secs = 2;
        let shutdown = CancellationToken::new();
        let started =
            toronto_deployer::start_on(config, settings.clone(), target, shutdown.clone())
                .await
                .expect("deployer starts");
        list.push((shutdown, started));
    }
    stack_of(server, sim, list).await
}

async fn stack_of(
    server: NatsServer,
    sim: SimCluster,
    list: Vec<(CancellationToken, Started)>,
) -> Stack {
    let client = server.client().await;
    let rollouts = RolloutEvents::subscribe(&client).await;
    Stack {
        _server: server,
        client,
        sim,
        deployers: list,
        rollouts,
    }
}

/// A deploy of `version` of `service` to [`ENV`].
pub fn deploy(service: &str, version: &str, strategy: Strategy) -> PlanTask {
    deploy_task(service, version, ENV, strategy)
}

impl Stack {
    pub async fn request<Req: Message, Resp: Message>(
        &self,
        verb: &str,
        data: Req,
    ) -> Result<Resp, CallError> {
        let envelope = Envelope::builder("toronto://test", data).build();
        call(
            &self.client,
            &format!("toronto.devops.v1.deployer.{verb}"),
            &envelope,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .map(|r: Envelope<Resp>| r.data)
    }

    /// Like [`Stack::request`], signed by `signer`.
    pub async fn request_as<Req: Message, Resp: Message>(
        &self,
        verb: &str,
        data: Req,
        signer: &toronto_runtime::auth::Signer,
    ) -> Result<Resp, CallError> {
        let envelope = Envelope::builder("toronto://test", data).build();
        toronto_runtime::rpc::call_signed(
            &self.client,
            Some(signer),
            &format!("toronto.devops.v1.deployer.{verb}"),
            &envelope,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .map(|r: Envelope<Resp>| r.data)
    }

    pub async fn execute(&self, verb: &str, task: PlanTask) -> Result<ExecuteAccepted, CallError> {
        self.request(
            verb,
            ExecuteRequest {
                plan_id: Uuid::now_v7(),
                idempotency_key: Uuid::now_v7().to_string(),
                task,
            },
        )
        .await
    }

    /// Starts a rollout and returns its id.
    pub async fn start(&self, task: PlanTask) -> Uuid {
        let accepted = self.execute("rollout.start", task).await.expect("accepted");
        rollout_id(&accepted)
    }

    pub async fn rollout(&self, id: Uuid) -> Rollout {
        self.request(
            "rollout.get",
            RolloutRef {
                id: Some(id),
                ..Default::default()
            },
        )
        .await
        .expect("rollout.get")
    }

    pub async fn sim_view(&self, service: &str) -> SimService {
        self.request(
            "sim.get",
            RolloutRef {
                service: Some(service.into()),
                environment: Some(ENV.into()),
                ..Default::default()
            },
        )
        .await
        .expect("sim.get")
    }

    /// Waits for the event `rollout.<what>` of rollout `id`.
    pub async fn event(&mut self, id: Uuid, what: &str, within: Duration) -> Rollout {
        self.rollouts.wait(id, what, within).await
    }

    /// Deploys `version` of `service` and waits for it to succeed.
    pub async fn deployed(&mut self, service: &str, version: &str, strategy: Strategy) -> Rollout {
        let id = self.start(deploy(service, version, strategy)).await;
        self.event(id, "succeeded", Duration::from_secs(20)).await
    }

    pub async fn stop(self) {
        for (token, started) in self.deployers {
            token.cancel();
            started.runtime.run_until_shutdown().await.unwrap();
        }
    }
}

pub fn remote_code(e: &CallError) -> ErrorCode {
    match e {
        CallError::Remote(body) => body.code,
        other => panic!("expected an error reply, got {other}"),
    }
}

impl Stack {
    pub async fn chaos_until_done(&self, id: Uuid) -> toronto_protocol::rollout::ChaosRun {
        for _ in 0..200 {
            let run: toronto_protocol::rollout::ChaosRun = self
                .request(
                    "chaos.get",
                    RolloutRef {
                        id: Some(id),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            if run.state != toronto_protocol::rollout::ChaosState::Running {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("experiment {id} never ended");
    }
}
