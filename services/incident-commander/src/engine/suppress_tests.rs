use super::*;
use crate::engine::alerts::ingest;
use crate::engine::testing::{World, clear, fire, labels};
use chrono::Duration;

const API: &[(&str, &str)] = &[
    ("alertname", "Errors"),
    ("service", "api"),
    ("environment", "production"),
];
const DB: &[(&str, &str)] = &[
    ("alertname", "DbDown"),
    ("service", "db"),
    ("environment", "production"),
];

fn eq(name: &str, value: &str) -> Matcher {
    Matcher {
        name: name.into(),
        value: value.into(),
        is_regex: false,
        is_equal: true,
    }
}

fn silence(w: &mut World, matchers: Vec<Matcher>, minutes: i64) -> Silence {
    let req = SilenceCreate {
        matchers,
        starts_at: None,
        ends_at: w.now + Duration::minutes(minutes),
        created_by: "alice".into(),
        comment: "maintenance".into(),
    };
    w.run(|st, t| create_silence(st, t, &req))
        .expect("a silence")
}

#[test]
fn matchers_equal_regex_and_negated() {
    let st = State::default();
    let l = labels(&[("service", "shop-api"), ("env", "prod")]);
    assert!(matches(&st, &[eq("service", "shop-api")], &l));
    assert!(!matches(&st, &[eq("service", "shop")], &l));
    let re = Matcher {
        is_regex: true,
        ..eq("service", "shop-.*")
    };
    assert!(matches(&st, std::slice::from_ref(&re), &l));
    let partial = Matcher {
        is_regex: true,
        ..eq("service", "shop")
    };
    assert!(
        !matches(&st, &[partial], &l),
        "a regex matches the whole value"
    );
    let not = Matcher {
        is_equal: false,
        ..re
    };
    assert!(!matches(&st, &[not], &l));
    assert!(
        matches(&st, &[eq("missing", "")], &l),
        "a missing label is empty"
    );
    assert!(!matches(
        &st,
        &[eq("service", "shop-api"), eq("env", "dev")],
        &l
    ));
}

#[test]
fn invalid_matchers_are_refused_with_their_place() {
    assert!(matches!(
        check_matchers("matchers", &[]),
        Err(EngineError::NoMatchers { .. })
    ));
    let unnamed = eq(" ", "x");
    let e = check_matchers("matchers", &[eq("a", "b"), unnamed]).unwrap_err();
    assert_eq!(e.to_string(), "matchers[1].name: empty");
    let bad = Matcher {
        is_regex: true,
        ..eq("a", "(")
    };
    let e = check_matchers("target_matchers", &[bad]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("target_matchers[0].value: not a regular expression")
    );
    assert!(
        std::error::Error::source(&e).is_some(),
        "the regex error is kept"
    );
}

#[test]
fn a_silence_holds_matching_alerts_until_it_expires() {
    let mut w = World::new();
    let s = silence(&mut w, vec![eq("service", "api")], 10);
    let now = w.now;
    let out = w.ingest(vec![fire("a1", API, now), fire("d1", DB, now)]);
    assert_eq!((out.fresh, out.held), (1, 1));
    assert_eq!(w.counters.silenced.get(), 1);
    assert_eq!(
        w.st.alert("a1").unwrap().suppressed,
        Some(format!("silenced by {}", s.id))
    );
    assert_eq!(w.st.incidents.len(), 1, "only db opened an incident");
    // Still in force a minute before its end.
    w.advance(9 * 60);
    w.run(release_expired);
    assert_eq!(w.st.incidents.len(), 1);
    // Over: the alert that still fires is routed.
    w.advance(60);
    w.run(release_expired);
    assert_eq!(w.st.incidents.len(), 2);
    assert_eq!(w.st.alert("a1").unwrap().suppressed, None);
    assert!(w.st.suppressed.is_empty());
}

#[test]
fn expiring_a_silence_releases_its_alerts_and_cannot_be_done_twice() {
    let mut w = World::new();
    let s = silence(&mut w, vec![eq("service", "api")], 60);
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    assert!(w.st.incidents.is_empty());
    let expired = w.run(|st, t| expire_silence(st, t, s.id, "bob")).unwrap();
    assert_eq!(expired.ends_at, w.now);
    assert_eq!(expired.expired_by.as_deref(), Some("bob"));
    assert_eq!(w.st.incidents.len(), 1);
    let again = w.run(|st, t| expire_silence(st, t, s.id, "bob"));
    assert!(matches!(again, Err(EngineError::SilenceEnded(_))));
    assert!(list_silences(&w.st, w.now, true).is_empty());
    assert_eq!(list_silences(&w.st, w.now, false).len(), 1);
    let missing = w.run(|st, t| expire_silence(st, t, uuid::Uuid::nil(), "bob"));
    assert!(matches!(missing, Err(EngineError::NoSilence(_))));
}

#[test]
fn a_silence_must_end_after_it_starts_and_name_its_author() {
    let mut w = World::new();
    let mut req = SilenceCreate {
        matchers: vec![eq("a", "b")],
        starts_at: Some(w.now),
        ends_at: w.now,
        created_by: "alice".into(),
        comment: String::new(),
    };
    let e = w.run(|st, t| create_silence(st, t, &req)).unwrap_err();
    assert!(matches!(e, EngineError::SilenceEndsBeforeStart));
    req.ends_at = w.now + Duration::minutes(1);
    req.created_by = " ".into();
    let e = w.run(|st, t| create_silence(st, t, &req)).unwrap_err();
    assert_eq!(e.to_string(), "created_by: empty");
    assert!(w.st.silences.is_empty());
}

#[test]
fn a_future_silence_does_not_hold_yet() {
    let mut w = World::new();
    let req = SilenceCreate {
        matchers: vec![eq("service", "api")],
        starts_at: Some(w.now + Duration::minutes(5)),
        ends_at: w.now + Duration::minutes(10),
        created_by: "alice".into(),
        comment: String::new(),
    };
    w.run(|st, t| create_silence(st, t, &req)).unwrap();
    let now = w.now;
    assert_eq!(w.ingest(vec![fire("a1", API, now)]).held, 0);
}

fn db_inhibits_api(w: &mut World) -> InhibitionRule {
    let req = InhibitionCreate {
        source_matchers: vec![eq("alertname", "DbDown")],
        target_matchers: vec![eq("alertname", "Errors")],
        equal: vec!["environment".into()],
        created_by: "alice".into(),
        comment: String::new(),
    };
    w.run(|st, t| create_inhibition(st, t, &req)).unwrap()
}

#[test]
fn a_firing_source_inhibits_targets_with_equal_labels_until_it_resolves() {
    let mut w = World::new();
    let rule = db_inhibits_api(&mut w);
    let now = w.now;
    w.ingest(vec![fire("d1", DB, now)]);
    let out = w.ingest(vec![fire("a1", API, now)]);
    assert_eq!(out.held, 1);
    assert_eq!(w.counters.inhibited.get(), 1);
    assert_eq!(
        w.st.alert("a1").unwrap().suppressed,
        Some(format!("inhibited by d1 (rule {})", rule.id))
    );
    // Another environment is not inhibited.
    let staging = [
        ("alertname", "Errors"),
        ("service", "api"),
        ("environment", "staging"),
    ];
    assert_eq!(w.ingest(vec![fire("a2", &staging, now)]).held, 0);
    // The source resolves: the target is released into an incident.
    w.ingest(vec![clear("d1", DB, now)]);
    assert!(w.st.alert("a1").unwrap().suppressed.is_none());
    assert!(w.st.alert("a1").unwrap().incident.is_some());
}

#[test]
fn deleting_an_inhibition_rule_releases_what_it_held() {
    let mut w = World::new();
    let rule = db_inhibits_api(&mut w);
    let now = w.now;
    w.ingest(vec![fire("d1", DB, now), fire("a1", API, now)]);
    assert!(w.st.alert("a1").unwrap().suppressed.is_some());
    assert_eq!(list_inhibitions(&w.st).len(), 1);
    w.run(|st, t| delete_inhibition(st, t, rule.id)).unwrap();
    assert!(w.st.alert("a1").unwrap().incident.is_some());
    assert!(w.persisted(&Record::Inhibition(rule.id)));
    let again = w.run(|st, t| delete_inhibition(st, t, rule.id));
    assert!(matches!(again, Err(EngineError::NoInhibition(_))));
}

#[test]
fn a_silenced_source_does_not_inhibit() {
    let mut w = World::new();
    db_inhibits_api(&mut w);
    silence(&mut w, vec![eq("service", "db")], 60);
    let now = w.now;
    w.run(|st, t| ingest(st, t, vec![fire("d1", DB, now)]));
    assert_eq!(w.ingest(vec![fire("a1", API, now)]).held, 0);
}
