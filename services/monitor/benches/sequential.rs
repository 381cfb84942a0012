//! Fault-to-abort and false aborts of the two canary tests of the critical error
//! metric, on simulated canaries (a statistical simulation of the traffic, not the
//! deployer's pipeline: `cargo bench -p toronto-deployer --bench abort` measures that):
//!
//! - windowed: every analysis interval (1 s), the Mann-Whitney U test of the canary's
//!   per-tick error ratios against the baseline's over the last 2 s, failing when
//!   p < 0.05 and the medians differ by more than 0.02 (what the monitor does now);
//! - sequential: the mSPRT ([`toronto_monitor::stats::SequentialTest`]) on the counts
//!   since the step began, looked at every tick (100 ms), failing when its
//!   always-valid p-value is below 0.01, as the monitor computes it
//!   ([`toronto_monitor::canary::sequential`]); the deployer asks every 200 ms
//!   (`TORONTO_DEPLOYER_SEQUENTIAL_INTERVAL_MS`), so the failure is seen at the first
//!   ask after the rejecting tick.
//!
//! Traffic: 200 requests per 100 ms tick, the canary at 25% (50 requests a tick), 1% of
//! requests failing on both sides. Fault runs: the canary turns to 20% errors at a
//! random time between 1 s and 2 s into the step. Healthy runs: 30 s steps (the default
//! pause) with nothing wrong. Run with `cargo bench -p toronto-monitor --bench sequential`
//! (`BENCH_RUNS` sets the number of runs of each kind, default 1000).

use toronto_monitor::stats::{Alternative, Counts, SequentialTest, mann_whitney_u, median};

const TICK_S: f64 = 0.1;
const PER_TICK: u64 = 200;
const CANARY_SHARE: f64 = 0.25;
const BASE_ERRORS: f64 = 0.01;
const FAULT_ERRORS: f64 = 0.20;
const WINDOW_TICKS: usize = 20;
const INTERVAL_TICKS: usize = 10;
const STEP_TICKS: usize = 300;
const ALLOWED: f64 = 0.02;
const ALPHA_WINDOWED: f64 = 0.05;
const ALPHA_SEQUENTIAL: f64 = toronto_monitor::canary::sequential::ALPHA;
const TAU: f64 = toronto_monitor::canary::sequential::TAU;
const SEQUENTIAL_ASK_TICKS: usize = 2;

/// One step's traffic, tick by tick: (canary, baseline) counts.
type Ticks = [(Counts, Counts)];

/// A test: the tick (end of) at which it fails a step, if it does.
type Method = fn(&Ticks) -> Option<usize>;

/// splitmix64: a small, seeded generator (the figures are reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        (0..n).filter(|_| self.unit() < p).count() as u64
    }
}

/// One step's traffic, tick by tick: (canary, baseline) counts.
fn traffic(rng: &mut Rng, fault_tick: Option<usize>, ticks: usize) -> Vec<(Counts, Counts)> {
    let canary_n = (PER_TICK as f64 * CANARY_SHARE) as u64;
    let baseline_n = PER_TICK - canary_n;
    (0..ticks)
        .map(|t| {
            let rate = match fault_tick {
                Some(f) if t >= f => FAULT_ERRORS,
                _ => BASE_ERRORS,
            };
            (
                Counts {
                    trials: canary_n,
                    errors: rng.binomial(canary_n, rate),
                },
                Counts {
                    trials: baseline_n,
                    errors: rng.binomial(baseline_n, BASE_ERRORS),
                },
            )
        })
        .collect()
}

/// The tick (end of) at which the windowed test fails, if it does.
fn windowed(ticks: &Ticks) -> Option<usize> {
    let ratio = |c: &Counts| c.errors as f64 / c.trials as f64;
    (INTERVAL_TICKS..=ticks.len())
        .step_by(INTERVAL_TICKS)
        .find(|&end| {
            let from = end.saturating_sub(WINDOW_TICKS);
            let c: Vec<f64> = ticks[from..end].iter().map(|t| ratio(&t.0)).collect();
            let b: Vec<f64> = ticks[from..end].iter().map(|t| ratio(&t.1)).collect();
            let Some(test) = mann_whitney_u(&c, &b, Alternative::Greater) else {
                return false;
            };
            let effect = median(&c).unwrap_or(0.0) - median(&b).unwrap_or(0.0);
            test.p_value < ALPHA_WINDOWED && effect > ALLOWED
        })
}

/// The tick (end of) at which the sequential test fails, if it does.
fn sequential(ticks: &Ticks) -> Option<usize> {
    let mut test = SequentialTest::new(ALLOWED, TAU);
    let (mut c, mut b) = (Counts::default(), Counts::default());
    ticks
        .iter()
        .enumerate()
        .find_map(|(i, (ct, bt))| {
            c.trials += ct.trials;
            c.errors += ct.errors;
            b.trials += bt.trials;
            b.errors += bt.errors;
            (test.look(c, b) < ALPHA_SEQUENTIAL).then_some(i + 1)
        })
        // Seen at the deployer's next ask.
        .map(|t| t.div_ceil(SEQUENTIAL_ASK_TICKS) * SEQUENTIAL_ASK_TICKS)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut rng = Rng(0x5EED_CA4A_2026);
    let methods: [(&str, Method); 2] = [
        ("windowed Mann-Whitney (2 s window, every 1 s)", windowed),
        (
            "sequential mSPRT (looks every 100 ms, asked every 200 ms)",
            sequential,
        ),
    ];
    println!(
        "canary tests of the error ratio on simulated canaries (a statistical simulation): {runs} fault runs, {runs} healthy runs"
    );
    let faults: Vec<(usize, Vec<(Counts, Counts)>)> = (0..runs)
        .map(|_| {
            let at = 10 + (rng.unit() * 10.0) as usize;
            (at, traffic(&mut rng, Some(at), 100))
        })
        .collect();
    let healthy: Vec<Vec<(Counts, Counts)>> = (0..runs)
        .map(|_| traffic(&mut rng, None, STEP_TICKS))
        .collect();
    for (name, method) in methods {
        let mut delays: Vec<f64> = Vec::new();
        let mut early = 0;
        let mut missed = 0;
        for (at, ticks) in &faults {
            match method(ticks) {
                Some(t) if t > *at => delays.push((t - at) as f64 * TICK_S),
                Some(_) => early += 1,
                None => missed += 1,
            }
        }
        delays.sort_by(f64::total_cmp);
        let false_aborts = healthy.iter().filter(|t| method(t).is_some()).count();
        println!("{name}:");
        if delays.is_empty() {
            println!("  fault (20% errors) to abort: never detected");
        } else {
            println!(
                "  fault (20% errors) to abort: median {:.2} s, p95 {:.2} s, max {:.2} s ({} not detected within 8 s, {} aborted before the fault)",
                quantile(&delays, 0.5),
                quantile(&delays, 0.95),
                delays[delays.len() - 1],
                missed,
                early
            );
        }
        println!(
            "  false aborts: {false_aborts} of {runs} healthy 30 s steps ({:.1}%)",
            100.0 * false_aborts as f64 / runs as f64
        );
    }
}
