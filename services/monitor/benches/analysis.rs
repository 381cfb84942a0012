//! The monitor's hot paths, in-process (no NATS): canary analysis latency, SLO
//! evaluation throughput, memory with many SLOs. Prints figures; run with
//! `cargo bench -p toronto-monitor --bench analysis`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use toronto_monitor::canary::Analyzer;
use toronto_monitor::evaluate::{EvalSettings, SloEngine};
use toronto_monitor::store::{Labels, Store, StoreLimits, now_ms};
use toronto_protocol::analysis::{AnalysisMetric, CanaryAnalyze, Direction};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Resident memory of this process in KiB (Linux), for before/after figures.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn canary_latency(rt: &tokio::runtime::Runtime) {
    const METRICS: usize = 10;
    const SAMPLES: i64 = 600;
    let store = Arc::new(Store::new(StoreLimits::default()));
    let now = now_ms();
    for m in 0..METRICS {
        for (track, shift) in [("stable", 0.0), ("canary", 0.01)] {
            let l = labels(&[
                ("service", "shop-api"),
                ("environment", "production"),
                ("track", track),
            ]);
            for i in 0..SAMPLES {
                let noise = ((i * 37 + m as i64) % 101) as f64 / 1000.0;
                store.insert(
                    &format!("metric_{m}"),
                    &l,
                    now - 59_000 + i * 98,
                    0.1 + shift + noise,
                );
            }
        }
    }
    let analyzer = Analyzer::new(store, None, 3);
    let request = CanaryAnalyze {
        service: "shop-api".into(),
        environment: "production".into(),
        canary: BTreeMap::from([("track".to_owned(), "canary".to_owned())]),
        baseline: BTreeMap::from([("track".to_owned(), "stable".to_owned())]),
        metrics: (0..METRICS)
            .map(|m| AnalysisMetric {
                name: format!("metric_{m}"),
                query: None,
                direction: Direction::Increase,
                max_relative_effect: Some(0.05),
                max_absolute_effect: None,
                critical: m == 0,
                must_have_data: false,
                max_value: None,
                min_value: None,
            })
            .collect(),
        window_seconds: 120.0,
        confidence: None,
        rollout_id: None,
        sequential: None,
    };
    let verdict = rt.block_on(analyzer.analyze(&request)).unwrap();
    assert!(
        verdict
            .metrics
            .iter()
            .all(|m| m.canary.count == SAMPLES as usize && m.baseline.count == SAMPLES as usize),
        "every sample selected"
    );
    for _ in 0..20 {
        rt.block_on(analyzer.analyze(&request)).unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        std::hint::black_box(rt.block_on(analyzer.analyze(&request)).unwrap());
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "canary analysis, {METRICS} metrics x {SAMPLES} samples per side (300 runs):\n  \
         p50 {:>8.2?}   p99 {:>8.2?}   max {:>8.2?}   (goal p50 < 20 ms; outcome {:?})",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().unwrap(),
        verdict.outcome
    );
}

fn slo_evaluation(rt: &tokio::runtime::Runtime) {
    const SLOS: usize = 1000;
    let rss_before = rss_kib();
    let store = Arc::new(Store::new(StoreLimits::default()));
    let engine = SloEngine::new(
        store.clone(),
        None,
        EvalSettings {
            time_scale: 1.0,
            interval: Duration::from_secs(30),
            resolve_evaluations: 3,
            default_environment: "production".into(),
            retention: Duration::from_secs(900),
        },
        "bench".into(),
    );
    for i in 0..SLOS {
        let doc = toronto_testkit::slo::bus_availability(
            &format!("availability-{i}"),
            &format!("svc-{i}"),
            &format!(r#"service="svc-{i}""#),
            0.999,
        );
        engine.put(toronto_monitor::slo::parse(&doc).unwrap());
    }
    let rss_loaded = rss_kib();
    // Ten minutes of 1 Hz ticks per service.
    let now = now_ms();
    for i in 0..SLOS {
        let l = labels(&[("service", &format!("svc-{i}"))]);
        store.insert_many(
            "http_requests",
            &l,
            (0..600).map(|s| (now - 600_000 + s * 1000, 100.0)),
        );
        store.insert_many(
            "http_errors",
            &l,
            (0..600).map(|s| (now - 600_000 + s * 1000, (s % 3) as f64)),
        );
    }
    // The first evaluation reads each SLO's history from the store.
    let t = Instant::now();
    let first = rt.block_on(engine.evaluate_all());
    let first_took = t.elapsed();
    assert_eq!(first.len(), SLOS);
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        std::hint::black_box(rt.block_on(engine.evaluate_all()));
        times.push(t.elapsed());
    }
    times.sort();
    let steady = percentile(&times, 0.5);
    let rss_after = rss_kib();
    println!(
        "SLO evaluation, {SLOS} bus SLOs (2 SLI series each, 7 windows + the 30-day window):\n  \
         first evaluation (10 min of history each) {first_took:>8.2?}   steady evaluation p50 {steady:>8.2?}\n  \
         {:.0} SLO evaluations/s, {:.0} SLI series/s",
        SLOS as f64 / steady.as_secs_f64(),
        2.0 * SLOS as f64 / steady.as_secs_f64()
    );
    if let (Some(before), Some(loaded), Some(after)) = (rss_before, rss_loaded, rss_after) {
        println!(
            "memory, {SLOS} SLOs: RSS +{} KiB loaded, +{} KiB with history and 1.2M samples in the store; \
             history buckets {} KiB",
            loaded.saturating_sub(before),
            after.saturating_sub(before),
            engine.history_bytes() / 1024
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    canary_latency(&rt);
    slo_evaluation(&rt);
}
