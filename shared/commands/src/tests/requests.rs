use super::*;

#[test]
fn deploy_becomes_a_planner_submit_of_a_deploy_task() {
    let cmd = ok("deploy shop-api 2.4.1 to staging --strategy canary --steps 10,50");
    let req = cmd.request(&actor(Role::Operator)).unwrap();
    assert_eq!(req.service, ServiceKind::Planner);
    assert_eq!(
        req.subject(&Subjects::default()),
        "toronto.devops.v1.planner.submit"
    );
    let env = req.envelope("toronto://chat/slack/U1");
    assert_eq!(env.ty, "ai.toronto.devops.task.deploy.v1");
    assert_eq!(env.subject.as_deref(), Some("shop-api"));
    assert_eq!(env.source, "toronto://chat/slack/U1");
    let task: toronto_protocol::tasks::DeployTask = serde_json::from_value(env.data).unwrap();
    assert_eq!(task.environment, "staging");
    assert_eq!(
        task.strategy,
        toronto_protocol::tasks::Strategy::Canary {
            steps: [10, 50, 100]
                .into_iter()
                .map(|weight| toronto_protocol::tasks::CanaryStep {
                    weight,
                    pause_seconds: None
                })
                .collect()
        }
    );
}

#[test]
fn deploy_carries_the_image_a_pipeline_pushed() {
    let cmd = ok("deploy shop 0123abcd to staging --image ghcr.io/acme/shop:0123abcd");
    let env = cmd
        .request(&actor(Role::Operator))
        .unwrap()
        .envelope("toronto://cli/alice");
    let task: toronto_protocol::tasks::DeployTask = serde_json::from_value(env.data).unwrap();
    assert_eq!(task.image.as_deref(), Some("ghcr.io/acme/shop:0123abcd"));
}

#[test]
fn deploy_carries_its_commit_for_lead_time() {
    let cmd = ok(
        "deploy shop 1.2.0 to production --commit 9F3A1C0 --committed-at 2026-11-26T08:30:00+01:00",
    );
    let req = cmd.request(&actor(Role::Operator)).unwrap();
    let env = req.envelope("toronto://cli/alice");
    let task: toronto_protocol::tasks::DeployTask = serde_json::from_value(env.data).unwrap();
    let change = task.change.expect("the change is carried");
    assert_eq!(change.commit.as_deref(), Some("9f3a1c0"));
    assert_eq!(
        change.commit_time.map(|t| t.to_rfc3339()),
        Some("2026-11-26T07:30:00+00:00".to_owned())
    );
    // Without the options the task names no change.
    let plain = ok("deploy shop 1.2.0 to production")
        .request(&actor(Role::Operator))
        .unwrap()
        .envelope("toronto://cli/alice");
    assert!(plain.data.get("change").is_none());
}

#[test]
fn every_command_but_help_becomes_a_request_with_a_valid_type() {
    let expected = [
        ("deploy a 1 to b", "planner.submit", "task.deploy"),
        ("rollback a in b", "planner.submit", "task.rollback"),
        (
            "promote a in b",
            "deployer.rollout.promote",
            "rollout.command",
        ),
        ("abort a in b", "deployer.rollout.abort", "rollout.command"),
        ("status", "deployer.rollout.list", "rollout.list"),
        ("plans", "planner.plan.list", "planner.plan.list"),
        (
            "approve 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1",
            "planner.plan.approve",
            "planner.plan.decision",
        ),
        (
            "reject 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1",
            "planner.plan.reject",
            "planner.plan.decision",
        ),
        ("incidents", "incident.list", "incident.list"),
        (
            "ack 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2",
            "incident.ack",
            "incident.action",
        ),
        (
            "resolve 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2",
            "incident.resolve",
            "incident.action",
        ),
        (
            "note 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2 hi",
            "incident.note",
            "incident.note",
        ),
        (
            "silence a=b for 1h",
            "incident.silence.create",
            "incident.silence.create",
        ),
        ("slo a", "monitor.slo.list", "monitor.slo.list"),
        ("dora", "planner.dora.get", "planner.dora.get"),
    ];
    let subjects = Subjects::default();
    for (text, subject, ty) in expected {
        let req = ok(text).request(&actor(Role::Admin)).expect(text);
        assert_eq!(
            req.subject(&subjects),
            format!("toronto.devops.v1.{subject}"),
            "{text}"
        );
        let env = req.envelope("toronto://cli/me");
        assert_eq!(env.ty, format!("ai.toronto.devops.{ty}.v1"), "{text}");
        assert!(env.ty.parse::<toronto_protocol::MessageType>().is_ok());
    }
    assert!(ok("help").request(&actor(Role::Viewer)).is_none());
}

#[test]
fn approvals_carry_who_and_in_which_role() {
    let req = ok(&format!("reject {PLAN} too risky"))
        .request(&actor(Role::Operator))
        .unwrap();
    assert_eq!(req.data["by"], "U1");
    assert_eq!(req.data["role"], "operator");
    assert_eq!(req.data["comment"], "too risky");
}

#[test]
fn help_explains_a_command() {
    let text = render(&ok("help deploy"), &serde_json::Value::Null);
    assert!(text.contains("usage: deploy SERVICE VERSION to ENV"));
    assert!(text.contains("needs role: operator"));
    let all = render(&ok("help"), &serde_json::Value::Null);
    assert_eq!(all.lines().count(), SPECS.len() + 1);
}
