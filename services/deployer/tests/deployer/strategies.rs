//! Strategies end to end on the simulated cluster: blue-green, progress deadlines,
//! drift, and a deployer killed mid-rollout.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use toronto_deployer::Settings;
use toronto_protocol::rollout::{
    DriftCheck, DriftReport, RolloutPhase, SimFault, SimService, SimTamper,
};
use toronto_protocol::tasks::{PlanTask, RollbackTask, Strategy};
use toronto_protocol::{Encoding, Envelope, ErrorCode};

use crate::support::*;

#[tokio::test]
async fn blue_green_switches_then_rolls_back_to_the_old_colour() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("pay", "1.0.0", Strategy::BlueGreen).await;
    let before = s.sim_view("pay").await;
    assert_eq!(before.traffic.get("1.0.0"), Some(&100));
    assert!(before.workloads.contains_key("pay-blue"));

    let id = s.start(deploy("pay", "2.0.0", Strategy::BlueGreen)).await;
    let preview = s.event(id, "progressed", Duration::from_secs(10)).await;
    assert_eq!(preview.weight, 0, "the preview takes no user traffic");
    assert_eq!(s.sim_view("pay").await.traffic.get("1.0.0"), Some(&100));
    s.event(id, "succeeded", Duration::from_secs(20)).await;
    let after = s.sim_view("pay").await;
    assert_eq!(after.traffic.get("2.0.0"), Some(&100), "{after:?}");
    assert_eq!(after.workloads["pay-green"].version, "2.0.0");
    assert_eq!(
        after.workloads["pay-blue"].replicas, 0,
        "old colour scaled down"
    );

    let accepted = s
        .execute(
            "rollback",
            PlanTask::Rollback(RollbackTask {
                service: "pay".into(),
                environment: ENV.into(),
                target_version: None,
                emergency: false,
            }),
        )
        .await
        .unwrap();
    let back = rollout_id(&accepted);
    let done = s.event(back, "rolled_back", Duration::from_secs(15)).await;
    assert!(done.is_rollback);
    let steps: Vec<_> = done.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        steps,
        ["preview", "switch", "scale-down"],
        "a rollback is previewed with analysis like a deploy"
    );
    let view = s.sim_view("pay").await;
    assert_eq!(view.traffic.get("1.0.0"), Some(&100), "{view:?}");
    assert_eq!(view.workloads["pay-blue"].version, "1.0.0");
    // Nothing older than 1.0.0 ran: a second rollback has nowhere to go (not forward).
    let err = s
        .execute(
            "rollback",
            PlanTask::Rollback(RollbackTask {
                service: "pay".into(),
                environment: ENV.into(),
                target_version: None,
                emergency: false,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::NotFound, "{err}");
    s.stop().await;
}

#[tokio::test]
async fn crash_looping_version_misses_its_progress_deadline_and_fails() {
    let mut s = stack_with(
        Settings {
            progress_deadline: Duration::from_secs(2),
            ..settings()
        },
        1,
    )
    .await;
    s.deployed("feed", "1.0.0", Strategy::Rolling).await;
    let _: SimService = s
        .request(
            "sim.fault",
            SimFault {
                service: "feed".into(),
                environment: ENV.into(),
                version: "1.1.0".into(),
                crash_loop: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = s.start(deploy("feed", "1.1.0", Strategy::Rolling)).await;
    let failed = s.event(id, "failed", Duration::from_secs(15)).await;
    assert_eq!(failed.phase, RolloutPhase::Failed);
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("progress deadline"), "{reason}");
    assert!(reason.contains("CrashLoopBackOff"), "{reason}");
    let view = s.sim_view("feed").await;
    assert_eq!(
        view.workloads["feed"].version, "1.0.0",
        "previous spec restored"
    );
    s.stop().await;
}

#[tokio::test]
async fn out_of_band_change_is_reported_as_drift_and_remediated_on_request() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("search", "3.1.0", Strategy::Rolling).await;
    let clean: DriftReport = s
        .request("drift.check", DriftCheck::default())
        .await
        .unwrap();
    assert_eq!(clean.checked, 1);
    assert!(clean.drifts.is_empty(), "{clean:?}");

    let mut drift_events = s
        .client
        .subscribe("toronto.devops.v1.events.drift.detected")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&s.client).await;
    let _: SimService = s
        .request(
            "sim.tamper",
            SimTamper {
                service: "search".into(),
                environment: ENV.into(),
                replicas: Some(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let report: DriftReport = s
        .request(
            "drift.check",
            DriftCheck {
                service: Some("search".into()),
                environment: Some(ENV.into()),
                remediate: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!(report.drifts.len(), 1, "{report:?}");
    let d = &report.drifts[0];
    assert_eq!(
        (d.object.as_str(), d.field.as_str()),
        ("Deployment/search", "spec.replicas")
    );
    assert_eq!((d.desired.clone(), d.live.clone()), (3.into(), 7.into()));
    assert!(d.remediated);
    let event = tokio::time::timeout(Duration::from_secs(5), drift_events.next())
        .await
        .expect("drift.detected published")
        .unwrap();
    let event: Envelope<toronto_protocol::rollout::Drift> =
        toronto_protocol::decode(&event.payload, Encoding::Json).unwrap();
    assert_eq!(event.data.service, "search");
    assert_eq!(s.sim_view("search").await.workloads["search"].replicas, 3);
    let after: DriftReport = s
        .request("drift.check", DriftCheck::default())
        .await
        .unwrap();
    assert!(after.drifts.is_empty(), "{after:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_deployer_killed_mid_rollout_is_resumed_by_another_without_repeating_a_step() {
    let mut s = stack_with(settings(), 2).await;
    s.deployed("orders", "1.0.0", canary(&[100], 1)).await;
    let id = s
        .start(deploy("orders", "1.1.0", canary(&[10, 25, 50, 100], 1)))
        .await;
    let at_10 = s.event(id, "progressed", Duration::from_secs(10)).await;
    assert_eq!(at_10.weight, 10);
    let owner = s
        .rollout(id)
        .await
        .lease
        .expect("the rollout is owned")
        .owner;
    let victim = s
        .deployers
        .iter()
        .position(|(_, d)| d.runtime.host.id() == owner)
        .expect("one of ours owns it");
    s.deployers[victim].1.crash();
    let survivor_id = s.deployers[1 - victim].1.runtime.host.id().to_owned();

    let done = s.event(id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(done.phase, RolloutPhase::Succeeded);
    let prefix = format!("{id}:");
    let keys: Vec<String> = s
        .sim
        .applied_steps()
        .into_iter()
        .filter(|a| a.step_key.starts_with(&prefix))
        .map(|a| a.step_key.trim_start_matches(&prefix).to_owned())
        .collect();
    assert_eq!(
        keys,
        ["weight-10", "weight-25", "weight-50", "promote"],
        "each step applied once, in order"
    );
    let unique: HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    // The survivor finished it.
    let finished_by: Vec<_> = s
        .rollouts
        .seen
        .iter()
        .filter(|(w, r)| w == "progressed" && r.id == id && r.weight > 10)
        .filter_map(|(_, r)| r.lease.as_ref().map(|l| l.owner.clone()))
        .collect();
    assert!(
        finished_by.iter().any(|o| o == &survivor_id),
        "{finished_by:?} should include {survivor_id}"
    );
    s.stop().await;
}

/// The issue this guards against: after a blue-green deploy, a rolling deploy of a
/// version failing 40% of its requests went to 100% in one unverified step, and so did
/// the next faulty rolling deploy.
#[tokio::test]
async fn a_faulty_rolling_deploy_is_caught_in_its_first_batch_even_after_a_change_of_strategy() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("shop", "1.2.0", Strategy::BlueGreen).await;
    for version in ["1.3.0", "1.4.0"] {
        let _: SimService = s
            .request(
                "sim.fault",
                SimFault {
                    service: "shop".into(),
                    environment: ENV.into(),
                    version: version.into(),
                    error_rate: 0.4,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let id = s.start(deploy("shop", version, Strategy::Rolling)).await;
        let aborted = s.event(id, "aborted", Duration::from_secs(20)).await;
        assert_eq!(aborted.phase, RolloutPhase::Aborted);
        assert!(aborted.rolled_back, "{aborted:?}");
        assert_eq!(aborted.steps[0].id, "batch-25", "{:?}", aborted.steps);
        assert!(
            aborted.weight < 100,
            "never took all traffic: {}",
            aborted.weight
        );
        let evidence = aborted.analyses.last().expect("the verdict is recorded");
        assert!(
            evidence.verdict.reason.contains("exceeds the baseline"),
            "{evidence:?}"
        );
        let view = s.sim_view("shop").await;
        assert!(
            view.workloads
                .values()
                .filter(|w| w.replicas > 0)
                .all(|w| w.version == "1.2.0"),
            "1.2.0 serves everything again: {view:?}"
        );
    }
    // A healthy rolling deploy goes through its batches to all replicas.
    let id = s.start(deploy("shop", "1.5.0", Strategy::Rolling)).await;
    let done = s.event(id, "succeeded", Duration::from_secs(30)).await;
    let ids: Vec<&str> = done.steps.iter().map(|st| st.id.as_str()).collect();
    assert_eq!(ids, ["batch-25", "batch-50", "rolling"]);
    // Each batch keeps the passing analysis it went on with.
    let judged: Vec<&str> = done.analyses.iter().map(|a| a.step.as_str()).collect();
    assert_eq!(judged, ["batch-25", "batch-50"], "{:?}", done.analyses);
    s.stop().await;
}
