//! The fault suite: the planner, deployer, monitor and incident commander run as
//! separate processes (two replicas of each, the `test_service` fixture) on a real
//! nats-server, test peers stand in for the security and QA agents, and the flagship
//! flow (a task → a plan with gates → a canary on the simulated cluster) runs once per
//! fault, each on its own service. Every case checks that the plan completes, that
//! no task is lost and that no step is applied twice (from the shared simulated
//! world's record of change-producing applies), and the suite prints a table of
//! fault, what was checked, and the result.
//!
//! `cargo test -p toronto-e2e --test scenarios suite -- --nocapture` prints it.

mod cases;
mod chaos;
mod harness;

use std::time::Instant;

pub use harness::Cluster;

/// One row of the table.
pub struct Row {
    fault: &'static str,
    checked: &'static str,
    result: Result<String, String>,
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from("| fault | checked | result |\n|---|---|---|\n");
    for r in rows {
        let result = match &r.result {
            Ok(note) => format!("pass ({note})"),
            Err(why) => format!("FAIL: {why}"),
        };
        out.push_str(&format!("| {} | {} | {} |\n", r.fault, r.checked, result));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite() {
    Box::pin(run_suite()).await;
}

async fn run_suite() {
    let started = Instant::now();
    let mut rows = Vec::new();
    // `TORONTO_FAULT_SUITE_ONLY=<word>` runs only the cases whose name has it.
    let only = std::env::var("TORONTO_FAULT_SUITE_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let mut cluster = Cluster::start().await;
    println!("fault suite: service logs in {}", cluster.logs().display());
    if wanted("replicas") {
        rows.push(cases::two_replicas(&mut cluster).await);
    }
    if wanted("deployer") {
        rows.push(cases::kill_deployer_mid_rollout(&mut cluster).await);
    }
    if wanted("planner") {
        rows.push(cases::kill_planner_mid_plan(&mut cluster).await);
    }
    if wanted("monitor") {
        rows.push(cases::kill_monitor_mid_analysis(&mut cluster).await);
    }
    if wanted("incident") {
        rows.push(cases::kill_incident_commander(&mut cluster).await);
    }
    if wanted("escalation") {
        rows.push(cases::kill_incident_commander_mid_escalation(&mut cluster).await);
    }
    if wanted("nats-restart") {
        rows.push(cases::nats_restart_mid_rollout(&mut cluster).await);
    }
    if wanted("peer") {
        rows.push(cases::silent_peer(&mut cluster).await);
        rows.push(cases::garbage_peer(&mut cluster).await);
    }
    if wanted("metrics") {
        rows.push(cases::metrics_source_disappears(&mut cluster).await);
    }
    if wanted("chaos") {
        rows.push(chaos::kill_deployer_mid_chaos(&mut cluster).await);
    }
    cluster.stop().await;
    if wanted("before-nats") {
        rows.push(cases::started_before_nats().await);
    }
    if wanted("three-nodes") {
        rows.push(cases::three_node_cluster_loses_a_node().await);
    }
    let table = table(&rows);
    println!(
        "\nfault suite ({:.0} s):\n\n{table}",
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<_> = rows.iter().filter(|r| r.result.is_err()).collect();
    assert!(failed.is_empty(), "faults not survived:\n{table}");
}
