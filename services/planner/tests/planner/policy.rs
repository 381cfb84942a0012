//! The policy gate: promotion order and freeze windows.

use tokio_util::sync::CancellationToken;
use toronto_protocol::Envelope;
use toronto_protocol::tasks::PlanState;
use toronto_runtime::Config;
use toronto_testkit::NatsServer;

use toronto_protocol::tasks::StepState;

use crate::support::*;

#[tokio::test]
async fn the_policy_gate_keeps_promotion_order_and_freeze_windows() {
    use toronto_protocol::tasks::{PolicyOverride, RollbackTask};
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let now = chrono::Utc::now();
    let policy = toronto_planner::Settings {
        promotion: vec![("production".into(), "staging".into())],
        freeze_windows: vec![toronto_planner::settings::FreezeWindow {
            environment: "qa".into(),
            start: now - chrono::Duration::hours(1),
            end: now + chrono::Duration::hours(1),
        }],
        ..settings()
    };
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start_with(config, policy, shutdown.clone())
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
    let peers = peers(&p.client, Peer::Pass, Peer::Pass).await;

    // Production before staging: refused with the reason.
    let early = p
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
    let failed = p.wait_for_state(early, PlanState::Failed).await;
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap()
            .contains("cart 2.4.1 has not succeeded in staging before production"),
        "{:?}",
        failed.reason
    );

    // An override by a verified non-admin is refused at the door, whatever role it
    // writes; a verified admin's passes and is recorded under the admin's id.
    use toronto_protocol::auth::Role;
    let dave = toronto_testkit::person(&p.client, "dave", &[Role::Operator], &[]).await;
    let erin = toronto_testkit::person(&p.client, "erin", &[Role::Admin], &[]).await;
    let mut task = deploy("cart", "production");
    task.policy_override = Some(PolicyOverride {
        by: "root".into(),
        role: "admin".into(),
        reason: "hotfix".into(),
    });
    let refused = p
        .submit_as(
            &Envelope::builder("toronto://test", task.clone()).build(),
            &dave,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, toronto_runtime::rpc::CallError::Remote(e)
            if e.code == toronto_protocol::ErrorCode::Forbidden
            && e.message.contains("needs a verified admin")),
        "{refused}"
    );
    task.policy_override = Some(PolicyOverride {
        by: "someone".into(),
        role: "developer".into(),
        reason: "hotfix for INC-42".into(),
    });
    let overridden = p
        .submit_as(&Envelope::builder("toronto://test", task).build(), &erin)
        .await
        .unwrap()
        .plan_id;
    let waiting = p.wait_for_state(overridden, PlanState::Waiting).await;
    assert!(
        step(&waiting, "policy")
            .reason
            .as_deref()
            .unwrap()
            .contains("overridden by erin (admin): hotfix for INC-42")
    );
    p.client.flush().await.unwrap();
    p.cancel(overridden, "erin", "done testing").await.unwrap();

    // After the same version succeeded in staging, production passes the policy gate.
    let staging = p
        .submit(&Envelope::builder("toronto://test", deploy("cart", "staging")).build())
        .await
        .unwrap()
        .plan_id;
    p.wait_for_state(staging, PlanState::Completed).await;
    let promoted = p
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
    let waiting = p.wait_for_state(promoted, PlanState::Waiting).await;
    assert_eq!(step(&waiting, "policy").state, StepState::Succeeded);

    // A frozen environment refuses deploys but lets a rollback through.
    let frozen = p
        .submit(&Envelope::builder("toronto://test", deploy("search", "qa")).build())
        .await
        .unwrap()
        .plan_id;
    let frozen = p.wait_for_state(frozen, PlanState::Failed).await;
    assert!(frozen.reason.unwrap().contains("qa is frozen until"));
    let rollback = p
        .submit(
            &Envelope::builder(
                "toronto://test",
                RollbackTask {
                    service: "search".into(),
                    environment: "qa".into(),
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
    assert!(
        peers
            .executed
            .lock()
            .unwrap()
            .contains(&format!("{rollback}:execute"))
    );
    p.stop().await;
}

/// The two-person rule compares principals: the requester approving with a second key
/// of their own, under another name in the payload, is still the requester.
#[tokio::test]
async fn one_principal_under_two_keys_and_two_names_cannot_approve_its_own_plan() {
    use toronto_protocol::auth::Role;
    use toronto_protocol::tasks::PlanDecision;
    let p = planner().await;
    let _peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let (laptop, mut mallory) =
        toronto_testkit::principal("mallory", &[Role::Operator, Role::Approver]);
    let phone = toronto_runtime::auth::Signer::generate();
    mallory.keys.push(phone.public_key());
    toronto_testkit::put_principal(&p.client, &mallory).await;

    let task = Envelope::builder(
        "toronto://agents/developer/dev-1",
        deploy("cart", "production"),
    )
    .build();
    let plan_id = p.submit_as(&task, &laptop).await.unwrap().plan_id;
    let waiting = p.wait_for_state(plan_id, PlanState::Waiting).await;
    assert_eq!(waiting.requested_by_principal.as_deref(), Some("mallory"));

    let decision = Envelope::builder(
        "toronto://humans/someone-else",
        PlanDecision {
            plan_id,
            by: "someone-else".into(),
            role: "approver".into(),
            comment: None,
        },
    )
    .build();
    let refused = toronto_runtime::rpc::call_signed::<_, toronto_protocol::tasks::Plan>(
        &p.client,
        Some(&phone),
        "toronto.devops.v1.planner.plan.approve",
        &decision,
        toronto_protocol::Encoding::Json,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, toronto_runtime::rpc::CallError::Remote(e)
            if e.code == toronto_protocol::ErrorCode::Forbidden
            && e.message.contains("`mallory` asked for this change")
            && e.message.contains("two-person rule")),
        "{refused}"
    );
    assert_eq!(p.plan(plan_id).await.unwrap().state, PlanState::Waiting);
    p.stop().await;
}

/// Once a principal owns a peer agent's source, that agent's gate verdicts count only
/// when it signed them: a verdict signed by anyone else fails the gate.
#[tokio::test]
async fn a_gate_verdict_not_signed_by_the_agent_asked_fails_the_gate() {
    use toronto_protocol::auth::{PrincipalKind, Role};
    let p = planner().await;
    // The peers answer (and sign) as this process: the test admin.
    let _peers = peers(&p.client, Peer::Pass, Peer::Pass).await;
    let (_, mut security) = toronto_testkit::principal("security-agent", &[Role::Operator]);
    security.kind = PrincipalKind::Agent;
    security.sources = vec!["toronto://agents/security".into()];
    toronto_testkit::put_principal(&p.client, &security).await;

    let task = Envelope::builder("toronto://test", deploy("cart", "staging")).build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    let failed = p.wait_for_state(plan_id, PlanState::Failed).await;
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("the security agent's verdict is refused")
            && reason.contains("belongs to `security-agent`"),
        "{reason}"
    );

    // Signed by the agent's own key, the same verdict passes.
    security.keys = vec![toronto_testkit::test_identity().public_key()];
    toronto_testkit::put_principal(&p.client, &security).await;
    let task = Envelope::builder("toronto://test", deploy("cart", "staging")).build();
    let plan_id = p.submit(&task).await.unwrap().plan_id;
    let done = p.wait_for_state(plan_id, PlanState::Completed).await;
    assert_eq!(step(&done, "security-scan").state, StepState::Succeeded);
    p.stop().await;
}
