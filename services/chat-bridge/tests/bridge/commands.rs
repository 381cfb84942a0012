//! Slash commands: signatures, the planner round trip, roles and approvals, and slow
//! answers that follow on the response URL.

use super::*;

#[tokio::test]
async fn slack_signatures_are_verified_stale_and_replayed_requests_refused() {
    let b = bridge_with(settings()).await;
    let body = command_form("U_VIEW", "help deploy");

    // Valid: answered, with deploy's usage.
    let ok = b.slack_raw("/slack/commands", &body, SECRET, now()).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let answer: Value = ok.json().await.unwrap();
    assert!(
        text(&answer).contains("usage: deploy SERVICE VERSION to ENV"),
        "{answer}"
    );
    assert_eq!(answer["response_type"], "ephemeral");

    // The very same request again: a replay.
    let ts = now() - 30;
    let first = b.slack_raw("/slack/commands", &body, SECRET, ts).await;
    assert_eq!(first.status(), StatusCode::OK);
    let replay = b.slack_raw("/slack/commands", &body, SECRET, ts).await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    assert!(replay.text().await.unwrap().contains("replay"));

    // Signed with another secret.
    let wrong = b
        .slack_raw("/slack/commands", &body, "not-the-secret", now())
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("does not match"));

    // Six minutes old.
    let stale = b
        .slack_raw("/slack/commands", &body, SECRET, now() - 360)
        .await;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    assert!(stale.text().await.unwrap().contains("five minutes"));

    // The body changed after signing.
    let ts = now().to_string();
    let signature = slack_signature(SECRET.as_bytes(), &ts, body.as_bytes());
    let tampered = reqwest::Client::new()
        .post(format!("http://{}/slack/commands", b.http))
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", signature)
        .body(command_form("U_OP1", "help deploy"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), StatusCode::UNAUTHORIZED);

    // Unsigned.
    let unsigned = reqwest::Client::new()
        .post(format!("http://{}/slack/commands", b.http))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    b.stop().await;
}

#[tokio::test]
async fn a_slash_command_reaches_the_planner_and_its_reply_reaches_the_user() {
    let b = bridge_with(settings()).await;
    let plan = production_plan("toronto://chat/slack/U_OP1");
    let seen = b.fake_planner(plan.clone()).await;
    let mut records = b
        .client
        .subscribe("toronto.devops.v1.events.chat.command")
        .await
        .unwrap();
    toronto_runtime::service::confirm_subscriptions(&b.client).await;

    let answer = b
        .slack(
            "U_OP1",
            "deploy shop 1.2.0 to staging --strategy canary --steps 10,50",
        )
        .await;
    let t = text(&answer);
    assert!(
        t.contains(&format!(
            "plan {} accepted for deploy shop 1.2.0 to staging (canary 10,50,100)",
            plan.id
        )),
        "{answer}"
    );
    assert!(t.starts_with("<@U_OP1> ran `deploy shop"), "{answer}");
    assert_eq!(answer["response_type"], "in_channel");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (source, task) = &seen[0];
        assert_eq!(source, "toronto://chat/slack/U_OP1");
        assert_eq!(task["service"], "shop");
        assert_eq!(task["environment"], "staging");
        assert_eq!(task["strategy"]["kind"], "canary");
        assert_eq!(task["strategy"]["steps"][1]["weight"], 50);
    }
    // Recorded, with who asked.
    let msg = tokio::time::timeout(Duration::from_secs(10), records.next())
        .await
        .unwrap()
        .unwrap();
    let record: Envelope<ChatCommandRecord> =
        toronto_protocol::decode(&msg.payload, toronto_protocol::Encoding::Json).unwrap();
    assert_eq!(record.data.user_id, "U_OP1");
    assert_eq!(record.data.role.as_deref(), Some("operator"));
    assert_eq!(record.data.command.as_deref(), Some("deploy"));
    assert_eq!(record.data.outcome, "ok");

    // A malformed command: the usage of the command meant, only to the user.
    let answer = b.slack("U_OP1", "deploy shop").await;
    assert!(text(&answer).contains("VERSION is missing"), "{answer}");
    assert!(
        text(&answer).contains("usage: deploy SERVICE VERSION to ENV"),
        "{answer}"
    );
    assert_eq!(answer["response_type"], "ephemeral");
    // Unknown: the list.
    let answer = b.slack("U_OP1", "launch <rocket>").await;
    assert!(
        text(&answer).contains("unknown command `launch`"),
        "{answer}"
    );
    assert!(text(&answer).contains("slo SERVICE"), "{answer}");

    // Mattermost, with its token; a wrong token is refused.
    let r = b.mattermost(MM_TOKEN, "deploy shop 1.2.0 to qa").await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert!(
        text(&answer).contains(&format!("plan {} accepted", plan.id)),
        "{answer}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    let r = b.mattermost("guess", "deploy shop 1.2.0 to qa").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A Mattermost outgoing webhook (JSON): the trigger word is not part of the command.
    let r = b
        .mattermost_outgoing(MM_TOKEN, "devops", "deploy shop 1.2.0 to qa")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert!(
        text(&answer).contains(&format!("plan {} accepted", plan.id)),
        "{answer}"
    );
    assert_eq!(seen.lock().unwrap().len(), 3);
    let r = b
        .mattermost_outgoing("guess", "devops", "deploy shop 1.2.0 to qa")
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // JSON without a token says what is expected, instead of "does not match".
    let r = reqwest::Client::new()
        .post(format!("http://{}/mattermost/commands", b.http))
        .json(&serde_json::json!({"text": "help", "user_id": "mm42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("outgoing webhook"));
    assert_eq!(seen.lock().unwrap().len(), 3);
    b.stop().await;
}

#[tokio::test]
async fn roles_are_enforced_and_nobody_approves_their_own_production_deploy() {
    let b = bridge_with(settings()).await;
    let plan = production_plan("toronto://chat/slack/U_OP1");
    let seen = b.fake_planner(plan.clone()).await;

    // A viewer cannot deploy; nothing reaches the planner.
    let answer = b.slack("U_VIEW", "deploy shop 1.2.0 to production").await;
    assert!(
        text(&answer).contains("`deploy` needs the operator role; you are a viewer"),
        "{answer}"
    );
    // A user without a role may only ask for help.
    let answer = b.slack("U_NOBODY", "status").await;
    assert!(text(&answer).contains("you have no role"), "{answer}");
    // A viewer may read.
    let answer = b.slack("U_VIEW", "help").await;
    assert!(text(&answer).contains("commands:"), "{answer}");
    assert!(seen.lock().unwrap().is_empty());

    // The requester cannot approve their own production deploy.
    let answer = b.slack("U_OP1", &format!("approve {}", plan.id)).await;
    assert!(
        text(&answer).contains("you asked for this deploy"),
        "{answer}"
    );
    assert!(seen.lock().unwrap().is_empty());

    // Another operator can, with the Slack button: the decision carries who and role.
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": "U_OP2", "username": "bob"},
        "channel": {"id": "C1"},
        "actions": [{"action_id": "approve_plan", "value": plan.id.to_string()}],
    });
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    let r = b
        .slack_raw("/slack/interactions", &body, SECRET, now())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert!(
        text(&answer).contains(&format!(
            "plan {} (deploy shop 1.2.0 to production (rolling)) approved",
            plan.id
        )),
        "{answer}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "approve");
    // Refusals are counted on /metrics.
    let metrics = reqwest::get(format!("http://{}/metrics", b.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"toronto_chat_commands_total{platform="slack",command="deploy",outcome="forbidden"} 1"#
        ),
        "{metrics}"
    );
    assert_eq!(seen[0].1["by"], "U_OP2");
    assert_eq!(seen[0].1["role"], "operator");
    b.stop().await;
}

#[tokio::test]
async fn on_their_own_listener_slow_answers_follow_on_the_response_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (response_url, mut responses) = webhook_server(0).await;
    let mut s = settings();
    s.listen_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    // Every command takes "too long": the user is told, and the answer follows.
    s.reply_wait = Duration::ZERO;
    let b = bridge_with(s).await;
    let plan = production_plan("toronto://chat/slack/U_OP1");
    let seen = b.fake_planner(plan.clone()).await;

    // The chat routes are not on the health listener any more.
    let body = serde_urlencoded::to_string([
        ("text", "deploy shop 1.2.0 to staging"),
        ("user_id", "U_OP2"),
        ("response_url", response_url.as_str()),
    ])
    .unwrap();
    let ts = now().to_string();
    let signature = slack_signature(SECRET.as_bytes(), &ts, body.as_bytes());
    let post = |addr: String| {
        reqwest::Client::new()
            .post(format!("http://{addr}/slack/commands"))
            .header("x-slack-request-timestamp", ts.clone())
            .header("x-slack-signature", signature.clone())
            .body(body.clone())
            .send()
    };
    let r = post(b.http.to_string()).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = post(format!("127.0.0.1:{port}")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert!(
        text(&answer).starts_with("working on `deploy shop 1.2.0 to staging`"),
        "{answer}"
    );
    let (_, late) = next_post(&mut responses).await;
    assert!(
        text(&late).contains(&format!("plan {} accepted", plan.id)),
        "{late}"
    );
    assert_eq!(late["response_type"], "in_channel");
    assert_eq!(seen.lock().unwrap().len(), 1);
    b.stop().await;
}
