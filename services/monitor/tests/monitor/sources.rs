//! Metric sources: scraped exposition endpoints and a real Prometheus.

use super::*;

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
