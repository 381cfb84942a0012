//! Canaries judged by an analysis template: the deployer asks the real monitor, which
//! reads a real Prometheus (Debian's `prometheus`) scraping an exporter this test
//! serves with canary and baseline series of `http_requests_total` (the `app`
//! template). The rollouts land on the simulated cluster (a simulation); only the
//! analysis is what a Kubernetes rollout gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_deployer::{AnalysisMode, Settings};
use toronto_protocol::analysis::AnalysisOutcome;
use toronto_protocol::rollout::{Rollout, RolloutCommand, RolloutPhase};
use toronto_runtime::Config;
use uuid::Uuid;

use crate::support::{Stack, canary, deploy, settings, stack_with};

/// (service, version, track) → (requests per second, share of them failing with 500).
type Traffic = HashMap<(&'static str, &'static str, &'static str), (f64, f64)>;

/// Serves `/metrics`: `http_requests_total` counters that grow with time at the rates
/// of `traffic`, a little unevenly (so that no two samples are equal).
async fn exporter(traffic: Traffic) -> (std::net::SocketAddr, CancellationToken) {
    /// The last scrape, the number of scrapes, and each series' value.
    type Counters = (std::time::Instant, u64, HashMap<String, f64>);
    let counters: Arc<Mutex<Counters>> =
        Arc::new(Mutex::new((std::time::Instant::now(), 0, HashMap::new())));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let mut state = counters.lock().unwrap();
            let (last, n, values) = &mut *state;
            let dt = last.elapsed().as_secs_f64();
            *last = std::time::Instant::now();
            *n += 1;
            let wobble = 1.0 + ((*n * 37 % 11) as f64 - 5.0) / 50.0;
            let mut out = String::from("# TYPE http_requests_total counter\n");
            for ((service, version, track), (rps, failing)) in &traffic {
                for (code, share) in [("200", 1.0 - failing), ("500", *failing)] {
                    let series = format!(
                        "http_requests_total{{namespace=\"production\",app_kubernetes_io_name=\"{service}\",app_kubernetes_io_version=\"{version}\",track=\"{track}\",code=\"{code}\"}}"
                    );
                    let value = values.entry(series.clone()).or_insert(0.0);
                    *value += rps * share * dt * wobble;
                    out.push_str(&format!("{series} {value}\n"));
                }
            }
            async move { out }
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

/// The monitor, reading Prometheus at `url`, on the stack's server.
async fn monitor(nats: &str, url: &str) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![nats.to_owned()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let rt = Box::pin(toronto_monitor::start_with(
        config,
        toronto_monitor::settings::Settings {
            prometheus_url: Some(url.to_owned()),
            ..Default::default()
        },
        shutdown.clone(),
    ))
    .await
    .expect("monitor starts");
    let running = tokio::spawn(async move {
        rt.run_until_shutdown().await.unwrap();
    });
    (shutdown, running)
}

/// Polls the rollout until `done` holds.
async fn until(s: &Stack, id: Uuid, what: &str, done: impl Fn(&Rollout) -> bool) -> Rollout {
    for _ in 0..300 {
        let r = s.rollout(id).await;
        if done(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("rollout {id} never {what}: {:?}", s.rollout(id).await);
}

fn template_settings() -> Settings {
    // `lone` has a template of its own that fails a canary without data.
    let mut strict = toronto_deployer::engine::built_in("app", &settings()).unwrap();
    strict.name = "strict".into();
    strict.on_no_data = Some(toronto_protocol::analysis::OnNoData::Fail);
    Settings {
        custom_templates: [("strict".to_owned(), strict)].into(),
        service_templates: [("lone".to_owned(), "strict".to_owned())].into(),
        analysis: AnalysisMode::Templates,
        analysis_window: Duration::from_secs(6),
        analysis_interval: Duration::from_millis(500),
        analysis_timeout: Duration::from_secs(3),
        first_deploy_pause: Duration::from_secs(1),
        ..settings()
    }
}

#[tokio::test]
async fn a_template_reads_prometheus_a_bad_canary_aborts_a_good_one_promotes_no_data_pauses() {
    Box::pin(scenario()).await;
}

async fn scenario() {
    let traffic: Traffic = [
        (("shop", "1.0.0", "stable"), (100.0, 0.01)),
        (("shop", "2.0.0", "canary"), (100.0, 0.01)),
        (("cart", "1.0.0", "stable"), (100.0, 0.01)),
        (("cart", "2.0.0", "canary"), (100.0, 0.30)),
        // First deploys are checked against thresholds: every 1.0.0 has traffic.
        (("quiet", "1.0.0", "stable"), (100.0, 0.01)),
        (("lone", "1.0.0", "stable"), (100.0, 0.01)),
    ]
    .into();
    let (addr, stop_exporter) = exporter(traffic).await;
    let mut prom = toronto_testkit::Prometheus::start(addr, "app").await;
    let url = prom.url.clone();
    let mut s = stack_with(template_settings(), 1).await;
    let (stop_monitor, monitor_running) = monitor(&s._server.url(), &url).await;
    // Let Prometheus gather enough scrapes for the first deploys' threshold checks.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for service in ["shop", "cart", "quiet", "lone"] {
        s.deployed(service, "1.0.0", canary(&[50], 0)).await;
    }

    // A canary failing 30% of its requests is aborted on the template's error ratio.
    let bad = s.start(deploy("cart", "2.0.0", canary(&[50], 4))).await;
    let aborted = s.event(bad, "aborted", Duration::from_secs(30)).await;
    assert!(aborted.rolled_back);
    let reason = aborted.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("critical metric error_ratio failed"),
        "{reason}"
    );
    let evidence = &aborted.analyses.last().unwrap().verdict.metrics[0];
    assert!(evidence.canary.median.unwrap() > 0.2, "{evidence:?}");
    assert!(evidence.baseline.median.unwrap() < 0.05, "{evidence:?}");

    // One as healthy as its baseline is promoted after its pause.
    let good = s.start(deploy("shop", "2.0.0", canary(&[50], 3))).await;
    let done = s.event(good, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(done.weight, 100);

    // Nothing in Prometheus for `quiet`: the canary pauses, saying why, and stays
    // paused (no timer promotes it) until an operator promotes it.
    let quiet = s.start(deploy("quiet", "2.0.0", canary(&[50], 1))).await;
    let paused = s.event(quiet, "paused", Duration::from_secs(30)).await;
    let reason = paused.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("no analysis data for step weight-50 (on_no_data: pause)"),
        "{reason}"
    );
    assert_eq!(paused.analyses.last().unwrap().source, "no_data");
    assert_eq!(
        paused.analyses.last().unwrap().verdict.outcome,
        AnalysisOutcome::Inconclusive
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = s.rollout(quiet).await;
    assert_eq!(still.phase, RolloutPhase::Paused);
    assert_eq!(still.weight, 50);
    // Resuming analyses again: still nothing, so it pauses again.
    let resumed: Rollout = s
        .request(
            "rollout.resume",
            RolloutCommand {
                id: Some(quiet),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(resumed.phase, RolloutPhase::Progressing);
    until(&s, quiet, "paused again", |r| {
        r.phase == RolloutPhase::Paused && r.analyses.len() >= 2
    })
    .await;
    let _: Rollout = s
        .request(
            "rollout.promote",
            RolloutCommand {
                id: Some(quiet),
                by: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.event(quiet, "succeeded", Duration::from_secs(30)).await;

    // A template's own `on_no_data: fail` aborts instead.
    let lone = s.start(deploy("lone", "2.0.0", canary(&[50], 1))).await;
    let aborted = s.event(lone, "aborted", Duration::from_secs(30)).await;
    let reason = aborted.reason.unwrap_or_default();
    assert!(reason.contains("(on_no_data: fail)"), "{reason}");
    assert!(aborted.rolled_back);

    // A Prometheus outage is no data too: the healthy service now pauses.
    prom.child.kill().await.unwrap();
    let blind = s.start(deploy("shop", "3.0.0", canary(&[50], 1))).await;
    let paused = s.event(blind, "paused", Duration::from_secs(30)).await;
    let reason = paused.reason.clone().unwrap_or_default();
    assert!(reason.contains("Prometheus query failed"), "{reason}");

    stop_monitor.cancel();
    monitor_running.await.unwrap();
    stop_exporter.cancel();
    s.stop().await;
}
