//! SLOs: burn-rate alerts and error budgets, the SLO verbs, persistence across restarts,
//! and SLOs read from a real Prometheus.

use super::*;

/// The availability SLO of `cart` in production, on bus metrics.
pub(super) fn cart_slo() -> String {
    toronto_testkit::slo::bus_availability(
        "availability",
        "cart",
        r#"service="cart",environment="production""#,
        0.99,
    )
}

/// Publishes a tick of `cart` traffic every 100 ms, with the errors in `errors` (out
/// of 100 requests), until `stop`.
pub(super) fn traffic(
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

pub(super) fn compressed(slo_dir: &std::path::Path) -> Settings {
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
    std::fs::write(dir.path().join("cart.yaml"), cart_slo()).unwrap();
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
        m.api
            .request::<_, SloStatuses>(
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
    assert_eq!(fired.ty, "ai.toronto.devops.alert.firing.v1");
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
    let listed: SloEntries = m.api.request("slo.list", SloList::default()).await.unwrap();
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
        .api
        .request(
            "slo.put",
            SloPut {
                document: cart_slo().replace("target: 0.99", "target: 0.995"),
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
        .api
        .request::<_, SloDefinition>(
            "slo.put",
            SloPut {
                document: cart_slo().replace("target: 0.99", "target: 2"),
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
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![m.server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let second = toronto_monitor::start_with(config.clone(), S::default(), shutdown.clone())
        .await
        .unwrap();
    let second = tokio::spawn(second.run_until_shutdown());
    m.shutdown.cancel();
    m.running.await.unwrap().unwrap();
    // Right after the first monitor left, the server may still route one request to
    // its queue-group member ("no responders"): ask again, for a few seconds at most.
    let mut listed = None;
    let mut last = String::new();
    for _ in 0..30 {
        let asked: Result<SloEntries, _> = m
            .api
            .request(
                "slo.list",
                SloList {
                    service: Some("cart".into()),
                },
            )
            .await;
        match asked {
            Ok(entries) => {
                listed = Some(entries);
                break;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = listed.unwrap_or_else(|| panic!("the second monitor never answered: {last}"));
    assert_eq!(listed.slos.len(), 1);
    assert_eq!(listed.slos[0].definition.objective, 0.995);
    shutdown.cancel();
    second.await.unwrap().unwrap();

    // A malformed file in the SLO directory stops the start, naming file and field.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        cart_slo().replace("duration: 30d", "duration: 7d"),
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
    let mut prometheus = Prometheus::start(addr, "exporter").await;
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
    let listed: SloEntries = m.api.request("slo.list", SloList::default()).await.unwrap();
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
