//! HTTP intake on every replica: a standby hands each request (after its credentials
//! were checked) to the owner over NATS, on `_TORONTO.owner.<owner id>.http`, and
//! answers with the owner's status and body; the owner runs the same handlers. With
//! no owner (a takeover under way) the answer is 503, which Alertmanager and PagerDuty
//! clients retry.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use toronto_runtime::service::{OwnerRoute, Route, owner_prefix};

use super::{ALERTS_PATH, ENQUEUE_PATH, Slot, WEBHOOK_PATH};

/// The replicas' part of HTTP intake, set once the lease is joined.
pub type Forwarding = Arc<OnceLock<Replicas>>;

/// What a replica needs to hand HTTP intake to the owner.
#[derive(Debug, Clone)]
pub struct Replicas {
    /// The NATS connection.
    pub client: Client,
    /// Where the engine is served (the replica's ownership).
    pub route: crate::replica::Ownership,
    /// How long to wait for the owner's answer.
    pub timeout: Duration,
}

/// The header naming the path of a forwarded request.
const PATH_HEADER: &str = "Toronto-Http-Path";
/// The header carrying the owner's HTTP status.
const STATUS_HEADER: &str = "Toronto-Http-Status";
/// Largest body forwarded (axum's default body limit).
const LIMIT: usize = 2 * 1024 * 1024;
/// Forwarded requests an owner serves at once.
const CONCURRENCY: usize = 64;

fn subject(instance: &str) -> String {
    format!("{}http", owner_prefix(instance))
}

fn no_owner() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "status": "error",
            "error": "no replica owns the incident commander's work now: try again in a few seconds",
        })),
    )
        .into_response()
}

/// The middleware: serves the request here on the owner (and before the lease is
/// joined), forwards it to the owner on a standby.
pub(super) async fn to_owner(
    State(forwarding): State<Forwarding>,
    request: Request,
    next: Next,
) -> Response {
    let Some(replicas) = forwarding.get() else {
        return next.run(request).await;
    };
    let owner = match replicas.route.route() {
        Route::Here => return next.run(request).await,
        Route::NoOwner => return no_owner(),
        Route::Forward(owner) => owner,
    };
    let path = request.uri().path().to_owned();
    let Ok(body) = axum::body::to_bytes(request.into_body(), LIMIT).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert(PATH_HEADER, path.as_str());
    let asked = replicas
        .client
        .request_with_headers(subject(&owner), headers, body);
    match tokio::time::timeout(replicas.timeout, asked).await {
        Ok(Ok(reply)) => {
            let status = reply
                .headers
                .as_ref()
                .and_then(|h| h.get(STATUS_HEADER))
                .and_then(|v| v.as_str().parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from(reply.payload),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(owner, error = %e, "cannot hand an HTTP alert to the owner");
            no_owner()
        }
        Err(_) => {
            tracing::warn!(
                owner,
                "the owner did not answer a forwarded HTTP alert in time"
            );
            no_owner()
        }
    }
}

/// Serves the HTTP intake other replicas forward to this one (`me`) until
/// `shutdown`; refused with 503 unless this replica serves the engine now.
pub async fn serve_forwarded(
    client: Client,
    me: String,
    slot: Slot,
    route: crate::replica::Ownership,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(subject(&me)).await?;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            message = sub.next(), if in_flight.len() < CONCURRENCY => match message {
                Some(message) => in_flight.push(answer(&client, &slot, &route, message)),
                None => return Ok(()),
            },
            _ = shutdown.cancelled() => {
                let _ = sub.unsubscribe().await;
                while in_flight.next().await.is_some() {}
                return Ok(());
            }
        }
    }
}

async fn answer(
    client: &Client,
    slot: &Slot,
    route: &crate::replica::Ownership,
    message: async_nats::Message,
) {
    let Some(reply) = message.reply else { return };
    let path = message
        .headers
        .as_ref()
        .and_then(|h| h.get(PATH_HEADER))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    let response = if route.route() != Route::Here {
        no_owner()
    } else {
        let (slot, body) = (State(slot.clone()), message.payload);
        match path.as_str() {
            WEBHOOK_PATH => super::alertmanager::alertmanager_webhook(slot, body).await,
            ALERTS_PATH => super::alertmanager::post_alerts(slot, body).await,
            ENQUEUE_PATH => super::pagerduty::pagerduty_enqueue(slot, body).await,
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    };
    let status = response.status().as_u16().to_string();
    let body = axum::body::to_bytes(response.into_body(), LIMIT)
        .await
        .unwrap_or_else(|_| Bytes::new());
    let mut headers = HeaderMap::new();
    headers.insert(STATUS_HEADER, status.as_str());
    if let Err(e) = client.publish_with_headers(reply, headers, body).await {
        tracing::warn!(error = %e, "cannot answer a forwarded HTTP alert");
    }
}
