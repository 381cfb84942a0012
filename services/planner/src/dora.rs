//! DORA metrics computed from the event stream (the stream is the record): deployment
//! frequency, lead time for changes, change failure rate and time to restore.
//!
//! A deployment is a completed deploy plan; its time is the event's `time`. Lead time
//! runs from the change's commit time to that. A deploy followed by a completed rollback
//! of the same service and environment within the failure window is a failed change,
//! and the rollback's completion is when service was restored. (Incident events will
//! add failures and restores when the incident commander publishes them.)

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use toronto_protocol::tasks::{DoraQuery, DoraReport, Plan, PlanTask};
use toronto_protocol::{Encoding, Envelope, decode};

use crate::intake::{IntakeError, Planner};

/// One completed plan, as the event stream recorded it.
#[derive(Debug, Clone)]
pub struct Completed {
    /// When it completed.
    pub at: DateTime<Utc>,
    /// The plan.
    pub plan: Plan,
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// The figures for `query` over completed plans (any order), as of `now`.
pub fn compute(query: &DoraQuery, completed: &[Completed], now: DateTime<Utc>) -> DoraReport {
    let environment = query
        .environment
        .clone()
        .unwrap_or_else(|| "production".into());
    let days = query.window_days.unwrap_or(30).max(1);
    let window_start = now - chrono::Duration::days(days as i64);
    let failure_window = chrono::Duration::hours(query.failure_window_hours.unwrap_or(24) as i64);
    let relevant = |c: &&Completed| {
        c.plan.task.environment() == environment
            && query
                .service
                .as_deref()
                .is_none_or(|s| c.plan.task.service() == s)
    };
    let mut deploys: Vec<&Completed> = completed
        .iter()
        .filter(relevant)
        .filter(|c| matches!(c.plan.task, PlanTask::Deploy(_)))
        .filter(|c| c.at >= window_start && c.at <= now)
        .collect();
    deploys.sort_by_key(|c| c.at);
    let rollbacks: Vec<&Completed> = completed
        .iter()
        .filter(relevant)
        .filter(|c| matches!(c.plan.task, PlanTask::Rollback(_)))
        .collect();

    let mut lead_times: Vec<f64> = deploys
        .iter()
        .filter_map(|c| match &c.plan.task {
            PlanTask::Deploy(d) => d
                .change
                .as_ref()
                .and_then(|ch| ch.commit_time)
                .map(|t| (c.at - t).num_milliseconds() as f64 / 1000.0),
            _ => None,
        })
        .filter(|s| *s >= 0.0)
        .collect();
    let mut restores = Vec::new();
    let mut failed = 0u64;
    for (i, deploy) in deploys.iter().enumerate() {
        // The failure window ends early when the next deploy of the service lands.
        let next = deploys[i + 1..]
            .iter()
            .find(|d| d.plan.task.service() == deploy.plan.task.service())
            .map(|d| d.at);
        let restored = rollbacks
            .iter()
            .filter(|r| r.plan.task.service() == deploy.plan.task.service())
            .filter(|r| r.at > deploy.at && r.at <= deploy.at + failure_window)
            .filter(|r| next.is_none_or(|n| r.at < n))
            .map(|r| r.at)
            .min();
        if let Some(at) = restored {
            failed += 1;
            restores.push((at - deploy.at).num_milliseconds() as f64 / 1000.0);
        }
    }
    let n = deploys.len() as u64;
    DoraReport {
        service: query.service.clone(),
        environment,
        window_start,
        window_end: now,
        deployments: n,
        deployment_frequency_per_day: n as f64 / days as f64,
        lead_time_mean_seconds: (!lead_times.is_empty())
            .then(|| lead_times.iter().sum::<f64>() / lead_times.len() as f64),
        lead_time_median_seconds: median(&mut lead_times),
        failed_changes: failed,
        change_failure_rate: (n > 0).then(|| failed as f64 / n as f64),
        time_to_restore_median_seconds: median(&mut restores),
    }
}

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
            "dora_deployments_per_day",
            "DORA deployment frequency over the last 30 days",
            g.frequency.clone(),
        );
        metrics.register(
            "dora_lead_time_seconds",
            "DORA lead time for changes (median, commit to completed deploy)",
            g.lead_time.clone(),
        );
        metrics.register(
            "dora_change_failure_rate",
            "DORA change failure rate (deploys followed by a rollback)",
            g.failure_rate.clone(),
        );
        metrics.register(
            "dora_time_to_restore_seconds",
            "DORA time to restore service (median, failed deploy to rollback)",
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
            .set(report.deployment_frequency_per_day);
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
    /// Completed plans recorded in the event stream since `since`.
    pub async fn completed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Completed>, IntakeError> {
        let stream = self
            .js
            .get_stream(self.subjects.events_stream())
            .await
            .map_err(|e| IntakeError::Events(e.into()))?;
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartTime { start_time: since },
                ack_policy: AckPolicy::None,
                filter_subject: self.subjects.event("plan", "completed"),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| IntakeError::Events(e.into()))?;
        let mut consumer = consumer;
        let pending = consumer
            .info()
            .await
            .map_err(|e| IntakeError::Events(e.into()))?
            .num_pending as usize;
        let mut out = Vec::with_capacity(pending);
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| IntakeError::Events(e.into()))?
            .take(pending);
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| IntakeError::Events(e.into()))?;
            if let Ok(event) = decode::<Plan>(&message.payload, Encoding::Json) {
                let Envelope { time, data, .. } = event;
                out.push(Completed {
                    at: time.unwrap_or_else(Utc::now),
                    plan: data,
                });
            }
        }
        Ok(out)
    }

    /// The DORA figures for `query`, from the event stream; also set on `/metrics`.
    pub async fn dora(
        &self,
        query: &DoraQuery,
        gauges: &DoraGauges,
    ) -> Result<DoraReport, IntakeError> {
        let now = Utc::now();
        let days = query.window_days.unwrap_or(30).max(1) as i64;
        let failure = query.failure_window_hours.unwrap_or(24) as i64;
        // Rollbacks can land after the window's first deploys: read a little earlier.
        let since = now - chrono::Duration::days(days) - chrono::Duration::hours(failure);
        let completed = self.completed_since(since).await?;
        let report = compute(query, &completed, now);
        gauges.set(&report);
        Ok(report)
    }
}
