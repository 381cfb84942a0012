//! The flagship flow, end to end, with every service of the agent in-process against
//! one real nats-server (the simulated cluster stands in for Kubernetes):
//!
//! a peer publishes a deploy task on `toronto.agents.devops.tasks`; test security and QA
//! peers answer; a different operator approves through the chat bridge's Slack endpoint
//! with a valid signature; the canary runs on the simulated cluster; a fault injected into
//! the canary is caught, the rollout aborted and rolled back; the monitor's page alert
//! opens an incident linked to the rollout; the playbook acts; the monitor confirms
//! recovery; the incident resolves; the postmortem holds the timeline. Every assertion
//! reads the event stream (or asks a service), and the test prints the time from fault
//! to rollback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_protocol::incidents::{
    Incident, IncidentEvent, IncidentGet, Postmortem, PostmortemRequest,
};
use toronto_protocol::rollout::{Rollout, SimFault, SimService};
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, ExecuteAccepted, ExecuteRequest, GateVerdict, Plan, PlanTask,
    QaTestRequest, SecurityScanRequest, Strategy,
};
use toronto_protocol::{Encoding, Envelope, ErrorBody, Message};
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::rpc::call;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_runtime::{Config, Metrics, ServiceRuntime};
use toronto_testkit::NatsServer;

mod support;
use support::*;

#[tokio::test]
async fn a_peers_deploy_is_approved_in_chat_rolled_back_on_a_fault_and_its_incident_written_up() {
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(logs.clone())
        .init();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = client
        .subscribe("toronto.devops.v1.events.>")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&client).await;
    tokio::spawn(async move {
        while let Some(m) = events.next().await {
            if let Ok(v) = serde_json::from_slice(&m.payload) {
                let _ = tx.send((m.subject.to_string(), v));
            }
        }
    });
    let mut stream = Stream {
        rx,
        seen: Vec::new(),
    };
    let shutdown = CancellationToken::new();
    let mut running: Vec<ServiceRuntime> = Vec::new();

    // The planner: production needs an approval, by an operator other than the requester.
    running.push(
        toronto_planner::start_with(
            config(&server),
            toronto_planner::Settings {
                promotion: Vec::new(),
                budget_environments: Vec::new(),
                gate_timeout: Duration::from_secs(5),
                lease: Duration::from_secs(10),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap(),
    );
    // The deployer on the simulated cluster: analysis every second with the windowed
    // test alone. With the sequential test (the default) a canary failing every request
    // is aborted in about 0.2 s, before its errors burn the SLO, so no incident would
    // open; the windowed test takes about 1.5 s, which burns the time-compressed SLO
    // and lets the story go on to its incident. (The sequential path is proved by the
    // deployer's and the monitor's tests and the abort benchmark.)
    let deployer = toronto_deployer::start_with(
        config(&server),
        toronto_deployer::Settings {
            step_pause: Duration::from_secs(60),
            drift_interval: Duration::ZERO,
            sequential_analysis: false,
            ..Default::default()
        },
        None,
        shutdown.clone(),
    )
    .await
    .unwrap();
    running.push(deployer.runtime);
    // The monitor evaluates the service's SLO, time compressed (1 h lasts 1 s).
    let slo_dir = tempfile::tempdir().unwrap();
    std::fs::write(slo_dir.path().join("shop.yaml"), slo()).unwrap();
    running.push(
        toronto_monitor::start_with(
            config(&server),
            toronto_monitor::Settings {
                slo_dir: Some(slo_dir.path().to_owned()),
                time_scale: 3600.0,
                slo_interval: Duration::from_millis(100),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap(),
    );
    // The incident commander: an incident with a linked change waits for the monitor to
    // confirm recovery (the deployer has already rolled back).
    let policy = toronto_incident_commander::settings::Policy::from_yaml(
        r#"
default_severity: sev3
playbooks:
  - name: confirm-the-rollback
    when: { change_linked: true }
    actions:
      - { action: wait_recovery, timeout_seconds: 60 }
autonomy:
  severities: [sev1, sev2, sev3, sev4]
  environments: [production]
"#,
    )
    .unwrap();
    running.push(
        toronto_incident_commander::start_with(
            config(&server),
            toronto_incident_commander::Settings {
                policy,
                resolve_hold: Duration::from_millis(200),
                tick: Duration::from_millis(100),
                recovery_poll: Duration::from_millis(200),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap(),
    );
    // The chat bridge: two operators.
    let mut chat_config = config(&server);
    chat_config.http.addr = "127.0.0.1:0".into();
    let chat = toronto_chat_bridge::start_with(
        chat_config,
        toronto_chat_bridge::Settings {
            slack_signing_secret: Some(toronto_chat_bridge::settings::Secret::new(SECRET)),
            roles: HashMap::from([
                ("U_ALICE".to_owned(), toronto_commands::Role::Operator),
                ("U_BOB".to_owned(), toronto_commands::Role::Operator),
            ]),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let chat_http = chat.http_addr.expect("the bridge serves HTTP");
    running.push(chat);
    // Everyone who acts is a principal of the registry (TORONTO_AUTH=required, the
    // default): the two humans, known to the chat bridge by their Slack user ids, and
    // the developer agent, whose key signs its task and who alone may claim its source.
    use toronto_protocol::auth::{PrincipalKind, Role};
    for (who, chat_id) in [("alice", "slack:U_ALICE"), ("bob", "slack:U_BOB")] {
        toronto_testkit::person(&client, who, &[Role::Operator, Role::Approver], &[chat_id]).await;
    }
    let keys = tempfile::tempdir().unwrap();
    let (developer_seed, developer) = seed_and_signer(keys.path(), "developer");
    let (_, mut record) = toronto_testkit::principal("developer-agent", &[Role::Operator]);
    record.keys = vec![developer.public_key()];
    record.kind = PrincipalKind::Agent;
    record.sources = vec!["toronto://agents/developer/dev-1".into()];
    toronto_testkit::put_principal(&client, &record).await;
    let peers = peers(&client).await;

    // shop 1.0.0 runs in production.
    let first: ExecuteAccepted = ask(
        &client,
        "toronto.devops.v1.deployer.rollout.start",
        ExecuteRequest {
            plan_id: uuid::Uuid::now_v7(),
            idempotency_key: "seed:shop:1.0.0".into(),
            task: PlanTask::Deploy(Box::new(DeployTask {
                service: SERVICE.into(),
                version: "1.0.0".into(),
                image: None,
                environment: ENV.into(),
                strategy: Strategy::Canary { steps: Vec::new() },
                change: None,
                fix: false,
                policy_override: None,
            })),
        },
    )
    .await;
    assert!(first.reference.is_some());
    stream
        .wait(
            "toronto.devops.v1.events.rollout.succeeded",
            |r: &Rollout| r.version == "1.0.0",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // healthy traffic for the SLO

    // 1. A peer (the developer agent) publishes the deploy task on the work queue.
    let task = Envelope::builder(
        "toronto://agents/developer/dev-1",
        DeployTask {
            service: SERVICE.into(),
            version: "1.1.0".into(),
            image: None,
            environment: ENV.into(),
            strategy: Strategy::Canary {
                steps: vec![
                    CanaryStep {
                        weight: 25,
                        pause_seconds: Some(60),
                    },
                    CanaryStep {
                        weight: 100,
                        pause_seconds: None,
                    },
                ],
            },
            change: None,
            fix: false,
            policy_override: None,
        },
    )
    .build();
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", task.id.to_string().as_str());
    headers.insert("Content-Type", "application/json");
    let bytes = toronto_protocol::encode(&task, Encoding::Json).unwrap();
    developer.apply(&mut headers, "toronto.agents.devops.tasks", &bytes);
    js.publish_with_headers("toronto.agents.devops.tasks", headers, bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();

    // 2. Security and QA pass; the plan waits for a human.
    let waiting: Plan = stream
        .wait("toronto.devops.v1.events.gate.waiting", |p: &Plan| {
            p.task.service() == SERVICE
        })
        .await;
    let passed: Vec<&str> = waiting
        .steps
        .iter()
        .filter(|s| s.state == toronto_protocol::tasks::StepState::Succeeded)
        .map(|s| s.id.as_str())
        .collect();
    assert!(
        passed.contains(&"security-scan") && passed.contains(&"qa-test"),
        "{passed:?}"
    );

    // 3. Bob, an operator who did not ask, approves in Slack (a signed slash command).
    let body = format!(
        "team_id=T1&user_id=U_BOB&user_name=bob&command=%2Fdevops&text=approve+{}&response_url=",
        waiting.id
    );
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature =
        toronto_chat_bridge::verify::slack_signature(SECRET.as_bytes(), &ts, body.as_bytes());
    let reply = reqwest::Client::new()
        .post(format!("http://{chat_http}/slack/commands"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{}", reply.status());

    // 4. The canary takes 25 percent of the simulated traffic.
    let canary = stream
        .wait(
            "toronto.devops.v1.events.rollout.progressed",
            |r: &Rollout| r.version == "1.1.0" && r.weight == 25,
        )
        .await;

    // 5. A fault in the canary: every request to 1.1.0 fails.
    let _: SimService = ask(
        &client,
        "toronto.devops.v1.deployer.sim.fault",
        SimFault {
            service: SERVICE.into(),
            environment: ENV.into(),
            version: "1.1.0".into(),
            error_rate: 1.0,
            ..Default::default()
        },
    )
    .await;
    let fault_at = Instant::now();
    let aborted = stream
        .wait("toronto.devops.v1.events.rollout.aborted", |r: &Rollout| {
            r.id == canary.id
        })
        .await;
    let to_abort = fault_at.elapsed();
    let rolled_back = stream
        .wait(
            "toronto.devops.v1.events.rollout.rolled_back",
            |r: &Rollout| r.id == canary.id,
        )
        .await;
    let to_rollback = fault_at.elapsed();
    println!(
        "flagship: fault injected -> rollout.aborted in {:.2} s, rollout.rolled_back in {:.2} s",
        to_abort.as_secs_f64(),
        to_rollback.as_secs_f64()
    );
    assert!(rolled_back.rolled_back);
    // The monitor caught it: its canary analysis, or its page alert heard on the bus,
    // whichever came first.
    let source = aborted
        .analyses
        .last()
        .map(|a| a.source.clone())
        .unwrap_or_default();
    assert!(source == "monitor" || source == "alert", "{source}");
    println!("flagship: the abort's evidence came from the {source}");
    let view: SimService = ask(
        &client,
        "toronto.devops.v1.deployer.sim.get",
        toronto_protocol::rollout::RolloutRef {
            service: Some(SERVICE.into()),
            environment: Some(ENV.into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(view.traffic.get("1.0.0"), Some(&100), "{view:?}");
    // The plan fails with the reason.
    let failed: Plan = stream
        .wait("toronto.devops.v1.events.plan.failed", |p: &Plan| {
            p.id == waiting.id
        })
        .await;
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("aborted and rolled back"),
        "{:?}",
        failed.reason
    );

    // 6. The monitor's page alert opens an incident linked to the rollout.
    let opened: IncidentEvent = stream
        .wait(
            "toronto.devops.v1.events.incident.opened",
            |e: &IncidentEvent| e.service == SERVICE,
        )
        .await;
    // 7. The playbook waits for the monitor to confirm recovery; the incident resolves.
    let resolved: IncidentEvent = stream
        .wait(
            "toronto.devops.v1.events.incident.resolved",
            |e: &IncidentEvent| e.id == opened.id,
        )
        .await;
    assert!(
        resolved.change.contains("confirmed recovery"),
        "{}",
        resolved.change
    );
    let incident: Incident = ask(
        &client,
        "toronto.devops.v1.incident.get",
        IncidentGet { id: opened.id },
    )
    .await;
    assert!(
        incident.changes.iter().any(|c| c.rollout_id == canary.id),
        "the incident links the canary: {:?}",
        incident.changes
    );
    // 8. The postmortem holds the timeline and the durations.
    let postmortem: Postmortem = ask(
        &client,
        "toronto.devops.v1.incident.postmortem",
        PostmortemRequest {
            id: opened.id,
            by: "bob".into(),
            action_items: vec!["make the canary fault-tolerant".into()],
        },
    )
    .await;
    let md = &postmortem.markdown;
    assert!(md.contains(&canary.id.to_string()), "{md}");
    assert!(md.contains("confirmed recovery"), "{md}");
    assert!(md.contains("make the canary fault-tolerant"), "{md}");
    assert!(postmortem.time_to_resolve_seconds.is_some());
    println!(
        "flagship: incident {} opened {:?}, resolved after {:.1} s",
        opened.id,
        opened.severity,
        postmortem.time_to_resolve_seconds.unwrap_or_default()
    );

    // 8b. DORA counts the canary as one failed change, shown by its abort and by its
    // incident, restored when traffic went back.
    let dora: toronto_protocol::tasks::DoraReport = ask(
        &client,
        "toronto.devops.v1.planner.dora.get",
        toronto_protocol::tasks::DoraQuery {
            service: Some(SERVICE.into()),
            environment: Some(ENV.into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(dora.failed_changes, 1, "{dora:?}");
    let causes = &dora.failures_by_cause;
    assert_eq!(
        (causes.aborted, causes.rolled_back, causes.incident),
        (1, 0, 1),
        "{dora:?}"
    );
    assert!(dora.time_to_restore_median_seconds.is_some(), "{dora:?}");
    println!(
        "flagship: DORA {} deploys, {} failed, time to restore {:.1} s",
        dora.deployments,
        dora.failed_changes,
        dora.time_to_restore_median_seconds.unwrap_or_default()
    );

    // 9. No secret reached a log, an event, an error or /metrics: the Slack signing
    // secret, the seeds of the services (the test admin's) and of the developer agent.
    let forged = reqwest::Client::new()
        .post(format!("http://{chat_http}/slack/commands"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "x-slack-request-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header("x-slack-signature", format!("v0={}", "0".repeat(64)))
        .body("user_id=U_BOB&text=help")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::UNAUTHORIZED);
    let mut outputs = vec![("the refused Slack request", forged.text().await.unwrap())];
    let metrics = reqwest::get(format!("http://{chat_http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    outputs.push(("the chat bridge's /metrics", metrics));
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(event) = stream.rx.try_recv() {
        stream.seen.push(event);
    }
    for (subject, event) in &stream.seen {
        outputs.push(("an event", format!("{subject} {event}")));
    }
    peers.stop(Duration::from_millis(200)).await;
    shutdown.cancel();
    for rt in running {
        rt.run_until_shutdown().await.unwrap();
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logged.lines().count() > 50, "the services logged: {logged}");
    outputs.push(("the logs", logged));
    let secrets = [
        ("the Slack signing secret", SECRET.to_owned()),
        (
            "the services' seed",
            toronto_testkit::TEST_ADMIN_SEED.to_owned(),
        ),
        ("the developer agent's seed", developer_seed),
    ];
    for (what, secret) in &secrets {
        for (where_, text) in &outputs {
            assert!(!text.contains(secret.as_str()), "{what} is in {where_}");
        }
    }
    println!(
        "flagship: {} outputs ({} events, the logs, /metrics, an error) hold none of {} secrets",
        outputs.len(),
        stream.seen.len(),
        secrets.len()
    );
}
