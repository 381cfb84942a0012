//! Starting the outbox: its stream and the sender's durable consumer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use toronto_runtime::jetstream::{ConsumerSpec, run_consumer};
use toronto_runtime::{RuntimeError, ServiceRuntime};

use crate::engine::Engine;

/// How long a notification's id deduplicates a decision taken again (after a crash).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(3600);
/// Notifications sent at once.
const CONCURRENCY: usize = 32;

/// The outbox stream: a work queue on `<prefix>.devops.v1.outbox.>` whose
/// `Nats-Msg-Id`s deduplicate for an hour (`toronto bootstrap` creates it too).
pub fn stream_config(prefix: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: super::stream_name(prefix),
        description: Some(
            "Notifications decided and not yet delivered (incident commander)".into(),
        ),
        subjects: vec![super::subject(prefix, ">")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DEDUP_WINDOW,
        ..Default::default()
    }
}

/// Makes sure the outbox stream exists: an existing one is used as it is (a service
/// user may not change streams); a missing one is created when the user may.
pub async fn ensure_stream(rt: &ServiceRuntime) -> Result<(), RuntimeError> {
    let config = stream_config(rt.subjects.prefix(), rt.config.jetstream.replicas);
    let name = config.name.clone();
    if rt.js.get_stream(&name).await.is_ok() {
        return Ok(());
    }
    rt.js
        .create_stream(config)
        .await
        .map_err(|e| RuntimeError::Restore {
            from: format!("stream {name} (run `toronto bootstrap` as admin)"),
            source: Box::new(e),
        })?;
    Ok(())
}

/// Runs the sender (supervised by the runtime) in every term this replica owns the
/// work (it writes delivery results on the timeline), until shutdown. A message in
/// flight when a term ends is delivered again to the next owner after its ack wait.
pub fn spawn_sender(
    rt: &ServiceRuntime,
    engine: Arc<Engine>,
    ownership: crate::replica::Ownership,
) {
    let n = &engine.settings.policy.notifications;
    let timeout = Duration::from_millis(n.timeout_ms);
    let spec = ConsumerSpec {
        stream: super::stream_name(rt.subjects.prefix()),
        durable: format!("{}-outbox", crate::KIND.service_name()),
        filter_subject: None,
        ack_wait: (timeout * 2).max(Duration::from_secs(30)),
        // One more than the attempts: the handler parks the last failure itself; the
        // consumer's own parking only catches a handler that died every time.
        max_deliver: i64::from(n.max_attempts) + 1,
        concurrency: CONCURRENCY,
    };
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let (js, dead_letters, metrics, token) = (
        rt.js.clone(),
        rt.dead_letters.clone(),
        rt.metrics.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background("outbox sender", move || {
        let (engine, http, own, token) = (
            engine.clone(),
            http.clone(),
            ownership.clone(),
            token.clone(),
        );
        let (js, spec, dead_letters, metrics) = (
            js.clone(),
            spec.clone(),
            dead_letters.clone(),
            metrics.clone(),
        );
        async move {
            own.each_term(&token, |stop| {
                let (engine, http) = (engine.clone(), http.clone());
                run_consumer(
                    js.clone(),
                    spec.clone(),
                    dead_letters.clone(),
                    metrics.clone(),
                    stop,
                    move |delivery| super::sender::handle(engine.clone(), http.clone(), delivery),
                )
            })
            .await
        }
    });
}
