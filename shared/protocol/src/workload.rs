//! Workload templates: the user's own pod template the deployer makes a service's
//! Deployments from (as Argo Rollouts' `workloadRef` does), registered with
//! `toronto.devops.v1.deployer.workload.put`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Message;

/// Registers the pod template a service's rollouts in an environment are made from
/// (`toronto.devops.v1.deployer.workload.put`): either the user's own Deployment to
/// adopt, or a pod template given here. Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPut {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The user's Deployment (applied by Helm, Kustomize, GitOps or kubectl) in the
    /// environment's namespace: its pod template is read now; it is scaled to 0 once a
    /// rollout of the service succeeds, and never deleted. Its name must not be one the
    /// deployer gives its own objects (`<service>`, `<service>-canary`, `-stable`,
    /// `-blue`, `-green`, `-preview`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// A Kubernetes `PodTemplateSpec` (JSON) to make the Deployments from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<serde_json::Value>,
}

impl Message for WorkloadPut {
    const NAME: &'static str = "workload.put";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;
}

/// A service's workload template as the deployer keeps it (the answer of
/// `workload.put`). Each Deployment the deployer makes for the service is this pod
/// template with only the image of the service's container (the one named after the
/// service, else the first) and the labels the deployer owns changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadTemplate {
    /// The service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The pod template (a Kubernetes `PodTemplateSpec`).
    pub pod_template: serde_json::Value,
    /// The user's Deployment it was read from, when adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<String>,
    /// The adopted Deployment's replicas when it was read: the service's first
    /// rollout runs as many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Who registered it (the verified principal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When.
    pub updated_at: DateTime<Utc>,
}

impl Message for WorkloadTemplate {
    const NAME: &'static str = "workload.template";
    const MAJOR: u32 = 1;
}
