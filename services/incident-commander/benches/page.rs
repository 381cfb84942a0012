//! Page latency: from an alert sent to the incident commander (`POST /api/v2/alerts`)
//! to the first notification for its incident delivered to the receiver (an
//! in-process PagerDuty Events API v2 receiver, through the JetStream outbox), with
//! alerts sent at a steady 1,000 per second, each opening its own incident. Prints
//! p50, p99 and the largest latency, and how many pages arrived.
//!
//! ```sh
//! TORONTO_NATS_SERVER_BIN=... cargo bench -p toronto-incident-commander --bench page
//! ```
//! `BENCH_SECONDS` (default 3) sets how long alerts are sent; `BENCH_RATE` (default
//! 1000) the alerts per second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tokio_util::sync::CancellationToken;
use toronto_incident_commander::settings::{Policy, Settings};
use toronto_runtime::Config;

/// mimalloc, as the service binaries use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// First arrival per service (each alert's own service, so its own incident).
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receive(State(arrivals): State<Arrivals>, body: bytes::Bytes) -> StatusCode {
    let at = Instant::now();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if let Some(service) = v["payload"]["component"].as_str() {
        arrivals
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_insert(at);
    }
    StatusCode::ACCEPTED
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let seconds = env("BENCH_SECONDS", 3);
    let rate = env("BENCH_RATE", 1000);
    let total = (seconds * rate) as usize;

    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route("/v2/enqueue", post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("routing-key");
    std::fs::write(&key, "benchroutingkey").unwrap();
    let policy = Policy::from_yaml(&format!(
        r#"
escalation_policies:
  - name: default
    levels:
      - {{ notify: [user:alice], ack_timeout_seconds: 3600, channels: [pd] }}
default_escalation: default
freeze: {{ severities: [] }}
notifications:
  channels:
    pd: {{ kind: pagerduty, routing_key: {{ file: {} }}, url: "http://{receiver}/v2/enqueue" }}
"#,
        key.display()
    ))
    .unwrap();

    let server = toronto_testkit::NatsServer::start().await;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let settings = Settings {
        policy,
        ..Settings::default()
    };
    let rt = toronto_incident_commander::start_with(config, settings, shutdown.clone())
        .await
        .unwrap();
    let url = format!("http://{}/api/v2/alerts", rt.http_addr.unwrap());
    let running = tokio::spawn(rt.run_until_shutdown());

    // Every 10 ms, rate/100 alerts in one request.
    let per_tick = (rate as usize / 100).max(1);
    let client = reqwest::Client::new();
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut every = tokio::time::interval(Duration::from_millis(10));
    let mut i = 0;
    let mut requests = Vec::new();
    while i < total {
        every.tick().await;
        let alerts: Vec<serde_json::Value> = (i..(i + per_tick).min(total))
            .map(|n| {
                serde_json::json!({
                    "labels": {
                        "alertname": "Down",
                        "service": format!("svc-{n}"),
                        "environment": "production",
                        "severity": "critical",
                    },
                    "startsAt": chrono::Utc::now().to_rfc3339(),
                })
            })
            .collect();
        let now = Instant::now();
        for n in i..(i + per_tick).min(total) {
            sent.insert(format!("svc-{n}"), now);
        }
        i += per_tick;
        let request = client.post(&url).json(&alerts).send();
        requests.push(tokio::spawn(request));
    }
    for r in requests {
        let status = r.await.unwrap().unwrap().status();
        assert!(status.is_success(), "{status}");
    }
    // Wait for the pages (at most 30 s after the last alert).
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = arrivals.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = arrived
        .iter()
        .filter_map(|(s, at)| sent.get(s).map(|t| at.saturating_duration_since(*t)))
        .collect();
    latencies.sort();
    println!(
        "page latency, alert to the first PagerDuty event delivered, {rate} alerts/s for {seconds} s ({total} incidents): \
         delivered {} of {total}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
    );
    shutdown.cancel();
    let _ = running.await;
}
