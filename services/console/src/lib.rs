//! The web console: rollouts, plans, incidents, SLOs and DORA figures in the browser,
//! live, with actions for identified users.
//!
//! Like every service it talks only over NATS: pages are rendered on the server from
//! the answers of the services' endpoints (every listing one page at a time), the SLO
//! burn-down from a watch of the monitor's `slo_status` bucket, and the pages follow
//! the events stream through server-sent events (`/events`). Actions (approve or
//! reject a plan; promote, pause, resume or abort a rollout; acknowledge or resolve an
//! incident) are sent through the request path of `toronto_commands`, the one the CLI
//! and the chat bridge use, signed with the console's own key on behalf of the user (a
//! registered principal, named by a trusted authentication proxy or signed in with a
//! login token, see [`login`]).
//!
//! - [`web`]: routes, actions, the live feed; [`auth`]: identity and CSRF;
//! - [`pages`]: the pages; [`html`], [`svg`], [`markdown`]: how they are drawn;
//! - [`data`]: the requests; [`history`]: SLO budget history; [`settings`].
#![forbid(unsafe_code)]

pub mod auth;
pub mod data;
pub mod history;
pub mod html;
pub mod login;
pub mod markdown;
pub mod pages;
pub mod settings;
pub mod svg;
pub mod web;

use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use toronto_protocol::ServiceKind;

pub use settings::{CONSOLE_VARS, Settings};
pub use toronto_runtime::{Config, RuntimeError, ServiceRuntime};

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::Console;

/// Starts the console with settings from the `TORONTO_CONSOLE_*` variables.
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let settings = Settings::from_env().map_err(|e| RuntimeError::Config(e.into()))?;
    start_with(config, settings, shutdown).await
}

/// Starts the console and returns it running; its pages are on the service's HTTP
/// port (`TORONTO_HTTP_ADDR`) under the base path.
pub async fn start_with(
    config: Config,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let state = web::AppState {
        settings: Arc::new(settings),
        live: Arc::new(OnceLock::new()),
        sessions: login::Sessions::default(),
    };
    let routes = web::routes(state.clone());
    let rt = ServiceRuntime::start_with_routes(
        KIND,
        env!("CARGO_PKG_VERSION"),
        config,
        routes,
        shutdown,
    )
    .await?;
    let (events, _) = broadcast::channel(256);
    let history = history::SloHistory::default();
    // The console's own key signs every action on behalf of the user; without one the
    // console is read-only.
    let signer = match &rt.config.auth.identity_file {
        Some(path) => Some(toronto_runtime::auth::Signer::from_file(path)?),
        None => {
            tracing::warn!("no TORONTO_IDENTITY_FILE: the console is read-only");
            None
        }
    };
    let backend = data::Backend::new(
        rt.client.clone(),
        rt.subjects.clone(),
        rt.config.nats.request_timeout(),
    )
    .with_signer(signer);
    let registry = registry(&rt).await;
    let _ = state.live.set(web::Live {
        backend,
        events: events.clone(),
        history: history.clone(),
        registry,
    });

    let client = rt.client.clone();
    let subject = rt.subjects.events_all();
    let prefix = format!("{}.", rt.subjects.event("", "").trim_end_matches('.'));
    let token = rt.shutdown_token();
    rt.spawn_background("console event feed", move || {
        feed(
            client.clone(),
            subject.clone(),
            prefix.clone(),
            events.clone(),
            token.clone(),
        )
    });

    // The monitor owns the bucket; the console waits for it to exist (optional for
    // readiness: the pages work without SLO history).
    let js = rt.js.clone();
    let bucket = rt.subjects.kv_bucket("slo_status");
    let token = rt.shutdown_token();
    rt.spawn_loop(
        toronto_runtime::supervise::LoopSpec::new("console SLO history").optional(),
        move || {
            let (js, bucket, history, token) =
                (js.clone(), bucket.clone(), history.clone(), token.clone());
            async move {
                let kv = js
                    .get_key_value(&bucket)
                    .await
                    .map_err(|e| format!("no bucket {bucket} yet: {e}"))?;
                history::watch(kv, history, token).await
            }
        },
    );
    Ok(rt)
}

/// The identity registry: the service host's when it checks signatures, else one the
/// console follows itself (`<prefix>_identities`). None when the bucket cannot be
/// opened: then nobody can log in with a token and nobody can act.
async fn registry(rt: &ServiceRuntime) -> Option<toronto_runtime::auth::Registry> {
    if let Some(r) = rt.host.auth().and_then(|a| a.registry()) {
        return Some(r.clone());
    }
    let bucket = rt.subjects.kv_bucket("identities");
    let opened = async {
        let store =
            toronto_runtime::jetstream::ensure_kv(&rt.js, &bucket, 5, rt.config.jetstream.replicas)
                .await
                .map_err(|e| e.to_string())?;
        toronto_runtime::auth::Registry::start(store, &rt.config.auth.admins, rt.shutdown_token())
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), opened).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "identity registry unavailable: the console is read-only");
            None
        }
        Err(_) => {
            tracing::error!("identity registry did not open within 2 s: the console is read-only");
            None
        }
    }
}

/// Runs the console until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    start(config, shutdown).await?.run_until_shutdown().await
}

/// Passes the name of every event (`rollout.progressed`) to the live pages.
async fn feed(
    client: async_nats::Client,
    subject: String,
    prefix: String,
    events: broadcast::Sender<String>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    use futures::StreamExt;
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| format!("cannot subscribe to {subject}: {e}"))?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = sub.next() => match next {
                Some(m) => {
                    let name = m.subject.as_str().strip_prefix(&prefix).unwrap_or(m.subject.as_str());
                    // Nobody listening is fine.
                    let _ = events.send(name.chars().take(128).collect());
                }
                None => return Err("the event subscription ended".into()),
            }
        }
    }
}
