use super::*;
use crate::engine::testing::{World, clear, fire};
use crate::engine::turn::Effect;
use chrono::Duration;
use toronto_protocol::incidents::{PlaybookRun, Severity};

const API: &[(&str, &str)] = &[
    ("alertname", "Errors"),
    ("service", "api"),
    ("environment", "production"),
];

fn open(w: &mut World) -> Uuid {
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    w.open_incident().id
}

#[test]
fn acknowledging_sets_the_time_once_and_the_first_is_commander() {
    let mut w = World::new();
    let id = open(&mut w);
    w.advance(42);
    let inc = w.run(|st, t| ack(st, t, id, "ann", Some("on it"))).unwrap();
    assert_eq!(inc.state, IncidentState::Acknowledged);
    assert_eq!(inc.acknowledged_at, Some(w.now));
    assert_eq!(inc.commander.as_deref(), Some("ann"));
    assert_eq!(
        inc.timeline.last().unwrap().text,
        "acknowledged by ann: on it"
    );
    w.advance(10);
    let inc = w.run(|st, t| ack(st, t, id, "ben", None)).unwrap();
    assert_eq!(inc.acknowledged_at, Some(w.now - Duration::seconds(10)));
    assert_eq!(inc.commander.as_deref(), Some("ann"));
    let events = w.take_incident_events();
    assert_eq!(
        events
            .iter()
            .filter(|(what, _)| what == "acknowledged")
            .count(),
        2
    );
}

#[test]
fn a_mitigated_incident_stays_mitigated_when_acknowledged() {
    let mut w = World::new();
    let id = open(&mut w);
    w.run(|st, t| mitigate(st, t, id, "ann", "rolled back"))
        .unwrap();
    let inc = w.run(|st, t| ack(st, t, id, "ann", None)).unwrap();
    assert_eq!(inc.state, IncidentState::Mitigated);
    assert_eq!(inc.mitigated_at, Some(w.now));
}

#[test]
fn finished_incidents_refuse_open_work() {
    let mut w = World::new();
    let id = open(&mut w);
    w.run(|st, t| resolve(st, t, id, "ann", "fixed")).unwrap();
    let e = w.run(|st, t| ack(st, t, id, "ann", None)).unwrap_err();
    assert_eq!(e.to_string(), format!("incident {id} is resolved"));
    for e in [
        w.run(|st, t| mitigate(st, t, id, "ann", "x")).unwrap_err(),
        w.run(|st, t| resolve(st, t, id, "ann", "x")).unwrap_err(),
        w.run(|st, t| escalate(st, t, id, None, "x")).unwrap_err(),
    ] {
        assert!(matches!(e, EngineError::NotOpen(i) if i == id), "{e}");
    }
    let missing = w
        .run(|st, t| ack(st, t, Uuid::nil(), "ann", None))
        .unwrap_err();
    assert!(matches!(missing, EngineError::NoIncident(_)));
    assert!(matches!(
        get(&w.st, Uuid::nil()),
        Err(EngineError::NoIncident(_))
    ));
}

#[test]
fn resolving_records_times_and_frees_the_group() {
    let mut w = World::new();
    let id = open(&mut w);
    w.advance(300);
    let inc = w.run(|st, t| resolve(st, t, id, "ann", "by ann")).unwrap();
    assert_eq!(inc.state, IncidentState::Resolved);
    assert_eq!(inc.resolved_at, Some(w.now));
    assert_eq!(inc.mitigated_at, Some(w.now), "resolved implies mitigated");
    assert_eq!(inc.escalation.next_at, None);
    assert!(!w.st.open_by_key.contains_key(&inc.key));
    assert_eq!(w.st.resolved_by_key.get(&inc.key), Some(&id));
}

#[test]
fn closing_needs_a_resolved_incident_and_closing_again_adds_action_items_only() {
    let mut w = World::new();
    let id = open(&mut w);
    let e = w.run(|st, t| close(st, t, id, "ann", &[])).unwrap_err();
    assert_eq!(e.to_string(), format!("incident {id} is not resolved yet"));
    w.run(|st, t| resolve(st, t, id, "ann", "fixed")).unwrap();
    let inc = w
        .run(|st, t| close(st, t, id, "ann", &["add a test".into()]))
        .unwrap();
    assert_eq!(inc.state, IncidentState::Closed);
    assert_eq!(inc.closed_at, Some(w.now));
    assert_eq!(inc.action_items, vec!["add a test"]);
    w.take_incident_events();
    let version = inc.version;
    let inc = w
        .run(|st, t| close(st, t, id, "ann", &["alert sooner".into()]))
        .unwrap();
    assert_eq!(inc.action_items.len(), 2);
    assert_eq!(inc.version, version, "no new event");
    assert!(w.persisted(&Record::Incident(id)));
    assert!(w.take_incident_events().is_empty());
}

#[test]
fn roles_notes_and_severity_by_hand() {
    let mut w = World::new();
    let id = open(&mut w);
    let assign_req = |role, who: &str| IncidentAssign {
        id,
        role,
        who: who.into(),
        by: "ann".into(),
    };
    w.run(|st, t| assign(st, t, &assign_req(IncidentRole::Scribe, "ben")))
        .unwrap();
    w.run(|st, t| assign(st, t, &assign_req(IncidentRole::Responder, "cy")))
        .unwrap();
    w.run(|st, t| assign(st, t, &assign_req(IncidentRole::Responder, "cy")))
        .unwrap();
    w.effects.clear();
    let inc = w
        .run(|st, t| assign(st, t, &assign_req(IncidentRole::Commander, "agent:sre")))
        .unwrap();
    assert_eq!(inc.scribe.as_deref(), Some("ben"));
    assert_eq!(inc.responders, vec!["cy"]);
    assert_eq!(inc.commander.as_deref(), Some("agent:sre"));
    assert!(
        w.effects.iter().any(
            |e| matches!(e, Effect::Notify { subject, .. } if subject.contains(".agents.sre."))
        )
    );
    let e = w
        .run(|st, t| assign(st, t, &assign_req(IncidentRole::Scribe, " ")))
        .unwrap_err();
    assert_eq!(e.to_string(), "who: empty");

    let note_req = |text: &str, action_item| IncidentNote {
        id,
        by: "ben".into(),
        text: text.into(),
        action_item,
    };
    w.run(|st, t| note(st, t, &note_req("looked at logs", false)))
        .unwrap();
    let inc = w
        .run(|st, t| note(st, t, &note_req("add an alert", true)))
        .unwrap();
    assert_eq!(inc.action_items, vec!["add an alert"]);
    let kinds: Vec<TimelineKind> = inc.timeline.iter().rev().take(2).map(|e| e.kind).collect();
    assert_eq!(kinds, vec![TimelineKind::ActionItem, TimelineKind::Note]);
    assert!(w.run(|st, t| note(st, t, &note_req("", false))).is_err());

    let sev = IncidentSeveritySet {
        id,
        severity: Severity::Sev1,
        by: "ann".into(),
        reason: Some("customers".into()),
    };
    let inc = w.run(|st, t| set_severity(st, t, &sev)).unwrap();
    assert_eq!((inc.severity, inc.severity_manual), (Severity::Sev1, true));
    assert_eq!(inc.severity_reason, "set by ann: customers");
    assert_eq!(
        inc.timeline.last().unwrap().text,
        "severity SEV3 -> SEV1 by ann: customers"
    );
}

#[test]
fn an_incident_is_quiet_after_the_hold_unless_an_alert_fires_or_a_playbook_runs() {
    let mut w = World::new();
    let id = open(&mut w);
    let now = w.now;
    w.ingest(vec![clear("a1", API, now)]);
    let hold = w.settings.resolve_hold.as_secs() as i64;
    w.advance(hold - 1);
    assert!(w.run(|st, t| quiet(st, t)).is_empty());
    assert!(still_quiet(&w.st, id));
    w.advance(1);
    assert_eq!(w.run(|st, t| quiet(st, t)), vec![id]);
    w.st.incidents.get_mut(&id).unwrap().playbook = Some(PlaybookRun {
        name: "p".into(),
        step: 0,
        state: PlaybookState::Running,
        started_at: now,
        detail: None,
    });
    assert!(w.run(|st, t| quiet(st, t)).is_empty());
    w.st.incidents.get_mut(&id).unwrap().playbook = None;
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    assert!(!still_quiet(&w.st, id));
    assert!(w.run(|st, t| quiet(st, t)).is_empty());
}

#[test]
fn unconfirmed_recovery_mitigates_once_then_escalates_after_the_timeout() {
    let mut w = World::new();
    let id = open(&mut w);
    let now = w.now;
    w.ingest(vec![clear("a1", API, now)]);
    w.take_incident_events();
    w.run(|st, t| recovery_pending(st, t, id, "burn rate 3"));
    w.run(|st, t| recovery_pending(st, t, id, "burn rate 3"));
    let events = w.take_incident_events();
    assert_eq!(events.len(), 1, "mitigated once");
    assert_eq!(events[0].0, "mitigated");
    assert_eq!(w.st.incident(id).unwrap().state, IncidentState::Mitigated);
    w.advance(w.settings.recovery_timeout.as_secs() as i64);
    w.run(|st, t| recovery_pending(st, t, id, "burn rate 2"));
    let events = w.take_incident_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "escalated");
    assert!(
        events[0]
            .1
            .change
            .contains("recovery not confirmed by the monitor: burn rate 2")
    );
    let inc = w.st.incident(id).unwrap();
    assert_eq!(inc.state, IncidentState::Triggered);
    assert_eq!(inc.quiet_since, Some(w.now), "the timeout starts over");
}

#[test]
fn lists_filter_and_put_the_newest_first() {
    let mut w = World::new();
    let first = open(&mut w);
    w.advance(10);
    let now = w.now;
    w.ingest(vec![fire("d1", &[("service", "db")], now)]);
    w.run(|st, t| resolve(st, t, first, "ann", "x")).unwrap();
    let all = list(&w.st, &IncidentList::default(), None).0;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].id, first, "newest first");
    let open_only = list(
        &w.st,
        &IncidentList {
            open: true,
            ..Default::default()
        },
        None,
    )
    .0;
    assert_eq!(open_only.len(), 1);
    assert_eq!(open_only[0].service, "db");
    let api = list(
        &w.st,
        &IncidentList {
            service: Some("api".into()),
            ..Default::default()
        },
        None,
    )
    .0;
    assert_eq!(api[0].id, first);
    let resolved = list(
        &w.st,
        &IncidentList {
            state: Some(IncidentState::Resolved),
            limit: Some(5),
            ..Default::default()
        },
        None,
    )
    .0;
    assert_eq!(resolved.len(), 1);
    assert_eq!(
        list(
            &w.st,
            &IncidentList {
                limit: Some(1),
                ..Default::default()
            },
            None
        )
        .0
        .len(),
        1
    );
}

#[test]
fn acknowledging_an_alert_acknowledges_its_incident() {
    let mut w = World::new();
    let id = open(&mut w);
    let inc = w.run(|st, t| ack_alert(st, t, "a1", "pagerduty")).unwrap();
    assert_eq!(inc.id, id);
    assert_eq!(inc.state, IncidentState::Acknowledged);
    assert!(
        w.run(|st, t| ack_alert(st, t, "nobody", "pagerduty"))
            .is_none()
    );
}

#[test]
fn a_list_pages_by_cursor_and_a_filter_walks_a_bounded_number_of_incidents() {
    let mut w = World::new();
    let mut ids = Vec::new();
    for n in 0..30 {
        let now = w.now;
        let name = format!("s{n}");
        w.ingest(vec![fire(&name, &[("service", name.as_str())], now)]);
        w.advance(1);
        ids.push(w.st.incidents.keys().next_back().copied().unwrap());
    }
    let page = |cursor: Option<Uuid>, q: IncidentList| list(&w.st, &q, cursor);
    let two = IncidentList {
        limit: Some(2),
        ..Default::default()
    };
    let (first, next) = page(None, two.clone());
    assert_eq!(
        first.iter().map(|i| i.id).collect::<Vec<_>>(),
        [ids[29], ids[28]]
    );
    assert_eq!(next, Some(ids[28]));
    let (second, _) = page(next, two.clone());
    assert_eq!(
        second[0].id, ids[27],
        "the next page starts after the cursor"
    );

    // A filter nothing matches stops after ten pages' worth and says where to go on.
    let none = IncidentList {
        limit: Some(2),
        service: Some("nobody".into()),
        ..Default::default()
    };
    let (empty, next) = page(None, none.clone());
    assert!(empty.is_empty());
    assert_eq!(
        next,
        Some(ids[29 - 19]),
        "20 incidents walked, then a cursor"
    );
    let (empty, next) = page(next, none);
    assert!(empty.is_empty());
    assert_eq!(next, None, "the last ten walked, and the end");
}
