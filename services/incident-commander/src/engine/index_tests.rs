use super::*;
use crate::engine::escalation::escalate_due;
use crate::engine::lifecycle::{ack, close, mitigate, resolve};
use crate::engine::metrics::{RESPONSE_BUCKETS, of};
use crate::engine::state::State;
use crate::engine::testing::{World, clear, fire};

const API: &[(&str, &str)] = &[
    ("alertname", "Errors"),
    ("service", "api"),
    ("environment", "production"),
];
const DB: &[(&str, &str)] = &[
    ("alertname", "Slow"),
    ("service", "db"),
    ("environment", "production"),
];

fn paging() -> World {
    World::with_policy(
        r#"
escalation_policies:
  - name: default
    levels:
      - notify: ["user:ann"]
        ack_timeout_seconds: 60
      - notify: ["user:lead"]
        ack_timeout_seconds: 120
    repeat: 1
default_escalation: default
"#,
    )
}

fn close_to(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-6,
        (a, b) => a == b,
    }
}

/// The index agrees with one built by walking every incident; returns the open ids.
fn agrees(st: &State, now: DateTime<Utc>) -> BTreeSet<Uuid> {
    let open: BTreeSet<Uuid> = st
        .incidents
        .values()
        .filter(|i| i.state.is_open())
        .map(|i| i.id)
        .collect();
    assert_eq!(st.index.open(), &open, "the open incidents");
    let due: BTreeSet<Uuid> = st
        .incidents
        .values()
        .filter(|i| {
            i.state == IncidentState::Triggered && i.escalation.next_at.is_some_and(|at| at <= now)
        })
        .map(|i| i.id)
        .collect();
    let indexed: BTreeSet<Uuid> = st.index.escalations_due(now).into_iter().collect();
    assert_eq!(indexed, due, "the escalations due");
    let quiet: BTreeSet<Uuid> = st
        .incidents
        .values()
        .filter(|i| {
            i.state.is_open() && i.alerts_firing == 0 && i.quiet_since.is_some_and(|at| at <= now)
        })
        .map(|i| i.id)
        .collect();
    let indexed: BTreeSet<Uuid> = st.index.quiet_since(now).into_iter().collect();
    assert_eq!(indexed, quiet, "the quiet incidents");
    let all: Vec<&Incident> = st.incidents.values().collect();
    let (kept, walked) = (st.index.metrics(), of(&all));
    assert_eq!(
        (kept.incidents, kept.open, &kept.by_severity),
        (walked.incidents, walked.open, &walked.by_severity)
    );
    assert!(close_to(kept.mtta_seconds, walked.mtta_seconds), "MTTA");
    assert!(close_to(kept.mttr_seconds, walked.mttr_seconds), "MTTR");
    assert!(close_to(kept.mtbf_seconds, walked.mtbf_seconds), "MTBF");
    let (acknowledged, resolved) = st.index.response_times();
    for (times, walked) in [
        (
            acknowledged,
            all.iter()
                .filter_map(|i| i.acknowledged_at.map(|t| (i.opened_at, t)))
                .collect::<Vec<_>>(),
        ),
        (
            resolved,
            all.iter()
                .filter_map(|i| i.resolved_at.map(|t| (i.opened_at, t)))
                .collect(),
        ),
    ] {
        let mut buckets = vec![0u64; RESPONSE_BUCKETS.len() + 1];
        for (from, to) in walked {
            let secs = (to - from).num_milliseconds() as f64 / 1000.0;
            buckets[RESPONSE_BUCKETS
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(13)] += 1;
        }
        let kept: Vec<u64> = times.buckets().into_iter().map(|(_, n)| n).collect();
        assert_eq!(kept, buckets, "response-time buckets");
        assert_eq!(times.count(), buckets.iter().sum::<u64>());
    }
    open
}

/// The state after a restart: everything loaded back from what was kept.
fn restarted(st: &State) -> State {
    State::restored(
        st.incidents.values().cloned().collect(),
        st.alerts.values().cloned().collect(),
        vec![],
        vec![],
    )
}

#[test]
fn the_index_follows_an_incident_through_its_life_and_a_restart() {
    let mut w = paging();
    let t0 = w.now;
    w.ingest(vec![fire("a1", API, t0)]);
    let id = w.open_incident().id;
    assert_eq!(agrees(&w.st, w.now), BTreeSet::from([id]), "opened");
    assert!(
        w.st.index
            .escalations_due(w.now + chrono::Duration::seconds(59))
            .is_empty()
    );
    assert_eq!(
        w.st.index
            .escalations_due(w.now + chrono::Duration::seconds(60)),
        vec![id]
    );

    w.advance(61);
    assert_eq!(
        w.run(escalate_due),
        vec![id],
        "level 0 not acknowledged in time"
    );
    agrees(&w.st, w.now);
    assert!(
        w.st.index.escalations_due(w.now).is_empty(),
        "level 1 is due later"
    );

    w.advance(30);
    w.run(|st, t| ack(st, t, id, "ann", None)).unwrap();
    assert_eq!(
        agrees(&w.st, w.now + chrono::Duration::days(1)),
        BTreeSet::from([id])
    );
    assert!(
        w.st.index
            .escalations_due(w.now + chrono::Duration::days(1))
            .is_empty(),
        "an acknowledged incident does not escalate"
    );
    assert_eq!(w.st.index.metrics().mtta_seconds, Some(91.0));

    w.advance(10);
    w.run(|st, t| mitigate(st, t, id, "ann", "rolled back"))
        .unwrap();
    assert_eq!(
        agrees(&w.st, w.now),
        BTreeSet::from([id]),
        "mitigated is open"
    );

    w.advance(10);
    let now = w.now;
    w.ingest(vec![clear("a1", API, now)]);
    assert_eq!(w.st.index.quiet_since(now), vec![id], "its alert resolved");
    agrees(&w.st, now);
    w.run(|st, t| resolve(st, t, id, "ann", "fixed")).unwrap();
    assert!(agrees(&w.st, w.now).is_empty(), "resolved is not open");
    assert_eq!(w.st.index.metrics().mttr_seconds, Some(111.0));

    w.advance(5);
    let now = w.now;
    w.ingest(vec![fire("a1", API, now)]);
    assert_eq!(w.open_incident().id, id, "reopened, not a new incident");
    assert_eq!(agrees(&w.st, w.now), BTreeSet::from([id]), "reopened");
    assert_eq!(
        w.st.index.metrics().mttr_seconds,
        None,
        "no longer resolved"
    );
    assert_eq!(
        w.st.index
            .escalations_due(w.now + chrono::Duration::seconds(60)),
        vec![id],
        "paging starts over"
    );

    // A second service: MTBF and counts over both.
    w.advance(100);
    let now = w.now;
    w.ingest(vec![fire("d1", DB, now)]);
    let open = agrees(&w.st, w.now);
    assert_eq!(open.len(), 2);
    let other = *open.iter().find(|i| **i != id).unwrap();

    // A restart rebuilds the same index from what was kept.
    let back = restarted(&w.st);
    assert_eq!(agrees(&back, w.now), open);
    assert_eq!(back.index.metrics(), w.st.index.metrics());

    w.advance(20);
    let now = w.now;
    w.ingest(vec![clear("a1", API, now)]);
    w.run(|st, t| resolve(st, t, id, "ann", "fixed again"))
        .unwrap();
    w.run(|st, t| close(st, t, id, "ann", &[])).unwrap();
    assert_eq!(
        agrees(&w.st, w.now),
        BTreeSet::from([other]),
        "closed is not open"
    );
    let back = restarted(&w.st);
    assert_eq!(agrees(&back, w.now), BTreeSet::from([other]));
    assert_eq!(back.index.metrics(), w.st.index.metrics());
}

#[test]
fn mtbf_is_kept_per_service_as_incidents_open() {
    let mut idx = Index::default();
    let t0: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
    let mut incs = Vec::new();
    for (key, service, after) in [
        ("a", "api", 0),
        ("b", "api", 3600),
        ("c", "db", 100),
        ("d", "api", 600),
    ] {
        let mut inc = crate::engine::testing::incident(key, IncidentState::Triggered, None);
        inc.service = service.into();
        inc.opened_at = t0 + chrono::Duration::seconds(after);
        idx.update(inc.id, Some(&inc));
        incs.push(inc);
    }
    // api: 0, 600, 3600 -> gaps 600 and 3000; db alone has none.
    assert_eq!(idx.metrics().mtbf_seconds, Some(1800.0));
    // An incident gone takes its gaps with it.
    idx.update(incs[1].id, None);
    assert_eq!(idx.metrics().mtbf_seconds, Some(600.0));
    assert_eq!(idx.metrics().incidents, 3);
    assert_eq!(idx.open().len(), 3);
}
