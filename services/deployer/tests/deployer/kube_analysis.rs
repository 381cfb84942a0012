//! Template analysis on Kubernetes sees what Prometheus sees: the series of the pods
//! a step starts begin when those pods are ready (the test's exporter serves the
//! ready pods of the testkit's fake API server, a fake: no Kubernetes API server runs
//! here), and a real Prometheus and the real monitor judge them. With the default
//! `on_no_data: pause`, a version is promoted only once its own series were analysed,
//! and one that nobody can see pauses.

use std::time::Duration;

use toronto_protocol::analysis::AnalysisOutcome;
use toronto_protocol::rollout::RolloutPhase;

use crate::kube_env::{
    Serving, config_for, fake_api, image_and_replicas, kube_settings, kube_stack, run, succeeded,
};
use crate::support::{ENV, canary};

fn image(version: &str) -> String {
    format!("registry.example/news:{version}")
}

#[test]
fn a_version_is_judged_on_its_own_pods_series_and_one_nobody_sees_pauses() {
    run(a_version_is_judged_on_its_own_pods_series_and_one_nobody_sees_pauses_body());
}

async fn a_version_is_judged_on_its_own_pods_series_and_one_nobody_sees_pauses_body() {
    let fake = fake_api().await;
    let settings = kube_settings();
    assert_eq!(
        settings.on_no_data,
        toronto_protocol::analysis::OnNoData::Pause,
        "the default policy"
    );
    let mut k = kube_stack(config_for(fake.url()), ENV, 1, settings).await;

    // A first deploy whose series start with its pods (a step pause far shorter than
    // the analysis window): the step holds until its threshold check has samples,
    // then goes on with that passing verdict.
    k.traffic("news", "1.0.0", 0.01);
    let first = k
        .start_image("news", "1.0.0", &image("1.0.0"), canary(&[50], 0))
        .await;
    let done = succeeded(&k, first).await;
    let verdict = &done
        .analyses
        .iter()
        .find(|a| a.step == "first-deploy")
        .unwrap_or_else(|| panic!("the first deploy kept its analysis: {done:#?}"))
        .verdict;
    assert_eq!(verdict.outcome, AnalysisOutcome::Pass, "{verdict:#?}");
    let errors = verdict
        .metrics
        .iter()
        .find(|m| m.name == "error_ratio")
        .expect("the error ratio was checked");
    assert_eq!(errors.outcome, AnalysisOutcome::Pass, "{errors:#?}");
    assert!(errors.canary.count >= 3, "{errors:#?}");
    assert!(
        errors.canary.median.is_some_and(|m| m < 0.05),
        "{errors:#?}"
    );

    // A canary whose pods Prometheus never sees (no scrape, or labels the template
    // does not select): no data, so it pauses with the reason instead of promoting.
    k.serve("news", "2.0.0", Serving::Silent);
    let blind = k
        .start_image("news", "2.0.0", &image("2.0.0"), canary(&[50], 0))
        .await;
    let paused = k.s.event(blind, "paused", Duration::from_secs(60)).await;
    assert_eq!(paused.phase, RolloutPhase::Paused);
    let reason = paused.reason.clone().unwrap_or_default();
    // (The step's weight is the one 3 replicas can reach: `weight-67`.)
    assert!(
        reason.contains("no analysis data for step weight-")
            && reason.contains("(on_no_data: pause)"),
        "{reason}"
    );
    assert!(reason.contains("0 canary"), "{reason}");
    let stable = k.deployment("news").await.expect("the stable Deployment");
    assert_eq!(image_and_replicas(&stable).0, image("1.0.0"));
    k.stop().await;
}

#[test]
fn the_templates_sequential_test_judges_canaries_on_prometheus_counts() {
    run(the_templates_sequential_test_judges_canaries_on_prometheus_counts_body());
}

async fn the_templates_sequential_test_judges_canaries_on_prometheus_counts_body() {
    let fake = fake_api().await;
    let mut k = kube_stack(config_for(fake.url()), ENV, 1, kube_settings()).await;
    let image = |v: &str| format!("registry.example/cart:{v}");
    k.traffic("cart", "1.0.0", 0.01);
    let first = k
        .start_image("cart", "1.0.0", &image("1.0.0"), canary(&[50], 0))
        .await;
    succeeded(&k, first).await;

    // A healthy canary: the `app` template's error ratio is also judged by the
    // sequential test on the request and error counts Prometheus holds.
    k.traffic("cart", "1.1.0", 0.01);
    let healthy = k
        .start_image("cart", "1.1.0", &image("1.1.0"), canary(&[50], 0))
        .await;
    let done = succeeded(&k, healthy).await;
    let errors = done
        .analyses
        .iter()
        .filter(|a| a.step.starts_with("weight-"))
        .flat_map(|a| a.verdict.metrics.iter())
        .find(|m| m.name == "error_ratio")
        .unwrap_or_else(|| panic!("the canary step kept its analysis: {done:#?}"));
    assert!(
        errors
            .reason
            .contains("sequential test (mSPRT) does not reject"),
        "{errors:#?}"
    );

    // A canary failing 25% of its requests, with a pause far longer than needed: the
    // sequential test rejects it on its counts.
    k.traffic("cart", "2.0.0", 0.25);
    let bad = k
        .start_image("cart", "2.0.0", &image("2.0.0"), canary(&[50], 60))
        .await;
    let aborted = k.s.event(bad, "aborted", Duration::from_secs(40)).await;
    assert!(aborted.rolled_back, "{aborted:?}");
    let reason = aborted.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("critical metric error_ratio failed: sequential test (mSPRT) rejects"),
        "{reason}"
    );
    let stable = k.deployment("cart").await.expect("the stable Deployment");
    assert_eq!(image_and_replicas(&stable).0, image("1.1.0"));
    k.stop().await;
}
