//! A plan ends with its rollout on the real deployer.

use super::*;

#[tokio::test]
async fn a_plan_ends_with_its_rollout_on_the_real_deployer() {
    let p = planner().await;
    let mut peers = passing_peers(&p.client).await;
    // The fake deployer steps aside for the real one.
    peers.stop_deployer().await;
    let (deployer_stop, deployer) = real_deployer(&p.server.url()).await;

    let mut first = deploy("basket", "staging");
    first.version = "1.0.0".into();
    let accepted = p
        .submit(&Envelope::builder("toronto://agents/developer", first).build())
        .await
        .unwrap();
    let plan = p
        .wait_for_state(accepted.plan_id, PlanState::Completed)
        .await;
    let execute = step(&plan, "execute");
    assert!(
        execute
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("shipped 1.0.0 in staging"),
        "{execute:?}"
    );

    // A version that fails: the plan waits for its rollout, then fails with the reason.
    let fault = Envelope::builder(
        "toronto://test",
        toronto_protocol::rollout::SimFault {
            service: "basket".into(),
            environment: "staging".into(),
            version: "2.0.0".into(),
            error_rate: 0.5,
            ..Default::default()
        },
    )
    .build();
    call::<_, toronto_protocol::rollout::SimService>(
        &p.client,
        "toronto.devops.v1.deployer.sim.fault",
        &fault,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut second = deploy("basket", "staging");
    second.version = "2.0.0".into();
    second.strategy = Strategy::Canary {
        steps: vec![
            CanaryStep {
                weight: 50,
                pause_seconds: Some(30),
            },
            CanaryStep {
                weight: 100,
                pause_seconds: None,
            },
        ],
    };
    let accepted = p
        .submit(&Envelope::builder("toronto://agents/developer", second).build())
        .await
        .unwrap();
    let plan = p.wait_for_state(accepted.plan_id, PlanState::Failed).await;
    let reason = plan.reason.clone().unwrap_or_default();
    assert!(reason.contains("aborted and rolled back"), "{reason}");
    assert!(
        step(&plan, "execute").findings.is_some(),
        "the analysis is attached"
    );

    // A chaos experiment: the plan waits for it and completes when it ran its course.
    let chaos = toronto_protocol::tasks::ChaosExperimentTask {
        service: "basket".into(),
        environment: "staging".into(),
        fault: toronto_protocol::tasks::ChaosFault::PodKill { count: 1 },
        duration_seconds: 1,
        abort_conditions: vec![toronto_protocol::tasks::AbortCondition::AlertFiring],
    };
    let accepted = p
        .submit(&Envelope::builder("toronto://agents/qa", chaos).build())
        .await
        .unwrap();
    let plan = p
        .wait_for_state(accepted.plan_id, PlanState::Completed)
        .await;
    let execute = step(&plan, "execute");
    assert!(
        execute
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("completed: ran 1 s; no abort condition held"),
        "{execute:?}"
    );

    deployer_stop.cancel();
    deployer.runtime.run_until_shutdown().await.unwrap();
    peers.stop().await;
    p.stop().await;
}
