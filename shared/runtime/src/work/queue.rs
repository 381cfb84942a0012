//! The work queue of "advance record X" messages, and driving one record.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use tokio_util::sync::CancellationToken;
use toronto_protocol::{Envelope, Message};

use crate::Metrics;
use crate::jetstream::{
    ConsumerSpec, DeadLetters, Delivery, JetStreamError, Outcome, publish_envelope, run_consumer,
};

/// A JetStream work-queue stream with one subject and one durable consumer shared by
/// every replica of a service: each message is "advance this record", handled by
/// one replica at a time, redelivered when its handler dies.
#[derive(Debug, Clone)]
pub struct WorkQueue {
    js: Context,
    stream: String,
    subject: String,
    durable: String,
    description: &'static str,
}

impl WorkQueue {
    /// The queue `stream` over `subject`, consumed by `durable`.
    pub fn new(
        js: Context,
        stream: String,
        subject: String,
        durable: impl Into<String>,
        description: &'static str,
    ) -> Self {
        Self {
            js,
            stream,
            subject,
            durable: durable.into(),
            description,
        }
    }

    /// The stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The subject work is published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The durable consumer's name.
    pub fn durable(&self) -> &str {
        &self.durable
    }

    /// Checks that the stream exists and creates it when it does not (never updates it).
    pub async fn ensure(&self, replicas: usize) -> Result<(), JetStreamError> {
        crate::jetstream::ensure_stream(&self.js, self.config(replicas)).await
    }

    /// The admin's bootstrap: creates or updates the stream.
    pub async fn bootstrap(&self, replicas: usize) -> Result<(), JetStreamError> {
        self.js
            .create_or_update_stream(self.config(replicas))
            .await
            .map(|_| ())
            .map_err(|source| JetStreamError::Stream {
                name: self.stream.clone(),
                source,
            })
    }

    fn config(&self, replicas: usize) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            description: Some(self.description.to_owned()),
            subjects: vec![self.subject.clone()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }
    }

    /// Puts a piece of work on the queue (deduplicated by the envelope id).
    pub async fn enqueue<M: Message>(&self, envelope: &Envelope<M>) -> Result<(), JetStreamError> {
        publish_envelope(&self.js, &self.subject, envelope)
            .await
            .map(|_| ())
    }

    /// The consumer of the queue: a delivery is redelivered after `ack_wait` without
    /// an ack or progress, and dead-lettered after `max_deliver` deliveries.
    pub fn consumer(
        &self,
        ack_wait: Duration,
        max_deliver: i64,
        concurrency: usize,
    ) -> ConsumerSpec {
        ConsumerSpec {
            stream: self.stream.clone(),
            durable: self.durable.clone(),
            filter_subject: None,
            ack_wait,
            max_deliver,
            concurrency,
        }
    }

    /// Runs the consumer until `shutdown`: each message is decoded as a `M` envelope
    /// and handed to `handler`; one that cannot be decoded is dead-lettered.
    pub async fn run<M, H, Fut>(
        self,
        spec: ConsumerSpec,
        dead_letters: DeadLetters,
        metrics: Metrics,
        shutdown: CancellationToken,
        handler: H,
    ) -> Result<(), JetStreamError>
    where
        M: Message + Send + 'static,
        H: Fn(M, Delivery) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        run_consumer(
            self.js,
            spec,
            dead_letters,
            metrics,
            shutdown,
            move |delivery: Delivery| {
                let handler = handler.clone();
                async move {
                    match crate::service::decode_message::<M>(
                        delivery.headers(),
                        delivery.payload(),
                    ) {
                        Ok(work) => handler(work.data, delivery).await,
                        Err(e) => Outcome::Reject {
                            reason: e.to_string(),
                        },
                    }
                }
            },
        )
        .await
    }
}

/// What one pass over a record decided (the kube-rs reconciler's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Come back after this long (keeping the message).
    After(Duration),
    /// Nothing more to do now: acknowledge the message.
    Done,
}

/// How [`drive`] stopped.
#[derive(Debug)]
pub enum Driven<E> {
    /// A pass said [`Next::Done`].
    Done,
    /// A pass failed.
    Failed(E),
    /// `crash` was cancelled: stop as a dead process would (nothing acked).
    Crashed,
    /// `shutdown` was cancelled: hand the record over.
    ShutDown,
}

/// Advances one record for as long as its delivery lasts: runs `pass` until it says
/// [`Next::Done`] or fails, sleeping as each pass asks, and tells the server work is
/// going on at least every `progress_every` so that the delivery (and with it the
/// lease of the same length) does not run out while the record waits.
pub async fn drive<E, F, Fut>(
    delivery: &Delivery,
    progress_every: Duration,
    crash: &CancellationToken,
    shutdown: &CancellationToken,
    mut pass: F,
) -> Driven<E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Next, E>>,
{
    let mut last_progress = Instant::now();
    loop {
        if crash.is_cancelled() {
            return Driven::Crashed;
        }
        if shutdown.is_cancelled() {
            return Driven::ShutDown;
        }
        let wait = match pass().await {
            Ok(Next::Done) => return Driven::Done,
            Ok(Next::After(wait)) => wait,
            Err(e) => return Driven::Failed(e),
        };
        if last_progress.elapsed() >= progress_every {
            delivery.progress().await;
            last_progress = Instant::now();
        }
        tokio::select! {
            _ = crash.cancelled() => return Driven::Crashed,
            _ = shutdown.cancelled() => return Driven::ShutDown,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
