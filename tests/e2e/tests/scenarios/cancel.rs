//! `plan.cancel` stops what the plan started, against the real deployer on its
//! simulated cluster (a simulation) over a real nats-server: a staging canary
//! cancelled at 10 percent is aborted and rolled back, and a production plan cancelled
//! 1 ms after its approval never ships.

use std::time::Duration;

use toronto_protocol::rollout::{Rollout, RolloutPhase, RolloutRef};
use toronto_protocol::tasks::{CanaryStep, PlanDecision, PlanEvent, PlanState, StepWork, Strategy};
use toronto_protocol::{Encoding, Envelope, ErrorCode};
use toronto_runtime::rpc::{CallError, call};

use crate::planner::{Planner, deploy, passing_peers, planner, real_deployer, step};

async fn rollout(p: &Planner, query: RolloutRef) -> Result<Rollout, CallError> {
    let req = Envelope::builder("toronto://test", query).build();
    call(
        &p.client,
        "toronto.devops.v1.deployer.rollout.get",
        &req,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .map(|r: Envelope<Rollout>| r.data)
}

fn canary(
    version: &str,
    environment: &str,
    first_pause_seconds: u64,
) -> Envelope<toronto_protocol::tasks::DeployTask> {
    let mut task = deploy("basket", environment);
    task.version = version.into();
    task.strategy = Strategy::Canary {
        steps: vec![
            CanaryStep {
                weight: 10,
                pause_seconds: Some(first_pause_seconds),
            },
            CanaryStep {
                weight: 100,
                pause_seconds: None,
            },
        ],
    };
    Envelope::builder("toronto://agents/developer/alice", task).build()
}

#[tokio::test]
async fn a_canary_cancelled_at_ten_percent_is_aborted_and_rolled_back() {
    let p = planner().await;
    let mut peers = passing_peers(&p.client).await;
    peers.stop_deployer().await;
    let (deployer_stop, deployer) = real_deployer(&p.server.url()).await;
    let events = p
        .client
        .subscribe("toronto.devops.v1.events.plan.stopped")
        .await
        .unwrap();

    let mut first = deploy("basket", "staging");
    first.version = "1.0.0".into();
    let first = p
        .submit(&Envelope::builder("toronto://agents/developer/alice", first).build())
        .await
        .unwrap();
    p.wait_for_state(first.plan_id, PlanState::Completed).await;

    let plan_id = p
        .submit(&canary("2.0.0", "staging", 30))
        .await
        .unwrap()
        .plan_id;
    // The plan waits for its rollout, which holds at 10 percent for 30 s.
    let mut at_ten = None;
    for _ in 0..100 {
        let plan = p.plan(plan_id).await.unwrap();
        if let Some(StepWork::Rollout { id }) = step(&plan, "execute").work {
            let r = rollout(
                &p,
                RolloutRef {
                    id: Some(id),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            if r.weight == 10 {
                at_ten = Some(id);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rollout_id = at_ten.expect("the canary never reached 10 percent");

    let cancelled = p.cancel(plan_id, "erin", "wrong build").await.unwrap();
    assert_eq!(cancelled.state, PlanState::Cancelled);
    let stopped = &cancelled.cancellation.as_ref().unwrap().stopped;
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0].step, "execute");
    assert_eq!(stopped[0].work, Some(StepWork::Rollout { id: rollout_id }));
    assert!(stopped[0].done, "{stopped:?}");
    assert!(
        stopped[0].detail.contains("aborted at 10 percent"),
        "{stopped:?}"
    );

    // The deployer aborts and rolls back: traffic back on 1.0.0, never 100 percent.
    let mut last = None;
    for _ in 0..100 {
        let r = rollout(
            &p,
            RolloutRef {
                id: Some(rollout_id),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        if r.phase.is_final() {
            last = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = last.expect("the rollout never ended");
    assert_eq!(r.phase, RolloutPhase::Aborted, "{r:?}");
    assert!(r.rolled_back, "{r:?}");
    assert_eq!(r.weight, 0, "{r:?}");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or("")
            .contains("cancelled by erin: wrong build"),
        "{:?}",
        r.reason
    );
    let mut events = events;
    let event = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut events),
    )
    .await
    .expect("no plan.stopped event")
    .unwrap();
    assert!(
        event
            .subject
            .ends_with(&format!(".plan.{}", PlanEvent::Stopped))
    );

    deployer_stop.cancel();
    deployer.runtime.run_until_shutdown().await.unwrap();
    peers.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn a_production_plan_cancelled_just_after_approval_never_ships() {
    let p = planner().await;
    let mut peers = passing_peers(&p.client).await;
    peers.stop_deployer().await;
    let (deployer_stop, deployer) = real_deployer(&p.server.url()).await;

    let plan_id = p
        .submit(&canary("2.4.1", "production", 1))
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(plan_id, PlanState::Waiting).await;
    let approve = Envelope::builder(
        "toronto://humans/erin",
        PlanDecision {
            plan_id,
            by: "erin".into(),
            role: "approver".into(),
            comment: None,
        },
    )
    .build();
    let erin = p.person("erin").await;
    let _: Envelope<toronto_protocol::tasks::Plan> = toronto_runtime::rpc::call_signed(
        &p.client,
        Some(&erin),
        "toronto.devops.v1.planner.plan.approve",
        &approve,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let cancelled = p.cancel_as(plan_id, &erin, "change of mind").await.unwrap();
    assert_eq!(cancelled.state, PlanState::Cancelled);

    // Longer than the whole canary (1 s at 10 percent, then 100) would take.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let plan = p.plan(plan_id).await.unwrap();
    assert_eq!(plan.state, PlanState::Cancelled);
    let query = RolloutRef {
        service: Some("basket".into()),
        environment: Some("production".into()),
        ..Default::default()
    };
    match rollout(&p, query).await {
        // The cancel won the race: no rollout was started.
        Err(CallError::Remote(e)) if e.code == ErrorCode::NotFound => {
            assert!(step(&plan, "execute").work.is_none(), "{plan:?}");
        }
        // The step started its rollout first: it was aborted, and the plan says so.
        Ok(r) => {
            assert_eq!(r.phase, RolloutPhase::Aborted, "{r:?}");
            assert_ne!(r.weight, 100, "{r:?}");
            let stopped = &plan.cancellation.as_ref().unwrap().stopped;
            assert!(
                stopped
                    .iter()
                    .any(|s| s.done && s.work == Some(StepWork::Rollout { id: r.id })),
                "{stopped:?}"
            );
        }
        Err(e) => panic!("rollout.get: {e}"),
    }

    deployer_stop.cancel();
    deployer.runtime.run_until_shutdown().await.unwrap();
    peers.stop().await;
    p.stop().await;
}
