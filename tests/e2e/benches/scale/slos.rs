//! SLO evaluation in the monitor's engine.

use crate::common::*;

/// SLO evaluation: one evaluation of every SLO, per SLO; the evaluating thread's CPU
/// time (the figure judged) and the wall time.
pub fn slos() -> Vec<Row> {
    use toronto_monitor::evaluate::{EvalSettings, SloEngine};
    use toronto_monitor::store::{Labels, Store, StoreLimits, now_ms};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let history = sizes(100);
    let (mut per_slo_cpu, mut per_slo_wall) = ([Duration::ZERO; 3], [Duration::ZERO; 3]);
    for (level, &n) in history.iter().enumerate() {
        let store = std::sync::Arc::new(Store::new(StoreLimits::default()));
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
        let now = now_ms();
        for i in 0..n {
            let slo = toronto_testkit::slo::bus_availability(
                &format!("svc-{i}-availability"),
                &format!("svc-{i}"),
                &format!(r#"service="svc-{i}""#),
                0.999,
            );
            engine.put(toronto_monitor::slo::parse(&slo).unwrap());
            let l: Labels = [("service".to_owned(), format!("svc-{i}"))].into();
            // Two minutes of 1 Hz ticks per service.
            store.insert_many(
                "http_requests",
                &l,
                (0..120).map(|s| (now - 120_000 + s * 1000, 100.0)),
            );
            store.insert_many(
                "http_errors",
                &l,
                (0..120).map(|s| (now - 120_000 + s * 1000, (s % 3) as f64)),
            );
        }
        // The first round reads the history into each SLO's buckets; one more warms up.
        for _ in 0..2 {
            rt.block_on(engine.evaluate_all());
        }
        // Every sample evaluates as many SLOs as one round of the largest level (100
        // rounds of 100 SLOs against one of 10,000), so that each runs about as long
        // and meets the same load on a shared machine.
        let rounds = history[2] / n;
        let (mut cpu, mut wall) = (Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            let (t, ran) = (Instant::now(), thread_cpu());
            for _ in 0..rounds {
                std::hint::black_box(rt.block_on(engine.evaluate_all()));
            }
            let evaluated = (rounds * n) as u32;
            cpu.push((thread_cpu() - ran) / evaluated);
            wall.push(t.elapsed() / evaluated);
        }
        per_slo_cpu[level] = median(cpu);
        per_slo_wall[level] = median(wall);
    }
    vec![
        Row {
            operation: "SLO evaluation (per SLO, CPU)",
            history,
            unit: "SLOs",
            median: per_slo_cpu,
        },
        Row {
            operation: "SLO evaluation (per SLO, wall)",
            history,
            unit: "SLOs",
            median: per_slo_wall,
        },
    ]
}

/// Samples per level, each as long as one round of the largest.
const SAMPLES: usize = 7;

/// The CPU time the calling thread has run (the scheduler's own count, in
/// nanoseconds, first field of `/proc/thread-self/schedstat`): unlike wall time, it
/// does not count the time the thread waited for a CPU that other processes held.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat starts with the CPU time in ns");
    Duration::from_nanos(ns)
}
