use super::*;

#[test]
fn variables_and_policy_parse_and_bad_values_are_named() {
    let vars: HashMap<String, String> = [
        ("TORONTO_INCIDENT_GROUP_BY", "alertname, service"),
        ("TORONTO_INCIDENT_RESOLVE_HOLD_MS", "250"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let s = Settings::from_vars(&vars).unwrap();
    assert_eq!(s.group_by, vec!["alertname", "service"]);
    assert_eq!(s.resolve_hold, Duration::from_millis(250));
    let bad: HashMap<String, String> =
        [("TORONTO_INCIDENT_TICK_MS".to_owned(), "soon".to_owned())].into();
    assert!(
        Settings::from_vars(&bad)
            .unwrap_err()
            .to_string()
            .contains("TORONTO_INCIDENT_TICK_MS")
    );
    let policy = Policy::from_yaml(
        r#"
severity_rules:
  - severity: sev1
    environments: [production]
    slo_tiers: [critical]
schedules:
  - name: primary
    participants: [alice, bob]
    start: 2026-01-01T00:00:00Z
    handoff_seconds: 86400
escalation_policies:
  - name: default
    levels:
      - notify: [schedule:primary]
        ack_timeout_seconds: 300
default_escalation: default
playbooks:
  - name: rollback
    when: { change_linked: true }
    actions:
      - action: deployer.rollback
      - { action: wait_recovery, timeout_seconds: 60 }
"#,
    )
    .unwrap();
    assert_eq!(policy.playbooks[0].actions.len(), 2);
    let on_call = policy.schedules[0].on_call("2026-01-02T12:00:00Z".parse().unwrap());
    assert_eq!(on_call.as_deref(), Some("bob"));
    let err = Policy::from_yaml("default_escalation: nope\n").unwrap_err();
    assert!(err.contains("`nope` is not defined"), "{err}");
    let err = Policy::from_yaml(
        "playbooks:\n  - name: x\n    actions:\n      - action: deployer.reboot\n",
    )
    .unwrap_err();
    assert!(err.contains("playbooks"), "{err}");
}

#[test]
fn the_table_parses_its_defaults_and_refuses_typos_and_zero() {
    let defaults: HashMap<String, String> = INCIDENT_VARS
        .iter()
        .map(|v| (v.name.to_owned(), v.default.to_owned()))
        .collect();
    assert_eq!(Settings::from_vars(&defaults).unwrap(), Settings::default());
    let mut names: Vec<&str> = INCIDENT_VARS.iter().map(|v| v.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), INCIDENT_VARS.len());
    let one =
        |k: &str, v: &str| -> HashMap<String, String> { [(k.to_owned(), v.to_owned())].into() };
    let err = Settings::from_vars(&one("TORONTO_INCIDENT_TICK", "5")).unwrap_err();
    assert!(
        err.to_string()
            .contains("did you mean TORONTO_INCIDENT_TICK_MS?"),
        "{err}"
    );
    let err = Settings::from_vars(&one("TORONTO_INCIDENT_RECOVERY_POLL_MS", "0")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "TORONTO_INCIDENT_RECOVERY_POLL_MS: must be more than 0"
    );
    let s = Settings::from_vars(&one("TORONTO_INCIDENT_REOPEN_WINDOW_MS", "0")).unwrap();
    assert!(s.reopen_window.is_zero());
}
