//! Canary analysis: canary against baseline, metric by metric, with a Mann-Whitney U
//! test and effect-size thresholds, scored into one verdict with its evidence.
//!
//! **Per metric.** The canary's and the baseline's samples within the window are
//! compared with a Mann-Whitney U test ([`crate::stats`]): one-sided toward the failing
//! direction (`increase`: is the canary larger? `decrease`: is it smaller?) or
//! two-sided (`either`), at the request's confidence (default 0.95, so p < 0.05 is
//! significant). The effect is measured on the medians: relative
//! (`canary / baseline - 1`) when the baseline median is not 0, else absolute. A metric
//! **fails** only when the difference is significant in the failing direction **and**
//! its effect exceeds every allowance given (`max_relative_effect`,
//! `max_absolute_effect`; with none, a significant difference is enough). A side with
//! fewer than `min_samples` samples (default 3) makes the metric **inconclusive**, or
//! failing when it `must_have_data`.
//!
//! A metric with `max_value` or `min_value` is a **threshold check** instead: the
//! median of the canary's samples against those bounds, no baseline read. A query's
//! placeholders are filled per side ([`crate::prometheus::render`]).
//!
//! **Scoring (Kayenta-like).** A failing critical metric fails the analysis. Otherwise
//! the score is the share of passing metrics among the conclusive ones; the analysis
//! fails when more than half of the conclusive metrics fail (score below 50%), is
//! inconclusive when no metric is conclusive or when inconclusive metrics are the
//! majority, and passes otherwise. The verdict's reason gives the score and names the
//! failing metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use toronto_protocol::ErrorBody;
use toronto_protocol::analysis::{
    AnalysisMetric, AnalysisOutcome, CanaryAnalyze, CanaryVerdict, Direction, MetricEvidence,
    SampleSummary,
};

use crate::prometheus::{Prometheus, render, with_selector};
use crate::stats::{Alternative, mann_whitney_u, mean, median};
use crate::store::{Labels, Store, now_ms};

pub mod sequential;
mod threshold;
mod validate;

use threshold::evaluate_threshold;

pub use validate::validate;

/// The default confidence of the test.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// Answers canary analyses from the store, or from Prometheus for metrics with a query.
#[derive(Debug, Clone)]
pub struct Analyzer {
    store: Arc<Store>,
    prometheus: Option<Prometheus>,
    min_samples: usize,
    evidence: Option<crate::evidence::EvidenceStore>,
    /// The sequential tests' paths walked so far.
    paths: Arc<sequential::Paths>,
}

fn summary(values: &[f64]) -> SampleSummary {
    SampleSummary {
        count: values.len(),
        median: median(values),
        mean: mean(values),
    }
}

fn directional(direction: Direction, x: f64) -> f64 {
    match direction {
        Direction::Increase => x,
        Direction::Decrease => -x,
        Direction::Either => x.abs(),
    }
}

fn fmt(x: f64) -> String {
    if x == 0.0 || (x.abs() >= 1e-3 && x.abs() < 1e6) {
        format!("{:.4}", x)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    } else {
        format!("{x:.3e}")
    }
}

/// The evidence and outcome of one metric from its canary and baseline samples.
pub fn evaluate_metric(
    metric: &AnalysisMetric,
    canary: &[f64],
    baseline: &[f64],
    confidence: f64,
    min_samples: usize,
) -> MetricEvidence {
    let mut evidence = MetricEvidence {
        name: metric.name.clone(),
        outcome: AnalysisOutcome::Inconclusive,
        critical: metric.critical,
        canary: summary(canary),
        baseline: summary(baseline),
        u: None,
        p_value: None,
        effect: None,
        reason: String::new(),
    };
    let min = min_samples.max(1);
    if metric.is_threshold() {
        return evaluate_threshold(metric, canary, min, evidence);
    }
    if canary.len() < min || baseline.len() < min {
        let what = if canary.is_empty() || baseline.is_empty() {
            "no data"
        } else {
            "too few samples"
        };
        evidence.reason = format!(
            "{what}: {} canary and {} baseline samples in the window (need {min} each)",
            canary.len(),
            baseline.len()
        );
        if metric.must_have_data {
            evidence.outcome = AnalysisOutcome::Fail;
            evidence.reason.push_str("; the metric must have data");
        }
        return evidence;
    }
    let alternative = match metric.direction {
        Direction::Increase => Alternative::Greater,
        Direction::Decrease => Alternative::Less,
        Direction::Either => Alternative::TwoSided,
    };
    let test = mann_whitney_u(canary, baseline, alternative).expect("both sides have samples");
    evidence.u = Some(test.u);
    evidence.p_value = Some(test.p_value);
    let (cm, bm) = (
        evidence.canary.median.unwrap_or(0.0),
        evidence.baseline.median.unwrap_or(0.0),
    );
    let absolute = cm - bm;
    let relative = (bm != 0.0).then(|| cm / bm - 1.0);
    evidence.effect = Some(relative.unwrap_or(absolute));
    let alpha = 1.0 - confidence;
    let significant = test.p_value < alpha;
    let effect_text = match relative {
        Some(r) => format!("median {} vs {} ({:+.1}%)", fmt(cm), fmt(bm), r * 100.0),
        None => format!("median {} vs {} ({:+})", fmt(cm), fmt(bm), fmt(absolute)),
    };
    let side = match metric.direction {
        Direction::Increase => "higher",
        Direction::Decrease => "lower",
        Direction::Either => "different",
    };
    if !significant {
        evidence.outcome = AnalysisOutcome::Pass;
        evidence.reason = format!(
            "canary not significantly {side} than baseline (p={} >= {}); {effect_text}",
            fmt(test.p_value),
            fmt(alpha)
        );
        return evidence;
    }
    // Significant: does the effect exceed every allowance given?
    let mut within = Vec::new();
    let mut beyond = Vec::new();
    if let Some(max) = metric.max_relative_effect {
        let exceeded = match relative {
            Some(r) => directional(metric.direction, r) > max,
            // From a zero baseline any change in the failing direction is infinite.
            None => directional(metric.direction, absolute) > 0.0,
        };
        let text = format!("relative effect allowed {:+.1}%", max * 100.0);
        if exceeded {
            beyond.push(text)
        } else {
            within.push(text)
        }
    }
    if let Some(max) = metric.max_absolute_effect {
        let exceeded = directional(metric.direction, absolute) > max;
        let text = format!("absolute effect allowed {}", fmt(max));
        if exceeded {
            beyond.push(text)
        } else {
            within.push(text)
        }
    }
    if within.is_empty() {
        evidence.outcome = AnalysisOutcome::Fail;
        evidence.reason = format!(
            "canary significantly {side} than baseline (p={} < {}); {effect_text}{}",
            fmt(test.p_value),
            fmt(alpha),
            if beyond.is_empty() {
                String::new()
            } else {
                format!(", beyond the {}", beyond.join(" and the "))
            }
        );
    } else {
        evidence.outcome = AnalysisOutcome::Pass;
        evidence.reason = format!(
            "canary significantly {side} (p={}) but within the {}; {effect_text}",
            fmt(test.p_value),
            within.join(" and the ")
        );
    }
    evidence
}

/// The overall outcome and its reason from every metric's evidence (the scoring rule
/// of the module documentation).
pub fn score(evidence: &[MetricEvidence]) -> (AnalysisOutcome, String) {
    let failed: Vec<&MetricEvidence> = evidence
        .iter()
        .filter(|e| e.outcome == AnalysisOutcome::Fail)
        .collect();
    let passed = evidence
        .iter()
        .filter(|e| e.outcome == AnalysisOutcome::Pass)
        .count();
    let inconclusive = evidence.len() - passed - failed.len();
    let conclusive = passed + failed.len();
    let names = |v: &[&MetricEvidence]| {
        v.iter()
            .map(|e| format!("{} ({})", e.name, e.reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if let Some(critical) = failed.iter().find(|e| e.critical) {
        return (
            AnalysisOutcome::Fail,
            format!(
                "critical metric {} failed: {}",
                critical.name, critical.reason
            ),
        );
    }
    if conclusive == 0 {
        return (
            AnalysisOutcome::Inconclusive,
            format!(
                "no metric had enough data: {}",
                names(&evidence.iter().collect::<Vec<_>>())
            ),
        );
    }
    let score = 100.0 * passed as f64 / conclusive as f64;
    let tally = format!(
        "score {score:.0}% ({passed} of {conclusive} conclusive metrics pass, {inconclusive} inconclusive)"
    );
    if failed.len() * 2 > conclusive {
        return (
            AnalysisOutcome::Fail,
            format!("{tally}; failed: {}", names(&failed)),
        );
    }
    if inconclusive * 2 > evidence.len() {
        return (
            AnalysisOutcome::Inconclusive,
            format!("{tally}; most metrics had too little data"),
        );
    }
    if failed.is_empty() {
        (AnalysisOutcome::Pass, tally)
    } else {
        (
            AnalysisOutcome::Pass,
            format!("{tally}; non-critical failures: {}", names(&failed)),
        )
    }
}

impl Analyzer {
    /// An analyzer over `store`, and over Prometheus for metrics with a query.
    pub fn new(store: Arc<Store>, prometheus: Option<Prometheus>, min_samples: usize) -> Self {
        Self {
            store,
            prometheus,
            min_samples,
            evidence: None,
            paths: Arc::default(),
        }
    }

    /// The same analyzer, keeping every verdict's evidence in `evidence`.
    pub fn with_evidence(mut self, evidence: crate::evidence::EvidenceStore) -> Self {
        self.evidence = Some(evidence);
        self
    }

    fn selector(req: &CanaryAnalyze, side: &BTreeMap<String, String>) -> Labels {
        let mut labels = side.clone();
        labels
            .entry("service".into())
            .or_insert_with(|| req.service.clone());
        labels
            .entry("environment".into())
            .or_insert_with(|| req.environment.clone());
        labels
    }

    /// The values of `query` over the window for one side: its placeholders filled
    /// from that side's labels (see [`render`]), then its `{{selector}}`.
    async fn prometheus_values(
        prometheus: &Prometheus,
        query: &str,
        labels: &Labels,
        window_seconds: f64,
    ) -> Result<Vec<f64>, String> {
        let end = now_ms() as f64 / 1000.0;
        let start = end - window_seconds;
        // About 100 points per side, one per second at most.
        let step = Duration::from_secs_f64((window_seconds / 100.0).max(1.0));
        let rendered = render(query, labels, window_seconds).map_err(|e| e.to_string())?;
        let series = prometheus
            .query_range(&with_selector(&rendered, labels), start, end, step)
            .await
            .map_err(|e| e.to_string())?;
        Ok(series
            .into_iter()
            .flat_map(|s| s.points.into_iter().map(|(_, v)| v))
            .filter(|v| v.is_finite())
            .collect())
    }

    /// Analyses a (validated) request.
    pub async fn analyze(&self, req: &CanaryAnalyze) -> Result<CanaryVerdict, ErrorBody> {
        validate(req)?;
        let confidence = req.confidence.unwrap_or(DEFAULT_CONFIDENCE);
        let canary = Self::selector(req, &req.canary);
        let baseline = Self::selector(req, &req.baseline);
        let to = now_ms();
        let from = to - (req.window_seconds * 1000.0).round() as i64;
        let mut evidence = Vec::with_capacity(req.metrics.len());
        let mut samples = Vec::with_capacity(req.metrics.len());
        for metric in &req.metrics {
            let (c, b, failed) = match (&metric.query, &self.prometheus) {
                (Some(query), Some(prometheus)) => {
                    let baseline_values = async {
                        if metric.is_threshold() {
                            // A threshold check reads the canary only.
                            Ok(Vec::new())
                        } else {
                            Self::prometheus_values(
                                prometheus,
                                query,
                                &baseline,
                                req.window_seconds,
                            )
                            .await
                        }
                    };
                    match tokio::join!(
                        Self::prometheus_values(prometheus, query, &canary, req.window_seconds),
                        baseline_values,
                    ) {
                        (Ok(c), Ok(b)) => (c, b, None),
                        (Err(e), _) | (_, Err(e)) => (Vec::new(), Vec::new(), Some(e)),
                    }
                }
                _ => (
                    self.store.values(&metric.name, &canary, from, to),
                    self.store.values(&metric.name, &baseline, from, to),
                    None,
                ),
            };
            evidence.push(match failed {
                None => {
                    let mut ev = evaluate_metric(metric, &c, &b, confidence, self.min_samples);
                    if let Some(seq) = req
                        .sequential
                        .as_ref()
                        .filter(|s| sequential::applies(s, metric))
                    {
                        let allowed = metric.max_absolute_effect.unwrap_or(0.0);
                        let from_prometheus = match &self.prometheus {
                            Some(p) => {
                                Box::pin(sequential::run_prometheus(
                                    p, seq, &canary, &baseline, allowed, to,
                                ))
                                .await
                            }
                            None => None,
                        };
                        match from_prometheus {
                            Some(Ok(found)) => sequential::decide(&mut ev, found, seq, allowed),
                            Some(Err(e)) => ev.reason.push_str(&format!(
                                "; sequential test: Prometheus query failed: {e}"
                            )),
                            None => {
                                let found = self.paths.run(
                                    &self.store,
                                    seq,
                                    &canary,
                                    &baseline,
                                    allowed,
                                    to,
                                );
                                sequential::decide(&mut ev, found, seq, allowed);
                            }
                        }
                    }
                    ev
                }
                Some(e) => {
                    let mut ev = evaluate_metric(metric, &[], &[], confidence, 1);
                    ev.reason = format!("Prometheus query failed: {e}");
                    if metric.must_have_data {
                        ev.reason.push_str("; the metric must have data");
                    }
                    ev
                }
            });
            samples.push(crate::evidence::capped(&metric.name, c, b));
        }
        let (outcome, reason) = score(&evidence);
        let verdict = CanaryVerdict {
            service: req.service.clone(),
            environment: req.environment.clone(),
            rollout_id: req.rollout_id,
            outcome,
            reason,
            metrics: evidence,
            analyzed_at: chrono::Utc::now(),
        };
        if let Some(kept) = &self.evidence {
            // Boxed: a KV put is a large future, and analyses run on small stacks.
            Box::pin(kept.record(req, &verdict, samples)).await;
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests;
