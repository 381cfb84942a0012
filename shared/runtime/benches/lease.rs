//! Takeover time of the service lease: two candidates on one real nats-server, the
//! owner dies (its task and connection end without letting go) and the time until the
//! standby owns the lease is measured; then the same after a graceful shutdown (the
//! owner lets go). Prints figures for a short test lease and the default settings;
//! asserts nothing.
//!
//! Run: `cargo bench -p toronto-runtime --bench lease` (`BENCH_RUNS=3` for a quicker run).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use tokio_util::sync::CancellationToken;
use toronto_protocol::status::LeaseRole;
use toronto_runtime::lease::{Candidate, LeaseConfig, LeaseWatch};
use toronto_testkit::NatsServer;

async fn until_owner(watch: &LeaseWatch) {
    let mut rx = watch.subscribe();
    tokio::time::timeout(
        Duration::from_secs(60),
        rx.wait_for(|s| s.role == LeaseRole::Owner),
    )
    .await
    .expect("an owner within 60 s")
    .expect("the lease loop runs");
}

/// One takeover: `graceful` lets the owner shut down (it lets go), else it dies;
/// `phase` (0 to 1) places the end within the renew interval.
async fn takeover(
    server: &NatsServer,
    name: &str,
    config: &LeaseConfig,
    graceful: bool,
    phase: f64,
) -> Duration {
    let (client_a, client_b) = (server.client().await, server.client().await);
    let kv_a = jetstream::new(client_a.clone())
        .get_key_value("bench_leases")
        .await
        .unwrap();
    let kv_b = jetstream::new(client_b.clone())
        .get_key_value("bench_leases")
        .await
        .unwrap();
    let (mut a, watch_a) = Candidate::new(kv_a, name, "a", config.clone());
    let (mut b, watch_b) = Candidate::new(kv_b, name, "b", config.clone());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let token = stop_a.clone();
    let a_task = tokio::spawn(async move { a.run(token).await });
    until_owner(&watch_a).await;
    let token = stop_b.clone();
    let b_task = tokio::spawn(async move { b.run(token).await });
    // The owner has renewed a few times and the standby has seen it; the end comes at
    // a different point of the renew interval in each run (`phase`, 0 to 1).
    tokio::time::sleep(config.renew() * 3 + config.renew().mul_f64(phase)).await;
    let started = Instant::now();
    if graceful {
        stop_a.cancel();
        let _ = a_task.await;
    } else {
        a_task.abort();
        drop(client_a);
    }
    until_owner(&watch_b).await;
    let took = started.elapsed();
    stop_b.cancel();
    let _ = b_task.await;
    took
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:.0} ms, median {:.0} ms, max {:.0} ms ({} runs)",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let server = NatsServer::start().await;
    jetstream::new(server.client().await)
        .create_key_value(kv::Config {
            bucket: "bench_leases".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let short = LeaseConfig {
        ttl_ms: 1_000,
        renew_ms: 200,
    };
    for (label, config, runs) in [
        ("TTL 1 s, renew 0.2 s", short, runs),
        (
            "default: TTL 5 s, renew 1 s",
            LeaseConfig::default(),
            runs.div_ceil(3),
        ),
    ] {
        for graceful in [false, true] {
            let mut samples = Vec::new();
            for i in 0..runs {
                let name = format!("svc-{}-{graceful}-{i}", config.ttl_ms);
                let phase = i as f64 / runs as f64;
                samples.push(takeover(&server, &name, &config, graceful, phase).await);
            }
            let how = if graceful {
                "owner shut down (lets go)"
            } else {
                "owner killed           "
            };
            println!("lease {label:<28} {how}: takeover {}", summary(samples));
        }
    }
}
