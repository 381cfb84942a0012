//! Metrics pushed over the bus: `MetricBatch` envelopes on `toronto.metrics.>`, into
//! the store. A message that cannot be read is logged and counted, never fatal.
//!
//! The subscription only hands messages over; one thread of the blocking pool decodes
//! them and stores each message's samples under one hold of the store's lock. So a
//! burst of batches (a simulated cluster publishes one per service every tick) never
//! occupies the async workers that answer `canary.analyze`: the operating system
//! shares the cores between the two, instead of an analysis waiting for a worker
//! until the burst is decoded.

use std::sync::Arc;

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use toronto_protocol::analysis::MetricBatch;

use crate::store::{Labels, Store};

/// Messages waiting for the ingest thread. When it is full the subscription waits, and
/// the NATS client holds (or, past its own limit, drops and counts) what follows.
const QUEUE: usize = 4096;

/// What the bus ingest counted.
#[derive(Debug, Clone, Default)]
pub struct BusCounters {
    /// Batches stored.
    pub batches: Counter,
    /// Messages refused (undecodable, wrong type, invalid).
    pub bad_batches: Counter,
    /// Samples stored.
    pub samples: Counter,
}

/// Why a message on the metrics subject was refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Not a `metrics.batch` envelope in a supported encoding.
    #[error("not a metrics.batch envelope: {0}")]
    Decode(#[from] toronto_protocol::ProtocolError),
    /// A sample's name is empty.
    #[error("sample {0} has an empty name")]
    EmptyName(usize),
}

/// Stores the samples of one message; returns how many were kept.
pub fn ingest_message(
    store: &Store,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<usize, BatchError> {
    // Structured (JSON or MessagePack) or binary CloudEvents content mode.
    let envelope = toronto_runtime::service::decode_message::<MetricBatch>(headers, payload)?;
    let batch = envelope.data;
    if let Some(i) = batch.samples.iter().position(|s| s.name.trim().is_empty()) {
        return Err(BatchError::EmptyName(i));
    }
    let samples: Vec<(String, Labels, i64, f64)> = batch
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Labels = sample.labels;
            labels
                .entry("service".into())
                .or_insert_with(|| batch.service.clone());
            labels
                .entry("environment".into())
                .or_insert_with(|| batch.environment.clone());
            let at = sample.timestamp.timestamp_millis();
            (sample.name, labels, at, sample.value)
        })
        .collect();
    Ok(store.insert_batch(
        samples
            .iter()
            .map(|(name, labels, at, value)| (name.as_str(), labels, *at, *value)),
    ))
}

/// Why the bus ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The subscription could not be made.
    #[error("cannot subscribe to the metrics subjects: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The thread that decodes and stores ended (it panicked).
    #[error("the metrics ingest thread stopped")]
    IngestStopped,
}

/// Stores one message and counts it.
fn ingest_counted(store: &Store, counters: &BusCounters, msg: &async_nats::Message) {
    match ingest_message(store, msg.headers.as_ref(), &msg.payload) {
        Ok(kept) => {
            counters.batches.inc();
            counters.samples.inc_by(kept as u64);
        }
        Err(e) => {
            counters.bad_batches.inc();
            tracing::warn!(subject = %msg.subject, error = %e, "refused a metrics message");
        }
    }
}

/// Subscribes to `subject` (every replica sees every batch: no queue group) and stores
/// what arrives until `shutdown`, on a thread of the blocking pool (see the module
/// documentation).
pub async fn run(
    client: async_nats::Client,
    subject: String,
    store: Arc<Store>,
    counters: BusCounters,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(BusError::Subscribe)?;
    tracing::info!(subject, "taking metrics from the bus");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<async_nats::Message>(QUEUE);
    // Ends when `tx` is dropped and the queue is empty.
    tokio::task::spawn_blocking(move || {
        while let Some(msg) = rx.blocking_recv() {
            ingest_counted(&store, &counters, &msg);
        }
    });
    let outcome = loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            msg = sub.next() => match msg {
                Some(m) => m,
                None => break Ok(()),
            },
        };
        if tx.send(msg).await.is_err() {
            break Err(BusError::IngestStopped);
        }
    };
    let _ = sub.unsubscribe().await;
    outcome
}
