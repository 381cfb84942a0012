//! The incident commander: alerts to incidents, escalation, playbooks, timelines, postmortems.
//!
//! This crate is the service as a library (`run(config, shutdown)`); its binary is a
//! thin `main`, and `toronto up` starts the same function in-process.
//!
//! - [`intake`]: alerts from the bus, the Alertmanager webhook, an Alertmanager-style
//!   `POST /api/v2/alerts` and a PagerDuty Events v2 style `POST /v2/enqueue`;
//! - [`engine`]: dedup, silences, inhibition, grouping, severities, change-aware
//!   triage, states, roles, escalation, as pure functions over its state with a
//!   housekeeping pass of its own; [`publisher`]: its events and KV records;
//! - [`endpoints`]: the commands, listed once;
//! - [`playbook`]: playbooks (deployer rollback and scale, pages, probes) and recovery
//!   confirmed by the monitor; [`postmortem`]: the Markdown write-up.
#![forbid(unsafe_code)]

pub mod endpoints;
pub mod engine;
pub mod freeze;
pub mod intake;
pub mod outbound;
pub mod playbook;
pub mod postmortem;
pub mod publisher;
pub mod schedule;
pub mod settings;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use toronto_protocol::ServiceKind;
use toronto_runtime::jetstream::{ConsumerSpec, run_consumer};
use toronto_runtime::supervise::LoopSpec;
pub use toronto_runtime::{Config, RuntimeError, ServiceRuntime};

use engine::Engine;
pub use settings::Settings;

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::IncidentCommander;

/// KV buckets this service owns (`<prefix>_<name>`), with the history each keeps.
pub const BUCKETS: &[(&str, i64)] = &[("incidents", 16), ("silences", 8), ("schedules", 8)];

pub use endpoints::VERBS;

fn restore(
    store: &async_nats::jetstream::kv::Store,
    e: impl std::error::Error + Send + Sync + 'static,
) -> RuntimeError {
    RuntimeError::Restore {
        from: format!("KV bucket {}", store.name),
        source: Box::new(e),
    }
}

fn config_error(e: String) -> RuntimeError {
    RuntimeError::Config(toronto_runtime::config::ConfigError::Invalid(e))
}

/// Starts the service with settings from the `TORONTO_INCIDENT_*` variables.
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let settings = Settings::from_env().map_err(|e| RuntimeError::Config(e.into()))?;
    start_with(config, settings, shutdown).await
}

/// Runs the service until `shutdown` is cancelled, then shuts down gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    start(config, shutdown).await?.run_until_shutdown().await
}

async fn read_bucket<T: serde::de::DeserializeOwned>(
    store: &async_nats::jetstream::kv::Store,
    prefix: &str,
) -> Result<Vec<T>, RuntimeError> {
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| restore(store, e))?
        .filter_map(|k| async move { k.ok() })
        .filter(|k| std::future::ready(k.starts_with(prefix)))
        .collect()
        .await;
    let values: Vec<Option<bytes::Bytes>> = futures::stream::iter(keys)
        .map(|k| async move { store.get(k).await })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| restore(store, e))?;
    Ok(values
        .into_iter()
        .flatten()
        .filter_map(|v| toronto_protocol::codec::from_json_bounded(&v).ok())
        .collect())
}

/// Reads the alert log: its keys (oldest first) and the alerts, each as last written.
async fn read_alert_log(
    store: &async_nats::jetstream::kv::Store,
) -> Result<(Vec<String>, Vec<engine::AlertRecord>), RuntimeError> {
    let mut keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| restore(store, e))?
        .filter_map(|k| async move { k.ok() })
        .filter(|k| std::future::ready(k.starts_with(publisher::ALERT_LOG_PREFIX)))
        .collect()
        .await;
    keys.sort();
    let values: Vec<Option<bytes::Bytes>> = futures::stream::iter(keys.clone())
        .map(|k| async move { store.get(k).await })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| restore(store, e))?;
    let mut alerts: std::collections::HashMap<String, engine::AlertRecord> = Default::default();
    for v in values.into_iter().flatten() {
        let Ok(records) =
            toronto_protocol::codec::from_json_bounded::<Vec<engine::AlertRecord>>(&v)
        else {
            continue;
        };
        for r in records {
            alerts.insert(r.fingerprint.clone(), r);
        }
    }
    Ok((keys, alerts.into_values().collect()))
}

/// Rewrites a long alert log as one snapshot (the alerts as they are now) and deletes
/// the entries it replaces.
async fn compact_alert_log(
    engine: &Engine,
    store: &async_nats::jetstream::kv::Store,
    old: Vec<String>,
) {
    if old.len() < 256 {
        return;
    }
    let chunks = match engine.alert_log(None, publisher::ALERT_LOG_CHUNK) {
        Ok(chunks) => chunks,
        Err(e) => {
            engine.counters.encode_failures.inc();
            tracing::error!(error = %e, "cannot encode the alert log; not compacting it");
            return;
        }
    };
    for chunk in chunks {
        let key = format!(
            "{}{}",
            publisher::ALERT_LOG_PREFIX,
            uuid::Uuid::now_v7().simple()
        );
        if let Err(e) = store.put(key, chunk.into()).await {
            tracing::warn!(error = %e, "cannot compact the alert log; keeping it");
            return;
        }
    }
    for key in old {
        let _ = store.purge(key).await;
    }
}

/// Starts the service with these settings and returns it running; stop it by
/// cancelling `shutdown` and awaiting [`ServiceRuntime::run_until_shutdown`].
pub async fn start_with(
    config: Config,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    settings.policy.check().map_err(config_error)?;
    let slot: intake::Slot = Arc::new(OnceLock::new());
    let http_auth = intake::HttpAuth::new(settings.http_auth.clone());
    let rt = ServiceRuntime::start_with_routes(
        KIND,
        env!("CARGO_PKG_VERSION"),
        config,
        intake::routes(slot.clone(), http_auth.clone()),
        shutdown,
    )
    .await?;
    http_auth.register(&rt.metrics);
    if settings.http_auth.enabled() {
        let schemes = settings.http_auth.schemes().join(", ");
        tracing::info!(schemes, "the HTTP intake asks for credentials");
    } else {
        tracing::warn!(
            "the HTTP intake takes alerts without credentials: set TORONTO_INCIDENT_HTTP_BEARER_TOKEN_FILE or TORONTO_INCIDENT_HTTP_BASIC_USER and _PASSWORD_FILE"
        );
    }
    let incidents = rt.kv(BUCKETS[0].0, BUCKETS[0].1).await?;
    let silences = rt.kv(BUCKETS[1].0, BUCKETS[1].1).await?;
    rt.kv(BUCKETS[2].0, BUCKETS[2].1).await?;

    outbound::start::ensure_stream(&rt).await?;
    let (effects, effects_rx) = tokio::sync::mpsc::unbounded_channel();
    let (playbooks, playbooks_rx) = tokio::sync::mpsc::unbounded_channel();
    let tick = settings.tick;
    let engine = Arc::new(Engine::new(
        settings,
        rt.source(),
        rt.subjects.prefix().to_owned(),
        effects,
        playbooks.clone(),
    ));
    let alert_log = read_alert_log(&incidents).await?;
    engine.restore(
        read_bucket(&incidents, "incident.").await?,
        alert_log.1,
        read_bucket(&silences, "silence.").await?,
        read_bucket(&silences, "inhibition.").await?,
    );
    compact_alert_log(&engine, &incidents, alert_log.0).await;
    let sink = publisher::Sink {
        js: rt.js.clone(),
        client: rt.client.clone(),
        incidents: incidents.clone(),
        silences,
    };
    let (publishing, effects_rx, token) = (
        engine.clone(),
        Arc::new(tokio::sync::Mutex::new(effects_rx)),
        rt.shutdown_token(),
    );
    rt.spawn_background("publisher", move || {
        let (engine, sink, rx, token) = (
            publishing.clone(),
            sink.clone(),
            effects_rx.clone(),
            token.clone(),
        );
        async move {
            let mut rx = rx.lock_owned().await;
            publisher::run(engine, sink, &mut rx, token).await
        }
    });
    register_metrics(&rt, &engine);
    outbound::start::spawn_sender(&rt, engine.clone());

    let remote = playbook::Remote {
        client: rt.client.clone(),
        subjects: rt.subjects.clone(),
        source: rt.source(),
        timeout: rt.config.nats.request_timeout(),
    };
    let (running, runner_remote, playbooks_rx, token) = (
        engine.clone(),
        remote.clone(),
        Arc::new(tokio::sync::Mutex::new(playbooks_rx)),
        rt.shutdown_token(),
    );
    rt.spawn_background("playbooks", move || {
        let (engine, remote, rx, token) = (
            running.clone(),
            runner_remote.clone(),
            playbooks_rx.clone(),
            token.clone(),
        );
        async move {
            let mut rx = rx.lock_owned().await;
            playbook::runner(engine, remote, &mut rx, token).await
        }
    });
    for id in engine.running_playbooks() {
        let _ = playbooks.send(id);
    }
    let (following, js, subjects, token) = (
        engine.clone(),
        rt.js.clone(),
        rt.subjects.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background("rollout events", move || {
        playbook::follow_rollouts(
            following.clone(),
            js.clone(),
            subjects.clone(),
            token.clone(),
        )
    });
    let (ticker, token, tick_remote) = (engine.clone(), rt.shutdown_token(), remote.clone());
    rt.spawn_background("deadlines", move || {
        let (ticker, token, tick_remote) = (ticker.clone(), token.clone(), tick_remote.clone());
        async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                    _ = every.tick() => {
                        let quiet = ticker.deadlines();
                        playbook::confirm_quiet(&ticker, &tick_remote, quiet).await;
                    }
                }
            }
        }
    });

    let (keeper, token) = (engine.clone(), rt.shutdown_token());
    rt.spawn_background("housekeeping", move || {
        let (keeper, token) = (keeper.clone(), token.clone());
        async move {
            let mut every = tokio::time::interval(crate::engine::HOUSEKEEPING_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                    _ = every.tick() => {
                        let forgotten = keeper.housekeeping();
                        tracing::debug!(forgotten, "alerts resolved long ago forgotten");
                    }
                }
            }
        }
    });

    endpoints::register(&rt, &engine).await?;
    let freezer = freeze::Freezer::start(&rt, engine.clone(), incidents).await?;
    freeze::run(&rt, freezer, tick).await?;

    // Alerts from the bus: a durable consumer, so none is lost while the service is down.
    let bus = engine.clone();
    let spec = ConsumerSpec {
        stream: rt.subjects.events_stream(),
        durable: format!("{}-alerts", KIND.service_name()),
        filter_subject: Some(rt.subjects.event("alert", ">")),
        ack_wait: Duration::from_secs(30),
        max_deliver: 5,
        // One at a time: a firing and its resolution must not swap places.
        concurrency: 1,
    };
    let (js, dead_letters, metrics, token) = (
        rt.js.clone(),
        rt.dead_letters.clone(),
        rt.metrics.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background("alerts from the bus", move || {
        let bus = bus.clone();
        run_consumer(
            js.clone(),
            spec.clone(),
            dead_letters.clone(),
            metrics.clone(),
            token.clone(),
            move |delivery| intake::handle_bus_alert(bus.clone(), delivery),
        )
    });
    let _ = slot.set(engine);
    Ok(rt)
}

fn register_metrics(rt: &ServiceRuntime, engine: &Arc<Engine>) {
    let c = &engine.counters;
    rt.metrics.register(
        "incident_alerts_received",
        "Alert notifications received",
        c.received.clone(),
    );
    rt.metrics.register(
        "incident_alerts_duplicate",
        "Alert notifications folded into a known alert",
        c.duplicates.clone(),
    );
    rt.metrics.register(
        "incident_alerts_silenced",
        "Alerts held back by a silence",
        c.silenced.clone(),
    );
    rt.metrics.register(
        "incident_alerts_inhibited",
        "Alerts held back by an inhibition rule",
        c.inhibited.clone(),
    );
    rt.metrics
        .register("incident_pages", "Pages sent", c.pages.clone());
    rt.metrics.register(
        "incident_encode_failures",
        "Events or records that could not be encoded and were not written",
        c.encode_failures.clone(),
    );
    let open = Gauge::<i64>::default();
    let by_severity = Family::<Vec<(String, String)>, Gauge<i64>>::default();
    let mtta = Gauge::<f64, AtomicU64>::default();
    let mttr = Gauge::<f64, AtomicU64>::default();
    let mtbf = Gauge::<f64, AtomicU64>::default();
    rt.metrics
        .register("incident_open", "Incidents open now", open.clone());
    rt.metrics.register(
        "incident_incidents",
        "Incidents by severity",
        by_severity.clone(),
    );
    rt.metrics.register(
        "incident_mtta_seconds",
        "Mean time to acknowledge",
        mtta.clone(),
    );
    rt.metrics.register(
        "incident_mttr_seconds",
        "Mean time to resolve",
        mttr.clone(),
    );
    rt.metrics.register(
        "incident_mtbf_seconds",
        "Mean time between incidents of a service",
        mtbf.clone(),
    );
    let (engine, token) = (engine.clone(), rt.shutdown_token());
    let gauges = (open, by_severity, mtta, mttr, mtbf);
    rt.spawn_loop(LoopSpec::new("incident metrics").optional(), move || {
        let (engine, token) = (engine.clone(), token.clone());
        let (open, by_severity, mtta, mttr, mtbf) = gauges.clone();
        async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                _ = every.tick() => {
                    let m = engine.metrics(None);
                    open.set(m.open as i64);
                    for (sev, n) in &m.by_severity {
                        by_severity.get_or_create(&vec![("severity".to_owned(), sev.clone())]).set(*n as i64);
                    }
                    mtta.set(m.mtta_seconds.unwrap_or(0.0));
                    mttr.set(m.mttr_seconds.unwrap_or(0.0));
                    mtbf.set(m.mtbf_seconds.unwrap_or(0.0));
                }
            }
        }
        }
    });
}
