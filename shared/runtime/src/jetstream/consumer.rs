//! Durable pull consumers: each message to a handler, settled by its [`Outcome`]
//! (ack, retry with delay, or the dead-letter stream).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::RetentionPolicy;
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::{ConsumerLabels, Metrics};

use super::{DeadLetterSource, DeadLetters, JetStreamError};

/// What a consumer handler decided about a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; acknowledge it.
    Ack,
    /// Try again later (after the delay, if given). Past the consumer's max-deliver
    /// the message goes to the dead-letter stream with this reason.
    Retry {
        /// Redelivery delay.
        delay: Option<Duration>,
        /// Why it failed this time.
        reason: String,
    },
    /// It can never be handled: park it in the dead-letter stream now.
    Reject {
        /// Why.
        reason: String,
    },
    /// Leave it unacknowledged, as a process that died would: the server redelivers it
    /// (to this or another replica) once its ack deadline has passed.
    Abandon,
}

/// A message delivered to a consumer handler.
#[derive(Debug)]
pub struct Delivery {
    message: jetstream::Message,
}

impl Delivery {
    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The headers.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    /// The subject it was published to.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// How many times it has been delivered, this time included.
    pub fn deliveries(&self) -> i64 {
        self.message.info().map(|i| i.delivered).unwrap_or(1)
    }

    /// Its sequence in the stream.
    pub fn stream_sequence(&self) -> u64 {
        self.message.info().map(|i| i.stream_sequence).unwrap_or(0)
    }

    /// When the stream stored it (now, when the server did not say).
    pub fn stored_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.message
            .info()
            .ok()
            .map(|i| i.published.with_timezone(&chrono::Utc))
            .unwrap_or_else(chrono::Utc::now)
    }

    /// Tells the server work is going on, resetting the ack deadline.
    pub async fn progress(&self) {
        if let Err(e) = self.message.ack_with(AckKind::Progress).await {
            tracing::warn!(error = %e, "cannot send progress ack");
        }
    }
}

/// A durable pull consumer and how to run it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The stream.
    pub stream: String,
    /// Durable name, shared by the replicas of a service.
    pub durable: String,
    /// Only messages on this subject, if given.
    pub filter_subject: Option<String>,
    /// How long a delivery may go unacknowledged before redelivery.
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
    /// Messages handled at once.
    pub concurrency: usize,
}

/// Consumer errors in a row (each 200 ms apart) after which a run gives up.
pub const MAX_ERRORS_IN_A_ROW: u32 = 25;

#[derive(Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: i64,
}

/// Runs a durable pull consumer until `shutdown`: each message goes to `handler`
/// (concurrently up to the spec's bound) and is acked, nak'd with delay, or parked in
/// the dead-letter stream with its reason. A panicking handler counts as a retry.
/// Messages that reach max-deliver without a verdict (their handler died) are parked
/// through the server's max-deliveries advisory. In-flight messages finish before
/// this returns. It ends with an error when the consumer's message stream ends or
/// fails [`MAX_ERRORS_IN_A_ROW`] times in a row before shutdown (for its supervisor
/// to start it again).
pub async fn run_consumer<H, Fut>(
    js: Context,
    spec: ConsumerSpec,
    dead_letters: DeadLetters,
    metrics: Metrics,
    shutdown: CancellationToken,
    handler: H,
) -> Result<(), JetStreamError>
where
    H: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let consumer_err = |reason: String| JetStreamError::Consumer {
        stream: spec.stream.clone(),
        durable: spec.durable.clone(),
        reason,
    };
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(|e| consumer_err(e.to_string()))?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_deliver: spec.max_deliver,
                filter_subject: spec.filter_subject.clone().unwrap_or_default(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| consumer_err(e.to_string()))?;

    let tracker = TaskTracker::new();
    // Parks messages whose handler never returned a verdict on the last delivery.
    let advisory_subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        spec.stream, spec.durable
    );
    let mut advisories = js
        .client()
        .subscribe(advisory_subject)
        .await
        .map_err(|e| consumer_err(e.to_string()))?;
    let work_queue = stream.cached_info().config.retention == RetentionPolicy::WorkQueue;
    let advisories_stop = shutdown.child_token();
    {
        let stream = stream.clone();
        let dead_letters = dead_letters.clone();
        let shutdown = advisories_stop.clone();
        let origin = spec.durable.clone();
        let stream_name = spec.stream.clone();
        tracker.spawn(async move {
            loop {
                let advisory = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    a = advisories.next() => match a { Some(a) => a, None => break },
                };
                let Ok(advisory) = toronto_protocol::codec::from_json_bounded::<MaxDeliveriesAdvisory>(&advisory.payload) else {
                    continue;
                };
                match stream.get_raw_message(advisory.stream_seq).await {
                    Ok(original) => {
                        let parked = dead_letters
                            .park(
                                &origin,
                                original.subject.as_str(),
                                Some(&original.headers),
                                original.payload.clone(),
                                &format!(
                                    "delivered {} times without being acknowledged (max deliver reached)",
                                    advisory.deliveries
                                ),
                                DeadLetterSource {
                                    stream: Some(stream_name.clone()),
                                    stream_sequence: Some(advisory.stream_seq),
                                    deliveries: Some(advisory.deliveries),
                                },
                            )
                            .await;
                        // A work queue would keep it for ever (no one acks it): once it
                        // is safe in the dead-letter stream, it leaves the queue.
                        if parked
                            && work_queue
                            && let Err(e) = stream.delete_message(advisory.stream_seq).await
                        {
                            tracing::warn!(seq = advisory.stream_seq, error = %e, "cannot remove a parked message from its work queue");
                        }
                    }
                    Err(e) => tracing::warn!(seq = advisory.stream_seq, error = %e, "cannot fetch message named by a max-deliveries advisory"),
                }
            }
            let _ = advisories.unsubscribe().await;
        });
    }

    let permits = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let handler = Arc::new(handler);
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| consumer_err(e.to_string()))?;
    let mut errors_in_a_row = 0;
    let mut ended = Ok(());
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = messages.next() => n,
        };
        let message = match next {
            Some(Ok(m)) => {
                errors_in_a_row = 0;
                m
            }
            Some(Err(e)) => {
                errors_in_a_row += 1;
                if errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
                    // The consumer is gone or unusable: end the run, so that its
                    // supervisor reports the loop down and starts it again.
                    ended = Err(consumer_err(format!(
                        "{errors_in_a_row} consumer errors in a row, the last: {e}"
                    )));
                    break;
                }
                tracing::warn!(durable = %spec.durable, error = %e, "consumer error; continuing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            None => {
                if !shutdown.is_cancelled() {
                    ended = Err(consumer_err("the message stream ended".into()));
                }
                break;
            }
        };
        let delivery = Delivery { message };
        let deliveries = delivery.deliveries();
        if deliveries > 1 {
            metrics
                .redeliveries
                .get_or_create(&ConsumerLabels {
                    consumer: spec.durable.clone(),
                })
                .inc();
        }
        let handler = handler.clone();
        let dead_letters = dead_letters.clone();
        let spec = spec.clone();
        // The handler runs in a span whose parent is the message's trace context.
        let span = tracing::info_span!(
            "consume",
            otel.name = %format_args!("{} process", spec.durable),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.destination.name = %delivery.subject(),
            messaging.consumer.group.name = %spec.durable,
            deliveries,
        );
        if crate::telemetry::exporting() {
            crate::telemetry::propagation::set_parent(
                &span,
                crate::telemetry::propagation::remote_context(
                    delivery.headers(),
                    body_traceparent(&delivery).as_ref(),
                ),
            );
        }
        tracker.spawn(async move {
            let _permit = permit;
            let Delivery { message } = delivery;
            let outcome = AssertUnwindSafe(handler(Delivery {
                message: message.clone(),
            }))
            .catch_unwind()
            .instrument(span)
            .await
            .unwrap_or_else(|_| Outcome::Retry {
                delay: None,
                reason: "the handler panicked".into(),
            });
            settle(&spec, &dead_letters, &message, deliveries, outcome).await;
        });
    }
    drop(messages);
    advisories_stop.cancel();
    tracker.close();
    tracker.wait().await;
    ended
}

/// The envelope's `traceparent` attribute of a JSON message published without the
/// header (a peer that sets only the attribute). Our own publishes carry the header,
/// equal to the attribute, and are not parsed twice.
fn body_traceparent(delivery: &Delivery) -> Option<toronto_protocol::TraceParent> {
    #[derive(Deserialize)]
    struct Attributes {
        traceparent: Option<String>,
    }
    let headers = delivery.headers();
    if headers.is_some_and(|h| h.get(toronto_protocol::trace::TRACEPARENT_HEADER).is_some()) {
        return None;
    }
    let content_type = headers.and_then(|h| h.get(toronto_protocol::codec::CONTENT_TYPE_HEADER));
    if toronto_protocol::Encoding::from_content_type(content_type.map(|v| v.as_str())).ok()
        != Some(toronto_protocol::Encoding::Json)
    {
        return None;
    }
    let attributes: Attributes =
        toronto_protocol::codec::from_json_bounded(delivery.payload()).ok()?;
    toronto_protocol::TraceParent::parse(&attributes.traceparent?)
}

async fn settle(
    spec: &ConsumerSpec,
    dead_letters: &DeadLetters,
    message: &jetstream::Message,
    deliveries: i64,
    outcome: Outcome,
) {
    let park_reason = match outcome {
        Outcome::Ack => {
            if let Err(e) = message.double_ack().await {
                tracing::warn!(error = %e, "ack not confirmed; the message may be redelivered");
            }
            return;
        }
        Outcome::Retry { delay, reason } => {
            if spec.max_deliver > 0 && deliveries >= spec.max_deliver {
                format!(
                    "failed {deliveries} deliveries (max deliver {}): {reason}",
                    spec.max_deliver
                )
            } else {
                tracing::info!(durable = %spec.durable, deliveries, reason, "message will be retried");
                if let Err(e) = message.ack_with(AckKind::Nak(delay)).await {
                    tracing::warn!(error = %e, "cannot nak");
                }
                return;
            }
        }
        Outcome::Reject { reason } => reason,
        Outcome::Abandon => {
            tracing::warn!(durable = %spec.durable, "message abandoned; it is redelivered after its ack deadline");
            return;
        }
    };
    let info = message.info().ok();
    let parked = dead_letters
        .park(
            &spec.durable,
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
            &park_reason,
            DeadLetterSource {
                stream: info.as_ref().map(|i| i.stream.to_owned()),
                stream_sequence: info.as_ref().map(|i| i.stream_sequence),
                deliveries: Some(deliveries),
            },
        )
        .await;
    // Only drop the message once it is safe in the dead-letter stream.
    let kind = if parked {
        AckKind::Term
    } else {
        AckKind::Nak(Some(Duration::from_secs(5)))
    };
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "cannot settle a dead-lettered message");
    }
}
