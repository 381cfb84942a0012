//! API errors, kubectl, a real cluster, and chaos.

use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::json;
use toronto_deployer::kube::{
    KubeSettings, KubeTarget, Manifest, manifest_list, manifests, namespace_manifest,
};
use toronto_deployer::target::{Layout, Target, TargetError, Track};
use toronto_protocol::tasks::ChaosFault;

use crate::support::*;

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
                    Manifest::VirtualService(_) => "virtualservice.networking.istio.io",
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
