//! Replicas of the monitor: every replica ingests every metric and answers every
//! request; the owner of the lease `monitor` alone writes SLO statuses and publishes
//! alerts.
//!
//! - Ingestion: metrics on the bus arrive on a core subscription (not a queue group),
//!   so every replica holds every sample; scraping and probes run on every replica.
//! - Requests need no owner: `canary.analyze` reads the replica's own full store,
//!   `slo.get` reads the status bucket, and every replica follows the definitions
//!   bucket, so an SLO put through one replica is evaluated by all.
//! - Evaluation runs on every replica (so a standby's burn-rate history and alert
//!   states are those of the owner), but only the owner writes statuses and publishes
//!   the alerts and budget events ([`Announcer`]). The owner records which alerts it
//!   announced firing (`_firing.<fingerprint>` in the status bucket); a replica that
//!   takes over announces the alerts it sees firing that the last owner had not, and
//!   the resolutions of those it had, so no alert is lost in a takeover.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_protocol::alerts::{Alert, AlertStatus};
use toronto_protocol::status::LeaseRole;
use toronto_protocol::{Envelope, Priority};
use toronto_runtime::jetstream::Events;
use toronto_runtime::lease::LeaseWatch;

use crate::evaluate::SloEngine;

/// The lease's name (its key in `<prefix>_leases`).
pub const LEASE: &str = "monitor";

/// Where the owner records an alert it announced firing (in the status bucket).
const FIRING_PREFIX: &str = "_firing.";

/// Publishes alerts on the owner only, and keeps what a successor needs.
#[derive(Debug, Clone)]
pub struct Announcer {
    lease: LeaseWatch,
    events: Events,
    source: String,
    status: kv::Store,
    /// The latest transition of every alert this replica has seen, by fingerprint.
    latest: Arc<Mutex<BTreeMap<String, Alert>>>,
}

impl Announcer {
    /// An announcer for this replica's `lease`, recording in the `status` bucket.
    pub fn new(lease: LeaseWatch, events: Events, source: String, status: kv::Store) -> Self {
        Self {
            lease,
            events,
            source,
            status,
            latest: Arc::default(),
        }
    }

    /// Whether this replica owns the lease now.
    pub fn is_owner(&self) -> bool {
        self.lease.is_owner()
    }

    /// Alerts that fired or resolved here: kept, and announced when this replica owns
    /// the lease.
    pub async fn transitions(&self, alerts: Vec<Alert>) {
        for alert in alerts {
            self.latest
                .lock()
                .expect("alerts lock")
                .insert(alert.fingerprint.clone(), alert.clone());
            if self.lease.is_owner() {
                self.announce(alert).await;
            }
        }
    }

    async fn announce(&self, alert: Alert) {
        let key = format!("{FIRING_PREFIX}{}", alert.fingerprint);
        let recorded = match alert.status {
            AlertStatus::Firing => self
                .status
                .put(&key, Default::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            AlertStatus::Resolved => self.status.purge(&key).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = recorded {
            tracing::warn!(key, error = %e, "cannot record an announced alert");
        }
        publish_alert(&self.events, &self.source, alert).await;
    }

    /// On taking over: announces what the last owner left unsaid (alerts firing here
    /// that it had not announced, resolutions of alerts it had).
    pub async fn take_over(&self) {
        let announced: std::collections::BTreeSet<String> = match self.status.keys().await {
            Ok(keys) => {
                keys.filter_map(|k| async move { k.ok() })
                    .filter_map(|k| async move { k.strip_prefix(FIRING_PREFIX).map(str::to_owned) })
                    .collect()
                    .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the announced alerts; announcing every firing one");
                Default::default()
            }
        };
        let latest: Vec<Alert> = self
            .latest
            .lock()
            .expect("alerts lock")
            .values()
            .cloned()
            .collect();
        for alert in latest {
            let said = announced.contains(&alert.fingerprint);
            match alert.status {
                AlertStatus::Firing if !said => self.announce(alert).await,
                AlertStatus::Resolved if said => self.announce(alert).await,
                _ => {}
            }
        }
    }
}

/// Publishes an alert as `alert.firing` or `alert.resolved` (priority high for a firing
/// page), subject its `service` label.
pub async fn publish_alert(events: &Events, source: &str, alert: Alert) {
    let severity = alert.labels.get("severity").cloned().unwrap_or_default();
    let (what, priority) = match (alert.status, severity.as_str()) {
        (AlertStatus::Firing, "page") => ("firing", Priority::High),
        (AlertStatus::Firing, _) => ("firing", Priority::Normal),
        (AlertStatus::Resolved, _) => ("resolved", Priority::Normal),
    };
    let name = alert.labels.get("alertname").cloned().unwrap_or_default();
    tracing::info!(alert = name, severity, what, fingerprint = %alert.fingerprint, "alert");
    let mut envelope = Envelope::builder(source.to_owned(), alert.clone()).priority(priority);
    if let Some(service) = alert.labels.get("service") {
        envelope = envelope.subject(service.clone());
    }
    if let Err(e) = events.publish("alert", what, &envelope.build()).await {
        tracing::warn!(alert = name, error = %e, "cannot publish an alert");
    }
}

/// Announces what the last owner left unsaid every time this replica takes the lease.
pub async fn follow_takeovers(
    announcer: Announcer,
    shutdown: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let mut lease = announcer.lease.subscribe();
    loop {
        tokio::select! {
            owned = lease.wait_for(|s| s.role == LeaseRole::Owner) => if owned.is_err() { return Ok(()) },
            _ = shutdown.cancelled() => return Ok(()),
        }
        announcer.take_over().await;
        tokio::select! {
            _ = lease.wait_for(|s| s.role != LeaseRole::Owner) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Follows the definitions bucket (the SLOs put through any replica) into `engine`.
pub async fn follow_definitions(
    definitions: kv::Store,
    engine: SloEngine,
    shutdown: CancellationToken,
) -> Result<(), kv::WatchError> {
    let mut watch = definitions.watch_with_history(">").await?;
    loop {
        let entry = tokio::select! {
            e = watch.next() => e,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(entry) = entry else { return Ok(()) };
        let Ok(entry) = entry else { continue };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        match crate::slo::parse(&String::from_utf8_lossy(&entry.value)) {
            Ok(slo) => {
                engine.put(slo);
            }
            Err(e) => tracing::warn!(key = entry.key, error = %e, "a stored SLO no longer parses"),
        }
    }
}

/// Evaluates every SLO every `interval` on every replica; the owner writes each status
/// to the status bucket and publishes the alert transitions and `slo.budget.exhausted`.
pub async fn evaluation_loop(
    engine: SloEngine,
    status: kv::Store,
    announcer: Announcer,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        for evaluation in engine.evaluate_all().await {
            let s = &evaluation.status;
            let key = format!("{}.{}", s.service, s.slo);
            if announcer.is_owner() {
                match serde_json::to_vec(s) {
                    Ok(bytes) => {
                        if let Err(e) = status.put(&key, bytes.into()).await {
                            tracing::warn!(key, error = %e, "cannot write an SLO status");
                        }
                    }
                    Err(e) => tracing::warn!(key, error = %e, "cannot encode an SLO status"),
                }
            }
            announcer.transitions(evaluation.transitions).await;
            if evaluation.newly_exhausted && announcer.is_owner() {
                let envelope = Envelope::builder(announcer.source.clone(), s.clone())
                    .subject(s.service.clone())
                    .priority(Priority::High)
                    .build();
                if let Err(e) = announcer
                    .events
                    .publish("slo", "budget.exhausted", &envelope)
                    .await
                {
                    tracing::warn!(key, error = %e, "cannot publish budget exhaustion");
                }
            }
        }
    }
}
