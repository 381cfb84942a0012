//! The rollout engine end to end against a Kubernetes API: the testkit's fake API
//! server (a fake: no Kubernetes API server runs here; it keeps objects, merges
//! server-side apply by field manager and plays the Deployment controller), with
//! canary analysis by the real monitor reading a real Prometheus. The same full
//! canary runs against a real cluster when `KUBECONFIG` is set.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use toronto_deployer::Settings;
use toronto_protocol::rollout::{DriftCheck, DriftReport, RolloutPhase};
use toronto_protocol::tasks::{PlanTask, RollbackTask, Strategy};
use toronto_protocol::workload::{WorkloadPut, WorkloadTemplate};
use toronto_testkit::FakeKubeApi;

use crate::kube_env::{
    KubeStack, assert_all_passed, config_for, fake_api, full_canary, image_and_replicas,
    kube_settings, kube_stack, run,
};
use crate::support::{ENV, canary, rollout_id};

fn image(service: &str, version: &str) -> String {
    format!("registry.example/{service}:{version}")
}

/// Polls the fake until `name`'s Deployment has `replicas` replicas.
async fn until_replicas(fake: &FakeKubeApi, name: &str, replicas: i64) -> Value {
    for _ in 0..100 {
        if let Some(d) = fake.object("Deployment", ENV, name)
            && d["spec"]["replicas"] == replicas
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name} never had {replicas} replicas: {:?}",
        fake.object("Deployment", ENV, name)
    );
}

/// The managers owning `spec.replicas` of a Deployment in the fake.
fn replicas_owners(d: &Value) -> Vec<String> {
    d["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| !e["fieldsV1"]["f:spec"]["f:replicas"].is_null())
        .filter_map(|e| e["manager"].as_str().map(str::to_owned))
        .collect()
}

async fn deployed(k: &mut KubeStack, service: &str, version: &str, strategy: Strategy) {
    let id = k
        .start_image(service, version, &image(service, version), strategy)
        .await;
    k.s.event(id, "succeeded", Duration::from_secs(60)).await;
}

#[test]
fn canary_rolling_and_blue_green_succeed_against_the_fake_api_server() {
    run(canary_rolling_and_blue_green_succeed_against_the_fake_api_server_body());
}

async fn canary_rolling_and_blue_green_succeed_against_the_fake_api_server_body() {
    let fake = fake_api().await;
    let mut k = kube_stack(config_for(fake.url()), ENV, 1, kube_settings()).await;
    for (service, versions) in [("cart", ["1.0.0", "1.1.0"]), ("pay", ["1.0.0", "2.0.0"])] {
        for v in versions {
            k.traffic(service, v, 0.01);
        }
    }
    let cart = k
        .start_image("cart", "1.0.0", &image("cart", "1.0.0"), Strategy::Rolling)
        .await;
    let pay = k
        .start_image("pay", "1.0.0", &image("pay", "1.0.0"), Strategy::BlueGreen)
        .await;

    // The full canary (shared with the real-cluster test).
    Box::pin(full_canary(&mut k, "shop", |v| image("shop", v))).await;
    let canary_pods = until_replicas(&fake, "shop-canary", 0).await;
    assert_eq!(canary_pods["metadata"]["labels"]["track"], "canary");
    let stable = fake.object("Deployment", ENV, "shop").unwrap();
    assert_eq!(
        stable["status"]["readyReplicas"], stable["spec"]["replicas"],
        "{stable}"
    );
    assert!(
        fake.writes()
            .iter()
            .filter(|w| w.name.starts_with("shop"))
            .all(|w| w.verb == "apply" && w.manager == "toronto-deployer"),
        "every write is a server-side apply by the deployer"
    );

    k.s.event(cart, "succeeded", Duration::from_secs(60)).await;
    k.s.event(pay, "succeeded", Duration::from_secs(60)).await;

    // Rolling: verified batches, then every replica.
    let cart = k
        .start_image("cart", "1.1.0", &image("cart", "1.1.0"), Strategy::Rolling)
        .await;
    // Blue-green: the preview colour is analysed, then the Service switches.
    let pay = k
        .start_image("pay", "2.0.0", &image("pay", "2.0.0"), Strategy::BlueGreen)
        .await;
    let done = k.s.event(cart, "succeeded", Duration::from_secs(60)).await;
    let ids: Vec<&str> = done.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.last(), Some(&"rolling"), "{ids:?}");
    assert!(ids[0].starts_with("batch-"), "{ids:?}");
    assert_all_passed(&done);
    let d = k.deployment("cart").await.unwrap();
    assert_eq!(image_and_replicas(&d).0, image("cart", "1.1.0"));
    until_replicas(&fake, "cart", i64::from(image_and_replicas(&d).1)).await;
    // The batches' Deployment `cart-canary` is scaled to 0 by the final step, and the
    // Service sends every request to the rolled Deployment.
    let batches = until_replicas(&fake, "cart-canary", 0).await;
    assert_eq!(batches["metadata"]["labels"]["track"], "canary");
    assert_eq!(
        batches["status"]["readyReplicas"].as_i64().unwrap_or(0),
        0,
        "{batches}"
    );
    let svc = k.service("cart").await.unwrap();
    let selector = svc.spec.unwrap().selector.unwrap();
    assert_eq!(selector.get("track").map(String::as_str), Some("stable"));

    let done = k.s.event(pay, "succeeded", Duration::from_secs(60)).await;
    assert_all_passed(&done);
    let mut new_colour = None;
    for colour in ["blue", "green"] {
        let d = k.deployment(&format!("pay-{colour}")).await.unwrap();
        if image_and_replicas(&d).0 == image("pay", "2.0.0") && image_and_replicas(&d).1 > 0 {
            new_colour = Some(colour);
        }
    }
    let new_colour = new_colour.expect("a colour runs 2.0.0");
    let svc = k.service("pay").await.unwrap();
    let selector = svc.spec.unwrap().selector.unwrap();
    assert_eq!(selector.get("colour").map(String::as_str), Some(new_colour));
    let old = if new_colour == "blue" {
        "green"
    } else {
        "blue"
    };
    until_replicas(&fake, &format!("pay-{old}"), 0).await;

    // An emergency rollback: one step back to 1.0.0 on the old colour, which takes
    // the traffic (a verified rollback previews it first, tested on the sim).
    let accepted =
        k.s.execute(
            "rollback",
            PlanTask::Rollback(RollbackTask {
                service: "pay".into(),
                environment: ENV.into(),
                target_version: None,
                emergency: true,
            }),
        )
        .await
        .unwrap();
    let back = rollout_id(&accepted);
    let done =
        k.s.event(back, "rolled_back", Duration::from_secs(60))
            .await;
    assert!(done.is_rollback);
    let svc = k.service("pay").await.unwrap();
    let selector = svc.spec.unwrap().selector.unwrap();
    let serving = selector.get("colour").cloned().expect("a colour");
    let d = k.deployment(&format!("pay-{serving}")).await.unwrap();
    let (image_now, replicas) = image_and_replicas(&d);
    assert_eq!(image_now, image("pay", "1.0.0"));
    assert!(replicas > 0);
    let ready = fake
        .object("Deployment", ENV, &format!("pay-{serving}"))
        .unwrap();
    assert_eq!(ready["status"]["readyReplicas"], json!(replicas), "{ready}");
    k.stop().await;
}

#[test]
fn aborts_roll_back_drift_is_remediated_and_a_users_deployment_is_adopted() {
    run(aborts_roll_back_drift_is_remediated_and_a_users_deployment_is_adopted_body());
}

async fn aborts_roll_back_drift_is_remediated_and_a_users_deployment_is_adopted_body() {
    let fake = fake_api().await;
    let settings = Settings {
        // The engine gives up on a workload Kubernetes reports stuck after this.
        progress_deadline: Duration::from_secs(4),
        ..kube_settings()
    };
    let mut k = kube_stack(config_for(fake.url()), ENV, 1, settings).await;
    k.traffic("feed", "1.0.0", 0.01);
    k.traffic("feed", "2.0.0", 0.30);
    k.traffic("img", "1.0.0", 0.01);
    k.traffic("img", "2.0.0", 0.01);
    deployed(&mut k, "feed", "1.0.0", canary(&[50], 0)).await;
    deployed(&mut k, "img", "1.0.0", canary(&[50], 0)).await;

    // A canary failing 30% of its requests is aborted by the template analysis and
    // rolled back: the canary Deployment goes to zero, the stable keeps 1.0.0.
    let bad = k
        .start_image("feed", "2.0.0", &image("feed", "2.0.0"), canary(&[50], 4))
        .await;
    // An image whose pods never become ready: Kubernetes reports
    // ProgressDeadlineExceeded and the rollout fails and rolls back.
    fake.mark_bad_image(&image("img", "2.0.0"));
    let stuck = k
        .start_image("img", "2.0.0", &image("img", "2.0.0"), canary(&[50], 1))
        .await;
    let aborted = k.s.event(bad, "aborted", Duration::from_secs(40)).await;
    assert!(aborted.rolled_back, "{aborted:?}");
    let reason = aborted.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("critical metric error_ratio failed"),
        "{reason}"
    );
    until_replicas(&fake, "feed-canary", 0).await;
    let d = k.deployment("feed").await.unwrap();
    assert_eq!(image_and_replicas(&d).0, image("feed", "1.0.0"));

    let failed = k.s.event(stuck, "failed", Duration::from_secs(40)).await;
    assert_eq!(failed.phase, RolloutPhase::Failed);
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(reason.contains("ProgressDeadlineExceeded"), "{reason}");
    until_replicas(&fake, "img-canary", 0).await;
    let d = k.deployment("img").await.unwrap();
    assert_eq!(image_and_replicas(&d).0, image("img", "1.0.0"));

    // Drift: someone scales `feed` behind the deployer's back (kubectl edit takes the
    // field over); the check reports it and puts the desired spec back.
    let api: Api<Deployment> = Api::namespaced(k.client.clone(), &k.ns);
    api.patch(
        "feed",
        &PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"spec": {"replicas": 7}})),
    )
    .await
    .expect("an out-of-band change");
    let edited = fake.object("Deployment", ENV, "feed").unwrap();
    assert_eq!(replicas_owners(&edited), ["kubectl-edit"]);
    let report: DriftReport =
        k.s.request(
            "drift.check",
            DriftCheck {
                service: Some("feed".into()),
                environment: Some(ENV.into()),
                remediate: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!(report.drifts.len(), 1, "{report:?}");
    let drift = &report.drifts[0];
    assert_eq!(
        (drift.object.as_str(), drift.field.as_str()),
        ("Deployment/feed", "spec.replicas")
    );
    assert_eq!(drift.live, json!(7));
    assert!(drift.remediated);
    let fixed = fake.object("Deployment", ENV, "feed").unwrap();
    assert_eq!(fixed["spec"]["replicas"], drift.desired);
    assert_eq!(replicas_owners(&fixed), ["toronto-deployer"]);
    let clean: DriftReport =
        k.s.request("drift.check", DriftCheck::default())
            .await
            .unwrap();
    assert!(clean.drifts.is_empty(), "{clean:?}");

    // Adoption: the user's own Deployment is the template of ours, and is scaled to
    // zero (never deleted) once ours serve.
    fake.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web-app", "namespace": ENV, "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "serviceAccountName": "web",
                    "containers": [{
                        "name": "web", "image": "web:user",
                        "env": [{"name": "MODE", "value": "prod"}],
                        "resources": {"limits": {"cpu": "500m"}},
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}
                    }]
                }
            }
        }
    }))
    .expect("the user's Deployment");
    let adopted: WorkloadTemplate =
        k.s.request(
            "workload.put",
            WorkloadPut {
                service: "web".into(),
                environment: ENV.into(),
                deployment: Some("web-app".into()),
                pod_template: None,
            },
        )
        .await
        .expect("adopted");
    assert_eq!(adopted.adopted.as_deref(), Some("web-app"));
    assert_eq!(adopted.replicas, Some(2));
    k.traffic("web", "1.0.0", 0.01);
    deployed(&mut k, "web", "1.0.0", canary(&[50], 0)).await;
    let ours = fake.object("Deployment", ENV, "web").expect("ours");
    let pod = &ours["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], "web");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], image("web", "1.0.0"));
    assert_eq!(container["env"][0]["value"], "prod");
    assert_eq!(container["resources"]["limits"]["cpu"], "500m");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(pod["metadata"]["labels"]["app"], "web");
    let theirs = until_replicas(&fake, "web-app", 0).await;
    assert_eq!(
        theirs["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:user"
    );
    assert_eq!(replicas_owners(&theirs), ["toronto-deployer-adopt"]);
    k.stop().await;
}

#[test]
fn a_deployer_killed_mid_rollout_on_kubernetes_is_resumed_by_another() {
    run(a_deployer_killed_mid_rollout_on_kubernetes_is_resumed_by_another_body());
}

async fn a_deployer_killed_mid_rollout_on_kubernetes_is_resumed_by_another_body() {
    let fake = fake_api().await;
    let mut k = kube_stack(config_for(fake.url()), ENV, 2, kube_settings()).await;
    k.traffic("orders", "1.0.0", 0.01);
    k.traffic("orders", "1.1.0", 0.01);
    deployed(&mut k, "orders", "1.0.0", canary(&[100], 1)).await;
    let id = k
        .start_image(
            "orders",
            "1.1.0",
            &image("orders", "1.1.0"),
            canary(&[10, 25, 50, 100], 1),
        )
        .await;
    let first = k.s.event(id, "progressed", Duration::from_secs(30)).await;
    assert!(first.weight > 0 && first.weight < 100, "{first:?}");
    let owner = k.s.rollout(id).await.lease.expect("owned").owner;
    let victim =
        k.s.deployers
            .iter()
            .position(|(_, d)| d.runtime.host.id() == owner)
            .expect("one of ours owns it");
    k.s.deployers[victim].1.crash();
    let survivor = k.s.deployers[1 - victim].1.runtime.host.id().to_owned();

    let done = k.s.event(id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(done.lease, None);
    let finished_by: Vec<_> =
        k.s.rollouts
            .seen
            .iter()
            .filter(|(w, r)| w == "progressed" && r.id == id && r.weight > first.weight)
            .filter_map(|(_, r)| r.lease.as_ref().map(|l| l.owner.clone()))
            .collect();
    assert!(finished_by.contains(&survivor), "{finished_by:?}");
    // Each step reached the API server once, in order, whoever applied it.
    let prefix = format!("{id}:");
    let applied: Vec<String> = fake
        .writes()
        .into_iter()
        .filter(|w| w.kind == "Service" && w.name == "orders" && w.verb == "apply")
        .filter_map(|w| {
            w.body["metadata"]["annotations"]["toronto.dev/step"]
                .as_str()
                .and_then(|s| s.strip_prefix(&prefix))
                .map(str::to_owned)
        })
        .collect();
    let steps: Vec<String> = done.steps.iter().map(|s| s.id.clone()).collect();
    assert_eq!(applied, steps, "each step applied once, in order");
    let d = k.deployment("orders").await.unwrap();
    assert_eq!(image_and_replicas(&d).0, image("orders", "1.1.0"));
    k.stop().await;
}

/// The full canary on a real cluster: a throwaway namespace, `registry.k8s.io/pause`
/// pods, and the analysis reading this test's Prometheus series.
#[test]
fn the_full_canary_on_a_real_cluster_when_kubeconfig_is_set() {
    run(the_full_canary_on_a_real_cluster_when_kubeconfig_is_set_body());
}

async fn the_full_canary_on_a_real_cluster_when_kubeconfig_is_set_body() {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "SKIPPED: KUBECONFIG is not set; no Kubernetes cluster to run the full canary against (the same scenario runs against the fake API server above)"
        );
        return;
    }
    toronto_runtime::tls::install_crypto_provider();
    let config = kube::Config::infer()
        .await
        .expect("a client configuration from KUBECONFIG");
    let client = kube::Client::try_from(config.clone()).expect("a client from KUBECONFIG");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    // ENV's namespace, made for this run and deleted after it.
    let ns = format!("toronto-it-{}", std::process::id());
    let mut k = kube_stack(config, &ns, 1, kube_settings()).await;
    let made = namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"app.kubernetes.io/managed-by": "toronto-deployer"}}}))
                .unwrap(),
        )
        .await;
    if let Err(e) = made {
        panic!("cannot create namespace {ns} (it must not exist yet): {e}");
    }
    let service = format!("it-{}", std::process::id() % 10_000);
    let result = tokio::spawn(async move {
        Box::pin(full_canary(&mut k, &service, |_| {
            "registry.k8s.io/pause:3.10".into()
        }))
        .await;
        k.stop().await;
    })
    .await;
    let _ = namespaces.delete(&ns, &Default::default()).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
