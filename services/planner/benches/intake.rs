//! Planner throughput against one real nats-server: tasks accepted per second through
//! `planner.submit` (each one a plan in KV, a `plan.created` event and a run queued), and
//! the cost of one gate round trip. Prints figures; asserts nothing.
//!
//! Run: `cargo bench -p toronto-planner --bench intake` (`BENCH_SCALE=0.2` for a quick run).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{
    DeployTask, GateVerdict, SecurityScanRequest, Strategy, SubmitAccepted,
};
use toronto_protocol::{Encoding, Envelope, ErrorBody};
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::rpc::call;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_runtime::{Config, Metrics};
use toronto_testkit::NatsServer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(20)
}

async fn submit(client: async_nats::Client, i: usize) -> SubmitAccepted {
    call::<_, SubmitAccepted>(
        &client,
        "toronto.devops.v1.planner.submit",
        &task(i),
        Encoding::Json,
        Duration::from_secs(30),
    )
    .await
    .unwrap()
    .data
}

fn task(i: usize) -> Envelope<DeployTask> {
    Envelope::builder(
        "toronto://bench",
        DeployTask {
            service: format!("svc-{}", i % 50),
            version: format!("1.0.{i}"),
            image: None,
            // No QA, no approval: the runner asks the security peer, then the deployer
            // (absent here, so those plans retry in the background, as they would).
            environment: "dev".into(),
            strategy: Strategy::Rolling,
            change: None,
            fix: false,
            policy_override: None,
        },
    )
    .build()
}

#[tokio::main]
async fn main() {
    let server = NatsServer::start().await;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    config.log.filter = "off".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start(config, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;

    // A security peer that passes at once, to time a gate round trip alone.
    let peer = ServiceHost::start(
        client.clone(),
        ServiceSpec {
            name: "bench-security".into(),
            version: "0.0.0".into(),
            description: "bench peer".into(),
            metadata: Default::default(),
            queue_group: "bench-security".into(),
            source: "toronto://agents/security".into(),
        },
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    peer.add_endpoint(
        "scan",
        "toronto.agents.security.v1.scan",
        |_r: Request<SecurityScanRequest>| async {
            Ok::<_, ErrorBody>(GateVerdict {
                passed: true,
                reason: None,
                findings: None,
            })
        },
    )
    .await
    .unwrap();

    let n = scale(1000);
    let start = Instant::now();
    for i in 0..n {
        submit(client.clone(), i).await;
    }
    let sequential = n as f64 / start.elapsed().as_secs_f64();

    let workers = 16;
    let per = scale(2000) / workers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    submit(client.clone(), 1_000_000 + w * per + i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let concurrent = (per * workers) as f64 / start.elapsed().as_secs_f64();

    let gate_n = scale(1000);
    let mut samples = Vec::with_capacity(gate_n);
    for i in 0..gate_n {
        let request = Envelope::builder(
            "toronto://bench",
            SecurityScanRequest {
                plan_id: uuid::Uuid::now_v7(),
                idempotency_key: format!("bench:{i}"),
                service: "svc".into(),
                version: "1".into(),
                image: "svc:1".into(),
            },
        )
        .build();
        let t = Instant::now();
        call::<_, GateVerdict>(
            &client,
            "toronto.agents.security.v1.scan",
            &request,
            Encoding::Json,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;

    println!("planner intake against nats-server at {}", server.url());
    println!("  tasks accepted, sequential ({n}):       {sequential:>8.0}/s   (goal >= 500/s)");
    println!(
        "  tasks accepted, {workers}-way ({}):        {concurrent:>8.0}/s",
        per * workers
    );
    println!(
        "  gate round trip p50 / p99 ({gate_n}):   {:.0} us / {:.0} us",
        p(0.5),
        p(0.99)
    );
    shutdown.cancel();
    let _ = running.await;
}
