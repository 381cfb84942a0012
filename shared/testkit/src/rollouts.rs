//! Rollouts as a test sees them: the deploy tasks that start them, and the rollout
//! events the deployer publishes, kept in order to wait for and look back on.

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use toronto_protocol::Encoding;
use toronto_protocol::rollout::Rollout;
use toronto_protocol::tasks::{CanaryStep, DeployTask, ExecuteAccepted, PlanTask, Strategy};
use uuid::Uuid;

/// A deploy of `version` of `service` to `environment` (image
/// `registry.example/<service>:<version>`).
pub fn deploy_task(
    service: &str,
    version: &str,
    environment: &str,
    strategy: Strategy,
) -> PlanTask {
    PlanTask::Deploy(Box::new(DeployTask {
        service: service.into(),
        version: version.into(),
        image: Some(format!("registry.example/{service}:{version}")),
        environment: environment.into(),
        strategy,
        change: None,
        fix: false,
        policy_override: None,
    }))
}

/// A canary through `weights`, each step pausing `pause` seconds.
pub fn canary(weights: &[u8], pause: u64) -> Strategy {
    Strategy::Canary {
        steps: weights
            .iter()
            .map(|w| CanaryStep {
                weight: *w,
                pause_seconds: Some(pause),
            })
            .collect(),
    }
}

/// The rollout id in the reference of an accepted `rollout.start` (`rollout <id> ...`).
pub fn rollout_id(accepted: &ExecuteAccepted) -> Uuid {
    let reference = accepted.reference.as_deref().expect("a reference");
    reference
        .strip_prefix("rollout ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a rollout reference: {reference}"))
}

/// Every `events.rollout.<what>` on the bus, as `(what, rollout)`.
pub struct RolloutEvents {
    events: UnboundedReceiver<(String, Rollout)>,
    /// The events taken so far, in the order they arrived.
    pub seen: Vec<(String, Rollout)>,
}

impl RolloutEvents {
    /// Subscribes to the rollout events (under the `toronto` prefix); returns once the
    /// server has the subscription.
    pub async fn subscribe(client: &Client) -> Self {
        let mut sub = client
            .subscribe("toronto.devops.v1.events.rollout.>")
            .await
            .expect("subscribe to rollout events");
        toronto_runtime::service::confirm_subscriptions(client).await;
        let (tx, events) = unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let what = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
                if let Ok(e) = toronto_protocol::decode::<Rollout>(&m.payload, Encoding::Json) {
                    let _ = tx.send((what, e.data));
                }
            }
        });
        Self {
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for the event `rollout.<what>` of rollout `id` (or finds it among those
    /// seen); panics with the rollout's events so far when `within` passes first.
    pub async fn wait(&mut self, id: Uuid, what: &str, within: Duration) -> Rollout {
        if let Some((_, r)) = self.seen.iter().find(|(w, r)| w == what && r.id == id) {
            return r.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            let Ok(Some((w, r))) = next else {
                let seen: Vec<_> = self
                    .seen
                    .iter()
                    .filter(|(_, r)| r.id == id)
                    .map(|(w, r)| format!("{w}({:?} {:?})", r.phase, r.reason))
                    .collect();
                panic!("no rollout.{what} for {id} within {within:?}; saw {seen:?}");
            };
            self.seen.push((w.clone(), r.clone()));
            if w == what && r.id == id {
                return r;
            }
        }
    }

    /// The events of rollout `id` seen so far, in order.
    pub fn of(&self, id: Uuid) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(_, r)| r.id == id)
            .map(|(w, _)| w.clone())
            .collect()
    }
}
