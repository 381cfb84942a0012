//! The Kubernetes target alone against the fake API server (a fake: no Kubernetes API
//! server runs here): environments provisioned and torn down, a Gateway API canary
//! whose HTTPRoute is edited behind the deployer's back, a chaos pod kill, and the API
//! server's refusals as the target reports them.

use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use toronto_deployer::kube::{GatewayRef, KubeSettings, KubeTarget};
use toronto_deployer::target::{Layout, Routing, Target, TargetError, Track, Workload};
use toronto_protocol::tasks::ChaosFault;

use crate::kube_env::{client_for, fake_api};

fn workload(name: &str, track: Track, version: &str, replicas: u32) -> Workload {
    Workload {
        name: name.into(),
        track,
        version: version.into(),
        image: format!("registry.example/shop:{version}"),
        replicas,
    }
}

fn layout(service: &str, routing: Routing, workloads: Vec<Workload>) -> Layout {
    Layout {
        service: service.into(),
        environment: "staging".into(),
        workloads,
        routing,
        step_key: "r:s".into(),
        progress_deadline_seconds: 600,
        pod_template: None,
    }
}

fn refused(e: TargetError) -> String {
    match e {
        TargetError::Refused { message, .. } => message,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn environments_a_gateway_canary_drift_and_refusals_on_the_fake_api_server() {
    let fake = fake_api().await;
    let settings = KubeSettings {
        gateway: Some(GatewayRef {
            namespace: "gateways".into(),
            name: "public".into(),
        }),
        timeout: Duration::from_secs(5),
        ..KubeSettings::default()
    };
    let client = client_for(fake.url());
    let target = KubeTarget::new(client.clone(), settings);
    assert_eq!(target.check().await.unwrap(), "v1.35.0-toronto-fake");

    let canary = layout(
        "shop",
        Routing::Canary { canary_weight: 10 },
        vec![
            workload("shop", Track::Stable, "1.0.0", 3),
            workload("shop-canary", Track::Canary, "2.0.0", 1),
        ],
    );
    // Nothing lands in an environment that was never provisioned.
    let err = refused(target.apply(&canary).await.unwrap_err());
    assert!(
        err.contains("404 NotFound: namespaces \"staging\" not found"),
        "{err}"
    );

    target.provision_environment("staging").await.unwrap();
    let ns = fake
        .object("Namespace", "", "staging")
        .expect("the namespace");
    assert_eq!(
        ns["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "toronto-deployer"
    );
    target.apply(&canary).await.unwrap();
    let route = fake
        .object("HTTPRoute", "staging", "shop")
        .expect("the route");
    let weights: Vec<_> = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].clone(), b["weight"].clone()))
        .collect();
    assert_eq!(
        weights,
        [
            (json!("shop-stable"), json!(90)),
            (json!("shop-canary"), json!(10))
        ]
    );
    let names = ["shop".to_owned(), "shop-canary".to_owned()];
    for _ in 0..100 {
        let status = target.status("shop", "staging", &names).await.unwrap();
        if status.workloads.len() == 2 && status.workloads.iter().all(|w| w.is_ready()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = target.status("shop", "staging", &names).await.unwrap();
    assert!(status.workloads.iter().all(|w| w.is_ready()), "{status:?}");
    assert_eq!(target.drift(&canary).await.unwrap(), vec![]);

    // Someone sends half the traffic to the canary by hand.
    let routes: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        client.clone(),
        "staging",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
        ),
    );
    let mut rules = route["spec"]["rules"].clone();
    rules[0]["backendRefs"][0]["weight"] = json!(50);
    rules[0]["backendRefs"][1]["weight"] = json!(50);
    routes
        .patch(
            "shop",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"spec": {"rules": rules}})),
        )
        .await
        .unwrap();
    let drift = target.drift(&canary).await.unwrap();
    let fields: Vec<_> = drift
        .iter()
        .map(|d| (d.field.as_str(), d.desired.clone(), d.live.clone()))
        .collect();
    assert_eq!(
        fields,
        [
            (
                "spec.rules[0].backendRefs[name=shop-stable].weight",
                json!(90),
                json!(50)
            ),
            (
                "spec.rules[0].backendRefs[name=shop-canary].weight",
                json!(10),
                json!(50)
            ),
        ]
    );
    // Applying the step again (forced) puts the weights back.
    target.apply(&canary).await.unwrap();
    assert_eq!(target.drift(&canary).await.unwrap(), vec![]);

    // Chaos: a pod killed through the API is started again by the controller.
    assert_eq!(fake.names("Pod", "staging").len(), 4);
    target
        .inject("shop", "staging", &ChaosFault::PodKill { count: 1 })
        .await
        .unwrap();
    let mut seen_down = false;
    for _ in 0..100 {
        let status = target.status("shop", "staging", &names).await.unwrap();
        let ready = status.workloads.iter().all(|w| w.is_ready());
        seen_down |= !ready;
        if seen_down && ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen_down, "a killed pod is missed for a tick");
    let status = target.status("shop", "staging", &names).await.unwrap();
    assert!(status.workloads.iter().all(|w| w.is_ready()), "{status:?}");
    assert_eq!(fake.names("Pod", "staging").len(), 4);

    // A Deployment of the service's name that the user made with another selector:
    // the API server refuses to change a selector, and the target says so.
    fake.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "cart", "namespace": "staging"},
        "spec": {"selector": {"matchLabels": {"app": "cart"}},
                 "template": {"metadata": {"labels": {"app": "cart"}},
                              "spec": {"containers": [{"name": "cart", "image": "cart:1"}]}}}
    }))
    .unwrap();
    let rolling = layout(
        "cart",
        Routing::Rolling {
            max_surge: "25%".into(),
            max_unavailable: "0".into(),
        },
        vec![workload("cart", Track::Stable, "1.0.0", 2)],
    );
    let err = refused(target.apply(&rolling).await.unwrap_err());
    assert!(err.contains("422 Invalid"), "{err}");
    assert!(err.contains("spec.selector"), "{err}");
    assert!(err.contains("field is immutable"), "{err}");

    // Tearing down deletes the namespace the deployer made, with everything in it; one
    // it did not make is refused.
    target.teardown_environment("staging").await.unwrap();
    assert_eq!(fake.object("Namespace", "", "staging"), None);
    assert_eq!(fake.names("Deployment", "staging"), Vec::<String>::new());
    target.teardown_environment("staging").await.unwrap();
    let err = refused(target.teardown_environment("production").await.unwrap_err());
    assert!(
        err.contains("not deleting what the deployer did not create"),
        "{err}"
    );
}
