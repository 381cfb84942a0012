use super::*;
use crate::engine::testing::{World, fire};
use crate::engine::{lifecycle, triage};
use chrono::Duration;
use toronto_protocol::incidents::{IncidentOpen, Severity};

fn world() -> World {
    World::with_policy(
        r#"
playbooks:
  - name: rollback
    when: { services: [api], min_severity: sev2 }
    actions:
      - action: deployer.rollback
      - action: wait_recovery
  - name: page-dba
    when: { services: [db], labels: { team: data } }
    actions:
      - action: page
        target: "user:dba"
autonomy:
  severities: [sev3, sev4]
  environments: [staging]
"#,
    )
}

fn open(w: &mut World, service: &str, env: &str, severity: Severity) -> Incident {
    let req = IncidentOpen {
        title: "t".into(),
        service: service.into(),
        environment: env.into(),
        severity: Some(severity),
        labels: [("team".to_owned(), "data".to_owned())].into(),
        by: "ann".into(),
    };
    w.run(|st, t| crate::engine::grouping::open_manual(st, t, &req))
        .unwrap()
}

#[test]
fn a_playbook_that_changes_the_target_waits_for_a_human_outside_autonomy() {
    let mut w = world();
    let inc = open(&mut w, "api", "production", Severity::Sev1);
    let run = inc.playbook.unwrap();
    assert_eq!(
        (run.name.as_str(), run.state),
        ("rollback", PlaybookState::WaitingApproval)
    );
    assert!(w.playbooks.is_empty(), "not started");
    assert!(
        inc.timeline
            .iter()
            .any(|e| e.text.contains("needs a human: SEV1 in production"))
    );
    assert!(running(&w.st).is_empty());
}

#[test]
fn min_severity_and_labels_decide_which_playbook_applies() {
    let mut w = world();
    let low = open(&mut w, "api", "staging", Severity::Sev3);
    assert!(low.playbook.is_none(), "SEV3 is below the playbook's SEV2");
    let db = open(&mut w, "db", "production", Severity::Sev1);
    let run = db.playbook.unwrap();
    assert_eq!(run.name, "page-dba");
    assert_eq!(
        run.state,
        PlaybookState::Running,
        "paging changes nothing: no approval needed"
    );
    assert_eq!(w.playbooks, vec![db.id]);
}

#[test]
fn inside_autonomy_a_rollback_playbook_starts_alone() {
    let mut w = World::with_policy(
        r#"
default_severity: sev4
playbooks:
  - name: rollback
    when: { change_linked: true }
    actions:
      - action: deployer.rollback
"#,
    );
    let now = w.now;
    let change = crate::engine::RecentChange {
        rollout_id: Uuid::now_v7(),
        service: "api".into(),
        environment: "staging".into(),
        version: "2".into(),
        previous_version: None,
        finished_at: now - Duration::minutes(1),
    };
    w.run(|st, t| triage::record_change(st, t, change));
    // Without a linked change the playbook does not apply.
    w.ingest(vec![fire(
        "p",
        &[("service", "api"), ("environment", "production")],
        now,
    )]);
    assert!(w.open_incident().playbook.is_none());
    w.ingest(vec![fire(
        "s",
        &[("service", "api"), ("environment", "staging")],
        now,
    )]);
    let id = w.st.alert("s").unwrap().incident.unwrap();
    let run = w.st.incident(id).unwrap().playbook.clone().unwrap();
    assert_eq!(
        run.state,
        PlaybookState::Running,
        "SEV3 (raised from SEV4) in staging"
    );
    assert_eq!(w.playbooks, vec![id]);
}

#[test]
fn a_human_runs_a_waiting_playbook_and_it_cannot_run_twice() {
    let mut w = world();
    let inc = open(&mut w, "api", "production", Severity::Sev1);
    let id = inc.id;
    let started = w.run(|st, t| run(st, t, id, None, "ann")).unwrap();
    let r = started.playbook.unwrap();
    assert_eq!(
        (r.state, r.detail.as_deref()),
        (PlaybookState::Running, Some("approved by ann"))
    );
    assert_eq!(w.playbooks, vec![id]);
    assert_eq!(running(&w.st), vec![id]);
    let again = w.run(|st, t| run(st, t, id, None, "ann")).unwrap_err();
    assert!(matches!(again, EngineError::PlaybookRunning));
    let unknown = w
        .run(|st, t| run(st, t, id, Some("nope"), "ann"))
        .unwrap_err();
    assert_eq!(unknown.to_string(), "no playbook nope");
    let plain = open(&mut w, "web", "production", Severity::Sev1);
    let unnamed = w
        .run(|st, t| run(st, t, plain.id, None, "ann"))
        .unwrap_err();
    assert!(matches!(unnamed, EngineError::NoPlaybookNamed));
    w.run(|st, t| lifecycle::resolve(st, t, plain.id, "ann", "x"))
        .unwrap();
    let closed = w
        .run(|st, t| run(st, t, plain.id, Some("rollback"), "ann"))
        .unwrap_err();
    assert!(matches!(closed, EngineError::NotOpen(_)));
}

#[test]
fn progress_moves_step_by_step_and_ends_the_run() {
    let mut w = world();
    let id = open(&mut w, "api", "production", Severity::Sev1).id;
    w.run(|st, t| run(st, t, id, None, "ann")).unwrap();
    let (_, pb, step) = next_step(&w.st, &w.settings, id).unwrap();
    assert_eq!((pb.name.as_str(), step), ("rollback", 0));
    w.run(|st, t| progress(st, t, id, 0, "rolled back".into(), None));
    // A stale report of step 0 does not move the run again.
    w.run(|st, t| progress(st, t, id, 0, "rolled back".into(), None));
    assert_eq!(next_step(&w.st, &w.settings, id).unwrap().2, 1);
    w.run(|st, t| {
        progress(
            st,
            t,
            id,
            1,
            "recovered".into(),
            Some(PlaybookState::Succeeded),
        )
    });
    let r = w.st.incident(id).unwrap().playbook.clone().unwrap();
    assert_eq!(
        (r.step, r.state, r.detail.as_deref()),
        (2, PlaybookState::Succeeded, Some("recovered"))
    );
    assert!(next_step(&w.st, &w.settings, id).is_none());
}

#[test]
fn a_playbook_page_is_recorded_and_persisted() {
    let mut w = world();
    let id = open(&mut w, "db", "production", Severity::Sev2).id;
    w.effects.clear();
    w.run(|st, t| page(st, t, id, "user:dba", "playbook page-dba"));
    let inc = w.st.incident(id).unwrap();
    assert_eq!(inc.escalation.pages_sent, 1);
    assert_eq!(
        inc.timeline.last().unwrap().text,
        "paged user:dba: playbook page-dba"
    );
    assert!(w.persisted(&Record::Incident(id)));
}

#[test]
fn autonomy_needs_both_severity_and_environment() {
    let w = world();
    let mut inc = crate::engine::testing::incident(
        "k",
        toronto_protocol::incidents::IncidentState::Triggered,
        None,
    );
    inc.environment = "staging".into();
    inc.severity = Severity::Sev3;
    assert!(autonomous(&w.settings, &inc));
    inc.severity = Severity::Sev2;
    assert!(!autonomous(&w.settings, &inc));
    inc.severity = Severity::Sev4;
    inc.environment = "production".into();
    assert!(!autonomous(&w.settings, &inc));
}
