//! The deployer with the real monitor analysing its canaries, on the simulated
//! cluster (a simulation: no Kubernetes API server runs here), over a real
//! nats-server.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_deployer::{Settings, SimCluster, SimSettings, Started};
use toronto_protocol::rollout::{Rollout, RolloutPhase, RolloutRef, SimFault, SimService};
use toronto_protocol::tasks::{ExecuteAccepted, ExecuteRequest, PlanTask, Strategy};
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;
use toronto_testkit::rollouts::{RolloutEvents, canary, deploy_task, rollout_id};
use uuid::Uuid;

const ENV: &str = "production";

/// Short pauses, fast analysis and a quick simulated cluster.
fn settings() -> Settings {
    Settings {
        lease: Duration::from_secs(2),
        analysis_interval: Duration::from_millis(200),
        analysis_window: Duration::from_secs(2),
        analysis_timeout: Duration::from_millis(300),
        step_pause: Duration::from_secs(1),
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

struct Stack {
    _server: NatsServer,
    client: async_nats::Client,
    monitors: Vec<(CancellationToken, toronto_runtime::ServiceRuntime)>,
    deployers: Vec<(CancellationToken, Started)>,
    rollouts: RolloutEvents,
}

async fn start_deployer(
    url: &str,
    settings: Settings,
    sim: &SimCluster,
) -> (CancellationToken, Started) {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = String::new();
    config.shutdown_grace_secs = 2;
    let shutdown = CancellationToken::new();
    // Boxed: a service's start is a large future, and the test's own future lives on
    // the test thread's stack in a debug build.
    let started = Box::pin(toronto_deployer::start_with(
        config,
        settings,
        Some(sim.clone()),
        shutdown.clone(),
    ))
    .await
    .expect("deployer starts");
    (shutdown, started)
}

/// With `monitor`, a real monitor analyses the canaries (otherwise the deployer falls
/// back to a threshold on the simulated cluster's own counts).
async fn stack_full(settings: Settings, deployers: usize, monitor: bool) -> Stack {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let sim = SimCluster::new(settings.sim.clone());
    let mut list = Vec::new();
    let mut monitors = Vec::new();
    if monitor {
        let mut config = toronto_testkit::with_test_admin(Config::default());
        config.nats.urls = vec![server.url()];
        config.http.addr = String::new();
        config.shutdown_grace_secs = 2;
        let shutdown = CancellationToken::new();
        let rt = Box::pin(toronto_monitor::start_with(
            config,
            toronto_monitor::settings::Settings::default(),
            shutdown.clone(),
        ))
        .await
        .expect("monitor starts");
        monitors.push((shutdown, rt));
    }
    for _ in 0..deployers {
        list.push(start_deployer(&server.url(), settings.clone(), &sim).await);
    }
    let rollouts = RolloutEvents::subscribe(&client).await;
    Stack {
        _server: server,
        client,
        monitors,
        deployers: list,
        rollouts,
    }
}

fn deploy(service: &str, version: &str, strategy: Strategy) -> PlanTask {
    deploy_task(service, version, ENV, strategy)
}

impl Stack {
    async fn request<Req: Message, Resp: Message>(
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

    async fn execute(&self, verb: &str, task: PlanTask) -> Result<ExecuteAccepted, CallError> {
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
    async fn start(&self, task: PlanTask) -> Uuid {
        let accepted = self.execute("rollout.start", task).await.expect("accepted");
        rollout_id(&accepted)
    }

    async fn sim_view(&self, service: &str) -> SimService {
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
    async fn event(&mut self, id: Uuid, what: &str, within: Duration) -> Rollout {
        self.rollouts.wait(id, what, within).await
    }

    /// Events of rollout `id` seen so far, in order.
    fn events_of(&self, id: Uuid) -> Vec<String> {
        self.rollouts.of(id)
    }

    /// Deploys `version` of `service` and waits for it to succeed.
    async fn deployed(&mut self, service: &str, version: &str, strategy: Strategy) -> Rollout {
        let id = self.start(deploy(service, version, strategy)).await;
        self.event(id, "succeeded", Duration::from_secs(20)).await
    }

    async fn stop(self) {
        for (token, started) in self.deployers {
            token.cancel();
            started.runtime.run_until_shutdown().await.unwrap();
        }
        for (token, rt) in self.monitors {
            token.cancel();
            rt.run_until_shutdown().await.unwrap();
        }
    }
}

#[tokio::test]
async fn healthy_canary_is_promoted_step_by_step_to_all_traffic() {
    let mut s = stack_full(settings(), 1, true).await;
    let first = s.deployed("shop", "1.0.0", canary(&[50], 1)).await;
    assert_eq!(first.steps.len(), 1, "a first deploy replaces at once");
    assert_eq!(s.sim_view("shop").await.traffic.get("1.0.0"), Some(&100));

    let id = s
        .start(deploy("shop", "1.1.0", canary(&[20, 50, 100], 1)))
        .await;
    let at_20 = s.event(id, "progressed", Duration::from_secs(10)).await;
    assert_eq!(at_20.weight, 20);
    // Mid-rollout, the simulated traffic really is split.
    let view = s.sim_view("shop").await;
    assert_eq!(view.traffic.get("1.1.0"), Some(&20), "{view:?}");
    assert_eq!(view.traffic.get("1.0.0"), Some(&80));

    let done = s.event(id, "succeeded", Duration::from_secs(20)).await;
    assert_eq!(done.phase, RolloutPhase::Succeeded);
    assert_eq!(done.weight, 100);
    assert!(!done.rolled_back);
    let progressed: Vec<u8> = s
        .rollouts
        .seen
        .iter()
        .filter(|(w, r)| w == "progressed" && r.id == id)
        .map(|(_, r)| r.weight)
        .collect();
    assert_eq!(progressed, [20, 50, 100], "one progress event per step");
    let view = s.sim_view("shop").await;
    assert_eq!(view.traffic.get("1.1.0"), Some(&100), "{view:?}");
    assert_eq!(view.workloads["shop"].version, "1.1.0");
    assert_eq!(view.workloads["shop-canary"].replicas, 0);
    s.stop().await;
}

#[tokio::test]
async fn canary_with_errors_is_aborted_and_rolled_back_with_the_monitors_evidence() {
    let mut s = stack_full(settings(), 1, true).await;
    s.deployed("cart", "1.0.0", Strategy::Rolling).await;
    s.deployed("cart", "1.0.1", canary(&[100], 1)).await; // now in canary shape
    let _: SimService = s
        .request(
            "sim.fault",
            SimFault {
                service: "cart".into(),
                environment: ENV.into(),
                version: "2.0.0".into(),
                error_rate: 0.2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = s
        .start(deploy("cart", "2.0.0", canary(&[25, 50, 100], 60)))
        .await;
    let aborted = s.event(id, "aborted", Duration::from_secs(15)).await;
    assert_eq!(aborted.phase, RolloutPhase::Aborted);
    assert!(aborted.rolled_back);
    let evidence = aborted.analyses.last().expect("the verdict is recorded");
    assert_eq!(evidence.step, "weight-25");
    assert_eq!(evidence.source, "monitor");
    let errors = evidence
        .verdict
        .metrics
        .iter()
        .find(|m| m.name == "http_error_ratio")
        .expect("error-ratio evidence");
    assert!(errors.p_value.is_some_and(|p| p < 0.05), "{errors:?}");
    assert!(
        errors.canary.count > 0 && errors.baseline.count > 0,
        "{errors:?}"
    );
    assert!(
        aborted
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("analysis failed"),
        "{:?}",
        aborted.reason
    );
    s.event(id, "rolled_back", Duration::from_secs(5)).await;
    let view = s.sim_view("cart").await;
    assert_eq!(view.traffic.get("1.0.1"), Some(&100), "{view:?}");
    assert_eq!(view.workloads["cart-canary"].replicas, 0);
    assert!(!s.events_of(id).contains(&"succeeded".to_owned()));
    s.stop().await;
}
