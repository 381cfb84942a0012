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

mod malformed;
mod replies;
mod requests;
