//! Alerts the monitor raises (`alert.firing`, `alert.resolved` events) and the SLO
//! management requests it serves (`monitor.slo.put`, `monitor.slo.list`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::tasks::SloStatus;

/// Whether an alert is firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Its condition holds.
    Firing,
    /// Its condition no longer holds.
    Resolved,
}

/// An alert, the data of `toronto.devops.v1.events.alert.firing` and
/// `...alert.resolved` (the same fingerprint in both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    /// Stable identity of the alert: a hash of its identifying labels
    /// ([`fingerprint`]), the same for every firing and resolution of one condition
    /// (Alertmanager's fingerprint, a PagerDuty dedup key).
    pub fingerprint: String,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Identifying labels: `alertname`, `service`, `environment`, `severity` (`page`,
    /// `ticket` or `warning`), and `slo` for burn-rate alerts or `metric` for anomalies.
    pub labels: BTreeMap<String, String>,
    /// Human text: `summary`, `description`, and for burn-rate alerts the `windows`
    /// that crossed their threshold.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Burn rate per window (`5m`, `1h`, ...) when it was evaluated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub burn_rates: BTreeMap<String, f64>,
    /// Fraction of the error budget left, for SLO alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_remaining: Option<f64>,
    /// When the condition started to hold.
    pub starts_at: DateTime<Utc>,
    /// When it was resolved (absent while firing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    /// Who raised it, e.g. `toronto://devops/monitor`.
    pub generator: String,
}

impl Message for Alert {
    const NAME: &'static str = "alert";
    const MAJOR: u32 = 1;
}

/// The fingerprint of a label set: FNV-1a (64 bits) over the labels sorted by name, each
/// as `name 0xff value 0xff`, in 16 hex digits (the way Prometheus hashes label sets).
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (name, value) in labels {
        for byte in name
            .bytes()
            .chain([0xff])
            .chain(value.bytes())
            .chain([0xff])
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    format!("{hash:016x}")
}

/// Adds or replaces an SLO (`toronto.devops.v1.monitor.slo.put`): an OpenSLO v1
/// document in YAML. The monitor keeps it (KV bucket `toronto_slo_definitions`) and
/// evaluates it from then on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloPut {
    /// The OpenSLO document.
    pub document: String,
}

impl Message for SloPut {
    const NAME: &'static str = "monitor.slo.put";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;
}

/// An SLO the monitor evaluates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SloDefinition {
    /// Its name.
    pub slo: String,
    /// The service.
    pub service: String,
    /// The environment its alerts are labelled with.
    pub environment: String,
    /// Its objective, e.g. 0.999.
    pub objective: f64,
    /// Its window in days.
    pub window_days: u32,
    /// Where its SLI is read: `bus` (the monitor's store) or `prometheus`.
    pub source: String,
    /// The error ratio as PromQL, `{{.window}}` for the window.
    pub error_ratio_query: String,
}

impl Message for SloDefinition {
    const NAME: &'static str = "slo.definition";
    const MAJOR: u32 = 1;
}

/// Lists the SLOs the monitor evaluates (`toronto.devops.v1.monitor.slo.list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloList {
    /// Only this service's, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Message for SloList {
    const NAME: &'static str = "monitor.slo.list";
    const MAJOR: u32 = 1;
}

/// One SLO and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SloEntry {
    /// The SLO.
    pub definition: SloDefinition,
    /// Its last evaluation, if any yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SloStatus>,
    /// Severities of its burn-rate alerts firing now (`page`, `ticket`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firing: Vec<String>,
}

/// The answer of `monitor.slo.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SloEntries {
    /// The SLOs, by service then name.
    pub slos: Vec<SloEntry>,
}

impl Message for SloEntries {
    const NAME: &'static str = "slo.entries";
    const MAJOR: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_order_free() {
        let a: BTreeMap<String, String> = [("alertname", "X"), ("service", "cart")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        // FNV-1a of "alertname\xffX\xffservice\xffcart\xff", computed with Python and
        // pinned: a change here changes every dedup key downstream.
        assert_eq!(fingerprint(&a), "4defb5f74f0c0f61");
        let mut b = a.clone();
        b.insert("severity".into(), "page".into());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&BTreeMap::new()), "cbf29ce484222325");
    }
}
