//! The Deployment controller, played on a tick: it observes a new `generation`,
//! starts one pod of the current template per tick, makes one ready per tick (a tick
//! after it started at the earliest; never for an image a test marked bad), removes
//! old pods as new ones become ready, and
//! writes `status` the way the real controller does: `observedGeneration`,
//! `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`, and the
//! `Available` and `Progressing` conditions, with `ProgressDeadlineExceeded` when a
//! rollout makes no progress within its deadline.
//!
//! Its pods are Pod objects (see the `pods` module): deleting one makes the controller
//! start it again. Not modelled: ReplicaSets as objects (a template change always
//! starts its pods from zero, also a rollback to an old template), `maxSurge` and
//! `maxUnavailable` (one pod at a time), `minReadySeconds`, and pausing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::store::{Store, now_rfc3339};

/// What the controller knows of one Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    template: Value,
    old_template: Value,
    observed: i64,
    updated: u32,
    ready: u32,
    old: u32,
    old_ready: u32,
    last_progress: Instant,
}

fn count(v: Option<&Value>, default: u32) -> u32 {
    v.and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(default)
}

/// The images of a pod template's containers.
fn images(template: &Value) -> Vec<&str> {
    template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("image").and_then(Value::as_str))
        .collect()
}

/// One tick of the controller over every Deployment. `deadline` caps each
/// Deployment's `progressDeadlineSeconds` (so tests need not wait minutes).
pub fn tick(store: &mut Store, now: Instant, deadline: Option<Duration>) {
    let keys: Vec<_> = store
        .objects
        .keys()
        .filter(|(kind, _, _)| *kind == "Deployment")
        .cloned()
        .collect();
    for key in keys {
        // Pods of the current template deleted since the last tick no longer count.
        let lost = store
            .objects
            .get(&key)
            .and_then(|s| s.rollout.as_ref())
            .map_or(0, |p| {
                let rs = format!("{}-{:08x}", key.2, fxhash(&p.template));
                super::pods::deleted(store, &key.1, &rs, p.updated)
            });
        let bad_images = store.bad_images.clone();
        let Some(stored) = store.objects.get_mut(&key) else {
            continue;
        };
        let d = &stored.object;
        let generation = d
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let desired = count(d.pointer("/spec/replicas"), 1);
        let template = d.pointer("/spec/template").cloned().unwrap_or_default();
        let own_deadline = Duration::from_secs(
            d.pointer("/spec/progressDeadlineSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(600),
        );
        let deadline = deadline.map_or(own_deadline, |cap| cap.min(own_deadline));
        let p = stored.rollout.get_or_insert_with(|| Progress {
            template: template.clone(),
            old_template: Value::Null,
            observed: 0,
            updated: 0,
            ready: 0,
            old: 0,
            old_ready: 0,
            last_progress: now,
        });
        if lost > 0 {
            p.updated -= lost.min(p.updated);
            p.ready = p.ready.min(p.updated);
        }
        if p.observed < generation {
            p.observed = generation;
            p.last_progress = now;
            if p.template != template {
                p.old += p.updated;
                p.old_ready += p.ready;
                p.updated = 0;
                p.ready = 0;
                p.old_template = std::mem::replace(&mut p.template, template.clone());
            }
        }
        let bad = images(&template).iter().any(|i| bad_images.contains(*i));
        let mut progressed = false;
        // A pod started in this tick is ready in the next one at the earliest.
        let started_before = p.updated;
        if p.updated < desired {
            p.updated += 1;
            progressed = true;
        } else if p.updated > desired {
            p.updated = desired;
            p.ready = p.ready.min(desired);
            progressed = true;
        }
        if !bad && p.ready < p.updated.min(started_before) {
            p.ready += 1;
            progressed = true;
        }
        // Old pods go as new ones become ready (and all of them at zero replicas).
        let keep = if desired == 0 {
            0
        } else {
            desired.saturating_sub(p.ready)
        };
        if p.old > keep {
            p.old = keep;
            progressed = true;
        }
        p.old_ready = p.old_ready.min(p.old);
        if progressed {
            p.last_progress = now;
        }
        let complete = p.updated == desired && p.ready == desired && p.old == 0;
        let stuck = !complete && now.duration_since(p.last_progress) > deadline;
        let total = p.updated + p.old;
        let ready = p.ready + p.old_ready;
        let name = key.2.clone();
        let rs = format!("{name}-{:08x}", fxhash(&p.template));
        let (status, reason, message) = if stuck {
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs}\" has timed out progressing."),
            )
        } else if complete {
            (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs}\" has successfully progressed."),
            )
        } else {
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs}\" is progressing."),
            )
        };
        let available = ready >= desired;
        let want = super::pods::wanted(
            &rs,
            &name,
            &p.template,
            &p.old_template,
            (p.updated, p.ready, p.old, p.old_ready),
        );
        let observed = p.observed;
        let old_status = stored.object.get("status").cloned().unwrap_or_default();
        let condition = |type_: &str, status: &str, reason: &str, message: &str| {
            // Keep the timestamps of a condition that did not change.
            let same = old_status
                .get("conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
                .filter(|c| c["status"] == status && c["reason"] == reason);
            let at = same.map_or_else(|| json!(now_rfc3339()), |c| c["lastTransitionTime"].clone());
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                   "lastUpdateTime": at, "lastTransitionTime": at})
        };
        let mut new_status = json!({
            "observedGeneration": observed,
            "replicas": total,
            "updatedReplicas": p.updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                condition(
                    "Available",
                    if available { "True" } else { "False" },
                    if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                    if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                ),
                condition("Progressing", status, reason, &message),
            ],
        });
        if total > ready {
            new_status["unavailableReplicas"] = json!(total - ready);
        }
        if old_status != new_status {
            stored.object["status"] = new_status;
            let rv = store.next_version();
            if let Some(s) = store.objects.get_mut(&key) {
                s.object["metadata"]["resourceVersion"] = json!(rv);
            }
        }
        super::pods::sync(store, &key.1, &key.2, want);
    }
    super::pods::collect(store);
}

/// A short stable hash of a template (the ReplicaSet name suffix).
fn fxhash(v: &Value) -> u32 {
    v.to_string().bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::super::resources::resource_of_kind;
    use super::*;

    fn deployment(image: &str) -> Value {
        json!({"metadata": {"name": "shop"},
               "spec": {"replicas": 2, "progressDeadlineSeconds": 600, "selector": {"matchLabels": {"app": "shop"}},
                        "template": {"metadata": {"labels": {"app": "shop"}},
                                     "spec": {"containers": [{"name": "shop", "image": image}]}}}})
    }

    fn status(s: &Store) -> Value {
        s.find("Deployment", "prod", "shop").unwrap()["status"].clone()
    }

    #[test]
    fn rolls_out_one_pod_per_tick_and_a_bad_image_misses_its_deadline() {
        let d = resource_of_kind("Deployment").unwrap();
        let ns = resource_of_kind("Namespace").unwrap();
        let mut s = Store::default();
        s.create(ns, "", "t", json!({"metadata": {"name": "prod"}}))
            .unwrap();
        s.create(d, "prod", "t", deployment("shop:1")).unwrap();
        let t0 = Instant::now();
        for i in 1..=3 {
            tick(&mut s, t0 + Duration::from_millis(i), None);
        }
        let st = status(&s);
        assert_eq!(st["observedGeneration"], 1);
        assert_eq!(
            (st["updatedReplicas"].clone(), st["readyReplicas"].clone()),
            (json!(2), json!(2))
        );
        assert_eq!(st["conditions"][1]["reason"], "NewReplicaSetAvailable");
        // Its two pods are objects; one deleted is started again.
        let pods = resource_of_kind("Pod").unwrap();
        let all = super::super::selector::Selector::parse("app=shop").unwrap();
        let listed = s.list(pods, Some("prod"), &all);
        assert_eq!(listed.len(), 2, "{listed:?}");
        let victim = listed[0]["metadata"]["name"].as_str().unwrap().to_owned();
        s.delete(pods, "prod", &victim, &Value::Null).unwrap();
        tick(&mut s, t0 + Duration::from_millis(3), None);
        let st = status(&s);
        assert_eq!(st["readyReplicas"], 1, "{st}");
        tick(&mut s, t0 + Duration::from_millis(3), None);
        assert_eq!(status(&s)["readyReplicas"], 2);
        assert_eq!(s.list(pods, Some("prod"), &all).len(), 2);

        s.bad_images.insert("shop:2".into());
        s.apply(d, "prod", "shop", "t", true, deployment("shop:2"))
            .unwrap();
        // Not observed yet: the status still describes generation 1.
        assert_eq!(status(&s)["observedGeneration"], 1);
        for i in 4..=8 {
            tick(
                &mut s,
                t0 + Duration::from_millis(i),
                Some(Duration::from_secs(1)),
            );
        }
        let st = status(&s);
        assert_eq!(st["observedGeneration"], 2);
        assert_eq!(st["updatedReplicas"], 2);
        // The old pods stay ready while the new ones never are.
        assert_eq!(st["readyReplicas"], 2);
        assert_eq!(st["replicas"], 4);
        assert_eq!(st["conditions"][1]["reason"], "ReplicaSetUpdated");
        tick(
            &mut s,
            t0 + Duration::from_secs(3),
            Some(Duration::from_secs(1)),
        );
        let st = status(&s);
        assert_eq!(st["conditions"][1]["status"], "False");
        assert_eq!(st["conditions"][1]["reason"], "ProgressDeadlineExceeded");
    }
}
