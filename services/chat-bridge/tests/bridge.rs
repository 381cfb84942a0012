//! The chat bridge against a real nats-server: Slack and Mattermost slash commands
//! through its HTTP routes, role checks, approvals, and notifications to a webhook
//! server started here.

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
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::metrics::Metrics;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_testkit::NatsServer;

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
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.nats.request_timeout_ms = 3000;
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_chat_bridge::start_with(config, settings, shutdown.clone())
        .await
        .unwrap();
    let http = rt.http_addr.unwrap();
    let client = server.client().await;
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

    /// A fake planner: `submit`, `plan.get` and `plan.approve` record what reaches them.
    async fn fake_planner(&self, plan: Plan) -> Arc<Mutex<Vec<(String, Value)>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let host = ServiceHost::start(
            self.client.clone(),
            ServiceSpec {
                name: "fake-planner".into(),
                version: "0.0.1".into(),
                description: "test".into(),
                metadata: HashMap::new(),
                queue_group: "fake-planner".into(),
                source: "toronto://devops/planner".into(),
            },
            EndpointConfig::default(),
            Metrics::new(),
            None,
        )
        .await
        .unwrap();
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
            "plan.get",
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
            "plan.approve",
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
        task_id: uuid::Uuid::now_v7(),
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
    let ts = now() - 1;
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
    let form = serde_urlencoded::to_string([
        ("token", MM_TOKEN),
        ("text", "deploy shop 1.2.0 to qa"),
        ("user_id", "mm42"),
        ("user_name", "carol"),
    ])
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{}/mattermost/commands", b.http))
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert!(
        text(&answer).contains(&format!("plan {} accepted", plan.id)),
        "{answer}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    let wrong = serde_urlencoded::to_string([
        ("token", "guess"),
        ("text", "deploy shop 1.2.0 to qa"),
        ("user_id", "mm42"),
        ("user_name", "carol"),
    ])
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{}/mattermost/commands", b.http))
        .body(wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen.lock().unwrap().len(), 2);
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

/// Security and QA agents that pass every gate.
async fn passing_peers(client: &async_nats::Client) -> Vec<ServiceHost> {
    use toronto_protocol::tasks::{GateVerdict, QaTestRequest, SecurityScanRequest};
    let mut hosts = Vec::new();
    for (name, subject) in [
        ("fake-security", "toronto.agents.security.v1.scan"),
        ("fake-qa", "toronto.agents.qa.v1.test"),
    ] {
        let host = ServiceHost::start(
            client.clone(),
            ServiceSpec {
                name: name.into(),
                version: "0.0.1".into(),
                description: "test peer".into(),
                metadata: HashMap::new(),
                queue_group: name.into(),
                source: format!("toronto://agents/{name}"),
            },
            EndpointConfig::default(),
            Metrics::new(),
            None,
        )
        .await
        .unwrap();
        let pass = || GateVerdict {
            passed: true,
            reason: Some("clean".into()),
            findings: None,
        };
        if name == "fake-security" {
            host.add_endpoint(
                "scan",
                subject,
                move |_r: Request<SecurityScanRequest>| async move { Ok::<_, ErrorBody>(pass()) },
            )
            .await
            .unwrap();
        } else {
            host.add_endpoint(
                "test",
                subject,
                move |_r: Request<QaTestRequest>| async move { Ok::<_, ErrorBody>(pass()) },
            )
            .await
            .unwrap();
        }
        hosts.push(host);
    }
    hosts
}

fn button(user: &str, action: &str, plan_id: &str) -> String {
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase()},
        "channel": {"id": "C1"},
        "actions": [{"action_id": action, "value": plan_id}],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

#[tokio::test]
async fn a_production_deploy_from_slack_waits_for_another_operator_with_the_real_planner() {
    let (hook, mut posts) = webhook_server(0).await;
    let mut s = settings();
    s.group_window = Duration::from_millis(200);
    s.webhooks = vec![Webhook {
        name: "ops".into(),
        kind: ChatKind::Slack,
        url: Secret::new(hook),
    }];
    let b = bridge_with(s).await;
    let _peers = passing_peers(&b.client).await;
    let mut config = Config::default();
    config.nats.urls = vec![b.server.url()];
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

    let answer = b.slack("U_OP1", "deploy shop 1.2.0 to production").await;
    assert!(
        text(&answer).contains("production needs an approval by another operator"),
        "{answer}"
    );

    // The approval request reaches the channel with its buttons.
    let plan_id = loop {
        let (_, post) = next_post(&mut posts).await;
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
    let r = b
        .slack_raw(
            "/slack/interactions",
            &button("U_OP1", "approve_plan", &plan_id),
            SECRET,
            now(),
        )
        .await;
    let refused: Value = r.json().await.unwrap();
    assert!(
        text(&refused).contains("you asked for this deploy"),
        "{refused}"
    );
    let r = b
        .slack_raw(
            "/slack/interactions",
            &button("U_OP2", "approve_plan", &plan_id),
            SECRET,
            now(),
        )
        .await;
    let approved: Value = r.json().await.unwrap();
    assert!(
        text(&approved).contains("approved; now running"),
        "{approved}"
    );

    // The plan records who approved, in which role.
    let plans = b.slack("U_VIEW", "plans shop").await;
    assert!(text(&plans).contains(&plan_id), "{plans}");
    let req = Envelope::builder(
        "toronto://test",
        PlanGet {
            plan_id: plan_id.parse().unwrap(),
        },
    )
    .build();
    let plan: Envelope<Plan> = toronto_runtime::rpc::call(
        &b.client,
        "toronto.devops.v1.planner.plan.get",
        &req,
        toronto_protocol::Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(plan.data.requested_by, "toronto://chat/slack/U_OP1");
    assert_eq!(plan.data.decisions.len(), 1);
    assert_eq!(plan.data.decisions[0].by, "U_OP2");
    assert_eq!(plan.data.decisions[0].role, "operator");
    assert!(plan.data.decisions[0].approved);

    planner_stop.cancel();
    planner.await.unwrap().unwrap();
    b.stop().await;
}

/// The incident commander's `incident.action` as its branch defines it (strict, like the
/// real one), to check that what the bridge sends would be taken.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct IncidentAction {
    id: uuid::Uuid,
    by: String,
    #[serde(default)]
    reason: Option<String>,
}

impl toronto_protocol::Message for IncidentAction {
    const NAME: &'static str = "incident.action";
    const MAJOR: u32 = 1;
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SilenceCreate {
    matchers: Vec<SilenceMatcher>,
    #[serde(default)]
    starts_at: Option<chrono::DateTime<chrono::Utc>>,
    ends_at: chrono::DateTime<chrono::Utc>,
    created_by: String,
    comment: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct SilenceMatcher {
    name: String,
    value: String,
    is_regex: bool,
    is_equal: bool,
}

impl toronto_protocol::Message for SilenceCreate {
    const NAME: &'static str = "incident.silence.create";
    const MAJOR: u32 = 1;
}

/// A loose reply (an incident or a silence).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Loose(Value);

impl toronto_protocol::Message for Loose {
    const NAME: &'static str = "incident";
    const MAJOR: u32 = 1;
}

#[tokio::test]
async fn incident_work_from_chat_reaches_the_incident_commander() {
    let b = bridge_with(settings()).await;
    let host = ServiceHost::start(
        b.client.clone(),
        ServiceSpec {
            name: "fake-incident-commander".into(),
            version: "0.0.1".into(),
            description: "test".into(),
            metadata: HashMap::new(),
            queue_group: "fake-incident-commander".into(),
            source: "toronto://devops/incident".into(),
        },
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let seen = acks.clone();
    host.add_endpoint(
        "ack",
        "toronto.devops.v1.incident.ack",
        move |req: Request<IncidentAction>| {
            seen.lock().unwrap().push(req.data().clone());
            let id = req.data().id;
            async move {
                Ok::<_, ErrorBody>(Loose(serde_json::json!({
                    "id": id, "title": "shop errors", "state": "acknowledged", "severity": "sev2"
                })))
            }
        },
    )
    .await
    .unwrap();
    let silences = Arc::new(Mutex::new(Vec::new()));
    let seen = silences.clone();
    host.add_endpoint(
        "silence.create",
        "toronto.devops.v1.incident.silence.create",
        move |req: Request<SilenceCreate>| {
            seen.lock().unwrap().push(req.data().clone());
            async move {
                Ok::<_, ErrorBody>(Loose(serde_json::json!({
                    "id": "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a9"
                })))
            }
        },
    )
    .await
    .unwrap();

    let incident = "0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2";
    let answer = b.slack("U_OP1", &format!("ack {incident}")).await;
    assert!(
        text(&answer).contains(&format!("incident {incident} is acknowledged")),
        "{answer}"
    );
    assert_eq!(acks.lock().unwrap()[0].by, "U_OP1");

    let answer = b
        .slack("U_OP2", "silence service=shop,env=~stag.* for 2h load test")
        .await;
    assert!(
        text(&answer).contains(
            "silence 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a9 for 2h on service=shop,env=~stag.*"
        ),
        "{answer}"
    );
    let silence = silences.lock().unwrap()[0].clone();
    assert_eq!(silence.created_by, "U_OP2");
    assert_eq!(silence.comment, "load test");
    assert!(silence.matchers[1].is_regex);

    // A viewer may not silence.
    let answer = b.slack("U_VIEW", "silence service=shop for 1h").await;
    assert!(
        text(&answer).contains("needs the operator role"),
        "{answer}"
    );
    assert_eq!(silences.lock().unwrap().len(), 1);
    host.stop(Duration::from_millis(100)).await;
    b.stop().await;
}
