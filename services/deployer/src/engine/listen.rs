//! What the deployer hears on the bus between analyses: firing alerts on a service
//! and failing continuous analyses of a rollout.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use toronto_protocol::analysis::{AnalysisOutcome, CanaryVerdict};

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
            let Ok(raw) =
                toronto_protocol::codec::from_json_bounded::<serde_json::Value>(&message.payload)
            else {
                continue;
            };
            let data = raw.get("data").cloned().unwrap_or_default();
            if is_alert {
                let label = |name: &str| {
                    data.get(name)
                        .or_else(|| data.get("labels").and_then(|l| l.get(name)))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                };
                let (Some(service), Some(environment)) = (label("service"), label("environment"))
                else {
                    continue;
                };
                let summary = label("summary")
                    .or_else(|| label("alertname"))
                    .or_else(|| label("slo"))
                    .unwrap_or_else(|| "alert".into());
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
                    &service,
                    &environment,
                    Heard {
                        at: Utc::now(),
                        rollout_id: None,
                        source: "alert",
                        verdict,
                    },
                );
            } else if let Ok(verdict) = serde_json::from_value::<CanaryVerdict>(data)
                && verdict.outcome == AnalysisOutcome::Fail
                && verdict.rollout_id.is_some()
            {
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
