//! The Kubernetes target against a mock API server.
//!
//! No Kubernetes API server can run on the build machines, so these tests put kube's
//! mock service (`tower_test::mock::pair`) behind a real `kube::Client` and assert
//! the exact requests the target sends (method, path, query, content type, JSON
//! body), answering with recorded-style API responses. The generated manifests are
//! also fed to `kubectl apply --dry-run=client` (which still asks a server for API
//! discovery: a loopback stub answers that), and one test runs against a real
//! cluster when `KUBECONFIG` is set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use toronto_deployer::kube::{
    KubeSettings, KubeTarget, Manifest, manifest_list, manifests, namespace_manifest,
};
use toronto_deployer::target::{Layout, Routing, Target, TargetError, Track, Workload};
use toronto_protocol::tasks::ChaosFault;

// ---------------------------------------------------------------------------------
// The mock API server
// ---------------------------------------------------------------------------------

/// One request the target sent.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    body: Value,
}

impl Seen {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

enum Reply {
    /// Answer with a status and a JSON body.
    Json(u16, Value),
    /// Answer with a status and a plain-text body (a proxy's error page).
    Text(u16, &'static str),
    /// Never answer.
    Hang,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A target on kube's mock service; `respond` answers every request, and every
/// request is logged.
fn mock_target(
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

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn not_found(path: &str) -> Reply {
    let name = path.rsplit('/').next().unwrap_or_default();
    Reply::Json(
        404,
        status_body(404, "NotFound", &format!("\"{name}\" not found")),
    )
}

/// Answers server-side applies with the applied object (as the API server does,
/// plus server-set metadata) and GETs from `objects` by path (404 otherwise).
fn api_server(objects: Vec<(String, Value)>) -> impl Fn(&Seen) -> Reply + Send + 'static {
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

fn requests(log: &Log) -> Vec<Seen> {
    log.lock().expect("log").clone()
}

/// Asserts a server-side apply: PATCH with `fieldManager=toronto-deployer`,
/// `force=true` and the apply-patch content type.
fn assert_apply(req: &Seen, path: &str) {
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

fn settings() -> KubeSettings {
    KubeSettings::from_vars(&HashMap::from([(
        "TORONTO_DEPLOYER_NAMESPACES".to_string(),
        "production=prod,staging=stg".to_string(),
    )]))
    .expect("settings")
}

fn gateway_settings() -> KubeSettings {
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

fn workload(name: &str, track: Track, version: &str, replicas: u32) -> Workload {
    Workload {
        name: name.into(),
        track,
        version: version.into(),
        image: format!("registry.example/shop-api:{version}"),
        replicas,
    }
}

fn rolling(version: &str, step: &str) -> Layout {
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
    }
}

fn blue_green(active: Track, preview: Option<Track>, blue: u32, step: &str) -> Layout {
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
    }
}

fn canary(weight: u8, stable: u32, canary: u32, step: &str) -> Layout {
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
    }
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/prod/deployments";
const SERVICES: &str = "/api/v1/namespaces/prod/services";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/prod/httproutes";

/// The body without the step annotation (what differs between any two steps).
fn without_step(body: &Value) -> Value {
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
fn selects(selector: &Value, pod_labels: &Value) -> bool {
    selector
        .as_object()
        .expect("selector")
        .iter()
        .all(|(k, v)| pod_labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------
// Apply
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn rolling_applies_one_deployment_and_its_service_server_side() {
    let (target, log) = mock_target(settings(), api_server(vec![]));
    target
        .apply(&rolling("2.4.1", "r1:s1"))
        .await
        .expect("apply");
    let reqs = requests(&log);
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_apply(&reqs[0], &format!("{DEPLOYMENTS}/shop-api"));
    assert_eq!(
        reqs[0].body,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "shop-api",
                "namespace": "prod",
                "labels": {
                    "app.kubernetes.io/name": "shop-api",
                    "app.kubernetes.io/managed-by": "toronto-deployer",
                    "app.kubernetes.io/version": "2.4.1",
                    "track": "stable"
                },
                "annotations": {"toronto.dev/step": "r1:s1"}
            },
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app.kubernetes.io/name": "shop-api", "track": "stable"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
                "progressDeadlineSeconds": 600,
                "revisionHistoryLimit": 10,
                "template": {
                    "metadata": {"labels": {
                        "app.kubernetes.io/name": "shop-api",
                        "app.kubernetes.io/managed-by": "toronto-deployer",
                        "app.kubernetes.io/version": "2.4.1",
                        "track": "stable"
                    }},
                    "spec": {"containers": [{
                        "name": "shop-api",
                        "image": "registry.example/shop-api:2.4.1",
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
                    }]}
                }
            }
        })
    );
    assert_apply(&reqs[1], &format!("{SERVICES}/shop-api"));
    assert_eq!(
        reqs[1].body,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "shop-api",
                "namespace": "prod",
                "labels": {
                    "app.kubernetes.io/name": "shop-api",
                    "app.kubernetes.io/managed-by": "toronto-deployer",
                    "track": "stable"
                },
                "annotations": {"toronto.dev/step": "r1:s1"}
            },
            "spec": {
                "type": "ClusterIP",
                "selector": {"app.kubernetes.io/name": "shop-api", "track": "stable"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
            }
        })
    );

    // The same layout at the next step: the same objects, only the step differs,
    // and nothing in the pod template changes (no pod restarts for a new step).
    target
        .apply(&rolling("2.4.1", "r1:s2"))
        .await
        .expect("apply");
    let again = requests(&log);
    assert_eq!(again.len(), 4);
    assert_eq!(
        again[2].body["metadata"]["annotations"]["toronto.dev/step"],
        "r1:s2"
    );
    assert_eq!(without_step(&again[2].body), without_step(&reqs[0].body));
    assert_eq!(without_step(&again[3].body), without_step(&reqs[1].body));
}

#[tokio::test]
async fn rollback_applies_the_previous_image_in_one_request() {
    let (target, log) = mock_target(settings(), api_server(vec![]));
    target
        .apply(&rolling("2.4.1", "r2:update"))
        .await
        .expect("apply v2");
    target
        .apply(&rolling("2.4.0", "r2:rollback"))
        .await
        .expect("rollback");
    let reqs = requests(&log);
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    let rollback = &reqs[2];
    assert_apply(rollback, &format!("{DEPLOYMENTS}/shop-api"));
    assert_eq!(
        rollback.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/shop-api:2.4.0"
    );
    assert_eq!(
        rollback.body["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"],
        "2.4.0"
    );
    assert_eq!(
        rollback.body["metadata"]["annotations"]["toronto.dev/step"],
        "r2:rollback"
    );
    // Old ReplicaSets are kept so a rollback to a recent version reuses one.
    assert_eq!(rollback.body["spec"]["revisionHistoryLimit"], 10);
    // The rollback is the whole difference: the Service is applied unchanged.
    assert_eq!(without_step(&reqs[3].body), without_step(&reqs[1].body));
}

#[tokio::test]
async fn blue_green_switches_the_active_selector_on_promotion() {
    let (target, log) = mock_target(settings(), api_server(vec![]));
    target
        .apply(&blue_green(
            Track::Blue,
            Some(Track::Green),
            3,
            "bg:preview",
        ))
        .await
        .expect("preview");
    let before = requests(&log);
    let lines: Vec<String> = before.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            format!("PATCH {DEPLOYMENTS}/shop-api-blue"),
            format!("PATCH {DEPLOYMENTS}/shop-api-green"),
            format!("PATCH {SERVICES}/shop-api"),
            format!("PATCH {SERVICES}/shop-api-preview"),
        ]
    );
    for r in &before {
        assert_apply(r, &r.path);
    }
    let blue_pods = &before[0].body["spec"]["template"]["metadata"]["labels"];
    let green_pods = &before[1].body["spec"]["template"]["metadata"]["labels"];
    assert_eq!(blue_pods["colour"], "blue");
    assert_eq!(green_pods["colour"], "green");
    assert_eq!(
        before[0].body["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "shop-api", "colour": "blue"})
    );
    let active_sel = &before[2].body["spec"]["selector"];
    let preview_sel = &before[3].body["spec"]["selector"];
    assert_eq!(
        active_sel,
        &json!({"app.kubernetes.io/name": "shop-api", "colour": "blue"})
    );
    assert!(selects(active_sel, blue_pods) && !selects(active_sel, green_pods));
    assert!(selects(preview_sel, green_pods) && !selects(preview_sel, blue_pods));

    // Promotion: the engine applies the layout with `active` switched.
    target
        .apply(&blue_green(Track::Green, None, 3, "bg:promote"))
        .await
        .expect("promote");
    let after = requests(&log)[4..].to_vec();
    assert_eq!(after.len(), 3, "preview Service left alone: {after:#?}");
    // Deployments: the same bodies; only the active Service's request changed.
    assert_eq!(without_step(&after[0].body), without_step(&before[0].body));
    assert_eq!(without_step(&after[1].body), without_step(&before[1].body));
    assert_eq!(after[2].path, format!("{SERVICES}/shop-api"));
    assert_ne!(without_step(&after[2].body), without_step(&before[2].body));
    let switched = &after[2].body["spec"]["selector"];
    assert_eq!(
        switched,
        &json!({"app.kubernetes.io/name": "shop-api", "colour": "green"})
    );
    assert!(selects(switched, green_pods) && !selects(switched, blue_pods));
    let mut only_selector = without_step(&before[2].body);
    only_selector["spec"]["selector"] = switched.clone();
    only_selector["metadata"]["labels"]["colour"] = json!("green");
    assert_eq!(without_step(&after[2].body), only_selector);

    // Scaling the old colour down keeps its Deployment, at 0 replicas.
    target
        .apply(&blue_green(Track::Green, None, 0, "bg:scale-down"))
        .await
        .expect("scale down");
    let down = requests(&log)[7..].to_vec();
    assert!(down.iter().all(|r| r.method == "PATCH"), "{down:#?}");
    assert_eq!(down[0].path, format!("{DEPLOYMENTS}/shop-api-blue"));
    assert_eq!(down[0].body["spec"]["replicas"], 0);
    assert_eq!(down[1].body["spec"]["replicas"], 3);
}

#[tokio::test]
async fn canary_without_gateway_splits_by_replica_ratio() {
    let (target, log) = mock_target(settings(), api_server(vec![]));
    target
        .apply(&canary(10, 9, 1, "c1:10"))
        .await
        .expect("apply");
    let reqs = requests(&log);
    let lines: Vec<String> = reqs.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            format!("PATCH {DEPLOYMENTS}/shop-api"),
            format!("PATCH {DEPLOYMENTS}/shop-api-canary"),
            format!("PATCH {SERVICES}/shop-api"),
        ],
        "no HTTPRoute without a Gateway"
    );
    for r in &reqs {
        assert_apply(r, &r.path);
    }
    let (stable, canary) = (&reqs[0].body, &reqs[1].body);
    assert_eq!(stable["spec"]["replicas"], 9);
    assert_eq!(canary["spec"]["replicas"], 1);
    assert_eq!(stable["metadata"]["labels"]["track"], "stable");
    assert_eq!(canary["metadata"]["labels"]["track"], "canary");
    assert_eq!(
        canary["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/shop-api:2.4.1"
    );
    assert_eq!(canary["spec"]["progressDeadlineSeconds"], 300);
    let stable_pods = &stable["spec"]["template"]["metadata"]["labels"];
    let canary_pods = &canary["spec"]["template"]["metadata"]["labels"];
    // One Service over both tracks: traffic follows the replica ratio (9:1).
    let sel = &reqs[2].body["spec"]["selector"];
    assert_eq!(sel, &json!({"app.kubernetes.io/name": "shop-api"}));
    assert!(selects(sel, stable_pods) && selects(sel, canary_pods));
    // The Deployments do not select each other's pods.
    let stable_sel = &stable["spec"]["selector"]["matchLabels"];
    let canary_sel = &canary["spec"]["selector"]["matchLabels"];
    assert!(selects(stable_sel, stable_pods) && !selects(stable_sel, canary_pods));
    assert!(selects(canary_sel, canary_pods) && !selects(canary_sel, stable_pods));
    // The stable Deployment keeps the rolling Deployment's selector (immutable in the API).
    let rolling_manifests = manifests(&rolling("2.4.0", "x"), &settings()).expect("manifests");
    let rolling_sel = rolling_manifests[0].to_json()["spec"]["selector"].clone();
    assert_eq!(&rolling_sel, &stable["spec"]["selector"]);
}

#[tokio::test]
async fn canary_with_gateway_weighs_an_httproute() {
    let (target, log) = mock_target(gateway_settings(), api_server(vec![]));
    target
        .apply(&canary(10, 3, 1, "c2:10"))
        .await
        .expect("apply");
    let reqs = requests(&log);
    let lines: Vec<String> = reqs.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            format!("PATCH {DEPLOYMENTS}/shop-api"),
            format!("PATCH {DEPLOYMENTS}/shop-api-canary"),
            format!("PATCH {SERVICES}/shop-api"),
            format!("PATCH {SERVICES}/shop-api-stable"),
            format!("PATCH {SERVICES}/shop-api-canary"),
            format!("PATCH {ROUTES}/shop-api"),
        ]
    );
    for r in &reqs {
        assert_apply(r, &r.path);
    }
    let stable_pods = &reqs[0].body["spec"]["template"]["metadata"]["labels"];
    let canary_pods = &reqs[1].body["spec"]["template"]["metadata"]["labels"];
    let stable_svc = &reqs[3].body["spec"]["selector"];
    let canary_svc = &reqs[4].body["spec"]["selector"];
    assert!(selects(stable_svc, stable_pods) && !selects(stable_svc, canary_pods));
    assert!(selects(canary_svc, canary_pods) && !selects(canary_svc, stable_pods));
    assert_eq!(
        reqs[5].body,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {
                "name": "shop-api",
                "namespace": "prod",
                "labels": {
                    "app.kubernetes.io/name": "shop-api",
                    "app.kubernetes.io/managed-by": "toronto-deployer"
                },
                "annotations": {"toronto.dev/step": "c2:10"}
            },
            "spec": {
                "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "public"}],
                "rules": [{"backendRefs": [
                    {"group": "", "kind": "Service", "name": "shop-api-stable", "port": 80, "weight": 90},
                    {"group": "", "kind": "Service", "name": "shop-api-canary", "port": 80, "weight": 10}
                ]}]
            }
        })
    );

    // The next step moves the weights and nothing else of the route.
    target
        .apply(&canary(50, 3, 3, "c2:50"))
        .await
        .expect("apply");
    let next = requests(&log)[6..].to_vec();
    let route = &next[5].body;
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["weight"], 50);
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][1]["weight"], 50);
    let mut expected = without_step(&reqs[5].body);
    expected["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(50);
    expected["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(50);
    assert_eq!(without_step(route), expected);
    assert_eq!(next[1].body["spec"]["replicas"], 3);
}

#[tokio::test]
async fn an_invalid_layout_is_refused_before_any_request() {
    let (target, log) = mock_target(settings(), api_server(vec![]));
    let mut bad_version = rolling("2.4.1+build.7", "x");
    bad_version.workloads[0].version = "2.4.1+build.7".into();
    let mut no_canary = canary(20, 3, 1, "x");
    no_canary.workloads.pop();
    let mut bad_env = rolling("2.4.1", "x");
    bad_env.environment = "Production".into();
    for layout in [bad_version, no_canary, bad_env] {
        let err = target.apply(&layout).await.expect_err("invalid");
        assert!(
            matches!(err, TargetError::Refused { .. }),
            "{layout:?}: {err}"
        );
    }
    assert!(requests(&log).is_empty());
}

// ---------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------

/// A Deployment as the API server returns it.
fn live_deployment(
    name: &str,
    version: &str,
    generation: i64,
    replicas: i32,
    status: Value,
) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": "prod", "generation": generation,
            "uid": "5e1c2f4a-1111-4000-8000-000000000002", "resourceVersion": "4242",
            "labels": {"app.kubernetes.io/name": "shop-api", "app.kubernetes.io/managed-by": "toronto-deployer"},
            "annotations": {"deployment.kubernetes.io/revision": "7", "toronto.dev/step": "r:s"}
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "shop-api", "track": "stable"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "shop-api", "track": "stable", "app.kubernetes.io/version": version}},
                "spec": {"containers": [{"name": "shop-api", "image": format!("registry.example/shop-api:{version}")}]}
            },
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "progressDeadlineSeconds": 600, "revisionHistoryLimit": 10
        },
        "status": status
    })
}

#[tokio::test]
async fn status_reads_counts_versions_deadlines_and_generation_lag() {
    let healthy = live_deployment(
        "shop-api",
        "2.4.0",
        3,
        3,
        json!({
            "observedGeneration": 3, "replicas": 3, "updatedReplicas": 3,
            "readyReplicas": 3, "availableReplicas": 3,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "ReplicaSet \"shop-api-5d9c\" has successfully progressed."}
            ]
        }),
    );
    let stuck = live_deployment(
        "shop-api-canary",
        "2.4.1",
        2,
        1,
        json!({
            "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
            "unavailableReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability."},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"shop-api-canary-7f8b\" has timed out progressing."}
            ]
        }),
    );
    // The spec changed (generation 5) but the controller has only seen 4: the counts
    // are those of the previous template, and its old deadline failure is stale.
    let lagging = live_deployment(
        "shop-api-blue",
        "2.4.2",
        5,
        3,
        json!({
            "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3,
            "readyReplicas": 3, "availableReplicas": 3,
            "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "old"}
            ]
        }),
    );
    // Mid-rollout: 3 updated pods, one old pod still running; 3 ready in total,
    // which may include the old one.
    let rolling_over = live_deployment(
        "shop-api-green",
        "2.4.3",
        8,
        3,
        json!({
            "observedGeneration": 8, "replicas": 4, "updatedReplicas": 3,
            "readyReplicas": 3, "availableReplicas": 3,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]
        }),
    );
    let (target, log) = mock_target(
        settings(),
        api_server(vec![
            (format!("{DEPLOYMENTS}/shop-api"), healthy),
            (format!("{DEPLOYMENTS}/shop-api-canary"), stuck),
            (format!("{DEPLOYMENTS}/shop-api-blue"), lagging),
            (format!("{DEPLOYMENTS}/shop-api-green"), rolling_over),
        ]),
    );
    let names: Vec<String> = [
        "shop-api",
        "shop-api-canary",
        "shop-api-blue",
        "shop-api-green",
        "shop-api-gone",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let status = target
        .status("shop-api", "production", &names)
        .await
        .expect("status");
    let lines: Vec<String> = requests(&log).iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        names
            .iter()
            .map(|n| format!("GET {DEPLOYMENTS}/{n}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(status.workloads.len(), 4, "the missing one is left out");
    assert!(status.workload("shop-api-gone").is_none());

    let ok = status.workload("shop-api").expect("stable");
    assert_eq!(
        (
            ok.version.as_str(),
            ok.replicas,
            ok.updated,
            ok.ready,
            ok.available
        ),
        ("2.4.0", 3, 3, 3, 3)
    );
    assert!(ok.is_ready() && ok.failure.is_none());

    let stuck = status.workload("shop-api-canary").expect("canary");
    assert!(!stuck.is_ready());
    let failure = stuck.failure.as_deref().expect("deadline exceeded");
    assert!(
        failure.starts_with("ProgressDeadlineExceeded") && failure.contains("timed out"),
        "{failure}"
    );

    let lag = status.workload("shop-api-blue").expect("blue");
    assert_eq!(lag.version, "2.4.2");
    assert_eq!(
        lag.updated, 0,
        "nothing is updated before the spec is observed"
    );
    assert!(!lag.is_ready());
    assert_eq!(lag.failure, None, "a failure of the previous spec is stale");

    let mid = status.workload("shop-api-green").expect("green");
    assert_eq!((mid.updated, mid.ready, mid.available), (3, 2, 2));
    assert!(!mid.is_ready(), "an old pod still runs");
}

// ---------------------------------------------------------------------------------
// Drift
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn drift_reports_changed_and_missing_objects() {
    let layout = canary(10, 9, 1, "c1:10");
    let desired: Vec<Value> = manifests(&layout, &settings())
        .expect("manifests")
        .iter()
        .map(Manifest::to_json)
        .collect();
    // Someone scaled the stable Deployment by hand and set another image.
    let mut stable = desired[0].clone();
    stable["spec"]["replicas"] = json!(5);
    stable["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("registry.example/shop-api:hotfix");
    stable["status"] = json!({"observedGeneration": 2, "replicas": 5});
    // The Service selects the stable track only.
    let mut svc = desired[2].clone();
    svc["spec"]["selector"]["track"] = json!("stable");
    svc["spec"]["clusterIP"] = json!("10.0.0.17");
    let (target, log) = mock_target(
        settings(),
        api_server(vec![
            (format!("{DEPLOYMENTS}/shop-api"), stable),
            (format!("{SERVICES}/shop-api"), svc),
            // Deployment shop-api-canary is missing.
        ]),
    );
    let drifts = target.drift(&layout).await.expect("drift");
    assert!(requests(&log).iter().all(|r| r.method == "GET"));
    let got: Vec<(String, String, Value, Value)> = drifts
        .iter()
        .map(|d| {
            assert_eq!(
                (d.service.as_str(), d.environment.as_str(), d.remediated),
                ("shop-api", "production", false)
            );
            (
                d.object.clone(),
                d.field.clone(),
                d.desired.clone(),
                d.live.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "Deployment/shop-api".into(),
                "spec.replicas".into(),
                json!(9),
                json!(5)
            ),
            (
                "Deployment/shop-api".into(),
                "spec.template.spec.containers[name=shop-api].image".into(),
                json!("registry.example/shop-api:2.4.0"),
                json!("registry.example/shop-api:hotfix")
            ),
            (
                "Deployment/shop-api-canary".into(),
                "metadata.name".into(),
                json!("shop-api-canary"),
                Value::Null
            ),
            (
                "Service/shop-api".into(),
                "spec.selector".into(),
                json!({"app.kubernetes.io/name": "shop-api"}),
                json!({"app.kubernetes.io/name": "shop-api", "track": "stable"})
            ),
        ]
    );
}

#[tokio::test]
async fn no_drift_when_live_objects_match_and_route_weights_are_compared() {
    let layout = canary(25, 3, 1, "c2:25");
    let desired: Vec<(String, Value)> = manifests(&layout, &gateway_settings())
        .expect("manifests")
        .iter()
        .map(|m| {
            let base = match m {
                Manifest::Deployment(_) => DEPLOYMENTS,
                Manifest::Service(_) => SERVICES,
                Manifest::HttpRoute(_) => ROUTES,
                Manifest::Namespace(_) => "/api/v1/namespaces",
            };
            (format!("{base}/{}", m.name()), m.to_json())
        })
        .collect();
    let (target, _log) = mock_target(gateway_settings(), api_server(desired.clone()));
    assert_eq!(target.drift(&layout).await.expect("drift"), vec![]);

    // Someone moved all traffic to stable on the route.
    let mut live = desired;
    let route = &mut live.last_mut().expect("route").1;
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(100);
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(0);
    let (target, _log) = mock_target(gateway_settings(), api_server(live));
    let drifts = target.drift(&layout).await.expect("drift");
    let got: Vec<(&str, &str, &Value, &Value)> = drifts
        .iter()
        .map(|d| (d.object.as_str(), d.field.as_str(), &d.desired, &d.live))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "HTTPRoute/shop-api",
                "spec.rules[0].backendRefs[name=shop-api-stable].weight",
                &json!(75),
                &json!(100)
            ),
            (
                "HTTPRoute/shop-api",
                "spec.rules[0].backendRefs[name=shop-api-canary].weight",
                &json!(25),
                &json!(0)
            ),
        ]
    );
}

// ---------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn provision_applies_the_namespace_and_teardown_deletes_only_a_managed_one() {
    let (target, log) = mock_target(settings(), api_server(vec![]));
    target
        .provision_environment("staging")
        .await
        .expect("provision");
    let reqs = requests(&log);
    assert_eq!(reqs.len(), 1);
    assert_apply(&reqs[0], "/api/v1/namespaces/stg");
    assert_eq!(
        reqs[0].body,
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "stg",
                "labels": {"app.kubernetes.io/managed-by": "toronto-deployer"},
                "annotations": {"toronto.dev/environment": "staging"}
            }
        })
    );

    let managed = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "stg", "uid": "7d2c9a1e-2222-4000-8000-000000000003", "resourceVersion": "77",
                     "labels": {"app.kubernetes.io/managed-by": "toronto-deployer", "kubernetes.io/metadata.name": "stg"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
    });
    let by_hand = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "prod", "uid": "7d2c9a1e-3333-4000-8000-000000000004",
                     "labels": {"kubernetes.io/metadata.name": "prod"}},
        "status": {"phase": "Active"}
    });
    let (target, log) = mock_target(
        settings(),
        api_server(vec![
            ("/api/v1/namespaces/stg".into(), managed),
            ("/api/v1/namespaces/prod".into(), by_hand),
        ]),
    );
    target
        .teardown_environment("staging")
        .await
        .expect("teardown");
    let reqs = requests(&log);
    let lines: Vec<String> = reqs.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            "GET /api/v1/namespaces/stg",
            "DELETE /api/v1/namespaces/stg"
        ]
    );
    assert_eq!(
        reqs[1].body["preconditions"]["uid"], "7d2c9a1e-2222-4000-8000-000000000003",
        "deletes exactly the namespace it looked at"
    );

    // A namespace the deployer did not create is not deleted.
    let err = target
        .teardown_environment("production")
        .await
        .expect_err("not managed");
    assert!(
        matches!(&err, TargetError::Refused { message, .. } if message.contains("not labelled")),
        "{err}"
    );
    // An environment already gone is torn down.
    target.teardown_environment("dev").await.expect("gone");
    let lines: Vec<String> = requests(&log)[2..].iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec!["GET /api/v1/namespaces/prod", "GET /api/v1/namespaces/dev"]
    );
}

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn api_errors_map_to_refused_or_unavailable() {
    let forbidden = "deployments.apps \"shop-api\" is forbidden: User \"system:serviceaccount:toronto:deployer\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"prod\"";
    let cases: Vec<(Reply, bool, &str)> = vec![
        (
            Reply::Json(403, status_body(403, "Forbidden", forbidden)),
            false,
            "cannot patch resource",
        ),
        (
            Reply::Json(
                422,
                status_body(422, "Invalid", "spec.selector: field is immutable"),
            ),
            false,
            "field is immutable",
        ),
        (
            Reply::Json(
                500,
                status_body(500, "InternalError", "etcdserver: request timed out"),
            ),
            true,
            "etcdserver",
        ),
        (
            Reply::Json(
                429,
                status_body(429, "TooManyRequests", "storage is (re)initializing"),
            ),
            true,
            "TooManyRequests",
        ),
        (
            Reply::Text(503, "upstream connect error"),
            true,
            "upstream connect error",
        ),
    ];
    for (reply, unavailable, needle) in cases {
        let reply = Mutex::new(Some(reply));
        let (target, log) = mock_target(settings(), move |_| {
            reply
                .lock()
                .expect("reply")
                .take()
                .unwrap_or(Reply::Json(200, json!({})))
        });
        let err = target
            .apply(&rolling("2.4.1", "e:1"))
            .await
            .expect_err("error");
        assert_eq!(requests(&log).len(), 1, "stops at the first error");
        match (&err, unavailable) {
            (TargetError::Unavailable { message, .. }, true)
            | (TargetError::Refused { message, .. }, false) => {
                assert!(message.contains(needle), "{message}");
                assert!(
                    message.contains("Deployment/shop-api"),
                    "names the object: {message}"
                );
            }
            _ => panic!("wrong kind for {needle}: {err:?}"),
        }
    }
}

#[tokio::test]
async fn a_cluster_without_the_gateway_api_is_told_so() {
    // The API server answers an unknown resource path with a plain-text 404.
    let (target, log) = mock_target(gateway_settings(), |req| {
        if req.path.starts_with("/apis/gateway.networking.k8s.io/") {
            Reply::Text(404, "404 page not found")
        } else {
            Reply::Json(200, req.body.clone())
        }
    });
    let err = target
        .apply(&canary(10, 3, 1, "g:1"))
        .await
        .expect_err("no HTTPRoute");
    assert!(
        matches!(&err, TargetError::Refused { message, .. }
            if message.contains("HTTPRoute/shop-api") && message.contains("Gateway API installed")),
        "{err}"
    );
    assert_eq!(requests(&log).len(), 6);
}

#[tokio::test]
async fn health_check_reads_the_server_version() {
    let (target, log) = mock_target(settings(), |_| {
        Reply::Json(
            200,
            json!({"major": "1", "minor": "35", "gitVersion": "v1.35.2", "gitCommit": "abc",
                   "gitTreeState": "clean", "buildDate": "2026-10-01T00:00:00Z", "goVersion": "go1.25.1",
                   "compiler": "gc", "platform": "linux/amd64"}),
        )
    });
    assert_eq!(target.check().await.expect("healthy"), "v1.35.2");
    assert_eq!(requests(&log)[0].line(), "GET /version");
    let (target, _log) = mock_target(settings(), |_| Reply::Text(503, "unavailable"));
    assert!(matches!(
        target.check().await,
        Err(TargetError::Unavailable { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_or_silent_api_server_is_unavailable() {
    // Connection refused: the mock service fails every call.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    drop(handle);
    let target = KubeTarget::new(kube::Client::new(service, "default"), settings());
    let err = target
        .status("shop-api", "production", &["shop-api".into()])
        .await
        .expect_err("unreachable");
    assert!(matches!(err, TargetError::Unavailable { .. }), "{err:?}");

    // An API server that never answers.
    let mut quick = settings();
    quick.timeout = Duration::from_millis(200);
    let (target, log) = mock_target(quick, |_| Reply::Hang);
    let err = target
        .provision_environment("production")
        .await
        .expect_err("silent");
    assert!(
        matches!(&err, TargetError::Unavailable { message, .. } if message.starts_with("apply Namespace/prod: no answer")),
        "{err:?}"
    );
    assert_eq!(requests(&log).len(), 1);
}

// ---------------------------------------------------------------------------------
// kubectl
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn kubectl_accepts_the_manifests_of_every_strategy() {
    let Some(kubectl) = toronto_testkit::kubectl::KubectlDryRun::start().await else {
        println!("SKIPPED: kubectl is not installed; manifests not validated by kubectl");
        return;
    };
    let cases: Vec<(&str, Layout, KubeSettings)> = vec![
        ("rolling", rolling("2.4.1", "k:1"), settings()),
        (
            "blue-green",
            blue_green(Track::Blue, Some(Track::Green), 3, "k:2"),
            settings(),
        ),
        ("canary by replicas", canary(10, 9, 1, "k:3"), settings()),
        (
            "canary by HTTPRoute",
            canary(10, 3, 1, "k:4"),
            gateway_settings(),
        ),
    ];
    for (what, layout, settings) in cases {
        let mut items: Vec<Manifest> = manifests(&layout, &settings).expect("manifests");
        items.insert(
            0,
            Manifest::Namespace(Box::new(
                namespace_manifest(&layout.environment, &settings).expect("namespace"),
            )),
        );
        let list = manifest_list(&items);
        let stdout = kubectl
            .apply(&list.to_string())
            .await
            .unwrap_or_else(|e| panic!("{what}: kubectl refused the manifests:\n{e}"));
        let expected: Vec<String> = items
            .iter()
            .map(|m| {
                let resource = match m {
                    Manifest::Namespace(_) => "namespace",
                    Manifest::Deployment(_) => "deployment.apps",
                    Manifest::Service(_) => "service",
                    Manifest::HttpRoute(_) => "httproute.gateway.networking.k8s.io",
                };
                format!("{resource}/{} created (dry run)", m.name())
            })
            .collect();
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(got, expected, "{what}");
        println!("{what}: kubectl accepted {} objects", expected.len());
    }
}

// ---------------------------------------------------------------------------------
// A real cluster
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn real_cluster_round_trip_when_kubeconfig_is_set() {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "SKIPPED: KUBECONFIG is not set; no Kubernetes cluster to run against (set it to run a rolling rollout in a throwaway namespace)"
        );
        return;
    }
    let environment = format!("toronto-it-{}", std::process::id());
    let settings = KubeSettings::from_env().expect("TORONTO_DEPLOYER_* settings");
    let target = KubeTarget::infer(settings)
        .await
        .expect("client from KUBECONFIG");
    target
        .provision_environment(&environment)
        .await
        .expect("provision");
    let mut layout = rolling("3.10", "it:1");
    layout.environment = environment.clone();
    layout.workloads[0].image = "registry.k8s.io/pause:3.10".into();
    layout.workloads[0].replicas = 1;
    let result = async {
        target.apply(&layout).await?;
        // Applying the same layout again changes nothing.
        target.apply(&layout).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let status = target
                .status("shop-api", &environment, &["shop-api".into()])
                .await?;
            let w = status.workload("shop-api").cloned().unwrap_or_default();
            assert_eq!(w.failure, None);
            if w.is_ready() && w.version == "3.10" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not ready in time: {w:?}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let drifts = target.drift(&layout).await?;
        assert_eq!(drifts, vec![]);
        Ok::<_, TargetError>(())
    }
    .await;
    target
        .teardown_environment(&environment)
        .await
        .expect("teardown");
    result.expect("round trip");
}

#[tokio::test]
async fn a_chaos_pod_kill_lists_the_services_pods_and_deletes_that_many() {
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "prod",
                            "labels": {"app.kubernetes.io/name": "shop"}}})
    };
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"},
                      "items": [pod("shop-a"), pod("shop-b"), pod("shop-c")]});
    let (target, log) = mock_target(settings(), move |req: &Seen| match req.method.as_str() {
        "GET" if req.path == "/api/v1/namespaces/prod/pods" => Reply::Json(200, list.clone()),
        "DELETE" => Reply::Json(200, pod(req.path.rsplit('/').next().unwrap_or_default())),
        _ => not_found(&req.path),
    });
    target
        .inject("shop", "production", &ChaosFault::PodKill { count: 2 })
        .await
        .expect("pods killed");
    let reqs = requests(&log);
    let lines: Vec<String> = reqs.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            "GET /api/v1/namespaces/prod/pods",
            "DELETE /api/v1/namespaces/prod/pods/shop-a",
            "DELETE /api/v1/namespaces/prod/pods/shop-b",
        ]
    );
    assert_eq!(
        reqs[0].query.get("labelSelector").map(String::as_str),
        Some("app.kubernetes.io%2Fname%3Dshop")
    );
    // Faults that need a mesh are refused, with no request sent.
    let err = target
        .inject("shop", "production", &ChaosFault::ErrorRate { rate: 0.5 })
        .await
        .expect_err("refused");
    assert!(matches!(err, TargetError::Refused { .. }), "{err}");
    assert_eq!(requests(&log).len(), 3);
}
