//! Rollbacks and first deploys are verified: a rollback goes through the analysed
//! steps of the service's shape unless the operator calls it an emergency, and a first
//! deploy is checked against thresholds (no monitor runs here: the deployer judges by
//! the simulated cluster's own counts).

use std::time::Duration;

use toronto_deployer::Settings;
use toronto_protocol::rollout::{RolloutPhase, RolloutStepKind, SimFault, SimService};
use toronto_protocol::tasks::{PlanTask, RollbackTask, Strategy};

use crate::support::*;

async fn fault(s: &Stack, service: &str, version: &str, error_rate: f64) {
    assert!(
        try_fault(s, service, version, error_rate).await,
        "sim.fault refused"
    );
}

async fn try_fault(s: &Stack, service: &str, version: &str, error_rate: f64) -> bool {
    s.request::<_, SimService>(
        "sim.fault",
        SimFault {
            service: service.into(),
            environment: ENV.into(),
            version: version.into(),
            error_rate,
            ..Default::default()
        },
    )
    .await
    .is_ok()
}

fn rollback(service: &str, to: &str, emergency: bool) -> PlanTask {
    PlanTask::Rollback(RollbackTask {
        service: service.into(),
        environment: ENV.into(),
        target_version: Some(to.into()),
        emergency,
    })
}

#[tokio::test]
async fn a_rollback_to_a_failing_version_aborts_unless_it_is_an_emergency() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("cart", "1.0.0", Strategy::Rolling).await;
    s.deployed("cart", "2.0.0", Strategy::Rolling).await;
    // The old version has gone bad (a dependency changed under it, say).
    fault(&s, "cart", "1.0.0", 0.4).await;

    let back = rollout_id(
        &s.execute("rollback", rollback("cart", "1.0.0", false))
            .await
            .unwrap(),
    );
    let aborted = s.event(back, "aborted", Duration::from_secs(15)).await;
    assert!(aborted.is_rollback && !aborted.emergency);
    assert_eq!(aborted.steps[0].id, "batch-25", "verified in batches");
    let reason = aborted.reason.clone().unwrap_or_default();
    assert!(reason.contains("analysis failed"), "{reason}");
    let view = s.sim_view("cart").await;
    assert_eq!(view.traffic.get("2.0.0"), Some(&100), "{view:?}");

    // The operator insists: one step, no analysis, and the events say who skipped it.
    let back = rollout_id(
        &s.execute("rollback", rollback("cart", "1.0.0", true))
            .await
            .unwrap(),
    );
    let started = s.event(back, "started", Duration::from_secs(5)).await;
    assert!(started.emergency, "the start event says emergency");
    let reason = started.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("emergency") && reason.contains("toronto://test"),
        "{reason}"
    );
    let done = s.event(back, "rolled_back", Duration::from_secs(10)).await;
    assert_eq!(done.phase, RolloutPhase::Succeeded);
    assert!(done.emergency);
    assert_eq!(done.steps.len(), 1);
    assert_eq!(done.steps[0].kind, RolloutStepKind::Replace);
    assert!(done.analyses.is_empty());
    assert!(
        done.steps[0]
            .note
            .as_deref()
            .unwrap_or("")
            .contains("emergency")
    );
    assert_eq!(done.requested_by.as_deref(), Some("toronto://test"));
    assert_eq!(s.sim_view("cart").await.traffic.get("1.0.0"), Some(&100));
    s.stop().await;
}

#[tokio::test]
async fn a_healthy_rollback_is_verified_then_serves() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("list", "1.0.0", Strategy::Rolling).await;
    s.deployed("list", "2.0.0", Strategy::Rolling).await;
    let back = rollout_id(
        &s.execute("rollback", rollback("list", "1.0.0", false))
            .await
            .unwrap(),
    );
    let done = s.event(back, "rolled_back", Duration::from_secs(15)).await;
    assert_eq!(done.phase, RolloutPhase::Succeeded);
    let steps: Vec<_> = done.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(steps, ["batch-25", "batch-50", "rolling"]);
    assert_eq!(s.sim_view("list").await.traffic.get("1.0.0"), Some(&100));
    s.stop().await;
}

#[tokio::test]
async fn a_first_deploy_is_checked_against_thresholds() {
    let mut s = stack_with(
        Settings {
            first_deploy_pause: Duration::from_secs(2),
            step_pause: Duration::from_secs(2),
            ..settings()
        },
        1,
    )
    .await;
    // A failing first version: nothing to compare with, the error ratio is too high.
    // (The simulated cluster takes faults for services it runs: injected as soon as
    // the first step has put it there.)
    let id = s
        .start(deploy("fresh", "1.0.0", Strategy::Canary { steps: vec![] }))
        .await;
    let mut tries = 0;
    while !try_fault(&s, "fresh", "1.0.0", 0.3).await {
        tries += 1;
        assert!(tries < 100, "the simulated cluster never ran fresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let aborted = s.event(id, "aborted", Duration::from_secs(15)).await;
    assert_eq!(aborted.steps.len(), 1);
    assert_eq!(aborted.steps[0].id, "first-deploy");
    let reason = aborted.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("first deploy") && reason.contains("above the maximum"),
        "{reason}"
    );
    assert!(aborted.rolled_back);
    let view = s.sim_view("fresh").await;
    assert!(
        view.workloads.values().all(|w| w.replicas == 0),
        "the failing version is stopped: {view:?}"
    );

    // A healthy first version takes traffic, is watched for the pause, and succeeds.
    let id = s.start(deploy("calm", "1.0.0", Strategy::Rolling)).await;
    let done = s.event(id, "succeeded", Duration::from_secs(15)).await;
    let step = &done.steps[0];
    assert_eq!(step.id, "first-deploy");
    assert!(
        step.note.as_deref().unwrap_or("").contains("thresholds"),
        "{step:?}"
    );
    let watched = step.done_at.unwrap() - step.ready_at.unwrap();
    assert!(watched.num_milliseconds() >= 2000, "{watched}");
    assert_eq!(s.sim_view("calm").await.traffic.get("1.0.0"), Some(&100));
    s.stop().await;
}
