//! Continuous canary analysis: a verdict every interval as an `analysis.result` event,
//! until the duration ends, `canary.unwatch`, or the rollout ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use toronto_protocol::analysis::{CanaryWatch, CanaryWatchStatus};
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::{Envelope, ErrorBody, ErrorCode};
use toronto_runtime::jetstream::Events;
use uuid::Uuid;

use crate::canary::{Analyzer, validate};

/// Rollout events that end a watch (`rollout.<what>`).
pub const TERMINAL_ROLLOUT_EVENTS: [&str; 3] = ["succeeded", "aborted", "failed"];

/// Shortest interval between two verdicts, in milliseconds.
pub const MIN_INTERVAL_MS: u64 = 100;

struct Running {
    token: CancellationToken,
    generation: u64,
    interval_ms: u64,
    verdicts: Arc<AtomicU64>,
}

/// How long a stopped watch's final figures are kept for a late `canary.unwatch`.
const STOPPED_KEPT: Duration = Duration::from_secs(300);

/// The running watches, by rollout id.
///
/// With several monitor replicas a watch runs on the replica that took `canary.watch`,
/// while `canary.unwatch` reaches any one of them (queue group): every replica also
/// listens to the unwatch subject without a queue group ([`Watches::follow_unwatch`]),
/// so the replica running the watch stops it, and a replica answers with the figures
/// of a watch stopped moments ago when it has them.
#[derive(Clone)]
pub struct Watches {
    running: Arc<Mutex<HashMap<Uuid, Running>>>,
    stopped: Arc<Mutex<Stopped>>,
    generation: Arc<AtomicU64>,
    analyzer: Analyzer,
    events: Events,
    source: String,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field(
                "running",
                &self.running.lock().map(|m| m.len()).unwrap_or(0),
            )
            .finish()
    }
}

/// The stopped watches' figures, by rollout id.
type Stopped = HashMap<Uuid, (tokio::time::Instant, CanaryWatchStatus)>;

/// Keeps a stopped watch's figures for [`STOPPED_KEPT`], forgetting those kept
/// longer: a watch that ends with its rollout is never unwatched, so what is kept
/// would otherwise grow with every canary.
fn keep_stopped(
    stopped: &mut Stopped,
    now: tokio::time::Instant,
    rollout_id: Uuid,
    status: CanaryWatchStatus,
) {
    stopped.retain(|_, (at, _)| now.saturating_duration_since(*at) < STOPPED_KEPT);
    stopped.insert(rollout_id, (now, status));
}

fn bad(field: &str, reason: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::BadRequest,
        format!("invalid canary watch: {field}: {reason}"),
    )
    .with_details(json!({"errors": [{"field": field, "reason": reason}]}))
}

impl Watches {
    /// No watches yet; verdicts are published through `events` as `source`.
    pub fn new(
        analyzer: Analyzer,
        events: Events,
        source: String,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            running: Arc::new(Mutex::new(HashMap::new())),
            stopped: Arc::new(Mutex::new(HashMap::new())),
            generation: Arc::new(AtomicU64::new(0)),
            analyzer,
            events,
            source,
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (or replaces) the watch of a rollout.
    pub fn start(
        &self,
        watch: CanaryWatch,
        flow: FlowContext,
    ) -> Result<CanaryWatchStatus, ErrorBody> {
        let Some(rollout_id) = watch.analyze.rollout_id else {
            return Err(bad("analyze.rollout_id", "is required to watch"));
        };
        if watch.interval_ms < MIN_INTERVAL_MS {
            return Err(bad(
                "interval_ms",
                &format!("{} is below {MIN_INTERVAL_MS}", watch.interval_ms),
            ));
        }
        if watch.duration_seconds == 0 {
            return Err(bad("duration_seconds", "must be at least 1"));
        }
        validate(&watch.analyze).map_err(|mut e| {
            if let Some(errors) = e.details.as_mut().and_then(|d| d["errors"].as_array_mut()) {
                for err in errors {
                    let field = format!("analyze.{}", err["field"].as_str().unwrap_or(""));
                    err["field"] = field.into();
                }
            }
            e
        })?;
        let token = self.shutdown.child_token();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let until = Utc::now() + chrono::Duration::seconds(watch.duration_seconds as i64);
        let verdicts = Arc::new(AtomicU64::new(0));
        if let Some(old) = self.lock().insert(
            rollout_id,
            Running {
                token: token.clone(),
                generation,
                interval_ms: watch.interval_ms,
                verdicts: verdicts.clone(),
            },
        ) {
            old.token.cancel();
        }
        let status = CanaryWatchStatus {
            rollout_id,
            watching: true,
            interval_ms: watch.interval_ms,
            until: Some(until),
            verdicts: 0,
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.run(rollout_id, generation, watch, flow, token, verdicts)
                .await;
        });
        Ok(status)
    }

    async fn run(
        &self,
        rollout_id: Uuid,
        generation: u64,
        watch: CanaryWatch,
        flow: FlowContext,
        token: CancellationToken,
        verdicts: Arc<AtomicU64>,
    ) {
        let duration = Duration::from_secs(watch.duration_seconds);
        let deadline = tokio::time::Instant::now() + duration;
        let mut ticks = tokio::time::interval(Duration::from_millis(watch.interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(%rollout_id, interval_ms = watch.interval_ms, "watching a canary");
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ticks.tick() => {}
            }
            let verdict = match self.analyzer.analyze(&watch.analyze).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(%rollout_id, error = %e, "canary analysis failed");
                    continue;
                }
            };
            let envelope = Envelope::builder(self.source.clone(), verdict)
                .subject(watch.analyze.service.clone())
                .caused_by(&flow)
                .build();
            if token.is_cancelled() {
                break;
            }
            // Counted before the publish: subscribers may see the verdict before the
            // stream's acknowledgement returns (or before an unwatch ends this loop).
            verdicts.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.events.publish("analysis", "result", &envelope).await {
                verdicts.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(%rollout_id, error = %e, "cannot publish a verdict");
            }
        }
        let mut running = self.lock();
        if running.get(&rollout_id).map(|r| r.generation) == Some(generation)
            && let Some(r) = running.remove(&rollout_id)
        {
            let status = CanaryWatchStatus {
                rollout_id,
                watching: false,
                interval_ms: r.interval_ms,
                until: None,
                verdicts: r.verdicts.load(Ordering::Relaxed),
            };
            keep_stopped(
                &mut self.stopped.lock().unwrap_or_else(|e| e.into_inner()),
                tokio::time::Instant::now(),
                rollout_id,
                status,
            );
        }
        tracing::info!(%rollout_id, verdicts = verdicts.load(Ordering::Relaxed), "canary watch ended");
    }

    /// Stops the watch of a rollout; `watching` is false in the answer either way, and
    /// `verdicts` is 0 when none was running (nor stopped moments ago) here.
    pub fn stop(&self, rollout_id: Uuid) -> CanaryWatchStatus {
        let running = self.lock().remove(&rollout_id);
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        stopped.retain(|_, (at, _)| at.elapsed() < STOPPED_KEPT);
        match running {
            Some(r) => {
                r.token.cancel();
                let status = CanaryWatchStatus {
                    rollout_id,
                    watching: false,
                    interval_ms: r.interval_ms,
                    until: None,
                    verdicts: r.verdicts.load(Ordering::Relaxed),
                };
                keep_stopped(
                    &mut stopped,
                    tokio::time::Instant::now(),
                    rollout_id,
                    status.clone(),
                );
                status
            }
            None => stopped
                .get(&rollout_id)
                .map(|(_, s)| s.clone())
                .unwrap_or(CanaryWatchStatus {
                    rollout_id,
                    watching: false,
                    interval_ms: 0,
                    until: None,
                    verdicts: 0,
                }),
        }
    }

    /// Stops local watches named by `canary.unwatch` requests, whichever replica
    /// answers them: a plain subscription to the endpoint's subject until `shutdown`.
    pub async fn follow_unwatch(
        self,
        client: async_nats::Client,
        subject: String,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut sub = client.subscribe(subject).await?;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = sub.next() => match msg {
                    Some(m) => m,
                    None => break,
                },
            };
            let content_type = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Content-Type"))
                .map(|v| v.as_str().to_owned());
            let Ok(encoding) =
                toronto_protocol::Encoding::from_content_type(content_type.as_deref())
            else {
                continue;
            };
            if let Ok(req) = toronto_protocol::decode::<toronto_protocol::analysis::CanaryUnwatch>(
                &msg.payload,
                encoding,
            ) && self.is_watching(req.data.rollout_id)
            {
                self.stop(req.data.rollout_id);
            }
        }
        Ok(())
    }

    /// Whether a rollout is being watched.
    pub fn is_watching(&self, rollout_id: Uuid) -> bool {
        self.lock().contains_key(&rollout_id)
    }

    /// Ends watches when their rollout ends: listens to `<prefix>.devops.v1.events.rollout.>`
    /// (core NATS; the events stream stores the same messages) until `shutdown`.
    pub async fn follow_rollouts(
        self,
        client: async_nats::Client,
        subject: String,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut sub = client.subscribe(subject).await?;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = sub.next() => match msg {
                    Some(m) => m,
                    None => break,
                },
            };
            let what = msg.subject.rsplit('.').next().unwrap_or("");
            if !TERMINAL_ROLLOUT_EVENTS.contains(&what) {
                continue;
            }
            let Some(id) = rollout_id_of(&msg.payload) else {
                tracing::warn!(subject = %msg.subject, "a rollout event without a rollout id");
                continue;
            };
            if self.is_watching(id) {
                self.stop(id);
                tracing::info!(rollout_id = %id, event = what, "rollout ended; watch stopped");
            }
        }
        Ok(())
    }
}

/// The rollout id of a rollout event: `data.id` (a `Rollout`) or `data.rollout_id`, in
/// JSON or MessagePack.
fn rollout_id_of(payload: &[u8]) -> Option<Uuid> {
    let value: serde_json::Value = toronto_protocol::codec::from_json_bounded(payload)
        .ok()
        .or_else(|| toronto_protocol::codec::from_msgpack_bounded(payload).ok())?;
    let data = &value["data"];
    [&data["id"], &data["rollout_id"]]
        .into_iter()
        .find_map(|v| v.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(rollout_id: Uuid) -> CanaryWatchStatus {
        CanaryWatchStatus {
            rollout_id,
            watching: false,
            interval_ms: 1000,
            until: None,
            verdicts: 3,
        }
    }

    #[test]
    fn stopped_watches_are_kept_for_a_while_not_forever() {
        let mut stopped = Stopped::new();
        let old = Uuid::now_v7();
        let then = tokio::time::Instant::now();
        keep_stopped(&mut stopped, then, old, status(old));
        let later = then + STOPPED_KEPT + Duration::from_secs(1);
        for _ in 0..100 {
            let id = Uuid::now_v7();
            keep_stopped(&mut stopped, later, id, status(id));
        }
        assert!(!stopped.contains_key(&old), "forgotten after STOPPED_KEPT");
        assert_eq!(stopped.len(), 100, "the recent ones are kept");
    }
}
