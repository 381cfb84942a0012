//! DORA figures from the event history.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_protocol::rollout::Rollout;
use toronto_protocol::tasks::{Plan, PlanTask};
use toronto_protocol::{Encoding, Envelope};
use toronto_runtime::Config;
use toronto_runtime::rpc::call;
use toronto_testkit::NatsServer;

use crate::support::*;

/// A rollout event of the deployer, as it would publish it.
fn rollout(
    service: &str,
    env: &str,
    phase: &str,
    started: chrono::DateTime<chrono::Utc>,
    ended: chrono::DateTime<chrono::Utc>,
    plan: Option<uuid::Uuid>,
    is_rollback: bool,
) -> (String, Envelope<Rollout>) {
    let r: Rollout = serde_json::from_value(serde_json::json!({
        "id": uuid::Uuid::now_v7(), "service": service, "environment": env,
        "version": "1.0.0", "image": "shop:1", "strategy": {"kind": "canary", "steps": []},
        "replicas": 3, "phase": phase, "steps": [], "step_index": 0, "weight": 0,
        "rolled_back": phase == "aborted", "is_rollback": is_rollback, "plan_id": plan,
        "idempotency_key": "k", "created_at": started, "updated_at": ended,
        "finished_at": ended,
    }))
    .unwrap();
    let mut event = Envelope::builder("toronto://devops/deployer", r).build();
    event.time = Some(ended);
    // The deployer announces a completed rollback as `rolled_back`.
    let what = if is_rollback && phase == "succeeded" {
        "rolled_back"
    } else {
        phase
    };
    (format!("toronto.devops.v1.events.rollout.{what}"), event)
}

#[tokio::test]
async fn dora_counts_every_failure_and_matches_a_hand_computed_history() {
    use toronto_protocol::incidents::{IncidentEvent, IncidentState, Severity};
    use toronto_protocol::tasks::{Change, DoraQuery, DoraReport, PlanState as S};
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

    // The history, as the deployer, the planner and the incident commander record it.
    let now = chrono::Utc::now();
    let (h, d, m) = (
        chrono::Duration::hours,
        chrono::Duration::days,
        chrono::Duration::minutes,
    );
    let completed = |commit: chrono::DateTime<chrono::Utc>, at: chrono::DateTime<chrono::Utc>| {
        let mut task = deploy("shop", "production");
        task.change = Some(Change {
            commit: Some("abc".into()),
            author: None,
            link: None,
            commit_time: Some(commit),
        });
        let plan = Plan {
            id: uuid::Uuid::now_v7(),
            task_id: uuid::Uuid::now_v7().to_string(),
            task: PlanTask::Deploy(Box::new(task)),
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
        let id = plan.id;
        let mut event = Envelope::builder("toronto://devops/planner", plan).build();
        event.time = Some(at);
        (id, event)
    };
    let mut plans = Vec::new();
    let mut events = Vec::new();
    // 1.0, ten days ago: healthy, committed 2 h before.
    let (p1, e) = completed(now - d(10) - h(2), now - d(10));
    plans.push(e);
    events.push(rollout(
        "shop",
        "production",
        "succeeded",
        now - d(10) - m(5),
        now - d(10),
        Some(p1),
        false,
    ));
    // 1.1, five days ago (lead 4 h), rolled back 30 min later by a rollback.
    let (p2, e) = completed(now - d(5) - h(4), now - d(5));
    plans.push(e);
    events.push(rollout(
        "shop",
        "production",
        "succeeded",
        now - d(5) - m(5),
        now - d(5),
        Some(p2),
        false,
    ));
    events.push(rollout(
        "shop",
        "production",
        "succeeded",
        now - d(5) + m(29),
        now - d(5) + m(30),
        None,
        true,
    ));
    // 1.2, three days ago: the canary took traffic for 40 s and was aborted.
    let aborted_at = now - d(3);
    events.push(rollout(
        "shop",
        "production",
        "aborted",
        aborted_at - chrono::Duration::seconds(40),
        aborted_at,
        None,
        false,
    ));
    // 1.3, a day ago (lead 6 h): triage links it to an incident detected an hour
    // later and mitigated ten minutes after that.
    let (p4, e) = completed(now - d(1) - h(6), now - d(1));
    plans.push(e);
    let (subject, r4) = rollout(
        "shop",
        "production",
        "succeeded",
        now - d(1) - m(5),
        now - d(1),
        Some(p4),
        false,
    );
    let r4_id = r4.data.id;
    events.push((subject, r4));
    // Outside the window, another environment, another service.
    events.push(rollout(
        "shop",
        "production",
        "succeeded",
        now - d(40) - m(5),
        now - d(40),
        None,
        false,
    ));
    events.push(rollout(
        "shop",
        "staging",
        "aborted",
        now - h(2),
        now - h(1),
        None,
        false,
    ));
    events.push(rollout(
        "cart",
        "production",
        "succeeded",
        now - h(3),
        now - h(2),
        None,
        false,
    ));
    for event in &plans {
        toronto_runtime::jetstream::publish_envelope(
            &js,
            "toronto.devops.v1.events.plan.completed",
            event,
        )
        .await
        .unwrap();
    }
    for (subject, event) in &events {
        toronto_runtime::jetstream::publish_envelope(&js, subject, event)
            .await
            .unwrap();
    }
    let detected = now - d(1) + h(1);
    let incident = uuid::Uuid::now_v7();
    for (what, state, at, changes) in [
        ("opened", IncidentState::Triggered, detected, vec![]),
        (
            "updated",
            IncidentState::Triggered,
            detected + m(1),
            vec![r4_id],
        ),
        (
            "mitigated",
            IncidentState::Mitigated,
            detected + m(10),
            vec![r4_id],
        ),
        (
            "resolved",
            IncidentState::Resolved,
            detected + h(2),
            vec![r4_id],
        ),
    ] {
        let e = IncidentEvent {
            id: incident,
            key: "k".into(),
            title: "shop errors".into(),
            service: "shop".into(),
            environment: "production".into(),
            state,
            severity: Severity::Sev2,
            alerts_firing: 1,
            alerts_total: 1,
            change: what.into(),
            changes,
            detected_at: Some(detected),
            by: None,
            at,
        };
        let mut event = Envelope::builder("toronto://devops/incident-commander", e).build();
        event.time = Some(at);
        toronto_runtime::jetstream::publish_envelope(
            &js,
            &format!("toronto.devops.v1.events.incident.{what}"),
            &event,
        )
        .await
        .unwrap();
    }

    let ask = |query: DoraQuery| {
        let client = client.clone();
        async move {
            let query = Envelope::builder("toronto://test", query).build();
            call(
                &client,
                "toronto.devops.v1.planner.dora.get",
                &query,
                Encoding::Json,
                Duration::from_secs(5),
            )
            .await
            .map(|r: Envelope<DoraReport>| r.data)
            .unwrap()
        }
    };
    let report = ask(DoraQuery {
        service: Some("shop".into()),
        weeks: Some(2),
        ..Default::default()
    })
    .await;
    // Four deploys in 30 days; three failed: rolled back, aborted, and the incident's.
    assert_eq!(report.deployments, 4, "{report:?}");
    assert!((report.deployment_frequency_per_day - 4.0 / 30.0).abs() < 1e-9);
    assert_eq!(report.failed_changes, 3);
    assert_eq!(
        (
            report.failures_by_cause.aborted,
            report.failures_by_cause.rolled_back,
            report.failures_by_cause.incident
        ),
        (1, 1, 1)
    );
    assert!((report.change_failure_rate.unwrap() - 0.75).abs() < 1e-9);
    // Lead times 2 h, 4 h and 6 h (the aborted deploy has none).
    assert_eq!(report.lead_time_median_seconds, Some(4.0 * 3600.0));
    assert_eq!(report.lead_time_mean_seconds, Some(4.0 * 3600.0));
    // Restores: 40 s (abort), 600 s (incident to mitigation), 1800 s (rollback).
    assert_eq!(report.time_to_restore_median_seconds, Some(600.0));
    // This week holds 1.1, 1.2 and 1.3; the week before, 1.0.
    assert_eq!(report.trend.len(), 2);
    assert_eq!(
        (report.trend[0].deployments, report.trend[0].failed_changes),
        (1, 0)
    );
    assert_eq!(report.trend[0].lead_time_median_seconds, Some(2.0 * 3600.0));
    assert_eq!(
        (report.trend[1].deployments, report.trend[1].failed_changes),
        (3, 3)
    );
    assert_eq!(report.trend[1].lead_time_median_seconds, Some(5.0 * 3600.0));
    assert_eq!(report.trend[1].time_to_restore_median_seconds, Some(600.0));

    // All services in production: shop's four and cart's one.
    let all = ask(DoraQuery::default()).await;
    assert_eq!((all.deployments, all.failed_changes), (5, 3));
    // The same query again is answered from memory; an event published since is counted.
    assert_eq!(ask(DoraQuery::default()).await, all);
    let (subject, event) = rollout(
        "cart",
        "production",
        "succeeded",
        now - h(1),
        now,
        None,
        false,
    );
    toronto_runtime::jetstream::publish_envelope(&js, &subject, &event)
        .await
        .unwrap();
    let after = ask(DoraQuery::default()).await;
    assert_eq!((after.deployments, after.failed_changes), (6, 3));
    // A window beyond what the planner keeps is refused, with the limit.
    let refused = call::<_, DoraReport>(
        &client,
        "toronto.devops.v1.planner.dora.get",
        &Envelope::builder(
            "toronto://test",
            DoraQuery {
                window_days: Some(365),
                ..Default::default()
            },
        )
        .build(),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("at most 92"), "{refused}");

    let text = http_get(&format!("http://{metrics}/metrics")).await;
    assert!(
        text.contains(
            "toronto_dora_change_failure_ratio{service=\"shop\",environment=\"production\"} 0.75"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "toronto_dora_time_to_restore_seconds{service=\"shop\",environment=\"production\"} 600"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "toronto_dora_deployments_per_second{service=\"*\",environment=\"production\"}"
        ),
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
