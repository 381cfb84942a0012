//! The Kubernetes target: layouts become Deployments, Services and (for canary behind
//! a Gateway) an HTTPRoute, applied with server-side apply.
//!
//! - Rolling: Deployment `<svc>` (`RollingUpdate` with the layout's `maxSurge` and
//!   `maxUnavailable`), Service `<svc>`.
//! - Blue-green: Deployments `<svc>-blue` and `<svc>-green`; Service `<svc>` selects
//!   `colour=<active>`, Service `<svc>-preview` the preview colour. Promotion is the
//!   engine applying a layout with `active` switched: the one request whose body
//!   changes is the active Service's selector.
//! - Canary: Deployments `<svc>` (`track=stable`) and `<svc>-canary` (`track=canary`)
//!   with the layout's replicas. Without a Gateway, Service `<svc>` selects both and
//!   traffic follows the replica ratio. With `TORONTO_DEPLOYER_GATEWAY`, HTTPRoute
//!   `<svc>` (Gateway API v1) weighs Services `<svc>-stable` and `<svc>-canary`.
//!
//! Every apply is a server-side apply with field manager `toronto-deployer`
//! (forced), so applying a layout twice changes nothing and applying the previous
//! layout is a rollback. Deployments keep `revisionHistoryLimit` old ReplicaSets, so
//! a rollback to a recent version reuses its ReplicaSet.

mod adopt;
mod manifests;
mod pod_template;
mod routes;
mod settings;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use toronto_protocol::rollout::Drift;
use toronto_protocol::tasks::ChaosFault;

pub use manifests::{
    ANNOTATION_ENVIRONMENT, ANNOTATION_STEP, FIELD_MANAGER, InvalidLayout, LABEL_COLOUR,
    LABEL_MANAGED_BY, LABEL_NAME, LABEL_TRACK, LABEL_VERSION, Manifest, int_or_percent,
    manifest_list, manifests, namespace_manifest, track_label,
};
pub use pod_template::{
    MAX_POD_TEMPLATE_BYTES, adopted as adopted_pod_template, parse_pod_template,
};
pub use routes::{http_route_resource, virtual_service_resource};
pub use settings::{GatewayRef, KUBE_VARS, KubeSettings, Mesh};

use crate::target::{Layout, ServiceStatus, Target, TargetError, WorkloadStatus};

const TARGET: &str = "kubernetes";

/// The Kubernetes target.
#[derive(Clone)]
pub struct KubeTarget {
    client: kube::Client,
    settings: KubeSettings,
}

impl std::fmt::Debug for KubeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTarget")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KubeTarget {
    /// A target on the given client (a real one, or kube's mock service in tests).
    pub fn new(client: kube::Client, settings: KubeSettings) -> Self {
        Self { client, settings }
    }

    /// A target whose client is inferred from the environment: `KUBECONFIG` (or
    /// `~/.kube/config`), else the in-cluster service account.
    pub async fn infer(settings: KubeSettings) -> Result<Self, TargetError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| TargetError::Unavailable {
                target: TARGET,
                message: format!("no Kubernetes client configuration: {e}"),
            })?;
        Ok(Self::new(client, settings))
    }

    /// Health check: asks the API server for its version (`GET /version`) and
    /// returns it, e.g. `v1.35.0`.
    pub async fn check(&self) -> Result<String, TargetError> {
        self.call("get /version", self.client.apiserver_version())
            .await
            .map(|info| info.git_version)
    }

    /// Its settings.
    pub fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    /// The objects that realise `layout` (what [`Target::apply`] sends).
    pub fn manifests(&self, layout: &Layout) -> Result<Vec<Manifest>, TargetError> {
        manifests(layout, &self.settings).map_err(|e| refused(e.to_string()))
    }

    fn namespace(&self, environment: &str) -> Result<String, TargetError> {
        self.settings.namespace_for(environment).map_err(refused)
    }

    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, TargetError> {
        match tokio::time::timeout(self.settings.timeout, fut).await {
            Err(_) => Err(self.timed_out(what)),
            Ok(result) => result.map_err(|e| map_error(what, e)),
        }
    }

    fn timed_out(&self, what: &str) -> TargetError {
        TargetError::Unavailable {
            target: TARGET,
            message: format!(
                "{what}: no answer within {} s",
                self.settings.timeout.as_secs_f64()
            ),
        }
    }

    async fn apply_one(&self, ns: &str, manifest: &Manifest) -> Result<(), TargetError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let name = manifest.name();
        let what = if ns.is_empty() {
            format!("apply {}", manifest.object_ref())
        } else {
            format!("apply {} in {ns}", manifest.object_ref())
        };
        match manifest {
            Manifest::Deployment(o) => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
                self.call(&what, api.patch(name, &params, &Patch::Apply(o)))
                    .await
                    .map(drop)
            }
            Manifest::Service(o) => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
                self.call(&what, api.patch(name, &params, &Patch::Apply(o)))
                    .await
                    .map(drop)
            }
            Manifest::HttpRoute(o) => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), ns, &http_route_resource());
                let applied = tokio::time::timeout(
                    self.settings.timeout,
                    api.patch(name, &params, &Patch::Apply(o)),
                )
                .await;
                match applied {
                    Err(_) => Err(self.timed_out(&what)),
                    // The namespace exists (the Services were just applied), so a 404
                    // here means the cluster does not serve HTTPRoute v1.
                    Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                        Err(refused(format!(
                            "{what}: 404 {}: is the Gateway API installed? TORONTO_DEPLOYER_GATEWAY needs HTTPRoute gateway.networking.k8s.io/v1",
                            status.message
                        )))
                    }
                    Ok(result) => result.map(drop).map_err(|e| map_error(&what, e)),
                }
            }
            Manifest::VirtualService(o) => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), ns, &virtual_service_resource());
                match self
                    .call(&what, api.patch(name, &params, &Patch::Apply(o)))
                    .await
                {
                    // The namespace exists (the Services were just applied), so a 404
                    // means the cluster does not serve VirtualService v1.
                    Err(TargetError::Refused { message, .. }) if message.contains(": 404") => {
                        Err(refused(format!(
                            "{message}: is Istio installed? TORONTO_DEPLOYER_MESH=istio needs VirtualService networking.istio.io/v1"
                        )))
                    }
                    other => other.map(drop),
                }
            }
            Manifest::Namespace(o) => {
                let api: Api<Namespace> = Api::all(self.client.clone());
                self.call(&what, api.patch(name, &params, &Patch::Apply(o)))
                    .await
                    .map(drop)
            }
        }
    }
}

#[async_trait]
impl Target for KubeTarget {
    fn kind(&self) -> &'static str {
        TARGET
    }

    async fn read_pod_template(
        &self,
        environment: &str,
        deployment: &str,
    ) -> Result<(serde_json::Value, Option<u32>), TargetError> {
        self.read_deployment_template(environment, deployment).await
    }

    async fn scale_adopted(
        &self,
        environment: &str,
        deployment: &str,
        replicas: u32,
    ) -> Result<(), TargetError> {
        self.scale_deployment(environment, deployment, replicas)
            .await
    }

    fn traffic_split(&self) -> crate::engine::TrafficSplit {
        if self.settings.gateway.is_some() || self.settings.mesh.is_some() {
            crate::engine::TrafficSplit::Exact
        } else {
            crate::engine::TrafficSplit::ReplicaRatio
        }
    }

    fn namespace_of(&self, environment: &str) -> String {
        self.namespace(environment)
            .unwrap_or_else(|_| environment.to_owned())
    }

    async fn apply(&self, layout: &Layout) -> Result<(), TargetError> {
        let ns = self.namespace(&layout.environment)?;
        for manifest in self.manifests(layout)? {
            self.apply_one(&ns, &manifest).await?;
        }
        Ok(())
    }

    async fn status(
        &self,
        _service: &str,
        environment: &str,
        workloads: &[String],
    ) -> Result<ServiceStatus, TargetError> {
        let ns = self.namespace(environment)?;
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let mut out = ServiceStatus::default();
        for name in workloads {
            let what = format!("get Deployment/{name} in {ns}");
            if let Some(d) = self.call(&what, api.get_opt(name)).await? {
                out.workloads.push(workload_status(name, &d));
            }
        }
        Ok(out)
    }

    async fn drift(&self, layout: &Layout) -> Result<Vec<Drift>, TargetError> {
        let ns = self.namespace(&layout.environment)?;
        let mut out = Vec::new();
        for desired in self.manifests(layout)? {
            let object = desired.object_ref();
            let what = format!("get {object} in {ns}");
            let name = desired.name().to_string();
            let mut diffs: Vec<(String, Value, Value)> = Vec::new();
            let found = match &desired {
                Manifest::Deployment(want) => {
                    let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
                    self.call(&what, api.get_opt(&name))
                        .await?
                        .map(|live| diffs = deployment_diffs(&layout.service, want, &live))
                }
                Manifest::Service(want) => {
                    let api: Api<Service> = Api::namespaced(self.client.clone(), &ns);
                    self.call(&what, api.get_opt(&name))
                        .await?
                        .map(|live| diffs = service_diffs(want, &live))
                }
                Manifest::HttpRoute(want) | Manifest::VirtualService(want) => {
                    let resource = if matches!(desired, Manifest::HttpRoute(_)) {
                        http_route_resource()
                    } else {
                        virtual_service_resource()
                    };
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(self.client.clone(), &ns, &resource);
                    self.call(&what, api.get_opt(&name))
                        .await?
                        .map(|live| diffs = routes::route_diffs(want, &live))
                }
                Manifest::Namespace(_) => Some(()),
            };
            if found.is_none() {
                diffs.push(("metadata.name".into(), json!(name), Value::Null));
            }
            out.extend(diffs.into_iter().map(|(field, desired, live)| Drift {
                service: layout.service.clone(),
                environment: layout.environment.clone(),
                object: object.clone(),
                field,
                desired,
                live,
                remediated: false,
            }));
        }
        Ok(out)
    }

    async fn provision_environment(&self, environment: &str) -> Result<(), TargetError> {
        let ns = namespace_manifest(environment, &self.settings).map_err(refused)?;
        let ns = Manifest::Namespace(Box::new(ns));
        self.apply_one("", &ns).await
    }

    /// Only `pod_kill` on Kubernetes: it deletes that many of the service's pods (their
    /// ReplicaSets replace them). Error rates, latency and crash loops need a fault
    /// injection layer (a mesh) that this target does not drive.
    async fn inject(
        &self,
        service: &str,
        environment: &str,
        fault: &ChaosFault,
    ) -> Result<(), TargetError> {
        let ChaosFault::PodKill { count } = fault else {
            return Err(refused(format!(
                "{fault:?} needs a fault-injection layer; on Kubernetes only pod_kill is supported"
            )));
        };
        let ns = self.namespace(environment)?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let selector = format!("{LABEL_NAME}={service}");
        let pods = self
            .call(
                &format!("list Pods {selector} in {ns}"),
                api.list(&ListParams::default().labels(&selector)),
            )
            .await?;
        let victims: Vec<String> = pods
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .take(*count as usize)
            .collect();
        if victims.is_empty() {
            return Err(refused(format!("no pods of {service} in {ns} to kill")));
        }
        for name in victims {
            self.call(
                &format!("delete Pod/{name}"),
                api.delete(&name, &DeleteParams::default()),
            )
            .await?;
        }
        Ok(())
    }

    async fn teardown_environment(&self, environment: &str) -> Result<(), TargetError> {
        let ns = self.namespace(environment)?;
        let api: Api<Namespace> = Api::all(self.client.clone());
        let Some(live) = self
            .call(&format!("get Namespace/{ns}"), api.get_opt(&ns))
            .await?
        else {
            return Ok(());
        };
        let managed = live
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_some_and(|v| v == FIELD_MANAGER);
        if !managed {
            return Err(refused(format!(
                "namespace {ns} (environment {environment}) is not labelled {LABEL_MANAGED_BY}={FIELD_MANAGER}; not deleting what the deployer did not create"
            )));
        }
        // Delete exactly the namespace we looked at, not one recreated since.
        let params = DeleteParams {
            preconditions: live.metadata.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let what = format!("delete Namespace/{ns}");
        match tokio::time::timeout(self.settings.timeout, api.delete(&ns, &params)).await {
            Err(_) => Err(self.timed_out(&what)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(status))) if status.is_not_found() => Ok(()),
            Ok(Err(e)) => Err(map_error(&what, e)),
        }
    }
}

fn refused(message: impl Into<String>) -> TargetError {
    TargetError::Refused {
        target: TARGET,
        message: message.into(),
    }
}

/// Maps a kube error: connection problems, 429 and 5xx are `Unavailable` (worth a
/// retry), other 4xx are `Refused` with the API server's message.
pub fn map_error(what: &str, err: kube::Error) -> TargetError {
    match err {
        kube::Error::Api(status) => {
            let detail = if status.reason.is_empty() {
                format!("{}: {}", status.code, status.message)
            } else {
                format!("{} {}: {}", status.code, status.reason, status.message)
            };
            let message = format!("{what}: {detail}");
            if status.code == 429 || status.code >= 500 || status.code == 0 {
                TargetError::Unavailable {
                    target: TARGET,
                    message,
                }
            } else {
                refused(message)
            }
        }
        e @ (kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::Auth(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::RustlsTls(_)) => TargetError::Unavailable {
            target: TARGET,
            message: format!("{what}: {e}"),
        },
        e => refused(format!("{what}: {e}")),
    }
}

fn to_u32(n: Option<i32>) -> u32 {
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// The status of one Deployment, read the way `kubectl rollout status` reads it:
///
/// - Until the controller has observed the latest spec (`status.observedGeneration`
///   below `metadata.generation`), nothing counts as updated and no failure is
///   reported (a `ProgressDeadlineExceeded` left from the previous spec is stale).
/// - `ready` and `available` count pods of the current template only, as a lower
///   bound: while pods of old ReplicaSets remain (`status.replicas` above
///   `updatedReplicas`), those are subtracted, since they may be the ones counted
///   ready.
/// - Condition `Progressing=False` with reason `ProgressDeadlineExceeded` is a
///   failure.
pub fn workload_status(name: &str, d: &Deployment) -> WorkloadStatus {
    let spec = d.spec.as_ref();
    let status = d.status.as_ref();
    let replicas = spec.map_or(1, |s| to_u32(Some(s.replicas.unwrap_or(1))));
    let version = spec
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(LABEL_VERSION))
        .cloned()
        .unwrap_or_default();
    let observed = match (
        d.metadata.generation,
        status.and_then(|s| s.observed_generation),
    ) {
        (Some(generation), Some(seen)) => seen >= generation,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let total = to_u32(status.and_then(|s| s.replicas));
    let updated = if observed {
        to_u32(status.and_then(|s| s.updated_replicas))
    } else {
        0
    };
    let old = total.saturating_sub(updated);
    let ready = to_u32(status.and_then(|s| s.ready_replicas)).saturating_sub(old);
    let available = to_u32(status.and_then(|s| s.available_replicas)).saturating_sub(old);
    let failure = if observed {
        status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter().find(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
            })
            .map(|c| {
                format!(
                    "ProgressDeadlineExceeded: {}",
                    c.message
                        .as_deref()
                        .unwrap_or("the rollout made no progress in time")
                )
            })
    } else {
        None
    };
    WorkloadStatus {
        name: name.to_string(),
        version,
        replicas,
        updated,
        ready,
        available,
        failure,
    }
}

/// The image of the service's container: the one named after it, else the first (as
/// an adopted pod template is filled).
fn container_image(d: &Deployment, container: &str) -> Value {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| {
            p.containers
                .iter()
                .find(|c| c.name == container)
                .or_else(|| p.containers.first())
        })
        .and_then(|c| c.image.clone())
        .map_or(Value::Null, Value::String)
}

fn deployment_diffs(
    container: &str,
    want: &Deployment,
    live: &Deployment,
) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    let replicas = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.replicas)
            .map_or(Value::Null, |r| json!(r))
    };
    let (w, l) = (replicas(want), replicas(live));
    if w != l {
        out.push(("spec.replicas".to_string(), w, l));
    }
    let (w, l) = (
        container_image(want, container),
        container_image(live, container),
    );
    if w != l {
        out.push((
            format!("spec.template.spec.containers[name={container}].image"),
            w,
            l,
        ));
    }
    out
}

fn service_diffs(want: &Service, live: &Service) -> Vec<(String, Value, Value)> {
    let selector = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .map_or(Value::Null, |sel| json!(sel))
    };
    let (w, l) = (selector(want), selector(live));
    if w == l {
        Vec::new()
    } else {
        vec![("spec.selector".to_string(), w, l)]
    }
}
