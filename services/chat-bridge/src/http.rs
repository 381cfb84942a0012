//! The chat routes: Slack slash commands and interactive buttons, Mattermost slash
//! commands. Slack requests are verified over the raw body before it is parsed.
//!
//! | route | from | body |
//! |---|---|---|
//! | `POST /slack/commands` | Slack slash command | form (`text`, `user_id`, `user_name`, `channel_id`, `response_url`), signed |
//! | `POST /slack/interactions` | Slack block actions (Approve / Reject buttons) | form field `payload` (JSON), signed |
//! | `POST /mattermost/commands` | Mattermost slash command, or outgoing webhook | form (`token`, `text`, `user_id`, `user_name`, `channel_id`, `response_url`), or JSON (`application/json`: the same fields and `trigger_word`, stripped from `text`) |

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use toronto_commands::Command;

use crate::exec::{Bridge, Invocation, Reply};
use crate::markup::{self, Part};
use crate::settings::{ChatKind, Settings};
use crate::verify::{ReplayError, ReplayGuard, token_matches, verify_slack};
use crate::webclient::WebClient;

/// How long a post to a response URL may take.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the routes share. The bridge is set once the service is connected; until then
/// the routes answer 503.
#[derive(Debug, Clone)]
pub struct HttpState {
    settings: Arc<Settings>,
    replay: Arc<ReplayGuard>,
    bridge: Arc<OnceLock<Bridge>>,
    http: WebClient,
}

impl HttpState {
    /// State over `settings`; the bridge is filled in through `bridge` later.
    pub fn new(settings: Arc<Settings>, bridge: Arc<OnceLock<Bridge>>) -> Self {
        Self {
            settings,
            replay: Arc::new(ReplayGuard::default()),
            bridge,
            http: WebClient::new(),
        }
    }

    /// The Slack replay guard, to connect once the service is connected
    /// ([`ReplayGuard::connect`]); until then Slack requests answer 503.
    pub fn replay_guard(&self) -> &ReplayGuard {
        &self.replay
    }
}

/// The chat routes.
pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/slack/commands", post(slack_commands))
        .route("/slack/interactions", post(slack_interactions))
        .route("/mattermost/commands", post(mattermost_commands))
        .with_state(state)
}

/// A refused request: its status and the reason, as plain text.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Refusal {
    Refusal(status, why.into())
}

fn form(body: &[u8]) -> Result<HashMap<String, String>, Refusal> {
    serde_urlencoded::from_bytes(body)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the body is not a form"))
}

fn field(form: &HashMap<String, String>, name: &str) -> Option<String> {
    form.get(name).filter(|v| !v.is_empty()).cloned()
}

impl HttpState {
    async fn verify_slack(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        let Some(secret) = &self.settings.slack_signing_secret else {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "Slack is not configured (TORONTO_CHAT_SLACK_SIGNING_SECRET)",
            ));
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let timestamp = header("x-slack-request-timestamp");
        let signature = header("x-slack-signature");
        let now = chrono::Utc::now().timestamp();
        let verified = verify_slack(secret.expose().as_bytes(), timestamp, signature, body, now)
            .map_err(|e| {
                tracing::warn!(reason = %e, "refused a Slack request");
                refuse(StatusCode::UNAUTHORIZED, e.to_string())
            })?;
        self.replay.check(&verified).await.map_err(|e| match e {
            ReplayError::Replayed => {
                tracing::warn!(reason = %e, "refused a Slack request");
                refuse(StatusCode::UNAUTHORIZED, e.to_string())
            }
            ReplayError::NotConnected | ReplayError::Unavailable { .. } => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "refused a Slack request: no replay guard");
                refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        })
    }

    fn bridge(&self) -> Result<Bridge, Refusal> {
        self.bridge.get().cloned().ok_or_else(|| {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the chat bridge is starting",
            )
        })
    }

    /// Runs the command; answers within the reply wait, or says it is working on it and
    /// sends the answer to `response_url` later.
    async fn run(
        &self,
        inv: Invocation,
        parsed: Option<Command>,
        kind: ChatKind,
        response_url: Option<String>,
    ) -> Result<Option<Reply>, Refusal> {
        let bridge = self.bridge()?;
        let task_inv = inv.clone();
        let mut task = tokio::spawn(async move { bridge.handle(&task_inv, parsed).await });
        match tokio::time::timeout(self.settings.reply_wait, &mut task).await {
            Ok(Ok(reply)) => Ok(Some(reply)),
            Ok(Err(_)) => Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the command failed unexpectedly",
            )),
            Err(_) => {
                if let Some(url) = response_url {
                    let http = self.http.clone();
                    tokio::spawn(async move {
                        if let Ok(reply) = task.await {
                            let body = chat_reply(kind, &inv, &reply, false);
                            if let Err(e) = http.post_json(&url, &body, RESPONSE_TIMEOUT).await {
                                tracing::warn!(error = %e, "cannot post a late reply to the response URL");
                            }
                        }
                    });
                }
                Ok(None)
            }
        }
    }
}

/// A user id safe to put in a Slack mention (`<@U024BE7LH>`).
fn mentionable(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The JSON answer of a slash command (and of a late reply to its response URL).
pub fn chat_reply(kind: ChatKind, inv: &Invocation, reply: &Reply, replace: bool) -> Value {
    let mut text = String::new();
    if reply.public {
        let who = match kind {
            ChatKind::Slack if mentionable(&inv.user_id) => format!("<@{}>", inv.user_id),
            _ => markup::escape(kind, inv.user_name.as_deref().unwrap_or(&inv.user_id)),
        };
        text.push_str(&who);
        text.push_str(" ran ");
        text.push_str(&markup::render(kind, &[Part::Code(inv.text.clone())]));
        text.push('\n');
    }
    text.push_str(&markup::reply_block(kind, &reply.text));
    let mut body = json!({
        "response_type": if reply.public { "in_channel" } else { "ephemeral" },
        "text": text,
    });
    if kind == ChatKind::Slack {
        body["replace_original"] = json!(replace);
    }
    body
}

fn working(kind: ChatKind, inv: &Invocation) -> Value {
    json!({
        "response_type": "ephemeral",
        "text": format!(
            "working on {}; the answer follows",
            markup::render(kind, &[Part::Code(inv.text.clone())])
        ),
    })
}

async fn slack_commands(State(st): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = st.verify_slack(&headers, &body).await {
        return r.into_response();
    }
    let form = match form(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    // Slack checks the certificate of a slash command URL with `ssl_check=1`.
    if form.get("ssl_check").is_some_and(|v| v == "1") {
        return StatusCode::OK.into_response();
    }
    let Some(user_id) = field(&form, "user_id") else {
        return refuse(StatusCode::BAD_REQUEST, "user_id is missing").into_response();
    };
    let inv = Invocation {
        platform: "slack",
        user_id,
        user_name: field(&form, "user_name"),
        channel: field(&form, "channel_id"),
        text: form.get("text").cloned().unwrap_or_default(),
    };
    answer(
        &st,
        inv,
        None,
        ChatKind::Slack,
        field(&form, "response_url"),
    )
    .await
}

async fn answer(
    st: &HttpState,
    inv: Invocation,
    parsed: Option<Command>,
    kind: ChatKind,
    response_url: Option<String>,
) -> Response {
    match st.run(inv.clone(), parsed, kind, response_url).await {
        Ok(Some(reply)) => axum::Json(chat_reply(kind, &inv, &reply, false)).into_response(),
        Ok(None) => axum::Json(working(kind, &inv)).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn slack_interactions(
    State(st): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = st.verify_slack(&headers, &body).await {
        return r.into_response();
    }
    let form = match form(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let Some(payload) = form
        .get("payload")
        .and_then(|p| toronto_protocol::codec::from_json_bounded::<Value>(p.as_bytes()).ok())
    else {
        return refuse(StatusCode::BAD_REQUEST, "payload is missing or not JSON").into_response();
    };
    let Some(user_id) = payload["user"]["id"].as_str().map(str::to_owned) else {
        return refuse(StatusCode::BAD_REQUEST, "user.id is missing").into_response();
    };
    let action = &payload["actions"][0];
    let plan_id = action["value"]
        .as_str()
        .and_then(|v| uuid::Uuid::parse_str(v).ok());
    let (command, text) = match (action["action_id"].as_str(), plan_id) {
        (Some("approve_plan"), Some(plan_id)) => {
            (Command::Approve { plan_id }, format!("approve {plan_id}"))
        }
        (Some("reject_plan"), Some(plan_id)) => (
            Command::Reject {
                plan_id,
                reason: Some("rejected with the chat button".into()),
            },
            format!("reject {plan_id}"),
        ),
        _ => return refuse(StatusCode::BAD_REQUEST, "not an action of the bridge").into_response(),
    };
    let inv = Invocation {
        platform: "slack",
        user_id,
        user_name: payload["user"]["username"]
            .as_str()
            .or(payload["user"]["name"].as_str())
            .map(str::to_owned),
        channel: payload["channel"]["id"].as_str().map(str::to_owned),
        text,
    };
    let response_url = payload["response_url"].as_str().map(str::to_owned);
    let reply = match st
        .run(
            inv.clone(),
            Some(command),
            ChatKind::Slack,
            response_url.clone(),
        )
        .await
    {
        Ok(Some(reply)) => reply,
        Ok(None) => return axum::Json(working(ChatKind::Slack, &inv)).into_response(),
        Err(r) => return r.into_response(),
    };
    // Slack ignores the body of a block-action answer: the result goes to the
    // response URL (as a new message, so the buttons stay for others after a refusal).
    let body = chat_reply(ChatKind::Slack, &inv, &reply, false);
    if let Some(url) = response_url {
        let (http, body) = (st.http.clone(), body.clone());
        tokio::spawn(async move {
            if let Err(e) = http.post_json(&url, &body, RESPONSE_TIMEOUT).await {
                tracing::warn!(error = %e, "cannot post to the response URL");
            }
        });
    }
    axum::Json(body).into_response()
}

/// What Mattermost sends: a slash command (a form) or an outgoing webhook (JSON, whose
/// `text` starts with the `trigger_word` that fired it).
fn mattermost_fields(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(HashMap<String, String>, bool), Refusal> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("application/json"));
    if !json {
        return form(body).map(|f| (f, false));
    }
    let value: serde_json::Value = toronto_protocol::codec::from_json_bounded(body)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the body is not JSON"))?;
    let Some(object) = value.as_object() else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the body is not a JSON object",
        ));
    };
    // Only the string fields matter (Mattermost sends `timestamp` as a number).
    let mut fields: HashMap<String, String> = object
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    if let Some(trigger) = fields.get("trigger_word").cloned()
        && let Some(text) = fields.get_mut("text")
        && let Some(rest) = text.trim_start().strip_prefix(trigger.as_str())
    {
        *text = rest.trim_start().to_owned();
    }
    Ok((fields, true))
}

async fn mattermost_commands(
    State(st): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if st.settings.mattermost_tokens.is_empty() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Mattermost is not configured (TORONTO_CHAT_MATTERMOST_TOKEN)",
        )
        .into_response();
    }
    let (form, outgoing) = match mattermost_fields(&headers, &body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let Some(token) = field(&form, "token") else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "the token is missing: send a slash command (a form) or an outgoing webhook (JSON) with Mattermost's token",
        )
        .into_response();
    };
    if !token_matches(&token, &st.settings.mattermost_tokens) {
        tracing::warn!("refused a Mattermost request with a wrong token");
        return refuse(StatusCode::UNAUTHORIZED, "the token does not match").into_response();
    }
    let Some(user_id) = field(&form, "user_id") else {
        return refuse(StatusCode::BAD_REQUEST, "user_id is missing").into_response();
    };
    let inv = Invocation {
        platform: "mattermost",
        user_id,
        user_name: field(&form, "user_name"),
        channel: field(&form, "channel_id"),
        text: form.get("text").cloned().unwrap_or_default(),
    };
    // An outgoing webhook has no response URL: its answer is the reply itself.
    let response_url = if outgoing {
        None
    } else {
        field(&form, "response_url")
    };
    answer(&st, inv, None, ChatKind::Mattermost, response_url).await
}
