//! Alert intake: the bus (`alert.firing`, `alert.resolved` events), the Alertmanager
//! webhook receiver (payload version 4), an Alertmanager-compatible
//! `POST /api/v2/alerts`, and a PagerDuty Events API v2 compatible `POST /v2/enqueue`.
//!
//! When credentials are configured ([`auth`]), the three HTTP routes ask for them
//! (bearer or basic) before reading a body.
//!
//! Every payload is parsed and checked as a whole before anything is applied: a
//! malformed one is refused (400 with the reason, or the dead-letter stream for bus
//! events) and changes nothing.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::engine::Engine;

mod alertmanager;
pub mod auth;
mod bus;
pub mod forward;
mod pagerduty;

pub use alertmanager::{
    PostableAlert, WebhookAlert, WebhookBatch, WebhookPayload, postable_alerts, webhook_alerts,
    webhook_batch,
};
pub use auth::{AuthRefusal, HttpAuth, HttpAuthSettings};
pub use bus::{bus_alert, handle_bus_alert};
pub use pagerduty::{PagerDutyAction, PagerDutyEvent, PagerDutyPayload, pagerduty_event};

/// The engine, once the service has started (HTTP is served before).
pub type Slot = Arc<OnceLock<Arc<Engine>>>;

/// Path of the Alertmanager webhook receiver.
pub const WEBHOOK_PATH: &str = "/api/v1/alertmanager/webhook";
/// Path of the Alertmanager-compatible alerts API.
pub const ALERTS_PATH: &str = "/api/v2/alerts";
/// Path of the PagerDuty Events API v2 compatible endpoint.
pub const ENQUEUE_PATH: &str = "/v2/enqueue";

/// The routes, served beside `/healthz`, `/readyz` and `/metrics` (which stay open);
/// each asks for the credentials `auth` names, if any, and a standby replica then
/// hands the request to the owner ([`forward`]).
pub fn routes(slot: Slot, auth: HttpAuth, forwarding: forward::Forwarding) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(alertmanager::alertmanager_webhook))
        .route(ALERTS_PATH, post(alertmanager::post_alerts))
        .route(ENQUEUE_PATH, post(pagerduty::pagerduty_enqueue))
        .route_layer(axum::middleware::from_fn_with_state(
            forwarding,
            forward::to_owner,
        ))
        .route_layer(axum::middleware::from_fn_with_state(auth, auth::require))
        .with_state(slot)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, IntakeError> {
    // The fast path; on failure, parse again to name the field.
    if let Ok(v) = toronto_protocol::codec::from_json_bounded(body) {
        return Ok(v);
    }
    toronto_protocol::codec::from_json_bounded::<serde::de::IgnoredAny>(body).map_err(
        |source| IntakeError::Json {
            path: String::new(),
            source,
        },
    )?;
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        IntakeError::Json {
            path,
            source: e.into_inner(),
        }
    })
}

fn refuse(reason: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "status": "error", "error": reason })),
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "status": "error", "error": "starting up" })),
    )
        .into_response()
}

/// Why a payload was refused (nothing of it was applied).
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Not the expected JSON shape; names the field (`.` is the whole payload).
    #[error("{}", if path == "." { source.to_string() } else { format!("{path}: {source}") })]
    Json {
        /// Where in the payload.
        path: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// Not a CloudEvents envelope of an alert.
    #[error("{0}")]
    Decode(#[source] toronto_protocol::ProtocolError),
    /// A field breaks a rule of the format; the message names the field.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn malformed_payloads_are_refused_with_the_field() {
        let err = webhook_alerts(br#"{"version":"4","groupKey":"g","status":"firing","alerts":[{"status":"firing","labels":{"a":"b"},"startsAt":"2026-01-01T00:00:00Z"}]}"#).unwrap_err().to_string();
        assert!(err.contains("fingerprint"), "{err}");
        let err =
            webhook_alerts(br#"{"version":"3","groupKey":"g","status":"firing","alerts":[]}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("version"), "{err}");
        let ok = webhook_alerts(br#"{"version":"4","groupKey":"g","status":"firing","truncatedAlerts":0,"alerts":[{"status":"firing","labels":{"a":"b"},"startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"f1"}]}"#).unwrap();
        assert_eq!(ok[0].ends_at, None);
        let now = Utc::now();
        let err = postable_alerts(br#"[{"labels":{"a":"b"}},{"labels":{}}]"#, now)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("[1].labels"), "{err}");
        let err = pagerduty_event(br#"{"routing_key":"k","event_action":"trigger","payload":{"summary":"s","source":"h","severity":"bad"}}"#, &[], "production", now).unwrap_err().to_string();
        assert!(err.contains("payload.severity"), "{err}");
        let err = pagerduty_event(
            br#"{"routing_key":"k","event_action":"resolve"}"#,
            &[],
            "production",
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("dedup_key"), "{err}");
    }
}
