//! The HTTP side: pages, the live event feed, actions. Routes exist before the
//! console is connected; until then pages answer 503.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::broadcast;
use toronto_commands::{Actor, Command, Role};
use uuid::Uuid;

use crate::auth::{Viewer, cookie_token, csrf_ok};
use crate::data::{Action, Backend, ConsoleError};
use crate::history::SloHistory;
use crate::html::{CSS, LIVE_JS};
use crate::pages::{self, Overview, View};
use crate::settings::Settings;

/// What the console has once it is connected.
#[derive(Debug, Clone)]
pub struct Live {
    /// Requests to the services.
    pub backend: Backend,
    /// Names of events as they pass (`rollout.progressed`).
    pub events: broadcast::Sender<String>,
    /// SLO budget history.
    pub history: SloHistory,
    /// The identity registry (who may log in, whom the console may act for).
    pub registry: Option<toronto_runtime::auth::Registry>,
}

/// The state every handler gets.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The console's settings.
    pub settings: Arc<Settings>,
    /// Set once connected.
    pub live: Arc<OnceLock<Live>>,
    /// Open login sessions.
    pub sessions: crate::login::Sessions,
}

impl AppState {
    pub(crate) fn live(&self) -> Result<&Live, ConsoleError> {
        self.live.get().ok_or(ConsoleError::Starting)
    }
}

/// The console's routes, under the base path.
pub fn routes(state: AppState) -> Router {
    let base = state.settings.base_path.clone();
    let inner = Router::new()
        .route("/", get(overview))
        .route("/rollouts", get(rollouts))
        .route("/rollouts/{id}", get(rollout))
        .route("/rollouts/{id}/{verb}", post(rollout_action))
        .route("/plans", get(plans))
        .route("/plans/{id}", get(plan))
        .route("/plans/{id}/{verb}", post(plan_action))
        .route("/incidents", get(incidents))
        .route("/incidents/{id}", get(incident))
        .route("/incidents/{id}/{verb}", post(incident_action))
        .route("/slos", get(slos))
        .route("/dora", get(dora))
        .route("/events", get(events))
        .route(
            "/login",
            get(crate::login::login_page).post(crate::login::login_submit),
        )
        .route("/logout", post(crate::login::logout))
        .route("/assets/console.css", get(css))
        .route("/assets/live.js", get(js))
        .fallback(not_found);
    if base.is_empty() {
        inner.with_state(state)
    } else {
        // `/ops` and `/ops/` are both the overview.
        Router::new()
            .route(&format!("{base}/"), get(overview))
            .nest(&base, inner)
            .fallback(not_found)
            .with_state(state)
    }
}

/// Headers every page carries: no caching, no framing, scripts and styles only from
/// the console itself.
pub(crate) fn page_response(status: StatusCode, viewer: &Viewer, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    if let Some(cookie) = &viewer.set_cookie
        && let Ok(v) = HeaderValue::from_str(cookie)
    {
        h.insert(header::SET_COOKIE, v);
    }
    response
}

fn respond(viewer: &Viewer, result: Result<View, ConsoleError>) -> Response {
    match result {
        Ok(view) => page_response(StatusCode::OK, viewer, view.render(&viewer.ctx)),
        Err(e) => error_response(viewer, &e),
    }
}

pub(crate) fn error_response(viewer: &Viewer, e: &ConsoleError) -> Response {
    let status = e.status();
    if status >= 500 {
        tracing::warn!(error = %e, "console page failed");
    }
    let view = pages::error(&viewer.ctx, status, &e.to_string());
    page_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        viewer,
        view.render(&viewer.ctx),
    )
}

fn page_number(query: Option<&str>) -> usize {
    let pairs: HashMap<String, String> = query
        .filter(|q| q.len() <= 256)
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    pairs
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0)
        .min(1000)
}

fn parse_id(id: &str, what: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(id).map_err(|_| ConsoleError::NotFound(format!("{what} (unknown id)")))
}

async fn overview(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let live = state.live()?;
        let b = &live.backend;
        let size = state.settings.page_size;
        let (health, active, open, slos, plans) = tokio::join!(
            b.health(),
            b.rollouts(true, 0, size),
            b.incidents(true, 0, size),
            b.slos(),
            b.plans(0, 10),
        );
        let open = open?;
        let o = Overview {
            health,
            active: active?.rows,
            more_open: open.has_next,
            open: open.rows,
            slos: slos?,
            plans: plans?.rows,
        };
        Ok(pages::overview(&viewer.ctx, &o))
    }
    .await;
    respond(&viewer, result)
}

async fn rollouts(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(q): RawQuery,
) -> Response {
    let result = async {
        let page = state
            .live()?
            .backend
            .rollouts(false, page_number(q.as_deref()), state.settings.page_size)
            .await?;
        Ok(pages::lists::rollouts(&viewer.ctx, &page))
    }
    .await;
    respond(&viewer, result)
}

async fn rollout(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let id = parse_id(&id, "rollout")?;
        let r = state.live()?.backend.rollout(id).await?;
        Ok(pages::rollout::page(&viewer.ctx, &r))
    }
    .await;
    respond(&viewer, result)
}

async fn plans(State(state): State<AppState>, viewer: Viewer, RawQuery(q): RawQuery) -> Response {
    let result = async {
        let page = state
            .live()?
            .backend
            .plans(page_number(q.as_deref()), state.settings.page_size)
            .await?;
        Ok(pages::lists::plans(&viewer.ctx, &page))
    }
    .await;
    respond(&viewer, result)
}

async fn plan(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let result = async {
        let id = parse_id(&id, "plan")?;
        let p = state.live()?.backend.plan(id).await?;
        Ok(pages::plan::page(&viewer.ctx, &p))
    }
    .await;
    respond(&viewer, result)
}

async fn incidents(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(q): RawQuery,
) -> Response {
    let result = async {
        let page = state
            .live()?
            .backend
            .incidents(false, page_number(q.as_deref()), state.settings.page_size)
            .await?;
        Ok(pages::lists::incidents(&viewer.ctx, &page))
    }
    .await;
    respond(&viewer, result)
}

async fn incident(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let id = parse_id(&id, "incident")?;
        let b = &state.live()?.backend;
        let i = b.incident(id).await?;
        let pm = if i.state == toronto_protocol::incidents::IncidentState::Closed {
            b.postmortem(id).await.ok()
        } else {
            None
        };
        Ok(pages::incident::page(&viewer.ctx, &i, pm.as_ref()))
    }
    .await;
    respond(&viewer, result)
}

async fn slos(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let live = state.live()?;
        let slos = live.backend.slos().await?;
        Ok(pages::slo::page(&viewer.ctx, &slos, &live.history))
    }
    .await;
    respond(&viewer, result)
}

/// At most this many service and environment pairs on the DORA page.
const DORA_PAIRS: usize = 24;

/// Weeks in the DORA page's trend.
const TREND_WEEKS: u32 = 4;

async fn dora(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let b = &state.live()?.backend;
        let (slos, recent) = tokio::join!(b.slos(), b.rollouts(false, 0, 100));
        let mut pairs = BTreeSet::new();
        for r in recent?.rows {
            pairs.insert((r.service, r.environment));
        }
        for e in slos? {
            pairs.insert((e.definition.service, e.definition.environment));
        }
        let asks = pairs
            .into_iter()
            .take(DORA_PAIRS)
            .map(|(service, environment)| async move {
                let report = b.dora(&service, &environment, 30, TREND_WEEKS).await;
                pages::slo::DoraRow {
                    service,
                    environment,
                    report: report.map_err(|e| e.to_string()),
                }
            });
        let rows = futures::future::join_all(asks).await;
        Ok(pages::slo::dora(&viewer.ctx, &rows))
    }
    .await;
    respond(&viewer, result)
}

async fn events(State(state): State<AppState>) -> Response {
    let Some(live) = state.live.get() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let rx = live.events.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(name) => Some((Ok::<_, Infallible>(Event::default().data(name)), rx)),
            // A slow reader missed some: one refresh covers them all.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Some((Ok(Event::default().data("lagged")), rx))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        LIVE_JS,
    )
        .into_response()
}

async fn not_found(viewer: Viewer) -> Response {
    error_response(&viewer, &ConsoleError::NotFound("page".into()))
}

/// The form every action posts.
#[derive(Debug, serde::Deserialize)]
struct ActionForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// The most a form may weigh.
const MAX_FORM: usize = 4096;

/// Checks identity, registration, role and CSRF token; the actor and the reason given.
fn authorize(
    viewer: &Viewer,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Actor, Option<String>), ConsoleError> {
    let Some(user) = viewer.ctx.user.clone() else {
        return Err(ConsoleError::Unauthorized);
    };
    if !viewer.ctx.console_signs {
        return Err(ConsoleError::ReadOnly);
    }
    if !viewer.ctx.registered {
        return Err(ConsoleError::NotRegistered(user));
    }
    let role = viewer.role.unwrap_or(Role::Viewer);
    if role < Role::Operator {
        return Err(ConsoleError::Forbidden(format!(
            "{user} has the role {role}; actions need operator"
        )));
    }
    if body.len() > MAX_FORM {
        return Err(ConsoleError::BadRequest("form too large".into()));
    }
    let form: ActionForm = serde_urlencoded::from_bytes(body)
        .map_err(|e| ConsoleError::BadRequest(format!("unreadable form: {e}")))?;
    if !csrf_ok(cookie_token(headers).as_deref(), form.csrf.as_deref()) {
        return Err(ConsoleError::Forbidden(
            "the form's token does not match this browser session; reload the page and try again"
                .into(),
        ));
    }
    let reason = form
        .reason
        .map(|r| r.trim().chars().take(500).collect::<String>())
        .filter(|r| !r.is_empty());
    let actor = Actor {
        source: format!("toronto://console/users/{user}"),
        id: user,
        role,
    };
    Ok((actor, reason))
}

pub(crate) fn redirect(viewer: &Viewer, path: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&viewer.ctx.href(path)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

async fn plan_action(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = async {
        let (actor, reason) = authorize(&viewer, &headers, &body)?;
        let plan_id = parse_id(&id, "plan")?;
        let command = match verb.as_str() {
            "approve" => Command::Approve { plan_id },
            "reject" => Command::Reject { plan_id, reason },
            _ => return Err(ConsoleError::NotFound("action".into())),
        };
        state
            .live()?
            .backend
            .act(Action::Plan(command), &actor)
            .await?;
        tracing::info!(user = %actor.id, %verb, %plan_id, "console action");
        Ok(format!("/plans/{plan_id}"))
    }
    .await;
    match result {
        Ok(path) => redirect(&viewer, &path),
        Err(e) => error_response(&viewer, &e),
    }
}

async fn rollout_action(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = async {
        let (actor, reason) = authorize(&viewer, &headers, &body)?;
        let id = parse_id(&id, "rollout")?;
        let verb = match verb.as_str() {
            "promote" => "rollout.promote",
            "pause" => "rollout.pause",
            "resume" => "rollout.resume",
            "abort" => "rollout.abort",
            _ => return Err(ConsoleError::NotFound("action".into())),
        };
        let b = &state.live()?.backend;
        let rollout = b.rollout(id).await?;
        let reason = reason.or_else(|| {
            (verb == "rollout.abort").then(|| format!("aborted by {} from the console", actor.id))
        });
        b.act(
            Action::Rollout {
                verb,
                id,
                service: rollout.service,
                reason,
            },
            &actor,
        )
        .await?;
        tracing::info!(user = %actor.id, verb, %id, "console action");
        Ok(format!("/rollouts/{id}"))
    }
    .await;
    match result {
        Ok(path) => redirect(&viewer, &path),
        Err(e) => error_response(&viewer, &e),
    }
}

async fn incident_action(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = async {
        let (actor, _reason) = authorize(&viewer, &headers, &body)?;
        let incident_id = parse_id(&id, "incident")?;
        let command = match verb.as_str() {
            "ack" => Command::Ack { incident_id },
            "resolve" => Command::Resolve { incident_id },
            _ => return Err(ConsoleError::NotFound("action".into())),
        };
        state
            .live()?
            .backend
            .act(Action::Incident(command), &actor)
            .await?;
        tracing::info!(user = %actor.id, %verb, %incident_id, "console action");
        Ok(format!("/incidents/{incident_id}"))
    }
    .await;
    match result {
        Ok(path) => redirect(&viewer, &path),
        Err(e) => error_response(&viewer, &e),
    }
}
