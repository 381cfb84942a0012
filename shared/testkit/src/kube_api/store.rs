//! The fake's objects per resource, namespace and name, and the verbs on them:
//! create, get, list, server-side apply, merge patch and delete, with the status
//! codes and `Status` reasons of a real API server.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::fields::{Conflicts, Managers, merge_patch};
use super::resources::{Resource, resource_of_kind};
use super::validate::validate;

/// An error answered as a `Status` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
}

impl ApiError {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The `Status` body.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "code": self.code,
        })
    }
}

/// `deployments.apps` (the resource's name in API server messages).
pub fn qualified(r: Resource) -> String {
    match r.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{group}", r.plural),
        None => r.plural.to_owned(),
    }
}

fn not_found(r: Resource, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", qualified(r)),
    )
}

/// One stored object.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object as the API serves it (without `managedFields`, rendered on read).
    pub object: Value,
    /// Who owns which fields.
    pub managers: Managers,
    /// The Deployment controller's view of it.
    pub rollout: Option<super::controller::Progress>,
}

/// One write the fake accepted, for tests to inspect.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// `create`, `apply`, `patch` or `delete`.
    pub verb: &'static str,
    /// The kind.
    pub kind: &'static str,
    /// The namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The field manager.
    pub manager: String,
    /// The request body (`null` for a delete).
    pub body: Value,
}

/// Key: (kind, namespace, name).
type Key = (&'static str, String, String);

/// Every object, and what tests can set and read.
#[derive(Debug, Default)]
pub struct Store {
    pub(super) objects: BTreeMap<Key, Stored>,
    resource_version: u64,
    /// Images whose pods never become ready.
    pub bad_images: std::collections::BTreeSet<String>,
    /// Every accepted write, oldest first.
    pub writes: Vec<Write>,
}

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Store {
    /// The next `resourceVersion`.
    pub(super) fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// The current `resourceVersion` of the whole store (of lists).
    pub fn version(&self) -> String {
        self.resource_version.to_string()
    }

    fn render(r: Resource, s: &Stored) -> Value {
        let mut v = s.object.clone();
        v["metadata"]["managedFields"] = s.managers.render(r.api_version, &now_rfc3339());
        v
    }

    /// GET one object.
    pub fn get(&self, r: Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&(r.kind, ns.to_owned(), name.to_owned()))
            .map(|s| Self::render(r, s))
            .ok_or_else(|| not_found(r, name))
    }

    /// LIST, in a namespace or all of them, filtered by a label selector.
    pub fn list(
        &self,
        r: Resource,
        ns: Option<&str>,
        selector: &super::selector::Selector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((kind, n, _), _)| *kind == r.kind && ns.is_none_or(|ns| ns == n))
            .filter(|(_, s)| selector.matches(s.object.pointer("/metadata/labels")))
            .map(|(_, s)| Self::render(r, s))
            .collect()
    }

    fn check_namespace(&self, r: Resource, ns: &str) -> Result<(), ApiError> {
        let exists = self
            .objects
            .contains_key(&("Namespace", String::new(), ns.to_owned()));
        if r.namespaced && !exists {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            ));
        }
        Ok(())
    }

    /// Checks the body names the object of the URL (and a kind the URL serves).
    fn check_identity(
        r: Resource,
        ns: &str,
        name: Option<&str>,
        body: &Value,
    ) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not a JSON object",
            ));
        }
        if let Some(kind) = body.get("kind").and_then(Value::as_str)
            && kind != r.kind
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("the kind {kind} does not match the URL's {}", r.kind),
            ));
        }
        let meta = |k: &str| {
            body.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
        };
        if let (Some(url), Some(body)) = (name, meta("name"))
            && url != body
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "the name of the object ({body}) does not match the name on the URL ({url})"
                ),
            ));
        }
        if let Some(b) = meta("namespace")
            && r.namespaced
            && b != ns
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Ok(())
    }

    /// Stores `object` (already merged) at `key`, after validation: fills server-set
    /// metadata, bumps `generation` when `spec` changed and `resourceVersion` when
    /// anything did.
    fn commit(
        &mut self,
        r: Resource,
        key: Key,
        mut object: Value,
        managers: Managers,
    ) -> Result<Value, ApiError> {
        let old = self.objects.get(&key);
        let rollout = old.and_then(|s| s.rollout.clone());
        validate(r, &key.2, old.map(|s| &s.object), &object)?;
        object["apiVersion"] = json!(r.api_version);
        object["kind"] = json!(r.kind);
        object["metadata"]["name"] = json!(key.2);
        if r.namespaced {
            object["metadata"]["namespace"] = json!(key.1);
        }
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        match old {
            None => {
                object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                object["metadata"]["creationTimestamp"] = json!(now_rfc3339());
                if r.has_generation {
                    object["metadata"]["generation"] = json!(1);
                }
                if let Some(o) = object.as_object_mut() {
                    o.remove("status");
                }
            }
            Some(old) => {
                for k in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                    object["metadata"][k] = old.object["metadata"][k].clone();
                }
                object["status"] = old.object["status"].clone();
                if object["status"].is_null()
                    && let Some(o) = object.as_object_mut()
                {
                    o.remove("status");
                }
                if r.has_generation && old.object.get("spec") != object.get("spec") {
                    let g = old.object["metadata"]["generation"].as_i64().unwrap_or(0);
                    object["metadata"]["generation"] = json!(g + 1);
                }
                if old.object == object && old.managers == managers {
                    return Ok(Self::render(r, old));
                }
            }
        }
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        let stored = Stored {
            object,
            managers,
            rollout,
        };
        let out = Self::render(r, &stored);
        self.objects.insert(key, stored);
        Ok(out)
    }

    fn check_version(live: &Value, body: &Value, r: Resource, name: &str) -> Result<(), ApiError> {
        match body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(want)
                if !want.is_empty()
                    && Some(want)
                        != live
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str) =>
            {
                Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        qualified(r)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// POST: creates an object (409 `AlreadyExists` if one has that name).
    pub fn create(
        &mut self,
        r: Resource,
        ns: &str,
        manager: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        Self::check_identity(r, ns, None, &body)?;
        let name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} \"\" is invalid: metadata.name: Required value: name is required",
                    r.kind
                ),
            ));
        }
        self.check_namespace(r, ns)?;
        let key = (r.kind, ns.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(r)),
            ));
        }
        let mut managers = Managers::default();
        managers.update(manager, &body, |_| true);
        let out = self.commit(r, key, body.clone(), managers)?;
        self.log("create", r, ns, &name, manager, body);
        Ok(out)
    }

    /// PATCH with `application/apply-patch+yaml`: creates the object if missing.
    pub fn apply(
        &mut self,
        r: Resource,
        ns: &str,
        name: &str,
        manager: &str,
        force: bool,
        body: Value,
    ) -> Result<Value, ApiError> {
        Self::check_identity(r, ns, Some(name), &body)?;
        self.check_namespace(r, ns)?;
        let key = (r.kind, ns.to_owned(), name.to_owned());
        let (mut live, mut managers) = match self.objects.get(&key) {
            Some(s) => {
                Self::check_version(&s.object, &body, r, name)?;
                (s.object.clone(), s.managers.clone())
            }
            None => (json!({"metadata": {}}), Managers::default()),
        };
        managers
            .apply(&mut live, manager, &body, force)
            .map_err(|c: Conflicts| ApiError::new(409, "Conflict", c.to_string()))?;
        let out = self.commit(r, key, live, managers)?;
        self.log("apply", r, ns, name, manager, body);
        Ok(out)
    }

    /// PATCH with a JSON merge patch (or a strategic merge patch, handled as one).
    pub fn merge(
        &mut self,
        r: Resource,
        ns: &str,
        name: &str,
        manager: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        let key = (r.kind, ns.to_owned(), name.to_owned());
        let Some(s) = self.objects.get(&key) else {
            return Err(not_found(r, name));
        };
        Self::check_identity(r, ns, Some(name), &body)?;
        Self::check_version(&s.object, &body, r, name)?;
        let before = s.object.clone();
        let mut live = before.clone();
        let mut patch = body.clone();
        if let Some(o) = patch.as_object_mut() {
            o.remove("status");
        }
        merge_patch(&mut live, &patch);
        let mut managers = s.managers.clone();
        managers.update(manager, &patch, |p| {
            super::fields::get(&before, p) != super::fields::get(&live, p)
        });
        let out = self.commit(r, key, live, managers)?;
        self.log("patch", r, ns, name, manager, body);
        Ok(out)
    }

    /// DELETE (with `preconditions` from the body's DeleteOptions). Deleting a
    /// namespace deletes everything in it at once.
    pub fn delete(
        &mut self,
        r: Resource,
        ns: &str,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let key = (r.kind, ns.to_owned(), name.to_owned());
        let Some(s) = self.objects.get(&key) else {
            return Err(not_found(r, name));
        };
        for (field, pointer) in [("UID", "uid"), ("ResourceVersion", "resourceVersion")] {
            let want = options
                .pointer(&format!("/preconditions/{pointer}"))
                .and_then(Value::as_str);
            let have = s
                .object
                .pointer(&format!("/metadata/{pointer}"))
                .and_then(Value::as_str);
            if let Some(want) = want
                && Some(want) != have
            {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Precondition failed: {field} in precondition: {want}, {field} in object meta: {}",
                        have.unwrap_or_default()
                    ),
                ));
            }
        }
        let mut gone = self
            .objects
            .remove(&key)
            .map(|s| Self::render(r, &s))
            .unwrap_or_default();
        if r.kind == "Namespace" {
            self.objects
                .retain(|(kind, n, _), _| *kind == "Namespace" || n != name);
        }
        gone["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        self.next_version();
        self.log("delete", r, ns, name, "", Value::Null);
        Ok(gone)
    }

    fn log(
        &mut self,
        verb: &'static str,
        r: Resource,
        ns: &str,
        name: &str,
        manager: &str,
        body: Value,
    ) {
        self.writes.push(Write {
            verb,
            kind: r.kind,
            namespace: ns.to_owned(),
            name: name.to_owned(),
            manager: manager.to_owned(),
            body,
        });
    }

    /// The stored object (for tests), by kind.
    pub fn find(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let r = resource_of_kind(kind)?;
        self.get(r, ns, name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::super::resources::resource_of_kind;
    use super::super::selector::Selector;
    use super::*;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop", "labels": {"app": "shop"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "shop"}},
                        "template": {"metadata": {"labels": {"app": "shop"}},
                                     "spec": {"containers": [{"name": "shop", "image": image}]}}}})
    }

    #[test]
    fn verbs_answer_like_an_api_server() {
        let d = resource_of_kind("Deployment").unwrap();
        let ns = resource_of_kind("Namespace").unwrap();
        let mut s = Store::default();
        let err = s
            .create(d, "prod", "kubectl", deployment(3, "shop:1"))
            .unwrap_err();
        assert_eq!((err.code, err.reason), (404, "NotFound"));
        assert_eq!(err.message, "namespaces \"prod\" not found");
        s.create(ns, "", "kubectl", json!({"metadata": {"name": "prod"}}))
            .unwrap();
        let made = s
            .create(d, "prod", "kubectl", deployment(3, "shop:1"))
            .unwrap();
        assert_eq!(made["metadata"]["generation"], 1);
        assert!(made["metadata"]["uid"].is_string());
        let err = s
            .create(d, "prod", "kubectl", deployment(3, "shop:1"))
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        assert_eq!(err.message, "deployments.apps \"shop\" already exists");

        // Applying the same object twice changes nothing the second time (the first
        // only makes kubectl's ownership an apply); a new spec bumps the generation.
        let first = s
            .apply(d, "prod", "shop", "kubectl", true, deployment(3, "shop:1"))
            .unwrap();
        assert_eq!(first["metadata"]["generation"], 1);
        let rv = first["metadata"]["resourceVersion"].clone();
        let same = s
            .apply(d, "prod", "shop", "kubectl", true, deployment(3, "shop:1"))
            .unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], rv);
        let next = s
            .apply(d, "prod", "shop", "kubectl", false, deployment(3, "shop:2"))
            .unwrap();
        assert_eq!(next["metadata"]["generation"], 2);
        assert_ne!(next["metadata"]["resourceVersion"], rv);
        // A stale resourceVersion is a conflict.
        let mut stale = json!({"spec": {"replicas": 4}});
        stale["metadata"] = json!({"resourceVersion": rv});
        let err = s
            .merge(d, "prod", "shop", "kubectl-edit", stale)
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        // The selector is immutable.
        let mut other = deployment(3, "shop:2");
        other["spec"]["selector"]["matchLabels"]["tier"] = json!("web");
        other["spec"]["template"]["metadata"]["labels"]["tier"] = json!("web");
        let err = s
            .apply(d, "prod", "shop", "kubectl", true, other)
            .unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert!(
            err.message.contains("field is immutable"),
            "{}",
            err.message
        );

        let all = Selector::parse("app=shop").unwrap();
        assert_eq!(s.list(d, Some("prod"), &all).len(), 1);
        assert_eq!(
            s.list(d, Some("prod"), &Selector::parse("app!=shop").unwrap())
                .len(),
            0
        );
        assert_eq!(s.list(d, None, &all).len(), 1);

        let err = s
            .delete(
                d,
                "prod",
                "shop",
                &json!({"preconditions": {"uid": "someone-else"}}),
            )
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        s.delete(ns, "", "prod", &Value::Null).unwrap();
        let err = s.get(d, "prod", "shop").unwrap_err();
        assert_eq!(err.code, 404);
        assert_eq!(err.status()["reason"], "NotFound");
        let verbs: Vec<&str> = s.writes.iter().map(|w| w.verb).collect();
        assert_eq!(
            verbs,
            ["create", "create", "apply", "apply", "apply", "delete"]
        );
    }
}
