//! Restarting `toronto up --demo` on the same data directory: the simulated cluster
//! (kept in KV) still runs the demo service, nothing drifts, and a bad canary runs
//! beside that baseline and is rolled back to it.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use tokio::process::Child;
use toronto_testkit::nats_server_bin;

use super::{free_port, sigterm, tor, toronto, wait_until_all_answer};

fn demo(port: u16, data: &std::path::Path) -> Child {
    tor()
        .args([
            "up",
            "--demo",
            "--nats-port",
            &port.to_string(),
            "--http-port-base",
            "0",
            "--data-dir",
        ])
        .arg(data)
        .env_remove("TORONTO_NATS_URL")
        .env("TORONTO_NATS_SERVER_BIN", nats_server_bin().unwrap())
        .env("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", "1")
        .env("TORONTO_DEPLOYER_DRIFT_INTERVAL_SECONDS", "1")
        .env("TORONTO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn request(url: &str, subject: &str, ty: &str, data: &str) -> Option<serde_json::Value> {
    let out = toronto(url, &["request", subject, "--type", ty, "--data", data]).await;
    out.status
        .success()
        .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["data"].clone())
}

/// The simulated cluster's view of the demo service in staging, once it serves 1.0.0.
async fn shop_serving(url: &str) -> serde_json::Value {
    let mut sim = serde_json::Value::Null;
    for _ in 0..100 {
        if let Some(v) = request(
            url,
            "toronto.devops.v1.deployer.sim.get",
            "ai.toronto.devops.rollout.ref.v1",
            r#"{"service":"shop","environment":"staging"}"#,
        )
        .await
        {
            sim = v;
            if sim["traffic"]["1.0.0"] == 100 {
                return sim;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("shop 1.0.0 never served all of staging's traffic: {sim}");
}

/// Waits until the demo's own first deploys (verified for a few seconds) have ended.
async fn seeds_ended(url: &str) {
    for env in ["staging", "production"] {
        let data = format!(r#"{{"service":"shop","environment":"{env}"}}"#);
        for _ in 0..150 {
            let phase = request(
                url,
                "toronto.devops.v1.deployer.rollout.get",
                "ai.toronto.devops.rollout.ref.v1",
                &data,
            )
            .await
            .map(|r| r["phase"].as_str().unwrap_or_default().to_owned());
            if phase.is_some_and(|p| ["succeeded", "aborted", "failed"].contains(&p.as_str())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn a_restarted_demo_keeps_its_simulated_cluster_without_drift_and_rolls_bad_canaries_back_to_it()
 {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let data = tempfile::tempdir().unwrap();

    let mut up = demo(port, data.path());
    wait_until_all_answer(&url).await;
    let before = shop_serving(&url).await;
    seeds_ended(&url).await;
    assert!(sigterm(&mut up).await.success());

    let mut up = demo(port, data.path());
    wait_until_all_answer(&url).await;
    let client = async_nats::connect(&url).await.unwrap();
    let mut drift = client
        .subscribe("toronto.devops.v1.events.drift.detected")
        .await
        .unwrap();
    client.flush().await.unwrap();
    // The world survived the restart: the same pods and versions, at once.
    let after = shop_serving(&url).await;
    assert_eq!(after["workloads"], before["workloads"], "{after}");
    // Drift is checked every second: nothing differs, so nothing is reported.
    let heard = tokio::time::timeout(Duration::from_secs(4), drift.next()).await;
    assert!(
        heard.is_err(),
        "drift after a restart: {:?}",
        heard.ok().flatten().map(|m| m.payload)
    );

    // A bad canary after the restart runs beside the running baseline (an empty
    // cluster had none) and is stopped and rolled back to it.
    request(
        &url,
        "toronto.devops.v1.deployer.sim.fault",
        "ai.toronto.devops.sim.fault.v1",
        r#"{"service":"shop","environment":"staging","version":"1.2.0","error_rate":0.5}"#,
    )
    .await
    .expect("sim.fault");
    let accepted = request(
        &url,
        "toronto.devops.v1.planner.submit",
        "ai.toronto.devops.task.deploy.v1",
        r#"{"service":"shop","version":"1.2.0","environment":"staging","strategy":{"kind":"canary","steps":[{"weight":50,"pause_seconds":30},{"weight":100}]}}"#,
    )
    .await
    .expect("submitted");
    let plan_id = accepted["plan_id"].as_str().unwrap().to_owned();
    let mut plan = serde_json::Value::Null;
    for _ in 0..150 {
        plan = request(
            &url,
            "toronto.devops.v1.planner.plan.get",
            "ai.toronto.devops.planner.plan.get.v1",
            &format!(r#"{{"plan_id":"{plan_id}"}}"#),
        )
        .await
        .unwrap_or_default();
        if plan["state"] == "completed" || plan["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(plan["state"], "failed", "{plan:#}");
    let rollout = request(
        &url,
        "toronto.devops.v1.deployer.rollout.get",
        "ai.toronto.devops.rollout.ref.v1",
        r#"{"service":"shop","environment":"staging"}"#,
    )
    .await
    .expect("rollout.get");
    assert_eq!(rollout["version"], "1.2.0", "{rollout:#}");
    assert_eq!(rollout["phase"], "aborted", "{rollout:#}");
    // Stopped by the deployer's analysis or by the incident its errors opened,
    // whichever came first: either way with the old version back.
    assert_eq!(rollout["rolled_back"], true, "{rollout:#}");
    let after = shop_serving(&url).await;
    assert_eq!(after["traffic"]["1.0.0"], 100, "rolled back: {after}");
    assert!(sigterm(&mut up).await.success());
}
