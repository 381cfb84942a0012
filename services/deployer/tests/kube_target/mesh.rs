//! The Istio router (`TORONTO_DEPLOYER_MESH=istio`): a VirtualService weighs the
//! stable Service against the canary one, exactly, like the HTTPRoute does.

use serde_json::{Value, json};
use toronto_deployer::engine::TrafficSplit;
use toronto_deployer::kube::{Manifest, manifests};
use toronto_deployer::target::Target;

use crate::support::*;

#[tokio::test]
async fn canary_with_istio_weighs_a_virtual_service_and_its_drift_is_seen() {
    let (target, log) = mock_target(istio_settings(), api_server(vec![]));
    assert_eq!(target.traffic_split(), TrafficSplit::Exact);
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
            format!("PATCH {SERVICES}/shop-api-stable"),
            format!("PATCH {SERVICES}/shop-api-canary"),
            format!("PATCH {VIRTUAL_SERVICES}/shop-api"),
        ]
    );
    for r in &reqs {
        assert_apply(r, &r.path);
    }
    let vs = &reqs[5].body;
    assert_eq!(vs["apiVersion"], "networking.istio.io/v1");
    assert_eq!(vs["kind"], "VirtualService");
    assert_eq!(vs["spec"]["hosts"], json!(["shop-api"]));
    let route = &vs["spec"]["http"][0]["route"];
    assert_eq!(route[0]["destination"]["host"], "shop-api-stable");
    assert_eq!(route[0]["destination"]["port"]["number"], 80);
    assert_eq!(route[0]["weight"], 90);
    assert_eq!(route[1]["destination"]["host"], "shop-api-canary");
    assert_eq!(route[1]["weight"], 10);
    // The apex Service keeps in-cluster clients outside the mesh on stable.
    assert_eq!(reqs[2].body["spec"]["selector"]["track"], "stable");

    // Drift: someone moved the weights by hand.
    let layout = canary(25, 3, 1, "c2:25");
    let mut live: Vec<(String, Value)> = manifests(&layout, &istio_settings())
        .expect("manifests")
        .iter()
        .map(|m| {
            let base = match m {
                Manifest::Deployment(_) => DEPLOYMENTS,
                Manifest::Service(_) => SERVICES,
                Manifest::VirtualService(_) => VIRTUAL_SERVICES,
                other => panic!("unexpected {}", other.kind()),
            };
            (format!("{base}/{}", m.name()), m.to_json())
        })
        .collect();
    let (target, _) = mock_target(istio_settings(), api_server(live.clone()));
    assert!(target.drift(&layout).await.expect("drift").is_empty());
    let vs = live
        .iter_mut()
        .find(|(p, _)| p.starts_with(VIRTUAL_SERVICES))
        .unwrap();
    vs.1["spec"]["http"][0]["route"][0]["weight"] = json!(50);
    vs.1["spec"]["http"][0]["route"][1]["weight"] = json!(50);
    let (target, _) = mock_target(istio_settings(), api_server(live));
    let drift = target.drift(&layout).await.expect("drift");
    let fields: Vec<(&str, &str, Value, Value)> = drift
        .iter()
        .map(|d| {
            (
                d.object.as_str(),
                d.field.as_str(),
                d.desired.clone(),
                d.live.clone(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        vec![
            (
                "VirtualService/shop-api",
                "spec.http[0].route[host=shop-api-stable].weight",
                json!(75),
                json!(50)
            ),
            (
                "VirtualService/shop-api",
                "spec.http[0].route[host=shop-api-canary].weight",
                json!(25),
                json!(50)
            ),
        ]
    );
}

#[tokio::test]
async fn a_cluster_without_istio_is_told_so() {
    let serve = api_server(vec![]);
    let (target, _) = mock_target(istio_settings(), move |req: &Seen| {
        if req.path.starts_with(VIRTUAL_SERVICES) {
            not_found(&req.path)
        } else {
            serve(req)
        }
    });
    let err = target.apply(&canary(10, 9, 1, "c1:10")).await.unwrap_err();
    assert!(err.to_string().contains("is Istio installed?"), "{err}");
}
