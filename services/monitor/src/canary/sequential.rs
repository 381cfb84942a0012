//! The sequential test of a canary analysis (`CanaryAnalyze.sequential`): the mSPRT
//! of [`crate::stats::SequentialTest`] on the requests and errors each side served
//! since the request's `since`, beside the windowed Mann-Whitney test of the metric it
//! names.
//!
//! **The path, not one look.** The counts arrive as samples per interval (the
//! simulated cluster pushes `http_requests` and `http_errors` every 100 ms). The test
//! looks after every instant at which samples arrived since `since`, in time order,
//! and its p-value is the smallest `1 / ratio` of all those looks: the always-valid
//! p-value of the whole path. So an analysis asked every 200 ms still sees every
//! 100 ms look, and a later request never forgets an earlier rejection.
//!
//! **Deciding.** The metric fails as soon as the p-value is below [`ALPHA`] (the
//! canary's error ratio exceeds the baseline's by more than the metric's
//! `max_absolute_effect`); the reason names the test, the counts and the p-value.
//! Otherwise the windowed test decides the metric as always, except that a windowed
//! failure the sequential test does not confirm passes: the sequential test is the one
//! whose false-failure rate is bounded however often it is asked, and it decides this
//! metric's failures. Without counts on both sides the windowed test decides alone.
//!
//! **Each count walked once.** The analyzer keeps each test's path ([`Paths`]) walked up
//! to [`SETTLED_MS`] before its last analysis, so that the next analysis of the same
//! rollout walks only the counts that arrived since, instead of every count since the
//! step began (which grows with the step's pause). A count stored more than
//! [`SETTLED_MS`] after its own timestamp, behind an instant already walked, is left
//! out of that path.

use toronto_protocol::analysis::{
    AnalysisMetric, AnalysisOutcome, Direction, MetricEvidence, SequentialAnalysis,
};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::prometheus::{Prometheus, render, with_selector};
use crate::stats::{Counts, SequentialTest};
use crate::store::{Labels, Store};

/// The level below which the always-valid p-value rejects: at most 1% of healthy
/// canaries fail, however often they are analysed.
pub const ALPHA: f64 = 0.01;

/// The mixing scale of the mSPRT: the size of the error-ratio excess it finds
/// quickest (0.1, i.e. ten points above what is allowed).
pub const TAU: f64 = 0.1;

/// What the sequential test found over the path since `since`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequentialOutcome {
    /// The always-valid p-value after the last look.
    pub p_value: f64,
    /// The canary's counts since `since`.
    pub canary: Counts,
    /// The baseline's counts since `since`.
    pub baseline: Counts,
    /// How many looks the path had.
    pub looks: usize,
}

/// Whether the sequential test applies to `metric`: the one the request names,
/// compared with the baseline (not a threshold check), higher being worse.
pub fn applies(seq: &SequentialAnalysis, metric: &AnalysisMetric) -> bool {
    metric.name == seq.metric && !metric.is_threshold() && metric.direction == Direction::Increase
}

/// Runs the test over the counts in `store` from `since` to `to_ms`; `None` when a
/// side has no request counted.
pub fn run(
    store: &Store,
    seq: &SequentialAnalysis,
    canary: &Labels,
    baseline: &Labels,
    allowed: f64,
    to_ms: i64,
) -> Option<SequentialOutcome> {
    let mut walk = Walk::new(allowed, seq.since.timestamp_millis() - 1);
    walk.extend(read(store, seq, canary, baseline, walk.upto + 1, to_ms));
    walk.outcome()
}

/// The counts in `store` in `[from_ms, to_ms]`, as events.
fn read(
    store: &Store,
    seq: &SequentialAnalysis,
    canary: &Labels,
    baseline: &Labels,
    from_ms: i64,
    to_ms: i64,
) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    if from_ms > to_ms {
        return events;
    }
    for (side, labels) in [canary, baseline].into_iter().enumerate() {
        for (name, errors) in [(&seq.requests, false), (&seq.errors, true)] {
            for (_, samples) in store.select(name, labels, from_ms, to_ms) {
                events.extend(
                    samples
                        .into_iter()
                        .map(|(t, v)| (t, side, errors, v.max(0.0))),
                );
            }
        }
    }
    events
}

/// How long after an instant its counts are taken as all stored: a test's path is
/// kept walked up to this long before its last analysis.
pub const SETTLED_MS: i64 = 2_000;

/// Most paths kept; beyond it, paths not analysed in the last [`IDLE_MS`] are dropped
/// (and, if that is not enough, all).
pub const MAX_PATHS: usize = 4_096;

/// A path not analysed for this long may be dropped.
pub const IDLE_MS: i64 = 5 * 60 * 1000;

/// What identifies one test's path: the sides' selectors, the count metrics, `since`,
/// and the allowed excess (its bits).
type PathKey = (Labels, Labels, String, String, i64, u64);

/// The paths of the sequential tests analysed lately, each walked up to a settled
/// instant (see the module documentation). Shared by the analyses of one analyzer.
#[derive(Debug, Default)]
pub struct Paths {
    walked: Mutex<HashMap<PathKey, (Walk, i64)>>,
}

impl Paths {
    /// Like [`run`], continuing the path kept for this test and keeping it walked up
    /// to [`SETTLED_MS`] before `to_ms`.
    pub fn run(
        &self,
        store: &Store,
        seq: &SequentialAnalysis,
        canary: &Labels,
        baseline: &Labels,
        allowed: f64,
        to_ms: i64,
    ) -> Option<SequentialOutcome> {
        let since = seq.since.timestamp_millis();
        let key: PathKey = (
            canary.clone(),
            baseline.clone(),
            seq.requests.clone(),
            seq.errors.clone(),
            since,
            allowed.to_bits(),
        );
        let kept = self
            .lock()
            .get(&key)
            .map(|(walk, _)| walk.clone())
            .filter(|walk| walk.upto <= to_ms);
        let mut walk = kept.unwrap_or_else(|| Walk::new(allowed, since - 1));
        let settled = to_ms - SETTLED_MS;
        if settled > walk.upto {
            walk.extend(read(store, seq, canary, baseline, walk.upto + 1, settled));
            walk.upto = settled;
            let mut walked = self.lock();
            if walked.len() >= MAX_PATHS && !walked.contains_key(&key) {
                walked.retain(|_, (_, used)| *used > to_ms - IDLE_MS);
                if walked.len() >= MAX_PATHS {
                    walked.clear();
                }
            }
            walked.insert(key, (walk.clone(), to_ms));
        }
        walk.extend(read(store, seq, canary, baseline, walk.upto + 1, to_ms));
        walk.outcome()
    }

    /// How many paths are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathKey, (Walk, i64)>> {
        self.walked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Most looks a test on Prometheus counts asks for per side and query.
pub const MAX_PROMETHEUS_LOOKS: f64 = 500.0;

/// Runs the test over counts read from Prometheus with the request's
/// `requests_query` and `errors_query` (`None` without both): each is evaluated from
/// `since` to `to_ms` every look interval (`interval_seconds`, default 1 s, longer
/// when the span holds more than [`MAX_PROMETHEUS_LOOKS`]), its `{{window}}` that
/// interval and its other placeholders filled from each side's labels, so each point
/// is the side's count in the interval before it.
pub async fn run_prometheus(
    prometheus: &Prometheus,
    seq: &SequentialAnalysis,
    canary: &Labels,
    baseline: &Labels,
    allowed: f64,
    to_ms: i64,
) -> Option<Result<Option<SequentialOutcome>, String>> {
    let (Some(requests), Some(errors)) = (&seq.requests_query, &seq.errors_query) else {
        return None;
    };
    let since = seq.since.timestamp_millis() as f64 / 1000.0;
    let end = to_ms as f64 / 1000.0;
    let shortest = seq.interval_seconds.unwrap_or(1.0);
    let interval = ((end - since) / MAX_PROMETHEUS_LOOKS).max(shortest);
    let step = Duration::from_secs_f64(interval);
    let mut events: Vec<Event> = Vec::new();
    for (side, labels) in [canary, baseline].into_iter().enumerate() {
        for (query, is_errors) in [(requests, false), (errors, true)] {
            if since + interval > end {
                break;
            }
            let rendered = match render(query, labels, interval) {
                Ok(q) => with_selector(&q, labels),
                Err(e) => return Some(Err(e.to_string())),
            };
            let series = match prometheus
                .query_range(&rendered, since + interval, end, step)
                .await
            {
                Ok(s) => s,
                Err(e) => return Some(Err(e.to_string())),
            };
            for s in series {
                events.extend(
                    s.points
                        .into_iter()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(t, v)| ((t * 1000.0).round() as i64, side, is_errors, v.max(0.0))),
                );
            }
        }
    }
    Some(Ok(path(events, allowed)))
}

/// A count at an instant: (timestamp in ms, side: 0 canary 1 baseline, whether it
/// counts errors, value).
type Event = (i64, usize, bool, f64);

/// The test looked at after every instant of `events` (see the module documentation).
fn path(events: Vec<Event>, allowed: f64) -> Option<SequentialOutcome> {
    let mut walk = Walk::new(allowed, i64::MIN);
    walk.extend(events);
    walk.outcome()
}

/// A test's path walked so far: the test, the counts, the looks, and the instant up
/// to which every count was taken.
#[derive(Debug, Clone)]
struct Walk {
    test: SequentialTest,
    counts: [Counts; 2],
    looks: usize,
    upto: i64,
}

impl Walk {
    fn new(allowed: f64, upto: i64) -> Self {
        Self {
            test: SequentialTest::new(allowed, TAU),
            counts: [Counts::default(); 2],
            looks: 0,
            upto,
        }
    }

    /// Walks on through `events` (all after the instants walked), a look after each
    /// instant.
    fn extend(&mut self, mut events: Vec<Event>) {
        events.sort_by_key(|e| e.0);
        let mut i = 0;
        while i < events.len() {
            let at = events[i].0;
            while i < events.len() && events[i].0 == at {
                let (_, side, errors, v) = events[i];
                let c = &mut self.counts[side];
                if errors {
                    c.errors += v.round() as u64;
                } else {
                    c.trials += v.round() as u64;
                }
                i += 1;
            }
            let counts = self.counts;
            if counts[0].trials > 0 && counts[1].trials > 0 {
                // A tick's error count may land before its request count: never more
                // errors than requests.
                let capped = counts.map(|c| Counts {
                    trials: c.trials,
                    errors: c.errors.min(c.trials),
                });
                self.test.look(capped[0], capped[1]);
                self.looks += 1;
            }
            self.upto = self.upto.max(at);
        }
    }

    fn outcome(&self) -> Option<SequentialOutcome> {
        (self.looks > 0).then(|| SequentialOutcome {
            p_value: self.test.p_value(),
            canary: self.counts[0],
            baseline: self.counts[1],
            looks: self.looks,
        })
    }
}

fn ratio(c: Counts) -> f64 {
    if c.trials == 0 {
        0.0
    } else {
        c.errors.min(c.trials) as f64 / c.trials as f64
    }
}

/// Decides `evidence` (the windowed test's, of a metric the test applies to) with the
/// sequential test's `outcome` (see the module documentation).
pub fn decide(
    evidence: &mut MetricEvidence,
    outcome: Option<SequentialOutcome>,
    seq: &SequentialAnalysis,
    allowed: f64,
) {
    let Some(o) = outcome else {
        evidence.reason.push_str(&format!(
            "; sequential test: no `{}` counted on both sides since {}",
            seq.requests_query.as_deref().unwrap_or(&seq.requests),
            seq.since.to_rfc3339()
        ));
        return;
    };
    let counted = format!(
        "canary {:.4} ({} of {} requests) vs baseline {:.4} ({} of {}) since {}",
        ratio(o.canary),
        o.canary.errors.min(o.canary.trials),
        o.canary.trials,
        ratio(o.baseline),
        o.baseline.errors.min(o.baseline.trials),
        o.baseline.trials,
        seq.since.to_rfc3339()
    );
    if o.p_value < ALPHA {
        evidence.outcome = AnalysisOutcome::Fail;
        evidence.reason = format!(
            "sequential test (mSPRT) rejects: error ratio {counted}, more than {allowed} above the baseline (always-valid p={:.2e} < {ALPHA} after {} looks); windowed test: {}",
            o.p_value, o.looks, evidence.reason
        );
        return;
    }
    let windowed = std::mem::take(&mut evidence.reason);
    if evidence.outcome == AnalysisOutcome::Fail {
        evidence.outcome = AnalysisOutcome::Pass;
        evidence.reason = format!(
            "windowed test: {windowed}; not confirmed by the sequential test, which decides this metric's failures (p={:.3} >= {ALPHA}; error ratio {counted})",
            o.p_value
        );
    } else {
        evidence.reason = format!(
            "{windowed}; sequential test (mSPRT) does not reject (p={:.3} >= {ALPHA}; error ratio {counted})",
            o.p_value
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreLimits;
    use chrono::{TimeZone, Utc};

    fn labels(track: &str) -> Labels {
        [("track".to_owned(), track.to_owned())].into()
    }

    /// Ticks of 100 ms from `start_ms`: 50 canary and 150 baseline requests each, the
    /// canary failing `canary_errors` of its 50, the baseline 1 in 150.
    fn fill(store: &Store, start_ms: i64, ticks: i64, canary_errors: f64) {
        for t in 0..ticks {
            let at = start_ms + t * 100;
            store.insert("http_requests", &labels("canary"), at, 50.0);
            store.insert("http_errors", &labels("canary"), at, canary_errors);
            store.insert("http_requests", &labels("stable"), at, 150.0);
            store.insert("http_errors", &labels("stable"), at, 1.0);
        }
    }

    fn seq(since_ms: i64) -> SequentialAnalysis {
        SequentialAnalysis::error_ratio_since(Utc.timestamp_millis_opt(since_ms).unwrap())
    }

    #[test]
    fn a_failing_canary_is_rejected_within_a_second_and_a_healthy_one_is_not() {
        let store = Store::new(StoreLimits::default());
        let now = crate::store::now_ms();
        let start = now - 2_000;
        // Healthy for the first second, then 20% errors (10 of 50) for 0.6 s.
        fill(&store, start, 10, 0.0);
        fill(&store, start + 1_000, 6, 10.0);
        let s = seq(start);
        let bad = run(&store, &s, &labels("canary"), &labels("stable"), 0.02, now).unwrap();
        assert_eq!(bad.looks, 16);
        assert_eq!(bad.canary.trials, 800);
        assert!(bad.p_value < ALPHA, "{bad:?}");
        // Counting only the healthy first second: no rejection.
        let healthy = run(
            &store,
            &s,
            &labels("canary"),
            &labels("stable"),
            0.02,
            start + 950,
        )
        .unwrap();
        assert!(healthy.p_value > ALPHA, "{healthy:?}");
        // Nothing counted after `since`.
        assert!(
            run(
                &store,
                &seq(now),
                &labels("canary"),
                &labels("stable"),
                0.02,
                now
            )
            .is_none()
        );
    }

    #[test]
    fn a_kept_path_gives_what_walking_it_whole_gives() {
        let store = Store::new(StoreLimits::default());
        let now = crate::store::now_ms();
        let start = now - 9_000;
        let s = seq(start);
        let paths = Paths::default();
        let (c, b) = (labels("canary"), labels("stable"));
        // Healthy, then failing; analysed every half second as the counts arrive.
        for step in 0..18 {
            let at = start + step * 500;
            fill(&store, at, 5, if step < 12 { 0.0 } else { 10.0 });
            let to = at + 499;
            let whole = run(&store, &s, &c, &b, 0.02, to);
            assert_eq!(
                paths.run(&store, &s, &c, &b, 0.02, to),
                whole,
                "at step {step}"
            );
        }
        assert_eq!(paths.len(), 1);
        let last = paths.run(&store, &s, &c, &b, 0.02, now).unwrap();
        assert!(last.p_value < ALPHA, "{last:?}");
        // Another test (another `since`) has its own path.
        paths.run(&store, &seq(start + 1_000), &c, &b, 0.02, now);
        assert_eq!(paths.len(), 2);
    }

    fn evidence(outcome: AnalysisOutcome) -> MetricEvidence {
        MetricEvidence {
            name: "http_error_ratio".into(),
            outcome,
            critical: true,
            canary: crate::canary::summary(&[]),
            baseline: crate::canary::summary(&[]),
            u: None,
            p_value: None,
            effect: None,
            reason: "windowed reason".into(),
        }
    }

    #[test]
    fn the_sequential_test_decides_failures_and_the_window_decides_passes() {
        let s = seq(0);
        let found = |p| {
            Some(SequentialOutcome {
                p_value: p,
                canary: Counts {
                    trials: 500,
                    errors: 100,
                },
                baseline: Counts {
                    trials: 1500,
                    errors: 15,
                },
                looks: 10,
            })
        };
        let mut e = evidence(AnalysisOutcome::Inconclusive);
        decide(&mut e, found(0.001), &s, 0.02);
        assert_eq!(e.outcome, AnalysisOutcome::Fail);
        assert!(
            e.reason.starts_with("sequential test (mSPRT) rejects"),
            "{}",
            e.reason
        );
        assert!(e.reason.contains("100 of 500"), "{}", e.reason);
        // A windowed failure the sequential test does not confirm passes.
        let mut e = evidence(AnalysisOutcome::Fail);
        decide(&mut e, found(0.5), &s, 0.02);
        assert_eq!(e.outcome, AnalysisOutcome::Pass);
        assert!(e.reason.contains("not confirmed"), "{}", e.reason);
        // Too little windowed data stays inconclusive; no counts: the window alone.
        let mut e = evidence(AnalysisOutcome::Inconclusive);
        decide(&mut e, found(0.5), &s, 0.02);
        assert_eq!(e.outcome, AnalysisOutcome::Inconclusive);
        let mut e = evidence(AnalysisOutcome::Fail);
        decide(&mut e, None, &s, 0.02);
        assert_eq!(e.outcome, AnalysisOutcome::Fail);
    }
}
