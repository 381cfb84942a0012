//! What the deployer hears on the bus between analyses: firing alerts on a service
//! and failing continuous analyses of a rollout.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use toronto_protocol::alerts::Alert;
use toronto_protocol::analysis::{AnalysisOutcome, CanaryVerdict};
use toronto_runtime::service::decode_message;

use super::{Deployer, EngineError, Heard};

impl Deployer {
    /// Records a failing verdict or a firing alert heard on the bus, and wakes the
    /// service's pausing rollout to judge it.
    pub(crate) fn hear(&self, service: &str, environment: &str, heard: Heard) {
        {
            let mut map = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            let list = map
                .entry((service.to_owned(), environment.to_owned()))
                .or_default();
            list.push(heard);
            let excess = list.len().saturating_sub(50);
            list.drain(..excess);
        }
        // One permit is kept when nobody waits: the next pause ends at once, and the
        // pass before it reads what was heard.
        self.waker(service, environment).notify_one();
    }

    /// Listens for alerts on services and failing continuous analyses until shutdown.
    pub(crate) async fn listen(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        use futures::StreamExt;
        let root = format!("{}.events", self.subjects.devops_root());
        let mut alerts = self
            .client
            .subscribe(format!("{root}.alert.firing"))
            .await?;
        let mut results = self
            .client
            .subscribe(format!("{root}.analysis.result"))
            .await?;
        toronto_runtime::service::confirm_subscriptions(&self.client).await;
        loop {
            let (message, is_alert) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.crash.cancelled() => return Ok(()),
                Some(m) = alerts.next() => (m, true),
                Some(m) = results.next() => (m, false),
                else => return Ok(()),
            };
            let headers = message.headers.as_ref();
            if is_alert {
                // Typed and bounded, in whichever encoding or content mode it came.
                let Ok(alert) = decode_message::<Alert>(headers, &message.payload) else {
                    continue;
                };
                let alert = alert.data;
                let (Some(service), Some(environment)) =
                    (alert.labels.get("service"), alert.labels.get("environment"))
                else {
                    continue;
                };
                let summary = alert
                    .annotations
                    .get("summary")
                    .or_else(|| alert.labels.get("alertname"))
                    .or_else(|| alert.labels.get("slo"))
                    .map_or("alert", String::as_str);
                let verdict = CanaryVerdict {
                    service: service.clone(),
                    environment: environment.clone(),
                    rollout_id: None,
                    outcome: AnalysisOutcome::Fail,
                    reason: format!("alert firing on {service} in {environment}: {summary}"),
                    metrics: Vec::new(),
                    analyzed_at: Utc::now(),
                };
                self.hear(
                    service,
                    environment,
                    Heard {
                        at: Utc::now(),
                        rollout_id: None,
                        source: "alert",
                        verdict,
                    },
                );
            } else if let Ok(verdict) = decode_message::<CanaryVerdict>(headers, &message.payload)
                && verdict.data.outcome == AnalysisOutcome::Fail
                && verdict.data.rollout_id.is_some()
            {
                let verdict = verdict.data;
                let (service, environment) = (verdict.service.clone(), verdict.environment.clone());
                self.hear(
                    &service,
                    &environment,
                    Heard {
                        at: Utc::now(),
                        rollout_id: verdict.rollout_id,
                        source: "monitor",
                        verdict,
                    },
                );
            }
        }
    }
}
