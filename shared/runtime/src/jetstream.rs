//! JetStream: the streams and buckets every service relies on, event publishing
//! with server-side deduplication, durable pull consumers, and dead letters.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toronto_protocol::codec::CONTENT_TYPE_HEADER;
use toronto_protocol::trace::TRACEPARENT_HEADER;
use toronto_protocol::{Encoding, Envelope, Message, Subjects, encode};

use crate::config::JetStreamConfig;
use crate::metrics::{ConsumerLabels, EventLabels, Metrics};

/// Header with the reason a message was dead-lettered.
pub const DLQ_REASON_HEADER: &str = "Toronto-Dlq-Reason";
/// Header naming the service part (endpoint or consumer) that refused it.
pub const DLQ_ORIGIN_HEADER: &str = "Toronto-Dlq-Origin";
/// Header with the subject the message was first sent to.
pub const DLQ_SUBJECT_HEADER: &str = "Toronto-Dlq-Subject";
/// Header with the stream it came from, if any.
pub const DLQ_STREAM_HEADER: &str = "Toronto-Dlq-Stream";
/// Header with its sequence in that stream.
pub const DLQ_STREAM_SEQ_HEADER: &str = "Toronto-Dlq-Stream-Seq";
/// Header with how many times it was delivered.
pub const DLQ_DELIVERIES_HEADER: &str = "Toronto-Dlq-Deliveries";
/// Header with the original `Nats-Msg-Id`.
pub const DLQ_ORIGINAL_MSG_ID_HEADER: &str = "Toronto-Dlq-Original-Msg-Id";

/// A JetStream operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    /// A stream could not be created or updated.
    #[error("cannot create or update stream {name}: {source}")]
    Stream {
        /// The stream.
        name: String,
        /// The server's answer.
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// A KV bucket could not be created or updated.
    #[error("cannot create or update KV bucket {name}: {source}")]
    Bucket {
        /// The bucket.
        name: String,
        /// The server's answer.
        #[source]
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
    /// A publish was not acknowledged.
    #[error("publish to {subject} failed: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// What went wrong.
        reason: String,
    },
    /// A consumer could not be created or read.
    #[error("consumer {durable} on {stream}: {reason}")]
    Consumer {
        /// The stream.
        stream: String,
        /// The durable name.
        durable: String,
        /// What went wrong.
        reason: String,
    },
}

/// Creates or updates the events, tasks and dead-letter streams.
pub async fn ensure_streams(
    js: &Context,
    subjects: &Subjects,
    config: &JetStreamConfig,
) -> Result<(), JetStreamError> {
    let dedup = Duration::from_secs(120);
    let streams = [
        stream::Config {
            name: subjects.events_stream(),
            description: Some("Toronto DevOps events: the audit log and incident timeline".into()),
            subjects: vec![subjects.events_all()],
            retention: RetentionPolicy::Limits,
            max_age: Duration::from_secs(config.events_max_age_days * 86_400),
            storage: StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: dedup,
            allow_direct: true,
            ..Default::default()
        },
        stream::Config {
            name: subjects.tasks_stream(),
            description: Some("Tasks handed to the DevOps agent by peers (work queue)".into()),
            subjects: vec![subjects.tasks()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: dedup,
            ..Default::default()
        },
        stream::Config {
            name: subjects.dlq_stream(),
            description: Some("Messages the DevOps agent refused, with the reason".into()),
            subjects: vec![subjects.dlq_all()],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: dedup,
            allow_direct: true,
            ..Default::default()
        },
    ];
    for config in streams {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|source| JetStreamError::Stream { name, source })?;
    }
    Ok(())
}

/// Creates or updates a KV bucket (name from [`Subjects::kv_bucket`]).
pub async fn ensure_kv(
    js: &Context,
    bucket: &str,
    history: i64,
    replicas: usize,
) -> Result<kv::Store, JetStreamError> {
    js.create_or_update_key_value(kv::Config {
        bucket: bucket.to_owned(),
        history,
        num_replicas: replicas,
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|source| JetStreamError::Bucket {
        name: bucket.to_owned(),
        source,
    })
}

/// Publishes events to the events stream and waits for the server's ack.
#[derive(Clone, Debug)]
pub struct Events {
    js: Context,
    subjects: Subjects,
    metrics: Metrics,
}

impl Events {
    /// A publisher over `js`.
    pub fn new(js: Context, subjects: Subjects, metrics: Metrics) -> Self {
        Self {
            js,
            subjects,
            metrics,
        }
    }

    /// Publishes `envelope` as `<prefix>.devops.v1.events.<entity>.<what>` with
    /// `Nats-Msg-Id` set to the envelope id, so a retried publish is stored once.
    pub async fn publish<T: Message>(
        &self,
        entity: &str,
        what: &str,
        envelope: &Envelope<T>,
    ) -> Result<PublishAck, JetStreamError> {
        let subject = self.subjects.event(entity, what);
        let ack = publish_envelope(&self.js, &subject, envelope).await?;
        self.metrics
            .events_published
            .get_or_create(&EventLabels {
                r#type: envelope.ty.clone(),
            })
            .inc();
        Ok(ack)
    }
}

/// Publishes an envelope (JSON) to a stream subject with `Nats-Msg-Id` = its id and
/// waits for the ack.
pub async fn publish_envelope<T: Message>(
    js: &Context,
    subject: &str,
    envelope: &Envelope<T>,
) -> Result<PublishAck, JetStreamError> {
    let failed = |reason: String| JetStreamError::Publish {
        subject: subject.to_owned(),
        reason,
    };
    let bytes = encode(envelope, Encoding::Json).map_err(|e| failed(e.to_string()))?;
    let mut publish = Publish::build()
        .payload(Bytes::from(bytes))
        .message_id(envelope.id.to_string())
        .header(CONTENT_TYPE_HEADER, Encoding::Json.content_type());
    if let Some(tp) = &envelope.traceparent {
        publish = publish.header(TRACEPARENT_HEADER, tp.as_str());
    }
    js.send_publish(subject.to_owned(), publish)
        .await
        .map_err(|e| failed(e.to_string()))?
        .await
        .map_err(|e| failed(e.to_string()))
}

/// Where a dead letter came from.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterSource {
    /// Stream it was read from.
    pub stream: Option<String>,
    /// Its sequence there.
    pub stream_sequence: Option<u64>,
    /// Deliveries so far.
    pub deliveries: Option<i64>,
}

/// Parks refused messages in `<prefix>.devops.v1.dlq.<service>` with the original
/// bytes, the original headers, and the reason.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    js: Context,
    subject: String,
    metrics: Metrics,
}

impl DeadLetters {
    /// Dead letters of `service` (a subject token, e.g. `planner`).
    pub fn new(js: Context, subjects: &Subjects, service: &str, metrics: Metrics) -> Self {
        Self {
            js,
            subject: subjects.dlq(service),
            metrics,
        }
    }

    /// The subject dead letters go to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Parks a core NATS message.
    pub async fn park_message(
        &self,
        origin: &str,
        message: &async_nats::Message,
        reason: &str,
        source: Option<DeadLetterSource>,
    ) -> bool {
        self.park(
            origin,
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
            reason,
            source.unwrap_or_default(),
        )
        .await
    }

    /// Parks raw bytes with their headers. Returns whether the DLQ stream stored it;
    /// a failure is logged with the reason so that it is at least visible.
    pub async fn park(
        &self,
        origin: &str,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
        reason: &str,
        source: DeadLetterSource,
    ) -> bool {
        let mut out = HeaderMap::new();
        if let Some(headers) = headers {
            for (name, values) in headers.iter() {
                let name = name.to_string();
                if name.eq_ignore_ascii_case("Nats-Msg-Id") {
                    for v in values {
                        out.append(DLQ_ORIGINAL_MSG_ID_HEADER, v.as_str());
                    }
                } else if !name.starts_with("Nats-") {
                    for v in values {
                        out.append(name.as_str(), v.as_str());
                    }
                }
            }
        }
        // Header values cannot hold line breaks.
        let reason_line = reason.replace(['\r', '\n'], " ");
        out.insert(DLQ_REASON_HEADER, reason_line.as_str());
        out.insert(DLQ_ORIGIN_HEADER, origin);
        out.insert(DLQ_SUBJECT_HEADER, subject);
        let msg_id = match (&source.stream, source.stream_sequence) {
            (Some(stream), Some(seq)) => {
                out.insert(DLQ_STREAM_HEADER, stream.as_str());
                out.insert(DLQ_STREAM_SEQ_HEADER, seq.to_string().as_str());
                format!("dlq-{stream}-{seq}")
            }
            _ => format!("dlq-{}", uuid::Uuid::now_v7()),
        };
        if let Some(n) = source.deliveries {
            out.insert(DLQ_DELIVERIES_HEADER, n.to_string().as_str());
        }
        let publish = Publish::build()
            .payload(payload)
            .headers(out)
            .message_id(msg_id);
        let result = match self.js.send_publish(self.subject.clone(), publish).await {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => {
                self.metrics
                    .dead_letters
                    .get_or_create(&ConsumerLabels {
                        consumer: origin.to_owned(),
                    })
                    .inc();
                tracing::warn!(
                    origin,
                    subject,
                    reason,
                    "message parked in the dead-letter stream"
                );
                true
            }
            Err(e) => {
                tracing::error!(origin, subject, reason, error = %e, "cannot park message in the dead-letter stream");
                false
            }
        }
    }
}

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
/// this returns.
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
    {
        let stream = stream.clone();
        let dead_letters = dead_letters.clone();
        let shutdown = shutdown.clone();
        let origin = spec.durable.clone();
        let stream_name = spec.stream.clone();
        tracker.spawn(async move {
            loop {
                let advisory = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    a = advisories.next() => match a { Some(a) => a, None => break },
                };
                let Ok(advisory) = serde_json::from_slice::<MaxDeliveriesAdvisory>(&advisory.payload) else {
                    continue;
                };
                match stream.get_raw_message(advisory.stream_seq).await {
                    Ok(original) => {
                        dead_letters
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
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(durable = %spec.durable, error = %e, "consumer error; continuing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            None => break,
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
        tracker.spawn(async move {
            let _permit = permit;
            let Delivery { message } = delivery;
            let outcome = AssertUnwindSafe(handler(Delivery {
                message: message.clone(),
            }))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Outcome::Retry {
                delay: None,
                reason: "the handler panicked".into(),
            });
            settle(&spec, &dead_letters, &message, deliveries, outcome).await;
        });
    }
    drop(messages);
    tracker.close();
    tracker.wait().await;
    Ok(())
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

/// A message held in the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what `replay` takes).
    pub sequence: u64,
    /// When it was parked.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The dead-letter subject, e.g. `toronto.devops.v1.dlq.planner`.
    pub subject: String,
    /// Why it was refused.
    pub reason: String,
    /// The endpoint or consumer that refused it.
    pub origin: String,
    /// Where it was first sent.
    pub original_subject: String,
    /// Deliveries before it was parked, when it came from a stream.
    pub deliveries: Option<i64>,
    /// Its headers as parked (original headers plus the `Toronto-Dlq-*` ones).
    pub headers: HeaderMap,
    /// The original bytes.
    pub payload: Bytes,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_owned())
}

fn dlq_error(subjects: &Subjects, reason: impl ToString) -> JetStreamError {
    JetStreamError::Consumer {
        stream: subjects.dlq_stream(),
        durable: "-".into(),
        reason: reason.to_string(),
    }
}

/// Reads one dead letter by its sequence; `None` when there is none at that sequence.
pub async fn dead_letter(
    js: &Context,
    subjects: &Subjects,
    sequence: u64,
) -> Result<Option<DeadLetter>, JetStreamError> {
    let stream = js
        .get_stream(subjects.dlq_stream())
        .await
        .map_err(|e| dlq_error(subjects, e))?;
    let message = match stream.get_raw_message(sequence).await {
        Ok(m) => m,
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(dlq_error(subjects, e)),
    };
    let headers = message.headers.clone();
    Ok(Some(DeadLetter {
        sequence,
        time: message.time,
        subject: message.subject.to_string(),
        reason: header(&headers, DLQ_REASON_HEADER).unwrap_or_default(),
        origin: header(&headers, DLQ_ORIGIN_HEADER).unwrap_or_default(),
        original_subject: header(&headers, DLQ_SUBJECT_HEADER).unwrap_or_default(),
        deliveries: header(&headers, DLQ_DELIVERIES_HEADER).and_then(|d| d.parse().ok()),
        headers,
        payload: message.payload,
    }))
}

/// Lists up to `limit` dead letters, oldest first.
pub async fn list_dead_letters(
    js: &Context,
    subjects: &Subjects,
    limit: usize,
) -> Result<Vec<DeadLetter>, JetStreamError> {
    let mut stream = js
        .get_stream(subjects.dlq_stream())
        .await
        .map_err(|e| dlq_error(subjects, e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| dlq_error(subjects, e))?
        .state
        .clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if out.len() >= limit {
            break;
        }
        if let Some(letter) = dead_letter(js, subjects, sequence).await? {
            out.push(letter);
        }
    }
    Ok(out)
}

/// Sends a dead letter back to the subject it was first sent to, with its original
/// headers (a stream subject gets a JetStream publish with `Nats-Msg-Id =
/// replay-<dlq seq>`, so a repeated replay is stored once), then removes it from the
/// dead-letter stream unless `keep`. Returns the subject it went to.
pub async fn replay_dead_letter(
    js: &Context,
    subjects: &Subjects,
    sequence: u64,
    keep: bool,
) -> Result<String, JetStreamError> {
    let letter = dead_letter(js, subjects, sequence)
        .await?
        .ok_or_else(|| dlq_error(subjects, format!("no dead letter at sequence {sequence}")))?;
    if letter.original_subject.is_empty() {
        return Err(dlq_error(
            subjects,
            format!("dead letter {sequence} does not say where it came from"),
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        let name = name.to_string();
        if !name.starts_with("Toronto-Dlq-") && !name.starts_with("Nats-") {
            for v in values {
                headers.append(name.as_str(), v.as_str());
            }
        }
    }
    let target = letter.original_subject.clone();
    if js.stream_by_subject(target.clone()).await.is_ok() {
        let publish = Publish::build()
            .payload(letter.payload.clone())
            .headers(headers)
            .message_id(format!("replay-{}-{sequence}", subjects.dlq_stream()));
        js.send_publish(target.clone(), publish)
            .await
            .map_err(|e| dlq_error(subjects, format!("replay to {target} failed: {e}")))?
            .await
            .map_err(|e| dlq_error(subjects, format!("replay to {target} failed: {e}")))?;
    } else {
        // Not a stream subject (e.g. a request endpoint): send it as a plain message.
        let client = js.client();
        client
            .publish_with_headers(target.clone(), headers, letter.payload.clone())
            .await
            .map_err(|e| dlq_error(subjects, e))?;
        client.flush().await.map_err(|e| dlq_error(subjects, e))?;
    }
    if !keep {
        let stream = js
            .get_stream(subjects.dlq_stream())
            .await
            .map_err(|e| dlq_error(subjects, e))?;
        stream
            .delete_message(sequence)
            .await
            .map_err(|e| dlq_error(subjects, e))?;
    }
    Ok(target)
}
