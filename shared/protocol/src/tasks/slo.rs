//! SLO status queries to the monitor.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Message;

/// Asks the monitor for a service's SLO status (`toronto.devops.v1.monitor.slo.get`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloGet {
    /// The service.
    pub service: String,
}

impl Message for SloGet {
    const NAME: &'static str = "monitor.slo.get";
    const MAJOR: u32 = 1;
}

/// Where one SLO of a service stands, as the monitor last evaluated it (kept in the KV
/// bucket `toronto_slo_status` under `<service>.<slo>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SloStatus {
    /// The service.
    pub service: String,
    /// The SLO's name.
    pub slo: String,
    /// Its objective, e.g. 0.999.
    pub objective: f64,
    /// Fraction of the error budget left over the SLO window (negative when overspent).
    pub budget_remaining: f64,
    /// Whether the budget is spent.
    pub exhausted: bool,
    /// Burn rate per window (`5m`, `1h`, ...).
    #[serde(default)]
    pub burn_rates: std::collections::BTreeMap<String, f64>,
    /// When it was evaluated.
    pub evaluated_at: DateTime<Utc>,
}

impl Message for SloStatus {
    const NAME: &'static str = "slo.status";
    const MAJOR: u32 = 1;
}

/// Every SLO status of a service (empty when it has no SLO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SloStatuses {
    /// The statuses.
    pub statuses: Vec<SloStatus>,
    /// SLOs of the service that are defined but not evaluated yet: their budget is
    /// unknown, which is not the same as having no SLO.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

impl Message for SloStatuses {
    const NAME: &'static str = "slo.statuses";
    const MAJOR: u32 = 1;
}
