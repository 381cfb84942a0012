use super::*;
use crate::engine::lifecycle;
use crate::engine::testing::{World, clear, fire, labels};
use crate::settings::Settings;

fn alert(service: &str, env: &str) -> Vec<(&'static str, String)> {
    vec![
        ("service", service.to_owned()),
        ("environment", env.to_owned()),
    ]
}

fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn group_keys_follow_group_by_in_order() {
    let by = vec!["service".to_owned(), "environment".to_owned()];
    let l = labels(&[("environment", "prod"), ("service", "api"), ("pod", "x")]);
    assert_eq!(group_key(&by, &l), "service=api,environment=prod");
    assert_eq!(
        group_key(&by, &labels(&[("service", "api")])),
        "service=api,environment="
    );
}

#[test]
fn alerts_of_one_group_share_an_incident_and_other_groups_get_their_own() {
    let mut w = World::new();
    let now = w.now;
    let api = alert("api", "production");
    let db = alert("db", "production");
    let api_staging = alert("api", "staging");
    w.ingest(vec![
        fire("a1", &pairs(&api), now),
        fire("a2", &pairs(&api), now),
        fire("d1", &pairs(&db), now),
        fire("s1", &pairs(&api_staging), now),
    ]);
    assert_eq!(w.st.incidents.len(), 3);
    let id = w.st.alert("a1").unwrap().incident.unwrap();
    assert_eq!(w.st.alert("a2").unwrap().incident, Some(id));
    let inc = w.st.incident(id).unwrap();
    assert_eq!(inc.fingerprints, vec!["a1", "a2"]);
    assert_eq!((inc.alerts_firing, inc.alerts_total), (2, 2));
    assert_eq!(inc.key, "service=api,environment=production");
    assert_eq!(
        w.st.incident(w.st.alert("s1").unwrap().incident.unwrap())
            .unwrap()
            .environment,
        "staging"
    );
}

#[test]
fn grouping_by_alertname_joins_services_into_one_incident() {
    let mut w = World::with(Settings {
        group_by: vec!["alertname".into()],
        ..Settings::default()
    });
    let now = w.now;
    w.ingest(vec![
        fire("a", &[("alertname", "Latency"), ("service", "api")], now),
        fire("b", &[("alertname", "Latency"), ("job", "db")], now),
    ]);
    let inc = w.open_incident();
    assert_eq!(inc.services, vec!["api", "db"]);
    assert_eq!(inc.service, "api");
    assert_eq!(inc.environment, "production", "the default environment");
}

#[test]
fn a_new_incident_takes_its_title_from_the_summary_or_the_alert() {
    let mut w = World::new();
    let now = w.now;
    let mut a = fire("a", &[("alertname", "Down"), ("service", "api")], now);
    a.annotations.insert("summary".into(), "API is down".into());
    w.ingest(vec![a, fire("b", &[("service", "db")], now)]);
    let mut titles: Vec<String> = w.st.incidents.values().map(|i| i.title.clone()).collect();
    titles.sort();
    assert_eq!(titles, vec!["API is down", "alert on db (production)"]);
}

#[test]
fn an_alert_within_the_reopen_window_reopens_and_after_it_opens_anew() {
    let mut w = World::new();
    let now = w.now;
    let api = alert("api", "production");
    w.ingest(vec![fire("a1", &pairs(&api), now)]);
    let first = w.open_incident().id;
    w.ingest(vec![clear("a1", &pairs(&api), now)]);
    w.run(|st, t| lifecycle::resolve(st, t, first, "me", "fixed"))
        .unwrap();
    // Flapping: fires again within the window.
    w.advance(w.settings.reopen_window.as_secs() as i64 - 1);
    let now = w.now;
    w.effects.clear();
    w.ingest(vec![fire("a1", &pairs(&api), now)]);
    let inc = w.open_incident();
    assert_eq!(inc.id, first, "the same incident");
    assert_eq!(inc.state, IncidentState::Triggered);
    assert_eq!(
        (inc.alerts_firing, inc.alerts_total),
        (1, 1),
        "a known alert is not counted twice"
    );
    assert!(inc.resolved_at.is_none());
    assert!(
        inc.timeline
            .iter()
            .any(|e| e.kind == TimelineKind::Reopened)
    );
    let events = w.take_incident_events();
    assert!(
        events
            .iter()
            .any(|(what, e)| what == "updated" && e.change.starts_with("reopened"))
    );
    // Resolved again, and the alert comes back after the window: a new incident.
    w.ingest(vec![clear("a1", &pairs(&api), now)]);
    w.run(|st, t| lifecycle::resolve(st, t, first, "me", "fixed"))
        .unwrap();
    w.advance(w.settings.reopen_window.as_secs() as i64);
    let now = w.now;
    w.ingest(vec![fire("a1", &pairs(&api), now)]);
    assert_ne!(w.open_incident().id, first);
    assert_eq!(w.st.incidents.len(), 2);
}

#[test]
fn a_closed_incident_is_not_reopened() {
    let mut w = World::new();
    let now = w.now;
    let api = alert("api", "production");
    w.ingest(vec![fire("a1", &pairs(&api), now)]);
    let first = w.open_incident().id;
    w.ingest(vec![clear("a1", &pairs(&api), now)]);
    w.run(|st, t| lifecycle::resolve(st, t, first, "me", "fixed"))
        .unwrap();
    w.run(|st, t| lifecycle::close(st, t, first, "me", &[]))
        .unwrap();
    w.advance(1);
    let now = w.now;
    w.ingest(vec![fire("a1", &pairs(&api), now)]);
    assert_ne!(w.open_incident().id, first);
}

#[test]
fn manual_incidents_validate_and_stand_apart_from_an_open_group() {
    let mut w = World::new();
    let mut req = IncidentOpen {
        title: "checkout slow".into(),
        service: "shop".into(),
        environment: "production".into(),
        severity: Some(Severity::Sev1),
        labels: Default::default(),
        by: "alice".into(),
    };
    let one = w.run(|st, t| open_manual(st, t, &req)).unwrap();
    assert_eq!(one.severity, Severity::Sev1);
    assert!(one.severity_manual);
    assert_eq!(one.origin, "manual");
    assert_eq!(one.key, "service=shop,environment=production");
    let two = w.run(|st, t| open_manual(st, t, &req)).unwrap();
    assert!(
        two.key
            .starts_with("service=shop,environment=production,manual=")
    );
    req.by = "  ".into();
    let e = w.run(|st, t| open_manual(st, t, &req)).unwrap_err();
    assert_eq!(e.to_string(), "by: empty");
    // An alert of the group joins the first (the group's) incident.
    let now = w.now;
    w.ingest(vec![fire(
        "x",
        &[("service", "shop"), ("environment", "production")],
        now,
    )]);
    assert_eq!(w.st.alert("x").unwrap().incident, Some(one.id));
}

#[test]
fn opening_publishes_opened_and_persists() {
    let mut w = World::new();
    let now = w.now;
    w.ingest(vec![fire("a1", &[("service", "api")], now)]);
    let id = w.open_incident().id;
    assert!(w.persisted(&crate::engine::turn::Record::Incident(id)));
    assert!(w.persisted(&crate::engine::turn::Record::Alert("a1".into())));
    let events = w.take_incident_events();
    assert_eq!(events[0].0, "opened");
    assert!(events[0].1.change.starts_with("opened SEV3"));
}
