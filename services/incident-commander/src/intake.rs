//! Alert intake: the bus (`alert.firing`, `alert.resolved` events), the Alertmanager
//! webhook receiver (payload version 4), an Alertmanager-compatible
//! `POST /api/v2/alerts`, and a PagerDuty Events API v2 compatible `POST /v2/enqueue`.
//!
//! Every payload is parsed and checked as a whole before anything is applied: a
//! malformed one is refused (400 with the reason, or the dead-letter stream for bus
//! events) and changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use toronto_protocol::alerts::{Alert, AlertStatus, fingerprint};
use toronto_protocol::{Encoding, decode};
use toronto_runtime::jetstream::{Delivery, Outcome};

use crate::engine::{AlertIn, AlertState, Engine};

/// The engine, once the service has started (HTTP is served before).
pub type Slot = Arc<OnceLock<Arc<Engine>>>;

/// Path of the Alertmanager webhook receiver.
pub const WEBHOOK_PATH: &str = "/api/v1/alertmanager/webhook";
/// Path of the Alertmanager-compatible alerts API.
pub const ALERTS_PATH: &str = "/api/v2/alerts";
/// Path of the PagerDuty Events API v2 compatible endpoint.
pub const ENQUEUE_PATH: &str = "/v2/enqueue";

/// The routes, served beside `/healthz`, `/readyz` and `/metrics`.
pub fn routes(slot: Slot) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(alertmanager_webhook))
        .route(ALERTS_PATH, post(post_alerts))
        .route(ENQUEUE_PATH, post(pagerduty_enqueue))
        .with_state(slot)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    // The fast path; on failure, parse again to name the field.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
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
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntakeError {
    /// Not the expected JSON shape; names the field.
    #[error("{0}")]
    Malformed(String),
}

/// Checks an Alertmanager webhook payload (version 4) and turns it into alerts.
pub fn webhook_alerts(body: &[u8]) -> Result<Vec<AlertIn>, IntakeError> {
    webhook_alerts_checked(body).map_err(IntakeError::Malformed)
}

/// Checks a list of Alertmanager `postableAlert`s and turns them into alerts.
pub fn postable_alerts(body: &[u8], now: DateTime<Utc>) -> Result<Vec<AlertIn>, IntakeError> {
    postable_alerts_checked(body, now).map_err(IntakeError::Malformed)
}

/// Checks a PagerDuty Events API v2 event: its dedup key and what it asks.
pub fn pagerduty_event(
    body: &[u8],
    keys: &[String],
    default_environment: &str,
    now: DateTime<Utc>,
) -> Result<(String, PagerDutyAction), IntakeError> {
    pagerduty_event_checked(body, keys, default_environment, now).map_err(IntakeError::Malformed)
}

/// Checks an `alert.firing` / `alert.resolved` event from the bus.
pub fn bus_alert(subject: &str, payload: &[u8]) -> Result<AlertIn, IntakeError> {
    bus_alert_checked(subject, payload).map_err(IntakeError::Malformed)
}

// ------------------------------------------------------------------ Alertmanager webhook

/// Alertmanager's webhook payload, version 4 (unknown fields tolerated).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    /// `"4"`.
    pub version: String,
    /// The group's key.
    pub group_key: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The receiver.
    #[serde(default)]
    pub receiver: String,
    /// Labels of the group.
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    /// Labels every alert has.
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    /// Annotations every alert has.
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    /// Alertmanager's URL.
    #[serde(rename = "externalURL", default)]
    pub external_url: String,
    /// The alerts.
    pub alerts: Vec<WebhookAlert>,
}

/// One alert of a webhook payload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Start.
    pub starts_at: DateTime<Utc>,
    /// End (`0001-01-01T00:00:00Z` while firing).
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Where it came from.
    #[serde(rename = "generatorURL", default)]
    pub generator_url: String,
    /// Alertmanager's fingerprint.
    pub fingerprint: String,
}

/// Checks a webhook payload and turns it into alerts.
fn webhook_alerts_checked(body: &[u8]) -> Result<Vec<AlertIn>, String> {
    let p: WebhookPayload = parse(body)?;
    if p.version != "4" {
        return Err(format!(
            "version: `{}` is not supported (only \"4\")",
            p.version
        ));
    }
    if p.status != "firing" && p.status != "resolved" {
        return Err(format!("status: `{}` is not firing or resolved", p.status));
    }
    if p.group_key.is_empty() {
        return Err("groupKey: empty".into());
    }
    let mut out = Vec::with_capacity(p.alerts.len());
    for (i, a) in p.alerts.into_iter().enumerate() {
        let state = match a.status.as_str() {
            "firing" => AlertState::Firing,
            "resolved" => AlertState::Resolved,
            other => {
                return Err(format!(
                    "alerts[{i}].status: `{other}` is not firing or resolved"
                ));
            }
        };
        if a.fingerprint.trim().is_empty() {
            return Err(format!("alerts[{i}].fingerprint: empty"));
        }
        if a.labels.is_empty() {
            return Err(format!("alerts[{i}].labels: empty"));
        }
        let ends_at = a.ends_at.filter(|t| t.timestamp() > 0);
        out.push(AlertIn {
            fingerprint: a.fingerprint,
            state,
            labels: a.labels,
            annotations: a.annotations,
            starts_at: a.starts_at,
            ends_at,
            origin: "alertmanager",
        });
    }
    Ok(out)
}

async fn alertmanager_webhook(State(slot): State<Slot>, body: Bytes) -> Response {
    let Some(engine) = slot.get() else {
        return unavailable();
    };
    match webhook_alerts(&body) {
        Ok(alerts) => {
            let n = alerts.len();
            engine.ingest(alerts);
            engine.flush().await;
            (
                StatusCode::OK,
                axum::Json(json!({ "status": "success", "alerts": n })),
            )
                .into_response()
        }
        Err(reason) => refuse(reason.to_string()),
    }
}

// ------------------------------------------------------------------ /api/v2/alerts

/// Alertmanager's `postableAlert`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    /// Labels (identify the alert).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Start (default now).
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// End: in the past means resolved.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Where it came from.
    #[serde(rename = "generatorURL", default)]
    pub generator_url: Option<String>,
}

/// Checks a list of postable alerts and turns them into alerts.
fn postable_alerts_checked(body: &[u8], now: DateTime<Utc>) -> Result<Vec<AlertIn>, String> {
    let list: Vec<PostableAlert> = parse(body)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.into_iter().enumerate() {
        if a.labels.is_empty() {
            return Err(format!("[{i}].labels: empty"));
        }
        if let Some((name, _)) = a.labels.iter().find(|(k, _)| !valid_label_name(k)) {
            return Err(format!("[{i}].labels: `{name}` is not a valid label name"));
        }
        let starts_at = a.starts_at.unwrap_or(now);
        if let Some(end) = a.ends_at
            && end < starts_at
        {
            return Err(format!("[{i}].endsAt: before startsAt"));
        }
        let resolved = a.ends_at.is_some_and(|end| end <= now);
        out.push(AlertIn {
            fingerprint: fingerprint(&a.labels),
            state: if resolved {
                AlertState::Resolved
            } else {
                AlertState::Firing
            },
            labels: a.labels,
            annotations: a.annotations,
            starts_at,
            ends_at: a.ends_at.filter(|_| resolved),
            origin: "prometheus",
        });
    }
    Ok(out)
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

async fn post_alerts(State(slot): State<Slot>, body: Bytes) -> Response {
    let Some(engine) = slot.get() else {
        return unavailable();
    };
    match postable_alerts(&body, Utc::now()) {
        Ok(alerts) => {
            // Answered once applied in memory, as Alertmanager does: the write to KV
            // follows in order, and Prometheus sends firing alerts again every
            // resend delay anyway.
            engine.ingest(alerts);
            StatusCode::OK.into_response()
        }
        Err(reason) => refuse(reason.to_string()),
    }
}

// ------------------------------------------------------------------ PagerDuty

/// A PagerDuty Events API v2 event.
#[derive(Debug, Deserialize)]
pub struct PagerDutyEvent {
    /// The integration key.
    pub routing_key: String,
    /// `trigger`, `acknowledge` or `resolve`.
    pub event_action: String,
    /// Deduplication key (required for acknowledge and resolve).
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// Required for trigger.
    #[serde(default)]
    pub payload: Option<PagerDutyPayload>,
}

/// The payload of a trigger.
#[derive(Debug, Deserialize)]
pub struct PagerDutyPayload {
    /// Summary.
    pub summary: String,
    /// The affected system.
    pub source: String,
    /// `critical`, `error`, `warning` or `info`.
    pub severity: String,
    /// When.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
    /// Component.
    #[serde(default)]
    pub component: Option<String>,
    /// Group.
    #[serde(default)]
    pub group: Option<String>,
    /// Class.
    #[serde(default)]
    pub class: Option<String>,
    /// Free-form details.
    #[serde(default)]
    pub custom_details: Option<serde_json::Value>,
}

/// What a PagerDuty event asks.
#[derive(Debug)]
pub enum PagerDutyAction {
    /// Trigger or resolve an alert.
    Alert(AlertIn),
    /// Acknowledge the incident holding this dedup key.
    Acknowledge(String),
}

/// Checks a PagerDuty event.
fn pagerduty_event_checked(
    body: &[u8],
    keys: &[String],
    default_environment: &str,
    now: DateTime<Utc>,
) -> Result<(String, PagerDutyAction), String> {
    let e: PagerDutyEvent = parse(body)?;
    if e.routing_key.trim().is_empty() {
        return Err("routing_key: empty".into());
    }
    if !keys.is_empty() && !keys.contains(&e.routing_key) {
        return Err("routing_key: not a known integration key".into());
    }
    let dedup = e.dedup_key.filter(|k| !k.trim().is_empty());
    if dedup.as_ref().is_some_and(|k| k.len() > 255) {
        return Err("dedup_key: longer than 255 characters".into());
    }
    match e.event_action.as_str() {
        "trigger" => {
            let p = e.payload.ok_or("payload: required for trigger")?;
            if p.summary.trim().is_empty() {
                return Err("payload.summary: empty".into());
            }
            if p.summary.len() > 1024 {
                return Err("payload.summary: longer than 1024 characters".into());
            }
            if p.source.trim().is_empty() {
                return Err("payload.source: empty".into());
            }
            if !matches!(
                p.severity.as_str(),
                "critical" | "error" | "warning" | "info"
            ) {
                return Err(format!(
                    "payload.severity: `{}` is not critical, error, warning or info",
                    p.severity
                ));
            }
            let detail = |k: &str| {
                p.custom_details
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let mut labels = BTreeMap::new();
            labels.insert(
                "alertname".to_owned(),
                p.class.clone().unwrap_or_else(|| p.summary.clone()),
            );
            labels.insert(
                "service".to_owned(),
                detail("service")
                    .or_else(|| p.component.clone())
                    .unwrap_or_else(|| p.source.clone()),
            );
            labels.insert(
                "environment".to_owned(),
                detail("environment").unwrap_or_else(|| default_environment.to_owned()),
            );
            labels.insert("source".to_owned(), p.source.clone());
            labels.insert("severity".to_owned(), p.severity.clone());
            if let Some(g) = &p.group {
                labels.insert("group".to_owned(), g.clone());
            }
            let key = dedup.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
            let mut annotations = BTreeMap::new();
            annotations.insert("summary".to_owned(), p.summary);
            Ok((
                key.clone(),
                PagerDutyAction::Alert(AlertIn {
                    fingerprint: key,
                    state: AlertState::Firing,
                    labels,
                    annotations,
                    starts_at: p.timestamp.unwrap_or(now),
                    ends_at: None,
                    origin: "pagerduty",
                }),
            ))
        }
        "acknowledge" | "resolve" => {
            let key = dedup.ok_or_else(|| format!("dedup_key: required for {}", e.event_action))?;
            if e.event_action == "acknowledge" {
                Ok((key.clone(), PagerDutyAction::Acknowledge(key)))
            } else {
                Ok((
                    key.clone(),
                    PagerDutyAction::Alert(AlertIn {
                        fingerprint: key,
                        state: AlertState::Resolved,
                        labels: BTreeMap::new(),
                        annotations: BTreeMap::new(),
                        starts_at: now,
                        ends_at: Some(now),
                        origin: "pagerduty",
                    }),
                ))
            }
        }
        other => Err(format!(
            "event_action: `{other}` is not trigger, acknowledge or resolve"
        )),
    }
}

async fn pagerduty_enqueue(State(slot): State<Slot>, body: Bytes) -> Response {
    let Some(engine) = slot.get() else {
        return unavailable();
    };
    let keys = &engine.settings.pagerduty_routing_keys;
    match pagerduty_event(
        &body,
        keys,
        &engine.settings.default_environment,
        Utc::now(),
    ) {
        Ok((key, action)) => {
            match action {
                PagerDutyAction::Alert(alert) => {
                    engine.ingest(vec![alert]);
                }
                PagerDutyAction::Acknowledge(key) => {
                    engine.ack_alert(&key, "pagerduty");
                }
            }
            engine.flush().await;
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({
                    "status": "success",
                    "message": "Event processed",
                    "dedup_key": key,
                })),
            )
                .into_response()
        }
        Err(reason) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": [reason.to_string()],
            })),
        )
            .into_response(),
    }
}

// ------------------------------------------------------------------ the bus

/// Checks an `alert.firing` / `alert.resolved` event.
fn bus_alert_checked(subject: &str, payload: &[u8]) -> Result<AlertIn, String> {
    let env = decode::<Alert>(payload, Encoding::Json).map_err(|e| e.to_string())?;
    let a = env.data;
    let expected = if subject.ends_with(".firing") {
        AlertStatus::Firing
    } else if subject.ends_with(".resolved") {
        AlertStatus::Resolved
    } else {
        return Err(format!(
            "{subject}: not an alert.firing or alert.resolved subject"
        ));
    };
    if a.status != expected {
        return Err(format!(
            "status {:?} does not match the subject {subject}",
            a.status
        ));
    }
    if a.fingerprint.trim().is_empty() {
        return Err("fingerprint: empty".into());
    }
    Ok(AlertIn {
        fingerprint: a.fingerprint,
        state: match a.status {
            AlertStatus::Firing => AlertState::Firing,
            AlertStatus::Resolved => AlertState::Resolved,
        },
        labels: a.labels,
        annotations: a.annotations,
        starts_at: a.starts_at,
        ends_at: a.ends_at,
        origin: "bus",
    })
}

/// Handles one delivery of the alerts consumer.
pub async fn handle_bus_alert(engine: Arc<Engine>, delivery: Delivery) -> Outcome {
    match bus_alert(delivery.subject(), delivery.payload()) {
        Ok(alert) => {
            engine.ingest(vec![alert]);
            engine.flush().await;
            Outcome::Ack
        }
        Err(reason) => Outcome::Reject {
            reason: reason.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
