//! Delivery of notes: grouping a window's notes into messages, posting them with
//! retries and backoff, one sender per webhook, routing by channel, and following the
//! event stream.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Note, describe};
use crate::markup::render;
use crate::metrics::ChatMetrics;
use crate::settings::{ChatKind, Settings, Webhook};
use crate::webclient::{PostError, WebClient};

/// Most lines in one grouped message; the rest are counted.
pub const MAX_LINES: usize = 15;
/// Most notifications waiting per webhook; more are dropped (and counted).
pub const QUEUE: usize = 1000;
/// Attempts at posting one message.
pub const ATTEMPTS: u32 = 6;

/// A message ready to post.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The JSON body.
    pub body: Value,
}

fn approval_blocks(text: &str, plan: uuid::Uuid) -> Value {
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "elements": [
                {"type": "button", "action_id": "approve_plan", "style": "primary",
                 "text": {"type": "plain_text", "text": "Approve"}, "value": plan.to_string()},
                {"type": "button", "action_id": "reject_plan", "style": "danger",
                 "text": {"type": "plain_text", "text": "Reject"}, "value": plan.to_string()}
            ]}
        ]
    })
}

/// Turns the notes gathered in one window into messages: approvals alone (they carry
/// buttons), the rest in one message, the latest note of each group key only, at most
/// [`MAX_LINES`] lines plus a count of the others.
pub fn batch(kind: ChatKind, notes: Vec<Note>) -> Vec<Outgoing> {
    let mut out = Vec::new();
    let mut latest: HashMap<String, usize> = HashMap::new();
    for (i, n) in notes.iter().enumerate() {
        if let Some(k) = &n.group_key {
            latest.insert(k.clone(), i);
        }
    }
    let mut lines = Vec::new();
    for (i, n) in notes.iter().enumerate() {
        if n.group_key.as_ref().is_some_and(|k| latest[k] != i) {
            continue;
        }
        let text = render(kind, &n.parts);
        match (kind, n.approval) {
            (ChatKind::Slack, Some(plan)) => out.push(Outgoing {
                body: approval_blocks(&text, plan),
            }),
            _ => lines.push(text),
        }
    }
    if !lines.is_empty() {
        let more = lines.len().saturating_sub(MAX_LINES);
        lines.truncate(MAX_LINES);
        if more > 0 {
            lines.push(format!("… and {more} more"));
        }
        out.push(Outgoing {
            body: json!({ "text": lines.join("\n") }),
        });
    }
    out
}

/// Posts one message, retrying on 429 (after its `Retry-After`, at most a minute) and on
/// server or network errors (with doubling backoff), up to [`ATTEMPTS`]. Returns
/// whether it was delivered.
pub async fn post(
    http: &WebClient,
    hook: &Webhook,
    message: &Outgoing,
    metrics: &ChatMetrics,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let result = http
            .post_json(hook.url.expose(), &message.body, Duration::from_secs(10))
            .await;
        let wait = match result {
            Ok(a) if (200..300).contains(&a.status) => {
                metrics.post(&hook.name, "posted");
                return true;
            }
            Ok(a) if a.status == 429 => {
                let wait = a
                    .retry_after
                    .map(|s| Duration::from_secs(s.min(60)))
                    .unwrap_or(backoff);
                tracing::warn!(webhook = %hook.name, attempt, wait_ms = wait.as_millis() as u64, "webhook rate-limited (429); backing off");
                wait
            }
            Ok(a) if a.status >= 500 => {
                tracing::warn!(webhook = %hook.name, attempt, status = a.status, "webhook failed; retrying");
                backoff
            }
            Ok(a) => {
                tracing::error!(webhook = %hook.name, status = a.status, "webhook refused the message; dropped");
                metrics.post(&hook.name, "dropped");
                return false;
            }
            Err(PostError::InvalidUrl) => {
                tracing::error!(webhook = %hook.name, "webhook URL is invalid; dropped");
                metrics.post(&hook.name, "dropped");
                return false;
            }
            Err(e) => {
                tracing::warn!(webhook = %hook.name, attempt, error = %e, "cannot reach the webhook; retrying");
                backoff
            }
        };
        metrics.post(&hook.name, "retried");
        backoff = (backoff * 2).min(Duration::from_secs(30));
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::error!(webhook = %hook.name, "webhook did not take the message; dropped");
    metrics.post(&hook.name, "dropped");
    false
}

/// One webhook's sender: gathers notes for the group window, then posts them.
pub async fn sender(
    http: WebClient,
    hook: Webhook,
    rx: &mut mpsc::Receiver<Note>,
    window: Duration,
    metrics: ChatMetrics,
    shutdown: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = rx.recv() => match n { Some(n) => n, None => return Ok(()) },
        };
        let mut notes = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => break,
                n = rx.recv() => match n {
                    Some(n) => notes.push(n),
                    None => break,
                },
            }
        }
        for message in batch(hook.kind, notes) {
            post(&http, &hook, &message, &metrics, &shutdown).await;
        }
    }
}

/// Routes notes to the webhook senders.
#[derive(Debug, Clone)]
pub struct Router {
    senders: HashMap<String, mpsc::Sender<Note>>,
    metrics: ChatMetrics,
}

impl Router {
    /// Starts one sender per webhook beside the service, ending at its shutdown.
    pub fn start(
        settings: &Settings,
        rt: &toronto_runtime::ServiceRuntime,
        metrics: ChatMetrics,
    ) -> Self {
        let http = WebClient::new();
        let mut senders = HashMap::new();
        for hook in &settings.webhooks {
            let (tx, rx) = mpsc::channel(QUEUE);
            let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
            let (http, webhook, window) = (http.clone(), hook.clone(), settings.group_window);
            let (metrics, token) = (metrics.clone(), rt.shutdown_token());
            rt.spawn_background("webhook sender", move || {
                let (http, hook, rx) = (http.clone(), webhook.clone(), rx.clone());
                let (metrics, token) = (metrics.clone(), token.clone());
                async move {
                    let mut rx = rx.lock_owned().await;
                    sender(http, hook, &mut rx, window, metrics, token).await
                }
            });
            senders.insert(hook.name.clone(), tx);
        }
        Self { senders, metrics }
    }

    /// Hands `note` to every channel whose route matches.
    pub fn route(&self, settings: &Settings, note: &Note) {
        for hook in settings.channels_for(
            note.service.as_deref(),
            note.environment.as_deref(),
            note.severity,
        ) {
            if let Some(tx) = self.senders.get(&hook.name)
                && tx.try_send(note.clone()).is_err()
            {
                tracing::warn!(webhook = %hook.name, "notification queue full; dropped one");
                self.metrics.post(&hook.name, "queue_full");
            }
        }
    }
}

/// Follows the event stream through `events` (a queue-group subscription, so one
/// replica posts each event) until `shutdown`, handing each event's note to the router.
pub async fn follow_events(
    mut events: async_nats::Subscriber,
    settings: std::sync::Arc<Settings>,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = events.next() => match m { Some(m) => m, None => break },
        };
        let Ok(envelope) = toronto_runtime::service::decode_message_raw(
            message.headers.as_ref(),
            &message.payload,
        ) else {
            tracing::debug!(subject = %message.subject, "not an envelope; no notification");
            continue;
        };
        let event = message
            .subject
            .as_str()
            .split_once(".events.")
            .map(|(_, e)| e.to_owned())
            .unwrap_or_default();
        if let Some(note) = describe(&event, &envelope) {
            router.route(&settings, &note);
        }
    }
    let _ = events.unsubscribe().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::theirs;
    use crate::settings::Severity;

    fn note(text: &str, key: Option<&str>) -> Note {
        Note {
            severity: Severity::Info,
            service: None,
            environment: None,
            group_key: key.map(str::to_owned),
            approval: None,
            parts: vec![theirs(text)],
        }
    }

    #[test]
    fn a_window_becomes_one_message_with_the_latest_progress() {
        let notes = vec![
            note("start", None),
            note("10%", Some("r1")),
            note("25%", Some("r1")),
            note("other 10%", Some("r2")),
            note("50%", Some("r1")),
        ];
        let out = batch(ChatKind::Slack, notes);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body["text"], "start\nother 10%\n50%");
        let many: Vec<Note> = (0..40).map(|i| note(&i.to_string(), None)).collect();
        let out = batch(ChatKind::Mattermost, many);
        assert!(
            out[0].body["text"]
                .as_str()
                .unwrap()
                .ends_with("… and 25 more")
        );
    }
}
