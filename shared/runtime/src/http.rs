//! Per-service HTTP: `/healthz` (the process runs), `/readyz` (connected to NATS,
//! serving, and every required background loop running), `/metrics` (Prometheus
//! exposition). Every listener cuts off slow and idle clients ([`HttpTimeouts`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Answers whether the service is ready (with an optional line of detail, e.g. its
/// lease role), and if not, why.
pub type Readiness = Arc<dyn Fn() -> Result<Option<String>, String> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match (state.readiness)() {
        Ok(None) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Some(detail)) => (StatusCode::OK, format!("ready\n{detail}\n")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// The router, for embedding.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(AppState { metrics, readiness })
}

/// Binds `addr` and serves until `shutdown`; returns the bound address (useful with
/// port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(addr, metrics, readiness, Router::new(), shutdown).await
}

/// Like [`serve`], with a service's own routes (`extra`) merged beside `/healthz`,
/// `/readyz` and `/metrics` (a route of the same path as those panics at start).
pub async fn serve_with(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(metrics, readiness).merge(extra);
    let task = tokio::spawn(serve_listener(
        listener,
        app,
        HttpTimeouts::default(),
        shutdown,
    ));
    Ok((bound, task))
}

/// How long an HTTP client may take before its connection is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// From the moment the server waits for a request (a new connection, or an idle
    /// keep-alive one after its last response) until the whole request head has
    /// arrived; this is also the idle timeout of a keep-alive connection.
    pub header_read: Duration,
    /// From the end of the head until the whole body has arrived (408 after it).
    pub body_read: Duration,
    /// How long connections in flight may finish once shutdown begins.
    pub drain: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            drain: Duration::from_secs(5),
        }
    }
}

/// The largest request body read (axum's default body limit, which the extractors
/// apply too).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Buffers the request body within the body-read timeout before the handler runs.
async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    }
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}\n"),
        )
            .into_response(),
        Err(_) => {
            let mut response = (
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time\n",
            )
                .into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, HTTP/1.1, with `timeouts` applied to
/// every connection; connections in flight get `timeouts.drain` to finish.
pub async fn serve_listener(
    listener: TcpListener,
    app: Router,
    timeouts: HttpTimeouts,
    shutdown: CancellationToken,
) {
    let app = app.layer(axum::middleware::from_fn_with_state(
        timeouts.body_read,
        body_deadline,
    ));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The peer's address reaches handlers as `ConnectInfo` (the console trusts an
        // identity header only from configured proxy addresses).
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.header_read)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(timeouts.drain, conn).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}
