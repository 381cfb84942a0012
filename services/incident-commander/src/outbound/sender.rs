//! Takes notifications from the outbox and sends them: acknowledged only once the
//! receiver accepted, retried with backoff (a longer `Retry-After` wins), parked in the
//! dead-letter stream after `max_attempts` or at once when the receiver refuses it for
//! good. Every attempt's outcome goes on the incident's timeline. Error texts never
//! carry a secret: URLs are left out of transport errors.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use toronto_runtime::jetstream::{Delivery, Outcome};

use super::config::{Channel, Notifications, SecretError};
use super::{Notification, formats};
use crate::engine::Engine;

/// Largest outbox message accepted.
const MAX_MESSAGE: usize = 64 * 1024;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why a send did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The secret could not be read (retried: the file may appear).
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The person has no id for this chat.
    #[error("{person} has no {kind} id in notifications.contacts")]
    NoContact {
        /// Who.
        person: String,
        /// The chat.
        kind: &'static str,
    },
    /// No answer (timeout, connection refused, ...).
    #[error("no answer: {0}")]
    Transport(&'static str, #[source] reqwest::Error),
    /// The receiver answered with an error status.
    #[error("HTTP {status}")]
    Status {
        /// The status.
        status: StatusCode,
        /// Its `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// Slack answered `ok: false`.
    #[error("slack error {0}")]
    Slack(String),
}

impl SendError {
    /// Whether trying again may help.
    pub fn transient(&self) -> bool {
        match self {
            SendError::Secret(_) | SendError::Transport(..) => true,
            SendError::NoContact { .. } => false,
            SendError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            SendError::Slack(e) => e == "ratelimited" || e == "internal_error",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default()
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn transport(e: reqwest::Error) -> SendError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    SendError::Transport(what, e.without_url())
}

/// Sends one notification; Ok once the receiver accepted it.
pub async fn send(
    http: &reqwest::Client,
    settings: &Notifications,
    channel: &Channel,
    n: &Notification,
) -> Result<(), SendError> {
    let link = formats::incident_link(settings.incident_url.as_deref(), n);
    let link = link.as_deref();
    let timeout = Duration::from_millis(settings.timeout_ms);
    let person = || n.person.clone().unwrap_or_default();
    let contact = settings.contacts.get(&person());
    let request = match channel {
        Channel::Pagerduty { routing_key, url } => {
            let key = routing_key.read()?;
            http.post(url).json(&formats::pagerduty(n, &key, link))
        }
        Channel::Slack { token, url } => {
            let user = contact
                .and_then(|c| c.slack.clone())
                .ok_or(SendError::NoContact {
                    person: person(),
                    kind: "slack",
                })?;
            let token = token.read()?;
            http.post(url)
                .bearer_auth(token)
                .json(&formats::slack(n, &user, link))
        }
        Channel::Mattermost { webhook_url } => {
            let name = contact
                .and_then(|c| c.mattermost.clone())
                .unwrap_or_else(person);
            let url = webhook_url.read()?;
            http.post(url).json(&formats::mattermost(n, &name, link))
        }
        Channel::Webhook { url, secret } => {
            let secret = secret.read()?;
            let body = serde_json::to_vec(&formats::webhook(n, link)).unwrap_or_default();
            let now = Utc::now().timestamp();
            http.post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(formats::DELIVERY_HEADER, n.id.to_string())
                .header(formats::TIMESTAMP_HEADER, now.to_string())
                .header(
                    formats::SIGNATURE_HEADER,
                    formats::signature(secret.as_bytes(), now, &body),
                )
                .body(body)
        }
    };
    let response = request.timeout(timeout).send().await.map_err(transport)?;
    let status = response.status();
    if !status.is_success() {
        return Err(SendError::Status {
            status,
            retry_after: retry_after(response.headers()),
        });
    }
    if matches!(channel, Channel::Slack { .. }) {
        // Slack answers 200 with `ok: false` for most errors.
        let body: serde_json::Value = response.json().await.map_err(transport)?;
        if body.get("ok").and_then(serde_json::Value::as_bool) != Some(true) {
            let error = body
                .get("error")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown")
                .chars()
                .take(100)
                .collect();
            return Err(SendError::Slack(error));
        }
    }
    Ok(())
}

/// The outbox consumer's handler.
pub async fn handle(engine: Arc<Engine>, http: reqwest::Client, delivery: Delivery) -> Outcome {
    if delivery.payload().len() > MAX_MESSAGE {
        return Outcome::Reject {
            reason: format!("notification larger than {MAX_MESSAGE} bytes"),
        };
    }
    let n: Notification = match serde_json::from_slice(delivery.payload()) {
        Ok(n) => n,
        Err(e) => {
            return Outcome::Reject {
                reason: format!("not a notification: {e}"),
            };
        }
    };
    let settings = &engine.settings.policy.notifications;
    let Some(channel) = settings.channels.get(&n.channel) else {
        return Outcome::Reject {
            reason: format!("channel `{}` is not configured", n.channel),
        };
    };
    let attempt = u32::try_from(delivery.deliveries())
        .unwrap_or(u32::MAX)
        .max(1);
    let what = n.describe();
    match send(&http, settings, channel, &n).await {
        Ok(()) => {
            let text = format!("{what} delivered (attempt {attempt})");
            engine.notified(n.incident_id, true, text);
            Outcome::Ack
        }
        Err(e) if e.transient() && attempt < settings.max_attempts => {
            let backoff = settings
                .backoff()
                .nth(attempt as usize - 1)
                .unwrap_or(Duration::from_millis(settings.max_delay_ms));
            let delay = e.retry_after().map_or(backoff, |r| r.max(backoff));
            let text = format!(
                "{what} attempt {attempt} failed: {e}; retrying in {:.1}s",
                delay.as_secs_f64()
            );
            tracing::warn!(incident = %n.incident_id, "{text}");
            engine.notified(n.incident_id, false, text.clone());
            Outcome::Retry {
                delay: Some(delay),
                reason: text,
            }
        }
        Err(e) => {
            let text = format!(
                "{what} failed: {e}; given up after {attempt} attempt(s), parked in the dead-letter stream"
            );
            tracing::error!(incident = %n.incident_id, "{text}");
            engine.notified(n.incident_id, false, text.clone());
            Outcome::Reject { reason: text }
        }
    }
}
