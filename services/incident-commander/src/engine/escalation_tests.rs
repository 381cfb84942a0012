use super::*;
use crate::engine::lifecycle;
use crate::engine::testing::{World, clear, fire};
use chrono::Duration;

const API: &[(&str, &str)] = &[
    ("alertname", "Errors"),
    ("service", "api"),
    ("environment", "production"),
];

fn paging() -> World {
    World::with_policy(
        r#"
schedules:
  - name: primary
    participants: [ann, ben]
    start: 2026-11-26T00:00:00Z
    handoff_seconds: 3600
escalation_policies:
  - name: default
    levels:
      - notify: ["schedule:primary"]
        ack_timeout_seconds: 60
      - notify: ["user:lead", "agent:sre"]
        ack_timeout_seconds: 120
    repeat: 1
default_escalation: default
"#,
    )
}

/// Targets paged, in order, from the effects so far (emptied).
fn pages(w: &mut World) -> Vec<(String, Option<usize>, u32)> {
    std::mem::take(&mut w.effects)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Event {
                subject, payload, ..
            } if subject.ends_with(".page.sent") => {
                let env: toronto_protocol::Envelope<Page> =
                    serde_json::from_slice(&payload).ok()?;
                Some((env.data.target, env.data.level, env.data.cycle))
            }
            _ => None,
        })
        .collect()
}

fn open(w: &mut World) -> Uuid {
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    w.open_incident().id
}

#[test]
fn opening_pages_the_first_level_and_resolves_the_schedule() {
    let mut w = paging();
    let id = open(&mut w);
    assert_eq!(pages(&mut w), vec![("user:ann".to_owned(), Some(0), 0)]);
    let inc = w.st.incident(id).unwrap();
    assert_eq!(inc.escalation.policy.as_deref(), Some("default"));
    assert_eq!(inc.escalation.next_at, Some(w.now + Duration::seconds(60)));
    assert_eq!(inc.escalation.pages_sent, 1);
    assert_eq!(w.counters.pages.get(), 1);
    assert!(
        inc.timeline.iter().any(|e| e.kind == TimelineKind::Page
            && e.text.starts_with("paged user:ann (level 0, round 0)"))
    );
}

#[test]
fn the_schedule_hands_off_with_time() {
    let mut w = paging();
    w.advance(3600);
    open(&mut w);
    assert_eq!(pages(&mut w)[0].0, "user:ben");
}

#[test]
fn unacknowledged_levels_escalate_on_time_round_again_and_exhaust() {
    let mut w = paging();
    let id = open(&mut w);
    pages(&mut w);
    // Not yet due.
    w.advance(59);
    assert!(w.run(escalate_due).is_empty());
    assert!(pages(&mut w).is_empty());
    // Due: level 1, a user and an agent (also notified on its subject).
    w.advance(1);
    assert_eq!(w.run(escalate_due), vec![id]);
    let notified = w.effects.iter().any(|e| {
        matches!(e, Effect::Notify { subject, .. } if subject == "toronto.agents.sre.v1.notify")
    });
    assert!(notified);
    assert_eq!(
        pages(&mut w),
        vec![
            ("user:lead".into(), Some(1), 0),
            ("agent:sre".into(), Some(1), 0)
        ]
    );
    assert_eq!(
        w.st.incident(id).unwrap().escalation.next_at,
        Some(w.now + Duration::seconds(120))
    );
    // Re-escalation: the policy repeats once, from level 0, round 1.
    w.advance(120);
    w.run(escalate_due);
    assert_eq!(pages(&mut w), vec![("user:ann".into(), Some(0), 1)]);
    w.advance(60);
    w.run(escalate_due);
    assert_eq!(pages(&mut w).len(), 2);
    // Every level and round used: exhausted, nobody else paged, no deadline left.
    w.advance(120);
    w.run(escalate_due);
    assert!(pages(&mut w).is_empty());
    let esc = &w.st.incident(id).unwrap().escalation;
    assert!(esc.exhausted);
    assert_eq!(esc.next_at, None);
    assert_eq!(esc.pages_sent, 6);
    assert!(
        w.st.incident(id)
            .unwrap()
            .timeline
            .iter()
            .any(|e| e.text == "escalation exhausted: not acknowledged in time")
    );
    w.advance(3600);
    assert!(w.run(escalate_due).is_empty());
}

#[test]
fn an_acknowledged_incident_does_not_escalate() {
    let mut w = paging();
    let id = open(&mut w);
    w.advance(30);
    w.run(|st, t| lifecycle::ack(st, t, id, "ann", None))
        .unwrap();
    w.advance(600);
    assert!(w.run(escalate_due).is_empty());
    pages(&mut w);
    // Escalating by hand pages the next level.
    w.run(|st, t| lifecycle::escalate(st, t, id, Some("ann"), "need help"))
        .unwrap();
    assert_eq!(pages(&mut w).len(), 2);
    let inc = w.st.incident(id).unwrap();
    assert_eq!(inc.state, IncidentState::Triggered);
    assert_eq!(
        inc.timeline.last().unwrap().text,
        "escalated to level 1 (round 0): need help"
    );
}

#[test]
fn pages_of_one_level_and_round_have_stable_ids() {
    let mut w = paging();
    let id = open(&mut w);
    let key = format!("{id}:0:0:user:ann");
    let page_ids: Vec<String> = w
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event {
                subject, msg_id, ..
            } if subject.ends_with(".page.sent") => Some(msg_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(page_ids, vec![derived_id(&key).to_string()]);
}

#[test]
fn a_reopened_incident_pages_again_in_a_new_round() {
    let mut w = paging();
    let id = open(&mut w);
    let now = w.now;
    w.ingest(vec![clear("a1", API, now)]);
    w.run(|st, t| lifecycle::resolve(st, t, id, "ann", "ok"))
        .unwrap();
    pages(&mut w);
    w.advance(10);
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    assert_eq!(pages(&mut w), vec![("user:ann".into(), Some(0), 1)]);
}

#[test]
fn without_a_policy_nobody_is_paged_and_escalating_says_so() {
    let mut w = World::new();
    let id = open(&mut w);
    assert!(pages(&mut w).is_empty());
    assert_eq!(w.st.incident(id).unwrap().escalation.next_at, None);
    w.run(|st, t| lifecycle::escalate(st, t, id, None, "why not"))
        .unwrap();
    assert_eq!(
        w.st.incident(id).unwrap().timeline.last().unwrap().text,
        "escalated: why not (no escalation policy)"
    );
}
