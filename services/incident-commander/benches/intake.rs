//! Alert intake, side by side with Alertmanager: the same load generator sends the
//! same alerts (Alertmanager's `POST /api/v2/alerts` format, which both serve) to the
//! incident commander and to Debian's Alertmanager 0.25 on this machine, in batches of
//! 100 and one alert per request, and prints alerts per second for both and the ratio.
//! Then it sends 10,000 alerts per second to the incident commander for a few seconds
//! and prints the p50/p99 from the request to the `incident.opened` / `updated` event
//! that announces each alert.
//!
//! ```sh
//! TORONTO_NATS_SERVER_BIN=... cargo bench -p toronto-incident-commander --bench intake
//! ```
//! `BENCH_ALERTS` (default 50000) sets the alerts per throughput run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_incident_commander::settings::Settings;
use toronto_runtime::Config;

/// mimalloc, as the service binaries use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVICES: usize = 20;
const CONCURRENCY: usize = 16;

/// One alert, unique by `instance`, grouped by service.
fn alert(run: &str, i: usize) -> serde_json::Value {
    serde_json::json!({
        "labels": {
            "alertname": "HighErrorRate",
            "service": format!("svc-{}", i % SERVICES),
            "environment": "production",
            "instance": format!("{run}-{i}"),
            "severity": "page",
        },
        "annotations": { "summary": "error rate above 5%" },
        "startsAt": chrono::Utc::now().to_rfc3339(),
    })
}

/// Request bodies of `per_request` alerts each.
fn bodies(run: &str, total: usize, per_request: usize) -> Vec<bytes::Bytes> {
    (0..total / per_request)
        .map(|r| {
            let alerts: Vec<_> = (0..per_request)
                .map(|k| alert(run, r * per_request + k))
                .collect();
            serde_json::to_vec(&alerts).unwrap().into()
        })
        .collect()
}

/// Sends every body to `url` with `CONCURRENCY` requests in flight; alerts per second.
async fn throughput(url: &str, bodies: Vec<bytes::Bytes>, per_request: usize) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, bodies, next, url) =
                (client.clone(), bodies.clone(), next.clone(), url.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("request");
                    assert!(r.status().is_success(), "{url}: {}", r.status());
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    (bodies.len() * per_request) as f64 / started.elapsed().as_secs_f64()
}

struct Alertmanager {
    _child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

async fn alertmanager() -> Alertmanager {
    let bin = std::env::var("TORONTO_ALERTMANAGER_BIN")
        .unwrap_or_else(|_| "prometheus-alertmanager".into());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    // Grouped like the incident commander (service, environment); the receiver
    // discards, so only intake, dedup and grouping are measured.
    std::fs::write(
        &config,
        "route:\n  receiver: discard\n  group_by: ['service', 'environment']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: discard\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await
            && r.status().is_success()
        {
            return Alertmanager {
                _child: child,
                url,
                _dir: dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Alertmanager never became ready");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Sends `rate` alerts per second (batches of 10 every millisecond... or so) for
/// `seconds`, and measures request-to-event latency of each alert.
async fn latency(
    url: &str,
    client_nats: &async_nats::Client,
    rate: usize,
    seconds: u64,
) -> (usize, usize, f64, f64, f64) {
    let per_request = 10;
    let interval = Duration::from_secs_f64(per_request as f64 / rate as f64);
    let mut sub = client_nats
        .subscribe("toronto.devops.v1.events.incident.>")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(client_nats).await;
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = rate * seconds as usize;
    let collector = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 20);
            while latencies.len() < total {
                let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                    break;
                };
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                let change = v["data"]["change"].as_str().unwrap_or_default();
                // "alert NAME (FINGERPRINT) joined; alert NAME (FINGERPRINT) joined; ..."
                let mut map = sent.lock().unwrap();
                for part in change.split('(').skip(1) {
                    if let Some((fp, _)) = part.split_once(')')
                        && let Some(t) = map.remove(fp)
                    {
                        latencies.push((at - t).as_secs_f64() * 1000.0);
                    }
                }
            }
            latencies
        })
    };
    let client = reqwest::Client::new();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut requests = Vec::new();
    for r in 0..total / per_request {
        every.tick().await;
        let alerts: Vec<serde_json::Value> = (0..per_request)
            .map(|k| alert(&run, r * per_request + k))
            .collect();
        let body = serde_json::to_vec(&alerts).unwrap();
        let now = Instant::now();
        {
            let mut map = sent.lock().unwrap();
            for a in &alerts {
                let labels: std::collections::BTreeMap<String, String> =
                    serde_json::from_value(a["labels"].clone()).unwrap();
                map.insert(toronto_protocol::alerts::fingerprint(&labels), now);
            }
        }
        let (client, url) = (client.clone(), url.to_owned());
        requests.push(tokio::spawn(async move {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }));
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    for r in requests {
        assert!(r.await.unwrap(), "a request failed");
    }
    let mut latencies = collector.await.unwrap();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let seen = latencies.len();
    (
        total,
        seen,
        offered,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    )
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("BENCH_ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let server = toronto_testkit::NatsServer::start().await;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_incident_commander::start_with(config, Settings::default(), shutdown.clone())
        .await
        .unwrap();
    let ours = format!("http://{}/api/v2/alerts", rt.http_addr.unwrap());
    let running = tokio::spawn(rt.run_until_shutdown());
    let am = alertmanager().await;
    let theirs = format!("{}/api/v2/alerts", am.url);

    println!(
        "alert intake, {total} distinct alerts per run, {CONCURRENCY} requests in flight, {SERVICES} groups"
    );
    println!(
        "{:<28} {:>16} {:>16} {:>8}",
        "", "incident-cmdr", "alertmanager", "ratio"
    );
    for (name, per_request) in [
        ("batches of 100 (alerts/s)", 100),
        ("single alerts (alerts/s)", 1),
    ] {
        let n = if per_request == 1 { total / 2 } else { total };
        // Warm up both, then the measured runs (fresh alerts for each).
        throughput(&ours, bodies("warm-ic", 2_000, 100), 100).await;
        throughput(&theirs, bodies("warm-am", 2_000, 100), 100).await;
        let run = uuid::Uuid::now_v7().simple().to_string();
        let a = throughput(
            &ours,
            bodies(&format!("ic-{run}"), n, per_request),
            per_request,
        )
        .await;
        let b = throughput(
            &theirs,
            bodies(&format!("am-{run}"), n, per_request),
            per_request,
        )
        .await;
        println!("{name:<28} {a:>16.0} {b:>16.0} {:>7.2}x", a / b);
    }
    let client = server.client().await;
    let (total, seen, offered, p50, p99) = latency(&ours, &client, 10_000, 5).await;
    println!(
        "ingestion -> incident event at {offered:.0} alerts/s offered ({seen}/{total} events seen): p50 {p50:.2} ms, p99 {p99:.2} ms (goal < 50 ms)"
    );
    shutdown.cancel();
    let _ = running.await;
}
