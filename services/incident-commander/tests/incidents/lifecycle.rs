//! Escalation across a restart, postmortems and metrics, flapping, severity and autonomy.

use super::*;
use toronto_protocol::incidents::{PlaybookState, TimelineKind};

fn escalation_policy() -> Policy {
    Policy::from_yaml(
        r#"
escalation_policies:
  - name: default
    levels:
      - notify: [schedule:primary]
        ack_timeout_seconds: 2
      - notify: [agent:sre]
        ack_timeout_seconds: 2
default_escalation: default
schedules:
  - name: primary
    participants: [alice]
    start: 2026-01-01T00:00:00Z
    handoff_seconds: 86400
"#,
    )
    .unwrap()
}

#[tokio::test]
async fn escalation_pages_the_next_level_after_the_deadline_even_across_a_restart() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(
        &client,
        &["toronto.devops.v1.events.>", "toronto.agents.sre.v1.notify"],
    )
    .await;
    let settings = Settings {
        policy: escalation_policy(),
        ..quick()
    };
    let ic = start_commander(&server.url(), settings.clone()).await;
    publish_alert(
        &client,
        &[
            ("alertname", "Down"),
            ("service", "billing"),
            ("environment", "production"),
        ],
        AlertStatus::Firing,
    )
    .await;
    let first: Page = bus.wait(PAGES, |p: &Page| p.level == Some(0)).await;
    assert_eq!(first.target, "user:alice", "the schedule's person on call");

    // The service restarts while the first level's deadline runs.
    ic.stop().await;
    let ic = start_commander(&server.url(), settings).await;

    let second: Page = bus.wait(PAGES, |p: &Page| p.level == Some(1)).await;
    assert_eq!(second.target, "agent:sre");
    assert_eq!(second.incident_id, first.incident_id);
    bus.wait("toronto.agents.sre.v1.notify", |p: &Page| {
        p.level == Some(1)
    })
    .await;
    // The policy runs out; exactly one page per level went out.
    bus.wait(ESCALATED, |e: &IncidentEvent| {
        e.change.contains("exhausted")
    })
    .await;
    let pages: Vec<Page> = bus.all(PAGES);
    assert_eq!(pages.len(), 2, "{pages:#?}");
    let incident = bus.incident(first.incident_id).await;
    assert_eq!(incident.escalation.pages_sent, 2);

    // An acknowledgement stops escalation.
    let acked: Incident = bus
        .request(
            "ack",
            IncidentAction {
                id: incident.id,
                by: "alice".into(),
                reason: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(acked.state, IncidentState::Acknowledged);
    assert!(acked.escalation.next_at.is_none());
    ic.stop().await;
}

#[tokio::test]
async fn the_postmortem_has_the_timeline_and_the_durations_and_metrics_count_it() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(&server.url(), quick()).await;
    let incident: Incident = bus
        .request(
            "open",
            toronto_protocol::incidents::IncidentOpen {
                title: "Checkout latency".into(),
                service: "checkout".into(),
                environment: "production".into(),
                severity: Some(Severity::Sev2),
                labels: BTreeMap::new(),
                by: "bob".into(),
            },
        )
        .await
        .unwrap();
    let early = bus
        .request::<_, Postmortem>(
            "postmortem",
            PostmortemRequest {
                id: incident.id,
                by: "bob".into(),
                action_items: vec![],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(early.code(), toronto_protocol::ErrorCode::Conflict);
    let action = |id| IncidentAction {
        id,
        by: "bob".into(),
        reason: Some("looking".into()),
    };
    bus.request::<_, Incident>("ack", action(incident.id))
        .await
        .unwrap();
    bus.request::<_, Incident>(
        "note",
        IncidentNote {
            id: incident.id,
            by: "agent:developer".into(),
            text: "cache hit ratio dropped to 10%".into(),
            action_item: false,
        },
    )
    .await
    .unwrap();
    bus.request::<_, Incident>("mitigate", action(incident.id))
        .await
        .unwrap();
    let resolved: Incident = bus.request("resolve", action(incident.id)).await.unwrap();
    let pm: Postmortem = bus
        .request(
            "postmortem",
            PostmortemRequest {
                id: incident.id,
                by: "bob".into(),
                action_items: vec!["alert on cache hit ratio".into()],
            },
        )
        .await
        .unwrap();
    let md = &pm.markdown;
    for section in [
        "## Summary",
        "## Impact",
        "## Detection",
        "## Response",
        "## Timeline",
        "## Contributing change",
        "## Notes",
        "## Action items",
        "## Durations",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    assert!(md.contains("cache hit ratio dropped to 10%"));
    assert!(md.contains("- [ ] alert on cache hit ratio"));
    assert!(md.contains("acknowledged by bob"));
    let ack = resolved.acknowledged_at.unwrap();
    let expected = (ack - resolved.opened_at).num_milliseconds() as f64 / 1000.0;
    assert_eq!(pm.time_to_acknowledge_seconds, Some(expected));
    let expected =
        (resolved.resolved_at.unwrap() - resolved.opened_at).num_milliseconds() as f64 / 1000.0;
    assert_eq!(pm.time_to_resolve_seconds, Some(expected));
    assert!(md.contains(&ack.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()));
    assert_eq!(bus.incident(incident.id).await.state, IncidentState::Closed);

    let m: IncidentMetrics = bus
        .request("metrics", IncidentMetricsQuery::default())
        .await
        .unwrap();
    assert_eq!(m.incidents, 1);
    assert_eq!(m.by_severity["sev2"], 1);
    assert!(m.mttr_seconds.unwrap() >= m.mtta_seconds.unwrap());
    // /metrics follows within a second or so.
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(ic.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("toronto_incidents{severity=\"sev2\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("toronto_incidents{severity=\"sev2\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("toronto_incident_time_to_resolve_seconds_count 1"),
        "{text}"
    );
    ic.stop().await;
}

#[tokio::test]
async fn a_flapping_alert_keeps_one_incident_and_a_quick_return_reopens_it() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(
        &server.url(),
        Settings {
            resolve_hold: Duration::from_secs(1),
            ..quick()
        },
    )
    .await;
    let alerts = ic.url("/api/v2/alerts");
    let flappy = [
        ("alertname", "QueueDepth"),
        ("service", "orders"),
        ("environment", "production"),
    ];
    // Fires, clears and fires again within the hold: one incident, never resolved.
    for resolved in [false, true, false] {
        let r = post(&alerts, &serde_json::json!([postable(&flappy, resolved)])).await;
        assert_eq!(r.status(), 200);
    }
    let incidents = bus.incidents().await;
    assert_eq!(incidents.len(), 1);
    let id = incidents[0].id;
    assert!(incidents[0].state.is_open());
    assert_eq!(incidents[0].alerts_firing, 1);
    assert_eq!(incidents[0].alerts_total, 1);
    // Clears for good: resolved after the hold.
    post(&alerts, &serde_json::json!([postable(&flappy, true)])).await;
    bus.wait(RESOLVED, |e: &IncidentEvent| e.id == id).await;
    assert!(
        bus.all::<IncidentEvent>(RESOLVED).len() == 1,
        "resolved once, after the flapping"
    );
    // Back within the reopen window: the same incident reopens.
    post(&alerts, &serde_json::json!([postable(&flappy, false)])).await;
    let incidents = bus.incidents().await;
    assert_eq!(incidents.len(), 1, "no second incident");
    assert_eq!(incidents[0].state, IncidentState::Triggered);
    assert!(
        incidents[0]
            .timeline
            .iter()
            .any(|t| t.kind == TimelineKind::Reopened)
    );
    ic.stop().await;
}

#[tokio::test]
async fn severity_follows_the_rules_and_the_autonomy_policy_holds_a_sev1_playbook_for_a_human() {
    use toronto_protocol::incidents::PlaybookRunRequest;
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let policy = Policy::from_yaml(
        r#"
default_severity: sev4
severity_rules:
  - severity: sev1
    environments: [production]
    slo_tiers: [critical]
  - severity: sev2
    min_services: 2
playbooks:
  - name: scale-out
    when: { min_severity: sev2 }
    actions:
      - { action: deployer.scale, replicas: 10 }
autonomy:
  severities: [sev3, sev4]
  environments: [production]
"#,
    )
    .unwrap();
    let ic = start_commander(
        &server.url(),
        Settings {
            group_by: vec!["environment".into(), "alertname".into()],
            policy,
            ..quick()
        },
    )
    .await;
    let alerts = ic.url("/api/v2/alerts");
    let send = |pairs: &'static [(&'static str, &'static str)]| {
        let alerts = alerts.clone();
        async move {
            let r = post(&alerts, &serde_json::json!([postable(pairs, false)])).await;
            assert_eq!(r.status(), 200);
        }
    };
    // SLO tier critical in production: SEV1, and its playbook waits for a human.
    send(&[
        ("alertname", "CheckoutSLO"),
        ("service", "checkout"),
        ("environment", "production"),
        ("slo_tier", "critical"),
    ])
    .await;
    // Two services in one group: SEV2 once the second joins.
    send(&[
        ("alertname", "Latency"),
        ("service", "search"),
        ("environment", "staging"),
    ])
    .await;
    let staging = bus
        .incidents()
        .await
        .into_iter()
        .find(|i| i.environment == "staging")
        .unwrap();
    assert_eq!(staging.severity, Severity::Sev4);
    send(&[
        ("alertname", "Latency"),
        ("service", "ads"),
        ("environment", "staging"),
    ])
    .await;
    let staging = bus.incident(staging.id).await;
    assert_eq!(staging.services, vec!["search", "ads"]);
    assert_eq!(
        staging.severity,
        Severity::Sev2,
        "{}",
        staging.severity_reason
    );

    let sev1 = bus
        .incidents()
        .await
        .into_iter()
        .find(|i| i.service == "checkout")
        .unwrap();
    assert_eq!(sev1.severity, Severity::Sev1);
    let run = sev1.playbook.clone().unwrap();
    assert_eq!(run.state, PlaybookState::WaitingApproval);
    assert!(
        sev1.timeline
            .iter()
            .any(|t| t.text.contains("needs a human"))
    );
    // A human runs it: it acts (no deployer answers here, so the action fails and
    // the incident escalates, with the reason on the timeline).
    let started: Incident = bus
        .request(
            "playbook.run",
            PlaybookRunRequest {
                id: sev1.id,
                playbook: None,
                by: "bob".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(started.playbook.unwrap().state, PlaybookState::Running);
    let escalated: IncidentEvent = bus
        .wait(ESCALATED, |e: &IncidentEvent| e.id == sev1.id)
        .await;
    assert!(
        escalated.change.contains("deployer.scale failed"),
        "{}",
        escalated.change
    );
    assert_eq!(
        bus.incident(sev1.id).await.playbook.unwrap().state,
        PlaybookState::Failed
    );
    ic.stop().await;
}
