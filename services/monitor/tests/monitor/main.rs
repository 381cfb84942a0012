//! The monitor against a real nats-server (and, where said, a real Prometheus): metrics
//! on the bus, canary analysis once and continuous, metric sources, SLOs and alerts.
//! One binary, one module per concern: [`canary`], [`sources`], [`slo`] and [`alerts`].

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_monitor::Settings;
use toronto_protocol::analysis::{
    AnalysisMetric, AnalysisOutcome, CanaryAnalyze, CanaryUnwatch, CanaryVerdict, CanaryWatch,
    CanaryWatchStatus, Direction, MetricBatch, MetricSample, SequentialAnalysis,
};
use toronto_protocol::{Encoding, Envelope, ErrorCode, encode};
use toronto_runtime::Config;
use toronto_runtime::rpc::CallError;
use toronto_testkit::{NatsServer, Prometheus, Requester};
use uuid::Uuid;

struct Monitor {
    server: NatsServer,
    client: async_nats::Client,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>,
    http: Option<std::net::SocketAddr>,
    /// The monitor's verbs, through the testkit's request helper.
    api: Requester,
}

async fn monitor_with(settings: Settings) -> Monitor {
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
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
        api: Requester::service(client.clone(), "monitor"),
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

    async fn analyze(&self, req: CanaryAnalyze) -> Result<CanaryVerdict, CallError> {
        self.api.request("canary.analyze", req).await
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
        max_value: None,
        min_value: None,
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
        sequential: None,
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

mod alerts;
mod canary;
mod replay;
mod replicas;
mod slo;
mod sources;
