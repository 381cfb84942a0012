//! HTTP intake authentication with real senders: Alertmanager with a bearer token or
//! basic auth on its webhook, Prometheus with basic auth on `/api/v2/alerts`; raw
//! requests with no or wrong credentials get 401 with `WWW-Authenticate` and open
//! nothing; health and metrics stay open and never show a secret.

use super::intake::{alertmanager_with, prometheus};
use super::*;

const TOKEN: &str = "tok-9f2c1e7a-known-secret";
const PASSWORD: &str = "pw-4b8d-known-secret";

/// Writes a secret file (0600, as the docs ask) and returns its path.
fn secret_file(dir: &tempfile::TempDir, name: &str, content: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{content}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

fn webhook_payload(service: &str) -> serde_json::Value {
    serde_json::json!({
        "version": "4", "groupKey": format!("{{}}:{{service=\"{service}\"}}"),
        "status": "firing", "alerts": [{
            "status": "firing", "labels": { "alertname": "Raw", "service": service },
            "startsAt": "2026-11-26T08:00:00Z", "fingerprint": format!("raw-{service}"),
        }]
    })
}

fn pagerduty(service: &str) -> serde_json::Value {
    serde_json::json!({
        "routing_key": "R0123456789", "event_action": "trigger", "dedup_key": service,
        "payload": { "summary": "raw", "source": service, "severity": "critical" }
    })
}

/// Posts `body` with an optional `Authorization` header.
async fn send(url: &str, auth: Option<&str>, body: &serde_json::Value) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).json(body);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    req.send().await.unwrap()
}

async fn refused(r: reqwest::Response, scheme: &str, reason: &str) {
    assert_eq!(r.status(), 401);
    let challenges: Vec<String> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with(scheme)),
        "{challenges:?}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

/// `/metrics` (no credentials needed): the refusal counter by reason, and no secret.
async fn refusals(ic: &Commander) -> String {
    let health = reqwest::get(ic.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "health stays open");
    let r = reqwest::get(ic.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200, "metrics stay open");
    let text = r.text().await.unwrap();
    assert!(!text.contains(TOKEN) && !text.contains(PASSWORD));
    text.lines()
        .filter(|l| l.starts_with("toronto_incident_http_auth_refused_total"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn alertmanager_with_its_bearer_token_is_taken_and_requests_without_it_are_refused() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = secret_file(&dir, "token", TOKEN);
    let mut settings = quick();
    settings.http_auth.set_bearer_file(&token_file).unwrap();
    let ic = start_commander(&server.url(), settings).await;

    // No token, a wrong one, the right one in the wrong scheme: 401, nothing opened.
    let hook = ic.url("/api/v1/alertmanager/webhook");
    let r = send(&hook, None, &webhook_payload("nobody")).await;
    refused(r, "Bearer", "credentials are required").await;
    let r = send(&hook, Some("Bearer guessed"), &webhook_payload("guess")).await;
    refused(r, "Bearer", "do not match").await;
    let r = send(
        &ic.url("/api/v2/alerts"),
        None,
        &postable(&[("service", "p")], false),
    )
    .await;
    refused(r, "Bearer", "credentials are required").await;
    let wrong = format!("Bearer {TOKEN}x");
    let r = send(&ic.url("/v2/enqueue"), Some(&wrong), &pagerduty("pd")).await;
    refused(r, "Bearer", "do not match").await;
    let r = send(&hook, Some(&basic("u", TOKEN)), &webhook_payload("basic")).await;
    refused(r, "Bearer", "scheme is not accepted").await;
    assert!(bus.incidents().await.is_empty(), "nothing ingested");
    let counted = refusals(&ic).await;
    for line in [
        r#"{reason="missing"} 2"#,
        r#"{reason="wrong"} 2"#,
        r#"{reason="scheme"} 1"#,
    ] {
        assert!(counted.contains(line), "{counted}");
    }

    // Alertmanager with `http_config.authorization` delivers.
    let am = alertmanager_with(
        &hook,
        &format!(
            "        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: '{token_file}'\n"
        ),
    )
    .await;
    let alert = postable(&[("alertname", "CartErrors"), ("service", "cart")], false);
    let r = post(
        &format!("{}/api/v2/alerts", am.url),
        &serde_json::json!([alert]),
    )
    .await;
    assert!(r.status().is_success());
    let opened: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "cart")
        .await;
    assert_eq!(bus.incident(opened.id).await.origin, "alertmanager");
    let all = bus.incidents().await;
    assert_eq!(all.len(), 1, "only Alertmanager's alert opened an incident");
    ic.stop().await;
}

#[tokio::test]
async fn basic_auth_is_taken_from_alertmanager_prometheus_and_pagerduty_senders() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = secret_file(&dir, "password", PASSWORD);
    let mut settings = quick();
    settings.http_auth.set_basic_user("alerts").unwrap();
    settings
        .http_auth
        .set_basic_password_file(&password_file)
        .unwrap();
    let ic = start_commander(&server.url(), settings).await;

    let hook = ic.url("/api/v1/alertmanager/webhook");
    let r = send(&hook, None, &webhook_payload("nobody")).await;
    refused(r, "Basic", "credentials are required").await;
    let r = send(
        &hook,
        Some(&basic("alerts", "guess")),
        &webhook_payload("guess"),
    )
    .await;
    refused(r, "Basic", "do not match").await;
    let r = send(
        &hook,
        Some(&basic("admin", PASSWORD)),
        &webhook_payload("user"),
    )
    .await;
    refused(r, "Basic", "do not match").await;
    let r = send(
        &ic.url("/api/v2/alerts"),
        Some("Basic %%%"),
        &postable(&[("service", "p")], false),
    )
    .await;
    refused(r, "Basic", "malformed").await;
    let r = send(
        &ic.url("/v2/enqueue"),
        Some(&format!("Bearer {PASSWORD}")),
        &pagerduty("pd"),
    )
    .await;
    refused(r, "Basic", "scheme is not accepted").await;
    assert!(bus.incidents().await.is_empty(), "nothing ingested");
    let counted = refusals(&ic).await;
    for line in [
        r#"{reason="missing"} 1"#,
        r#"{reason="wrong"} 2"#,
        r#"{reason="malformed"} 1"#,
        r#"{reason="scheme"} 1"#,
    ] {
        assert!(counted.contains(line), "{counted}");
    }

    // The PagerDuty-style endpoint with the right credentials.
    let r = send(
        &ic.url("/v2/enqueue"),
        Some(&basic("alerts", PASSWORD)),
        &pagerduty("db1"),
    )
    .await;
    assert_eq!(r.status(), 202);

    // Alertmanager's `basic_auth` on the webhook, Prometheus' on `/api/v2/alerts`.
    let am = alertmanager_with(
        &hook,
        &format!(
            "        http_config:\n          basic_auth:\n            username: alerts\n            password_file: '{password_file}'\n"
        ),
    )
    .await;
    let alert = postable(&[("alertname", "CartErrors"), ("service", "cart")], false);
    let r = post(
        &format!("{}/api/v2/alerts", am.url),
        &serde_json::json!([alert]),
    )
    .await;
    assert!(r.status().is_success());
    let _prometheus = prometheus(
        "labels: { service: shop, environment: staging }",
        ic.http,
        &format!(
            "      basic_auth:\n        username: alerts\n        password_file: '{password_file}'\n"
        ),
    )
    .await;
    let from_am: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "cart")
        .await;
    assert_eq!(bus.incident(from_am.id).await.origin, "alertmanager");
    let from_prom: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "shop")
        .await;
    assert_eq!(bus.incident(from_prom.id).await.origin, "prometheus");
    let mut services: Vec<String> = bus
        .incidents()
        .await
        .into_iter()
        .map(|i| i.service)
        .collect();
    services.sort();
    assert_eq!(
        services,
        ["cart", "db1", "shop"],
        "only authenticated senders opened incidents"
    );
    ic.stop().await;
}
