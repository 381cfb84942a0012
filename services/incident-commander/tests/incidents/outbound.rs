//! Outbound notifications against in-process HTTP receivers (axum) that check each
//! format field by field against its documentation: PagerDuty Events API v2, Slack
//! `chat.postMessage`, Mattermost incoming webhooks, and our HMAC-signed webhook. One
//! receiver fails (503 with `Retry-After`, then 500) before it recovers; every
//! notification must arrive exactly once; secrets must not reach the bus.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use toronto_incident_commander::outbound::{self, Notification, NotifyAction};

use super::*;

const PD_KEY: &str = "R0UTINGKEYSECRET0000000000000000";
const SLACK_TOKEN: &str = "xoxb-test-token-secret";
const MM_TOKEN: &str = "mmtokensecret42";
const HOOK_SECRET: &str = "whsec-hook-secret";

/// One request a receiver took: where, headers, body, when, and whether it accepted.
#[derive(Clone, Debug)]
struct Got {
    route: String,
    headers: HeaderMap,
    body: Value,
    raw: bytes::Bytes,
    at: Instant,
    accepted: bool,
}

#[derive(Clone, Default)]
struct Receivers {
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receivers {
    fn record(&self, route: &str, headers: HeaderMap, raw: bytes::Bytes, accepted: bool) {
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        self.got.lock().unwrap().push(Got {
            route: route.to_owned(),
            headers,
            body,
            raw,
            at: Instant::now(),
            accepted,
        });
    }

    fn of(&self, route: &str) -> Vec<Got> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|g| g.route == route).cloned().collect()
    }

    /// Waits until `n` accepted requests reached `route`.
    async fn wait(&self, route: &str, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<Got> = self.of(route).into_iter().filter(|g| g.accepted).collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{route}: {} of {n} arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn pagerduty(
    State(r): State<Receivers>,
    h: HeaderMap,
    raw: bytes::Bytes,
) -> impl IntoResponse {
    r.record("pagerduty", h, raw.clone(), true);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "status": "success", "message": "Event processed", "dedup_key": body["dedup_key"],
        })),
    )
}

async fn slack(State(r): State<Receivers>, h: HeaderMap, raw: bytes::Bytes) -> impl IntoResponse {
    let authorized = h.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SLACK_TOKEN}"));
    r.record("slack", h, raw, authorized);
    let answer = if authorized {
        serde_json::json!({ "ok": true, "channel": "D0DM", "ts": "1.2" })
    } else {
        serde_json::json!({ "ok": false, "error": "invalid_auth" })
    };
    axum::Json(answer)
}

async fn mattermost(
    State(r): State<Receivers>,
    Path(token): Path<String>,
    h: HeaderMap,
    raw: bytes::Bytes,
) -> impl IntoResponse {
    let ok = token == MM_TOKEN;
    r.record("mattermost", h, raw, ok);
    if ok {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    }
}

/// Fails the first trigger twice (503 with `Retry-After: 1`, then 500), then accepts.
async fn hook(
    State(r): State<Receivers>,
    h: HeaderMap,
    raw: bytes::Bytes,
) -> axum::response::Response {
    let tries = r.of("hook").len();
    if tries == 0 {
        r.record("hook", h, raw, false);
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")]).into_response();
    }
    if tries == 1 {
        r.record("hook", h, raw, false);
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    r.record("hook", h, raw, true);
    StatusCode::NO_CONTENT.into_response()
}

async fn refuse(State(r): State<Receivers>, h: HeaderMap, raw: bytes::Bytes) -> StatusCode {
    r.record("refuse", h, raw, false);
    StatusCode::BAD_REQUEST
}

async fn start_receivers() -> (Receivers, SocketAddr) {
    let r = Receivers::default();
    let app = axum::Router::new()
        .route("/pd/v2/enqueue", post(pagerduty))
        .route("/slack/api/chat.postMessage", post(slack))
        .route("/mm/hooks/{token}", post(mattermost))
        .route("/hook", post(hook))
        .route("/refuse", post(refuse))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, addr)
}

fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

fn notify_policy(addr: SocketAddr, dir: &tempfile::TempDir) -> Policy {
    let pd = secret_file(dir, "pd", PD_KEY);
    let slack = secret_file(dir, "slack", SLACK_TOKEN);
    let mm = secret_file(dir, "mm", &format!("http://{addr}/mm/hooks/{MM_TOKEN}"));
    let hook = secret_file(dir, "hook", HOOK_SECRET);
    Policy::from_yaml(&format!(
        r#"
schedules:
  - {{ name: primary, participants: [alice], start: 2026-01-01T00:00:00Z, handoff_seconds: 86400 }}
escalation_policies:
  - name: default
    levels:
      - {{ notify: [schedule:primary], ack_timeout_seconds: 60, channels: [pd, chat, mm, hook] }}
default_escalation: default
notifications:
  channels:
    pd: {{ kind: pagerduty, routing_key: {{ file: {pd} }}, url: "http://{addr}/pd/v2/enqueue" }}
    chat: {{ kind: slack, token: {{ file: {slack} }}, url: "http://{addr}/slack/api/chat.postMessage" }}
    mm: {{ kind: mattermost, webhook_url: {{ file: {mm} }} }}
    hook: {{ kind: webhook, url: "http://{addr}/hook", secret: {{ file: {hook} }} }}
    refuse: {{ kind: webhook, url: "http://{addr}/refuse", secret: {{ file: {hook} }} }}
  contacts:
    alice: {{ slack: U0ALICE, mattermost: alice.mm }}
  min_delay_ms: 100
  max_delay_ms: 400
  max_attempts: 4
  incident_url: "https://ops.example.com/incidents/{{id}}"
"#
    ))
    .unwrap()
}

/// Every payload published as an event, a KV record, an outbox message or a dead
/// letter, raw (not `>`: a passive subscriber there would swallow requests that
/// expect "no responders").
async fn tap(client: &async_nats::Client) -> Arc<Mutex<Vec<bytes::Bytes>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for subject in [
        "toronto.devops.v1.events.>",
        "toronto.devops.v1.outbox.>",
        "toronto.devops.v1.dlq.>",
        "$KV.>",
    ] {
        let mut sub = client.subscribe(subject).await.unwrap();
        let out = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                out.lock().unwrap().push(m.payload);
            }
        });
    }
    seen
}

fn actions(got: &[Got], field: &str) -> Vec<String> {
    got.iter()
        .map(|g| g.body[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn pages_acks_and_resolutions_reach_each_receiver_in_its_format_exactly_once() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let seen = tap(&client).await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let (rx, addr) = start_receivers().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        policy: notify_policy(addr, &dir),
        ..quick()
    };
    let ic = start_commander(&server.url(), settings).await;
    let labels = [
        ("alertname", "Down"),
        ("service", "billing"),
        ("environment", "production"),
        ("severity", "critical"),
    ];
    publish_alert(&client, &labels, AlertStatus::Firing).await;
    let page: Page = bus.wait(PAGES, |p: &Page| p.level == Some(0)).await;
    let id = page.incident_id.to_string();

    // PagerDuty Events API v2, trigger: every documented field.
    let pd = rx.wait("pagerduty", 1).await;
    let e = &pd[0].body;
    assert_eq!(e["routing_key"], PD_KEY);
    assert_eq!(e["event_action"], "trigger");
    assert_eq!(e["dedup_key"], id.as_str());
    let p = &e["payload"];
    assert!(p["summary"].as_str().unwrap().starts_with("[SEV1] "), "{p}");
    assert!(p["summary"].as_str().unwrap().len() <= 1024);
    assert_eq!(p["source"], "billing/production");
    assert_eq!(p["severity"], "critical");
    chrono::DateTime::parse_from_rfc3339(p["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(p["component"], "billing");
    assert_eq!(p["group"], "production");
    assert_eq!(p["class"], "incident");
    assert_eq!(p["custom_details"]["incident_id"], id.as_str());
    assert_eq!(
        p["custom_details"]["paged"],
        serde_json::json!(["user:alice"])
    );
    let link = format!("https://ops.example.com/incidents/{id}");
    assert_eq!(e["links"][0]["href"], link.as_str());
    assert!(e["links"][0]["text"].is_string());
    assert_eq!(e["client"], "Toronto DevOps");
    assert_eq!(e["client_url"], link.as_str());
    let ct = pd[0].headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("application/json"), "{ct}");

    // Slack: chat.postMessage to the user id (a DM), with the bot token.
    let s = rx.wait("slack", 1).await;
    assert_eq!(s[0].body["channel"], "U0ALICE");
    assert!(
        s[0].body["text"]
            .as_str()
            .unwrap()
            .contains("you are paged")
    );
    // Mattermost: the incoming webhook, mentioning the person.
    let m = rx.wait("mattermost", 1).await;
    assert!(
        m[0].body["text"]
            .as_str()
            .unwrap()
            .starts_with("@alice.mm ")
    );

    // The webhook failed twice (503 with Retry-After: 1, then 500) and then took it.
    let hooks = rx.wait("hook", 1).await;
    let all_hooks = rx.of("hook");
    assert_eq!(all_hooks.len(), 3, "two failures, then accepted");
    let waited = all_hooks[1].at - all_hooks[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After honoured: {waited:?}"
    );
    let h = &hooks[0];
    let ts = h.headers["x-toronto-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&h.raw);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(h.headers["x-toronto-signature"].to_str().unwrap(), expected);
    assert_eq!(
        h.headers["x-toronto-delivery"].to_str().unwrap(),
        h.body["id"].as_str().unwrap()
    );
    assert_eq!(
        all_hooks[0].headers["x-toronto-delivery"],
        h.headers["x-toronto-delivery"]
    );
    assert_eq!(h.body["type"], "incident.triggered");
    assert_eq!(h.body["incident"]["id"], id.as_str());
    assert_eq!(h.body["incident"]["severity"], "sev1");

    // Acknowledged, then resolved: each receiver hears of both.
    let action = |reason: &str| IncidentAction {
        id: page.incident_id,
        by: "alice".into(),
        reason: Some(reason.into()),
    };
    let _: Incident = bus.request("ack", action("looking")).await.unwrap();
    let _: Incident = bus.request("resolve", action("fixed")).await.unwrap();
    let pd = rx.wait("pagerduty", 3).await;
    assert_eq!(
        actions(&pd, "event_action"),
        ["trigger", "acknowledge", "resolve"]
    );
    for e in &pd[1..] {
        assert_eq!(e.body["dedup_key"], id.as_str());
        assert_eq!(e.body["routing_key"], PD_KEY);
    }
    let s = rx.wait("slack", 3).await;
    assert!(
        s[1].body["text"]
            .as_str()
            .unwrap()
            .contains("acknowledged by alice")
    );
    assert!(s[2].body["text"].as_str().unwrap().contains("resolved"));
    rx.wait("mattermost", 3).await;
    let hooks = rx.wait("hook", 3).await;
    assert_eq!(
        actions(&hooks, "type"),
        [
            "incident.triggered",
            "incident.acknowledged",
            "incident.resolved"
        ]
    );

    // Exactly once: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (route, n) in [
        ("pagerduty", 3),
        ("slack", 3),
        ("mattermost", 3),
        ("hook", 5),
    ] {
        assert_eq!(rx.of(route).len(), n, "{route}");
    }
    // The delivery status is on the timeline, failures with their reason.
    let inc = bus.incident(page.incident_id).await;
    let texts: Vec<&str> = inc.timeline.iter().map(|t| t.text.as_str()).collect();
    let has = |s: &str| texts.iter().any(|t| t.contains(s));
    assert!(has("pd trigger delivered (attempt 1)"), "{texts:#?}");
    assert!(has("chat trigger to alice delivered"), "{texts:#?}");
    assert!(has("hook trigger attempt 1 failed: HTTP 503"), "{texts:#?}");
    assert!(has("hook trigger attempt 2 failed: HTTP 500"), "{texts:#?}");
    assert!(has("hook trigger delivered (attempt 3)"), "{texts:#?}");
    assert!(has("pd resolve delivered"), "{texts:#?}");
    bus.wait(
        "toronto.devops.v1.events.incident.notify_failed",
        |e: &IncidentEvent| e.change.contains("HTTP 503"),
    )
    .await;
    // No secret reached the bus (events, records, outbox).
    for payload in seen.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(payload);
        for secret in [PD_KEY, SLACK_TOKEN, MM_TOKEN, HOOK_SECRET] {
            assert!(!text.contains(secret), "a secret on the bus: {text}");
        }
    }
    ic.stop().await;
}

fn decided(channel: &str, incident_id: uuid::Uuid) -> Notification {
    Notification {
        id: uuid::Uuid::now_v7(),
        incident_id,
        title: "Down".into(),
        service: "billing".into(),
        environment: "production".into(),
        severity: Severity::Sev2,
        action: NotifyAction::Trigger,
        level: Some(0),
        cycle: 0,
        channel: channel.into(),
        person: None,
        targets: vec!["user:alice".into()],
        reason: "incident opened".into(),
        by: None,
        at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn a_decision_left_in_the_outbox_is_sent_once_after_a_crash_and_refusals_are_parked() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let (rx, addr) = start_receivers().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        policy: notify_policy(addr, &dir),
        ..quick()
    };
    // The commander decided (twice: once before a crash and again after it) and died
    // before sending: the outbox holds the notification once.
    let ic = start_commander(&server.url(), settings.clone()).await;
    ic.stop().await;
    let js = async_nats::jetstream::new(client.clone());
    let note = decided("pd", uuid::Uuid::now_v7());
    let refused = decided("refuse", uuid::Uuid::now_v7());
    for n in [&note, &note, &refused] {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(serde_json::to_vec(n).unwrap().into())
            .message_id(n.id.to_string());
        js.send_publish(outbound::subject("toronto", &n.channel), publish)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut dlq = bus(&client, &["toronto.devops.v1.dlq.>"]).await;
    let ic = start_commander(&server.url(), settings).await;
    let pd = rx.wait("pagerduty", 1).await;
    assert_eq!(
        pd[0].body["dedup_key"],
        note.incident_id.to_string().as_str()
    );
    assert_eq!(pd[0].body["payload"]["severity"], "error");
    // A receiver that refuses for good (400) is not retried: parked at once.
    dlq.raw("toronto.devops.v1.dlq.incident").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.of("pagerduty").len(), 1, "sent once");
    assert_eq!(rx.of("refuse").len(), 1, "not retried");
    ic.stop().await;
}
