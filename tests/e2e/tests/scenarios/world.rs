//! The simulated cluster is one shared world (kept in KV): every deployer replica and
//! every restart sees the same pods, versions, traffic and faults, and a bad canary
//! fails the same way whichever replica runs it. (The simulated cluster is a
//! simulation: no Kubernetes API server runs here.)

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_deployer::target::{Layout, Routing, Target, Track, Workload};
use toronto_deployer::{Settings, SimCluster, SimSettings, Started};
use toronto_protocol::rollout::{Rollout, RolloutRef, SimFault, SimService};
use toronto_protocol::tasks::{ExecuteAccepted, ExecuteRequest, PlanTask, Strategy};
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;
use toronto_testkit::rollouts::{canary, deploy_task};
use uuid::Uuid;

const ENV: &str = "production";

pub fn settings() -> Settings {
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

/// A deployer on the simulated target with no cluster handed in: its world is the
/// shared one in KV.
async fn deployer(url: &str) -> (CancellationToken, Started) {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = String::new();
    config.shutdown_grace_secs = 2;
    config.lease.ttl_ms = 1_000;
    config.lease.renew_ms = 300;
    let shutdown = CancellationToken::new();
    let started = Box::pin(toronto_deployer::start_with(
        config,
        settings(),
        None,
        shutdown.clone(),
    ))
    .await
    .expect("deployer starts");
    (shutdown, started)
}

async fn stop((token, started): (CancellationToken, Started)) {
    token.cancel();
    started.runtime.run_until_shutdown().await.unwrap();
}

async fn request<Req: Message, Resp: Message>(
    client: &async_nats::Client,
    verb: &str,
    data: Req,
) -> Result<Resp, CallError> {
    let envelope = Envelope::builder("toronto://test", data).build();
    call(
        client,
        &format!("toronto.devops.v1.deployer.{verb}"),
        &envelope,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .map(|r: Envelope<Resp>| r.data)
}

fn deploy(service: &str, version: &str, strategy: Strategy) -> PlanTask {
    deploy_task(service, version, ENV, strategy)
}

/// Starts a rollout (whichever deployer answers) and waits for its final event.
async fn roll(
    client: &async_nats::Client,
    events: &mut async_nats::Subscriber,
    task: PlanTask,
) -> (String, Rollout) {
    let accepted: ExecuteAccepted = request(
        client,
        "rollout.start",
        ExecuteRequest {
            plan_id: Uuid::now_v7(),
            idempotency_key: Uuid::now_v7().to_string(),
            task,
        },
    )
    .await
    .expect("accepted");
    let id: Uuid = accepted
        .reference
        .as_deref()
        .and_then(|r| r.strip_prefix("rollout "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .expect("a rollout reference");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("rollout {id} did not end"))
            .expect("events");
        let what = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
        let Ok(e) = toronto_protocol::decode::<Rollout>(&m.payload, Encoding::Json) else {
            continue;
        };
        if e.data.id == id && matches!(what.as_str(), "succeeded" | "aborted" | "failed") {
            return (what, e.data);
        }
    }
}

async fn view(client: &async_nats::Client, service: &str) -> SimService {
    request(
        client,
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

async fn bad_version(client: &async_nats::Client, version: &str) {
    let _: SimService = request(
        client,
        "sim.fault",
        SimFault {
            service: "shop".into(),
            environment: ENV.into(),
            version: version.into(),
            error_rate: 0.5,
            ..Default::default()
        },
    )
    .await
    .expect("sim.fault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_restarts_of_the_deployer_share_one_simulated_world() {
    // Boxed: the body's future is large in a debug build.
    Box::pin(shared_world()).await;
}

async fn shared_world() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut events = client
        .subscribe("toronto.devops.v1.events.rollout.>")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&client).await;

    // Deployer A ships 1.0.0, then 1.1.0 by canary: the world has shop in canary shape.
    let a = deployer(&server.url()).await;
    let (what, _) = Box::pin(roll(
        &client,
        &mut events,
        deploy("shop", "1.0.0", Strategy::Rolling),
    ))
    .await;
    assert_eq!(what, "succeeded");
    let (what, _) = Box::pin(roll(
        &client,
        &mut events,
        deploy("shop", "1.1.0", canary(&[100], 1)),
    ))
    .await;
    assert_eq!(what, "succeeded");
    let seen_by_a = view(&client, "shop").await;
    assert_eq!(seen_by_a.traffic.get("1.1.0"), Some(&100), "{seen_by_a:?}");

    // B joins and A goes away: B sees the same world (pods, versions, traffic).
    let b = deployer(&server.url()).await;
    stop(a).await;
    let seen_by_b = view(&client, "shop").await;
    assert_eq!(seen_by_b.workloads, seen_by_a.workloads);
    assert_eq!(seen_by_b.traffic, seen_by_a.traffic);

    // A bad canary run by B fails on B's own view of the traffic.
    bad_version(&client, "2.0.0").await;
    let (what, r) = Box::pin(roll(
        &client,
        &mut events,
        deploy("shop", "2.0.0", canary(&[25, 100], 60)),
    ))
    .await;
    assert_eq!(what, "aborted", "{r:?}");
    assert!(r.rolled_back);
    let verdict = &r.analyses.last().expect("a recorded analysis").verdict;
    assert!(verdict.reason.contains("canary error ratio"), "{verdict:?}");

    // A restarted deployer (B gone) sees the same world, and the same bad canary
    // fails the same way there.
    let a = deployer(&server.url()).await;
    stop(b).await;
    let seen = view(&client, "shop").await;
    assert_eq!(seen.traffic.get("1.1.0"), Some(&100), "{seen:?}");
    assert_eq!(seen.faults["2.0.0"].error_rate, 0.5, "{seen:?}");
    let (what, r) = Box::pin(roll(
        &client,
        &mut events,
        deploy("shop", "2.0.0", canary(&[25, 100], 60)),
    ))
    .await;
    assert_eq!(what, "aborted", "{r:?}");
    let verdict = &r.analyses.last().expect("a recorded analysis").verdict;
    assert!(verdict.reason.contains("canary error ratio"), "{verdict:?}");
    assert_eq!(view(&client, "shop").await.traffic.get("1.1.0"), Some(&100));
    stop(a).await;
    // The world outlives every deployer: it is in the bucket.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("toronto_rollouts").await.unwrap();
    assert!(kv.get("sim.shop.production").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_to_the_shared_world_lose_no_update() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "world".into(),
            history: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    let one = SimCluster::shared(SimSettings::default(), kv.clone());
    let two = SimCluster::shared(SimSettings::default(), kv);
    let layout = Layout {
        service: "shop".into(),
        environment: ENV.into(),
        workloads: vec![Workload {
            name: "shop".into(),
            track: Track::Stable,
            version: "1.0.0".into(),
            image: "shop:1.0.0".into(),
            replicas: 2,
        }],
        routing: Routing::Rolling {
            max_surge: "25%".into(),
            max_unavailable: "0".into(),
        },
        step_key: "r:s".into(),
        progress_deadline_seconds: 30,
        pod_template: None,
    };
    one.apply(&layout).await.unwrap();
    let fault = |version: String| SimFault {
        service: "shop".into(),
        environment: ENV.into(),
        version,
        latency_ms: 5,
        ..Default::default()
    };
    let writes = (0..20).flat_map(|i| {
        let (one, two) = (one.clone(), two.clone());
        [
            tokio::spawn(async move { one.set_fault(fault(format!("a{i}"))).await }),
            tokio::spawn(async move { two.set_fault(fault(format!("b{i}"))).await }),
        ]
    });
    for w in futures::future::join_all(writes).await {
        w.unwrap().expect("stored");
    }
    let world = one.get("shop", ENV).await.unwrap().expect("deployed");
    assert_eq!(world.faults.len(), 40, "{:?}", world.faults.keys());
    assert_eq!(two.get("shop", ENV).await.unwrap(), Some(world));
}
