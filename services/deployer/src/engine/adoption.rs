//! The user's adopted Deployment (registered with `workload.put`) during the rollout
//! that takes its traffic over, as Argo Rollouts' `workloadRef` does: it serves until
//! the rollout's own pods are ready, is then scaled to zero (never deleted), and is
//! scaled back up when that rollout is aborted or fails, before the rollout's pods
//! stop, so that the service keeps serving.
//!
//! The rollout that takes over is one with no release of the deployer's before it
//! (`before` is `None`): until it succeeds, the user's Deployment is what serves. A
//! later rollout has the deployer's own release to go back to, and leaves the user's
//! Deployment at zero (a rollout's success scales it to zero in any case).

use toronto_protocol::rollout::Rollout;

use super::{Deployer, Release};
use crate::target::TargetError;

impl Deployer {
    /// The user's Deployment that `r` takes the traffic over from, if any.
    async fn taken_over(&self, r: &Rollout, before: Option<&Release>) -> Option<String> {
        if before.is_some() {
            return None;
        }
        match self.workload(&r.service, &r.environment).await {
            Ok(w) => w.and_then(|w| w.adopted),
            Err(e) => {
                tracing::warn!(rollout = %r.id, error = %e, "cannot read the service's workload template");
                None
            }
        }
    }

    /// The pods of `r`'s step are ready: the user's adopted Deployment hands its
    /// traffic over (scaled to zero). A failure is logged; the rollout's success
    /// scales it down again.
    pub(super) async fn hand_over_adopted(&self, r: &Rollout, before: Option<&Release>) {
        let Some(name) = self.taken_over(r, before).await else {
            return;
        };
        match self.target.scale_adopted(&r.environment, &name, 0).await {
            Ok(()) => {
                tracing::info!(rollout = %r.id, deployment = name, "the rollout's pods are ready: the adopted Deployment is scaled to 0");
            }
            Err(e) => {
                tracing::warn!(rollout = %r.id, deployment = name, error = %e, "cannot scale the adopted Deployment down");
            }
        }
    }

    /// `r` is rolled back: the user's adopted Deployment it took the traffic from is
    /// scaled back up to the replicas the rollout ran (those of the user's Deployment
    /// when it was adopted). `false` when the API server is unreachable, so that the
    /// rollback is tried again rather than leave nothing serving; a refusal (the
    /// Deployment was deleted) is logged and the rollback goes on.
    pub(super) async fn restore_adopted(&self, r: &Rollout, before: Option<&Release>) -> bool {
        let Some(name) = self.taken_over(r, before).await else {
            return true;
        };
        let replicas = r.replicas.max(1);
        match self
            .target
            .scale_adopted(&r.environment, &name, replicas)
            .await
        {
            Ok(()) => {
                tracing::info!(rollout = %r.id, deployment = name, replicas, "rolled back: the adopted Deployment is scaled back up");
                true
            }
            Err(TargetError::Unavailable { message, .. }) => {
                tracing::warn!(rollout = %r.id, deployment = name, message, "cannot scale the adopted Deployment back up yet; retrying");
                false
            }
            Err(e) => {
                tracing::error!(rollout = %r.id, deployment = name, error = %e, "cannot scale the adopted Deployment back up");
                true
            }
        }
    }
}
