//! Adoption against the testkit's fake API server (a fake: no Kubernetes API server
//! runs here), as Argo Rollouts' `workloadRef` does it: the user's Deployment serves
//! until the rollout that takes it over has its own pods ready, is then scaled to
//! zero (never deleted), and is scaled back up, before the rollout's pods stop, when
//! that rollout is aborted.

use std::time::Duration;

use serde_json::{Value, json};
use toronto_deployer::Settings;
use toronto_protocol::rollout::RolloutPhase;
use toronto_protocol::workload::{WorkloadPut, WorkloadTemplate};
use toronto_testkit::FakeKubeApi;

use crate::kube_env::{config_for, fake_api, kube_settings, kube_stack, run, succeeded};
use crate::support::{ENV, canary};

fn image(version: &str) -> String {
    format!("registry.example/web:{version}")
}

/// Polls the fake until Deployment `name` wants `replicas` and has them all ready.
async fn until_serving(fake: &FakeKubeApi, name: &str, replicas: i64) -> Value {
    for _ in 0..150 {
        if let Some(d) = fake.object("Deployment", ENV, name)
            && d["spec"]["replicas"] == replicas
            && d["status"]["readyReplicas"].as_i64().unwrap_or(0) == replicas
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name} never served with {replicas} replicas: {:?}",
        fake.object("Deployment", ENV, name)
    );
}

/// The replicas each write by the adoption's field manager set on `name`, with the
/// write's position among all writes.
fn adoption_scales(fake: &FakeKubeApi, name: &str) -> Vec<(usize, i64)> {
    fake.writes()
        .iter()
        .enumerate()
        .filter(|(_, w)| w.name == name && w.manager == "toronto-deployer-adopt")
        .filter_map(|(i, w)| w.body["spec"]["replicas"].as_i64().map(|r| (i, r)))
        .collect()
}

#[test]
fn the_users_deployment_hands_over_when_ours_are_ready_and_serves_again_after_an_abort() {
    run(the_users_deployment_hands_over_when_ours_are_ready_and_serves_again_after_an_abort_body());
}

async fn the_users_deployment_hands_over_when_ours_are_ready_and_serves_again_after_an_abort_body()
{
    let fake = fake_api().await;
    let settings = Settings {
        // A first deploy holds at least 3 s once ready: time to see the hand-over
        // before the rollout ends.
        step_pause: Duration::from_secs(3),
        first_deploy_pause: Duration::from_secs(3),
        ..kube_settings()
    };
    let mut k = kube_stack(config_for(fake.url()), ENV, 1, settings).await;
    fake.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web-app", "namespace": ENV, "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:user"}]}
            }
        }
    }))
    .expect("the user's Deployment");
    until_serving(&fake, "web-app", 2).await;
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
    assert_eq!(adopted.replicas, Some(2));

    // The first version fails 30% of its requests: its pods take the traffic over
    // once ready (the user's Deployment goes to 0), its threshold check fails, and
    // the abort scales the user's Deployment back up before ours stop.
    k.traffic("web", "1.0.0", 0.30);
    let bad = k
        .start_image("web", "1.0.0", &image("1.0.0"), canary(&[50], 0))
        .await;
    let aborted = k.s.event(bad, "aborted", Duration::from_secs(60)).await;
    assert!(aborted.rolled_back, "{aborted:?}");
    let reason = aborted.reason.clone().unwrap_or_default();
    assert!(reason.contains("error_ratio"), "{reason}");
    let scales = adoption_scales(&fake, "web-app");
    assert_eq!(
        scales.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        [0, 2],
        "handed over when ours were ready, then back: {scales:?}"
    );
    let ours_stopped = fake
        .writes()
        .iter()
        .rposition(|w| w.kind == "Deployment" && w.name == "web" && w.body["spec"]["replicas"] == 0)
        .expect("the rollback stops our Deployment");
    assert!(
        scales[1].0 < ours_stopped,
        "the user's Deployment is scaled up before ours stop"
    );
    let theirs = until_serving(&fake, "web-app", 2).await;
    assert_eq!(
        theirs["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:user"
    );

    // A healthy version: the user's Deployment is scaled to 0 once our pods are
    // ready, while the step is still being analysed, and stays there (not deleted)
    // after the rollout succeeds.
    k.traffic("web", "1.0.1", 0.01);
    let good = k
        .start_image("web", "1.0.1", &image("1.0.1"), canary(&[50], 0))
        .await;
    for _ in 0..300 {
        if adoption_scales(&fake, "web-app").len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        adoption_scales(&fake, "web-app").last().map(|(_, r)| *r),
        Some(0)
    );
    let phase = k.s.rollout(good).await.phase;
    assert_eq!(
        phase,
        RolloutPhase::Progressing,
        "handed over before the rollout ended"
    );
    let ours = fake.object("Deployment", ENV, "web").expect("ours");
    assert_eq!(ours["status"]["readyReplicas"], 2, "{ours}");
    succeeded(&k, good).await;
    let theirs = fake
        .object("Deployment", ENV, "web-app")
        .expect("never deleted");
    assert_eq!(theirs["spec"]["replicas"], 0);
    until_serving(&fake, "web", 2).await;
    k.stop().await;
}
