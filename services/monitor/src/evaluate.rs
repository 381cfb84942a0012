//! SLO evaluation: error ratios over the burn-rate windows (5m, 30m, 1h, 2h, 6h, 1d,
//! 3d) and the SLO window, error budget left, and multi-window multi-burn-rate alerts.
//!
//! **SLIs.** An SLO whose sources are of type `Bus` is read from the store: at every
//! evaluation the per-tick bad (or good) and total counts since the last evaluation are
//! summed into a bucketed history per SLO (fine buckets covering 3 days, hourly buckets
//! covering the SLO window, so memory is bounded whatever the sample rate); a window's
//! error ratio is the sum of bad over the sum of total in its buckets. A `Prometheus`
//! SLO is asked of Prometheus: one instant query of its error-ratio PromQL per window.
//! A window without events has no burn rate.
//!
//! **Alerts** (as in the SRE workbook and Sloth): `page` when the burn rate exceeds 14.4
//! over 1h and 5m, or 6 over 6h and 30m; `ticket` when it exceeds 3 over 1d and 2h, or 1
//! over 3d and 6h. **Hysteresis**: a firing alert stays firing while any of its tiers
//! is above 90% of its threshold in both windows, and resolves only after its condition
//! has been clear for `resolve_evaluations` consecutive evaluations.
//!
//! **Time compression** (`TORONTO_MONITOR_TIME_SCALE`): every SLO duration (windows,
//! the SLO window, bucket widths) is divided by the scale, so a test or a demo can see a
//! page within seconds; the evaluation interval is real time.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use toronto_protocol::alerts::{Alert, AlertStatus, SloDefinition, SloEntry, fingerprint};
use toronto_protocol::tasks::SloStatus;

use crate::prometheus::Prometheus;
use crate::slo::{Slo, TIERS};
use crate::store::{Store, now_ms};

mod history;

use history::History;

/// The burn-rate windows with their length in seconds.
pub const WINDOW_SECONDS: [(&str, u64); 7] = [
    ("5m", 300),
    ("30m", 1800),
    ("1h", 3600),
    ("2h", 7200),
    ("6h", 21600),
    ("1d", 86400),
    ("3d", 259200),
];

/// Bus SLOs evaluated per hold of the engine's lock.
const BUS_BATCH: usize = 256;

/// A firing alert stays firing while its burn rates are above this share of the
/// threshold (hysteresis).
pub const RESOLVE_RATIO: f64 = 0.9;

/// How the engine evaluates.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSettings {
    /// SLO durations are divided by this.
    pub time_scale: f64,
    /// Time between two evaluations (real).
    pub interval: Duration,
    /// Consecutive clear evaluations before an alert resolves.
    pub resolve_evaluations: u32,
    /// Environment of SLOs that name none.
    pub default_environment: String,
    /// How far back the store goes (for the first evaluation of a bus SLO).
    pub retention: Duration,
}

#[derive(Debug, Clone, Default)]
struct AlertTrack {
    firing: Option<Alert>,
    clear: u32,
}

#[derive(Debug, Clone)]
struct SloState {
    slo: Slo,
    environment: String,
    history: Option<History>,
    alerts: [AlertTrack; 2],
    status: Option<SloStatus>,
    exhausted: bool,
}

/// What one evaluation of one SLO produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Its status now.
    pub status: SloStatus,
    /// Its environment.
    pub environment: String,
    /// Alerts that fired or resolved in this evaluation.
    pub transitions: Vec<Alert>,
    /// Whether the budget became exhausted in this evaluation.
    pub newly_exhausted: bool,
}

/// Every SLO the monitor evaluates, with its state.
#[derive(Debug, Clone)]
pub struct SloEngine {
    slos: Arc<Mutex<BTreeMap<String, SloState>>>,
    store: Arc<Store>,
    prometheus: Option<Prometheus>,
    settings: EvalSettings,
    generator: String,
}

/// The key of an SLO in the engine and in the status bucket: `<service>.<slo>`.
pub fn key(slo: &Slo) -> String {
    format!("{}.{}", slo.service, slo.name)
}

/// `compressed 360x` when SLO time is compressed (what alerts say), else `None`.
pub fn compressed(time_scale: f64) -> Option<String> {
    (time_scale != 1.0).then(|| format!("compressed {time_scale}x"))
}

const SEVERITIES: [(&str, &str, std::ops::Range<usize>); 2] = [
    ("page", "SLOErrorBudgetBurnPage", 0..2),
    ("ticket", "SLOErrorBudgetBurnTicket", 2..4),
];

impl SloEngine {
    /// An engine without SLOs; alerts are signed by `generator`.
    pub fn new(
        store: Arc<Store>,
        prometheus: Option<Prometheus>,
        settings: EvalSettings,
        generator: String,
    ) -> Self {
        Self {
            slos: Arc::new(Mutex::new(BTreeMap::new())),
            store,
            prometheus,
            settings,
            generator,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SloState>> {
        self.slos.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn definition(&self, slo: &Slo) -> SloDefinition {
        SloDefinition {
            slo: slo.name.clone(),
            service: slo.service.clone(),
            environment: slo
                .environment
                .clone()
                .unwrap_or_else(|| self.settings.default_environment.clone()),
            objective: slo.objective,
            window_days: slo.window_days,
            source: if slo.bus.is_some() {
                "bus"
            } else {
                "prometheus"
            }
            .into(),
            error_ratio_query: slo.error_ratio_query.clone(),
        }
    }

    /// Adds an SLO, or replaces the one of the same service and name (its history and
    /// alerts are kept when the definition is unchanged).
    pub fn put(&self, slo: Slo) -> SloDefinition {
        let definition = self.definition(&slo);
        if slo.bus.is_none() && self.prometheus.is_none() {
            tracing::warn!(
                slo = %slo.name,
                service = %slo.service,
                "this SLO reads Prometheus but TORONTO_MONITOR_PROMETHEUS_URL is not set: it is not evaluated"
            );
        }
        let mut slos = self.lock();
        let k = key(&slo);
        if slos.get(&k).is_some_and(|s| s.slo == slo) {
            return definition;
        }
        let history = slo
            .bus
            .as_ref()
            .map(|_| History::new(&self.settings, slo.window_days));
        slos.insert(
            k,
            SloState {
                environment: definition.environment.clone(),
                slo,
                history,
                alerts: Default::default(),
                status: None,
                exhausted: false,
            },
        );
        definition
    }

    /// How many SLOs it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of bus history held (for the bench).
    pub fn history_bytes(&self) -> usize {
        self.lock()
            .values()
            .filter_map(|s| s.history.as_ref().map(History::bytes))
            .sum()
    }

    /// The SLOs (of `service`, when given), with their last status and firing alerts.
    pub fn list(&self, service: Option<&str>) -> Vec<SloEntry> {
        self.lock()
            .values()
            .filter(|s| service.is_none_or(|svc| s.slo.service == svc))
            .map(|s| SloEntry {
                definition: self.definition(&s.slo),
                status: s.status.clone(),
                firing: s
                    .alerts
                    .iter()
                    .zip(SEVERITIES)
                    .filter(|(a, _)| a.firing.is_some())
                    .map(|(_, (sev, _, _))| sev.to_owned())
                    .collect(),
            })
            .collect()
    }

    fn scaled_ms(&self, secs: u64) -> i64 {
        ((secs as f64 * 1000.0) / self.settings.time_scale).max(1.0) as i64
    }

    async fn prometheus_ratios(
        &self,
        prometheus: &Prometheus,
        slo: &Slo,
    ) -> (BTreeMap<String, f64>, Option<f64>) {
        let mut ratios = BTreeMap::new();
        let query = |ms: i64| {
            slo.error_ratio_query
                .replace("{{.window}}", &format!("{ms}ms"))
        };
        for (name, secs) in WINDOW_SECONDS {
            match prometheus.query(&query(self.scaled_ms(secs)), None).await {
                Ok(series) => {
                    if let Some(v) = series
                        .first()
                        .and_then(|s| s.points.first())
                        .map(|p| p.1)
                        .filter(|v| v.is_finite())
                    {
                        ratios.insert(name.to_owned(), v);
                    }
                }
                Err(e) => {
                    tracing::warn!(slo = %slo.name, window = name, error = %e, "SLI query failed")
                }
            }
        }
        let slo_window = prometheus
            .query(
                &query(self.scaled_ms(slo.window_days as u64 * 86_400)),
                None,
            )
            .await
            .ok()
            .and_then(|s| s.first().and_then(|s| s.points.first()).map(|p| p.1))
            .filter(|v| v.is_finite());
        (ratios, slo_window)
    }

    /// Evaluates every SLO once, now (bus SLOs from the store, the others from
    /// Prometheus when one is configured; without one they are skipped).
    pub async fn evaluate_all(&self) -> Vec<Evaluation> {
        let mut out = Vec::with_capacity(self.len());
        self.evaluate_bus(&mut out);
        let Some(prometheus) = &self.prometheus else {
            return out;
        };
        // Prometheus SLOs are asked over the network: copied out, so that the engine
        // is not locked while a query runs.
        let keys: Vec<(String, Slo)> = self
            .lock()
            .iter()
            .filter(|(_, s)| s.slo.bus.is_none())
            .map(|(k, s)| (k.clone(), s.slo.clone()))
            .collect();
        for (k, slo) in keys {
            let (ratios, slo_ratio) = self.prometheus_ratios(prometheus, &slo).await;
            let mut slos = self.lock();
            if let Some(state) = slos.get_mut(&k) {
                out.push(self.conclude(state, ratios, slo_ratio));
            }
        }
        out
    }

    /// Evaluates every bus SLO in place, [`BUS_BATCH`] at a time under the lock: no
    /// SLO is copied or looked up by its key, so a round costs the same per SLO
    /// whatever their number, and listing or adding an SLO waits for one batch at most.
    fn evaluate_bus(&self, out: &mut Vec<Evaluation>) {
        let mut after: Option<String> = None;
        loop {
            let mut slos = self.lock();
            let range = match after.take() {
                None => slos.range_mut::<String, _>(..),
                Some(a) => slos.range_mut::<String, _>((Bound::Excluded(a), Bound::Unbounded)),
            };
            let mut visited = 0;
            let mut last = None;
            for (k, state) in range {
                out.extend(self.evaluate_from_store(state));
                last = Some(k);
                visited += 1;
                if visited == BUS_BATCH {
                    break;
                }
            }
            if visited < BUS_BATCH {
                return;
            }
            after = last.cloned();
        }
    }

    /// One evaluation of a bus SLO (`None` for the others): what the store got since
    /// the last one, then the error ratio of each window from the SLO's history.
    fn evaluate_from_store(&self, state: &mut SloState) -> Option<Evaluation> {
        let (ratios, slo_ratio) = {
            let (Some(history), Some(sli)) = (state.history.as_mut(), state.slo.bus.as_ref())
            else {
                return None;
            };
            history.ingest(
                &self.store,
                sli,
                now_ms(),
                self.settings.retention.as_millis() as i64,
            );
            let ratio = |span: i64| {
                let (bad, total) = history.window(span);
                (total > 0.0).then(|| bad / total)
            };
            let ratios: BTreeMap<String, f64> = WINDOW_SECONDS
                .iter()
                .filter_map(|(name, secs)| {
                    ratio(self.scaled_ms(*secs)).map(|r| ((*name).to_owned(), r))
                })
                .collect();
            let slo_ratio = ratio(self.scaled_ms(state.slo.window_days as u64 * 86_400));
            (ratios, slo_ratio)
        };
        Some(self.conclude(state, ratios, slo_ratio))
    }

    fn conclude(
        &self,
        state: &mut SloState,
        ratios: BTreeMap<String, f64>,
        slo_ratio: Option<f64>,
    ) -> Evaluation {
        let slo = &state.slo;
        let budget = slo.error_budget();
        let burn_rates: BTreeMap<String, f64> = ratios
            .iter()
            .map(|(w, r)| (w.clone(), crate::slo::burn_rate(*r, slo.objective)))
            .collect();
        let budget_remaining = slo_ratio.map_or(1.0, |r| 1.0 - r / budget);
        let exhausted = budget_remaining <= 0.0;
        let now = Utc::now();
        let status = SloStatus {
            service: slo.service.clone(),
            slo: slo.name.clone(),
            objective: slo.objective,
            budget_remaining,
            exhausted,
            burn_rates: burn_rates.clone(),
            evaluated_at: now,
        };
        let mut transitions = Vec::new();
        for (track, (severity, alertname, tiers)) in state.alerts.iter_mut().zip(SEVERITIES) {
            let factor = if track.firing.is_some() {
                RESOLVE_RATIO
            } else {
                1.0
            };
            let crossing: Vec<String> = TIERS[tiers]
                .iter()
                .filter(|(_, rate, long, short)| {
                    let over = |w: &str| burn_rates.get(w).is_some_and(|b| *b > rate * factor);
                    over(long) && over(short)
                })
                .map(|(_, rate, long, short)| format!("{rate}x over {long} and {short}"))
                .collect();
            match (&mut track.firing, crossing.is_empty()) {
                (None, false) => {
                    let labels: BTreeMap<String, String> = [
                        ("alertname", alertname),
                        ("service", slo.service.as_str()),
                        ("environment", state.environment.as_str()),
                        ("slo", slo.name.as_str()),
                        ("severity", severity),
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
                                format!(
                                    "{} is burning its error budget ({}){}",
                                    slo.service,
                                    slo.name,
                                    compressed(self.settings.time_scale)
                                        .map(|c| format!(" [{c}]"))
                                        .unwrap_or_default()
                                ),
                            ),
                            (
                                "description".to_owned(),
                                format!(
                                    "The {} SLO ({}% over {} days) of {} in {} burns its error budget: {}; {:.1}% of the budget left.{}",
                                    slo.name,
                                    slo.objective * 100.0,
                                    slo.window_days,
                                    slo.service,
                                    state.environment,
                                    crossing.join(", "),
                                    budget_remaining * 100.0,
                                    compressed(self.settings.time_scale)
                                        .map(|c| format!(" SLO time is {c} (TORONTO_MONITOR_TIME_SCALE): {} SLO days last {:.0} s.", slo.window_days, f64::from(slo.window_days) * 86_400.0 / self.settings.time_scale))
                                        .unwrap_or_default()
                                ),
                            ),
                            ("windows".to_owned(), crossing.join(", ")),
                        ]
                        .into(),
                        burn_rates: burn_rates.clone(),
                        budget_remaining: Some(budget_remaining),
                        starts_at: now,
                        ends_at: None,
                        generator: self.generator.clone(),
                    };
                    track.clear = 0;
                    track.firing = Some(alert.clone());
                    transitions.push(alert);
                }
                (Some(_), false) => track.clear = 0,
                (Some(firing), true) => {
                    track.clear += 1;
                    if track.clear >= self.settings.resolve_evaluations {
                        let mut resolved = firing.clone();
                        resolved.status = AlertStatus::Resolved;
                        resolved.ends_at = Some(now);
                        resolved.burn_rates = burn_rates.clone();
                        resolved.budget_remaining = Some(budget_remaining);
                        track.firing = None;
                        track.clear = 0;
                        transitions.push(resolved);
                    }
                }
                (None, true) => {}
            }
        }
        let newly_exhausted = exhausted && !state.exhausted;
        state.exhausted = exhausted;
        state.status = Some(status.clone());
        Evaluation {
            status,
            environment: state.environment.clone(),
            transitions,
            newly_exhausted,
        }
    }
}

#[cfg(test)]
mod tests;
