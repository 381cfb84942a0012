use super::*;
use crate::request::Actor;
use toronto_protocol::{ServiceKind, Subjects};

fn ok(text: &str) -> Command {
    parse(text).unwrap_or_else(|e| panic!("`{text}` should parse: {e}"))
}

fn actor(role: Role) -> Actor {
    Actor {
        id: "U1".into(),
        role,
        source: "toronto://chat/slack/U1".into(),
    }
}

const PLAN: &str = "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1";
const INC: &str = "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2";

#[test]
fn every_command_parses() {
    assert_eq!(
        ok("deploy shop-api 2.4.1 to staging --strategy canary --steps 10,25,50"),
        Command::Deploy {
            service: "shop-api".into(),
            version: "2.4.1".into(),
            environment: "staging".into(),
            strategy: Some(StrategyArg::Canary),
            steps: vec![10, 25, 50, 100],
            commit: None,
            committed_at: None,
            image: None,
        }
    );
    assert_eq!(
        ok("deploy shop 1.2.0 to production"),
        Command::Deploy {
            service: "shop".into(),
            version: "1.2.0".into(),
            environment: "production".into(),
            strategy: None,
            steps: vec![],
            commit: None,
            committed_at: None,
            image: None,
        }
    );
    assert!(matches!(
        ok("DEPLOY shop 1.2.0 TO qa --strategy=blue-green"),
        Command::Deploy {
            strategy: Some(StrategyArg::BlueGreen),
            ..
        }
    ));
    // Steps alone mean canary.
    assert!(matches!(
        ok("deploy shop 1.2.0 to qa --steps 20,100"),
        Command::Deploy { strategy: Some(StrategyArg::Canary), ref steps, .. } if steps == &vec![20, 100]
    ));
    assert_eq!(
        ok("rollback shop in production --to 1.1.0"),
        Command::Rollback {
            service: "shop".into(),
            environment: "production".into(),
            to: Some("1.1.0".into()),
            emergency: false,
        }
    );
    assert_eq!(
        ok("rollback shop in production"),
        Command::Rollback {
            service: "shop".into(),
            environment: "production".into(),
            to: None,
            emergency: false,
        }
    );
    assert_eq!(
        ok("rollback shop in production --to 1.1.0 --emergency"),
        Command::Rollback {
            service: "shop".into(),
            environment: "production".into(),
            to: Some("1.1.0".into()),
            emergency: true,
        }
    );
    assert_eq!(
        ok("promote shop in production --full"),
        Command::Promote {
            service: "shop".into(),
            environment: "production".into(),
            full: true,
        }
    );
    assert_eq!(
        ok("abort shop in staging"),
        Command::Abort {
            service: "shop".into(),
            environment: "staging".into(),
        }
    );
    assert_eq!(
        ok("status"),
        Command::Status {
            service: None,
            environment: None
        }
    );
    assert_eq!(
        ok("status shop"),
        Command::Status {
            service: Some("shop".into()),
            environment: None
        }
    );
    assert_eq!(
        ok("status shop in staging"),
        Command::Status {
            service: Some("shop".into()),
            environment: Some("staging".into())
        }
    );
    assert_eq!(ok("plans"), Command::Plans { service: None });
    assert_eq!(
        ok("plans shop"),
        Command::Plans {
            service: Some("shop".into())
        }
    );
    assert_eq!(
        ok(&format!("approve {PLAN}")),
        Command::Approve {
            plan_id: PLAN.parse().unwrap()
        }
    );
    assert_eq!(
        ok(&format!("reject {PLAN} not during the \"big\" sale")),
        Command::Reject {
            plan_id: PLAN.parse().unwrap(),
            reason: Some("not during the big sale".into()),
        }
    );
    assert_eq!(
        ok(&format!("reject {PLAN}")),
        Command::Reject {
            plan_id: PLAN.parse().unwrap(),
            reason: None,
        }
    );
    assert_eq!(ok("incidents"), Command::Incidents);
    assert_eq!(
        ok(&format!("ack {INC}")),
        Command::Ack {
            incident_id: INC.parse().unwrap()
        }
    );
    assert_eq!(
        ok(&format!("resolve {INC}")),
        Command::Resolve {
            incident_id: INC.parse().unwrap()
        }
    );
    assert_eq!(
        ok(&format!("note {INC} rolled back, errors “falling now”")),
        Command::Note {
            incident_id: INC.parse().unwrap(),
            text: "rolled back, errors falling now".into(),
        }
    );
    assert_eq!(
        ok("silence service=shop,severity!=page env=~stag.* for 1h30m load test"),
        Command::Silence {
            matchers: vec![
                Matcher {
                    name: "service".into(),
                    value: "shop".into(),
                    is_regex: false,
                    is_equal: true
                },
                Matcher {
                    name: "severity".into(),
                    value: "page".into(),
                    is_regex: false,
                    is_equal: false
                },
                Matcher {
                    name: "env".into(),
                    value: "stag.*".into(),
                    is_regex: true,
                    is_equal: true
                },
            ],
            duration_seconds: 5400,
            comment: Some("load test".into()),
        }
    );
    assert_eq!(
        ok("slo shop"),
        Command::Slo {
            service: "shop".into()
        }
    );
    assert_eq!(ok("dora"), Command::Dora { service: None });
    assert_eq!(
        ok("dora shop"),
        Command::Dora {
            service: Some("shop".into())
        }
    );
    assert_eq!(ok("help"), Command::Help { command: None });
    assert_eq!(
        ok("help deploy"),
        Command::Help {
            command: Some("deploy".into())
        }
    );
    // Every spec is covered by the examples, and every example parses.
    for spec in SPECS {
        assert_eq!(ok(spec.example).name(), spec.name, "{}", spec.example);
    }
}

/// Each malformed text, the command it meant, and a piece of the reason.
const MALFORMED: &[(&str, &str, &str)] = &[
    ("deploy", "deploy", "SERVICE is missing"),
    ("deploy shop", "deploy", "VERSION is missing"),
    ("deploy shop 1.2.0", "deploy", "`to ENV` is missing"),
    ("deploy shop 1.2.0 into prod", "deploy", "expected `to`"),
    (
        "deploy Shop! 1.2.0 to prod",
        "deploy",
        "service `Shop!` must be a DNS label",
    ),
    (
        "deploy shop 1.2.0 to prod extra",
        "deploy",
        "unexpected `extra`",
    ),
    (
        "deploy shop 1.2.0 to prod --strategy yolo",
        "deploy",
        "not a strategy",
    ),
    (
        "deploy shop 1.2.0 to prod --strategy",
        "deploy",
        "needs a value",
    ),
    (
        "deploy shop 1.2.0 to prod --steps 50,25",
        "deploy",
        "must increase",
    ),
    (
        "deploy shop 1.2.0 to prod --steps 0,150",
        "deploy",
        "weight from 1 to 100",
    ),
    (
        "deploy shop 1.2.0 to prod --strategy rolling --steps 10",
        "deploy",
        "for the canary",
    ),
    (
        "deploy shop 1.2.0 to prod --force",
        "deploy",
        "not an option",
    ),
    (
        "deploy shop \"1.2.0 to prod",
        "deploy",
        "quote is not closed",
    ),
    ("rollback", "rollback", "SERVICE is missing"),
    ("rollback shop", "rollback", "`in ENV` is missing"),
    ("rollback shop to prod", "rollback", "expected `in`"),
    ("rollback shop in prod --to", "rollback", "needs a value"),
    (
        "promote shop in prod --full=yes",
        "promote",
        "takes no value",
    ),
    ("promote shop", "promote", "`in ENV`"),
    ("abort", "abort", "SERVICE is missing"),
    ("abort shop in prod now", "abort", "unexpected `now`"),
    ("status shop staging", "status", "expected `in`"),
    ("plans a b", "plans", "unexpected `b`"),
    ("approve", "approve", "PLAN_ID is missing"),
    ("approve 42", "approve", "not a plan id"),
    ("reject nope", "reject", "not a plan id"),
    ("incidents all", "incidents", "unexpected `all`"),
    ("ack", "ack", "INCIDENT_ID is missing"),
    ("ack INC-42", "ack", "not an incident id"),
    (
        "resolve 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2 b",
        "resolve",
        "unexpected `b`",
    ),
    (
        "note 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2",
        "note",
        "TEXT is missing",
    ),
    (
        "silence service=shop",
        "silence",
        "`for DURATION` is missing",
    ),
    ("silence for 2h", "silence", "MATCHERS are missing"),
    ("silence shop for 2h", "silence", "not a matcher"),
    ("silence service=shop for", "silence", "DURATION is missing"),
    ("silence service=shop for soon", "silence", "not a duration"),
    (
        "silence service=shop for 10s",
        "silence",
        "shorter than a minute",
    ),
    (
        "silence service=shop for 100d",
        "silence",
        "longer than 90 days",
    ),
    ("slo", "slo", "SERVICE is missing"),
    (
        "deploy a 1 to b --commit 'rm -rf'",
        "deploy",
        "is not a commit id",
    ),
    (
        "deploy a 1 to b --image ''",
        "deploy",
        "is not an image reference",
    ),
    (
        "deploy a 1 to b --committed-at yesterday",
        "deploy",
        "is not an RFC 3339 time",
    ),
    (
        "deploy a 1 to b --committed-at 2999-01-01T00:00:00Z",
        "deploy",
        "is in the future",
    ),
    ("dora a b", "dora", "unexpected `b`"),
    ("help nothing", "help", "not a command"),
];

#[test]
fn every_malformed_command_gets_its_usage() {
    for (text, command, reason) in MALFORMED {
        let err = parse(text).expect_err(text);
        assert_eq!(err.command(), Some(*command), "{text}: {err}");
        let message = err.to_string();
        assert!(message.contains(reason), "{text}: {message}");
        let usage = spec(command).unwrap().usage;
        assert!(
            message.ends_with(&format!("usage: {usage}")),
            "{text}: {message}"
        );
        assert_eq!(err.usage(), usage);
    }
}

#[test]
fn unknown_or_empty_commands_list_every_usage() {
    for text in ["", "   ", "launch shop", "\"unclosed"] {
        let message = parse(text).expect_err(text).to_string();
        for spec in SPECS {
            assert!(message.contains(spec.usage), "{text}: {message}");
        }
    }
    assert!(
        parse("launch shop")
            .unwrap_err()
            .to_string()
            .starts_with("unknown command `launch`")
    );
}

#[test]
fn roles_are_ordered_and_each_command_names_one() {
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    assert_eq!(ok("deploy a 1 to b").role(), Role::Operator);
    assert_eq!(ok(&format!("approve {PLAN}")).role(), Role::Operator);
    assert_eq!(ok("status").role(), Role::Viewer);
    assert_eq!(ok("silence a=b for 1h").role(), Role::Operator);
    assert_eq!("Operator".parse::<Role>(), Ok(Role::Operator));
    assert!("root".parse::<Role>().is_err());
}

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

#[test]
fn replies_render_as_text() {
    let accepted = serde_json::json!({"plan_id": PLAN, "duplicate": false});
    let text = render(&ok("deploy shop 1.2.0 to production"), &accepted);
    assert!(text.starts_with(&format!(
        "plan {PLAN} accepted for deploy shop 1.2.0 to production"
    )));
    assert!(text.contains("approval by another operator"));
    let incidents = serde_json::json!({"incidents": [
        {"id": INC, "severity": "sev1", "state": "triggered", "service": "shop", "title": "errors"}
    ]});
    let text = render(&ok("incidents"), &incidents);
    assert!(
        text.contains(INC) && text.contains("SEV1") && text.contains("triggered"),
        "{text}"
    );
    let silence = ok("silence service=shop,env!~prod.* for 2h deploy test")
        .request(&actor(Role::Operator))
        .unwrap();
    assert_eq!(silence.data["matchers"][1]["name"], "env");
    assert_eq!(silence.data["matchers"][1]["isRegex"], true);
    assert_eq!(silence.data["matchers"][1]["isEqual"], false);
    assert_eq!(silence.data["comment"], "deploy test");
    assert_eq!(silence.data["created_by"], "U1");
    let ends: chrono::DateTime<chrono::Utc> =
        silence.data["ends_at"].as_str().unwrap().parse().unwrap();
    assert!(ends > chrono::Utc::now() + chrono::Duration::minutes(119));
    let err = toronto_protocol::ErrorBody::new(toronto_protocol::ErrorCode::BadRequest, "no")
        .with_details(serde_json::json!({"reasons": ["version is missing"]}));
    assert_eq!(
        render_error(&ok("deploy a 1 to b"), &err),
        "deploy failed (bad_request): no\n- version is missing"
    );
    assert_eq!(parse_duration("1d6h").unwrap(), 108_000);
    assert_eq!(render::human_duration(108_000), "1d6h");
}

#[test]
fn tables_line_up_by_display_width() {
    let t = crate::render::table(
        &["service", "state"],
        &[
            vec!["商店".into(), "ok".into()],
            vec!["shop🚀".into(), "ok".into()],
            vec!["shop".into(), "ok".into()],
        ],
    );
    // Every `ok` starts in the same terminal column.
    let columns: Vec<usize> = t
        .lines()
        .skip(1)
        .map(|l| {
            use unicode_width::UnicodeWidthStr;
            l[..l.find("ok").unwrap()].width()
        })
        .collect();
    assert_eq!(columns, vec![9, 9, 9], "{t}");
}

#[test]
fn dora_reads_in_units_that_fit_and_names_each_cause() {
    let report = serde_json::json!({
        "service": "shop", "environment": "production",
        "window_start": "2026-10-28T00:00:00Z", "window_end": "2026-11-27T00:00:00Z",
        "deployments": 4, "deployment_frequency_per_day": 0.13,
        "lead_time_median_seconds": 14400.0, "failed_changes": 3,
        "failures_by_cause": {"aborted": 1, "rolled_back": 1, "incident": 1},
        "change_failure_rate": 0.75, "time_to_restore_median_seconds": 0.16,
    });
    let text = crate::render(&ok("dora shop"), &report);
    assert!(text.contains("lead time 4.0h (median)"), "{text}");
    assert!(text.contains("time to restore 0.2s (median)"), "{text}");
    assert!(
        text.contains("(3 failed: 1 aborted, 1 rolled back, 1 with an incident)"),
        "{text}"
    );
}
