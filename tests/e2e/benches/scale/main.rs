//! How the cost of each operation grows with its history: every operation timed with
//! 1x, 10x and 100x history behind it, against a real nats-server, with the services
//! running in this process. Prints a table; asserts nothing. The goal is a flat slope:
//! the time at 100x at most twice the time at 1x.
//!
//! Run: `cargo bench -p toronto-e2e --bench scale` (`BENCH_SCALE=0.1` divides every
//! history by ten, for a quick look). The history is written straight into the
//! services' KV buckets and event stream (copies of records the services made
//! themselves), so that building 10,000 past plans takes seconds, not hours.
//! `BENCH_ONLY=plans|rollouts|incidents|slos|dora` runs one group.

mod common;
mod dora;
mod incidents;
mod plans;
mod rollouts;
mod slos;

#[tokio::main]
async fn main() {
    toronto_runtime::auth::install_process_signer(toronto_testkit::test_identity());
    let samples = 20;
    println!(
        "{:<34} {:>7} {:>7} {:>8} {:<9} {:>9} {:>9} {:>9} {:>8}",
        "operation (median ms)", "1x", "10x", "100x", "history", "1x", "10x", "100x", "100x/1x"
    );
    // `BENCH_ONLY=plans|rollouts|incidents|slos|dora` runs one group.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wanted("plans") {
        for r in plans::plans(samples).await {
            r.print();
        }
    }
    // DORA's history is copies of a rollout the deployer made.
    let mut rollout = None;
    if wanted("rollouts") || wanted("dora") {
        let (rows, made) = rollouts::rollouts(samples).await;
        if wanted("rollouts") {
            for r in &rows {
                r.print();
            }
        }
        rollout = Some(made);
    }
    if wanted("incidents") {
        for r in incidents::incidents(samples).await {
            r.print();
        }
    }
    if wanted("slos") {
        // Its own runtime, on a thread of its own.
        for r in tokio::task::spawn_blocking(slos::slos).await.unwrap() {
            r.print();
        }
    }
    if let Some(rollout) = rollout.filter(|_| wanted("dora")) {
        for r in dora::dora(samples / 2, &rollout).await {
            r.print();
        }
    }
}
