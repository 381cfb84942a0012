//! What the fake refuses with 422 `Invalid`, as an API server's validation would:
//! names, label values, a Deployment's selector (required, matching the template's
//! labels, immutable), containers with a name and an image, and a Service's ports.

use serde_json::Value;

use super::resources::Resource;
use super::store::ApiError;

fn invalid(r: Resource, name: &str, field: &str, detail: String) -> ApiError {
    let kind = match r.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{}", r.kind, group.split('.').next().unwrap_or(group)),
        None => r.kind.to_owned(),
    };
    ApiError::new(
        422,
        "Invalid",
        format!("{kind} \"{name}\" is invalid: {field}: {detail}"),
    )
}

/// A DNS-1123 label (`max` 63) or subdomain (`max` 253, dots allowed).
fn dns_name(name: &str, max: usize, dots: bool) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
}

fn label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

/// Checks `object` (the whole object after the write) named `name`; `old` is the
/// stored one for an update.
pub fn validate(
    r: Resource,
    name: &str,
    old: Option<&Value>,
    object: &Value,
) -> Result<(), ApiError> {
    let label_names = matches!(r.kind, "Namespace" | "Service");
    if !dns_name(name, if label_names { 63 } else { 253 }, !label_names) {
        return Err(invalid(
            r,
            name,
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 name must consist of lower case alphanumeric characters or '-'"
            ),
        ));
    }
    for at in ["/metadata/labels", "/spec/template/metadata/labels"] {
        if let Some(labels) = object.pointer(at).and_then(Value::as_object) {
            for (k, v) in labels {
                let ok = v.as_str().is_some_and(label_value);
                if !ok {
                    return Err(invalid(
                        r,
                        name,
                        &format!("{}[{k}]", at.trim_start_matches('/').replace('/', ".")),
                        format!(
                            "Invalid value: {v}: a valid label must be 63 characters or less, alphanumeric, '-', '_' or '.'"
                        ),
                    ));
                }
            }
        }
    }
    match r.kind {
        "Deployment" => deployment(r, name, old, object),
        "Service" => {
            let ports = object.pointer("/spec/ports").and_then(Value::as_array);
            let headless =
                object.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            if ports.is_none_or(Vec::is_empty) && !headless {
                return Err(invalid(r, name, "spec.ports", "Required value".into()));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn deployment(r: Resource, name: &str, old: Option<&Value>, d: &Value) -> Result<(), ApiError> {
    let selector = d.pointer("/spec/selector");
    let Some(match_labels) = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    else {
        return Err(invalid(r, name, "spec.selector", "Required value".into()));
    };
    let template = d.pointer("/spec/template/metadata/labels");
    for (k, v) in match_labels {
        if template.and_then(|t| t.get(k)) != Some(v) {
            return Err(invalid(
                r,
                name,
                "spec.template.metadata.labels",
                format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    template.cloned().unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(old) = old
        && old.pointer("/spec/selector") != selector
    {
        return Err(invalid(
            r,
            name,
            "spec.selector",
            format!(
                "Invalid value: {}: field is immutable",
                selector.cloned().unwrap_or_default()
            ),
        ));
    }
    let containers = d
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if containers.is_empty() {
        return Err(invalid(
            r,
            name,
            "spec.template.spec.containers",
            "Required value".into(),
        ));
    }
    for (i, c) in containers.iter().enumerate() {
        for field in ["name", "image"] {
            if c.get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(invalid(
                    r,
                    name,
                    &format!("spec.template.spec.containers[{i}].{field}"),
                    "Required value".into(),
                ));
            }
        }
    }
    if d.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .is_some_and(|n| n < 0)
    {
        return Err(invalid(
            r,
            name,
            "spec.replicas",
            "Invalid value: must be greater than or equal to 0".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::resources::resource_of_kind;
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_what_an_api_server_refuses() {
        let d = resource_of_kind("Deployment").unwrap();
        let svc = resource_of_kind("Service").unwrap();
        let good = json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a:1"}]}}}});
        validate(d, "a", None, &good).unwrap();
        let err = validate(d, "A_b", None, &good).unwrap_err();
        assert!(
            err.message
                .starts_with("Deployment.apps \"A_b\" is invalid: metadata.name"),
            "{}",
            err.message
        );
        let mut mismatch = good.clone();
        mismatch["spec"]["template"]["metadata"]["labels"]["app"] = json!("b");
        let err = validate(d, "a", None, &mismatch).unwrap_err();
        assert!(
            err.message
                .contains("`selector` does not match template `labels`")
        );
        let mut no_image = good.clone();
        no_image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
        let err = validate(d, "a", None, &no_image).unwrap_err();
        assert!(err.message.contains("containers[0].image: Required value"));
        let mut bad_label = good.clone();
        bad_label["metadata"] = json!({"labels": {"v": "not ok!"}});
        assert_eq!(validate(d, "a", None, &bad_label).unwrap_err().code, 422);
        let err = validate(svc, "a", None, &json!({"spec": {}})).unwrap_err();
        assert!(err.message.ends_with("spec.ports: Required value"));
    }
}
