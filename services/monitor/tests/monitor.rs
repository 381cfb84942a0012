//! The monitor against a real nats-server (and, where said, a real Prometheus): metrics
//! on the bus, canary analysis once and continuous, metric sources, SLOs and alerts.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_monitor::Settings;
use toronto_protocol::analysis::{
    AnalysisMetric, AnalysisOutcome, CanaryAnalyze, CanaryUnwatch, CanaryVerdict, CanaryWatch,
    CanaryWatchStatus, Direction, MetricBatch, MetricSample,
};
use toronto_protocol::{Encoding, Envelope, ErrorCode, Message, encode};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;
use uuid::Uuid;

struct Monitor {
    server: NatsServer,
    client: async_nats::Client,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>,
    http: Option<std::net::SocketAddr>,
}

async fn monitor_with(settings: Settings) -> Monitor {
    let server = NatsServer::start().await;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_monitor::start_with(config, settings, shutdown.clone())
        .await
        .unwrap();
    let http = rt.http_addr;
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    Monitor {
        server,
        client,
        shutdown,
        running,
        http,
    }
}

async fn monitor() -> Monitor {
    monitor_with(Settings::default()).await
}

impl Monitor {
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
        drop(self.server);
    }

    async fn request<Req: Message, Resp: Message>(
        &self,
        verb: &str,
        data: Req,
    ) -> Result<Resp, CallError> {
        let req = Envelope::builder("toronto://test", data).build();
        call(
            &self.client,
            &format!("toronto.devops.v1.monitor.{verb}"),
            &req,
            Encoding::Json,
            Duration::from_secs(10),
        )
        .await
        .map(|r: Envelope<Resp>| r.data)
    }

    async fn analyze(&self, req: CanaryAnalyze) -> Result<CanaryVerdict, CallError> {
        self.request("canary.analyze", req).await
    }

    /// Asks until every metric has at least `n` samples on both sides (the bus is
    /// asynchronous), then returns that verdict.
    async fn analyze_when_ingested(&self, req: CanaryAnalyze, n: usize) -> CanaryVerdict {
        let mut last = None;
        for _ in 0..100 {
            let v = self.analyze(req.clone()).await.unwrap();
            if v.metrics
                .iter()
                .all(|m| m.canary.count >= n && m.baseline.count >= n)
            {
                return v;
            }
            last = Some(v);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the samples never arrived: {last:#?}");
    }

    async fn metrics_text(&self) -> String {
        let addr = self.http.expect("HTTP enabled");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the simulated cluster publishes: `ticks` ticks of 100 ms ending now, for both
/// tracks, with the canary's error ratio and latency given.
fn cluster_batches(
    service: &str,
    environment: &str,
    ticks: usize,
    canary_errors: f64,
    canary_latency: f64,
) -> Vec<MetricBatch> {
    let now = chrono::Utc::now();
    let mut batches = Vec::new();
    for i in 0..ticks {
        let at = now - chrono::Duration::milliseconds(((ticks - i) * 100) as i64);
        let noise = ((i * 37) % 11) as f64 / 1000.0;
        let mut samples = Vec::new();
        for (track, version, errors, latency) in [
            ("stable", "2.4.0", 0.01, 0.100),
            ("canary", "2.4.1", canary_errors, canary_latency),
        ] {
            let l = labels(&[("version", version), ("track", track)]);
            let requests = 100.0;
            let ratio = errors + noise;
            for (name, value) in [
                ("http_requests", requests),
                ("http_errors", (requests * ratio).round()),
                ("http_error_ratio", ratio),
                ("http_latency_seconds", latency + noise),
            ] {
                samples.push(MetricSample {
                    name: name.into(),
                    labels: l.clone(),
                    value,
                    timestamp: at,
                });
            }
        }
        batches.push(MetricBatch {
            service: service.into(),
            environment: environment.into(),
            source: "simulated-cluster".into(),
            samples,
        });
    }
    batches
}

async fn publish_batches(client: &async_nats::Client, batches: Vec<MetricBatch>) {
    for batch in batches {
        let subject = format!("toronto.metrics.{}.{}", batch.service, batch.environment);
        let env = Envelope::builder("toronto://devops/deployer/simulated-cluster", batch).build();
        client
            .publish(subject, encode(&env, Encoding::Json).unwrap().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

fn metric(name: &str) -> AnalysisMetric {
    AnalysisMetric {
        name: name.into(),
        query: None,
        direction: Direction::Increase,
        max_relative_effect: None,
        max_absolute_effect: None,
        critical: false,
        must_have_data: false,
    }
}

fn analysis(service: &str, metrics: Vec<AnalysisMetric>) -> CanaryAnalyze {
    CanaryAnalyze {
        service: service.into(),
        environment: "production".into(),
        canary: labels(&[("track", "canary")]),
        baseline: labels(&[("track", "stable")]),
        metrics,
        window_seconds: 60.0,
        confidence: None,
        rollout_id: None,
    }
}

fn standard_metrics() -> Vec<AnalysisMetric> {
    let mut errors = metric("http_error_ratio");
    errors.critical = true;
    errors.max_absolute_effect = Some(0.02);
    let mut latency = metric("http_latency_seconds");
    latency.max_relative_effect = Some(0.2);
    vec![errors, latency]
}

#[tokio::test]
async fn a_bad_canary_fails_with_its_evidence_and_a_good_one_passes() {
    let m = monitor().await;
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 100, 0.25, 0.1),
    )
    .await;
    publish_batches(
        &m.client,
        cluster_batches("shop-api", "production", 100, 0.01, 0.1),
    )
    .await;

    let bad = m
        .analyze_when_ingested(analysis("cart", standard_metrics()), 100)
        .await;
    assert_eq!(bad.outcome, AnalysisOutcome::Fail, "{bad:#?}");
    assert!(
        bad.reason.contains("critical metric http_error_ratio"),
        "{}",
        bad.reason
    );
    let errors = &bad.metrics[0];
    assert_eq!(errors.name, "http_error_ratio");
    assert_eq!(errors.outcome, AnalysisOutcome::Fail);
    assert_eq!((errors.canary.count, errors.baseline.count), (100, 100));
    assert!(errors.canary.median.unwrap() > 0.25 && errors.baseline.median.unwrap() < 0.03);
    assert!(errors.p_value.unwrap() < 1e-6, "{errors:?}");
    assert!(
        errors.u.unwrap() > 9000.0,
        "U near n1*n2 = 10000: {errors:?}"
    );
    assert!(errors.effect.unwrap() > 10.0, "relative effect: {errors:?}");
    // Same latency on both tracks: that metric passes.
    assert_eq!(bad.metrics[1].outcome, AnalysisOutcome::Pass, "{bad:#?}");

    let good = m
        .analyze_when_ingested(analysis("shop-api", standard_metrics()), 100)
        .await;
    assert_eq!(good.outcome, AnalysisOutcome::Pass, "{good:#?}");
    assert!(
        good.metrics
            .iter()
            .all(|e| e.outcome == AnalysisOutcome::Pass)
    );

    // A slower canary within the allowed effect passes; beyond it fails.
    publish_batches(
        &m.client,
        cluster_batches("search", "production", 80, 0.01, 0.11),
    )
    .await;
    publish_batches(
        &m.client,
        cluster_batches("orders", "production", 80, 0.01, 0.2),
    )
    .await;
    let mut latency = metric("http_latency_seconds");
    latency.max_relative_effect = Some(0.2);
    let slightly = m
        .analyze_when_ingested(analysis("search", vec![latency.clone()]), 80)
        .await;
    assert_eq!(slightly.outcome, AnalysisOutcome::Pass, "{slightly:#?}");
    assert!(
        slightly.metrics[0].p_value.unwrap() < 0.05,
        "significant but small"
    );
    let slow = m
        .analyze_when_ingested(analysis("orders", vec![latency]), 80)
        .await;
    assert_eq!(slow.outcome, AnalysisOutcome::Fail, "{slow:#?}");
    m.stop().await;
}

#[tokio::test]
async fn missing_data_is_inconclusive_unless_required_and_bad_requests_name_the_field() {
    let m = monitor().await;
    let verdict = m
        .analyze(analysis("nobody", vec![metric("http_error_ratio")]))
        .await
        .unwrap();
    assert_eq!(
        verdict.outcome,
        AnalysisOutcome::Inconclusive,
        "{verdict:#?}"
    );
    assert!(verdict.metrics[0].reason.contains("no data"));
    let mut required = metric("http_error_ratio");
    required.must_have_data = true;
    let verdict = m.analyze(analysis("nobody", vec![required])).await.unwrap();
    assert_eq!(verdict.outcome, AnalysisOutcome::Fail, "{verdict:#?}");

    for (req, field) in [
        (analysis("cart", vec![]), "metrics"),
        (
            CanaryAnalyze {
                window_seconds: 0.0,
                ..analysis("cart", vec![metric("m")])
            },
            "window_seconds",
        ),
        (
            CanaryAnalyze {
                confidence: Some(1.0),
                ..analysis("cart", vec![metric("m")])
            },
            "confidence",
        ),
    ] {
        let err = m.analyze(req).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
        let CallError::Remote(body) = err else {
            panic!("not an error envelope")
        };
        assert_eq!(
            body.details.unwrap()["errors"][0]["field"].as_str(),
            Some(field),
            "{}",
            body.message
        );
    }
    m.stop().await;
}

#[tokio::test]
async fn unreadable_metric_messages_are_counted_and_the_monitor_keeps_going() {
    let m = monitor().await;
    for junk in [
        &b"not json"[..],
        br#"{"specversion":"1.0","id":"x","source":"s","type":"ai.toronto.devops.status.v1","data":{}}"#,
        br#"{"specversion":"1.0","id":"0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1","source":"s","type":"ai.toronto.devops.metrics.batch.v1","data":{"service":"a"}}"#,
    ] {
        m.client
            .publish("toronto.metrics.cart.production", junk.to_vec().into())
            .await
            .unwrap();
    }
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 20, 0.01, 0.1),
    )
    .await;
    let verdict = m
        .analyze_when_ingested(analysis("cart", standard_metrics()), 20)
        .await;
    assert_eq!(verdict.outcome, AnalysisOutcome::Pass, "{verdict:#?}");
    let text = m.metrics_text().await;
    assert!(
        text.contains("toronto_monitor_bad_metric_batches_total 3"),
        "{text}"
    );
    assert!(
        text.contains("toronto_monitor_metric_batches_total 20"),
        "{text}"
    );
    m.stop().await;
}

async fn watch(m: &Monitor, rollout_id: Uuid, service: &str) -> CanaryWatchStatus {
    let mut analyze = analysis(service, standard_metrics());
    analyze.rollout_id = Some(rollout_id);
    m.request(
        "canary.watch",
        CanaryWatch {
            analyze,
            interval_ms: 200,
            duration_seconds: 60,
        },
    )
    .await
    .unwrap()
}

async fn next_verdict(sub: &mut async_nats::Subscriber) -> Envelope<CanaryVerdict> {
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a verdict within 10 s")
        .unwrap();
    toronto_protocol::decode(&msg.payload, Encoding::Json).unwrap()
}

/// Waits until no verdict of `rollout_id` has arrived for a second; fails when they
/// keep coming (a few may be in flight when the watch stops).
async fn quiet(sub: &mut async_nats::Subscriber, rollout_id: Uuid) {
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(msg)) => {
                let v: Envelope<CanaryVerdict> =
                    toronto_protocol::decode(&msg.payload, Encoding::Json).unwrap();
                assert_eq!(v.data.rollout_id, Some(rollout_id), "an unexpected verdict");
            }
        }
    }
    panic!("verdicts of {rollout_id} kept coming after the watch should have stopped");
}

#[tokio::test]
async fn a_watch_publishes_verdicts_until_unwatched_or_the_rollout_ends() {
    let m = monitor().await;
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 60, 0.3, 0.1),
    )
    .await;
    let mut results = m
        .client
        .subscribe("toronto.devops.v1.events.analysis.result")
        .await
        .unwrap();
    m.client.flush().await.unwrap();

    // Without a rollout id: refused, naming the field.
    let err = m
        .request::<_, CanaryWatchStatus>(
            "canary.watch",
            CanaryWatch {
                analyze: analysis("cart", standard_metrics()),
                interval_ms: 200,
                duration_seconds: 60,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(err.to_string().contains("analyze.rollout_id"), "{err}");

    let first = Uuid::new_v4();
    let status = watch(&m, first, "cart").await;
    assert!(status.watching);
    let mut fails = 0;
    while fails < 2 {
        let v = next_verdict(&mut results).await;
        assert_eq!(v.data.rollout_id, Some(first));
        assert_eq!(v.subject.as_deref(), Some("cart"));
        assert_eq!(v.ty, "ai.toronto.devops.canary.verdict.v1");
        if v.data.outcome == AnalysisOutcome::Fail {
            fails += 1;
        }
    }
    let stopped: CanaryWatchStatus = m
        .request("canary.unwatch", CanaryUnwatch { rollout_id: first })
        .await
        .unwrap();
    assert!(!stopped.watching);
    assert!(stopped.verdicts >= 2, "{stopped:?}");
    quiet(&mut results, first).await;

    // A rollout.aborted event for the rollout ends its watch.
    let second = Uuid::new_v4();
    watch(&m, second, "cart").await;
    assert_eq!(
        next_verdict(&mut results).await.data.rollout_id,
        Some(second)
    );
    let aborted = serde_json::json!({
        "specversion": "1.0",
        "id": Uuid::now_v7().to_string(),
        "source": "toronto://devops/deployer",
        "type": "ai.toronto.devops.rollout.v1",
        "data": {"id": second.to_string(), "service": "cart", "phase": "aborted"}
    });
    m.client
        .publish(
            "toronto.devops.v1.events.rollout.aborted",
            serde_json::to_vec(&aborted).unwrap().into(),
        )
        .await
        .unwrap();
    quiet(&mut results, second).await;
    let after: CanaryWatchStatus = m
        .request("canary.unwatch", CanaryUnwatch { rollout_id: second })
        .await
        .unwrap();
    assert!(!after.watching);
    assert!(
        after.verdicts >= 1,
        "the figures of the ended watch: {after:?}"
    );
    m.stop().await;
}

/// An exporter the test serves: `http_latency_seconds` for the stable and canary
/// tracks of `cart` in production, the canary `canary_latency` slower; values change on
/// every scrape so that the samples are not all equal.
async fn exporter(canary_latency: f64) -> (std::net::SocketAddr, CancellationToken) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let scrapes = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = scrapes.fetch_add(1, Ordering::Relaxed);
            async move {
                let noise = (n * 37 % 11) as f64 / 1000.0;
                format!(
                    "# HELP http_latency_seconds Mean latency.\n\
                     # TYPE http_latency_seconds gauge\n\
                     http_latency_seconds{{service=\"cart\",environment=\"production\",track=\"stable\"}} {}\n\
                     http_latency_seconds{{service=\"cart\",environment=\"production\",track=\"canary\"}} {}\n",
                    0.1 + noise,
                    canary_latency + noise
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap();
    });
    (addr, stop)
}

fn latency_analysis() -> CanaryAnalyze {
    let mut latency = metric("http_latency_seconds");
    latency.max_relative_effect = Some(0.2);
    latency.critical = true;
    CanaryAnalyze {
        window_seconds: 120.0,
        ..analysis("cart", vec![latency])
    }
}

#[tokio::test]
async fn scraped_endpoints_feed_the_store_and_the_analysis() {
    let (addr, stop) = exporter(0.3).await;
    let m = monitor_with(Settings {
        scrape_targets: vec![toronto_monitor::settings::Target {
            name: "cart".into(),
            url: format!("http://{addr}/metrics"),
        }],
        scrape_interval: Duration::from_millis(50),
        ..Settings::default()
    })
    .await;
    let verdict = m.analyze_when_ingested(latency_analysis(), 20).await;
    assert_eq!(verdict.outcome, AnalysisOutcome::Fail, "{verdict:#?}");
    let evidence = &verdict.metrics[0];
    assert!(evidence.canary.median.unwrap() > 0.29, "{evidence:?}");
    assert!(evidence.baseline.median.unwrap() < 0.12, "{evidence:?}");
    stop.cancel();
    m.stop().await;
}

/// A real Prometheus (Debian's `/usr/bin/prometheus`) on a free port, with its own
/// data directory, scraping `target` every 200 ms.
struct Prometheus {
    child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Prometheus {
        let bin = std::env::var("TORONTO_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n\
                 scrape_configs:\n  - job_name: exporter\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} (apt-get install prometheus, or set TORONTO_PROMETHEUS_BIN): {e}")
            });
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..150 {
            if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await
                && r.status().is_success()
            {
                return Prometheus {
                    child,
                    url,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("Prometheus never became ready:\n{log}");
    }
}

#[tokio::test]
async fn canary_metrics_with_a_query_are_read_from_a_real_prometheus() {
    let (addr, stop) = exporter(0.3).await;
    let mut prometheus = Prometheus::start(addr).await;

    // The client: an instant query sees the exporter up.
    let client =
        toronto_monitor::prometheus::Prometheus::new(&prometheus.url, Duration::from_secs(5));
    let mut up = Vec::new();
    for _ in 0..100 {
        up = client.query("up{job=\"exporter\"}", None).await.unwrap();
        if !up.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].points[0].1, 1.0);
    assert_eq!(up[0].labels["instance"], addr.to_string());
    // A bad query is Prometheus's error, named.
    let err = client.query("sum(", None).await.unwrap_err();
    assert!(err.to_string().contains("bad_data"), "{err}");

    // The monitor reads canary and baseline from Prometheus with range queries.
    let m = monitor_with(Settings {
        prometheus_url: Some(prometheus.url.clone()),
        ..Settings::default()
    })
    .await;
    let mut req = latency_analysis();
    req.metrics[0].query = Some("http_latency_seconds{{{selector}}}".into());
    let verdict = m.analyze_when_ingested(req.clone(), 5).await;
    assert_eq!(verdict.outcome, AnalysisOutcome::Fail, "{verdict:#?}");
    assert!(
        verdict.metrics[0].canary.median.unwrap() > 0.29,
        "{verdict:#?}"
    );
    // Nothing on the bus for cart: without the query the same analysis has no data.
    req.metrics[0].query = None;
    let bus_only = m.analyze(req).await.unwrap();
    assert_eq!(
        bus_only.outcome,
        AnalysisOutcome::Inconclusive,
        "{bus_only:#?}"
    );
    m.stop().await;
    stop.cancel();
    prometheus.child.kill().await.unwrap();
}

#[tokio::test]
async fn unwatch_stops_a_watch_whichever_replica_runs_it() {
    let m = monitor().await;
    let mut config = Config::default();
    config.nats.urls = vec![m.server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let second = toronto_monitor::start_with(config, Settings::default(), shutdown.clone())
        .await
        .unwrap();
    let second = tokio::spawn(second.run_until_shutdown());
    publish_batches(
        &m.client,
        cluster_batches("cart", "production", 30, 0.01, 0.1),
    )
    .await;
    let mut results = m
        .client
        .subscribe("toronto.devops.v1.events.analysis.result")
        .await
        .unwrap();
    m.client.flush().await.unwrap();
    // Four watches: the queue group spreads them (and the unwatches) over both replicas.
    let rollouts: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for id in &rollouts {
        assert!(watch(&m, *id, "cart").await.watching);
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < rollouts.len() {
        seen.insert(next_verdict(&mut results).await.data.rollout_id.unwrap());
    }
    for id in &rollouts {
        let _: CanaryWatchStatus = m
            .request("canary.unwatch", CanaryUnwatch { rollout_id: *id })
            .await
            .unwrap();
    }
    // No verdict of any of them keeps coming.
    let mut late = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), results.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(_)) => {
                late += 1;
                assert!(late < 20, "verdicts keep coming after every unwatch");
            }
        }
    }
    shutdown.cancel();
    second.await.unwrap().unwrap();
    m.stop().await;
}

const CART_SLO: &str = r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: availability
spec:
  service: cart
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: 0.99
  indicator:
    spec:
      ratioMetric:
        bad:
          metricSource: { type: Bus, spec: { query: 'http_errors{service="cart",environment="production"}' } }
        total:
          metricSource: { type: Bus, spec: { query: 'http_requests{service="cart",environment="production"}' } }
"#;

/// Publishes a tick of `cart` traffic every 100 ms, with the errors in `errors` (out
/// of 100 requests), until `stop`.
fn traffic(
    client: async_nats::Client,
    errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        while !stop.is_cancelled() {
            every.tick().await;
            let bad = errors.load(std::sync::atomic::Ordering::Relaxed) as f64;
            let now = chrono::Utc::now();
            let l = labels(&[("track", "stable"), ("version", "2.4.0")]);
            let sample = |name: &str, value: f64| MetricSample {
                name: name.into(),
                labels: l.clone(),
                value,
                timestamp: now,
            };
            publish_batches(
                &client,
                vec![MetricBatch {
                    service: "cart".into(),
                    environment: "production".into(),
                    source: "simulated-cluster".into(),
                    samples: vec![sample("http_requests", 100.0), sample("http_errors", bad)],
                }],
            )
            .await;
        }
    })
}

fn compressed(slo_dir: &std::path::Path) -> Settings {
    Settings {
        slo_dir: Some(slo_dir.to_owned()),
        // 1h lasts 10 s, 5m 0.83 s, 30m 5 s, the 30-day SLO window 2 hours.
        time_scale: 360.0,
        slo_interval: Duration::from_millis(200),
        resolve_evaluations: 3,
        ..Settings::default()
    }
}

async fn next_alert(
    sub: &mut async_nats::Subscriber,
    severity: &str,
) -> (String, Envelope<toronto_protocol::alerts::Alert>) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("no {severity} alert within 30 s"))
            .unwrap();
        let alert: Envelope<toronto_protocol::alerts::Alert> =
            toronto_protocol::decode(&msg.payload, Encoding::Json).unwrap();
        if alert.data.labels["severity"] == severity {
            return (msg.subject.to_string(), alert);
        }
    }
}

#[tokio::test]
async fn a_fast_burn_pages_exhausts_the_budget_and_resolves_when_errors_stop() {
    use toronto_protocol::alerts::{AlertStatus, SloEntries, SloList};
    use toronto_protocol::tasks::{SloGet, SloStatuses};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cart.yaml"), CART_SLO).unwrap();
    let m = monitor_with(compressed(dir.path())).await;
    let mut page_events = m
        .client
        .subscribe("toronto.devops.v1.events.alert.>")
        .await
        .unwrap();
    let mut exhausted_events = m
        .client
        .subscribe("toronto.devops.v1.events.slo.budget.exhausted")
        .await
        .unwrap();
    m.client.flush().await.unwrap();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = CancellationToken::new();
    let publisher = traffic(m.client.clone(), errors.clone(), stop.clone());

    // Healthy: a status with its burn rates, the whole budget left.
    let get = || async {
        m.request::<_, SloStatuses>(
            "slo.get",
            SloGet {
                service: "cart".into(),
            },
        )
        .await
        .unwrap()
        .statuses
    };
    let mut healthy = None;
    for _ in 0..100 {
        if let Some(s) = get()
            .await
            .into_iter()
            .find(|s| s.burn_rates.contains_key("5m"))
        {
            healthy = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy = healthy.expect("the SLO is evaluated from the bus");
    assert_eq!(healthy.slo, "availability");
    assert!(
        !healthy.exhausted && healthy.budget_remaining > 0.99,
        "{healthy:?}"
    );
    assert_eq!(healthy.burn_rates["5m"], 0.0);

    // Half the requests fail: 50x the budget. The page fires.
    errors.store(50, std::sync::atomic::Ordering::Relaxed);
    let (subject, fired) = next_alert(&mut page_events, "page").await;
    assert_eq!(subject, "toronto.devops.v1.events.alert.firing");
    assert_eq!(fired.ty, "ai.toronto.devops.alert.v1");
    assert_eq!(fired.subject.as_deref(), Some("cart"));
    let alert = &fired.data;
    assert_eq!(alert.status, AlertStatus::Firing);
    assert_eq!(alert.labels["alertname"], "SLOErrorBudgetBurnPage");
    assert_eq!(alert.labels["service"], "cart");
    assert_eq!(alert.labels["environment"], "production");
    assert_eq!(alert.labels["slo"], "availability");
    assert_eq!(
        alert.fingerprint,
        toronto_protocol::alerts::fingerprint(&alert.labels)
    );
    // Either page tier: 14.4x over 1h and 5m, or 6x over 6h and 30m.
    let over = |w: &str, rate: f64| alert.burn_rates[w] > rate;
    assert!(
        (over("1h", 14.4) && over("5m", 14.4)) || (over("6h", 6.0) && over("30m", 6.0)),
        "{alert:?}"
    );
    assert!(alert.annotations["windows"].contains("over"), "{alert:?}");
    assert!(alert.budget_remaining.is_some());

    // The budget is spent: announced once, and slo.get (the planner's gate) says so.
    let exhausted = tokio::time::timeout(Duration::from_secs(30), exhausted_events.next())
        .await
        .expect("budget exhausted within 30 s")
        .unwrap();
    let exhausted: Envelope<toronto_protocol::tasks::SloStatus> =
        toronto_protocol::decode(&exhausted.payload, Encoding::Json).unwrap();
    assert!(exhausted.data.exhausted && exhausted.data.budget_remaining <= 0.0);
    let mut spent = false;
    for _ in 0..50 {
        if get().await.iter().any(|s| s.exhausted) {
            spent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(spent, "slo.get reports the spent budget");
    let listed: SloEntries = m.request("slo.list", SloList::default()).await.unwrap();
    assert_eq!(listed.slos.len(), 1);
    assert!(
        listed.slos[0].firing.contains(&"page".to_owned()),
        "{listed:?}"
    );
    assert_eq!(listed.slos[0].definition.source, "bus");

    // Errors stop: the short windows clear and the page resolves, same fingerprint.
    errors.store(0, std::sync::atomic::Ordering::Relaxed);
    let (subject, resolved) = next_alert(&mut page_events, "page").await;
    assert_eq!(subject, "toronto.devops.v1.events.alert.resolved");
    assert_eq!(resolved.data.status, AlertStatus::Resolved);
    assert_eq!(resolved.data.fingerprint, alert.fingerprint);
    assert!(resolved.data.ends_at.unwrap() >= alert.starts_at);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), exhausted_events.next())
            .await
            .is_err(),
        "exhaustion is announced once"
    );
    stop.cancel();
    publisher.await.unwrap();
    m.stop().await;
}

#[tokio::test]
async fn slos_are_put_listed_kept_across_restarts_and_bad_ones_refused() {
    use toronto_monitor::settings::Settings as S;
    use toronto_protocol::alerts::{SloDefinition, SloEntries, SloList, SloPut};
    let m = monitor().await;
    let put: SloDefinition = m
        .request(
            "slo.put",
            SloPut {
                document: CART_SLO.replace("target: 0.99", "target: 0.995"),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (put.service.as_str(), put.slo.as_str()),
        ("cart", "availability")
    );
    assert_eq!(put.objective, 0.995);
    assert_eq!(put.environment, "production");
    let err = m
        .request::<_, SloDefinition>(
            "slo.put",
            SloPut {
                document: CART_SLO.replace("target: 0.99", "target: 2"),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    let CallError::Remote(body) = err else {
        panic!("not an error envelope")
    };
    assert_eq!(
        body.details.unwrap()["errors"][0]["field"].as_str(),
        Some("spec.objectives[0].target")
    );

    // A second monitor on the same NATS finds the SLO put to the first.
    let mut config = Config::default();
    config.nats.urls = vec![m.server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let second = toronto_monitor::start_with(config.clone(), S::default(), shutdown.clone())
        .await
        .unwrap();
    let second = tokio::spawn(second.run_until_shutdown());
    m.shutdown.cancel();
    m.running.await.unwrap().unwrap();
    let listed: SloEntries = {
        let req = Envelope::builder(
            "toronto://test",
            SloList {
                service: Some("cart".into()),
            },
        )
        .build();
        call(
            &m.client,
            "toronto.devops.v1.monitor.slo.list",
            &req,
            Encoding::Json,
            Duration::from_secs(10),
        )
        .await
        .map(|r: Envelope<SloEntries>| r.data)
        .unwrap()
    };
    assert_eq!(listed.slos.len(), 1);
    assert_eq!(listed.slos[0].definition.objective, 0.995);
    shutdown.cancel();
    second.await.unwrap().unwrap();

    // A malformed file in the SLO directory stops the start, naming file and field.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        CART_SLO.replace("duration: 30d", "duration: 7d"),
    )
    .unwrap();
    let err = toronto_monitor::start_with(config, compressed(dir.path()), CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.yaml") && err.contains("spec.timeWindow[0].duration"),
        "{err}"
    );
}

/// A web page the probes hit: 200 while `healthy`, else 503.
async fn web(
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (std::net::SocketAddr, CancellationToken) {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let ok = healthy.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if ok {
                    (axum::http::StatusCode::OK, "ok")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap();
    });
    (addr, stop)
}

async fn next_named_alert(
    sub: &mut async_nats::Subscriber,
    alertname: &str,
) -> (String, toronto_protocol::alerts::Alert) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("no {alertname} alert within 30 s"))
            .unwrap();
        let alert: Envelope<toronto_protocol::alerts::Alert> =
            toronto_protocol::decode(&msg.payload, Encoding::Json).unwrap();
        if alert.data.labels["alertname"] == alertname {
            return (msg.subject.to_string(), alert.data);
        }
    }
}

#[tokio::test]
async fn failing_probes_and_anomalous_series_raise_warnings_that_resolve() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let healthy = Arc::new(AtomicBool::new(true));
    let (addr, stop_web) = web(healthy.clone()).await;
    let m = monitor_with(Settings {
        probes: vec![toronto_monitor::settings::Target {
            name: "shop-web".into(),
            url: format!("http://{addr}/"),
        }],
        probe_interval: Duration::from_millis(100),
        anomaly_metrics: vec!["http_latency_seconds".into()],
        anomaly_interval: Duration::from_millis(300),
        resolve_evaluations: 2,
        ..Settings::default()
    })
    .await;
    let mut alerts = m
        .client
        .subscribe("toronto.devops.v1.events.alert.>")
        .await
        .unwrap();
    m.client.flush().await.unwrap();

    // The page goes down: after three failed probes, a warning; back up: resolved.
    healthy.store(false, Ordering::Relaxed);
    let (subject, down) = next_named_alert(&mut alerts, "ProbeFailed").await;
    assert_eq!(subject, "toronto.devops.v1.events.alert.firing");
    assert_eq!(down.labels["severity"], "warning");
    assert_eq!(down.labels["probe"], "shop-web");
    assert!(down.annotations["description"].contains("503"), "{down:?}");
    healthy.store(true, Ordering::Relaxed);
    let (subject, up) = next_named_alert(&mut alerts, "ProbeFailed").await;
    assert_eq!(subject, "toronto.devops.v1.events.alert.resolved");
    assert_eq!(up.fingerprint, down.fingerprint);

    // Latency history (15 s of calm), then a live series that spikes and calms down.
    let now = chrono::Utc::now();
    let history: Vec<MetricBatch> = (0..150)
        .map(|i| MetricBatch {
            service: "cart".into(),
            environment: "production".into(),
            source: "simulated-cluster".into(),
            samples: vec![MetricSample {
                name: "http_latency_seconds".into(),
                labels: labels(&[("track", "stable")]),
                value: 0.1 + (i % 7) as f64 * 0.002,
                timestamp: now - chrono::Duration::milliseconds(15_000 - i * 100),
            }],
        })
        .collect();
    publish_batches(&m.client, history).await;
    let latency = Arc::new(AtomicU64::new(0.1f64.to_bits()));
    let stop = CancellationToken::new();
    let live = {
        let (client, latency, stop) = (m.client.clone(), latency.clone(), stop.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(50));
            while !stop.is_cancelled() {
                every.tick().await;
                let value = f64::from_bits(latency.load(Ordering::Relaxed));
                publish_batches(
                    &client,
                    vec![MetricBatch {
                        service: "cart".into(),
                        environment: "production".into(),
                        source: "simulated-cluster".into(),
                        samples: vec![MetricSample {
                            name: "http_latency_seconds".into(),
                            labels: labels(&[("track", "stable")]),
                            value,
                            timestamp: chrono::Utc::now(),
                        }],
                    }],
                )
                .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    latency.store(2.0f64.to_bits(), Ordering::Relaxed);
    let (subject, spike) = next_named_alert(&mut alerts, "MetricAnomaly").await;
    assert_eq!(subject, "toronto.devops.v1.events.alert.firing");
    assert_eq!(spike.labels["metric"], "http_latency_seconds");
    assert_eq!(spike.labels["service"], "cart");
    assert_eq!(spike.labels["track"], "stable");
    assert_eq!(spike.labels["severity"], "warning");
    assert!(
        spike.annotations["z_score"].parse::<f64>().unwrap() > 5.0,
        "{spike:?}"
    );
    latency.store(0.1f64.to_bits(), Ordering::Relaxed);
    let (subject, calm) = next_named_alert(&mut alerts, "MetricAnomaly").await;
    assert_eq!(subject, "toronto.devops.v1.events.alert.resolved");
    assert_eq!(calm.fingerprint, spike.fingerprint);
    stop.cancel();
    live.await.unwrap();
    stop_web.cancel();
    m.stop().await;
}

/// An exporter of request counters: 100 requests per scrape, half of them failing while
/// `failing`.
async fn counters(
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (std::net::SocketAddr, CancellationToken) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let bad = if failing.load(Ordering::Relaxed) {
                50
            } else {
                0
            };
            let ok = ok.fetch_add(100 - bad, Ordering::Relaxed) + 100 - bad;
            let errors = errors.fetch_add(bad, Ordering::Relaxed) + bad;
            async move {
                format!(
                    "# TYPE http_requests_total counter\n\
                     http_requests_total{{code=\"200\"}} {ok}\n\
                     http_requests_total{{code=\"500\"}} {errors}\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap();
    });
    (addr, stop)
}

#[tokio::test]
async fn an_slo_read_from_a_real_prometheus_pages_and_resolves() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use toronto_protocol::alerts::{AlertStatus, SloEntries, SloList};
    let failing = Arc::new(AtomicBool::new(true));
    let (addr, stop_exporter) = counters(failing.clone()).await;
    let mut prometheus = Prometheus::start(addr).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shop.yaml"),
        r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: availability
spec:
  service: shop-api
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: 0.99
  indicator:
    spec:
      ratioMetric:
        bad:
          metricSource: { type: Prometheus, spec: { query: 'sum(rate(http_requests_total{code="500"}[{{.window}}]))' } }
        total:
          metricSource: { type: Prometheus, spec: { query: 'sum(rate(http_requests_total[{{.window}}]))' } }
"#,
    )
    .unwrap();
    let m = monitor_with(Settings {
        prometheus_url: Some(prometheus.url.clone()),
        // 5m lasts one second (five scrapes), 1h twelve seconds.
        time_scale: 300.0,
        slo_interval: Duration::from_millis(300),
        ..compressed(dir.path())
    })
    .await;
    let mut alerts = m
        .client
        .subscribe("toronto.devops.v1.events.alert.>")
        .await
        .unwrap();
    m.client.flush().await.unwrap();

    let (subject, fired) = next_alert(&mut alerts, "page").await;
    assert_eq!(subject, "toronto.devops.v1.events.alert.firing");
    assert_eq!(fired.data.labels["service"], "shop-api");
    assert!(fired.data.burn_rates["5m"] > 6.0, "{:?}", fired.data);
    let listed: SloEntries = m.request("slo.list", SloList::default()).await.unwrap();
    assert_eq!(listed.slos[0].definition.source, "prometheus");
    let status = listed.slos[0].status.as_ref().expect("evaluated");
    assert!(status.burn_rates["1h"] > 1.0, "{status:?}");

    failing.store(false, Ordering::Relaxed);
    let (subject, resolved) = next_alert(&mut alerts, "page").await;
    assert_eq!(subject, "toronto.devops.v1.events.alert.resolved");
    assert_eq!(resolved.data.status, AlertStatus::Resolved);
    assert_eq!(resolved.data.fingerprint, fired.data.fingerprint);
    m.stop().await;
    stop_exporter.cancel();
    prometheus.child.kill().await.unwrap();
}
