//! Alertmanager: its webhook receiver (payload version 4) and an Alertmanager-compatible
//! `POST /api/v2/alerts`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use toronto_protocol::alerts::fingerprint;

use super::{IntakeError, Slot, parse, refuse, unavailable};
use crate::engine::{AlertIn, AlertState};

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
    /// How many alerts of the group Alertmanager left out (its `max_alerts`).
    #[serde(default)]
    pub truncated_alerts: u64,
}

/// A checked webhook payload: its alerts, and how many Alertmanager left out.
#[derive(Debug)]
pub struct WebhookBatch {
    /// The alerts.
    pub alerts: Vec<AlertIn>,
    /// Alerts of the group left out of the payload (`truncatedAlerts`).
    pub truncated: u64,
    /// The group's key.
    pub group_key: String,
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

/// Checks an Alertmanager webhook payload (version 4) and turns it into alerts.
pub fn webhook_alerts(body: &[u8]) -> Result<Vec<AlertIn>, IntakeError> {
    webhook_batch(body).map(|b| b.alerts)
}

/// [`webhook_alerts`], with what the payload says of the alerts it left out.
pub fn webhook_batch(body: &[u8]) -> Result<WebhookBatch, IntakeError> {
    let p: WebhookPayload = parse(body)?;
    if p.version != "4" {
        return Err(IntakeError::Invalid(format!(
            "version: `{}` is not supported (only \"4\")",
            p.version
        )));
    }
    if p.status != "firing" && p.status != "resolved" {
        return Err(IntakeError::Invalid(format!(
            "status: `{}` is not firing or resolved",
            p.status
        )));
    }
    if p.group_key.is_empty() {
        return Err(IntakeError::Invalid("groupKey: empty".into()));
    }
    let mut out = Vec::with_capacity(p.alerts.len());
    for (i, a) in p.alerts.into_iter().enumerate() {
        let state = match a.status.as_str() {
            "firing" => AlertState::Firing,
            "resolved" => AlertState::Resolved,
            other => {
                return Err(IntakeError::Invalid(format!(
                    "alerts[{i}].status: `{other}` is not firing or resolved"
                )));
            }
        };
        if a.fingerprint.trim().is_empty() {
            return Err(IntakeError::Invalid(format!(
                "alerts[{i}].fingerprint: empty"
            )));
        }
        if a.labels.is_empty() {
            return Err(IntakeError::Invalid(format!("alerts[{i}].labels: empty")));
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
    Ok(WebhookBatch {
        alerts: out,
        truncated: p.truncated_alerts,
        group_key: p.group_key,
    })
}

pub(super) async fn alertmanager_webhook(State(slot): State<Slot>, body: Bytes) -> Response {
    let Some(engine) = slot.get() else {
        return unavailable();
    };
    match webhook_batch(&body) {
        Ok(batch) => {
            let n = batch.alerts.len();
            let first = batch.alerts.first().map(|a| a.fingerprint.clone());
            engine.ingest(batch.alerts);
            // Alertmanager's `max_alerts` left some out: say so on the incident, which
            // otherwise looks smaller than it is.
            if batch.truncated > 0
                && let Some(id) = first.and_then(|f| engine.incident_of(&f))
            {
                let note = toronto_protocol::incidents::IncidentNote {
                    id,
                    by: "alertmanager".into(),
                    text: format!(
                        "Alertmanager left {} alert(s) of group {} out of its notification (truncatedAlerts); they are in Alertmanager",
                        batch.truncated,
                        batch.group_key.chars().take(200).collect::<String>()
                    ),
                    action_item: false,
                };
                if let Err(e) = engine.note(&note) {
                    tracing::warn!(error = %e, "cannot note the truncated alerts");
                }
            }
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
pub fn postable_alerts(body: &[u8], now: DateTime<Utc>) -> Result<Vec<AlertIn>, IntakeError> {
    let list: Vec<PostableAlert> = parse(body)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.into_iter().enumerate() {
        if a.labels.is_empty() {
            return Err(IntakeError::Invalid(format!("[{i}].labels: empty")));
        }
        if let Some((name, _)) = a.labels.iter().find(|(k, _)| !valid_label_name(k)) {
            return Err(IntakeError::Invalid(format!(
                "[{i}].labels: `{name}` is not a valid label name"
            )));
        }
        let starts_at = a.starts_at.unwrap_or(now);
        if let Some(end) = a.ends_at
            && end < starts_at
        {
            return Err(IntakeError::Invalid(format!(
                "[{i}].endsAt: before startsAt"
            )));
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

pub(super) async fn post_alerts(State(slot): State<Slot>, body: Bytes) -> Response {
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
        // Alertmanager's API answers a bad request with the reason as a JSON string
        // (its OpenAPI `BadRequest` response), which its clients print as it is.
        Err(reason) => (StatusCode::BAD_REQUEST, axum::Json(reason.to_string())).into_response(),
    }
}
