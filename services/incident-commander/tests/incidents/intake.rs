//! Alerts in: Alertmanager, Prometheus, PagerDuty Events and malformed payloads.

use super::*;
use toronto_protocol::incidents::Severity;

pub(super) struct Child {
    _child: tokio::process::Child,
    pub(super) url: String,
    _dir: tempfile::TempDir,
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(super) async fn wait_ready(url: &str, log: &std::path::Path) {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{url} never became ready:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Debian's Alertmanager 0.25 on a free port, sending to `webhook`.
async fn alertmanager(webhook: &str) -> Child {
    alertmanager_with(webhook, "").await
}

/// Debian's Alertmanager on a free port, sending to `webhook` with `http_config` (YAML
/// lines indented for the webhook config, e.g. credentials).
pub(super) async fn alertmanager_with(webhook: &str, http_config: &str) -> Child {
    let bin = std::env::var("TORONTO_ALERTMANAGER_BIN")
        .unwrap_or_else(|_| "prometheus-alertmanager".into());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: incident\n  group_by: ['alertname', 'service']\n  group_wait: 100ms\n  group_interval: 300ms\n  repeat_interval: 1h\n\
             receivers:\n  - name: incident\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n{http_config}"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("alertmanager.log");
    let child = tokio::process::Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} (apt-get install prometheus-alertmanager): {e}")
        });
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &log).await;
    Child {
        _child: child,
        url,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_burst_of_duplicates_from_alertmanager_opens_one_incident_that_its_resolution_resolves() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(&server.url(), quick()).await;
    let am = alertmanager(&ic.url("/api/v1/alertmanager/webhook")).await;

    // 1,000 copies of the same alert, in ten concurrent batches of 100.
    let alert = postable(
        &[
            ("alertname", "CartErrors"),
            ("service", "cart"),
            ("environment", "production"),
            ("severity", "critical"),
        ],
        false,
    );
    let batch = serde_json::Value::Array(vec![alert.clone(); 100]);
    let am_alerts = format!("{}/api/v2/alerts", am.url);
    let sends = (0..10).map(|_| post(&am_alerts, &batch));
    for r in futures::future::join_all(sends).await {
        assert!(r.status().is_success(), "{}", r.status());
    }
    let opened: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "cart")
        .await;
    assert_eq!(opened.environment, "production");
    assert_eq!(opened.state, IncidentState::Triggered);

    // The same alert sent straight to our Alertmanager-compatible API is a duplicate.
    let r = post(&ic.url("/api/v2/alerts"), &batch).await;
    assert_eq!(r.status(), 200);
    let incident = bus.incident(opened.id).await;
    assert_eq!(incident.origin, "alertmanager");
    assert_eq!(
        (incident.severity, incident.severity_reason.as_str()),
        (Severity::Sev1, "label severity=critical"),
        "Alertmanager's severity label sets the severity"
    );
    assert_eq!(incident.alerts_total, 1);
    assert!(incident.duplicates >= 100, "{}", incident.duplicates);

    // Resolved at Alertmanager: it sends the resolution, the incident resolves.
    let resolved = postable(
        &[
            ("alertname", "CartErrors"),
            ("service", "cart"),
            ("environment", "production"),
            ("severity", "critical"),
        ],
        true,
    );
    let r = post(
        &format!("{}/api/v2/alerts", am.url),
        &serde_json::json!([resolved]),
    )
    .await;
    assert!(r.status().is_success());
    let done: IncidentEvent = bus
        .wait(RESOLVED, |e: &IncidentEvent| e.id == opened.id)
        .await;
    assert!(
        done.change.contains("all alerts resolved"),
        "{}",
        done.change
    );
    assert_eq!(
        bus.all::<IncidentEvent>(OPENED).len(),
        1,
        "one incident only"
    );
    let all = bus.incidents().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, IncidentState::Resolved);
    assert!(
        all[0]
            .timeline
            .iter()
            .any(|t| t.text.contains("CartErrors") && t.text.contains("resolved"))
    );
    ic.stop().await;
}

#[tokio::test]
async fn prometheus_fires_a_rule_straight_at_the_alerts_api() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(&server.url(), quick()).await;
    let _prometheus = prometheus(
        "labels: { service: shop, environment: staging, severity: page }",
        ic.http,
        "",
    )
    .await;

    let opened: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "shop")
        .await;
    assert_eq!(opened.title, "shop is down");
    assert_eq!(opened.environment, "staging");
    let incident = bus.incident(opened.id).await;
    assert_eq!(incident.origin, "prometheus");
    assert_eq!(incident.labels["alertname"], "ShopDown");
    assert_eq!(
        (incident.severity, incident.severity_reason.as_str()),
        (
            Severity::Sev3,
            "label severity=page, one step milder in staging"
        )
    );
    ic.stop().await;
}

#[tokio::test]
async fn pagerduty_events_and_malformed_payloads_are_answered_and_never_half_applied() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(
        &client,
        &["toronto.devops.v1.events.>", "toronto.devops.v1.dlq.>"],
    )
    .await;
    let ic = start_commander(&server.url(), quick()).await;

    // A webhook whose second alert is malformed: 400 naming it, and nothing applied.
    let webhook = serde_json::json!({
        "version": "4", "groupKey": "{}:{alertname=\"A\"}", "status": "firing",
        "receiver": "incident", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am", "truncatedAlerts": 0,
        "alerts": [
            { "status": "firing", "labels": { "alertname": "A", "service": "web" },
              "startsAt": "2026-11-26T08:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "aaa" },
            { "status": "burning", "labels": { "alertname": "B", "service": "db" },
              "startsAt": "2026-11-26T08:00:00Z", "fingerprint": "bbb" }
        ]
    });
    let r = post(&ic.url("/api/v1/alertmanager/webhook"), &webhook).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("alerts[1].status"),
        "{body}"
    );
    let r = post(
        &ic.url("/api/v2/alerts"),
        &serde_json::json!([{ "labels": { "alertname": "C", "service": "api" } }, { "labels": {} }]),
    )
    .await;
    assert_eq!(r.status(), 400);
    // Alertmanager's own error shape: the reason as a JSON string.
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body.as_str().is_some_and(|e| e.contains("[1].labels")),
        "{body}"
    );
    let r = reqwest::Client::new()
        .post(ic.url("/api/v2/alerts"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(bus.incidents().await.is_empty(), "nothing half-applied");

    // PagerDuty: a bad severity is refused with the reason ...
    let pd = |action: &str, severity: &str| {
        serde_json::json!({
            "routing_key": "R0123456789", "event_action": action, "dedup_key": "disk-full-db1",
            "payload": { "summary": "disk full on db1", "source": "db1", "severity": severity,
                         "component": "orders-db", "custom_details": { "environment": "production" } }
        })
    };
    let r = post(&ic.url("/v2/enqueue"), &pd("trigger", "apocalyptic")).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "invalid event");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("payload.severity")
    );
    assert!(bus.incidents().await.is_empty());

    // ... a trigger opens an incident and answers the dedup key, acknowledge and
    // resolve act on it.
    let r = post(&ic.url("/v2/enqueue"), &pd("trigger", "critical")).await;
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["dedup_key"], "disk-full-db1");
    assert_eq!(body["status"], "success");
    let incident = bus.incidents().await.pop().expect("an incident");
    assert_eq!(incident.service, "orders-db");
    assert_eq!(incident.origin, "pagerduty");
    assert_eq!(
        incident.severity,
        Severity::Sev1,
        "PagerDuty `critical` is SEV1"
    );
    let r = post(&ic.url("/v2/enqueue"), &pd("acknowledge", "critical")).await;
    assert_eq!(r.status(), 202);
    let acked = bus.incident(incident.id).await;
    assert_eq!(acked.state, IncidentState::Acknowledged);
    assert_eq!(acked.commander.as_deref(), Some("pagerduty"));
    let r = post(&ic.url("/v2/enqueue"), &pd("resolve", "critical")).await;
    assert_eq!(r.status(), 202);
    bus.wait(RESOLVED, |e: &IncidentEvent| e.id == incident.id)
        .await;

    // A malformed alert event on the bus is parked in the dead-letter stream with
    // the reason, and opens nothing.
    let js = async_nats::jetstream::new(client.clone());
    js.publish(
        "toronto.devops.v1.events.alert.firing",
        r#"{"specversion":"1.0","id":"0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1","source":"x","type":"ai.toronto.devops.alert.v1","data":{"status":"firing"}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let parked = bus.raw("toronto.devops.v1.dlq.incident").await;
    assert!(String::from_utf8_lossy(&parked).contains("\"status\":\"firing\""));
    assert_eq!(bus.incidents().await.len(), 1);

    // Alertmanager left alerts out of a notification (`max_alerts`): the incident says so.
    let truncated = serde_json::json!({
        "version": "4", "groupKey": "{}:{alertname=\"Batch\"}", "status": "firing",
        "receiver": "incident", "externalURL": "http://am", "truncatedAlerts": 7,
        "alerts": [
            { "status": "firing", "labels": { "alertname": "Batch", "service": "batch" },
              "startsAt": "2026-11-26T08:00:00Z", "fingerprint": "batch-1" }
        ]
    });
    let r = post(&ic.url("/api/v1/alertmanager/webhook"), &truncated).await;
    assert_eq!(r.status(), 200);
    let opened = bus
        .incidents()
        .await
        .into_iter()
        .find(|i| i.service == "batch")
        .expect("the batch incident");
    let incident = bus.incident(opened.id).await;
    assert!(
        incident
            .timeline
            .iter()
            .any(|e| e.text.contains("left 7 alert(s)") && e.text.contains("truncatedAlerts")),
        "{:?}",
        incident.timeline
    );
    ic.stop().await;
}

/// Debian's Prometheus on a free port, with one rule always firing (`ShopDown` with
/// `labels`) and sending alerts to `/api/v2/alerts` of `target`, with `alerting` (YAML
/// lines indented for the Alertmanager config, e.g. credentials).
pub(super) async fn prometheus(labels: &str, target: SocketAddr, alerting: &str) -> Child {
    let bin = std::env::var("TORONTO_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yml"),
        format!("groups:\n  - name: shop\n    interval: 200ms\n    rules:\n      - alert: ShopDown\n        expr: vector(1)\n        {labels}\n        annotations: {{ summary: 'shop is down' }}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  evaluation_interval: 200ms\nrule_files: ['{}']\nalerting:\n  alertmanagers:\n    - api_version: v2\n      static_configs:\n        - targets: ['{target}']\n{alerting}",
            dir.path().join("rules.yml").display(),
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("prometheus.log");
    let child = tokio::process::Command::new(&bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // Alerts evaluated before the notifier has discovered its target (about 5 s)
        // count as sent; resend soon rather than after the default minute.
        .arg("--rules.alert.resend-delay=500ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin} (apt-get install prometheus): {e}"));
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &log).await;
    Child {
        _child: child,
        url,
        _dir: dir,
    }
}
