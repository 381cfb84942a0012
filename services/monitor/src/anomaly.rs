//! Anomaly detection: a robust z-score (median and MAD) of each watched series' recent
//! values against its own history, raising `warning` alerts.
//!
//! At every check, for each series of a watched metric, the median of the samples of
//! the last check interval (the *recent* value) is compared with the samples before it
//! still in the store (the *baseline*, at least [`MIN_BASELINE`] samples):
//! `z = 0.6745 * (recent - median) / MAD`. `|z|` above the threshold (default 5) fires a
//! `MetricAnomaly` alert (severity `warning`) labelled with the metric and the series'
//! labels; it resolves after the configured number of consecutive normal checks. The MAD
//! is floored at 1% of the median's magnitude (and 1e-9) so that a perfectly flat
//! baseline does not turn every wiggle into an anomaly. The median and MAD resist the
//! outliers they look for, unlike a mean and standard deviation (or an EWMA, which the
//! anomaly itself drags along).

use std::collections::HashMap;

use chrono::Utc;
use toronto_protocol::alerts::{Alert, AlertStatus, fingerprint};

use crate::stats::median;
use crate::store::{Labels, Store, now_ms};

/// Fewest baseline samples for a series to be judged.
pub const MIN_BASELINE: usize = 30;

/// Scales the MAD to a standard deviation's units for normal data.
const MAD_SCALE: f64 = 0.6745;

#[derive(Debug, Default)]
struct Track {
    firing: Option<Alert>,
    clear: u32,
}

/// Watches series for anomalies.
#[derive(Debug)]
pub struct AnomalyDetector {
    metrics: Vec<String>,
    threshold: f64,
    recent_ms: i64,
    resolve_evaluations: u32,
    default_environment: String,
    generator: String,
    tracks: HashMap<(String, Labels), Track>,
}

/// The robust z-score of `recent` against `baseline` (`None` with too little
/// baseline).
pub fn robust_z(baseline: &[f64], recent: f64) -> Option<f64> {
    if baseline.len() < MIN_BASELINE {
        return None;
    }
    let m = median(baseline)?;
    let deviations: Vec<f64> = baseline.iter().map(|v| (v - m).abs()).collect();
    let mad = median(&deviations)?.max(m.abs() * 0.01).max(1e-9);
    Some(MAD_SCALE * (recent - m) / mad)
}

impl AnomalyDetector {
    /// A detector of `metrics` whose recent window is `recent_ms`.
    pub fn new(
        metrics: Vec<String>,
        threshold: f64,
        recent_ms: i64,
        resolve_evaluations: u32,
        default_environment: String,
        generator: String,
    ) -> Self {
        Self {
            metrics,
            threshold,
            recent_ms,
            resolve_evaluations,
            default_environment,
            generator,
            tracks: HashMap::new(),
        }
    }

    /// Checks every series once; returns the alerts that fired or resolved.
    pub fn check(&mut self, store: &Store) -> Vec<Alert> {
        let now = now_ms();
        let split = now - self.recent_ms;
        let mut transitions = Vec::new();
        for metric in &self.metrics {
            for (labels, samples) in store.select(metric, &Labels::new(), i64::MIN, now) {
                let mut baseline = Vec::with_capacity(samples.len());
                let mut recent = Vec::new();
                for (t, v) in samples {
                    if t <= split {
                        baseline.push(v);
                    } else {
                        recent.push(v);
                    }
                }
                let Some(value) = median(&recent) else {
                    continue;
                };
                let Some(z) = robust_z(&baseline, value) else {
                    continue;
                };
                let track = self
                    .tracks
                    .entry((metric.clone(), labels.clone()))
                    .or_default();
                let anomalous = z.abs() > self.threshold;
                match (&track.firing, anomalous) {
                    (None, true) => {
                        let mut alert_labels = labels.clone();
                        alert_labels
                            .entry("environment".into())
                            .or_insert_with(|| self.default_environment.clone());
                        alert_labels.insert("alertname".into(), "MetricAnomaly".into());
                        alert_labels.insert("metric".into(), metric.clone());
                        alert_labels.insert("severity".into(), "warning".into());
                        let base = median(&baseline).unwrap_or(0.0);
                        let alert = Alert {
                            fingerprint: fingerprint(&alert_labels),
                            status: AlertStatus::Firing,
                            annotations: [
                                (
                                    "summary".to_owned(),
                                    format!("{metric} is unusual ({labels:?})"),
                                ),
                                (
                                    "description".to_owned(),
                                    format!(
                                        "{metric} is {value:.6} against a median of {base:.6} over {} samples: {z:.1} robust standard deviations (threshold {}).",
                                        baseline.len(),
                                        self.threshold
                                    ),
                                ),
                                ("z_score".to_owned(), format!("{z:.2}")),
                            ]
                            .into(),
                            labels: alert_labels,
                            burn_rates: Default::default(),
                            budget_remaining: None,
                            starts_at: Utc::now(),
                            ends_at: None,
                            generator: self.generator.clone(),
                        };
                        track.firing = Some(alert.clone());
                        track.clear = 0;
                        transitions.push(alert);
                    }
                    (Some(_), true) => track.clear = 0,
                    (Some(firing), false) => {
                        track.clear += 1;
                        if track.clear >= self.resolve_evaluations {
                            let mut resolved = firing.clone();
                            resolved.status = AlertStatus::Resolved;
                            resolved.ends_at = Some(Utc::now());
                            resolved
                                .annotations
                                .insert("z_score".to_owned(), format!("{z:.2}"));
                            track.firing = None;
                            track.clear = 0;
                            transitions.push(resolved);
                        }
                    }
                    (None, false) => {}
                }
            }
        }
        transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreLimits;

    #[test]
    fn robust_z_scores() {
        // Baseline 1..=31: median 16, MAD 8 -> z(40) = 0.6745 * 24 / 8 = 2.0235.
        let baseline: Vec<f64> = (1..=31).map(f64::from).collect();
        let z = robust_z(&baseline, 40.0).unwrap();
        assert!((z - 2.0235).abs() < 1e-9, "{z}");
        assert!(robust_z(&baseline[..10], 40.0).is_none());
        // A flat baseline: the MAD floor (1% of the median) keeps small wiggles calm.
        let flat = vec![100.0; 40];
        assert!(robust_z(&flat, 100.5).unwrap().abs() < 1.0);
        assert!(robust_z(&flat, 150.0).unwrap() > 5.0);
    }

    #[test]
    fn a_spike_fires_and_calm_resolves() {
        let store = Store::new(StoreLimits::default());
        let labels: Labels = [("service".to_owned(), "cart".to_owned())].into();
        let now = now_ms();
        for i in 0..100 {
            store.insert(
                "latency",
                &labels,
                now - 20_000 + i * 100,
                0.1 + (i % 5) as f64 * 0.001,
            );
        }
        let mut detector = AnomalyDetector::new(
            vec!["latency".into()],
            5.0,
            1_000,
            1,
            "production".into(),
            "t".into(),
        );
        assert!(detector.check(&store).is_empty(), "nothing recent yet");
        store.insert("latency", &labels, now_ms(), 1.0);
        let fired = detector.check(&store);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].labels["metric"], "latency");
        assert_eq!(fired[0].labels["severity"], "warning");
        assert_eq!(fired[0].labels["environment"], "production");
        // Calm values now outnumber the spike in the recent window.
        store.insert("latency", &labels, now_ms(), 0.1);
        store.insert("latency", &labels, now_ms(), 0.1);
        let resolved = detector.check(&store);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].status, AlertStatus::Resolved);
        assert_eq!(resolved[0].fingerprint, fired[0].fingerprint);
    }
}
