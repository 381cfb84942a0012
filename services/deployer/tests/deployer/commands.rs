//! Commands on rollouts, bad input, scale, alerts and chaos experiments.

use std::time::Duration;

use toronto_deployer::Settings;
use toronto_protocol::rollout::{Rollout, RolloutCommand, RolloutPhase, SimFault, SimService};
use toronto_protocol::tasks::{
    ExecuteAccepted, ExecuteRequest, PlanTask, RollbackTask, ScaleTask, Strategy,
};
use toronto_protocol::{Encoding, Envelope, ErrorCode};
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn commands_pause_resume_promote_and_abort_a_rollout() {
    let mut s = stack_with(
        Settings {
            manual_promotion: vec![ENV.into()],
            ..settings()
        },
        1,
    )
    .await;
    s.deployed("mail", "1.0.0", canary(&[100], 0)).await;
    let id = s
        .start(deploy("mail", "1.1.0", canary(&[10, 50, 100], 0)))
        .await;
    let paused = s.event(id, "paused", Duration::from_secs(10)).await;
    assert_eq!(paused.weight, 10);
    assert!(
        paused
            .reason
            .unwrap_or_default()
            .contains("rollout.promote")
    );
    let by_name = RolloutCommand {
        service: Some("mail".into()),
        environment: Some(ENV.into()),
        by: Some("alice".into()),
        ..Default::default()
    };
    let r: Rollout = s.request("rollout.promote", by_name.clone()).await.unwrap();
    assert_eq!(r.phase, RolloutPhase::Progressing);
    let paused_again = s
        .rollouts
        .seen
        .iter()
        .filter(|(w, r)| w == "paused" && r.id == id)
        .count();
    assert_eq!(paused_again, 1);
    // Next hold at 50 percent; then abort instead of promoting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.rollout(id).await;
        if r.phase == RolloutPhase::Paused && r.weight == 50 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hold at 50 percent: {:?} {:?} at {}",
            r.phase,
            r.reason,
            r.weight
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = s
        .request::<_, Rollout>(
            "rollout.resume",
            RolloutCommand {
                id: Some(Uuid::now_v7()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::NotFound);
    // Who aborted is the verified signer, whatever `by` says.
    let alice = toronto_testkit::person(
        &s.client,
        "alice",
        &[toronto_protocol::auth::Role::Operator],
        &[],
    )
    .await;
    let _: Rollout = s
        .request_as(
            "rollout.abort",
            RolloutCommand {
                reason: Some("saw something odd".into()),
                by: Some("mallory".into()),
                ..by_name.clone()
            },
            &alice,
        )
        .await
        .unwrap();
    let aborted = s.event(id, "aborted", Duration::from_secs(10)).await;
    assert_eq!(
        aborted.reason.as_deref(),
        Some("aborted by alice: saw something odd")
    );
    assert_eq!(s.sim_view("mail").await.traffic.get("1.0.0"), Some(&100));
    let err = s
        .request::<_, Rollout>("rollout.promote", by_name)
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::Conflict, "it has ended");
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let mut s = stack_with(settings(), 1).await;
    // Unknown service: nothing to roll back or scale.
    for (verb, task) in [
        (
            "rollback",
            PlanTask::Rollback(RollbackTask {
                service: "ghost".into(),
                environment: ENV.into(),
                target_version: None,
                emergency: false,
            }),
        ),
        (
            "scale",
            PlanTask::Scale(ScaleTask {
                service: "ghost".into(),
                environment: ENV.into(),
                replicas: 2,
            }),
        ),
    ] {
        let err = s.execute(verb, task).await.unwrap_err();
        assert_eq!(remote_code(&err), ErrorCode::NotFound, "{verb}");
        assert!(
            err.to_string().contains("ghost has never been deployed"),
            "{err}"
        );
    }
    // Steps out of order.
    let err = s
        .execute(
            "rollout.start",
            deploy("ghost", "1.0.0", canary(&[50, 20], 1)),
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::BadRequest);
    assert!(err.to_string().contains("must increase"), "{err}");
    // The wrong task for the command.
    let err = s
        .execute(
            "rollout.start",
            PlanTask::Scale(ScaleTask {
                service: "ghost".into(),
                environment: ENV.into(),
                replicas: 2,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::BadRequest);
    // Unknown strategy, sent as raw JSON.
    let raw = serde_json::json!({
        "specversion": "1.0",
        "id": Uuid::now_v7().to_string(),
        "source": "toronto://test",
        "type": "ai.toronto.devops.deployer.execute.v1",
        "time": chrono::Utc::now().to_rfc3339(),
        "datacontenttype": "application/json",
        "data": {
            "plan_id": Uuid::now_v7().to_string(),
            "idempotency_key": "k1",
            "task": {"kind": "deploy", "service": "ghost", "version": "1", "environment": ENV,
                     "strategy": {"kind": "yolo"}}
        }
    });
    let reply = s
        .client
        .request(
            "toronto.devops.v1.deployer.rollout.start",
            serde_json::to_vec(&raw).unwrap().into(),
        )
        .await
        .unwrap();
    let headers = reply.headers.expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("400")
    );
    let body = String::from_utf8_lossy(&reply.payload);
    assert!(body.contains("yolo"), "{body}");

    // A second rollout of the same service and environment while one runs: 409.
    s.deployed("ghost", "1.0.0", canary(&[100], 0)).await;
    let id = s
        .start(deploy("ghost", "2.0.0", canary(&[10, 100], 30)))
        .await;
    let err = s
        .execute("rollout.start", deploy("ghost", "3.0.0", Strategy::Rolling))
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::Conflict);
    assert!(err.to_string().contains(&id.to_string()), "{err}");
    // Scaling waits for the rollout too.
    let err = s
        .execute(
            "scale",
            PlanTask::Scale(ScaleTask {
                service: "ghost".into(),
                environment: ENV.into(),
                replicas: 5,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(&err), ErrorCode::Conflict);
    // The same idempotency key gives the same rollout, not a conflict.
    let request = ExecuteRequest {
        plan_id: Uuid::now_v7(),
        idempotency_key: "plan-1:execute".into(),
        task: deploy("other", "1.0.0", Strategy::Rolling),
    };
    let a: ExecuteAccepted = s.request("rollout.start", request.clone()).await.unwrap();
    let b: ExecuteAccepted = s.request("rollout.start", request).await.unwrap();
    assert_eq!(rollout_id(&a), rollout_id(&b));
    s.stop().await;
}

#[tokio::test]
async fn scale_changes_the_serving_version_at_once() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("img", "1.0.0", Strategy::Rolling).await;
    s.execute(
        "scale",
        PlanTask::Scale(ScaleTask {
            service: "img".into(),
            environment: ENV.into(),
            replicas: 6,
        }),
    )
    .await
    .unwrap();
    assert_eq!(s.sim_view("img").await.workloads["img"].replicas, 6);
    // The next rollout keeps the new size.
    let r = s.deployed("img", "1.1.0", Strategy::Rolling).await;
    assert_eq!(r.replicas, 6);
    s.stop().await;
}

#[tokio::test]
async fn without_a_monitor_the_simulated_clusters_own_counts_decide() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("wish", "1.0.0", canary(&[100], 0)).await;
    let _: SimService = s
        .request(
            "sim.fault",
            SimFault {
                service: "wish".into(),
                environment: ENV.into(),
                version: "2.0.0".into(),
                error_rate: 0.5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = s
        .start(deploy("wish", "2.0.0", canary(&[50, 100], 60)))
        .await;
    let aborted = s.event(id, "aborted", Duration::from_secs(15)).await;
    let evidence = aborted.analyses.last().expect("the verdict is recorded");
    assert_eq!(evidence.source, "threshold");
    assert!(
        evidence.verdict.reason.contains("exceeds the baseline"),
        "{evidence:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn an_alert_on_the_service_aborts_its_canary_between_steps() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("news", "1.0.0", canary(&[100], 0)).await;
    let id = s
        .start(deploy("news", "1.1.0", canary(&[20, 100], 60)))
        .await;
    s.event(id, "progressed", Duration::from_secs(10)).await;
    let alert = toronto_protocol::alerts::Alert {
        fingerprint: "f1".into(),
        status: toronto_protocol::alerts::AlertStatus::Firing,
        labels: [
            ("alertname".to_owned(), "ErrorBudgetBurn".to_owned()),
            ("service".to_owned(), "news".to_owned()),
            ("environment".to_owned(), ENV.to_owned()),
        ]
        .into(),
        annotations: Default::default(),
        burn_rates: Default::default(),
        budget_remaining: None,
        starts_at: chrono::Utc::now(),
        ends_at: None,
        generator: "test".into(),
    };
    let event = Envelope::builder("toronto://test", alert).build();
    s.client
        .publish(
            "toronto.devops.v1.events.alert.firing",
            toronto_protocol::encode(&event, Encoding::Json)
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let aborted = s.event(id, "aborted", Duration::from_secs(10)).await;
    let evidence = aborted.analyses.last().expect("the alert is recorded");
    assert_eq!(evidence.source, "alert");
    assert!(
        evidence.verdict.reason.contains("ErrorBudgetBurn"),
        "{evidence:?}"
    );
    assert_eq!(s.sim_view("news").await.traffic.get("1.0.0"), Some(&100));
    s.stop().await;
}

#[tokio::test]
async fn chaos_experiments_stop_when_an_abort_condition_holds_and_clean_up() {
    let mut s = stack_with(settings(), 1).await;
    s.deployed("quiz", "1.0.0", Strategy::Rolling).await;
    let experiment = |fault: toronto_protocol::tasks::ChaosFault, seconds, conditions| {
        PlanTask::ChaosExperiment(toronto_protocol::tasks::ChaosExperimentTask {
            service: "quiz".into(),
            environment: ENV.into(),
            fault,
            duration_seconds: seconds,
            abort_conditions: conditions,
        })
    };
    // Half the requests fail; the experiment stops at 20 percent.
    let accepted = s
        .execute(
            "chaos.run",
            experiment(
                toronto_protocol::tasks::ChaosFault::ErrorRate { rate: 0.5 },
                60,
                vec![toronto_protocol::tasks::AbortCondition::ErrorRatioAbove { threshold: 0.2 }],
            ),
        )
        .await
        .unwrap();
    let id: Uuid = accepted
        .reference
        .unwrap()
        .strip_prefix("chaos ")
        .unwrap()
        .parse()
        .unwrap();
    let run = s.chaos_until_done(id).await;
    assert_eq!(run.state, toronto_protocol::rollout::ChaosState::Aborted);
    assert!(
        run.reason
            .as_deref()
            .unwrap_or("")
            .contains("error_ratio_above 0.2 held"),
        "{run:?}"
    );
    assert!(
        s.sim_view("quiz").await.faults.is_empty(),
        "the fault is removed"
    );
    // Added latency with no condition holding: it runs its course.
    let accepted = s
        .execute(
            "chaos.run",
            experiment(
                toronto_protocol::tasks::ChaosFault::Latency { ms: 30 },
                1,
                vec![toronto_protocol::tasks::AbortCondition::AlertFiring],
            ),
        )
        .await
        .unwrap();
    let id: Uuid = accepted
        .reference
        .unwrap()
        .strip_prefix("chaos ")
        .unwrap()
        .parse()
        .unwrap();
    let run = s.chaos_until_done(id).await;
    assert_eq!(
        run.state,
        toronto_protocol::rollout::ChaosState::Completed,
        "{run:?}"
    );
    assert!(s.sim_view("quiz").await.faults.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_running_experiment_is_taken_over_when_its_watcher_dies() {
    let mut s = stack_with(settings(), 2).await;
    s.deployed("dice", "1.0.0", Strategy::Rolling).await;
    let accepted = s
        .execute(
            "chaos.run",
            PlanTask::ChaosExperiment(toronto_protocol::tasks::ChaosExperimentTask {
                service: "dice".into(),
                environment: ENV.into(),
                fault: toronto_protocol::tasks::ChaosFault::ErrorRate { rate: 0.5 },
                duration_seconds: 6,
                abort_conditions: vec![toronto_protocol::tasks::AbortCondition::AlertFiring],
            }),
        )
        .await
        .unwrap();
    let id: Uuid = accepted
        .reference
        .unwrap()
        .strip_prefix("chaos ")
        .unwrap()
        .parse()
        .unwrap();
    // The holder of the chaos lease watches it: crash that one, as a kill -9 would.
    let kv = async_nats::jetstream::new(s.client.clone())
        .get_key_value("toronto_rollouts")
        .await
        .unwrap();
    let holder = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(v) = kv.get("deployer-chaos").await.unwrap() {
                let record: serde_json::Value = serde_json::from_slice(&v).unwrap();
                return record["holder"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a deployer holds the chaos lease");
    let victim = s
        .deployers
        .iter()
        .position(|(_, d)| d.runtime.host.id() == holder)
        .expect("one of ours holds it");
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.deployers[victim].1.crash();
    assert!(
        !s.sim_view("dice").await.faults.is_empty(),
        "the fault is in while the experiment runs"
    );
    // The survivor takes the lease over and ends the experiment on time.
    let run = s.chaos_until_done(id).await;
    assert_eq!(
        run.state,
        toronto_protocol::rollout::ChaosState::Completed,
        "{run:?}"
    );
    let ran = run.ended_at.unwrap() - run.started_at;
    assert!(
        ran >= chrono::Duration::seconds(6) && ran < chrono::Duration::seconds(20),
        "it ran its course from its start, not again from the takeover: {ran}"
    );
    assert!(
        s.sim_view("dice").await.faults.is_empty(),
        "the survivor removed the fault"
    );
    s.stop().await;
}
