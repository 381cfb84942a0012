//! Where rollouts land, behind one trait: Kubernetes ([`crate::kube`]) or the
//! simulated cluster ([`crate::sim`]).
//!
//! The rollout engine thinks in *layouts*: the whole desired state of one service in
//! one environment at one step (its workloads, their versions and replicas, and how
//! traffic is routed between them). A target turns a layout into its own objects
//! (Deployments, Services, an HTTPRoute; or simulated pods), reports their status, and
//! compares the live objects with a layout for drift. Applying the same layout twice
//! changes nothing (server-side apply); the `step_key` travels with it so that a
//! target can record which step produced what it runs.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use toronto_protocol::rollout::Drift;
use toronto_protocol::tasks::ChaosFault;

/// The role of a workload in a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Track {
    /// The version serving (all, or the rest of) the traffic.
    Stable,
    /// The canary.
    Canary,
    /// Blue-green: the blue colour.
    Blue,
    /// Blue-green: the green colour.
    Green,
}

impl Track {
    /// Its label value (`track` or `colour` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Canary => "canary",
            Self::Blue => "blue",
            Self::Green => "green",
        }
    }

    /// The other colour (blue-green); itself for canary tracks.
    pub fn other_colour(self) -> Self {
        match self {
            Self::Blue => Self::Green,
            Self::Green => Self::Blue,
            t => t,
        }
    }
}

/// One workload (a Deployment on Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Its name: `<svc>` (rolling, canary stable), `<svc>-canary`, `<svc>-blue`,
    /// `<svc>-green`.
    pub name: String,
    /// Its role.
    pub track: Track,
    /// The version its pods run.
    pub version: String,
    /// The image.
    pub image: String,
    /// Replicas wanted (0 keeps the object but no pods).
    pub replicas: u32,
}

/// How traffic reaches the workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Routing {
    /// One workload, replaced a few pods at a time; Service `<svc>`.
    Rolling {
        /// Pods above the wanted count during the update, e.g. `25%` or `1`.
        max_surge: String,
        /// Pods that may be unavailable during the update, e.g. `0`.
        max_unavailable: String,
    },
    /// Service `<svc>` selects the active colour, `<svc>-preview` the preview one.
    BlueGreen {
        /// The colour that serves users.
        active: Track,
        /// The colour behind the preview Service, if any.
        preview: Option<Track>,
    },
    /// Stable and canary workloads behind Service `<svc>`; `canary_weight` percent of
    /// traffic on the canary (by replica ratio, or by HTTPRoute weights where the
    /// target is configured for Gateway API).
    Canary {
        /// Percent of traffic on the canary, 0 to 100.
        canary_weight: u8,
    },
}

/// The whole desired state of one service in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The service (a DNS label).
    pub service: String,
    /// The environment (mapped to a namespace by the Kubernetes target).
    pub environment: String,
    /// Its workloads.
    pub workloads: Vec<Workload>,
    /// How traffic reaches them.
    pub routing: Routing,
    /// The step that produced this layout (`<rollout id>:<step id>`), recorded by the
    /// target (an annotation on Kubernetes).
    pub step_key: String,
    /// Seconds a workload may take to become ready before its rollout fails.
    pub progress_deadline_seconds: u32,
    /// The service's pod template (a Kubernetes `PodTemplateSpec`, registered with
    /// `workload.put`) its workloads are made from; `None`: the minimal spec (the
    /// image and one `http` port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<serde_json::Value>,
}

impl Layout {
    /// Percent of traffic on each version, as the routing decides it.
    pub fn traffic(&self) -> Vec<(String, u8)> {
        let by_track = |t: Track| self.workloads.iter().find(|w| w.track == t);
        match &self.routing {
            Routing::Rolling { .. } => self
                .workloads
                .first()
                .map(|w| vec![(w.version.clone(), 100)])
                .unwrap_or_default(),
            Routing::BlueGreen { active, .. } => by_track(*active)
                .map(|w| vec![(w.version.clone(), 100)])
                .unwrap_or_default(),
            Routing::Canary { canary_weight } => {
                let mut out = Vec::new();
                if let Some(stable) = by_track(Track::Stable)
                    && *canary_weight < 100
                {
                    out.push((stable.version.clone(), 100 - canary_weight));
                }
                if let Some(canary) = by_track(Track::Canary)
                    && *canary_weight > 0
                {
                    out.push((canary.version.clone(), *canary_weight));
                }
                out
            }
        }
    }
}

/// The live status of one workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Its name.
    pub name: String,
    /// The version it runs (from its pod template).
    pub version: String,
    /// Replicas wanted.
    pub replicas: u32,
    /// Replicas running the current pod template.
    pub updated: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Replicas available.
    pub available: u32,
    /// Why it cannot progress, when the target says so (e.g. Kubernetes'
    /// `ProgressDeadlineExceeded`, or a crash loop).
    pub failure: Option<String>,
}

impl WorkloadStatus {
    /// Whether every wanted replica runs the current template and is available.
    pub fn is_ready(&self) -> bool {
        self.updated >= self.replicas
            && self.ready >= self.replicas
            && self.available >= self.replicas
    }
}

/// The live status of a service's workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// One per workload that exists.
    pub workloads: Vec<WorkloadStatus>,
}

impl ServiceStatus {
    /// The status of a workload by name.
    pub fn workload(&self, name: &str) -> Option<&WorkloadStatus> {
        self.workloads.iter().find(|w| w.name == name)
    }
}

/// A target failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target could not be reached or answered with an error worth retrying.
    #[error("{target} is unavailable: {message}")]
    Unavailable {
        /// Which target.
        target: &'static str,
        /// What happened.
        message: String,
    },
    /// The target refused what was asked (a retry will not help).
    #[error("{target} refused: {message}")]
    Refused {
        /// Which target.
        target: &'static str,
        /// Why.
        message: String,
    },
}

/// A place rollouts land.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// `kubernetes` or `simulated`.
    fn kind(&self) -> &'static str;

    /// The namespace an environment's objects live in (analysis templates'
    /// `{{namespace}}`): the environment itself unless the target maps it.
    fn namespace_of(&self, environment: &str) -> String {
        environment.to_owned()
    }

    /// How it splits canary traffic: exactly (a traffic router; the default) or by
    /// replica ratio.
    fn traffic_split(&self) -> crate::engine::TrafficSplit {
        crate::engine::TrafficSplit::Exact
    }

    /// The pod template and the replicas of the user's Deployment `deployment` in an
    /// environment (to adopt it). Targets without Deployments refuse.
    async fn read_pod_template(
        &self,
        environment: &str,
        deployment: &str,
    ) -> Result<(serde_json::Value, Option<u32>), TargetError> {
        let _ = (environment, deployment);
        Err(TargetError::Refused {
            target: self.kind(),
            message: "it has no Deployments to adopt; register a pod_template instead".into(),
        })
    }

    /// Scales the user's adopted Deployment (never deletes it); a no-op where there
    /// is none.
    async fn scale_adopted(
        &self,
        environment: &str,
        deployment: &str,
        replicas: u32,
    ) -> Result<(), TargetError> {
        let _ = (environment, deployment, replicas);
        Ok(())
    }

    /// Makes the live state match `layout` (idempotent; objects of the service that
    /// the layout does not name are left alone).
    async fn apply(&self, layout: &Layout) -> Result<(), TargetError>;

    /// The live status of the named workloads of a service (missing ones are left out).
    async fn status(
        &self,
        service: &str,
        environment: &str,
        workloads: &[String],
    ) -> Result<ServiceStatus, TargetError>;

    /// Every managed field where the live objects differ from `layout`.
    async fn drift(&self, layout: &Layout) -> Result<Vec<Drift>, TargetError>;

    /// Creates what an environment needs (a namespace on Kubernetes).
    async fn provision_environment(&self, environment: &str) -> Result<(), TargetError>;

    /// Removes an environment and everything in it.
    async fn teardown_environment(&self, environment: &str) -> Result<(), TargetError>;

    /// Injects a chaos experiment's fault into the service's serving workloads.
    /// Targets refuse the faults they cannot produce.
    async fn inject(
        &self,
        service: &str,
        environment: &str,
        fault: &ChaosFault,
    ) -> Result<(), TargetError> {
        let _ = (service, environment);
        Err(TargetError::Refused {
            target: self.kind(),
            message: format!("cannot inject {fault:?}"),
        })
    }

    /// Removes what [`Target::inject`] put in (killed pods are not brought back: their
    /// controller replaces them).
    async fn clear(
        &self,
        service: &str,
        environment: &str,
        fault: &ChaosFault,
    ) -> Result<(), TargetError> {
        let _ = (service, environment, fault);
        Ok(())
    }
}
