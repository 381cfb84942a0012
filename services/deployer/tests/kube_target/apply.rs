//! Applying layouts: the exact requests of each strategy.

use serde_json::json;
use toronto_deployer::kube::manifests;
use toronto_deployer::target::{Target, TargetError, Track};

use crate::support::*;

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
                    {"group": "", "kind": "Service", "name": "shop-api-stable", "port": 80, "weight": 90,
                     "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-toronto-track", "value": "stable"}]}}]},
                    {"group": "", "kind": "Service", "name": "shop-api-canary", "port": 80, "weight": 10,
                     "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-toronto-track", "value": "canary"}]}}]}
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

#[tokio::test]
async fn without_a_router_canary_weights_are_the_ones_the_replicas_reach() {
    use toronto_deployer::Settings;
    use toronto_deployer::engine::{TrafficSplit, canary_replicas, honest_weights, plan_steps};
    use toronto_protocol::tasks::{CanaryStep, Strategy};

    let (plain, _) = mock_target(settings(), api_server(vec![]));
    let (routed, _) = mock_target(gateway_settings(), api_server(vec![]));
    assert_eq!(plain.traffic_split(), TrafficSplit::ReplicaRatio);
    assert_eq!(routed.traffic_split(), TrafficSplit::Exact);

    let strategy = Strategy::Canary {
        steps: [10, 50]
            .map(|weight| CanaryStep {
                weight,
                pause_seconds: Some(5),
            })
            .to_vec(),
    };
    let before = toronto_deployer::Release {
        layout: rolling("2.4.0", "r0:s0"),
        current: toronto_protocol::rollout::Revision {
            version: "2.4.0".into(),
            image: "registry.example/shop-api:2.4.0".into(),
            replicas: 3,
        },
        history: Vec::new(),
        rollout_id: None,
        at: chrono::Utc::now(),
    };
    let planned = plan_steps(&strategy, Some(&before), &Settings::default(), false).unwrap();
    // Behind an HTTPRoute the weights are exact.
    let exact = honest_weights(planned.clone(), 3, routed.traffic_split());
    assert_eq!(
        exact.iter().map(|s| s.weight).collect::<Vec<_>>(),
        [10, 50, 100]
    );
    // Behind one Service, 3 replicas reach 33% and 67%: the plan says so.
    let honest = honest_weights(planned, 3, plain.traffic_split());
    assert_eq!(
        honest.iter().map(|s| s.weight).collect::<Vec<_>>(),
        [33, 67, 100]
    );
    assert!(
        honest[0]
            .note
            .as_deref()
            .unwrap()
            .contains("10% asked, 33% reached")
    );
    // And the 33% step applies one canary pod beside two stable ones.
    assert_eq!(canary_replicas(3, honest[0].weight), 1);
    assert_eq!(canary_replicas(3, honest[1].weight), 2);
}
