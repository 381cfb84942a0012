//! `toronto up --demo`: a canary past the demo gates, and the demo incident told from a
//! bad change to its postmortem.

use super::*;

#[tokio::test]
async fn up_demo_answers_status_and_ships_a_canary_past_its_demo_gates() {
    let server = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut up = tor()
        .args(["up", "--demo", "--http-port-base", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("TORONTO_NATS_URL", server.url())
        .env("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", "2")
        .env("TORONTO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = wait_until_all_answer(&server.url()).await;
    assert!(status.contains("toronto-deployer"), "{status}");
    let request = |subject: &'static str, ty: &'static str, data: String| {
        let url = server.url();
        async move {
            let out = toronto(
                &url,
                &["request", subject, "--type", ty, "--data", data.as_str()],
            )
            .await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["data"].clone()
        }
    };
    // The demo service runs, labelled a simulation.
    let mut sim = serde_json::Value::Null;
    for _ in 0..50 {
        let out = toronto(
            &server.url(),
            &[
                "request",
                "toronto.devops.v1.deployer.sim.get",
                "--type",
                "ai.toronto.devops.rollout.ref.v1",
                "--data",
                r#"{"service":"shop","environment":"staging"}"#,
            ],
        )
        .await;
        if out.status.success() {
            sim = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["data"].clone();
            if sim["traffic"]["1.0.0"] == 100 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sim["simulated"], true, "{sim}");
    assert_eq!(sim["traffic"]["1.0.0"], 100, "{sim}");
    // A deploy passes the demo security and QA agents and its canary ships.
    let accepted = request(
        "toronto.devops.v1.planner.submit",
        "ai.toronto.devops.task.deploy.v1",
        r#"{"service":"shop","version":"1.1.0","environment":"staging","strategy":{"kind":"canary","steps":[{"weight":50},{"weight":100}]}}"#.into(),
    )
    .await;
    let plan_id = accepted["plan_id"].as_str().unwrap().to_owned();
    let mut plan = serde_json::Value::Null;
    for _ in 0..100 {
        plan = request(
            "toronto.devops.v1.planner.plan.get",
            "ai.toronto.devops.planner.plan.get.v1",
            format!(r#"{{"plan_id":"{plan_id}"}}"#),
        )
        .await;
        if plan["state"] == "completed" || plan["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(plan["state"], "completed", "{plan:#}");
    let security = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "security-scan")
        .unwrap();
    assert!(
        security["reason"].as_str().unwrap().contains("DEMO"),
        "{security}"
    );
    // A faulty version, followed from the terminal: progress, then the rollback, exit 1.
    request(
        "toronto.devops.v1.deployer.sim.fault",
        "ai.toronto.devops.sim.fault.v1",
        r#"{"service":"shop","environment":"staging","version":"1.2.0","error_rate":0.5}"#.into(),
    )
    .await;
    let followed = toronto(
        &server.url(),
        &[
            "run",
            "--follow",
            "deploy",
            "shop",
            "1.2.0",
            "to",
            "staging",
            "--strategy",
            "canary",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&followed.stdout);
    let stderr = String::from_utf8_lossy(&followed.stderr);
    assert!(!followed.status.success(), "{stdout}");
    assert!(stdout.contains("rollout.progressed"), "{stdout}");
    assert!(stdout.contains("rollout.rolled_back"), "{stdout}");
    assert!(stderr.contains("aborted and rolled back"), "{stderr}");
    let exit = sigterm(&mut up).await;
    assert!(exit.success());
}

#[tokio::test]
async fn demo_incident_tells_the_whole_story_from_a_bad_change_to_a_postmortem() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = client
        .subscribe("toronto.devops.v1.events.>")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let data = tempfile::tempdir().unwrap();
    let mut up = tor()
        .args(["up", "--demo", "--http-port-base", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("TORONTO_NATS_URL", server.url())
        .env("TORONTO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until_all_answer(&server.url()).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // healthy traffic for the SLOs
    let dir = tempfile::tempdir().unwrap();
    let story = tor()
        .args(["demo", "incident", "--postmortem-dir"])
        .arg(dir.path())
        .arg("--identities-dir")
        .arg(data.path().join("identities"))
        .env("TORONTO_NATS_URL", server.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&story.stdout);
    assert!(
        story.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&story.stderr)
    );
    println!(
        "demo incident: the whole story (up --demo included) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for step in [
        "1. the change is in production",
        "2. the SLO burns",
        "3. the alert fires",
        "4. incident",
        "5. user:",
        "6. the playbook rolled the change back",
        "7. the monitor confirms recovery",
        "8. incident",
        "9. the postmortem is written",
        "SLO time compressed 360x",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "one postmortem");
    // The events, in order: exactly one incident, one rollback, one postmortem.
    let mut seen: Vec<(String, serde_json::Value)> = Vec::new();
    use futures::StreamExt;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), bus.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        seen.push((m.subject.to_string(), v));
    }
    let position = |name: &str, pick: &dyn Fn(&serde_json::Value) -> bool| {
        seen.iter()
            .position(|(s, v)| s.ends_with(name) && pick(&v["data"]))
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let prod = |d: &serde_json::Value| {
        d["environment"] == "production" || d["labels"]["environment"] == "production"
    };
    let bad = position(".rollout.succeeded", &|d| {
        prod(d) && d["version"] == "1.3.0"
    });
    let firing = position(".alert.firing", &prod);
    let opened = position(".incident.opened", &prod);
    let paged = position(".page.sent", &|_| true);
    let rollback = position(".rollout.rolled_back", &|d| {
        prod(d) && d["is_rollback"] == true
    });
    let resolved = position(".incident.resolved", &prod);
    let closed = position(".incident.closed", &prod);
    assert!(
        bad < firing && firing < opened && opened < paged && paged < rollback,
        "{bad} {firing} {opened} {paged} {rollback}"
    );
    assert!(
        rollback < resolved && resolved < closed,
        "{rollback} {resolved} {closed}: {:?}",
        seen.iter()
            .map(|(s, v)| format!("{s} {}", v["data"]["environment"]))
            .collect::<Vec<_>>()
    );
    let count = |name: &str| seen.iter().filter(|(s, _)| s.ends_with(name)).count();
    assert_eq!(count(".incident.opened"), 1);
    assert_eq!(count(".incident.closed"), 1);
    assert_eq!(
        seen.iter()
            .filter(|(s, v)| s.ends_with(".rollout.started") && v["data"]["is_rollback"] == true)
            .count(),
        1,
        "one rollback"
    );
    // DORA, asked as a user would: the bad change is one failed change, shown by its
    // rollback and by its incident, with a time to restore.
    let dora = tor()
        .args(["run", "dora", "shop", "--output", "json"])
        .env("TORONTO_NATS_URL", server.url())
        .output()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&dora.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&dora.stdout)));
    let report = &doc["data"];
    assert_eq!(report["failed_changes"], 1, "{report}");
    assert_eq!(report["failures_by_cause"]["rolled_back"], 1, "{report}");
    assert_eq!(report["failures_by_cause"]["incident"], 1, "{report}");
    assert!(
        report["time_to_restore_median_seconds"].is_number(),
        "{report}"
    );
    let exit = sigterm(&mut up).await;
    assert!(exit.success());
}
