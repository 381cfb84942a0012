//! Adopted pod templates: the user's `PodTemplateSpec` (env, envFrom, resources,
//! probes, service account, volumes, security context, annotations and the rest) is
//! the template of every Deployment the deployer makes for the service. Only the image
//! of the service's container (the one named after the service, else the first) and
//! the labels the deployer owns are changed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::manifests::{LABEL_COLOUR, LABEL_TRACK};

/// Largest pod template accepted, in bytes of JSON.
pub const MAX_POD_TEMPLATE_BYTES: usize = 256 * 1024;

/// Reads and checks a pod template: a `PodTemplateSpec` with at least one container.
pub fn parse_pod_template(value: &serde_json::Value) -> Result<PodTemplateSpec, String> {
    let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if size > MAX_POD_TEMPLATE_BYTES {
        return Err(format!(
            "the pod template is {size} bytes, more than {MAX_POD_TEMPLATE_BYTES}"
        ));
    }
    let t: PodTemplateSpec = serde_json::from_value(value.clone())
        .map_err(|e| format!("not a Kubernetes PodTemplateSpec: {e}"))?;
    let containers = t.spec.as_ref().map_or(0, |s| s.containers.len());
    if containers == 0 {
        return Err("the pod template has no container".into());
    }
    Ok(t)
}

/// The pod template of one of the service's workloads made from the user's:
/// `container`'s image set to `image` (the first container when none has that name),
/// and `labels` (the deployer's own) set over the user's, with any `track` or
/// `colour` label of the user's removed first.
pub fn adopted(
    value: &serde_json::Value,
    container: &str,
    image: &str,
    labels: &BTreeMap<String, String>,
) -> Result<PodTemplateSpec, String> {
    let mut t = parse_pod_template(value)?;
    let spec = t.spec.as_mut().ok_or("the pod template has no spec")?;
    let at = spec
        .containers
        .iter()
        .position(|c| c.name == container)
        .unwrap_or(0);
    spec.containers[at].image = Some(image.to_owned());
    let meta = t.metadata.get_or_insert_with(Default::default);
    let own = meta.labels.get_or_insert_with(BTreeMap::new);
    own.remove(LABEL_TRACK);
    own.remove(LABEL_COLOUR);
    own.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_image_and_the_owned_labels_change() {
        let user = json!({
            "metadata": {"labels": {"app": "shop", "track": "mine"}, "annotations": {"prometheus.io/scrape": "true"}},
            "spec": {
                "serviceAccountName": "shop",
                "containers": [
                    {"name": "sidecar", "image": "envoy:1"},
                    {"name": "shop", "image": "shop:old", "env": [{"name": "MODE", "value": "prod"}],
                     "resources": {"limits": {"cpu": "1"}},
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}
                ]
            }
        });
        let labels = BTreeMap::from([
            ("track".to_owned(), "canary".to_owned()),
            ("app.kubernetes.io/name".to_owned(), "shop".to_owned()),
        ]);
        let t = adopted(&user, "shop", "shop:2.0.0", &labels).unwrap();
        let out = serde_json::to_value(&t).unwrap();
        assert_eq!(out["spec"]["containers"][1]["image"], "shop:2.0.0");
        assert_eq!(out["spec"]["containers"][0]["image"], "envoy:1");
        assert_eq!(out["spec"]["containers"][1]["env"][0]["value"], "prod");
        assert_eq!(
            out["spec"]["containers"][1]["resources"]["limits"]["cpu"],
            "1"
        );
        assert_eq!(out["spec"]["serviceAccountName"], "shop");
        assert_eq!(out["metadata"]["labels"]["track"], "canary");
        assert_eq!(out["metadata"]["labels"]["app"], "shop");
        assert_eq!(
            out["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
        // No container named after the service: the first one's image changes.
        let t = adopted(&user, "cart", "cart:1", &labels).unwrap();
        assert_eq!(
            t.spec.unwrap().containers[0].image.as_deref(),
            Some("cart:1")
        );
        assert!(parse_pod_template(&json!({"spec": {"containers": []}})).is_err());
        assert!(parse_pod_template(&json!({"spec": {"containers": "x"}})).is_err());
    }
}
