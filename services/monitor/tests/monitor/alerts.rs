//! Warnings beside the SLOs: failing synthetic probes and anomalous series.

use super::*;

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
