//! The ADR-32 discovery verbs: `$SRV.PING|INFO|STATS` subscriptions, their responses
//! (async-nats's own types) and the per-endpoint counters behind `$SRV.STATS`.

use std::time::Duration;

use async_nats::Client;
use async_nats::Subscriber;
use async_nats::service::{Info, PingResponse, Stats, endpoint};
use toronto_protocol::ErrorBody;

use super::{ServiceError, Shared};

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
            .cloned()
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

    /// Counts one request of endpoint `name`, and its error if it failed.
    pub(super) fn record(&self, name: &str, elapsed: Duration, error: Option<&ErrorBody>) {
        let mut stats = self.stats.lock().expect("stats lock");
        if let Some(s) = stats.get_mut(name) {
            s.requests += 1;
            s.processing_time += elapsed;
            s.average_processing_time = s.processing_time / s.requests.max(1) as u32;
            if let Some(e) = error {
                s.errors += 1;
                s.last_error = Some(async_nats::service::error::Error {
                    status: e.message.clone(),
                    code: e.code.status() as usize,
                });
            }
        }
    }
}
