//! Adopting the user's Deployment: its pod template is read, every Deployment the
//! deployer makes is a copy with only the image and the owned labels changed, and the
//! user's Deployment is scaled (a merge patch of `spec.replicas`), never deleted.

use serde_json::{Value, json};
use toronto_deployer::target::{Target, TargetError};

use crate::support::*;

/// The user's Deployment `shop-api-app` as Helm would have applied it.
fn users_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop-api-app", "namespace": "prod", "labels": {"app": "shop-api"}},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "shop-api"}},
            "template": {
                "metadata": {"labels": {"app": "shop-api"}, "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "serviceAccountName": "shop-api",
                    "securityContext": {"runAsNonRoot": true},
                    "volumes": [{"name": "config", "configMap": {"name": "shop-api"}}],
                    "containers": [{
                        "name": "shop-api",
                        "image": "registry.example/shop-api:2.4.0",
                        "env": [{"name": "DB_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}],
                        "envFrom": [{"configMapRef": {"name": "shop-api-env"}}],
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/shop"}]
                    }]
                }
            }
        }
    })
}

#[tokio::test]
async fn the_users_deployment_is_the_template_of_every_copy_and_is_only_scaled() {
    let path = format!("{DEPLOYMENTS}/shop-api-app");
    let (target, log) = mock_target(
        settings(),
        api_server(vec![(path.clone(), users_deployment())]),
    );
    let (template, replicas) = target
        .read_pod_template("production", "shop-api-app")
        .await
        .expect("read");
    assert_eq!(replicas, Some(4));
    assert_eq!(requests(&log)[0].line(), format!("GET {path}"));
    assert_eq!(template["spec"]["serviceAccountName"], "shop-api");

    let mut layout = canary(25, 3, 1, "c1:25");
    layout.pod_template = Some(template);
    target.apply(&layout).await.expect("apply");
    let reqs = requests(&log);
    let (stable, canary_d) = (&reqs[1].body, &reqs[2].body);
    assert_eq!(
        reqs[2].line(),
        format!("PATCH {DEPLOYMENTS}/shop-api-canary")
    );
    for (d, image, track) in [
        (stable, "registry.example/shop-api:2.4.0", "stable"),
        (canary_d, "registry.example/shop-api:2.4.1", "canary"),
    ] {
        let pod = &d["spec"]["template"];
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], image);
        // Everything else is the user's.
        assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "db");
        assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "shop-api-env");
        assert_eq!(c["resources"]["requests"]["cpu"], "250m");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/shop");
        assert_eq!(pod["spec"]["serviceAccountName"], "shop-api");
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["spec"]["volumes"][0]["configMap"]["name"], "shop-api");
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
        // The labels the deployer owns are set; the user's are kept.
        assert_eq!(pod["metadata"]["labels"]["track"], track);
        assert_eq!(pod["metadata"]["labels"]["app"], "shop-api");
        assert_eq!(
            pod["metadata"]["labels"]["app.kubernetes.io/name"],
            "shop-api"
        );
        // The Deployment's own selector is the deployer's.
        assert_eq!(d["spec"]["selector"]["matchLabels"]["track"], track);
    }

    target
        .scale_adopted("production", "shop-api-app", 0)
        .await
        .expect("scale");
    let scale = requests(&log).last().cloned().unwrap();
    assert_eq!(scale.line(), format!("PATCH {path}"));
    assert_eq!(
        scale.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(scale.body, json!({"spec": {"replicas": 0}}));
    assert_eq!(scale.query["fieldManager"], "toronto-deployer-adopt");
    assert!(requests(&log).iter().all(|r| r.method != "DELETE"));
}

#[tokio::test]
async fn a_missing_deployment_or_a_template_without_containers_is_refused() {
    let (target, _) = mock_target(settings(), api_server(vec![]));
    let err = target
        .read_pod_template("production", "nope")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TargetError::Refused { message, .. } if message.contains("no such Deployment")),
        "{err}"
    );
    let mut layout = canary(25, 3, 1, "c1:25");
    layout.pod_template = Some(json!({"spec": {"containers": []}}));
    let err = target.apply(&layout).await.unwrap_err();
    assert!(err.to_string().contains("no container"), "{err}");
}
