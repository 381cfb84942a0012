//! From fault injection in a canary to the `rollout.aborted` event, on the simulated
//! cluster (a simulation) with the real monitor, against a real nats-server. Runs the
//! two methods one after the other in one run, each on a fresh stack: the windowed
//! Mann-Whitney test alone (analysis every second over the last two,
//! `TORONTO_DEPLOYER_SEQUENTIAL_ANALYSIS=false`) and the sequential test beside it
//! (the default: analysis every 200 ms). Prints every run and each method's median;
//! asserts nothing.
//!
//! Run: `cargo bench -p toronto-deployer --bench abort` (`BENCH_RUNS=3` for a quick run).

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_deployer::Settings;
use toronto_protocol::rollout::{Rollout, SimFault, SimService};
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, ExecuteAccepted, ExecuteRequest, PlanTask, Strategy,
};
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::call_signed;
use toronto_testkit::NatsServer;
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(server: &NatsServer) -> Config {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    config
}

async fn request<Req: Message, Resp: Message>(
    client: &async_nats::Client,
    verb: &str,
    data: Req,
) -> Resp {
    let envelope = Envelope::builder("toronto://bench", data).build();
    // Signed by the test admin (the stack runs with authentication required).
    call_signed(
        client,
        Some(&toronto_testkit::test_identity()),
        &format!("toronto.devops.v1.deployer.{verb}"),
        &envelope,
        Encoding::Json,
        Duration::from_secs(10),
    )
    .await
    .map(|r: Envelope<Resp>| r.data)
    .unwrap_or_else(|e| panic!("{verb}: {e}"))
}

fn deploy(version: &str, weights: &[u8]) -> ExecuteRequest {
    ExecuteRequest {
        plan_id: Uuid::now_v7(),
        idempotency_key: Uuid::now_v7().to_string(),
        task: PlanTask::Deploy(Box::new(DeployTask {
            service: "bench".into(),
            version: version.into(),
            image: None,
            environment: "production".into(),
            strategy: Strategy::Canary {
                steps: weights
                    .iter()
                    .map(|w| CanaryStep {
                        weight: *w,
                        pause_seconds: Some(600),
                    })
                    .collect(),
            },
            change: None,
            fix: false,
            policy_override: None,
        })),
    }
}

async fn wait_for(
    events: &mut async_nats::Subscriber,
    what: &str,
    id: &str,
    within: Duration,
) -> Rollout {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no rollout.{what} within {within:?}"))
            .expect("subscription open");
        if !m.subject.ends_with(&format!(".{what}")) {
            continue;
        }
        let e: Envelope<Rollout> = toronto_protocol::decode(&m.payload, Encoding::Json).unwrap();
        if e.data.id.to_string() == id {
            return e.data;
        }
    }
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut medians = Vec::new();
    for (name, sequential) in [
        ("windowed Mann-Whitney alone", false),
        ("sequential test (mSPRT) beside the windowed test", true),
    ] {
        println!("== {name}");
        let median = runtime.block_on(bench(runs, sequential));
        medians.push((name, median));
    }
    println!("fault (20% canary errors) to rollout.aborted, median over {runs} runs each:");
    for (name, median) in medians {
        println!("  {name}: {:.2} s", median.as_secs_f64());
    }
}

async fn bench(runs: usize, sequential: bool) -> Duration {
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let monitor = toronto_monitor::start_with(
        config(&server),
        toronto_monitor::settings::Settings::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let settings = Settings {
        drift_interval: Duration::ZERO,
        sequential_analysis: sequential,
        ..Settings::default()
    };
    println!(
        "deployer: analysis every {:?} over the last {:?}; simulated cluster tick {:?}, {} requests per tick",
        if sequential {
            settings.sequential_interval
        } else {
            settings.analysis_interval
        },
        settings.analysis_window,
        settings.sim.tick,
        settings.sim.requests_per_tick
    );
    let deployer = toronto_deployer::start_with(config(&server), settings, None, shutdown.clone())
        .await
        .unwrap();
    let client = server.client().await;
    let mut events = client
        .subscribe("toronto.devops.v1.events.rollout.>")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&client).await;

    let first: ExecuteAccepted = request(&client, "rollout.start", deploy("1.0.0", &[100])).await;
    let id = first.reference.unwrap().replace("rollout ", "");
    wait_for(&mut events, "succeeded", &id, Duration::from_secs(30)).await;

    let mut figures = Vec::new();
    for run in 0..runs {
        let version = format!("2.0.{run}");
        let accepted: ExecuteAccepted =
            request(&client, "rollout.start", deploy(&version, &[25, 100])).await;
        let id = accepted.reference.unwrap().replace("rollout ", "");
        wait_for(&mut events, "progressed", &id, Duration::from_secs(30)).await;
        // Let healthy canary traffic fill the analysis window first; inject at a random
        // point of the analysis interval.
        let jitter = Duration::from_millis(rand::random_range(0..1000));
        tokio::time::sleep(Duration::from_secs(3) + jitter).await;
        let injected = Instant::now();
        let _: SimService = request(
            &client,
            "sim.fault",
            SimFault {
                service: "bench".into(),
                environment: "production".into(),
                version: version.clone(),
                error_rate: 0.2,
                ..Default::default()
            },
        )
        .await;
        let aborted = wait_for(&mut events, "aborted", &id, Duration::from_secs(60)).await;
        let took = injected.elapsed();
        let source = aborted
            .analyses
            .last()
            .map(|a| a.source.clone())
            .unwrap_or_default();
        let reason: String = aborted
            .analyses
            .last()
            .map(|a| a.verdict.reason.chars().take(70).collect())
            .unwrap_or_default();
        println!(
            "run {run}: fault (20% errors) to rollout.aborted in {:.2} s (verdict from {source}: {reason}...)",
            took.as_secs_f64()
        );
        figures.push(took);
    }
    figures.sort();
    let median = figures[figures.len() / 2];
    println!(
        "median over {runs} runs: {:.2} s from fault injection to rollout.aborted (goal: at most 1 s; min {:.2} s, max {:.2} s)",
        median.as_secs_f64(),
        figures[0].as_secs_f64(),
        figures[figures.len() - 1].as_secs_f64()
    );
    shutdown.cancel();
    deployer.runtime.run_until_shutdown().await.unwrap();
    monitor.run_until_shutdown().await.unwrap();
    median
}
