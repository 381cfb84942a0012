//! Blast-radius freeze: the incident commander with the deployer (simulated cluster).
//! A SEV1 incident on `api` pauses the rollouts in flight for `api` and for `web`
//! (which depends on it) but not for `batch`; `incident.freeze.list` names the
//! frozen services; lifting early needs a reason; resolving the incident lifts the
//! freeze and the paused rollouts resume.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_incident_commander::settings::{Policy, Settings};
use toronto_protocol::incidents::{
    Freeze, FreezeList, Freezes, Incident, IncidentAction, IncidentEvent, IncidentOpen, Severity,
};
use toronto_protocol::rollout::{Rollout, RolloutPhase};
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, ExecuteAccepted, ExecuteRequest, Plan, PlanGet, PlanTask, StepState,
    Strategy, SubmitAccepted,
};

const SUBMIT: &str = "toronto.devops.v1.planner.submit";
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::{NatsServer, Recorder};

async fn ask<Req: Message, Resp: Message>(
    client: &async_nats::Client,
    subject: &str,
    data: Req,
) -> Result<Resp, CallError> {
    let env = Envelope::builder("toronto://agents/developer/alice", data).build();
    call::<_, Resp>(
        client,
        subject,
        &env,
        Encoding::Json,
        Duration::from_secs(10),
    )
    .await
    .map(|r| r.data)
}

/// The state of a plan's policy step once it is decided.
async fn policy_step(client: &async_nats::Client, plan_id: uuid::Uuid) -> Plan {
    for _ in 0..100 {
        let plan: Plan = ask(
            client,
            "toronto.devops.v1.planner.plan.get",
            PlanGet { plan_id },
        )
        .await
        .unwrap();
        let policy = plan.steps.iter().find(|s| s.id == "policy").unwrap();
        if matches!(policy.state, StepState::Succeeded | StepState::Failed) {
            return plan;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the policy step of {plan_id} was never decided");
}

fn web_deploy(fix: bool) -> DeployTask {
    DeployTask {
        service: "web".into(),
        version: "3.0.0".into(),
        image: None,
        environment: "production".into(),
        strategy: Strategy::Rolling,
        change: None,
        fix,
        policy_override: None,
    }
}

fn slow_canary(service: &str, version: &str) -> PlanTask {
    PlanTask::Deploy(Box::new(DeployTask {
        service: service.into(),
        version: version.into(),
        image: Some(format!("registry.example/{service}:{version}")),
        environment: "production".into(),
        strategy: Strategy::Canary {
            steps: vec![
                CanaryStep {
                    weight: 10,
                    pause_seconds: Some(600),
                },
                CanaryStep {
                    weight: 100,
                    pause_seconds: None,
                },
            ],
        },
        change: None,
        fix: false,
        policy_override: None,
    }))
}

#[tokio::test]
async fn a_sev1_freezes_its_blast_radius_until_it_resolves() {
    use toronto_deployer::{SimCluster, SimSettings};

    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = Recorder::start(&client, &["toronto.devops.v1.events.>"]).await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    config.shutdown_grace_secs = 2;

    // The deployer on the simulated cluster (a simulation of Kubernetes).
    let deployer_settings = toronto_deployer::Settings {
        lease: Duration::from_secs(2),
        analysis_interval: Duration::from_millis(200),
        analysis_window: Duration::from_secs(2),
        analysis_timeout: Duration::from_millis(300),
        step_pause: Duration::from_millis(200),
        scale_down_delay: Duration::from_millis(200),
        progress_deadline: Duration::from_secs(1200),
        drift_interval: Duration::ZERO,
        sim: SimSettings {
            tick: Duration::from_millis(50),
            requests_per_tick: 200,
            pod_start: Duration::from_millis(100),
            base_latency: Duration::from_millis(20),
        },
        ..Default::default()
    };
    let sim = SimCluster::new(deployer_settings.sim.clone());
    let deployer_stop = CancellationToken::new();
    let deployer = toronto_deployer::start_with(
        config.clone(),
        deployer_settings,
        Some(sim),
        deployer_stop.clone(),
    )
    .await
    .unwrap();
    let deployer_running = tokio::spawn(deployer.runtime.run_until_shutdown());

    let policy = Policy::from_yaml(
        r#"
freeze:
  severities: [sev1, sev2]
  dependencies:
    web: [api]
    api: [db]
  on_lift: resume
"#,
    )
    .unwrap();
    let settings = Settings {
        tick: Duration::from_millis(100),
        policy,
        ..Settings::default()
    };
    let ic_stop = CancellationToken::new();
    let ic = toronto_incident_commander::start_with(config.clone(), settings, ic_stop.clone())
        .await
        .unwrap();
    let ic_running = tokio::spawn(ic.run_until_shutdown());

    // Each service runs 1.0.0 (a first deploy replaces at once: nothing to compare).
    for service in ["api", "web", "batch"] {
        let request = ExecuteRequest {
            plan_id: uuid::Uuid::now_v7(),
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            task: slow_canary(service, "1.0.0"),
        };
        let _: ExecuteAccepted = ask(&client, "toronto.devops.v1.deployer.rollout.start", request)
            .await
            .unwrap();
        bus.wait(
            "toronto.devops.v1.events.rollout.succeeded",
            |r: &Rollout| r.service == service,
        )
        .await;
    }
    // Rollouts in flight for api, web and batch (each waits at its first canary step).
    let mut rollouts = std::collections::BTreeMap::new();
    for service in ["api", "web", "batch"] {
        let request = ExecuteRequest {
            plan_id: uuid::Uuid::now_v7(),
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            task: slow_canary(service, "2.0.0"),
        };
        let _: ExecuteAccepted = ask(&client, "toronto.devops.v1.deployer.rollout.start", request)
            .await
            .unwrap();
        let started: Rollout = bus
            .wait("toronto.devops.v1.events.rollout.started", |r: &Rollout| {
                r.service == service && r.version == "2.0.0"
            })
            .await;
        rollouts.insert(service, started.id);
    }

    // A SEV1 on api.
    let open = IncidentOpen {
        title: "api is down".into(),
        service: "api".into(),
        environment: "production".into(),
        severity: Some(Severity::Sev1),
        labels: Default::default(),
        by: "alice".into(),
    };
    let incident: Incident = ask(&client, "toronto.devops.v1.incident.open", open)
        .await
        .unwrap();
    let freeze: Freeze = bus
        .wait("toronto.devops.v1.events.freeze.started", |f: &Freeze| {
            f.incident_id == incident.id
        })
        .await;
    assert_eq!(
        freeze.services,
        ["api", "db", "web"],
        "affected, dependency, dependent"
    );
    let mut paused = freeze.paused_rollouts.clone();
    paused.sort();
    let mut expected = vec![rollouts["api"], rollouts["web"]];
    expected.sort();
    assert_eq!(paused, expected, "batch is outside the blast radius");
    for service in ["api", "web"] {
        let r: Rollout = bus
            .wait("toronto.devops.v1.events.rollout.paused", |r: &Rollout| {
                r.id == rollouts[service]
            })
            .await;
        assert_eq!(r.phase, RolloutPhase::Paused);
    }
    // The planner's question: is web frozen?
    let frozen: Freezes = ask(
        &client,
        "toronto.devops.v1.incident.freeze.list",
        FreezeList {
            service: Some("web".into()),
            environment: Some("production".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(frozen.freezes.len(), 1);
    let batch: Freezes = ask(
        &client,
        "toronto.devops.v1.incident.freeze.list",
        FreezeList {
            service: Some("batch".into()),
            environment: None,
        },
    )
    .await
    .unwrap();
    assert!(batch.freezes.is_empty());

    // The planner refuses a new deploy of web, but lets the fix through its policy step.
    let planner_stop = CancellationToken::new();
    let planner_settings = toronto_planner::Settings {
        gate_timeout: Duration::from_millis(800),
        promotion: Vec::new(),
        budget_environments: Vec::new(),
        ..Default::default()
    };
    let planner =
        toronto_planner::start_with(config.clone(), planner_settings, planner_stop.clone())
            .await
            .unwrap();
    let planner_running = tokio::spawn(planner.run_until_shutdown());
    for fix in [false, true] {
        let accepted: SubmitAccepted = ask(&client, SUBMIT, web_deploy(fix)).await.unwrap();
        let plan = policy_step(&client, accepted.plan_id).await;
        let policy = plan.steps.iter().find(|s| s.id == "policy").unwrap();
        if fix {
            assert_eq!(policy.state, StepState::Succeeded, "{plan:#?}");
        } else {
            assert_eq!(policy.state, StepState::Failed);
            let reason = policy.reason.as_deref().unwrap_or_default();
            assert!(
                reason.contains(&format!(
                    "web in production is frozen by incident {}",
                    incident.id
                )),
                "{reason}"
            );
        }
    }
    planner_stop.cancel();
    planner_running.await.unwrap().unwrap();
    // Lifting early needs a reason.
    let no_reason = ask::<_, Freeze>(
        &client,
        "toronto.devops.v1.incident.freeze.lift",
        IncidentAction {
            id: incident.id,
            by: "root".into(),
            reason: None,
        },
    )
    .await;
    assert!(no_reason.is_err(), "{no_reason:?}");

    // Resolving the incident lifts the freeze; the paused rollouts resume.
    let _: Incident = ask(
        &client,
        "toronto.devops.v1.incident.resolve",
        IncidentAction {
            id: incident.id,
            by: "alice".into(),
            reason: Some("fixed".into()),
        },
    )
    .await
    .unwrap();
    let lifted: Freeze = bus
        .wait("toronto.devops.v1.events.freeze.lifted", |f: &Freeze| {
            f.incident_id == incident.id
        })
        .await;
    assert_eq!(lifted.lifted_by.as_deref(), Some("incident-commander"));
    for service in ["api", "web"] {
        bus.wait("toronto.devops.v1.events.rollout.resumed", |r: &Rollout| {
            r.id == rollouts[service]
        })
        .await;
    }
    // Both are on the timeline.
    let frozen_note = bus
        .wait(
            "toronto.devops.v1.events.incident.frozen",
            |e: &IncidentEvent| e.id == incident.id,
        )
        .await;
    assert!(
        frozen_note.change.contains("api, db, web"),
        "{}",
        frozen_note.change
    );
    bus.wait(
        "toronto.devops.v1.events.incident.unfrozen",
        |e: &IncidentEvent| e.id == incident.id && e.change.contains("rollout.resume"),
    )
    .await;
    let none: Freezes = ask(
        &client,
        "toronto.devops.v1.incident.freeze.list",
        FreezeList::default(),
    )
    .await
    .unwrap();
    assert!(none.freezes.is_empty());

    ic_stop.cancel();
    ic_running.await.unwrap().unwrap();
    deployer_stop.cancel();
    deployer_running.await.unwrap().unwrap();
}
