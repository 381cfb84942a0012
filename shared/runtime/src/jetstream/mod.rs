//! JetStream: the streams and buckets every service relies on, event publishing
//! with server-side deduplication, durable pull consumers, and dead letters.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use bytes::Bytes;
use toronto_protocol::codec::CONTENT_TYPE_HEADER;
use toronto_protocol::codec::encode_ref;
use toronto_protocol::envelope::EnvelopeRef;
use toronto_protocol::trace::{TRACEPARENT_HEADER, TRACESTATE_HEADER};
use toronto_protocol::{Encoding, Envelope, Message, Subjects};

use crate::config::JetStreamConfig;
use crate::metrics::{EventLabels, Metrics};

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
    /// A stream could not be created or updated (a missing stream that this NATS user
    /// may not create: run `toronto bootstrap` as the admin).
    #[error(
        "cannot create or update stream {name} (run `toronto bootstrap` as the NATS admin if this user may not): {source}"
    )]
    Stream {
        /// The stream.
        name: String,
        /// The server's answer.
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// A KV bucket could not be created or updated (a missing bucket that this NATS
    /// user may not create: run `toronto bootstrap` as the admin).
    #[error(
        "cannot create or update KV bucket {name} (run `toronto bootstrap` as the NATS admin if this user may not): {source}"
    )]
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

/// The largest task the work-queue stream accepts: the same limit as a `submit`
/// request (the default `TORONTO_MAX_PAYLOAD_BYTES`), so that the queue
/// refuses what the endpoint would.
pub const TASK_MAX_BYTES: i32 = 256 * 1024;

/// The events, tasks and dead-letter streams as the bootstrap creates them.
pub fn stream_configs(subjects: &Subjects, config: &JetStreamConfig) -> Vec<stream::Config> {
    let dedup = Duration::from_secs(120);
    vec![
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
            max_message_size: TASK_MAX_BYTES,
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
    ]
}

/// What a service does at start: checks that the events, tasks and dead-letter
/// streams exist and creates those that do not (which a least-privilege user may not
/// do: then the error says to run `toronto bootstrap`). It never updates a stream.
pub async fn ensure_streams(
    js: &Context,
    subjects: &Subjects,
    config: &JetStreamConfig,
) -> Result<(), JetStreamError> {
    for config in stream_configs(subjects, config) {
        ensure_stream(js, config).await?;
    }
    Ok(())
}

/// Checks that a stream exists, and creates it (as `config` says) when it does not;
/// an existing stream is left as it is.
pub async fn ensure_stream(js: &Context, config: stream::Config) -> Result<(), JetStreamError> {
    if js.get_stream(&config.name).await.is_ok() {
        return Ok(());
    }
    let name = config.name.clone();
    js.create_stream(config)
        .await
        .map(|_| ())
        .map_err(|source| JetStreamError::Stream { name, source })
}

/// The admin's bootstrap: creates or updates the events, tasks and dead-letter
/// streams to their configuration.
pub async fn bootstrap_streams(
    js: &Context,
    subjects: &Subjects,
    config: &JetStreamConfig,
) -> Result<(), JetStreamError> {
    for config in stream_configs(subjects, config) {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|source| JetStreamError::Stream { name, source })?;
    }
    Ok(())
}

fn kv_config(bucket: &str, history: i64, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: bucket.to_owned(),
        history,
        num_replicas: replicas,
        storage: StorageType::File,
        ..Default::default()
    }
}

/// What a service does at start: opens the KV bucket (name from
/// [`Subjects::kv_bucket`]), creating it when it does not exist; an existing bucket
/// is never updated.
pub async fn ensure_kv(
    js: &Context,
    bucket: &str,
    history: i64,
    replicas: usize,
) -> Result<kv::Store, JetStreamError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    js.create_key_value(kv_config(bucket, history, replicas))
        .await
        .map_err(|source| JetStreamError::Bucket {
            name: bucket.to_owned(),
            source,
        })
}

/// The admin's bootstrap: creates or updates a KV bucket.
pub async fn bootstrap_kv(
    js: &Context,
    bucket: &str,
    history: i64,
    replicas: usize,
) -> Result<kv::Store, JetStreamError> {
    js.create_or_update_key_value(kv_config(bucket, history, replicas))
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
    /// `Nats-Msg-Id` set to the envelope id, so a retried publish is stored once. The
    /// published `type` is the event's own (`ai.toronto.devops.<entity>.<what>.v<N>`,
    /// [`toronto_protocol::message::event_type`]) whatever the envelope was built with.
    pub async fn publish<T: Message>(
        &self,
        entity: &str,
        what: &str,
        envelope: &Envelope<T>,
    ) -> Result<PublishAck, JetStreamError> {
        let subject = self.subjects.event(entity, what);
        let ty = toronto_protocol::message::event_type(entity, what, T::MAJOR).to_string();
        let mut wire = envelope.borrowed();
        wire.ty = &ty;
        let ack = publish_ref(&self.js, &subject, &wire).await?;
        self.metrics
            .events_published
            .get_or_create(&EventLabels { r#type: ty })
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
    publish_ref(js, subject, &envelope.borrowed()).await
}

async fn publish_ref<T: Message>(
    js: &Context,
    subject: &str,
    envelope: &EnvelopeRef<'_, T>,
) -> Result<PublishAck, JetStreamError> {
    let failed = |reason: String| JetStreamError::Publish {
        subject: subject.to_owned(),
        reason,
    };
    let bytes = encode_ref(envelope, Encoding::Json).map_err(|e| failed(e.to_string()))?;
    let mut publish = Publish::build()
        .payload(Bytes::from(bytes))
        .message_id(envelope.id)
        .header(CONTENT_TYPE_HEADER, Encoding::Json.content_type());
    if let Some(tp) = envelope.traceparent {
        publish = publish.header(TRACEPARENT_HEADER, tp);
        if crate::telemetry::exporting()
            && let Some(sc) = crate::telemetry::propagation::current()
        {
            let mut state = async_nats::HeaderMap::new();
            crate::telemetry::propagation::add_tracestate_of(&mut state, tp, &sc);
            if let Some(value) = state.get(TRACESTATE_HEADER) {
                publish = publish.header(TRACESTATE_HEADER, value.as_str());
            }
        }
    }
    js.send_publish(subject.to_owned(), publish)
        .await
        .map_err(|e| failed(e.to_string()))?
        .await
        .map_err(|e| failed(e.to_string()))
}

mod consumer;
mod dlq;

pub use consumer::{ConsumerSpec, Delivery, MAX_ERRORS_IN_A_ROW, Outcome, run_consumer};
pub use dlq::{
    DeadLetter, DeadLetterSource, DeadLetters, MAX_ECHOED_HEADER_BYTES, dead_letter, header_value,
    list_dead_letters, replay_dead_letter,
};
