//! The simulated cluster's own judgement of a step, when no monitor answers: its
//! counts of requests, errors and latency per track.

use chrono::Utc;
use toronto_protocol::analysis::{AnalysisOutcome, CanaryVerdict, MetricEvidence, SampleSummary};
use toronto_protocol::rollout::Rollout;

use crate::settings::Settings;
use crate::sim::SimCluster;
use crate::target::Track;

/// A threshold check on the simulated cluster's own counts (the canary's of the
/// rollout's version only). Against a `baseline`, the canary fails when its error ratio
/// exceeds the baseline's by more than the allowed increase; without one (a first
/// deploy), when its error ratio or mean latency is above the first deploy's limits.
pub(super) fn threshold_verdict(
    sim: &SimCluster,
    r: &Rollout,
    canary: Track,
    baseline: Option<Track>,
    settings: &Settings,
) -> CanaryVerdict {
    let window = settings.analysis_window;
    // The canary's evidence is its own version's requests: right after another
    // rollout of the service, the track's window still holds that one's.
    let c = sim.observed(&r.service, &r.environment, canary, Some(&r.version), window);
    let b = baseline.and_then(|b| sim.observed(&r.service, &r.environment, b, None, window));
    let summary = |x: Option<(u64, u64, f64)>| SampleSummary {
        count: x.map_or(0, |v| v.0 as usize),
        median: None,
        mean: x.map(|(req, err, _)| err as f64 / req.max(1) as f64),
    };
    let ratio = |(req, err, _): (u64, u64, f64)| err as f64 / req.max(1) as f64;
    let (outcome, reason) = match (c, b, baseline) {
        (Some(c), Some(b), Some(_)) => {
            let (cratio, bratio) = (ratio(c), ratio(b));
            if cratio - bratio > settings.max_error_ratio_increase {
                (
                    AnalysisOutcome::Fail,
                    format!(
                        "canary error ratio {cratio:.3} exceeds the baseline's {bratio:.3} by more than {}",
                        settings.max_error_ratio_increase
                    ),
                )
            } else {
                (
                    AnalysisOutcome::Pass,
                    format!("canary error ratio {cratio:.3}, baseline {bratio:.3}"),
                )
            }
        }
        (Some(c), _, None) => {
            let (cratio, latency) = (ratio(c), c.2);
            let (max_ratio, max_latency) = (
                settings.first_deploy_max_error_ratio,
                settings.first_deploy_max_latency_seconds,
            );
            if cratio > max_ratio {
                (
                    AnalysisOutcome::Fail,
                    format!(
                        "first deploy: error ratio {cratio:.3} is above the maximum {max_ratio}"
                    ),
                )
            } else if latency > max_latency {
                (
                    AnalysisOutcome::Fail,
                    format!(
                        "first deploy: mean latency {latency:.3} s is above the maximum {max_latency} s"
                    ),
                )
            } else {
                (
                    AnalysisOutcome::Pass,
                    format!(
                        "first deploy: error ratio {cratio:.3} (max {max_ratio}), mean latency {latency:.3} s (max {max_latency} s)"
                    ),
                )
            }
        }
        _ => (
            AnalysisOutcome::Inconclusive,
            "no traffic measured yet".to_owned(),
        ),
    };
    CanaryVerdict {
        service: r.service.clone(),
        environment: r.environment.clone(),
        rollout_id: Some(r.id),
        outcome,
        reason: reason.clone(),
        metrics: vec![MetricEvidence {
            name: "http_error_ratio".into(),
            outcome,
            critical: true,
            canary: summary(c),
            baseline: summary(b),
            u: None,
            p_value: None,
            effect: None,
            reason,
        }],
        analyzed_at: Utc::now(),
    }
}
