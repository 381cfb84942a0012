//! The error-budget gate: an exhausted budget refuses production deploys, an SLO not yet
//! evaluated holds the gate.

use super::*;

#[tokio::test]
async fn an_exhausted_error_budget_refuses_production_deploys_but_not_fixes() {
    use toronto_protocol::tasks::{RollbackTask, SloStatus};
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let monitor = toronto_monitor::start(config.clone(), shutdown.clone())
        .await
        .unwrap();
    let monitor = tokio::spawn(monitor.run_until_shutdown());
    let budgeted = toronto_planner::Settings {
        budget_environments: vec!["production".into()],
        ..settings()
    };
    let rt = toronto_planner::start_with(config, budgeted, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let p = Planner {
        server,
        client,
        shutdown,
        running,
    };
    let _peers = passing_peers(&p.client).await;

    // The monitor's status bucket says cart has spent its budget.
    let js = async_nats::jetstream::new(p.client.clone());
    let status = js.get_key_value("toronto_slo_status").await.unwrap();
    let spent = SloStatus {
        service: "cart".into(),
        slo: "availability".into(),
        objective: 0.999,
        budget_remaining: -0.25,
        exhausted: true,
        burn_rates: Default::default(),
        evaluated_at: chrono::Utc::now(),
    };
    status
        .put(
            "cart.availability",
            serde_json::to_vec(&spent).unwrap().into(),
        )
        .await
        .unwrap();

    let refused = p
        .submit(
            &Envelope::builder(
                "toronto://agents/developer/alice",
                deploy("cart", "production"),
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    let refused = p.wait_for_state(refused, PlanState::Failed).await;
    assert!(
        refused
            .reason
            .as_deref()
            .unwrap()
            .contains("error budget is exhausted for availability (-25.0% of the budget left)"),
        "{:?}",
        refused.reason
    );

    // `fix: true` is a claim: with no open incident of cart it passes nothing.
    let mut commander_config = toronto_testkit::with_test_admin(Config::default());
    commander_config.nats.urls = vec![p.server.url()];
    commander_config.http.addr = String::new();
    let commander = toronto_incident_commander::start(commander_config, p.shutdown.clone())
        .await
        .unwrap();
    let commander = tokio::spawn(commander.run_until_shutdown());
    let mut fix = deploy("cart", "production");
    fix.fix = true;
    let unfounded = p
        .submit(&Envelope::builder("toronto://agents/developer/alice", fix.clone()).build())
        .await
        .unwrap()
        .plan_id;
    let unfounded = p.wait_for_state(unfounded, PlanState::Failed).await;
    assert!(
        unfounded
            .reason
            .as_deref()
            .unwrap()
            .contains("`fix: true` is refused: cart has no open incident to fix"),
        "{:?}",
        unfounded.reason
    );
    // With an incident of cart open, the same claim is the fix of that incident.
    let opened: Envelope<toronto_protocol::incidents::Incident> = call(
        &p.client,
        "toronto.devops.v1.incident.open",
        &Envelope::builder(
            "toronto://test",
            toronto_protocol::incidents::IncidentOpen {
                title: "cart checkout errors".into(),
                service: "cart".into(),
                environment: "production".into(),
                severity: None,
                labels: Default::default(),
                by: "alice".into(),
            },
        )
        .build(),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let fix = p
        .submit(&Envelope::builder("toronto://agents/developer/alice", fix).build())
        .await
        .unwrap()
        .plan_id;
    let waiting = p.wait_for_state(fix, PlanState::Waiting).await;
    assert!(
        step(&waiting, "error-budget")
            .reason
            .as_deref()
            .unwrap()
            .contains(&format!("the fix of incident {}", opened.data.id)),
        "{:?}",
        step(&waiting, "error-budget").reason
    );
    assert!(
        step(&waiting, "error-budget")
            .reason
            .as_deref()
            .unwrap()
            .contains("the change is the fix")
    );

    let other = p
        .submit(&Envelope::builder("toronto://test", deploy("shop", "production")).build())
        .await
        .unwrap()
        .plan_id;
    let waiting = p.wait_for_state(other, PlanState::Waiting).await;
    assert_eq!(
        step(&waiting, "error-budget").reason.as_deref(),
        Some("shop has no SLO")
    );

    // The fix holds cart's production turn while it waits for approval; a rollback
    // needs no budget but queues behind it, so end the fix first.
    p.cancel(fix, "erin", "rolling back instead").await.unwrap();
    let rollback = p
        .submit(
            &Envelope::builder(
                "toronto://test",
                RollbackTask {
                    service: "cart".into(),
                    environment: "production".into(),
                    target_version: None,
                    emergency: false,
                },
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(rollback, PlanState::Completed).await;
    p.stop().await;
    monitor.await.unwrap().unwrap();
    commander.await.unwrap().unwrap();
}

/// An SLO that exists but has not been evaluated yet is not "no SLO": the error-budget
/// gate waits for its first evaluation instead of passing the deploy.
#[tokio::test]
async fn an_slo_not_yet_evaluated_holds_the_error_budget_gate() {
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    // The monitor evaluates once at start, then only every hour.
    let monitor = toronto_monitor::start_with(
        config.clone(),
        toronto_monitor::Settings {
            slo_interval: Duration::from_secs(3600),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let monitor = tokio::spawn(monitor.run_until_shutdown());
    let budgeted = toronto_planner::Settings {
        budget_environments: vec!["production".into()],
        ..settings()
    };
    let rt = toronto_planner::start_with(config, budgeted, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let p = Planner {
        server,
        client,
        shutdown,
        running,
    };
    let _peers = passing_peers(&p.client).await;
    // basket gets an SLO now, after the monitor's first evaluation.
    let document =
        toronto_monitor::slo::bus_availability("availability", "basket", "production", 0.99);
    let _: Envelope<toronto_protocol::alerts::SloDefinition> = call(
        &p.client,
        "toronto.devops.v1.monitor.slo.put",
        &Envelope::builder(
            "toronto://test",
            toronto_protocol::alerts::SloPut { document },
        )
        .build(),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    let plan_id = p
        .submit(&Envelope::builder("toronto://test", deploy("basket", "production")).build())
        .await
        .unwrap()
        .plan_id;
    let mut held = None;
    for _ in 0..100 {
        let plan = p.plan(plan_id).await.unwrap();
        let budget = step(&plan, "error-budget");
        if budget
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("waiting for the first evaluation of SLO availability"))
        {
            held = Some(plan);
            break;
        }
        assert_ne!(
            budget.state,
            toronto_protocol::tasks::StepState::Succeeded,
            "{budget:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = held.expect("the gate waited for the SLO's first evaluation");
    assert_ne!(held.state, PlanState::Waiting, "not past the gate");
    p.cancel(plan_id, "erin", "done").await.unwrap();
    p.stop().await;
    monitor.await.unwrap().unwrap();
}
