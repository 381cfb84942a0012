//! Field ownership and merging: server-side apply by field manager, JSON merge
//! patches, and `metadata.managedFields` as the API server renders them.
//!
//! A field is a leaf path of the object: objects recurse, everything else (scalars,
//! lists, empty objects) is one field. Lists are atomic here: a real API server merges
//! lists with merge keys (containers by `name`, ports by `containerPort`) and tracks
//! each element; the fake gives a whole list to whoever set it last.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// A field: the keys from the object's root to a leaf.
pub type Path = Vec<String>;

/// How a manager last wrote its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Create, update or a merge patch.
    Update,
}

/// The fields each manager owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managers(pub BTreeMap<String, (Operation, BTreeSet<Path>)>);

/// An apply that would change fields other managers own (without `force`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflicts(pub Vec<(String, Path)>);

impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "Apply failed with {n} conflict{}: ",
            if n == 1 { "" } else { "s" }
        )?;
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": .{}", p.join(".")))
            .collect();
        f.write_str(&list.join("\n"))
    }
}

/// The top-level and metadata fields that nobody owns (identity, server-set fields,
/// and `status`, which the main resource never writes).
pub fn strip_unowned(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["apiVersion", "kind", "status"] {
            o.remove(k);
        }
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "managedFields",
            ] {
                m.remove(k);
            }
            if m.is_empty() {
                o.remove("metadata");
            }
        }
    }
    v
}

/// Every field of `v`.
pub fn leaves(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(o) if !o.is_empty() => {
                for (k, child) in o {
                    at.push(k.clone());
                    walk(child, at, out);
                    at.pop();
                }
            }
            _ if !at.is_empty() => {
                out.insert(at.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The value at `path`.
pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Removes the field at `path`, and the objects it leaves empty.
pub fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(parent) = parents.iter().try_fold(&mut *v, |v, k| v.get_mut(k))
        && let Some(o) = parent.as_object_mut()
    {
        o.remove(last);
        if o.is_empty() && !parents.is_empty() {
            remove(v, parents);
        }
    }
}

/// Sets every field of `patch` in `target` (objects merge, everything else replaces).
pub fn deep_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                deep_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = patch.clone(),
    }
}

/// RFC 7386 JSON merge patch: like [`deep_merge`], but `null` deletes.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl Managers {
    /// Server-side apply of `config` by `manager` onto `live` (the whole object).
    ///
    /// A field another manager owns with a different value is a conflict, unless
    /// `force` moves it to `manager`. Fields `manager` applied before and leaves out
    /// now are removed from the object unless another manager owns them.
    pub fn apply(
        &mut self,
        live: &mut Value,
        manager: &str,
        config: &Value,
        force: bool,
    ) -> Result<(), Conflicts> {
        let config = strip_unowned(config);
        let new = leaves(&config);
        let mut conflicts = Vec::new();
        for (other, (_, owned)) in &self.0 {
            if other == manager {
                continue;
            }
            for theirs in owned {
                let clash = new
                    .iter()
                    .any(|p| related(p, theirs) && get(live, p) != get(&config, p));
                if clash {
                    conflicts.push((other.clone(), theirs.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(Conflicts(conflicts));
        }
        for (other, path) in &conflicts {
            if let Some((_, owned)) = self.0.get_mut(other) {
                owned.remove(path);
            }
        }
        let before = self
            .0
            .get(manager)
            .map(|(_, owned)| owned.clone())
            .unwrap_or_default();
        for dropped in before.difference(&new) {
            let shared = self
                .0
                .iter()
                .any(|(m, (_, owned))| m != manager && owned.iter().any(|p| related(p, dropped)));
            if !shared && !new.iter().any(|p| related(p, dropped)) {
                remove(live, dropped);
            }
        }
        deep_merge(live, &config);
        self.0.insert(manager.to_owned(), (Operation::Apply, new));
        self.0.retain(|_, (_, owned)| !owned.is_empty());
        Ok(())
    }

    /// A create, update or merge patch by `manager` that set the fields of `patch`
    /// (already applied to the object): it owns them now, and whoever owned a field
    /// it changed does not. A field set to `null` (deleted) is nobody's.
    pub fn update(&mut self, manager: &str, patch: &Value, changed: impl Fn(&[String]) -> bool) {
        let patch = strip_unowned(patch);
        let set = leaves(&patch);
        for (other, (_, owned)) in self.0.iter_mut() {
            if other != manager {
                owned.retain(|theirs| !set.iter().any(|p| related(p, theirs) && changed(p)));
            }
        }
        let mine = self
            .0
            .entry(manager.to_owned())
            .or_insert((Operation::Update, BTreeSet::new()));
        mine.0 = Operation::Update;
        for p in set {
            if get(&patch, &p).is_some_and(Value::is_null) {
                mine.1.remove(&p);
            } else {
                mine.1.insert(p);
            }
        }
        self.0.retain(|_, (_, owned)| !owned.is_empty());
    }

    /// `metadata.managedFields` in the API server's `FieldsV1` form.
    pub fn render(&self, api_version: &str, time: &str) -> Value {
        let entries: Vec<Value> = self
            .0
            .iter()
            .map(|(manager, (op, owned))| {
                let mut fields = Value::Object(Map::new());
                for path in owned {
                    let mut at = &mut fields;
                    for k in path {
                        at = at
                            .as_object_mut()
                            .expect("built of objects")
                            .entry(format!("f:{k}"))
                            .or_insert_with(|| json!({}));
                    }
                }
                json!({
                    "manager": manager,
                    "operation": match op { Operation::Apply => "Apply", Operation::Update => "Update" },
                    "apiVersion": api_version,
                    "time": time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields,
                })
            })
            .collect();
        Value::Array(entries)
    }

    /// The managers owning `path` (or a field under it).
    #[cfg(test)]
    pub fn owner(&self, path: &[&str]) -> Vec<String> {
        let path: Path = path.iter().map(|s| (*s).to_owned()).collect();
        self.0
            .iter()
            .filter(|(_, (_, owned))| owned.iter().any(|p| p.starts_with(&path)))
            .map(|(m, _)| m.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_owns_merges_removes_and_conflicts() {
        let mut live = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3, "paused": false}});
        let mut m = Managers::default();
        m.update("kubectl", &live, |_| true);
        // A second manager applies one field with the same value: shared, no conflict.
        m.apply(
            &mut live,
            "deployer",
            &json!({"spec": {"replicas": 3, "x": 1}}),
            false,
        )
        .unwrap();
        assert_eq!(
            live["spec"],
            json!({"replicas": 3, "paused": false, "x": 1})
        );
        // A different value for a field kubectl owns: a conflict unless forced.
        let err = m
            .apply(
                &mut live,
                "deployer",
                &json!({"spec": {"replicas": 5}}),
                false,
            )
            .unwrap_err();
        assert_eq!(
            err.0,
            vec![("kubectl".into(), vec!["spec".into(), "replicas".into()])]
        );
        assert!(
            err.to_string()
                .contains("conflict with \"kubectl\": .spec.replicas")
        );
        m.apply(
            &mut live,
            "deployer",
            &json!({"spec": {"replicas": 5}}),
            true,
        )
        .unwrap();
        // `x`, dropped from the deployer's config and owned by nobody else, is gone.
        assert_eq!(live["spec"], json!({"replicas": 5, "paused": false}));
        assert_eq!(m.owner(&["spec", "replicas"]), vec!["deployer"]);
        assert_eq!(m.owner(&["spec", "paused"]), vec!["kubectl"]);
        // A merge patch that changes a field takes it over.
        merge_patch(&mut live, &json!({"spec": {"replicas": 7}}));
        m.update("kubectl-edit", &json!({"spec": {"replicas": 7}}), |_| true);
        assert_eq!(m.owner(&["spec", "replicas"]), vec!["kubectl-edit"]);
        let rendered = m.render("apps/v1", "t");
        assert!(
            rendered
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["manager"] == "kubectl-edit"
                    && e["fieldsV1"] == json!({"f:spec": {"f:replicas": {}}}))
        );
    }

    #[test]
    fn merge_patch_deletes_nulls_and_identity_fields_are_nobodys() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut v, &json!({"a": {"b": null}, "l": [3]}));
        assert_eq!(v, json!({"a": {"c": 2}, "l": [3]}));
        let s = strip_unowned(&json!({"apiVersion": "v1", "kind": "X", "status": {},
            "metadata": {"name": "n", "resourceVersion": "3", "labels": {"a": "b"}}}));
        assert_eq!(s, json!({"metadata": {"labels": {"a": "b"}}}));
        let mut v = json!({"a": {"b": {"c": 1}}, "d": 1});
        remove(&mut v, &["a".into(), "b".into(), "c".into()]);
        assert_eq!(v, json!({"d": 1}));
    }
}
