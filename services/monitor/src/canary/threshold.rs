//! Threshold checks: a metric judged by the canary's samples alone, against
//! `max_value` and `min_value`.

use toronto_protocol::analysis::{AnalysisMetric, AnalysisOutcome, MetricEvidence};

use super::fmt;

/// A threshold check: the median of the canary's samples against `max_value` and
/// `min_value` (the baseline is not read).
pub(super) fn evaluate_threshold(
    metric: &AnalysisMetric,
    canary: &[f64],
    min: usize,
    mut evidence: MetricEvidence,
) -> MetricEvidence {
    if canary.len() < min {
        let what = if canary.is_empty() {
            "no data"
        } else {
            "too few samples"
        };
        evidence.reason = format!(
            "{what}: {} canary samples in the window (need {min})",
            canary.len()
        );
        if metric.must_have_data {
            evidence.outcome = AnalysisOutcome::Fail;
            evidence.reason.push_str("; the metric must have data");
        }
        return evidence;
    }
    let value = evidence.canary.median.unwrap_or(0.0);
    let mut broken = Vec::new();
    if let Some(max) = metric.max_value
        && value > max
    {
        broken.push(format!("above the maximum {}", fmt(max)));
    }
    if let Some(min) = metric.min_value
        && value < min
    {
        broken.push(format!("below the minimum {}", fmt(min)));
    }
    let bounds = [
        metric.min_value.map(|v| format!("min {}", fmt(v))),
        metric.max_value.map(|v| format!("max {}", fmt(v))),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    if broken.is_empty() {
        evidence.outcome = AnalysisOutcome::Pass;
        evidence.reason = format!("canary median {} within {bounds}", fmt(value));
    } else {
        evidence.outcome = AnalysisOutcome::Fail;
        evidence.reason = format!("canary median {} is {}", fmt(value), broken.join(" and "));
    }
    evidence
}
