//! The chat bridge: slash commands, approvals in chat, notifications.
//!
//! This crate is the service as a library (`run(config, shutdown)`); its binary is a
//! thin `main`, and `toronto up` starts the same function in-process.
//!
//! - **Commands**: Slack and Mattermost slash commands ([`http`]) are authenticated
//!   ([`verify`]: Slack's v0 signature over the raw body, a 5-minute window and no
//!   replays; Mattermost's token), parsed with the one grammar of `toronto-commands`,
//!   checked against the user's role ([`settings::Settings::roles`]), sent as typed
//!   NATS requests, and answered with text ([`exec`]). Nobody approves their own plan.
//!   Slack's Approve / Reject buttons decide on plans waiting for approval. Every
//!   command, refused ones too, is recorded as the event `chat.command`.
//! - **Notifications** ([`notify`]): events from `<prefix>.devops.v1.events.>` become
//!   short messages posted to incoming webhooks, routed by service, environment and
//!   severity, gathered per window (rollout progress keeps its latest), with 429 and
//!   `Retry-After` honoured.
//!
//! User and label text is escaped for the chat it goes to ([`markup`]).
#![forbid(unsafe_code)]

pub mod exec;
pub mod http;
pub mod markup;
pub mod metrics;
pub mod notify;
pub mod settings;
pub mod verify;
pub mod webclient;

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;
use toronto_protocol::ServiceKind;
pub use toronto_runtime::{Config, RuntimeError, ServiceRuntime};

pub use exec::{Bridge, Invocation, Outcome, Reply};
pub use settings::{CHAT_VARS, Settings};

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::ChatBridge;

/// KV buckets this service owns (`<prefix>_<name>`), with the history each keeps.
pub const BUCKETS: &[(&str, i64)] = &[];

/// Starts the service with settings from the `TORONTO_CHAT_*` variables.
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let settings = Settings::from_env().map_err(|e| RuntimeError::Config(e.into()))?;
    start_with(config, settings, shutdown).await
}

/// Starts the service and returns it running; stop it by cancelling `shutdown` and
/// awaiting [`ServiceRuntime::run_until_shutdown`]. The chat routes are served on the
/// service's HTTP server ([`ServiceRuntime::http_addr`]) unless
/// [`Settings::listen_addr`] names their own.
pub async fn start_with(
    config: Config,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let settings = Arc::new(settings);
    let cell = Arc::new(OnceLock::new());
    let state = http::HttpState::new(settings.clone(), cell.clone());
    let routes = http::routes(state.clone());
    let version = env!("CARGO_PKG_VERSION");
    let rt = match settings.listen_addr {
        None => ServiceRuntime::start_with_routes(KIND, version, config, routes, shutdown).await?,
        Some(addr) => {
            let rt = ServiceRuntime::start(KIND, version, config, shutdown).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RuntimeError::Http {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(addr = ?listener.local_addr().ok(), "chat routes listening");
            let stop = rt.shutdown_token();
            // Each run serves a clone of the one bound socket, so a restart keeps the port.
            let socket = listener.into_std().map_err(|source| RuntimeError::Http {
                addr: addr.to_string(),
                source,
            })?;
            rt.spawn_background("chat HTTP", move || {
                let (socket, routes, stop) = (socket.try_clone(), routes.clone(), stop.clone());
                async move {
                    let listener = tokio::net::TcpListener::from_std(socket?)?;
                    let timeouts = toronto_runtime::http::HttpTimeouts::default();
                    toronto_runtime::http::serve_listener(listener, routes, timeouts, stop).await;
                    Ok::<(), std::io::Error>(())
                }
            });
            rt
        }
    };
    for (bucket, history) in BUCKETS {
        rt.kv(bucket, *history).await?;
    }
    let metrics = metrics::ChatMetrics::register(&rt.metrics);
    let bridge = Bridge::new(
        rt.client.clone(),
        rt.subjects.clone(),
        rt.events.clone(),
        settings.clone(),
        rt.config.nats.request_timeout(),
    )
    .with_metrics(metrics.clone())
    .with_registry(rt.host.auth().and_then(|a| a.registry().cloned()));
    let replay_config = verify::replay_bucket_config(&rt.subjects, rt.config.jetstream.replicas);
    state.replay_guard().connect(rt.js.clone(), replay_config);
    if let Err(e) = state.replay_guard().open().await {
        tracing::warn!(error = %e, "Slack requests are refused (503) until the replay guard's bucket can be used; run `toronto bootstrap`");
    }
    let _ = cell.set(bridge);
    if !settings.webhooks.is_empty() {
        let router = notify::Router::start(&settings, &rt, metrics);
        let events = rt
            .client
            .queue_subscribe(rt.subjects.events_all(), KIND.service_name().to_owned())
            .await
            .map_err(|source| {
                RuntimeError::Service(toronto_runtime::service::ServiceError::Subscribe {
                    subject: rt.subjects.events_all(),
                    source,
                })
            })?;
        toronto_runtime::service::confirm_subscriptions(&rt.client).await;
        // The first run reads the subscription made above; a restart subscribes again.
        let first = Arc::new(std::sync::Mutex::new(Some(events)));
        let (client, subject, settings, token) = (
            rt.client.clone(),
            rt.subjects.events_all(),
            settings.clone(),
            rt.shutdown_token(),
        );
        rt.spawn_background("notifications", move || {
            let first = first.lock().ok().and_then(|mut f| f.take());
            let (client, subject) = (client.clone(), subject.clone());
            let (settings, router, token) = (settings.clone(), router.clone(), token.clone());
            async move {
                let events = match first {
                    Some(events) => events,
                    None => client
                        .queue_subscribe(subject, KIND.service_name().to_owned())
                        .await
                        .map_err(|e| e.to_string())?,
                };
                match notify::follow_events(events, settings, router, token).await {
                    Ok(()) => Ok::<(), String>(()),
                    Err(never) => match never {},
                }
            }
        });
    }
    Ok(rt)
}

/// Runs the service until `shutdown` is cancelled, then shuts down gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    start(config, shutdown).await?.run_until_shutdown().await
}
