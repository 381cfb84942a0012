use super::*;
use crate::engine::testing::{World, clear, fire};
use crate::engine::turn::Effect;
use toronto_protocol::incidents::IncidentState;

const SHOP: &[(&str, &str)] = &[
    ("alertname", "HighErrorRate"),
    ("service", "shop"),
    ("environment", "production"),
];

#[test]
fn a_repeated_firing_is_a_duplicate_of_the_same_incident() {
    let mut w = World::new();
    let now = w.now;
    let first = w.ingest(vec![fire("fp1", SHOP, now)]);
    assert_eq!(
        first,
        Intake {
            fresh: 1,
            duplicates: 0,
            held: 0
        }
    );
    let again = w.ingest(vec![fire("fp1", SHOP, now), fire("fp1", SHOP, now)]);
    assert_eq!(
        again,
        Intake {
            fresh: 0,
            duplicates: 2,
            held: 0
        }
    );
    let inc = w.open_incident();
    assert_eq!(
        (inc.alerts_firing, inc.alerts_total, inc.duplicates),
        (1, 1, 2)
    );
    assert_eq!(w.st.alerts["fp1"].duplicates, 2);
    assert_eq!(w.counters.received.get(), 3);
    assert_eq!(w.counters.duplicates.get(), 2);
}

#[test]
fn resolving_every_alert_makes_the_incident_quiet_and_a_second_resolve_is_a_duplicate() {
    let mut w = World::new();
    let now = w.now;
    w.ingest(vec![fire("fp1", SHOP, now), fire("fp2", SHOP, now)]);
    w.advance(30);
    let now = w.now;
    w.ingest(vec![clear("fp1", SHOP, now)]);
    assert_eq!(w.open_incident().alerts_firing, 1);
    assert_eq!(w.open_incident().quiet_since, None);
    w.advance(5);
    let now = w.now;
    let out = w.ingest(vec![clear("fp2", SHOP, now), clear("fp2", SHOP, now)]);
    assert_eq!(
        out,
        Intake {
            fresh: 1,
            duplicates: 1,
            held: 0
        }
    );
    let inc = w.open_incident();
    assert_eq!(inc.alerts_firing, 0);
    assert_eq!(inc.quiet_since, Some(now));
    assert_eq!(inc.state, IncidentState::Triggered, "quiet is not resolved");
    // A resolution of an unknown alert is ignored.
    let out = w.ingest(vec![clear("nobody", SHOP, now)]);
    assert_eq!(out, Intake::default());
}

#[test]
fn an_alert_firing_again_rejoins_its_incident() {
    let mut w = World::new();
    let now = w.now;
    w.ingest(vec![fire("fp1", SHOP, now)]);
    w.ingest(vec![clear("fp1", SHOP, now)]);
    w.ingest(vec![fire("fp1", SHOP, now)]);
    let inc = w.open_incident();
    assert_eq!((inc.alerts_firing, inc.alerts_total), (1, 1));
    assert!(inc.timeline.iter().any(|e| e.text.contains("firing again")));
    assert_eq!(inc.quiet_since, None);
}

#[test]
fn alert_notes_are_announced_once_per_incident() {
    let mut w = World::new();
    let now = w.now;
    w.ingest(vec![fire("fp1", SHOP, now)]);
    w.effects.clear();
    let mut more = Vec::new();
    for i in 2..6 {
        more.push(fire(&format!("fp{i}"), SHOP, now));
    }
    w.run(|st, t| ingest(st, t, more));
    assert!(w.effects.iter().any(|e| matches!(e, Effect::Announce)));
    assert!(
        w.take_incident_events().is_empty(),
        "nothing before the announcement"
    );
    w.run(announce);
    let events = w.take_incident_events();
    assert_eq!(events.len(), 1, "one updated event for four alerts");
    assert_eq!(events[0].0, "updated");
    assert_eq!(events[0].1.change.matches("joined").count(), 4);
    assert_eq!(w.open_incident().alerts_total, 5);
    // Announcing again with nothing pending does nothing.
    w.run(announce);
    assert!(w.take_incident_events().is_empty());
}

#[test]
fn resolved_alerts_are_forgotten_only_after_the_reopen_window_and_an_hour() {
    let mut w = World::new();
    let now = w.now;
    w.ingest(vec![fire("old", SHOP, now), fire("live", SHOP, now)]);
    w.ingest(vec![clear("old", SHOP, now)]);
    let window = w.settings.reopen_window.as_secs() as i64;
    w.advance(window + 3600 - 1);
    assert_eq!(w.run(|st, t| forget_resolved(st, t)), 0);
    w.advance(1);
    assert_eq!(w.run(|st, t| forget_resolved(st, t)), 1);
    assert!(w.st.alert("old").is_none());
    assert!(
        w.st.alert("live").is_some(),
        "a firing alert is never forgotten"
    );
}
