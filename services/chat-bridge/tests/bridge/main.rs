//! The chat bridge against a real nats-server: Slack and Mattermost slash commands
//! through its HTTP routes, role checks, approvals, and notifications to a webhook
//! server started here. One binary, one module per concern: [`commands`],
//! [`notifications`] and [`incidents`]. A planner stands in as a fake here; the bridge
//! with the real planner is a scenario of `tests/e2e`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toronto_chat_bridge::settings::{ChatKind, Secret, Webhook};
use toronto_chat_bridge::verify::slack_signature;
use toronto_chat_bridge::{Config, Settings};
use toronto_commands::Role;
use toronto_protocol::alerts::{Alert, AlertStatus};
use toronto_protocol::chat::ChatCommandRecord;
use toronto_protocol::rollout::{Rollout, RolloutPhase};
use toronto_protocol::tasks::{
    DeployTask, Plan, PlanDecision, PlanGet, PlanState, PlanTask, Step, StepKind, StepState,
    Strategy, SubmitAccepted,
};
use toronto_protocol::{Envelope, ErrorBody, ErrorCode};
use toronto_runtime::service::Request;
use toronto_testkit::{NatsServer, fake_service};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const MM_TOKEN: &str = "mm-token-1";

struct Bridge {
    server: NatsServer,
    client: async_nats::Client,
    http: SocketAddr,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>,
}

fn settings() -> Settings {
    Settings {
        slack_signing_secret: Some(Secret::new(SECRET)),
        mattermost_tokens: vec![Secret::new(MM_TOKEN)],
        roles: HashMap::from([
            ("slack:U_VIEW".to_owned(), Role::Viewer),
            ("U_OP1".to_owned(), Role::Operator),
            ("U_OP2".to_owned(), Role::Operator),
            ("carol".to_owned(), Role::Admin),
        ]),
        default_role: None,
        ..Settings::default()
    }
}

async fn bridge_with(settings: Settings) -> Bridge {
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.nats.request_timeout_ms = 3000;
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_chat_bridge::start_with(config, settings, shutdown.clone())
        .await
        .unwrap();
    let http = rt.http_addr.unwrap();
    let client = server.client().await;
    // The chat users are principals of the registry; the bridge acts on their behalf.
    use toronto_protocol::auth::Role as R;
    for (id, chat, roles) in [
        ("viewer", "slack:U_VIEW", vec![]),
        ("op1", "slack:U_OP1", vec![R::Operator, R::Approver]),
        ("op2", "slack:U_OP2", vec![R::Operator, R::Approver]),
        ("carol", "mattermost:mm42", vec![R::Admin]),
    ] {
        toronto_testkit::person(&client, id, &roles, &[chat]).await;
    }
    Bridge {
        server,
        client,
        http,
        shutdown,
        running: tokio::spawn(rt.run_until_shutdown()),
    }
}

impl Bridge {
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
        drop(self.server);
    }

    /// POSTs a form to a Slack route, signed with `secret` at `timestamp`.
    async fn slack_raw(
        &self,
        path: &str,
        body: &str,
        secret: &str,
        timestamp: i64,
    ) -> reqwest::Response {
        let ts = timestamp.to_string();
        let signature = slack_signature(secret.as_bytes(), &ts, body.as_bytes());
        reqwest::Client::new()
            .post(format!("http://{}{path}", self.http))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// A slash command from `user`, correctly signed now; returns the JSON answer.
    async fn slack(&self, user: &str, text: &str) -> Value {
        let body = command_form(user, text);
        let r = self
            .slack_raw("/slack/commands", &body, SECRET, now())
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// A Mattermost slash command from `carol` (user `mm42`) with `token`.
    async fn mattermost(&self, token: &str, text: &str) -> reqwest::Response {
        let form = serde_urlencoded::to_string([
            ("token", token),
            ("text", text),
            ("user_id", "mm42"),
            ("user_name", "carol"),
        ])
        .unwrap();
        reqwest::Client::new()
            .post(format!("http://{}/mattermost/commands", self.http))
            .body(form)
            .send()
            .await
            .unwrap()
    }

    /// A Mattermost outgoing webhook (JSON) from `carol`, fired by `trigger` at the
    /// start of `text`.
    async fn mattermost_outgoing(
        &self,
        token: &str,
        trigger: &str,
        text: &str,
    ) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("http://{}/mattermost/commands", self.http))
            .json(&serde_json::json!({
                "token": token, "team_id": "t1", "team_domain": "acme", "channel_id": "c1",
                "channel_name": "ops", "timestamp": 1764150000000u64, "user_id": "mm42",
                "user_name": "carol", "post_id": "p1", "text": format!("{trigger} {text}"),
                "trigger_word": trigger, "file_ids": "",
            }))
            .send()
            .await
            .unwrap()
    }

    /// A fake planner: `submit`, `plan.get` and `plan.approve` record what reaches them.
    async fn fake_planner(&self, plan: Plan) -> Arc<Mutex<Vec<(String, Value)>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let host = fake_service(&self.client, "fake-planner", "toronto://devops/planner").await;
        let (s, id) = (seen.clone(), plan.id);
        host.add_endpoint(
            "submit",
            "toronto.devops.v1.planner.submit",
            move |req: Request<DeployTask>| {
                s.lock().unwrap().push((
                    req.envelope.source.clone(),
                    serde_json::to_value(req.data()).unwrap(),
                ));
                async move {
                    Ok::<_, ErrorBody>(SubmitAccepted {
                        plan_id: id,
                        duplicate: false,
                    })
                }
            },
        )
        .await
        .unwrap();
        let stored = plan.clone();
        host.add_endpoint(
            "plan-get",
            "toronto.devops.v1.planner.plan.get",
            move |req: Request<PlanGet>| {
                let plan = stored.clone();
                async move {
                    if req.data().plan_id == plan.id {
                        Ok(plan)
                    } else {
                        Err(ErrorBody::new(ErrorCode::NotFound, "no such plan"))
                    }
                }
            },
        )
        .await
        .unwrap();
        let (s, stored) = (seen.clone(), plan.clone());
        host.add_endpoint(
            "plan-approve",
            "toronto.devops.v1.planner.plan.approve",
            move |req: Request<PlanDecision>| {
                s.lock()
                    .unwrap()
                    .push(("approve".into(), serde_json::to_value(req.data()).unwrap()));
                let mut plan = stored.clone();
                plan.state = PlanState::Running;
                async move { Ok::<_, ErrorBody>(plan) }
            },
        )
        .await
        .unwrap();
        // The host lives as long as the connection; leak it for the test's duration.
        std::mem::forget(host);
        seen
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn command_form(user: &str, text: &str) -> String {
    serde_urlencoded::to_string([
        ("command", "/devops"),
        ("text", text),
        ("user_id", user),
        ("user_name", &user.to_lowercase()),
        ("channel_id", "C1"),
    ])
    .unwrap()
}

fn production_plan(requested_by: &str) -> Plan {
    let mut approval = Step::new("approval", StepKind::Approval);
    approval.state = StepState::Waiting;
    Plan {
        id: uuid::Uuid::now_v7(),
        task_id: uuid::Uuid::now_v7().to_string(),
        task: PlanTask::Deploy(Box::new(DeployTask {
            service: "shop".into(),
            version: "1.2.0".into(),
            image: None,
            environment: "production".into(),
            strategy: Strategy::Rolling,
            change: None,
            fix: false,
            policy_override: None,
        })),
        state: PlanState::Waiting,
        requested_by: requested_by.into(),
        requested_by_principal: None,
        correlationid: "c".into(),
        intake: "submit".into(),
        created_at: chrono::Utc::now(),
        cancellation: None,
        steps: vec![approval],
        reason: None,
        decisions: vec![],
        updated_at: None,
        artifacts: vec![],
        lease: None,
        delegation: None,
    }
}

fn text(v: &Value) -> &str {
    v["text"].as_str().unwrap_or_default()
}

/// A webhook server: answers the first `throttle` posts with 429 (Retry-After 1), then
/// 200; every post is reported with the status it got.
async fn webhook_server(throttle: usize) -> (String, mpsc::UnboundedReceiver<(u16, Value)>) {
    #[derive(Clone)]
    struct Hook {
        count: Arc<Mutex<usize>>,
        throttle: usize,
        tx: mpsc::UnboundedSender<(u16, Value)>,
    }
    async fn receive(
        State(h): State<Hook>,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::response::Response {
        let n = {
            let mut c = h.count.lock().unwrap();
            *c += 1;
            *c
        };
        if n <= h.throttle {
            let _ = h.tx.send((429, body));
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "rate limited",
            )
                .into_response();
        }
        let _ = h.tx.send((200, body));
        "ok".into_response()
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Hook {
            count: Arc::new(Mutex::new(0)),
            throttle,
            tx,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

async fn next_post(rx: &mut mpsc::UnboundedReceiver<(u16, Value)>) -> (u16, Value) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a post reaches the webhook")
        .unwrap()
}

mod commands;
mod incidents;
mod notifications;
mod replay;
