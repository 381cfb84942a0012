//! A PagerDuty Events API v2 compatible `POST /v2/enqueue`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{IntakeError, Slot, parse, unavailable};
use crate::engine::{AlertIn, AlertState};

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

/// Checks a PagerDuty Events API v2 event: its dedup key and what it asks.
pub fn pagerduty_event(
    body: &[u8],
    keys: &[String],
    default_environment: &str,
    now: DateTime<Utc>,
) -> Result<(String, PagerDutyAction), IntakeError> {
    let e: PagerDutyEvent = parse(body)?;
    if e.routing_key.trim().is_empty() {
        return Err(IntakeError::Invalid("routing_key: empty".into()));
    }
    if !keys.is_empty() && !keys.contains(&e.routing_key) {
        return Err(IntakeError::Invalid(
            "routing_key: not a known integration key".into(),
        ));
    }
    let dedup = e.dedup_key.filter(|k| !k.trim().is_empty());
    if dedup.as_ref().is_some_and(|k| k.len() > 255) {
        return Err(IntakeError::Invalid(
            "dedup_key: longer than 255 characters".into(),
        ));
    }
    match e.event_action.as_str() {
        "trigger" => {
            let p = e
                .payload
                .ok_or_else(|| IntakeError::Invalid("payload: required for trigger".into()))?;
            if p.summary.trim().is_empty() {
                return Err(IntakeError::Invalid("payload.summary: empty".into()));
            }
            if p.summary.len() > 1024 {
                return Err(IntakeError::Invalid(
                    "payload.summary: longer than 1024 characters".into(),
                ));
            }
            if p.source.trim().is_empty() {
                return Err(IntakeError::Invalid("payload.source: empty".into()));
            }
            if !matches!(
                p.severity.as_str(),
                "critical" | "error" | "warning" | "info"
            ) {
                return Err(IntakeError::Invalid(format!(
                    "payload.severity: `{}` is not critical, error, warning or info",
                    p.severity
                )));
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
            let key = dedup.ok_or_else(|| {
                IntakeError::Invalid(format!("dedup_key: required for {}", e.event_action))
            })?;
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
        other => Err(IntakeError::Invalid(format!(
            "event_action: `{other}` is not trigger, acknowledge or resolve"
        ))),
    }
}

pub(super) async fn pagerduty_enqueue(State(slot): State<Slot>, body: Bytes) -> Response {
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
