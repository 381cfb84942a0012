//! The chat bridge with the real planner: a production deploy typed in Slack waits for
//! another operator's approval, given with the buttons of the approval request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toronto_chat_bridge::settings::{ChatKind, Secret, Webhook};
use toronto_chat_bridge::verify::slack_signature;
use toronto_chat_bridge::{Config, Settings};
use toronto_commands::Role;
use toronto_protocol::tasks::{Plan, PlanGet};
use toronto_testkit::peers::{Peer, Peers};
use toronto_testkit::{NatsServer, Requester};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// A webhook that hands every post it receives to the test.
async fn webhook_server() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let _ = tx.send(body);
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

async fn next_post(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a post reaches the webhook")
        .unwrap()
}

/// POSTs a form to a Slack route of the bridge at `http`, signed now.
async fn slack_post(http: SocketAddr, path: &str, body: &str) -> Value {
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = slack_signature(SECRET.as_bytes(), &ts, body.as_bytes());
    let r = reqwest::Client::new()
        .post(format!("http://{http}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

/// The slash command `/devops <text>` from `user`.
async fn slack(http: SocketAddr, user: &str, text: &str) -> Value {
    let form = serde_urlencoded::to_string([
        ("command", "/devops"),
        ("text", text),
        ("user_id", user),
        ("user_name", &user.to_lowercase()),
        ("channel_id", "C1"),
    ])
    .unwrap();
    slack_post(http, "/slack/commands", &form).await
}

/// A click by `user` on the button `action` of the plan `plan_id`.
async fn button(http: SocketAddr, user: &str, action: &str, plan_id: &str) -> Value {
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase()},
        "channel": {"id": "C1"},
        "actions": [{"action_id": action, "value": plan_id}],
    });
    let form = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    slack_post(http, "/slack/interactions", &form).await
}

fn text(v: &Value) -> &str {
    v["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_production_deploy_from_slack_waits_for_another_operator_with_the_real_planner() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let (hook, mut posts) = webhook_server().await;
    let settings = Settings {
        slack_signing_secret: Some(Secret::new(SECRET)),
        roles: HashMap::from([
            ("slack:U_VIEW".to_owned(), Role::Viewer),
            ("U_OP1".to_owned(), Role::Operator),
            ("U_OP2".to_owned(), Role::Operator),
        ]),
        default_role: None,
        group_window: Duration::from_millis(200),
        webhooks: vec![Webhook {
            name: "ops".into(),
            kind: ChatKind::Slack,
            url: Secret::new(hook),
        }],
        ..Settings::default()
    };
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.nats.request_timeout_ms = 3000;
    config.http.addr = "127.0.0.1:0".into();
    let bridge_stop = CancellationToken::new();
    let bridge = toronto_chat_bridge::start_with(config, settings, bridge_stop.clone())
        .await
        .unwrap();
    let http = bridge.http_addr.unwrap();
    let bridge = tokio::spawn(bridge.run_until_shutdown());
    let _peers = Peers::start(&client, |_| Peer::Pass, Peer::Pass, false).await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let planner_stop = CancellationToken::new();
    let planner = toronto_planner::start_with(
        config,
        toronto_planner::Settings {
            // The chat roles decide: operators approve.
            approver_roles: vec!["operator".into(), "admin".into()],
            promotion: Vec::new(),
            budget_environments: Vec::new(),
            gate_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(10),
            ..Default::default()
        },
        planner_stop.clone(),
    )
    .await
    .unwrap();
    let planner = tokio::spawn(planner.run_until_shutdown());

    // The chat users are principals; the bridge acts on their behalf (delegate).
    for (who, chat_id) in [("op1", "slack:U_OP1"), ("op2", "slack:U_OP2")] {
        let roles = [
            toronto_protocol::auth::Role::Operator,
            toronto_protocol::auth::Role::Approver,
        ];
        toronto_testkit::person(&client, who, &roles, &[chat_id]).await;
    }
    let answer = slack(http, "U_OP1", "deploy shop 1.2.0 to production").await;
    assert!(
        text(&answer).contains("production needs an approval by another operator"),
        "{answer}"
    );

    // The approval request reaches the channel with its buttons.
    let plan_id = loop {
        let post = next_post(&mut posts).await;
        if let Some(value) = post["blocks"][1]["elements"][0]["value"].as_str() {
            assert!(
                text(&post)
                    .contains("approval needed: *deploy shop 1.2.0 to production (rolling)*"),
                "{post}"
            );
            break value.to_owned();
        }
    };
    assert!(text(&answer).contains(&plan_id), "{answer}");

    // The requester's own click is refused; another operator's goes through.
    let refused = button(http, "U_OP1", "approve_plan", &plan_id).await;
    assert!(
        text(&refused).contains("you asked for this deploy"),
        "{refused}"
    );
    let approved = button(http, "U_OP2", "approve_plan", &plan_id).await;
    assert!(
        text(&approved).contains("approved; now running"),
        "{approved}"
    );

    // The plan records who approved, in which role.
    let plans = slack(http, "U_VIEW", "plans shop").await;
    assert!(text(&plans).contains(&plan_id), "{plans}");
    let plan: Plan = Requester::service(client.clone(), "planner")
        .request(
            "plan.get",
            PlanGet {
                plan_id: plan_id.parse().unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(plan.requested_by, "toronto://chat/slack/U_OP1");
    assert_eq!(plan.decisions.len(), 1);
    // Who asked and who approved are the verified principals the bridge acted for.
    assert_eq!(plan.requested_by_principal.as_deref(), Some("op1"));
    assert_eq!(plan.decisions[0].by, "op2");
    assert_eq!(plan.decisions[0].role, "operator");
    assert!(plan.decisions[0].approved);

    planner_stop.cancel();
    planner.await.unwrap().unwrap();
    bridge_stop.cancel();
    bridge.await.unwrap().unwrap();
}
