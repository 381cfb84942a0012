use super::*;

#[test]
fn replies_render_as_text() {
    let accepted = serde_json::json!({"plan_id": PLAN, "duplicate": false});
    let text = render(&ok("deploy shop 1.2.0 to production"), &accepted);
    assert!(text.starts_with(&format!(
        "plan {PLAN} accepted for deploy shop 1.2.0 to production"
    )));
    assert!(text.contains("approval by another operator"));
    let incidents = serde_json::json!({"incidents": [
        {"id": INC, "severity": "sev1", "state": "triggered", "service": "shop", "title": "errors"}
    ]});
    let text = render(&ok("incidents"), &incidents);
    assert!(
        text.contains(INC) && text.contains("SEV1") && text.contains("triggered"),
        "{text}"
    );
    let silence = ok("silence service=shop,env!~prod.* for 2h deploy test")
        .request(&actor(Role::Operator))
        .unwrap();
    assert_eq!(silence.data["matchers"][1]["name"], "env");
    assert_eq!(silence.data["matchers"][1]["isRegex"], true);
    assert_eq!(silence.data["matchers"][1]["isEqual"], false);
    assert_eq!(silence.data["comment"], "deploy test");
    assert_eq!(silence.data["created_by"], "U1");
    let ends: chrono::DateTime<chrono::Utc> =
        silence.data["ends_at"].as_str().unwrap().parse().unwrap();
    assert!(ends > chrono::Utc::now() + chrono::Duration::minutes(119));
    let err = toronto_protocol::ErrorBody::new(toronto_protocol::ErrorCode::BadRequest, "no")
        .with_details(serde_json::json!({"reasons": ["version is missing"]}));
    assert_eq!(
        render_error(&ok("deploy a 1 to b"), &err),
        "deploy failed (bad_request): no\n- version is missing"
    );
    assert_eq!(parse_duration("1d6h").unwrap(), 108_000);
    assert_eq!(render::human_duration(108_000), "1d6h");
}

#[test]
fn tables_line_up_by_display_width() {
    let t = crate::render::table(
        &["service", "state"],
        &[
            vec!["商店".into(), "ok".into()],
            vec!["shop🚀".into(), "ok".into()],
            vec!["shop".into(), "ok".into()],
        ],
    );
    // Every `ok` starts in the same terminal column.
    let columns: Vec<usize> = t
        .lines()
        .skip(1)
        .map(|l| {
            use unicode_width::UnicodeWidthStr;
            l[..l.find("ok").unwrap()].width()
        })
        .collect();
    assert_eq!(columns, vec![9, 9, 9], "{t}");
}

#[test]
fn dora_reads_in_units_that_fit_and_names_each_cause() {
    let report = serde_json::json!({
        "service": "shop", "environment": "production",
        "window_start": "2026-10-28T00:00:00Z", "window_end": "2026-11-27T00:00:00Z",
        "deployments": 4, "deployment_frequency_per_day": 0.13,
        "lead_time_median_seconds": 14400.0, "failed_changes": 3,
        "failures_by_cause": {"aborted": 1, "rolled_back": 1, "incident": 1},
        "change_failure_rate": 0.75, "time_to_restore_median_seconds": 0.16,
    });
    let text = crate::render(&ok("dora shop"), &report);
    assert!(text.contains("lead time 4.0h (median)"), "{text}");
    assert!(text.contains("time to restore 0.2s (median)"), "{text}");
    assert!(
        text.contains("(3 failed: 1 aborted, 1 rolled back, 1 with an incident)"),
        "{text}"
    );
}
