//! The ADR-32 discovery verbs: `$SRV.PING|INFO|STATS` subscriptions, their responses
//! (async-nats's own types) and the per-endpoint counters behind `$SRV.STATS`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Client;
use async_nats::Subscriber;
use async_nats::service::{Info, PingResponse, Stats, endpoint};
use toronto_protocol::ErrorBody;

use super::{ServiceError, Shared};

/// One endpoint's `$SRV.STATS` counters: atomics, so that counting a request takes no
/// lock (the last error, rare, has its own).
#[derive(Debug)]
pub(super) struct EndpointCounters {
    pub(super) name: String,
    pub(super) subject: String,
    pub(super) queue_group: String,
    requests: AtomicU64,
    errors: AtomicU64,
    processing_nanos: AtomicU64,
    last_error: Mutex<Option<async_nats::service::error::Error>>,
}

impl EndpointCounters {
    pub(super) fn new(name: String, subject: String, queue_group: String) -> Self {
        Self {
            name,
            subject,
            queue_group,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            processing_nanos: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Counts one request, and its error if it failed.
    pub(super) fn record(&self, elapsed: Duration, error: Option<&ErrorBody>) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.processing_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(e) = error {
            *self.last_error.lock().expect("last error lock") =
                Some(async_nats::service::error::Error {
                    status: e.message.clone(),
                    code: e.code.status() as usize,
                });
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Release);
    }

    /// The counters as `$SRV.STATS` reports them.
    fn snapshot(&self) -> endpoint::Stats {
        let requests = self.requests.load(Ordering::Acquire);
        let processing_time = Duration::from_nanos(self.processing_nanos.load(Ordering::Relaxed));
        endpoint::Stats {
            name: self.name.clone(),
            subject: self.subject.clone(),
            requests: requests as usize,
            errors: self.errors.load(Ordering::Relaxed) as usize,
            processing_time,
            average_processing_time: processing_time
                .checked_div(u32::try_from(requests.max(1)).unwrap_or(u32::MAX))
                .unwrap_or_default(),
            last_error: self.last_error.lock().expect("last error lock").clone(),
            data: None,
            queue_group: self.queue_group.clone(),
        }
    }
}

/// Subscribes to `$SRV.<verb>`, `$SRV.<verb>.<name>` and `$SRV.<verb>.<name>.<id>`.
pub(super) async fn verb_subscriptions(
    client: &Client,
    verb: &str,
    name: &str,
    id: &str,
) -> Result<futures::stream::SelectAll<Subscriber>, ServiceError> {
    let mut subs = Vec::new();
    for subject in [
        format!("$SRV.{verb}"),
        format!("$SRV.{verb}.{name}"),
        format!("$SRV.{verb}.{name}.{id}"),
    ] {
        subs.push(
            client
                .subscribe(subject.clone())
                .await
                .map_err(|source| ServiceError::Subscribe { subject, source })?,
        );
    }
    Ok(futures::stream::select_all(subs))
}

impl Shared {
    /// The `$SRV.PING` response.
    pub(super) fn ping_json(&self) -> Vec<u8> {
        serde_json::to_vec(&PingResponse {
            kind: "io.nats.micro.v1.ping_response".to_owned(),
            name: self.spec.name.clone(),
            id: self.id.clone(),
            version: self.spec.version.clone(),
            metadata: self.spec.metadata.clone(),
        })
        .expect("ping serializes")
    }

    /// The `$SRV.INFO` response, with every endpoint and its metadata.
    pub(super) fn info_json(&self) -> Vec<u8> {
        let metadata = self.endpoint_metadata.lock().expect("meta lock").clone();
        let endpoints = self
            .stats
            .lock()
            .expect("stats lock")
            .values()
            .map(|s| endpoint::Info {
                name: s.name.clone(),
                subject: s.subject.clone(),
                queue_group: s.queue_group.clone(),
                metadata: metadata.get(&s.name).cloned().unwrap_or_default(),
            })
            .collect();
        serde_json::to_vec(&Info {
            kind: "io.nats.micro.v1.info_response".to_owned(),
            name: self.spec.name.clone(),
            id: self.id.clone(),
            description: self.spec.description.clone(),
            version: self.spec.version.clone(),
            metadata: self.spec.metadata.clone(),
            endpoints,
        })
        .expect("info serializes")
    }

    /// The `$SRV.STATS` response, with every endpoint's counters.
    pub(super) fn stats_json(&self) -> Vec<u8> {
        let endpoints = self
            .stats
            .lock()
            .expect("stats lock")
            .values()
            .map(|c| c.snapshot())
            .collect();
        serde_json::to_vec(&Stats {
            kind: "io.nats.micro.v1.stats_response".to_owned(),
            name: self.spec.name.clone(),
            id: self.id.clone(),
            version: self.spec.version.clone(),
            started: self.started,
            endpoints,
        })
        .expect("stats serialize")
    }
}
