//! The sweep repairs what a lost event left undone: a plan whose rollout ended without
//! its end event reaching the planner, and a turn whose holder ended without letting
//! go of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use toronto_protocol::ErrorBody;
use toronto_protocol::rollout::{Rollout, RolloutRef};
use toronto_protocol::tasks::{ExecuteAccepted, ExecuteRequest, Plan, PlanState, StepState};
use toronto_runtime::service::{Request, ServiceHost};
use uuid::Uuid;

use crate::support::*;

/// A deployer that takes every deploy on as one rollout and answers `rollout.get`
/// with it progressing until `done`, then succeeded. It publishes no event: the end
/// event is lost.
async fn silent_deployer(client: &async_nats::Client, done: Arc<AtomicBool>) -> ServiceHost {
    let host =
        toronto_testkit::fake_service(client, "quiet-deployer", "toronto://agents/quiet-deployer")
            .await;
    let rollout = Uuid::new_v4();
    host.add_endpoint(
        "rollout-start",
        "toronto.devops.v1.deployer.rollout.start",
        move |_req: Request<ExecuteRequest>| async move {
            Ok::<_, ErrorBody>(ExecuteAccepted {
                reference: Some(format!("rollout {rollout}")),
            })
        },
    )
    .await
    .unwrap();
    host.add_endpoint(
        "rollout-get",
        "toronto.devops.v1.deployer.rollout.get",
        move |req: Request<RolloutRef>| {
            let phase = if done.load(Ordering::SeqCst) {
                "succeeded"
            } else {
                "progressing"
            };
            let id = req.data().id.unwrap_or(rollout);
            async move {
                let now = chrono::Utc::now();
                let r: Rollout = serde_json::from_value(serde_json::json!({
                    "id": id, "service": "cart", "environment": "staging",
                    "version": "2.4.1", "image": "cart:2.4.1",
                    "strategy": {"kind": "rolling"}, "replicas": 3,
                    "phase": phase, "steps": [], "step_index": 0, "weight": 0,
                    "idempotency_key": "k", "created_at": now, "updated_at": now,
                }))
                .map_err(|e| {
                    ErrorBody::new(toronto_protocol::ErrorCode::Internal, e.to_string())
                })?;
                Ok::<_, ErrorBody>(r)
            }
        },
    )
    .await
    .unwrap();
    client.flush().await.unwrap();
    host
}

#[tokio::test]
async fn a_plan_whose_rollout_ended_unannounced_is_woken_by_the_sweep() {
    let p = planner().await;
    let peers = Peers::start(&p.client, |_| Peer::Pass, Peer::Pass, false).await;
    let done = Arc::new(AtomicBool::new(false));
    let deployer = silent_deployer(&p.client, done.clone()).await;
    let plan_id = p.deploy(deploy("cart", "staging")).await;
    let waiting = p.wait_for_state(plan_id, PlanState::Waiting).await;
    assert_eq!(step(&waiting, "execute").state, StepState::Waiting);
    // The rollout ends; its end event never reaches the planner.
    done.store(true, Ordering::SeqCst);
    let plan = p.wait_for_state(plan_id, PlanState::Completed).await;
    let reason = step(&plan, "execute").reason.clone().unwrap_or_default();
    assert!(reason.contains("shipped 2.4.1"), "{reason}");
    deployer.stop(Duration::from_millis(100)).await;
    peers.stop().await;
    p.stop().await;
}

#[tokio::test]
async fn a_turn_left_by_an_ended_plan_is_released_and_the_next_plan_runs() {
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    // A production plan holds the turn of cart/production while it waits for its
    // approval; a second one queues behind it.
    let first = p.deploy(deploy("cart", "production")).await;
    p.wait_for_state(first, PlanState::Waiting).await;
    let mut second = deploy("cart", "production");
    second.version = "2.4.2".into();
    let second = p.deploy(second).await;
    p.wait_for_state(second, PlanState::Queued).await;
    // The first plan ends, stored by a planner that died before it let go of the
    // turn (written straight into the bucket, as that planner's last write).
    let js = async_nats::jetstream::new(p.client.clone());
    let kv = js.get_key_value("toronto_plans").await.unwrap();
    let key = format!("plan.{first}");
    let entry = kv.entry(&key).await.unwrap().unwrap();
    let mut ended: Plan = serde_json::from_slice(&entry.value).unwrap();
    ended.state = PlanState::Cancelled;
    ended.reason = Some("cancelled by a planner that then died".into());
    kv.update(
        &key,
        serde_json::to_vec(&ended).unwrap().into(),
        entry.revision,
    )
    .await
    .unwrap();
    // The sweep releases the turn and wakes the queued plan, which reaches its own
    // approval.
    p.wait_for_state(second, PlanState::Waiting).await;
    peers.stop().await;
    p.stop().await;
}
