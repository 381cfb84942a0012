//! Plans running their steps: gates, approval, one active plan per service and
//! environment, resumption after a crash, ephemeral environments.

use std::time::Duration;

use futures::StreamExt;
use toronto_protocol::tasks::{Plan, PlanList, PlanState, SubmitAccepted};
use toronto_protocol::{Encoding, Envelope, ErrorCode};
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;

use toronto_protocol::tasks::StepState;

use crate::support::*;

#[tokio::test]
async fn a_staging_deploy_passes_its_gates_and_reaches_the_deployer_once() {
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let mut events = p
        .client
        .subscribe("toronto.devops.v1.events.>")
        .await
        .unwrap();
    let mut notified = p
        .client
        .subscribe("toronto.agents.developer.v1.notify")
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("cart", "staging"),
    )
    .build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    let plan = p.wait_for_state(plan_id, PlanState::Completed).await;
    let steps: Vec<(&str, StepState)> = plan
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.state))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("policy", StepState::Succeeded),
            ("security-scan", StepState::Succeeded),
            ("qa-test", StepState::Succeeded),
            ("execute", StepState::Succeeded)
        ],
        "no approval outside production"
    );
    assert_eq!(
        *peers.executed.lock().unwrap(),
        vec![format!("{plan_id}:execute")]
    );
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        // Authorization decisions are the audit's, not the plan's.
        if m.subject.contains(".events.audit.") {
            continue;
        }
        seen.push(
            m.subject
                .to_string()
                .trim_start_matches("toronto.devops.v1.events.")
                .to_owned(),
        );
    }
    for expected in [
        "plan.created",
        "step.started",
        "gate.passed",
        "step.finished",
        "plan.completed",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "no {expected} event in {seen:?}"
        );
    }
    // The requesting peer heard of its plan on its own notify subject.
    let mut told = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), notified.next()).await
    {
        let e: Envelope<Plan> = toronto_protocol::decode(&m.payload, Encoding::Json).unwrap();
        assert_eq!(e.data.id, plan_id);
        told += 1;
    }
    assert_eq!(
        told,
        seen.len(),
        "every event of the plan reached the requester"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_failing_or_silent_gate_fails_the_plan_with_the_reason() {
    let p = planner().await;
    let failing = peers(&p.client, Peer::Fail, Peer::Silent).await;
    let task = Envelope::builder("toronto://test", deploy("cart", "staging")).build();
    let plan = p
        .wait_for_state(p.submit(&task).await.unwrap().plan_id, PlanState::Failed)
        .await;
    let reason = plan.reason.clone().unwrap();
    assert!(
        reason.contains("security-scan") && reason.contains("CVE-2026-1234"),
        "{reason}"
    );
    assert_eq!(
        step(&plan, "security-scan").findings.as_ref().unwrap()[0]["severity"],
        "critical",
        "findings kept"
    );
    assert!(
        failing.executed.lock().unwrap().is_empty(),
        "nothing reached the deployer"
    );
    failing.stop().await;

    let _passing_security = peers(&p.client, Peer::Pass, Peer::Silent).await;
    let task = Envelope::builder("toronto://test", deploy("shop", "staging")).build();
    let plan = p
        .wait_for_state(p.submit(&task).await.unwrap().plan_id, PlanState::Failed)
        .await;
    let reason = plan.reason.unwrap();
    assert!(
        reason.contains("qa-test") && reason.contains("did not answer within 0.8 s"),
        "{reason}"
    );
    p.stop().await;
}

#[tokio::test]
async fn production_needs_an_approver_who_is_not_the_requester() {
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("cart", "production"),
    )
    .build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    let waiting = p.wait_for_state(plan_id, PlanState::Waiting).await;
    assert_eq!(step(&waiting, "approval").state, StepState::Waiting);
    assert!(peers.executed.lock().unwrap().is_empty());

    let own = decide(&p, "approve", plan_id, "alice", "approver")
        .await
        .unwrap_err();
    assert!(
        matches!(&own, CallError::Remote(e) if e.code == ErrorCode::Forbidden),
        "{own}"
    );
    let viewer = decide(&p, "approve", plan_id, "dave", "viewer")
        .await
        .unwrap_err();
    assert!(
        matches!(&viewer, CallError::Remote(e) if e.code == ErrorCode::Forbidden),
        "{viewer}"
    );
    let approved = decide(&p, "approve", plan_id, "carol", "approver")
        .await
        .unwrap();
    assert_eq!(approved.decisions[0].by, "carol");
    let done = p.wait_for_state(plan_id, PlanState::Completed).await;
    assert!(
        step(&done, "approval")
            .reason
            .as_deref()
            .unwrap()
            .contains("approved by carol")
    );
    assert_eq!(peers.executed.lock().unwrap().len(), 1);
    let late = decide(&p, "approve", plan_id, "carol", "approver")
        .await
        .unwrap_err();
    assert!(
        matches!(&late, CallError::Remote(e) if e.code == ErrorCode::Conflict),
        "{late}"
    );

    // A rejection fails the plan.
    let task = Envelope::builder(
        "toronto://agents/developer/alice",
        deploy("cart", "production"),
    )
    .build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    p.wait_for_state(plan_id, PlanState::Waiting).await;
    decide(&p, "reject", plan_id, "carol", "admin")
        .await
        .unwrap();
    let failed = p.wait_for_state(plan_id, PlanState::Failed).await;
    assert!(failed.reason.unwrap().contains("rejected by carol"));
    assert_eq!(
        peers.executed.lock().unwrap().len(),
        1,
        "the rejected plan never reached the deployer"
    );
    p.stop().await;
}

#[tokio::test]
async fn one_active_plan_per_service_and_environment_the_rest_queue() {
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let first = p
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
    p.wait_for_state(first, PlanState::Waiting).await;
    let second = p
        .submit(
            &Envelope::builder(
                "toronto://agents/developer/bob",
                deploy("cart", "production"),
            )
            .build(),
        )
        .await
        .unwrap()
        .plan_id;
    // Another service, or another environment, is not held up.
    let elsewhere = p
        .submit(&Envelope::builder("toronto://test", deploy("cart", "staging")).build())
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(elsewhere, PlanState::Completed).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queue = p
        .list(PlanList {
            service: Some("cart".into()),
            environment: Some("production".into()),
            state: Some(PlanState::Queued),
            ..Default::default()
        })
        .await;
    assert_eq!(
        queue.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![second],
        "the queue is visible"
    );

    decide(&p, "approve", first, "carol", "approver")
        .await
        .unwrap();
    p.wait_for_state(first, PlanState::Completed).await;
    // The turn passes to the queued plan, which runs up to its own approval.
    p.wait_for_state(second, PlanState::Waiting).await;
    assert_eq!(peers.executed.lock().unwrap().len(), 2);
    p.stop().await;
}

#[tokio::test]
async fn a_second_planner_resumes_a_plan_after_the_first_is_killed() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    // The first scan hangs (the planner doing it will be killed); later scans pass.
    let peers = peers_with(
        &client,
        |n| if n == 1 { Peer::Silent } else { Peer::Pass },
        Peer::Pass,
    )
    .await;
    let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_toronto-planner"))
        .env("TORONTO_NATS_URL", server.url())
        .env("TORONTO_HTTP_ADDR", "")
        .env("TORONTO_PLANNER_GATE_TIMEOUT_MS", "2500")
        .env("TORONTO_PLANNER_LEASE_SECONDS", "3")
        .env(
            "TORONTO_AUTH_ADMINS",
            toronto_testkit::test_identity().public_key(),
        )
        .env(
            "TORONTO_IDENTITY_FILE",
            toronto_testkit::test_identity_file(),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let task = Envelope::builder("toronto://test", deploy("cart", "staging")).build();
    let mut accepted = None;
    for _ in 0..100 {
        if let Ok(r) = toronto_runtime::rpc::call_signed::<_, SubmitAccepted>(
            &client,
            Some(&toronto_testkit::test_identity()),
            SUBMIT,
            &task,
            Encoding::Json,
            Duration::from_secs(1),
        )
        .await
        {
            accepted = Some(r.data);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plan_id = accepted.expect("the first planner took the task").plan_id;
    for _ in 0..100 {
        if *peers.scans.lock().unwrap() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *peers.scans.lock().unwrap(),
        1,
        "the first planner is mid-gate"
    );
    first.kill().await.unwrap();
    first.wait().await.unwrap();

    // A second planner (with the lease length of the first) carries on from the stored state.
    let (shutdown, running) = start_planner(&server.url()).await;
    let p = Planner {
        server,
        client,
        shutdown,
        running,
    };
    let plan = p.wait_for_state(plan_id, PlanState::Completed).await;
    assert_eq!(
        step(&plan, "security-scan").attempts,
        2,
        "the interrupted gate ran again"
    );
    assert_eq!(step(&plan, "execute").attempts, 1);
    assert_eq!(
        *peers.executed.lock().unwrap(),
        vec![format!("{plan_id}:execute")],
        "the deployer saw the step once"
    );
    p.stop().await;
}

#[tokio::test]
async fn an_ephemeral_environment_is_torn_down_after_its_ttl() {
    use toronto_protocol::tasks::{ProvisionEnvironmentTask, ServiceVersion};
    let p = planner().await;
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let env = |ttl_seconds| ProvisionEnvironmentTask {
        name: "qa-pr-1234".into(),
        services: vec![ServiceVersion {
            service: "cart".into(),
            version: "2.4.1".into(),
        }],
        ttl_seconds,
    };
    let err = p
        .submit(&Envelope::builder("toronto://agents/qa/bob", env(0)).build())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ttl_seconds 0"), "{err}");

    let plan_id = p
        .submit(&Envelope::builder("toronto://agents/qa/bob", env(2)).build())
        .await
        .unwrap()
        .plan_id;
    // Provisioned at once; the teardown waits for the TTL.
    let mut provisioned = None;
    for _ in 0..50 {
        let plan = p.plan(plan_id).await.unwrap();
        if step(&plan, "execute").state == StepState::Succeeded {
            provisioned = Some(plan);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let provisioned = provisioned.expect("the environment was provisioned");
    let due = step(&provisioned, "teardown")
        .not_before
        .expect("a teardown time");
    assert!(due > chrono::Utc::now(), "the teardown is still ahead");
    assert_eq!(step(&provisioned, "teardown").state, StepState::Pending);
    assert_eq!(
        *peers.executed.lock().unwrap(),
        vec![format!("{plan_id}:execute")]
    );

    let done = p.wait_for_state(plan_id, PlanState::Completed).await;
    let torn_down = step(&done, "teardown").finished_at.unwrap();
    assert!(torn_down >= due, "not torn down before its time");
    assert_eq!(
        *peers.executed.lock().unwrap(),
        vec![format!("{plan_id}:execute"), format!("{plan_id}:teardown")]
    );
    p.stop().await;
}
