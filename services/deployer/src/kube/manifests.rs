//! Pure builders: a [`Layout`] in, the Kubernetes objects that realise it out.
//!
//! Nothing here talks to a cluster, so the manifests can be printed, diffed and
//! validated (`kubectl apply --dry-run=client`). What the objects look like:
//!
//! - Every object carries `app.kubernetes.io/name=<svc>`,
//!   `app.kubernetes.io/managed-by=toronto-deployer`, a `track` (stable, canary) or
//!   `colour` (blue, green) label where it belongs to one, and the annotation
//!   `toronto.dev/step=<step_key>` naming the step that applied it. The step
//!   annotation is on the objects' own metadata only, never in a pod template, so a
//!   new step does not restart pods.
//! - A Deployment selects `app.kubernetes.io/name` plus its `track` or `colour`
//!   label. That selector never changes for a given Deployment name (the API refuses
//!   selector changes), so Deployment `<svc>` can move between rolling and canary.
//! - The pod template carries `app.kubernetes.io/version=<version>`, read back by
//!   `status`; one container named `<svc>` with a port named `http`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, PodSpec, PodTemplateSpec, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use serde_json::json;

use super::routes;
use super::settings::{KubeSettings, Mesh, check_dns_label, check_label_value};
use crate::target::{Layout, Routing, Track, Workload};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "toronto-deployer";
/// Label: the service an object belongs to.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label: who manages the object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: the version a pod template runs.
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
/// Label: the canary track (`stable`, `canary`).
pub const LABEL_TRACK: &str = "track";
/// Label: the blue-green colour (`blue`, `green`).
pub const LABEL_COLOUR: &str = "colour";
/// Annotation: the step (`<rollout id>:<step id>`) that applied the object.
pub const ANNOTATION_STEP: &str = "toronto.dev/step";
/// Annotation on a namespace: the environment it holds.
pub const ANNOTATION_ENVIRONMENT: &str = "toronto.dev/environment";

/// One object the target applies.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// An environment's namespace.
    Namespace(Box<Namespace>),
    /// A workload.
    Deployment(Box<Deployment>),
    /// A Service.
    Service(Box<Service>),
    /// A Gateway API HTTPRoute (canary weights).
    HttpRoute(Box<DynamicObject>),
    /// An Istio VirtualService (canary weights).
    VirtualService(Box<DynamicObject>),
}

impl Manifest {
    /// Its kind, e.g. `Deployment`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::Deployment(_) => "Deployment",
            Self::Service(_) => "Service",
            Self::HttpRoute(_) => "HTTPRoute",
            Self::VirtualService(_) => "VirtualService",
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        let meta = match self {
            Self::Namespace(o) => &o.metadata,
            Self::Deployment(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::HttpRoute(o) | Self::VirtualService(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    /// `Kind/name`, the way drift reports name objects.
    pub fn object_ref(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// The object as JSON, exactly as it is sent to the API server.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Self::Namespace(o) => serde_json::to_value(o),
            Self::Deployment(o) => serde_json::to_value(o),
            Self::Service(o) => serde_json::to_value(o),
            Self::HttpRoute(o) | Self::VirtualService(o) => serde_json::to_value(o),
        };
        // Serialising these types cannot fail (string keys, no non-finite floats).
        value.unwrap_or(serde_json::Value::Null)
    }
}

/// A layout that cannot be turned into objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid layout for {service} in {environment}: {message}")]
pub struct InvalidLayout {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// What is wrong.
    pub message: String,
}

/// Every object that realises `layout`, in the order they are applied: Deployments
/// first, then Services, then the HTTPRoute (so traffic only moves to what exists).
pub fn manifests(layout: &Layout, settings: &KubeSettings) -> Result<Vec<Manifest>, InvalidLayout> {
    let invalid = |message: String| InvalidLayout {
        service: layout.service.clone(),
        environment: layout.environment.clone(),
        message,
    };
    validate(layout).map_err(invalid)?;
    let ns = settings
        .namespace_for(&layout.environment)
        .map_err(invalid)?;
    let b = Builder {
        layout,
        settings,
        ns: &ns,
    };
    let svc = layout.service.as_str();
    let mut out: Vec<Manifest> = layout
        .workloads
        .iter()
        .map(|w| Manifest::Deployment(Box::new(b.deployment(w))))
        .collect();
    let service = |name: &str, role: Option<(&str, Track)>| {
        Manifest::Service(Box::new(b.service(name, role)))
    };
    match &layout.routing {
        Routing::Rolling { .. } => out.push(service(svc, Some((LABEL_TRACK, Track::Stable)))),
        Routing::BlueGreen { active, preview } => {
            out.push(service(svc, Some((LABEL_COLOUR, *active))));
            if let Some(preview) = preview {
                out.push(service(
                    &format!("{svc}-preview"),
                    Some((LABEL_COLOUR, *preview)),
                ));
            }
        }
        Routing::Canary { canary_weight } => match (&settings.gateway, settings.mesh) {
            (None, None) => out.push(service(svc, None)),
            (None, Some(Mesh::Istio)) => {
                // In-mesh clients of `<svc>` are routed by the VirtualService; the
                // Service itself selects the stable pods.
                out.push(service(svc, Some((LABEL_TRACK, Track::Stable))));
                out.push(service(
                    &format!("{svc}-stable"),
                    Some((LABEL_TRACK, Track::Stable)),
                ));
                out.push(service(
                    &format!("{svc}-canary"),
                    Some((LABEL_TRACK, Track::Canary)),
                ));
                out.push(Manifest::VirtualService(Box::new(routes::virtual_service(
                    svc,
                    settings.service_port,
                    *canary_weight,
                    b.meta(svc, None),
                ))));
            }
            (Some(gateway), _) => {
                // In-cluster clients that do not pass the Gateway stay on stable.
                out.push(service(svc, Some((LABEL_TRACK, Track::Stable))));
                out.push(service(
                    &format!("{svc}-stable"),
                    Some((LABEL_TRACK, Track::Stable)),
                ));
                out.push(service(
                    &format!("{svc}-canary"),
                    Some((LABEL_TRACK, Track::Canary)),
                ));
                out.push(Manifest::HttpRoute(Box::new(routes::http_route(
                    svc,
                    settings.service_port,
                    (&gateway.namespace, &gateway.name),
                    *canary_weight,
                    b.meta(svc, None),
                ))));
            }
        },
    }
    Ok(out)
}

/// The manifests as one `v1` `List`, the form `kubectl apply -f -` takes (JSON is
/// YAML, so this prints as a manifest file).
pub fn manifest_list(items: &[Manifest]) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items.iter().map(Manifest::to_json).collect::<Vec<_>>(),
    })
}

/// The namespace of an environment.
pub fn namespace_manifest(environment: &str, settings: &KubeSettings) -> Result<Namespace, String> {
    let ns = settings.namespace_for(environment)?;
    Ok(Namespace {
        metadata: ObjectMeta {
            name: Some(ns),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_string(),
                FIELD_MANAGER.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_ENVIRONMENT.to_string(),
                environment.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    })
}

/// The label (`track` or `colour`) that tells a track's pods apart.
pub fn track_label(track: Track) -> &'static str {
    match track {
        Track::Stable | Track::Canary => LABEL_TRACK,
        Track::Blue | Track::Green => LABEL_COLOUR,
    }
}

/// `maxSurge`/`maxUnavailable`: `25%` stays a percentage, `1` becomes a number.
pub fn int_or_percent(raw: &str) -> Result<IntOrString, String> {
    let raw = raw.trim();
    if let Some(pct) = raw.strip_suffix('%') {
        return match pct.parse::<u8>() {
            Ok(p) if p <= 100 => Ok(IntOrString::String(raw.to_string())),
            _ => Err(format!("{raw:?} is not a percentage from 0% to 100%")),
        };
    }
    raw.parse::<u16>()
        .map(|n| IntOrString::Int(i32::from(n)))
        .map_err(|_| format!("{raw:?} is neither a pod count nor a percentage"))
}

fn validate(layout: &Layout) -> Result<(), String> {
    let svc = &layout.service;
    check_dns_label(svc).map_err(|e| format!("service name {svc:?}: {e}"))?;
    if svc.len() > 55 || !svc.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "service name {svc:?} must start with a letter and have at most 55 characters (Service names `<svc>-preview` and `<svc>-canary` must stay valid)"
        ));
    }
    if layout.workloads.is_empty() {
        return Err("no workloads".into());
    }
    if let Some(t) = &layout.pod_template {
        super::pod_template::parse_pod_template(t)?;
    }
    let mut seen = Vec::new();
    for w in &layout.workloads {
        check_dns_label(&w.name).map_err(|e| format!("workload name {:?}: {e}", w.name))?;
        check_label_value(&w.version)
            .map_err(|e| format!("version {:?} is not a valid label value: {e}", w.version))?;
        if w.image.trim().is_empty() || w.image.contains(char::is_whitespace) {
            return Err(format!("workload {:?} has no valid image", w.name));
        }
        if i32::try_from(w.replicas).is_err() {
            return Err(format!("workload {:?}: too many replicas", w.name));
        }
        if seen.contains(&w.track) {
            return Err(format!("two workloads on track {}", w.track.as_str()));
        }
        if layout.workloads.iter().filter(|o| o.name == w.name).count() > 1 {
            return Err(format!("two workloads named {:?}", w.name));
        }
        seen.push(w.track);
    }
    let has = |t: Track| seen.contains(&t);
    // A workload of another shape may be named at 0 replicas: what a change of shape
    // (or a rolling rollout's analysed batches) leaves behind, scaled down.
    let only = |allowed: &[Track], what: &str| match layout
        .workloads
        .iter()
        .find(|w| w.replicas > 0 && !allowed.contains(&w.track))
    {
        Some(w) => Err(format!("track {} in a {what} layout", w.track.as_str())),
        None => Ok(()),
    };
    match &layout.routing {
        Routing::Rolling {
            max_surge,
            max_unavailable,
        } => {
            only(&[Track::Stable], "rolling")?;
            int_or_percent(max_surge).map_err(|e| format!("max_surge: {e}"))?;
            int_or_percent(max_unavailable).map_err(|e| format!("max_unavailable: {e}"))?;
        }
        Routing::BlueGreen { active, preview } => {
            only(&[Track::Blue, Track::Green], "blue-green")?;
            if !matches!(active, Track::Blue | Track::Green) || !has(*active) {
                return Err(format!(
                    "active colour {} has no workload in the layout",
                    active.as_str()
                ));
            }
            if let Some(p) = preview
                && (!matches!(p, Track::Blue | Track::Green) || !has(*p))
            {
                return Err(format!(
                    "preview colour {} has no workload in the layout",
                    p.as_str()
                ));
            }
        }
        Routing::Canary { canary_weight } => {
            only(&[Track::Stable, Track::Canary], "canary")?;
            if *canary_weight > 100 {
                return Err(format!("canary weight {canary_weight} is above 100"));
            }
            if *canary_weight > 0 && !has(Track::Canary) {
                return Err("traffic on a canary that has no workload".into());
            }
            if *canary_weight < 100 && !has(Track::Stable) {
                return Err("traffic on a stable track that has no workload".into());
            }
        }
    }
    Ok(())
}

struct Builder<'a> {
    layout: &'a Layout,
    settings: &'a KubeSettings,
    ns: &'a str,
}

impl Builder<'_> {
    fn meta(&self, name: &str, role: Option<(&str, Track)>) -> ObjectMeta {
        let mut labels = BTreeMap::from([
            (LABEL_NAME.to_string(), self.layout.service.clone()),
            (LABEL_MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
        ]);
        if let Some((key, track)) = role {
            labels.insert(key.to_string(), track.as_str().to_string());
        }
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.ns.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_STEP.to_string(),
                self.layout.step_key.clone(),
            )])),
            ..ObjectMeta::default()
        }
    }

    fn selector(&self, role: Option<(&str, Track)>) -> BTreeMap<String, String> {
        let mut sel = BTreeMap::from([(LABEL_NAME.to_string(), self.layout.service.clone())]);
        if let Some((key, track)) = role {
            sel.insert(key.to_string(), track.as_str().to_string());
        }
        sel
    }

    fn deployment(&self, w: &Workload) -> Deployment {
        let role = Some((track_label(w.track), w.track));
        let mut meta = self.meta(&w.name, role);
        if let Some(labels) = meta.labels.as_mut() {
            labels.insert(LABEL_VERSION.to_string(), w.version.clone());
        }
        let mut pod_labels = self.selector(role);
        pod_labels.insert(LABEL_MANAGED_BY.to_string(), FIELD_MANAGER.to_string());
        pod_labels.insert(LABEL_VERSION.to_string(), w.version.clone());
        let strategy = match &self.layout.routing {
            Routing::Rolling {
                max_surge,
                max_unavailable,
            } => Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    // Validated in `validate`.
                    max_surge: int_or_percent(max_surge).ok(),
                    max_unavailable: int_or_percent(max_unavailable).ok(),
                }),
            }),
            _ => None,
        };
        Deployment {
            metadata: meta,
            spec: Some(DeploymentSpec {
                replicas: Some(i32::try_from(w.replicas).unwrap_or(i32::MAX)),
                selector: LabelSelector {
                    match_labels: Some(self.selector(role)),
                    ..LabelSelector::default()
                },
                strategy,
                progress_deadline_seconds: Some(
                    i32::try_from(self.layout.progress_deadline_seconds).unwrap_or(i32::MAX),
                ),
                revision_history_limit: Some(self.settings.revision_history_limit),
                template: match &self.layout.pod_template {
                    // Checked in `validate`.
                    Some(user) => super::pod_template::adopted(
                        user,
                        &self.layout.service,
                        &w.image,
                        &pod_labels,
                    )
                    .unwrap_or_default(),
                    None => self.minimal_pod_template(w, pod_labels),
                },
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        }
    }

    fn minimal_pod_template(
        &self,
        w: &Workload,
        pod_labels: BTreeMap<String, String>,
    ) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: self.layout.service.clone(),
                    image: Some(w.image.clone()),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: self.settings.container_port,
                        protocol: Some("TCP".into()),
                        ..ContainerPort::default()
                    }]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    fn service(&self, name: &str, role: Option<(&str, Track)>) -> Service {
        Service {
            metadata: self.meta(name, role),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(self.selector(role)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: self.settings.service_port,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(routing: Routing, workloads: Vec<(&str, Track, u32)>) -> Layout {
        Layout {
            service: "shop-api".into(),
            environment: "staging".into(),
            workloads: workloads
                .into_iter()
                .map(|(name, track, replicas)| Workload {
                    name: name.into(),
                    track,
                    version: "1.0.0".into(),
                    image: "shop-api:1.0.0".into(),
                    replicas,
                })
                .collect(),
            routing,
            step_key: "r:s".into(),
            progress_deadline_seconds: 600,
            pod_template: None,
        }
    }

    fn rolling(surge: &str, unavailable: &str) -> Routing {
        Routing::Rolling {
            max_surge: surge.into(),
            max_unavailable: unavailable.into(),
        }
    }

    #[test]
    fn surge_and_unavailable_are_counts_or_percentages() {
        assert_eq!(int_or_percent("25%"), Ok(IntOrString::String("25%".into())));
        assert_eq!(int_or_percent("1"), Ok(IntOrString::Int(1)));
        assert!(int_or_percent("150%").is_err());
        assert!(int_or_percent("-1").is_err());
        assert!(int_or_percent("one").is_err());
    }

    #[test]
    fn inconsistent_layouts_are_invalid() {
        let s = KubeSettings::default();
        let cases = [
            (
                layout(rolling("x", "0"), vec![("shop-api", Track::Stable, 3)]),
                "max_surge",
            ),
            (
                layout(
                    rolling("1", "0"),
                    vec![("shop-api", Track::Stable, 3), ("c", Track::Canary, 1)],
                ),
                "track canary in a rolling layout",
            ),
            (
                layout(
                    Routing::BlueGreen {
                        active: Track::Green,
                        preview: None,
                    },
                    vec![("shop-api-blue", Track::Blue, 3)],
                ),
                "active colour green",
            ),
            (
                layout(
                    Routing::Canary { canary_weight: 10 },
                    vec![("shop-api", Track::Stable, 3)],
                ),
                "canary that has no workload",
            ),
            (
                layout(
                    Routing::Canary { canary_weight: 101 },
                    vec![
                        ("shop-api", Track::Stable, 3),
                        ("shop-api-canary", Track::Canary, 1),
                    ],
                ),
                "above 100",
            ),
            (
                layout(
                    Routing::Canary { canary_weight: 0 },
                    vec![
                        ("shop-api", Track::Stable, 3),
                        ("shop-api-2", Track::Stable, 1),
                    ],
                ),
                "two workloads on track stable",
            ),
        ];
        for (l, needle) in cases {
            let err = manifests(&l, &s).expect_err(needle);
            assert!(err.message.contains(needle), "{needle}: {err}");
        }
        let mut long = layout(rolling("1", "0"), vec![("shop-api", Track::Stable, 3)]);
        long.service = "a".repeat(56);
        assert!(manifests(&long, &s).is_err());
        // What a rolling rollout's batches leave behind may be named at 0 replicas.
        let scaled_down = layout(
            rolling("1", "0"),
            vec![
                ("shop-api", Track::Stable, 3),
                ("shop-api-canary", Track::Canary, 0),
            ],
        );
        assert!(manifests(&scaled_down, &s).is_ok());
    }

    #[test]
    fn the_step_annotation_stays_out_of_pod_templates() {
        let l = layout(rolling("1", "0"), vec![("shop-api", Track::Stable, 3)]);
        let objects = manifests(&l, &KubeSettings::default()).expect("valid");
        let deployment = objects[0].to_json();
        assert_eq!(
            deployment["metadata"]["annotations"][ANNOTATION_STEP],
            "r:s"
        );
        assert_eq!(deployment["metadata"]["namespace"], "staging");
        assert!(deployment["spec"]["template"]["metadata"]["annotations"].is_null());
    }
}
