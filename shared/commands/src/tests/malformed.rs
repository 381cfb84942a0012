use super::*;

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
