//! Metrics pushed over the bus: `MetricBatch` envelopes on `toronto.metrics.>`, into
//! the store. A message that cannot be read is logged and counted, never fatal.

use std::sync::Arc;

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use toronto_protocol::analysis::MetricBatch;

use crate::store::{Labels, Store};

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
    let mut kept = 0;
    for sample in batch.samples {
        let mut labels: Labels = sample.labels;
        labels
            .entry("service".into())
            .or_insert_with(|| batch.service.clone());
        labels
            .entry("environment".into())
            .or_insert_with(|| batch.environment.clone());
        if store.insert(
            &sample.name,
            &labels,
            sample.timestamp.timestamp_millis(),
            sample.value,
        ) {
            kept += 1;
        }
    }
    Ok(kept)
}

/// Subscribes to `subject` (every replica sees every batch: no queue group) and stores
/// what arrives until `shutdown`.
pub async fn run(
    client: async_nats::Client,
    subject: String,
    store: Arc<Store>,
    counters: BusCounters,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(subject.clone()).await?;
    tracing::info!(subject, "taking metrics from the bus");
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = sub.next() => match msg {
                Some(m) => m,
                None => break,
            },
        };
        match ingest_message(&store, msg.headers.as_ref(), &msg.payload) {
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
    let _ = sub.unsubscribe().await;
    Ok(())
}
