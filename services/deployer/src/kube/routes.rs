//! Traffic routers that weigh canary traffic exactly: Gateway API HTTPRoute
//! (`TORONTO_DEPLOYER_GATEWAY`) and Istio VirtualService (`TORONTO_DEPLOYER_MESH=istio`).
//! Both send the stable share to Service `<svc>-stable` and the canary share to
//! `<svc>-canary`; drift compares their weights.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

/// The Gateway API HTTPRoute resource (`gateway.networking.k8s.io/v1`).
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The Istio VirtualService resource (`networking.istio.io/v1`).
pub fn virtual_service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
    )
}

/// The (stable, canary) weights of a canary weight.
fn split(canary_weight: u8) -> (i32, i32) {
    let canary = i32::from(canary_weight.min(100));
    (100 - canary, canary)
}

/// A backend filter that names the track in the response (`x-toronto-track`). It
/// also makes Envoy Gateway give each backend its own cluster
/// (`httproute/<ns>/<route>/rule/0/backend/<i>`), so that its metrics tell the canary
/// from the stable (the `envoy-gateway` analysis template reads them).
fn track_header(track: &str) -> Value {
    json!({
        "type": "ResponseHeaderModifier",
        "responseHeaderModifier": {"set": [{"name": "x-toronto-track", "value": track}]}
    })
}

/// HTTPRoute `<svc>` under Gateway `gw_namespace/gw_name`.
pub(super) fn http_route(
    svc: &str,
    port: i32,
    (gw_namespace, gw_name): (&str, &str),
    canary_weight: u8,
    meta: ObjectMeta,
) -> DynamicObject {
    let (stable, canary) = split(canary_weight);
    let mut obj = DynamicObject::new(svc, &http_route_resource()).data(json!({
        "spec": {
            "parentRefs": [{
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "namespace": gw_namespace,
                "name": gw_name,
            }],
            "rules": [{
                "backendRefs": [
                    {"group": "", "kind": "Service", "name": format!("{svc}-stable"), "port": port, "weight": stable, "filters": [track_header("stable")]},
                    {"group": "", "kind": "Service", "name": format!("{svc}-canary"), "port": port, "weight": canary, "filters": [track_header("canary")]},
                ]
            }]
        }
    }));
    obj.metadata = meta;
    obj
}

/// VirtualService `<svc>` for host `<svc>` (in-mesh clients of the Service `<svc>`).
pub(super) fn virtual_service(
    svc: &str,
    port: i32,
    canary_weight: u8,
    meta: ObjectMeta,
) -> DynamicObject {
    let (stable, canary) = split(canary_weight);
    let destination = |track: &str, weight: i32| {
        json!({
            "destination": {"host": format!("{svc}-{track}"), "port": {"number": port}},
            "weight": weight,
            "headers": {"response": {"set": {"x-toronto-track": track}}}
        })
    };
    let mut obj = DynamicObject::new(svc, &virtual_service_resource()).data(json!({
        "spec": {
            "hosts": [svc],
            "http": [{
                "route": [destination("stable", stable), destination("canary", canary)]
            }]
        }
    }));
    obj.metadata = meta;
    obj
}

/// (backend name, weight) of every backend of an HTTPRoute or destination of a
/// VirtualService.
fn weights(route: &DynamicObject) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if let Some(rules) = route.data.pointer("/spec/rules").and_then(Value::as_array) {
        for r in rules
            .iter()
            .filter_map(|rule| rule.get("backendRefs").and_then(Value::as_array))
            .flatten()
        {
            if let Some(name) = r.get("name").and_then(Value::as_str) {
                let weight = r.get("weight").cloned().unwrap_or_else(|| json!(1));
                out.push((name.to_string(), weight));
            }
        }
    }
    if let Some(http) = route.data.pointer("/spec/http").and_then(Value::as_array) {
        for r in http
            .iter()
            .filter_map(|h| h.get("route").and_then(Value::as_array))
            .flatten()
        {
            if let Some(host) = r.pointer("/destination/host").and_then(Value::as_str) {
                let weight = r.get("weight").cloned().unwrap_or(Value::Null);
                out.push((host.to_string(), weight));
            }
        }
    }
    out
}

/// Where the live router's weights differ from the desired ones: (field, desired,
/// live).
pub(super) fn route_diffs(
    want: &DynamicObject,
    live: &DynamicObject,
) -> Vec<(String, Value, Value)> {
    let live_weights = weights(live);
    let field = |name: &str| {
        if want.data.pointer("/spec/http").is_some() {
            format!("spec.http[0].route[host={name}].weight")
        } else {
            format!("spec.rules[0].backendRefs[name={name}].weight")
        }
    };
    weights(want)
        .into_iter()
        .filter_map(|(name, w)| {
            let l = live_weights
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Value::Null, |(_, v)| v.clone());
            (w != l).then(|| (field(&name), w, l))
        })
        .collect()
}
