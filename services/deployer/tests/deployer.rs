//! Rollouts on the simulated cluster (a simulation: no Kubernetes API server runs
//! here), driven over a real nats-server through the deployer's commands, with every
//! assertion on what a user would see: events, rollout state, and where the simulated
//! traffic goes.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_deployer::{Settings, SimCluster, SimSettings, Started};
use toronto_protocol::rollout::{
    DriftCheck, DriftReport, Rollout, RolloutCommand, RolloutPhase, RolloutRef, SimFault,
    SimService, SimTamper,
};
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, ExecuteAccepted, ExecuteRequest, PlanTask, RollbackTask, ScaleTask,
    Strategy,
};
use toronto_protocol::{Encoding, Envelope, ErrorCode, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;
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
    sim: SimCluster,
    monitors: Vec<(CancellationToken, toronto_runtime::ServiceRuntime)>,
    deployers: Vec<(CancellationToken, Started)>,
    events: tokio::sync::mpsc::UnboundedReceiver<(String, Rollout)>,
    seen: Vec<(String, Rollout)>,
}

async fn start_deployer(
    url: &str,
    settings: Settings,
    sim: &SimCluster,
) -> (CancellationToken, Started) {
    let mut config = Config::default();
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

async fn stack_with(settings: Settings, deployers: usize) -> Stack {
    stack_full(settings, deployers, false).await
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
        let mut config = Config::default();
        config.nats.urls = vec![server.url()];
        config.http.addr = String::new();
        config.shutdown_grace_secs = 2;
        let shutdown = CancellationToken::new();
        let rt = toronto_monitor::start_with(
            config,
            toronto_monitor::settings::Settings::default(),
            shutdown.clone(),
        )
        .await
        .expect("monitor starts");
        monitors.push((shutdown, rt));
    }
    for _ in 0..deployers {
        list.push(start_deployer(&server.url(), settings.clone(), &sim).await);
    }
    let mut sub = client
        .subscribe("toronto.devops.v1.events.rollout.>")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&client).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let what = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
            if let Ok(e) = toronto_protocol::decode::<Rollout>(&m.payload, Encoding::Json) {
                let _ = tx.send((what, e.data));
            }
        }
    });
    Stack {
        _server: server,
        client,
        sim,
        monitors,
        deployers: list,
        events: rx,
        seen: Vec::new(),
    }
}

fn deploy(service: &str, version: &str, strategy: Strategy) -> PlanTask {
    PlanTask::Deploy(Box::new(DeployTask {
        service: service.into(),
        version: version.into(),
        image: Some(format!("registry.example/{service}:{version}")),
        environment: ENV.into(),
        strategy,
        change: None,
        fix: false,
        policy_override: None,
    }))
}

fn canary(weights: &[u8], pause: u64) -> Strategy {
    Strategy::Canary {
        steps: weights
            .iter()
            .map(|w| CanaryStep {
                weight: *w,
                pause_seconds: Some(pause),
            })
            .collect(),
    }
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

    async fn rollout(&self, id: Uuid) -> Rollout {
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
        if let Some((_, r)) = self.seen.iter().find(|(w, r)| w == what && r.id == id) {
            return r.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            let Ok(Some((w, r))) = next else {
                let seen: Vec<_> = self
                    .seen
                    .iter()
                    .filter(|(_, r)| r.id == id)
                    .map(|(w, r)| format!("{w}({:?} {:?})", r.phase, r.reason))
                    .collect();
                panic!("no rollout.{what} for {id} within {within:?}; saw {seen:?}");
            };
            self.seen.push((w.clone(), r.clone()));
            if w == what && r.id == id {
                return r;
            }
        }
    }

    /// Events of rollout `id` seen so far, in order.
    fn events_of(&self, id: Uuid) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(_, r)| r.id == id)
            .map(|(w, _)| w.clone())
            .collect()
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

fn rollout_id(accepted: &ExecuteAccepted) -> Uuid {
    let reference = accepted.reference.as_deref().expect("a reference");
    reference
        .strip_prefix("rollout ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a rollout reference: {reference}"))
}

fn remote_code(e: &CallError) -> ErrorCode {
    match e {
        CallError::Remote(body) => body.code,
        other => panic!("expected an error reply, got {other}"),
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

#[tokio::test]
async fn blue_green_switches_then_rolls_back_to_the_old_colour() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("pay", "1.0.0", Strategy::BlueGreen).await;
    let before = s.sim_view("pay").await;
    assert_eq!(before.traffic.get("1.0.0"), Some(&100));
    assert!(before.workloads.contains_key("pay-blue"));

    let id = s.start(deploy("pay", "2.0.0", Strategy::BlueGreen)).await;
    let preview = s.event(id, "progressed", Duration::from_secs(10)).await;
    assert_eq!(preview.weight, 0, "the preview takes no user traffic");
    assert_eq!(s.sim_view("pay").await.traffic.get("1.0.0"), Some(&100));
    s.event(id, "succeeded", Duration::from_secs(20)).await;
    let after = s.sim_view("pay").await;
    assert_eq!(after.traffic.get("2.0.0"), Some(&100), "{after:?}");
    assert_eq!(after.workloads["pay-green"].version, "2.0.0");
    assert_eq!(
        after.workloads["pay-blue"].replicas, 0,
        "old colour scaled down"
    );

    let accepted = s
        .execute(
            "rollback",
            PlanTask::Rollback(RollbackTask {
                service: "pay".into(),
                environment: ENV.into(),
                target_version: None,
            }),
        )
        .await
        .unwrap();
    let back = rollout_id(&accepted);
    let done = s.event(back, "rolled_back", Duration::from_secs(10)).await;
    assert!(done.is_rollback);
    assert_eq!(done.steps.len(), 1, "a rollback skips the steps");
    let view = s.sim_view("pay").await;
    assert_eq!(view.traffic.get("1.0.0"), Some(&100), "{view:?}");
    assert_eq!(view.workloads["pay-blue"].version, "1.0.0");
    // Nothing older than 1.0.0 ran: a second rollback has nowhere to go (not forward).
    let err = s
        .execute(
            "rollback",
            PlanTask::Rollback(RollbackTask {
                service: "pay".into(),
                environment: ENV.into(),
                target_version: None,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::NotFound, "{err}");
    s.stop().await;
}

#[tokio::test]
async fn crash_looping_version_misses_its_progress_deadline_and_fails() {
    let mut s = stack_with(
        Settings {
            progress_deadline: Duration::from_secs(2),
            ..settings()
        },
        1,
    )
    .await;
    s.deployed("feed", "1.0.0", Strategy::Rolling).await;
    let _: SimService = s
        .request(
            "sim.fault",
            SimFault {
                service: "feed".into(),
                environment: ENV.into(),
                version: "1.1.0".into(),
                crash_loop: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = s.start(deploy("feed", "1.1.0", Strategy::Rolling)).await;
    let failed = s.event(id, "failed", Duration::from_secs(15)).await;
    assert_eq!(failed.phase, RolloutPhase::Failed);
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("progress deadline"), "{reason}");
    assert!(reason.contains("CrashLoopBackOff"), "{reason}");
    let view = s.sim_view("feed").await;
    assert_eq!(
        view.workloads["feed"].version, "1.0.0",
        "previous spec restored"
    );
    s.stop().await;
}

#[tokio::test]
async fn out_of_band_change_is_reported_as_drift_and_remediated_on_request() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("search", "3.1.0", Strategy::Rolling).await;
    let clean: DriftReport = s
        .request("drift.check", DriftCheck::default())
        .await
        .unwrap();
    assert_eq!(clean.checked, 1);
    assert!(clean.drifts.is_empty(), "{clean:?}");

    let mut drift_events = s
        .client
        .subscribe("toronto.devops.v1.events.drift.detected")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&s.client).await;
    let _: SimService = s
        .request(
            "sim.tamper",
            SimTamper {
                service: "search".into(),
                environment: ENV.into(),
                replicas: Some(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let report: DriftReport = s
        .request(
            "drift.check",
            DriftCheck {
                service: Some("search".into()),
                environment: Some(ENV.into()),
                remediate: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!(report.drifts.len(), 1, "{report:?}");
    let d = &report.drifts[0];
    assert_eq!(
        (d.object.as_str(), d.field.as_str()),
        ("Deployment/search", "spec.replicas")
    );
    assert_eq!((d.desired.clone(), d.live.clone()), (3.into(), 7.into()));
    assert!(d.remediated);
    let event = tokio::time::timeout(Duration::from_secs(5), drift_events.next())
        .await
        .expect("drift.detected published")
        .unwrap();
    let event: Envelope<toronto_protocol::rollout::Drift> =
        toronto_protocol::decode(&event.payload, Encoding::Json).unwrap();
    assert_eq!(event.data.service, "search");
    assert_eq!(s.sim_view("search").await.workloads["search"].replicas, 3);
    let after: DriftReport = s
        .request("drift.check", DriftCheck::default())
        .await
        .unwrap();
    assert!(after.drifts.is_empty(), "{after:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_deployer_killed_mid_rollout_is_resumed_by_another_without_repeating_a_step() {
    let mut s = stack_with(settings(), 2).await;
    s.deployed("orders", "1.0.0", canary(&[100], 1)).await;
    let id = s
        .start(deploy("orders", "1.1.0", canary(&[10, 25, 50, 100], 1)))
        .await;
    let at_10 = s.event(id, "progressed", Duration::from_secs(10)).await;
    assert_eq!(at_10.weight, 10);
    let owner = s
        .rollout(id)
        .await
        .lease
        .expect("the rollout is owned")
        .owner;
    let victim = s
        .deployers
        .iter()
        .position(|(_, d)| d.runtime.host.id() == owner)
        .expect("one of ours owns it");
    s.deployers[victim].1.crash();
    let survivor_id = s.deployers[1 - victim].1.runtime.host.id().to_owned();

    let done = s.event(id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(done.phase, RolloutPhase::Succeeded);
    let prefix = format!("{id}:");
    let keys: Vec<String> = s
        .sim
        .applied_steps()
        .into_iter()
        .filter(|a| a.step_key.starts_with(&prefix))
        .map(|a| a.step_key.trim_start_matches(&prefix).to_owned())
        .collect();
    assert_eq!(
        keys,
        ["weight-10", "weight-25", "weight-50", "promote"],
        "each step applied once, in order"
    );
    let unique: HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    // The survivor finished it.
    let finished_by: Vec<_> = s
        .seen
        .iter()
        .filter(|(w, r)| w == "progressed" && r.id == id && r.weight > 10)
        .filter_map(|(_, r)| r.lease.as_ref().map(|l| l.owner.clone()))
        .collect();
    assert!(
        finished_by.iter().any(|o| o == &survivor_id),
        "{finished_by:?} should include {survivor_id}"
    );
    s.stop().await;
}

#[tokio::test]
async fn commands_pause_resume_promote_and_abort_a_rollout() {
    let mut s = stack_with(
        Settings {
            manual_promotion: vec![ENV.into()],
            ..settings()
        },
        1,
    )
    .await;
    s.deployed("mail", "1.0.0", canary(&[100], 0)).await;
    let id = s
        .start(deploy("mail", "1.1.0", canary(&[10, 50, 100], 0)))
        .await;
    let paused = s.event(id, "paused", Duration::from_secs(10)).await;
    assert_eq!(paused.weight, 10);
    assert!(
        paused
            .reason
            .unwrap_or_default()
            .contains("rollout.promote")
    );
    let by_name = RolloutCommand {
        service: Some("mail".into()),
        environment: Some(ENV.into()),
        by: Some("alice".into()),
        ..Default::default()
    };
    let r: Rollout = s.request("rollout.promote", by_name.clone()).await.unwrap();
    assert_eq!(r.phase, RolloutPhase::Progressing);
    let paused_again = s
        .seen
        .iter()
        .filter(|(w, r)| w == "paused" && r.id == id)
        .count();
    assert_eq!(paused_again, 1);
    // Next hold at 50 percent; then abort instead of promoting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.rollout(id).await;
        if r.phase == RolloutPhase::Paused && r.weight == 50 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hold at 50 percent: {:?} {:?} at {}",
            r.phase,
            r.reason,
            r.weight
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = s
        .request::<_, Rollout>(
            "rollout.resume",
            RolloutCommand {
                id: Some(Uuid::now_v7()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::NotFound);
    let _: Rollout = s
        .request(
            "rollout.abort",
            RolloutCommand {
                reason: Some("saw something odd".into()),
                ..by_name.clone()
            },
        )
        .await
        .unwrap();
    let aborted = s.event(id, "aborted", Duration::from_secs(10)).await;
    assert_eq!(
        aborted.reason.as_deref(),
        Some("aborted by alice: saw something odd")
    );
    assert_eq!(s.sim_view("mail").await.traffic.get("1.0.0"), Some(&100));
    let err = s
        .request::<_, Rollout>("rollout.promote", by_name)
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::Conflict, "it has ended");
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let mut s = stack_with(settings(), 1).await;
    // Unknown service: nothing to roll back or scale.
    for (verb, task) in [
        (
            "rollback",
            PlanTask::Rollback(RollbackTask {
                service: "ghost".into(),
                environment: ENV.into(),
                target_version: None,
            }),
        ),
        (
            "scale",
            PlanTask::Scale(ScaleTask {
                service: "ghost".into(),
                environment: ENV.into(),
                replicas: 2,
            }),
        ),
    ] {
        let err = s.execute(verb, task).await.unwrap_err();
        assert_eq!(remote_code(&err), ErrorCode::NotFound, "{verb}");
        assert!(
            err.to_string().contains("ghost has never been deployed"),
            "{err}"
        );
    }
    // Steps out of order.
    let err = s
        .execute(
            "rollout.start",
            deploy("ghost", "1.0.0", canary(&[50, 20], 1)),
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::BadRequest);
    assert!(err.to_string().contains("must increase"), "{err}");
    // The wrong task for the command.
    let err = s
        .execute(
            "rollout.start",
            PlanTask::Scale(ScaleTask {
                service: "ghost".into(),
                environment: ENV.into(),
                replicas: 2,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::BadRequest);
    // Unknown strategy, sent as raw JSON.
    let raw = serde_json::json!({
        "specversion": "1.0",
        "id": Uuid::now_v7().to_string(),
        "source": "toronto://test",
        "type": "ai.toronto.devops.deployer.execute.v1",
        "time": chrono::Utc::now().to_rfc3339(),
        "datacontenttype": "application/json",
        "data": {
            "plan_id": Uuid::now_v7().to_string(),
            "idempotency_key": "k1",
            "task": {"kind": "deploy", "service": "ghost", "version": "1", "environment": ENV,
                     "strategy": {"kind": "yolo"}}
        }
    });
    let reply = s
        .client
        .request(
            "toronto.devops.v1.deployer.rollout.start",
            serde_json::to_vec(&raw).unwrap().into(),
        )
        .await
        .unwrap();
    let headers = reply.headers.expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("400")
    );
    let body = String::from_utf8_lossy(&reply.payload);
    assert!(body.contains("yolo"), "{body}");

    // A second rollout of the same service and environment while one runs: 409.
    s.deployed("ghost", "1.0.0", canary(&[100], 0)).await;
    let id = s
        .start(deploy("ghost", "2.0.0", canary(&[10, 100], 30)))
        .await;
    let err = s
        .execute("rollout.start", deploy("ghost", "3.0.0", Strategy::Rolling))
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::Conflict);
    assert!(err.to_string().contains(&id.to_string()), "{err}");
    // Scaling waits for the rollout too.
    let err = s
        .execute(
            "scale",
            PlanTask::Scale(ScaleTask {
                service: "ghost".into(),
                environment: ENV.into(),
                replicas: 5,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::Conflict);
    // The same idempotency key gives the same rollout, not a conflict.
    let request = ExecuteRequest {
        plan_id: Uuid::now_v7(),
        idempotency_key: "plan-1:execute".into(),
        task: deploy("other", "1.0.0", Strategy::Rolling),
    };
    let a: ExecuteAccepted = s.request("rollout.start", request.clone()).await.unwrap();
    let b: ExecuteAccepted = s.request("rollout.start", request).await.unwrap();
    assert_eq!(rollout_id(&a), rollout_id(&b));
    s.stop().await;
}

#[tokio::test]
async fn scale_changes_the_serving_version_at_once() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("img", "1.0.0", Strategy::Rolling).await;
    s.execute(
        "scale",
        PlanTask::Scale(ScaleTask {
            service: "img".into(),
            environment: ENV.into(),
            replicas: 6,
        }),
    )
    .await
    .unwrap();
    assert_eq!(s.sim_view("img").await.workloads["img"].replicas, 6);
    // The next rollout keeps the new size.
    let r = s.deployed("img", "1.1.0", Strategy::Rolling).await;
    assert_eq!(r.replicas, 6);
    s.stop().await;
}

#[tokio::test]
async fn without_a_monitor_the_simulated_clusters_own_counts_decide() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("wish", "1.0.0", canary(&[100], 0)).await;
    let _: SimService = s
        .request(
            "sim.fault",
            SimFault {
                service: "wish".into(),
                environment: ENV.into(),
                version: "2.0.0".into(),
                error_rate: 0.5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = s
        .start(deploy("wish", "2.0.0", canary(&[50, 100], 60)))
        .await;
    let aborted = s.event(id, "aborted", Duration::from_secs(15)).await;
    let evidence = aborted.analyses.last().expect("the verdict is recorded");
    assert_eq!(evidence.source, "threshold");
    assert!(
        evidence.verdict.reason.contains("exceeds the baseline"),
        "{evidence:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn an_alert_on_the_service_aborts_its_canary_between_steps() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("news", "1.0.0", canary(&[100], 0)).await;
    let id = s
        .start(deploy("news", "1.1.0", canary(&[20, 100], 60)))
        .await;
    s.event(id, "progressed", Duration::from_secs(10)).await;
    let alert = toronto_protocol::alerts::Alert {
        fingerprint: "f1".into(),
        status: toronto_protocol::alerts::AlertStatus::Firing,
        labels: [
            ("alertname".to_owned(), "ErrorBudgetBurn".to_owned()),
            ("service".to_owned(), "news".to_owned()),
            ("environment".to_owned(), ENV.to_owned()),
        ]
        .into(),
        annotations: Default::default(),
        burn_rates: Default::default(),
        budget_remaining: None,
        starts_at: chrono::Utc::now(),
        ends_at: None,
        generator: "test".into(),
    };
    let event = Envelope::builder("toronto://test", alert).build();
    s.client
        .publish(
            "toronto.devops.v1.events.alert.firing",
            toronto_protocol::encode(&event, Encoding::Json)
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let aborted = s.event(id, "aborted", Duration::from_secs(10)).await;
    let evidence = aborted.analyses.last().expect("the alert is recorded");
    assert_eq!(evidence.source, "alert");
    assert!(
        evidence.verdict.reason.contains("ErrorBudgetBurn"),
        "{evidence:?}"
    );
    assert_eq!(s.sim_view("news").await.traffic.get("1.0.0"), Some(&100));
    s.stop().await;
}

#[tokio::test]
async fn chaos_experiments_stop_when_an_abort_condition_holds_and_clean_up() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("quiz", "1.0.0", Strategy::Rolling).await;
    let experiment = |fault: toronto_protocol::tasks::ChaosFault, seconds, conditions| {
        PlanTask::ChaosExperiment(toronto_protocol::tasks::ChaosExperimentTask {
            service: "quiz".into(),
            environment: ENV.into(),
            fault,
            duration_seconds: seconds,
            abort_conditions: conditions,
        })
    };
    // Half the requests fail; the experiment stops at 20 percent.
    let accepted = s
        .execute(
            "chaos.run",
            experiment(
                toronto_protocol::tasks::ChaosFault::ErrorRate { rate: 0.5 },
                60,
                vec![toronto_protocol::tasks::AbortCondition::ErrorRatioAbove { threshold: 0.2 }],
            ),
        )
        .await
        .unwrap();
    let id: Uuid = accepted
        .reference
        .unwrap()
        .strip_prefix("chaos ")
        .unwrap()
        .parse()
        .unwrap();
    let run = s.chaos_until_done(id).await;
    assert_eq!(run.state, toronto_protocol::rollout::ChaosState::Aborted);
    assert!(
        run.reason
            .as_deref()
            .unwrap_or("")
            .contains("error_ratio_above 0.2 held"),
        "{run:?}"
    );
    assert!(
        s.sim_view("quiz").await.faults.is_empty(),
        "the fault is removed"
    );
    // Added latency with no condition holding: it runs its course.
    let accepted = s
        .execute(
            "chaos.run",
            experiment(
                toronto_protocol::tasks::ChaosFault::Latency { ms: 30 },
                1,
                vec![toronto_protocol::tasks::AbortCondition::AlertFiring],
            ),
        )
        .await
        .unwrap();
    let id: Uuid = accepted
        .reference
        .unwrap()
        .strip_prefix("chaos ")
        .unwrap()
        .parse()
        .unwrap();
    let run = s.chaos_until_done(id).await;
    assert_eq!(
        run.state,
        toronto_protocol::rollout::ChaosState::Completed,
        "{run:?}"
    );
    assert!(s.sim_view("quiz").await.faults.is_empty());
    s.stop().await;
}

impl Stack {
    async fn chaos_until_done(&self, id: Uuid) -> toronto_protocol::rollout::ChaosRun {
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
