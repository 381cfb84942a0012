//! Tests of the simulated traffic: its metric batches, the series of retired versions.

use std::time::Duration;

use chrono::Utc;
use toronto_protocol::analysis::{MetricBatch, MetricSample};

use crate::sim::{SimCluster, SimSettings};
use crate::target::{Layout, Target, Track};

fn sample(name: &str, track: &str, value: f64) -> MetricSample {
    let version = if track == "canary" { "1.3.0" } else { "1.2.0" };
    versioned(name, track, version, value)
}

fn versioned(name: &str, track: &str, version: &str, value: f64) -> MetricSample {
    MetricSample {
        name: name.into(),
        labels: [
            ("track".to_owned(), track.to_owned()),
            ("version".to_owned(), version.to_owned()),
        ]
        .into(),
        value,
        timestamp: Utc::now(),
    }
}

fn rolling(version: &str, step: &str) -> Layout {
    crate::sim::target::tests::layout(version, 2, step)
}

#[tokio::test]
async fn a_retired_version_leaves_the_metrics_and_a_running_one_keeps_counting() {
    let sim = SimCluster::new(SimSettings {
        pod_start: Duration::ZERO,
        ..SimSettings::default()
    });
    let metrics = toronto_runtime::Metrics::new();
    sim.register_metrics(&metrics);
    let series = |text: &str, version: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("version=\"{version}\"")))
            .count()
    };
    for (i, version) in ["1.0.0", "1.1.0", "1.2.0"].into_iter().enumerate() {
        sim.apply(&rolling(version, &format!("r{i}:replace")))
            .await
            .unwrap();
        sim.tick();
        sim.tick();
    }
    let text = metrics.render();
    assert_eq!(series(&text, "1.0.0"), 0, "{text}");
    assert_eq!(series(&text, "1.1.0"), 0, "{text}");
    assert!(series(&text, "1.2.0") > 2, "{text}");
    let per_tick = SimSettings::default().requests_per_tick;
    let requests = text
        .lines()
        .find(|l| l.starts_with("toronto_sim_http_requests_total{") && l.contains("1.2.0"))
        .unwrap_or_else(|| panic!("no request counter of 1.2.0 in {text}"));
    assert!(
        requests.ends_with(&format!(" {}", 2 * per_tick)),
        "both ticks counted: {requests}"
    );
    // The service removed from the world: its last series go too.
    sim.teardown_environment("prod").await.unwrap();
    sim.tick();
    assert_eq!(series(&metrics.render(), "1.2.0"), 0);
}

#[test]
fn heard_batches_are_the_history_per_track() {
    let sim = SimCluster::new(SimSettings::default());
    let batch = MetricBatch {
        service: "shop".into(),
        environment: "prod".into(),
        source: super::SOURCE.into(),
        samples: vec![
            sample("http_requests", "stable", 90.0),
            sample("http_errors", "stable", 0.0),
            sample("http_latency_seconds", "stable", 0.02),
            sample("http_requests", "canary", 10.0),
            sample("http_errors", "canary", 5.0),
            sample("http_latency_seconds", "canary", 0.1),
        ],
    };
    sim.hear(&batch);
    sim.hear(&batch);
    let window = Duration::from_secs(10);
    let observed = |track, version| sim.observed("shop", "prod", track, version, window);
    let (requests, errors, latency) = observed(Track::Canary, None).unwrap();
    assert_eq!((requests, errors), (20, 10));
    assert!((latency - 0.1).abs() < 1e-9);
    let (requests, errors, _) = observed(Track::Stable, None).unwrap();
    assert_eq!((requests, errors), (180, 0));
    assert!(
        sim.observed("shop", "dev", Track::Stable, None, window)
            .is_none()
    );

    // The next rollout's canary on the same track: its own version's requests only.
    sim.hear(&MetricBatch {
        samples: vec![
            versioned("http_requests", "canary", "1.4.0", 10.0),
            versioned("http_errors", "canary", "1.4.0", 0.0),
            versioned("http_latency_seconds", "canary", "1.4.0", 0.05),
        ],
        ..batch
    });
    let (requests, errors, latency) = observed(Track::Canary, Some("1.4.0")).unwrap();
    assert_eq!((requests, errors), (10, 0));
    assert!((latency - 0.05).abs() < 1e-9);
    assert_eq!(observed(Track::Canary, Some("1.3.0")).unwrap().0, 20);
    assert_eq!(observed(Track::Canary, None).unwrap().0, 30);
    assert!(observed(Track::Canary, Some("9.9.9")).is_none());
}
