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
    let mut prometheus = Prometheus::start(addr, "exporter").await;

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

/// An HTTPS receiver whose certificate is signed by a CA made here (rcgen); it answers
/// every request `200 ok`. The TLS handshake is real rustls; the HTTP answer is written by
/// hand (one fixed response is all a probe needs). Returns its port and the CA's PEM.
async fn https_receiver() -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn the_monitors_http_client_reaches_https_with_a_private_ca() {
    use toronto_monitor::probes::probe_once;
    use toronto_monitor::settings::Target;
    use toronto_monitor::store::{Store, StoreLimits};
    let (port, ca_pem) = https_receiver().await;
    let target = Target {
        name: "private-web".into(),
        url: format!("https://localhost:{port}/"),
    };
    let store = Store::new(StoreLimits::default());

    // The system's roots do not know the private CA: the probe fails.
    let untrusted = toronto_runtime::tls::http_client()
        .tls_certs_only(Vec::new())
        .build()
        .unwrap();
    let refused = probe_once(&untrusted, &target, &store).await;
    assert!(!refused.success, "{refused:?}");
    assert_eq!(refused.status, None, "{refused:?}");

    // With TORONTO_TLS_CA_FILE naming the CA (as the monitor's start reads it), the same
    // client the monitor builds gets through.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let config = Config::from_vars(&toronto_runtime::config::var_map(&[(
        "TORONTO_TLS_CA_FILE",
        ca_file.to_str().unwrap(),
    )]))
    .unwrap();
    assert_eq!(config.http.tls_ca_file.as_deref(), Some(ca_file.as_path()));
    toronto_runtime::tls::trust_ca_file(config.http.tls_ca_file.as_deref()).unwrap();
    let trusted = toronto_runtime::tls::http_client().build().unwrap();
    let reached = probe_once(&trusted, &target, &store).await;
    assert!(reached.success, "{reached:?}");
    assert_eq!(reached.status, Some(200));
}
