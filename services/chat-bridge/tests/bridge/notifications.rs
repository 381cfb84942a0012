//! Notifications: events reach the chat webhooks escaped, grouped, with approval
//! buttons, and back off on 429.

use super::*;

async fn publish<T: toronto_protocol::Message>(b: &Bridge, event: &str, data: T, subject: &str) {
    let js = async_nats::jetstream::new(b.client.clone());
    let envelope = Envelope::builder("toronto://devops/test", data)
        .subject(subject)
        .build();
    toronto_runtime::jetstream::publish_envelope(
        &js,
        &format!("toronto.devops.v1.events.{event}"),
        &envelope,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn notifications_reach_the_webhook_escaped_and_back_off_on_429() {
    let (slack_url, mut slack_posts) = webhook_server(1).await;
    let (mm_url, mut mm_posts) = webhook_server(0).await;
    let mut s = settings();
    s.group_window = Duration::from_millis(1500);
    s.webhooks = vec![
        Webhook {
            name: "ops".into(),
            kind: ChatKind::Slack,
            url: Secret::new(slack_url),
        },
        Webhook {
            name: "shop".into(),
            kind: ChatKind::Mattermost,
            url: Secret::new(mm_url),
        },
    ];
    s.routes = vec![
        toronto_chat_bridge::settings::Route {
            channel: "ops".into(),
            services: vec![],
            environments: vec!["production".into()],
            min_severity: toronto_chat_bridge::settings::Severity::Warning,
        },
        toronto_chat_bridge::settings::Route {
            channel: "shop".into(),
            services: vec!["shop".into()],
            environments: vec![],
            min_severity: toronto_chat_bridge::settings::Severity::Info,
        },
    ];
    let b = bridge_with(s).await;

    let alert = Alert {
        fingerprint: "f1".into(),
        status: AlertStatus::Firing,
        labels: [
            ("alertname", "HighErrorRate"),
            ("service", "shop"),
            ("environment", "production"),
            ("severity", "page"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        annotations: [(
            "summary".to_owned(),
            "errors > 5% & rising <!channel> *now*".to_owned(),
        )]
        .into(),
        burn_rates: Default::default(),
        budget_remaining: None,
        starts_at: chrono::Utc::now(),
        ends_at: None,
        generator: "test".into(),
    };
    publish(&b, "alert.firing", alert, "shop").await;

    // Slack: refused once with 429, then delivered again, escaped.
    let (status, first) = next_post(&mut slack_posts).await;
    assert_eq!(status, 429);
    let (status, again) = next_post(&mut slack_posts).await;
    assert_eq!(status, 200);
    assert_eq!(first, again, "the same message is retried");
    assert_eq!(
        text(&again),
        "🔥 firing: *HighErrorRate* on shop in production: errors &gt; 5% &amp; rising &lt;!channel&gt; *now*"
    );
    // Mattermost: Markdown-escaped.
    let (status, mm) = next_post(&mut mm_posts).await;
    assert_eq!(status, 200);
    assert_eq!(
        text(&mm),
        "🔥 firing: **HighErrorRate** on shop in production: errors &gt; 5% &amp; rising &lt;\\!channel&gt; \\*now\\*"
    );

    // Rollout progress in one window: one message with the latest step only, to the
    // shop channel (info is below the ops route's warning).
    let rollout_id = uuid::Uuid::now_v7();
    for weight in [10u8, 25, 50] {
        let r = rollout(rollout_id, weight);
        publish(&b, "rollout.progressed", r, "shop").await;
    }
    let (status, grouped) = next_post(&mut mm_posts).await;
    assert_eq!(status, 200);
    assert_eq!(
        text(&grouped),
        "⏩ **shop 1.2.0** in production: progressed at 50%",
        "{grouped}"
    );

    // A plan waiting for approval in production reaches ops with Approve/Reject buttons.
    let plan = production_plan("toronto://chat/slack/U_OP1");
    publish(&b, "gate.waiting", plan.clone(), "shop").await;
    let (status, approval) = next_post(&mut slack_posts).await;
    assert_eq!(status, 200);
    assert!(
        text(&approval)
            .starts_with("✋ approval needed: *deploy shop 1.2.0 to production (rolling)*"),
        "{approval}"
    );
    let buttons = &approval["blocks"][1]["elements"];
    assert_eq!(buttons[0]["action_id"], "approve_plan");
    assert_eq!(buttons[0]["value"], plan.id.to_string());
    assert_eq!(buttons[1]["action_id"], "reject_plan");
    b.stop().await;
}

fn rollout(id: uuid::Uuid, weight: u8) -> Rollout {
    Rollout {
        id,
        service: "shop".into(),
        environment: "production".into(),
        version: "1.2.0".into(),
        image: "shop:1.2.0".into(),
        strategy: Strategy::Canary { steps: vec![] },
        replicas: 3,
        previous: None,
        phase: RolloutPhase::Progressing,
        steps: vec![],
        step_index: 0,
        weight,
        manual_promotion: false,
        reason: None,
        rolled_back: false,
        is_rollback: false,
        emergency: false,
        pending: None,
        analyses: vec![],
        plan_id: None,
        idempotency_key: "k".into(),
        correlationid: None,
        requested_by: None,
        lease: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
        finished_at: None,
    }
}
