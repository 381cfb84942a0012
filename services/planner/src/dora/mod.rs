//! DORA metrics computed from the event stream (the stream is the record): deployment
//! frequency, lead time for changes, change failure rate and time to restore.
//!
//! [`judge`] says whether a deploy failed and how long service took to come back
//! ([`compute`] documents the definitions and computes the figures exactly from the
//! records of [`history`]); [`days`] folds the events into deploys judged as they arrive
//! and figures kept per day ([`summary`]); [`ledger`] keeps them in memory, so a query
//! reads only the events published since the one before and sums at most one figure
//! per day of its window.

pub mod compute;
pub mod days;
pub mod history;
pub mod judge;
pub mod ledger;
pub mod summary;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use chrono::Utc;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use toronto_protocol::incidents::{IncidentEvent, IncidentEventKind};
use toronto_protocol::rollout::{Rollout, RolloutEvent};
use toronto_protocol::tasks::{DoraQuery, DoraReport, Plan};
use toronto_protocol::{Encoding, Envelope, decode};

use crate::intake::{IntakeError, Planner};
pub use compute::compute;
pub use history::History;

/// Labels of the DORA gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DoraLabels {
    /// The service (`*` for all).
    pub service: String,
    /// The environment.
    pub environment: String,
}

/// The DORA figures on `/metrics`, updated whenever they are computed.
#[derive(Clone, Debug, Default)]
pub struct DoraGauges {
    frequency: Family<DoraLabels, Gauge<f64, AtomicU64>>,
    lead_time: Family<DoraLabels, Gauge<f64, AtomicU64>>,
    failure_rate: Family<DoraLabels, Gauge<f64, AtomicU64>>,
    restore: Family<DoraLabels, Gauge<f64, AtomicU64>>,
}

impl DoraGauges {
    /// Registers the gauges with the service's metrics.
    pub fn register(metrics: &toronto_runtime::Metrics) -> Self {
        let g = Self::default();
        metrics.register(
            "dora_deployments_per_second",
            "DORA deployment frequency over the window asked for (30 days by default), per second",
            g.frequency.clone(),
        );
        metrics.register(
            "dora_lead_time_seconds",
            "DORA lead time for changes (median, commit to deploy)",
            g.lead_time.clone(),
        );
        metrics.register(
            "dora_change_failure_ratio",
            "DORA change failure rate (deploys aborted, rolled back or linked to an incident)",
            g.failure_rate.clone(),
        );
        metrics.register(
            "dora_time_to_restore_seconds",
            "DORA time to restore service (median, failure to recovery)",
            g.restore.clone(),
        );
        g
    }

    fn set(&self, report: &DoraReport) {
        let labels = DoraLabels {
            service: report.service.clone().unwrap_or_else(|| "*".into()),
            environment: report.environment.clone(),
        };
        self.frequency
            .get_or_create(&labels)
            .set(report.deployment_frequency_per_day / 86_400.0);
        if let Some(v) = report.lead_time_median_seconds {
            self.lead_time.get_or_create(&labels).set(v);
        }
        if let Some(v) = report.change_failure_rate {
            self.failure_rate.get_or_create(&labels).set(v);
        }
        if let Some(v) = report.time_to_restore_median_seconds {
            self.restore.get_or_create(&labels).set(v);
        }
    }
}

impl Planner {
    /// Folds the DORA records published since the ledger's last read into it: rollouts
    /// that ended, completed plans and incident events.
    async fn catch_up(&self, state: &mut ledger::State) -> Result<(), IntakeError> {
        let events = |e: async_nats::Error| IntakeError::Events(e);
        let stream = self
            .js
            .get_stream(self.subjects.events_stream())
            .await
            .map_err(|e| events(e.into()))?;
        let mut filters = vec![
            self.subjects.event("plan", "completed"),
            self.subjects.event("incident", ">"),
        ];
        for what in [
            RolloutEvent::Succeeded,
            RolloutEvent::Aborted,
            RolloutEvent::Failed,
            RolloutEvent::RolledBack,
        ] {
            filters.push(self.subjects.event("rollout", what.as_str()));
        }
        // Nothing stored since the last fold: no consumer to make (the common case of
        // a report asked again).
        let stored_to = stream.cached_info().state.last_sequence;
        let start = state.start(Utc::now());
        if matches!(start, ledger::Start::Sequence(next) if next > stored_to) {
            return Ok(());
        }
        let deliver_policy = match start {
            ledger::Start::Sequence(start_sequence) => {
                DeliverPolicy::ByStartSequence { start_sequence }
            }
            ledger::Start::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
        };
        let mut consumer = stream
            .create_consumer(pull::Config {
                deliver_policy,
                ack_policy: AckPolicy::None,
                filter_subjects: filters,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| events(e.into()))?;
        let pending = consumer
            .info()
            .await
            .map_err(|e| events(e.into()))?
            .num_pending as usize;
        if pending == 0 {
            // None of the events stored up to `stored_to` is one the ledger folds.
            state.read_to(stored_to);
            return Ok(());
        }
        let plan_completed = self.subjects.event("plan", "completed");
        let rollout_prefix = self.subjects.event("rollout", "");
        let incident_prefix = self.subjects.event("incident", "");
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| events(e.into()))?
            .take(pending);
        let history = &mut state.records;
        let mut last = None;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| events(e.into()))?;
            if let Ok(info) = message.info() {
                last = Some(info.stream_sequence);
            }
            let subject = message.subject.as_str();
            // An event that does not decode is someone else's mistake: it is skipped.
            if subject == plan_completed {
                if let Ok(e) = decode::<Plan>(&message.payload, Encoding::Json) {
                    history.plan_completed(&e.data);
                }
            } else if let Some(what) = subject.strip_prefix(&rollout_prefix) {
                if let (Ok(what), Ok(e)) = (
                    what.parse::<RolloutEvent>(),
                    decode::<Rollout>(&message.payload, Encoding::Json),
                ) {
                    let Envelope { time, data, .. } = e;
                    history.rollout(what, &data, time.unwrap_or_else(Utc::now));
                }
            } else if let Some(what) = subject.strip_prefix(&incident_prefix)
                && let Ok(what) = what.parse::<IncidentEventKind>()
                && let Ok(e) = decode::<IncidentEvent>(&message.payload, Encoding::Json)
            {
                history.incident(what, &e.data);
            }
        }
        if let Some(last) = last {
            state.read_to(last);
        }
        Ok(())
    }

    /// The DORA figures for `query`, from the ledger brought up to date with the event
    /// stream; also set on `/metrics`.
    pub async fn dora(
        &self,
        query: &DoraQuery,
        gauges: &DoraGauges,
    ) -> Result<DoraReport, IntakeError> {
        let reasons = ledger::check(query);
        if !reasons.is_empty() {
            return Err(IntakeError::Rejected(reasons));
        }
        let mut state = self.dora.lock().await;
        self.catch_up(&mut state).await?;
        let now = Utc::now();
        state.prune(now);
        if let Some(report) = state.cached(query) {
            return Ok(report);
        }
        let report = state.records.report(query, now);
        state.keep(query, &report);
        drop(state);
        gauges.set(&report);
        Ok(report)
    }
}
