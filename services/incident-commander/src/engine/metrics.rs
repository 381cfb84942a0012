//! Incident metrics from the recorded times: MTTA, MTTR, MTBF (between incidents of
//! one service) and counts by severity.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use toronto_protocol::incidents::{Incident, IncidentMetrics};

use super::state::State;

/// Metrics over every incident (of one service, with `service`).
pub fn metrics(st: &State, service: Option<&str>) -> IncidentMetrics {
    let incidents: Vec<&Incident> = st
        .incidents
        .values()
        .filter(|i| service.is_none_or(|s| i.service == s))
        .collect();
    of(&incidents)
}

/// Metrics over these incidents.
pub fn of(incidents: &[&Incident]) -> IncidentMetrics {
    let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let secs = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_milliseconds() as f64 / 1000.0;
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
    fn no_incidents_no_means() {
        let m = of(&[]);
        assert_eq!(
            (m.incidents, m.mtta_seconds, m.mttr_seconds, m.mtbf_seconds),
            (0, None, None, None)
        );
    }
}
