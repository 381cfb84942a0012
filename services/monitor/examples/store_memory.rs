//! The in-memory store's memory under a load like the soak's (`scripts/soak`): 1,000
//! deploys, each a new version whose canary and stable tracks send requests, errors,
//! error ratio and latency once a second for 68 s (8,000 series, 544,000 samples),
//! pruned every 5 s as the service does. Prints the store's own estimate
//! (`Store::bytes`) and this process' RSS growth. Run with
//! `cargo run -p toronto-monitor --example store_memory` (`--release` changes nothing
//! but the time it takes).

use std::collections::BTreeMap;
use std::time::Instant;

use toronto_monitor::store::{Labels, Store, StoreLimits, now_ms};

/// The allocator of the service binary, so that RSS is comparable.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEPLOYS: i64 = 1_000;
const SERVICES: i64 = 20;
/// Seconds each version sends samples for.
const LIFE: i64 = 68;
/// Milliseconds between two deploys: 100 a minute.
const EVERY_MS: i64 = 600;

/// Resident memory of this process in KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// xorshift64: deterministic noise.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one (version, track) has sent so far.
#[derive(Default)]
struct Counts {
    requests: f64,
    errors: f64,
}

fn main() {
    let store = Store::new(StoreLimits::default());
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    // The whole load ends 40 s ago, so that every series is quiet at the end.
    let seconds = (DEPLOYS - 1) * EVERY_MS / 1000 + LIFE;
    let start = now_ms() - (seconds + 40) * 1000;
    let labels: Vec<[Labels; 2]> = (0..DEPLOYS)
        .map(|d| {
            ["canary", "stable"].map(|track| {
                BTreeMap::from([
                    ("environment".to_owned(), "staging".to_owned()),
                    ("service".to_owned(), format!("svc-{}", d % SERVICES)),
                    ("track".to_owned(), track.to_owned()),
                    (
                        "version".to_owned(),
                        format!("1.{}.{}", d / SERVICES, d % SERVICES),
                    ),
                ])
            })
        })
        .collect();
    let mut counts: Vec<[Counts; 2]> = (0..DEPLOYS).map(|_| Default::default()).collect();
    let rss_before = rss_kib();
    let took = Instant::now();
    let mut half = (0, 0);
    for second in 0..seconds {
        let ts = start + second * 1000 + (noise.next() % 3) as i64;
        let live = (0..DEPLOYS).filter(|d| (0..LIFE).contains(&(second - d * EVERY_MS / 1000)));
        for d in live {
            for (track, l) in labels[d as usize].iter().enumerate() {
                let requests = 18.0 + (noise.next() % 5) as f64;
                let errors = f64::from(noise.next().is_multiple_of(30));
                let latency = 0.045 * (0.7 + 0.6 * noise.unit());
                let c = &mut counts[d as usize][track];
                c.requests += requests;
                c.errors += errors;
                store.insert_batch([
                    ("http_requests_total", l, ts, c.requests),
                    ("http_errors_total", l, ts, c.errors),
                    ("http_error_ratio", l, ts, errors / requests),
                    ("http_latency_seconds", l, ts, latency),
                ]);
            }
        }
        if second % 5 == 0 {
            // As the service does every 5 s, at the load's time.
            store.prune_at(start + second * 1000);
        }
        if second == seconds / 2 {
            half = (rss_kib(), store.size().0);
        }
    }
    store.prune();
    let elapsed = took.elapsed();
    let rss_after = rss_kib();
    let (series, samples) = store.size();
    let bytes = store.bytes();
    println!(
        "store memory, {DEPLOYS} deploys x 8 series x {LIFE} samples 1 s apart \
         (counters, ratios, latencies), loaded in {elapsed:.2?}:\n  \
         {series} series, {samples} samples: Store::bytes {:.2} MiB, {} bytes a series, \
         {:.2} bytes a sample\n  \
         RSS {:.1} -> {:.1} MiB (+{:.2} MiB, {} bytes a series; {} bytes a series over the \
         second half)",
        bytes as f64 / 1048576.0,
        bytes / series.max(1),
        bytes as f64 / samples.max(1) as f64,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) * 1024 / series.max(1) as u64,
        rss_after.saturating_sub(half.0) * 1024 / (series.saturating_sub(half.1).max(1)) as u64,
    );
}
