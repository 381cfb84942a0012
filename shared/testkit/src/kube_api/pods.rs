//! Pods of the fake's Deployments: the controller keeps one Pod object per pod it
//! counts (named `<replicaset>-<n>` for the current template, `<deployment>-old-<n>`
//! for older ones), so that clients can list and delete them. A deleted pod of the
//! current template stops being counted and is started again like a new one; Pods of a
//! deleted Deployment are collected.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::store::{Store, Stored, now_rfc3339};

/// Annotation naming the Deployment a Pod belongs to.
pub const OWNER: &str = "toronto.dev/fake-owner";

fn pod_name(rs: &str, i: u32) -> String {
    format!("{rs}-{i}")
}

/// How many of the `updated` pods of ReplicaSet `rs` were deleted since the last tick.
pub fn deleted(store: &Store, ns: &str, rs: &str, updated: u32) -> u32 {
    let n = (0..updated)
        .filter(|i| {
            !store
                .objects
                .contains_key(&("Pod", ns.to_owned(), pod_name(rs, *i)))
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One pod to have: its labels, spec and readiness.
pub struct Want {
    /// `metadata.labels`.
    pub labels: Value,
    /// `spec`.
    pub spec: Value,
    /// Whether it is ready.
    pub ready: bool,
}

/// The pods of Deployment `owner`: (name → what it should be).
pub fn wanted(
    rs: &str,
    owner: &str,
    template: &Value,
    old_template: &Value,
    (updated, ready, old, old_ready): (u32, u32, u32, u32),
) -> BTreeMap<String, Want> {
    let mut out = BTreeMap::new();
    let with_hash = |t: &Value, hash: &str| {
        let mut labels = t.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
        labels["pod-template-hash"] = json!(hash);
        labels
    };
    let hash = rs.rsplit('-').next().unwrap_or_default();
    for i in 0..updated {
        out.insert(
            pod_name(rs, i),
            Want {
                labels: with_hash(template, hash),
                spec: template.get("spec").cloned().unwrap_or_default(),
                ready: i < ready,
            },
        );
    }
    for i in 0..old {
        out.insert(
            format!("{owner}-old-{i}"),
            Want {
                labels: with_hash(old_template, "old"),
                spec: old_template.get("spec").cloned().unwrap_or_default(),
                ready: i < old_ready,
            },
        );
    }
    out
}

/// Makes the Pods of `owner` in `ns` exactly `want`.
pub fn sync(store: &mut Store, ns: &str, owner: &str, want: BTreeMap<String, Want>) {
    let theirs: Vec<String> = store
        .objects
        .iter()
        .filter(|((kind, n, _), s)| {
            *kind == "Pod"
                && n == ns
                && s.object.pointer(&format!(
                    "/metadata/annotations/{}",
                    OWNER.replace('/', "~1")
                )) == Some(&json!(owner))
        })
        .map(|((_, _, name), _)| name.clone())
        .collect();
    for name in theirs.iter().filter(|n| !want.contains_key(*n)) {
        store.objects.remove(&("Pod", ns.to_owned(), name.clone()));
    }
    for (name, w) in want {
        let key = ("Pod", ns.to_owned(), name.clone());
        let status = json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if w.ready { "True" } else { "False" }}],
        });
        let existing = store.objects.get(&key).map(|s| s.object.clone());
        let mut pod = existing.clone().unwrap_or_else(|| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns,
                             "uid": uuid::Uuid::new_v4().to_string(),
                             "creationTimestamp": now_rfc3339(),
                             "annotations": {OWNER: owner}},
            })
        });
        pod["metadata"]["labels"] = w.labels;
        pod["spec"] = w.spec;
        pod["status"] = status;
        if existing.as_ref() != Some(&pod) {
            pod["metadata"]["resourceVersion"] = json!(store.next_version());
            store.objects.insert(
                key,
                Stored {
                    object: pod,
                    managers: Default::default(),
                    rollout: None,
                },
            );
        }
    }
}

/// Deletes the Pods whose Deployment is gone.
pub fn collect(store: &mut Store) {
    let orphans: Vec<_> = store
        .objects
        .iter()
        .filter(|((kind, ns, _), s)| {
            *kind == "Pod"
                && s.object
                    .pointer(&format!(
                        "/metadata/annotations/{}",
                        OWNER.replace('/', "~1")
                    ))
                    .and_then(Value::as_str)
                    .is_some_and(|owner| {
                        !store
                            .objects
                            .contains_key(&("Deployment", ns.clone(), owner.to_owned()))
                    })
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in orphans {
        store.objects.remove(&k);
    }
}
