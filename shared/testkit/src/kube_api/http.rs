//! The HTTP face of the fake: one handler that routes by path, reads a bounded
//! body, and answers JSON objects or `Status` bodies.

use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resources::{PathError, Target, parse_path};
use super::selector::Selector;
use super::store::{ApiError, Store};

/// Largest request body read, in bytes (a real API server's limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The header on every answer, saying what answered.
pub const FAKE_HEADER: &str = "x-toronto-fake";
/// Its value.
pub const FAKE_HEADER_VALUE: &str =
    "kube-api: a fake Kubernetes API server for tests (toronto-testkit), not a cluster";

/// The handler's state.
pub type Shared = Arc<Mutex<Store>>;

fn reply(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(FAKE_HEADER, HeaderValue::from_static(FAKE_HEADER_VALUE));
    response
}

fn error(e: &ApiError) -> Response {
    reply(e.code, &e.status())
}

fn query(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding (`+` stays a plus: Kubernetes clients encode spaces as `%20`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "35", "gitVersion": "v1.35.0-toronto-fake",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none (a fake)",
        "compiler": "none", "platform": "fake/fake",
    })
}

/// Answers one request.
pub async fn handle(
    state: Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
    };
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            // serde_json also refuses nesting deeper than 128.
            Err(e) => {
                return error(&ApiError::new(
                    400,
                    "BadRequest",
                    format!("the body is not JSON: {e}"),
                ));
            }
        }
    };
    let target = match parse_path(uri.path()) {
        Ok(t) => t,
        Err(PathError::NotFound) => {
            return error(&ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
        Err(PathError::UnknownResource(what)) => {
            return error(&ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({what} is not served by the fake)"
                ),
            ));
        }
    };
    let q = query(&uri);
    let param = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    // Like a real API server: the field manager defaults to the user agent's product.
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split('/').next())
        .unwrap_or("unknown")
        .to_owned();
    let manager = param("fieldManager").map_or(agent, str::to_owned);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut store = state.lock().unwrap_or_else(|e| e.into_inner());
    let result = match (&method, target) {
        (&Method::GET, Target::Version) => Ok((200, version())),
        (
            &Method::GET,
            Target::Object {
                resource,
                namespace,
                name,
            },
        ) => store.get(resource, &namespace, &name).map(|v| (200, v)),
        (
            &Method::GET,
            Target::Collection {
                resource,
                namespace,
            },
        ) => {
            if param("watch").is_some_and(|w| w == "true" || w == "1") {
                Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "watch is not modelled by the fake",
                ))
            } else {
                match Selector::parse(param("labelSelector").unwrap_or_default()) {
                    Err(e) => Err(ApiError::new(400, "BadRequest", e)),
                    Ok(sel) => {
                        let items = store.list(resource, namespace.as_deref(), &sel);
                        Ok((
                            200,
                            page(
                                &items,
                                param("limit"),
                                param("continue"),
                                resource.kind,
                                resource.api_version,
                                store.version(),
                            ),
                        ))
                    }
                }
            }
        }
        (
            &Method::POST,
            Target::Collection {
                resource,
                namespace,
            },
        ) => store
            .create(
                resource,
                namespace.as_deref().unwrap_or_default(),
                &manager,
                body,
            )
            .map(|v| (201, v)),
        (
            &Method::PATCH,
            Target::Object {
                resource,
                namespace,
                name,
            },
        ) => match content_type.as_str() {
            "application/apply-patch+yaml" => match param("fieldManager") {
                None => Err(ApiError::new(
                    400,
                    "BadRequest",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                )),
                Some(m) => {
                    let force = param("force") == Some("true");
                    let existed = store.get(resource, &namespace, &name).is_ok();
                    store
                        .apply(resource, &namespace, &name, m, force, body)
                        .map(|v| (if existed { 200 } else { 201 }, v))
                }
            },
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => store
                .merge(resource, &namespace, &name, &manager, body)
                .map(|v| (200, v)),
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({other:?}); the fake accepts apply, merge and strategic merge patches"
                ),
            )),
        },
        (
            &Method::DELETE,
            Target::Object {
                resource,
                namespace,
                name,
            },
        ) => store
            .delete(resource, &namespace, &name, &body)
            .map(|v| (200, v)),
        (m, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported on {} by the fake", uri.path()),
        )),
    };
    drop(store);
    match result {
        Ok((code, v)) => reply(code, &v),
        Err(e) => error(&e),
    }
}

/// A list answer, paged by `limit` and `continue` (an offset).
fn page(
    items: &[Value],
    limit: Option<&str>,
    cont: Option<&str>,
    kind: &str,
    api_version: &str,
    rv: String,
) -> Value {
    let from = cont
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0)
        .min(items.len());
    let limit = limit
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let to = from.saturating_add(limit).min(items.len());
    let mut metadata = json!({"resourceVersion": rv});
    if to < items.len() {
        metadata["continue"] = json!(to.to_string());
        metadata["remainingItemCount"] = json!(items.len() - to);
    }
    json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": metadata, "items": items[from..to]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_and_lists_page() {
        let uri: Uri = "/api/v1/pods?labelSelector=app.kubernetes.io%2Fname%3Dshop&limit=2"
            .parse()
            .unwrap();
        let q = query(&uri);
        assert_eq!(
            q[0],
            ("labelSelector".into(), "app.kubernetes.io/name=shop".into())
        );
        let items: Vec<Value> = (0..3).map(|i| json!({"i": i})).collect();
        let first = page(&items, Some("2"), None, "Pod", "v1", "7".into());
        assert_eq!(first["items"].as_array().unwrap().len(), 2);
        assert_eq!(first["metadata"]["continue"], "2");
        assert_eq!(first["kind"], "PodList");
        let rest = page(&items, Some("2"), Some("2"), "Pod", "v1", "7".into());
        assert_eq!(rest["items"], json!([{"i": 2}]));
        assert!(rest["metadata"]["continue"].is_null());
    }
}
