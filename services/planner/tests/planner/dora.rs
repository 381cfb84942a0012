//! DORA figures from the event history.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{Plan, PlanTask};
use toronto_protocol::{Encoding, Envelope};
use toronto_runtime::Config;
use toronto_runtime::rpc::call;
use toronto_testkit::NatsServer;

use crate::support::*;

#[tokio::test]
async fn dora_figures_match_a_hand_computed_event_history() {
    use toronto_protocol::tasks::{Change, DoraQuery, DoraReport, PlanState as S, RollbackTask};
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start_with(config, settings(), shutdown.clone())
        .await
        .unwrap();
    let metrics = rt.http_addr.unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());

    // The history, as completed-plan events in the stream (times are the events' own).
    let now = chrono::Utc::now();
    let h = chrono::Duration::hours;
    let d = chrono::Duration::days;
    let completed = |task: PlanTask, at: chrono::DateTime<chrono::Utc>| {
        let plan = Plan {
            id: uuid::Uuid::now_v7(),
            task_id: uuid::Uuid::now_v7(),
            task,
            state: S::Completed,
            requested_by: "toronto://test".into(),
            requested_by_principal: None,
            correlationid: "c".into(),
            intake: "submit".into(),
            created_at: at,
            cancellation: None,
            steps: vec![],
            reason: None,
            decisions: vec![],
            updated_at: Some(at),
            artifacts: vec![],
            lease: None,
            delegation: None,
        };
        let mut event = Envelope::builder("toronto://devops/planner", plan).build();
        event.time = Some(at);
        event
    };
    let deploy_at =
        |service: &str, env: &str, version: &str, commit: chrono::DateTime<chrono::Utc>| {
            let mut t = deploy(service, env);
            t.version = version.into();
            t.change = Some(Change {
                commit: Some("abc".into()),
                author: None,
                link: None,
                commit_time: Some(commit),
            });
            PlanTask::Deploy(Box::new(t))
        };
    let rollback = |service: &str| {
        PlanTask::Rollback(RollbackTask {
            service: service.into(),
            environment: "production".into(),
            target_version: None,
        })
    };
    let history = vec![
        completed(
            deploy_at("shop", "production", "1.0", now - d(10) - h(2)),
            now - d(10),
        ), // lead 2 h
        completed(
            deploy_at("shop", "production", "1.1", now - d(5) - h(4)),
            now - d(5),
        ), // lead 4 h, fails
        completed(rollback("shop"), now - d(5) + chrono::Duration::minutes(30)), // restored after 30 min
        completed(
            deploy_at("shop", "production", "1.2", now - d(1) - h(6)),
            now - d(1),
        ), // lead 6 h
        completed(
            deploy_at("shop", "production", "0.9", now - d(40)),
            now - d(40),
        ), // outside the window
        completed(deploy_at("shop", "staging", "1.3", now - h(3)), now - h(1)), // another environment
        completed(
            deploy_at("cart", "production", "7.0", now - h(5)),
            now - h(2),
        ), // another service
    ];
    for event in &history {
        toronto_runtime::jetstream::publish_envelope(
            &js,
            "toronto.devops.v1.events.plan.completed",
            event,
        )
        .await
        .unwrap();
    }

    let query = Envelope::builder(
        "toronto://test",
        DoraQuery {
            service: Some("shop".into()),
            ..Default::default()
        },
    )
    .build();
    let report: DoraReport = call(
        &client,
        "toronto.devops.v1.planner.dora.get",
        &query,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .map(|r: Envelope<DoraReport>| r.data)
    .unwrap();
    assert_eq!(report.deployments, 3);
    assert!(
        (report.deployment_frequency_per_day - 0.1).abs() < 1e-9,
        "{report:?}"
    );
    assert_eq!(report.lead_time_median_seconds, Some(4.0 * 3600.0));
    assert_eq!(report.lead_time_mean_seconds, Some(4.0 * 3600.0));
    assert_eq!(report.failed_changes, 1);
    assert!((report.change_failure_rate.unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(report.time_to_restore_median_seconds, Some(1800.0));

    // All services in production: shop's three and cart's one, no failure for cart.
    let all = Envelope::builder("toronto://test", DoraQuery::default()).build();
    let report: DoraReport = call(
        &client,
        "toronto.devops.v1.planner.dora.get",
        &all,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .map(|r: Envelope<DoraReport>| r.data)
    .unwrap();
    assert_eq!(report.deployments, 4);
    assert_eq!(report.failed_changes, 1);

    let text = http_get(&format!("http://{metrics}/metrics")).await;
    assert!(
        text.contains(
            "toronto_dora_change_failure_rate{service=\"shop\",environment=\"production\"} 0.333"
        ),
        "{text}"
    );
    assert!(
        text.contains("toronto_dora_deployments_per_day{service=\"*\",environment=\"production\"}"),
        "{text}"
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A plain HTTP GET on loopback (no client library needed for one request).
pub async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}
