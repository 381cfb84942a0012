//! The mock API server and layouts shared by the tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use toronto_deployer::kube::{KubeSettings, KubeTarget};
use toronto_deployer::target::{Layout, Routing, Track, Workload};

// ---------------------------------------------------------------------------------
// The mock API server
// ---------------------------------------------------------------------------------

/// One request the target sent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Seen {
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

pub enum Reply {
    /// Answer with a status and a JSON body.
    Json(u16, Value),
    /// Answer with a status and a plain-text body (a proxy's error page).
    Text(u16, &'static str),
    /// Never answer.
    Hang,
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A target on kube's mock service; `respond` answers every request, and every
/// request is logged.
pub fn mock_target(
    settings: KubeSettings,
    respond: impl Fn(&Seen) -> Reply + Send + 'static,
) -> (KubeTarget, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let seen_log = log.clone();
    tokio::spawn(async move {
        let mut hung = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let query = parts
                .uri
                .query()
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query,
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body: if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("request body is JSON")
                },
            };
            let reply = respond(&seen);
            seen_log.lock().expect("log").push(seen);
            let (code, body, ctype) = match reply {
                Reply::Json(code, v) => (code, v.to_string(), "application/json"),
                Reply::Text(code, t) => (code, t.to_string(), "text/plain"),
                Reply::Hang => {
                    hung.push(send);
                    continue;
                }
            };
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", ctype)
                    .body(Body::from(body.into_bytes()))
                    .expect("response"),
            );
        }
    });
    let client = kube::Client::new(service, "default");
    (KubeTarget::new(client, settings), log)
}

pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

pub fn not_found(path: &str) -> Reply {
    let name = path.rsplit('/').next().unwrap_or_default();
    Reply::Json(
        404,
        status_body(404, "NotFound", &format!("\"{name}\" not found")),
    )
}

/// Answers server-side applies with the applied object (as the API server does,
/// plus server-set metadata) and GETs from `objects` by path (404 otherwise).
pub fn api_server(objects: Vec<(String, Value)>) -> impl Fn(&Seen) -> Reply + Send + 'static {
    let objects: HashMap<String, Value> = objects.into_iter().collect();
    move |req| match req.method.as_str() {
        "PATCH" => {
            let mut obj = req.body.clone();
            obj["metadata"]["uid"] = json!("0b7a0c9e-0000-4000-8000-000000000001");
            obj["metadata"]["generation"] = json!(1);
            obj["metadata"]["resourceVersion"] = json!("1000");
            Reply::Json(200, obj)
        }
        "GET" => match objects.get(&req.path) {
            Some(v) => Reply::Json(200, v.clone()),
            None => not_found(&req.path),
        },
        "DELETE" => match objects.get(&req.path) {
            Some(v) => {
                let mut ns = v.clone();
                ns["status"] = json!({"phase": "Terminating"});
                Reply::Json(200, ns)
            }
            None => not_found(&req.path),
        },
        _ => Reply::Json(405, status_body(405, "MethodNotAllowed", "not here")),
    }
}

pub fn requests(log: &Log) -> Vec<Seen> {
    log.lock().expect("log").clone()
}

/// Asserts a server-side apply: PATCH with `fieldManager=toronto-deployer`,
/// `force=true` and the apply-patch content type.
pub fn assert_apply(req: &Seen, path: &str) {
    assert_eq!(req.line(), format!("PATCH {path}"));
    assert_eq!(
        req.query,
        BTreeMap::from([
            ("fieldManager".to_string(), "toronto-deployer".to_string()),
            ("force".to_string(), "true".to_string()),
        ]),
        "query of {path}"
    );
    assert_eq!(
        req.content_type.as_deref(),
        Some("application/apply-patch+yaml"),
        "content type of {path}"
    );
}

// ---------------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------------

pub fn settings() -> KubeSettings {
    KubeSettings::from_vars(&HashMap::from([(
        "TORONTO_DEPLOYER_NAMESPACES".to_string(),
        "production=prod,staging=stg".to_string(),
    )]))
    .expect("settings")
}

pub fn istio_settings() -> KubeSettings {
    KubeSettings::from_vars(&HashMap::from([
        (
            "TORONTO_DEPLOYER_NAMESPACES".to_string(),
            "production=prod".to_string(),
        ),
        ("TORONTO_DEPLOYER_MESH".to_string(), "istio".to_string()),
    ]))
    .expect("settings")
}

pub fn gateway_settings() -> KubeSettings {
    KubeSettings::from_vars(&HashMap::from([
        (
            "TORONTO_DEPLOYER_NAMESPACES".to_string(),
            "production=prod".to_string(),
        ),
        (
            "TORONTO_DEPLOYER_GATEWAY".to_string(),
            "infra/public".to_string(),
        ),
    ]))
    .expect("settings")
}

pub fn workload(name: &str, track: Track, version: &str, replicas: u32) -> Workload {
    Workload {
        name: name.into(),
        track,
        version: version.into(),
        image: format!("registry.example/shop-api:{version}"),
        replicas,
    }
}

pub fn rolling(version: &str, step: &str) -> Layout {
    Layout {
        service: "shop-api".into(),
        environment: "production".into(),
        workloads: vec![workload("shop-api", Track::Stable, version, 3)],
        routing: Routing::Rolling {
            max_surge: "25%".into(),
            max_unavailable: "0".into(),
        },
        step_key: step.into(),
        progress_deadline_seconds: 600,
        pod_template: None,
    }
}

pub fn blue_green(active: Track, preview: Option<Track>, blue: u32, step: &str) -> Layout {
    Layout {
        service: "shop-api".into(),
        environment: "production".into(),
        workloads: vec![
            workload("shop-api-blue", Track::Blue, "2.4.0", blue),
            workload("shop-api-green", Track::Green, "2.4.1", 3),
        ],
        routing: Routing::BlueGreen { active, preview },
        step_key: step.into(),
        progress_deadline_seconds: 600,
        pod_template: None,
    }
}

pub fn canary(weight: u8, stable: u32, canary: u32, step: &str) -> Layout {
    Layout {
        service: "shop-api".into(),
        environment: "production".into(),
        workloads: vec![
            workload("shop-api", Track::Stable, "2.4.0", stable),
            workload("shop-api-canary", Track::Canary, "2.4.1", canary),
        ],
        routing: Routing::Canary {
            canary_weight: weight,
        },
        step_key: step.into(),
        progress_deadline_seconds: 300,
        pod_template: None,
    }
}

pub const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/prod/deployments";
pub const SERVICES: &str = "/api/v1/namespaces/prod/services";
pub const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/prod/httproutes";
pub const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/namespaces/prod/virtualservices";

/// The body without the step annotation (what differs between any two steps).
pub fn without_step(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(a) = b
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove("toronto.dev/step");
    }
    b
}

/// Whether a Service selector selects a pod template's labels.
pub fn selects(selector: &Value, pod_labels: &Value) -> bool {
    selector
        .as_object()
        .expect("selector")
        .iter()
        .all(|(k, v)| pod_labels.get(k) == Some(v))
}
