//! Workload templates read from a directory of manifests
//! (`TORONTO_DEPLOYER_WORKLOAD_DIR`): every Deployment in its `*.yaml`, `*.yml` and
//! `*.json` files (multi-document YAML allowed) annotated with
//! `toronto.dev/service` and `toronto.dev/environment` is the workload template of that
//! service in that environment, as if registered with `workload.put`; other objects and
//! Deployments without both annotations are skipped.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The annotation naming the service a manifest's Deployment is the template of.
pub const ANNOTATION_SERVICE: &str = "toronto.dev/service";
/// The annotation naming its environment.
pub const ANNOTATION_ENVIRONMENT: &str = "toronto.dev/environment";

/// Largest manifest file read.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// A pod template read from a manifest, and the Deployment's replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestWorkload {
    /// The Deployment's `spec.template`.
    pub pod_template: serde_json::Value,
    /// Its `spec.replicas`.
    pub replicas: Option<u32>,
    /// The file it was read from.
    pub file: String,
}

/// Workload templates by (service, environment).
pub type ManifestWorkloads = BTreeMap<(String, String), ManifestWorkload>;

/// Reads every annotated Deployment of the manifests in `dir`.
pub fn load_workloads(dir: &Path) -> Result<ManifestWorkloads, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the directory {}: {e}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"))
        })
        .collect();
    paths.sort();
    let mut out = ManifestWorkloads::new();
    for path in paths {
        let bad = |why: String| format!("{}: {why}", path.display());
        let size = std::fs::metadata(&path)
            .map_err(|e| bad(e.to_string()))?
            .len();
        if size > MAX_MANIFEST_BYTES {
            return Err(bad(format!("larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
            if value.get("kind").and_then(|k| k.as_str()) != Some("Deployment") {
                continue;
            }
            let annotation = |key: &str| {
                value
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(key))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let (Some(service), Some(environment)) = (
                annotation(ANNOTATION_SERVICE),
                annotation(ANNOTATION_ENVIRONMENT),
            ) else {
                continue;
            };
            let Some(pod_template) = value.pointer("/spec/template").cloned() else {
                return Err(bad(format!(
                    "the Deployment for {service} has no spec.template"
                )));
            };
            crate::kube::parse_pod_template(&pod_template)
                .map_err(|e| bad(format!("the Deployment for {service}: {e}")))?;
            let replicas = value
                .pointer("/spec/replicas")
                .and_then(|r| r.as_u64())
                .and_then(|r| u32::try_from(r).ok())
                .filter(|r| *r > 0);
            let key = (service.clone(), environment.clone());
            if out.contains_key(&key) {
                return Err(bad(format!(
                    "a second Deployment for {service} in {environment}"
                )));
            }
            out.insert(
                key,
                ManifestWorkload {
                    pod_template,
                    replicas,
                    file: path.display().to_string(),
                },
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_deployments_are_read_and_the_rest_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("shop.yaml"),
            r#"
apiVersion: v1
kind: Service
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop-app
  annotations:
    toronto.dev/service: shop
    toronto.dev/environment: production
spec:
  replicas: 5
  template:
    spec:
      containers:
        - name: shop
          image: shop:1
          env: [{name: MODE, value: prod}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: unrelated}
spec: {template: {spec: {containers: [{name: x, image: x}]}}}
"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "ignored").unwrap();
        let loaded = load_workloads(dir.path()).unwrap();
        assert_eq!(loaded.len(), 1);
        let w = &loaded[&("shop".to_owned(), "production".to_owned())];
        assert_eq!(w.replicas, Some(5));
        assert_eq!(
            w.pod_template["spec"]["containers"][0]["env"][0]["value"],
            "prod"
        );
        assert!(w.file.ends_with("shop.yaml"));

        std::fs::write(
            dir.path().join("bad.yaml"),
            "kind: Deployment\nmetadata: {annotations: {toronto.dev/service: a, toronto.dev/environment: b}}\nspec: {template: {spec: {containers: []}}}\n",
        )
        .unwrap();
        let err = load_workloads(dir.path()).unwrap_err();
        assert!(
            err.contains("bad.yaml") && err.contains("no container"),
            "{err}"
        );
    }
}
