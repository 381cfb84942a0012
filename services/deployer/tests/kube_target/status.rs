//! Status, drift and namespaces.

use serde_json::{Value, json};
use toronto_deployer::kube::{Manifest, manifests};
use toronto_deployer::target::{Target, TargetError};

use crate::support::*;

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
                Manifest::VirtualService(_) => VIRTUAL_SERVICES,
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
