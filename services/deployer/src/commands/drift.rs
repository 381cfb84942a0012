//! Drift between releases and the target, and the simulated cluster's faults.

use toronto_protocol::rollout::{
    Drift, DriftCheck, DriftReport, RolloutRef, SimFault, SimService, SimTamper,
};
use toronto_protocol::{Envelope, ErrorBody, ErrorCode};

use super::{bad, not_found};
use crate::engine::{Deployer, EngineError};

impl Deployer {
    /// `drift.check`: compares every release (or the one asked for) with the target;
    /// publishes `drift.detected` for each difference and remediates when asked.
    pub async fn drift_check(&self, q: &DriftCheck) -> Result<DriftReport, ErrorBody> {
        let remediate = q.remediate.unwrap_or(self.settings.drift_remediate);
        let releases = self.releases().await?;
        let mut checked = 0;
        let mut drifts: Vec<Drift> = Vec::new();
        for release in releases {
            let layout = &release.layout;
            if q.service.as_ref().is_some_and(|s| s != &layout.service)
                || q.environment
                    .as_ref()
                    .is_some_and(|e| e != &layout.environment)
            {
                continue;
            }
            if self
                .active(&layout.service, &layout.environment)
                .await?
                .is_some()
            {
                continue; // a rollout is changing it on purpose
            }
            checked += 1;
            let mut found = self.target.drift(layout).await.map_err(EngineError::from)?;
            if found.is_empty() {
                continue;
            }
            if remediate {
                self.target.apply(layout).await.map_err(EngineError::from)?;
                for d in &mut found {
                    d.remediated = true;
                }
            }
            for d in &found {
                let event = Envelope::builder(self.source.clone(), d.clone())
                    .subject(d.service.clone())
                    .build();
                if let Err(e) = self.events.publish("drift", "detected", &event).await {
                    tracing::error!(error = %e, "cannot publish drift event");
                }
            }
            drifts.extend(found);
        }
        if q.service.is_some() && q.environment.is_some() && checked == 0 && drifts.is_empty() {
            let (s, e) = (q.service.as_deref(), q.environment.as_deref());
            if self
                .release(s.unwrap_or_default(), e.unwrap_or_default())
                .await?
                .is_none()
            {
                return Err(not_found(format!(
                    "{} has never been deployed to {}",
                    s.unwrap_or_default(),
                    e.unwrap_or_default()
                )));
            }
        }
        Ok(DriftReport { checked, drifts })
    }

    fn sim(&self) -> Result<&crate::sim::SimCluster, ErrorBody> {
        self.sim.as_ref().ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotFound,
                "the deployer runs against Kubernetes: there is no simulated cluster",
            )
        })
    }

    /// `sim.fault`: injects faults into a version on the simulated cluster.
    pub async fn sim_fault(&self, f: SimFault) -> Result<SimService, ErrorBody> {
        self.sim()?
            .set_fault(f)
            .await
            .map_err(|e| bad(e.to_string()))
    }

    /// `sim.tamper`: an out-of-band change on the simulated cluster.
    pub async fn sim_tamper(&self, t: SimTamper) -> Result<SimService, ErrorBody> {
        self.sim()?.tamper(t).await.map_err(|e| bad(e.to_string()))
    }

    /// `sim.get`: the simulated cluster's view of a service.
    pub async fn sim_get(&self, q: &RolloutRef) -> Result<SimService, ErrorBody> {
        let (Some(s), Some(e)) = (q.service.as_deref(), q.environment.as_deref()) else {
            return Err(bad("sim.get needs `service` and `environment`"));
        };
        let sim = self.sim()?;
        let view = sim
            .get(s, e)
            .await
            .map_err(|e| ErrorBody::from(EngineError::from(e)))?;
        view.ok_or_else(|| {
            not_found(format!(
                "{s} is not deployed in {e} on the simulated cluster"
            ))
        })
    }
}

/// Adds, at 0 replicas, every workload of `before` that `layout` does not name.
pub(super) fn zero_missing(
    mut layout: crate::target::Layout,
    before: &crate::target::Layout,
) -> crate::target::Layout {
    for w in &before.workloads {
        if !layout.workloads.iter().any(|x| x.name == w.name) {
            let mut w = w.clone();
            w.replicas = 0;
            layout.workloads.push(w);
        }
    }
    layout
}
