//! Incident metrics from the recorded times: MTTA, MTTR, MTBF (between incidents of
//! one service) and counts by severity; and, for `/metrics`, the times to acknowledge
//! and to resolve as Prometheus histograms.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use toronto_protocol::incidents::{Incident, IncidentMetrics};

use super::Engine;
use super::index::Times;
use super::state::State;

/// Upper bounds, in seconds, of the time-to-acknowledge and time-to-resolve
/// histograms: 30 seconds to 3 days (then `+Inf`).
pub const RESPONSE_BUCKETS: [f64; 13] = [
    30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
    259200.0,
];

/// The times from opening to acknowledgement, and from opening to resolution, of every
/// incident that got there: kept as incidents change, not walked at each scrape.
pub fn response_times(st: &State) -> (Times, Times) {
    st.index.response_times()
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

/// `toronto_incident_time_to_acknowledge_seconds` and
/// `toronto_incident_time_to_resolve_seconds`: histograms of the
/// incidents' recorded times, kept as they change (so they survive restarts and agree
/// with `incident.metrics`).
/// MTTA is `sum / count` of the first, MTTR of the second.
#[derive(Debug)]
pub struct ResponseTimes(pub Arc<Engine>);

impl Collector for ResponseTimes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (acknowledged, resolved) = self.0.response_times();
        for (name, help, values) in [
            (
                "incident_time_to_acknowledge_seconds",
                "Time from opening to acknowledgement of each acknowledged incident (MTTA is sum / count)",
                acknowledged,
            ),
            (
                "incident_time_to_resolve_seconds",
                "Time from opening to resolution of each resolved incident (MTTR is sum / count)",
                resolved,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            metric.encode_histogram::<NoLabelSet>(
                values.sum_seconds(),
                values.count(),
                &values.buckets(),
                None,
            )?;
        }
        Ok(())
    }
}

/// Metrics over every incident (of one service, with `service`).
///
/// Over every service the totals are kept as incidents change (see
/// [`super::index::Index`]); one service's are computed from its incidents.
pub fn metrics(st: &State, service: Option<&str>) -> IncidentMetrics {
    let Some(service) = service else {
        return st.index.metrics();
    };
    let incidents: Vec<&Incident> = st
        .incidents
        .values()
        .filter(|i| i.service == service)
        .collect();
    of(&incidents)
}

/// Metrics over these incidents.
pub fn of(incidents: &[&Incident]) -> IncidentMetrics {
    let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let mtta = mean(
        incidents
            .iter()
            .filter_map(|i| i.acknowledged_at.map(|t| secs(i.opened_at, t)))
            .collect(),
    );
    let mttr = mean(
        incidents
            .iter()
            .filter_map(|i| i.resolved_at.map(|t| secs(i.opened_at, t)))
            .collect(),
    );
    let mut by_service: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    for i in incidents {
        by_service.entry(&i.service).or_default().push(i.opened_at);
    }
    let mut gaps = Vec::new();
    for times in by_service.values_mut() {
        times.sort();
        gaps.extend(times.windows(2).map(|w| secs(w[0], w[1])));
    }
    let mut by_severity: BTreeMap<String, u64> = ["sev1", "sev2", "sev3", "sev4"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for i in incidents {
        *by_severity
            .entry(i.severity.label().to_lowercase())
            .or_default() += 1;
    }
    IncidentMetrics {
        incidents: incidents.len() as u64,
        open: incidents.iter().filter(|i| i.state.is_open()).count() as u64,
        by_severity,
        mtta_seconds: mtta,
        mttr_seconds: mttr,
        mtbf_seconds: mean(gaps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::incident;
    use chrono::Duration;
    use toronto_protocol::incidents::{IncidentState, Severity};

    #[test]
    fn mtta_mttr_and_mtbf_from_recorded_times() {
        let t0 = Utc::now();
        let mut a = incident(
            "a",
            IncidentState::Resolved,
            Some(t0 + Duration::seconds(600)),
        );
        a.opened_at = t0;
        a.acknowledged_at = Some(t0 + Duration::seconds(60));
        a.severity = Severity::Sev1;
        let mut b = incident("b", IncidentState::Acknowledged, None);
        b.opened_at = t0 + Duration::seconds(3600);
        b.acknowledged_at = Some(b.opened_at + Duration::seconds(180));
        let mut c = incident("c", IncidentState::Triggered, None);
        c.service = "other".into();
        c.opened_at = t0 + Duration::seconds(100);
        let m = of(&[&a, &b, &c]);
        assert_eq!(m.incidents, 3);
        assert_eq!(m.open, 2);
        assert_eq!(m.mtta_seconds, Some(120.0), "mean of 60 s and 180 s");
        assert_eq!(m.mttr_seconds, Some(600.0), "only the resolved one");
        assert_eq!(
            m.mtbf_seconds,
            Some(3600.0),
            "a and b are one service, c another"
        );
        assert_eq!(m.by_severity["sev1"], 1);
        assert_eq!(m.by_severity["sev3"], 2);
        assert_eq!(m.by_severity["sev4"], 0);
    }

    #[test]
    fn response_time_histograms_from_recorded_times() {
        let t0 = Utc::now();
        let mut a = incident(
            "a",
            IncidentState::Resolved,
            Some(t0 + Duration::seconds(600)),
        );
        a.opened_at = t0;
        a.acknowledged_at = Some(t0 + Duration::seconds(45));
        let metrics = toronto_runtime::Metrics::new();
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        let (playbooks, _) = tokio::sync::mpsc::unbounded_channel();
        let engine = Engine::new(
            Default::default(),
            "test".into(),
            "toronto".into(),
            tx,
            playbooks,
        );
        engine.restore(vec![a], vec![], vec![], vec![]);
        metrics.register_collector(ResponseTimes(Arc::new(engine)));
        let text = metrics.render();
        for line in [
            "# TYPE toronto_incident_time_to_acknowledge_seconds histogram",
            "toronto_incident_time_to_acknowledge_seconds_bucket{le=\"30.0\"} 0",
            "toronto_incident_time_to_acknowledge_seconds_bucket{le=\"60.0\"} 1",
            "toronto_incident_time_to_acknowledge_seconds_sum 45.0",
            "toronto_incident_time_to_resolve_seconds_bucket{le=\"300.0\"} 0",
            "toronto_incident_time_to_resolve_seconds_bucket{le=\"600.0\"} 1",
            "toronto_incident_time_to_resolve_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn no_incidents_no_means() {
        let m = of(&[]);
        assert_eq!(
            (m.incidents, m.mtta_seconds, m.mttr_seconds, m.mtbf_seconds),
            (0, None, None, None)
        );
    }
}
