//! Synthetic HTTP probes: a GET of each configured URL every interval, recorded in the
//! store as the blackbox exporter names it (`probe_success`, `probe_duration_seconds`,
//! `probe_http_status_code`, labels `probe` and `instance`), and a `ProbeFailed` alert
//! (severity `warning`) after [`FAILURES_TO_ALERT`] consecutive failures, resolved by the
//! next success.

use std::time::Instant;

use chrono::Utc;
use toronto_protocol::alerts::{Alert, AlertStatus, fingerprint};

use crate::settings::Target;
use crate::store::{Labels, Store, now_ms};

/// Consecutive failures before a probe alerts.
pub const FAILURES_TO_ALERT: u32 = 3;

/// What one probe saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// 2xx or 3xx within the timeout.
    pub success: bool,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// How long it took, in seconds.
    pub duration_seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// Probes one target and records the result in `store`.
pub async fn probe_once(http: &reqwest::Client, target: &Target, store: &Store) -> ProbeResult {
    let started = Instant::now();
    let at = now_ms();
    let answer = http.get(&target.url).send().await;
    let duration_seconds = started.elapsed().as_secs_f64();
    let result = match answer {
        Ok(r) => {
            let status = r.status();
            ProbeResult {
                success: status.is_success() || status.is_redirection(),
                status: Some(status.as_u16()),
                duration_seconds,
                error: (!(status.is_success() || status.is_redirection()))
                    .then(|| format!("HTTP {status}")),
            }
        }
        Err(e) => ProbeResult {
            success: false,
            status: None,
            duration_seconds,
            error: Some(e.to_string()),
        },
    };
    let labels: Labels = [
        ("probe".to_owned(), target.name.clone()),
        ("instance".to_owned(), target.url.clone()),
    ]
    .into();
    store.insert(
        "probe_success",
        &labels,
        at,
        if result.success { 1.0 } else { 0.0 },
    );
    store.insert("probe_duration_seconds", &labels, at, duration_seconds);
    if let Some(status) = result.status {
        store.insert("probe_http_status_code", &labels, at, f64::from(status));
    }
    result
}

/// The alert state of one probe.
#[derive(Debug, Default)]
pub struct ProbeTrack {
    failures: u32,
    firing: Option<Alert>,
}

impl ProbeTrack {
    /// Takes a result; returns the alert that fired or resolved, if any.
    pub fn observe(
        &mut self,
        target: &Target,
        result: &ProbeResult,
        environment: &str,
        generator: &str,
    ) -> Option<Alert> {
        if result.success {
            self.failures = 0;
            let mut resolved = self.firing.take()?;
            resolved.status = AlertStatus::Resolved;
            resolved.ends_at = Some(Utc::now());
            return Some(resolved);
        }
        self.failures += 1;
        if self.failures < FAILURES_TO_ALERT || self.firing.is_some() {
            return None;
        }
        let labels: Labels = [
            ("alertname", "ProbeFailed"),
            ("probe", target.name.as_str()),
            ("service", target.name.as_str()),
            ("environment", environment),
            ("severity", "warning"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let alert = Alert {
            fingerprint: fingerprint(&labels),
            status: AlertStatus::Firing,
            labels,
            annotations: [
                (
                    "summary".to_owned(),
                    format!("the probe {} fails", target.name),
                ),
                (
                    "description".to_owned(),
                    format!(
                        "GET {} failed {} times in a row: {}",
                        target.url,
                        self.failures,
                        result.error.clone().unwrap_or_default()
                    ),
                ),
            ]
            .into(),
            burn_rates: Default::default(),
            budget_remaining: None,
            starts_at: Utc::now(),
            ends_at: None,
            generator: generator.to_owned(),
        };
        self.firing = Some(alert.clone());
        Some(alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(success: bool) -> ProbeResult {
        ProbeResult {
            success,
            status: Some(if success { 200 } else { 503 }),
            duration_seconds: 0.01,
            error: (!success).then(|| "HTTP 503".into()),
        }
    }

    #[test]
    fn three_failures_alert_once_and_a_success_resolves() {
        let target = Target {
            name: "shop".into(),
            url: "http://127.0.0.1:1/".into(),
        };
        let mut track = ProbeTrack::default();
        assert!(
            track
                .observe(&target, &result(false), "production", "g")
                .is_none()
        );
        assert!(
            track
                .observe(&target, &result(false), "production", "g")
                .is_none()
        );
        let fired = track
            .observe(&target, &result(false), "production", "g")
            .unwrap();
        assert_eq!(fired.labels["alertname"], "ProbeFailed");
        assert!(
            track
                .observe(&target, &result(false), "production", "g")
                .is_none()
        );
        let resolved = track
            .observe(&target, &result(true), "production", "g")
            .unwrap();
        assert_eq!(resolved.status, AlertStatus::Resolved);
        assert_eq!(resolved.fingerprint, fired.fingerprint);
        assert!(
            track
                .observe(&target, &result(true), "production", "g")
                .is_none()
        );
    }
}
