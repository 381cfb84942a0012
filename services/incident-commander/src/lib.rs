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
mod owner_work;
pub mod playbook;
pub mod postmortem;
pub mod publisher;
pub mod replica;
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

/// Restores the engine from KV: incidents, the alert log (compacted when long),
/// silences and inhibitions.
async fn restore_engine(
    engine: &Engine,
    incidents: &async_nats::jetstream::kv::Store,
    silences: &async_nats::jetstream::kv::Store,
) -> Result<(), RuntimeError> {
    let alert_log = read_alert_log(incidents).await?;
    engine.restore(
        read_bucket(incidents, "incident.").await?,
        alert_log.1,
        read_bucket(silences, "silence.").await?,
        read_bucket(silences, "inhibition.").await?,
    );
    compact_alert_log(engine, incidents, alert_log.0).await;
    Ok(())
}

/// Starts the service with these settings and returns it running; stop it by
/// cancelling `shutdown` and awaiting [`ServiceRuntime::run_until_shutdown`].
///
/// Several replicas may run: they share the lease [`replica::LEASE`], the owner does
/// the single-writer work, and every replica serves requests and HTTP intake (see
/// [`replica`]). It returns once this replica owns the work (its engine restored) or
/// knows which replica does, or after a TTL and two renewals.
pub async fn start_with(
    config: Config,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    settings.policy.check().map_err(config_error)?;
    let slot: intake::Slot = Arc::new(OnceLock::new());
    let forwarding: intake::forward::Forwarding = Arc::default();
    let http_auth = intake::HttpAuth::new(settings.http_auth.clone());
    let rt = ServiceRuntime::start_with_routes(
        KIND,
        env!("CARGO_PKG_VERSION"),
        config,
        intake::routes(slot.clone(), http_auth.clone(), forwarding.clone()),
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

    // Replicas: the lease; requests and HTTP intake go to its owner.
    let lease = rt.lease(replica::LEASE).await?;
    let ownership = replica::Ownership::new(lease);
    rt.host.set_route(Arc::new(ownership.clone()));
    let _ = forwarding.set(intake::forward::Replicas {
        client: rt.client.clone(),
        route: ownership.clone(),
        timeout: rt.config.nats.request_timeout(),
    });

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
    let sink = publisher::Sink {
        js: rt.js.clone(),
        client: rt.client.clone(),
        incidents: incidents.clone(),
        silences: silences.clone(),
        fence: Some(ownership.clone()),
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
    let freezer = freeze::Freezer::start(&rt, engine.clone(), incidents.clone()).await?;

    // Each term of ownership begins with the state as the last owner left it.
    let (restoring, reloading, own, token) = (
        engine.clone(),
        freezer.clone(),
        ownership.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background("ownership", move || {
        let (engine, freezer, own, token) = (
            restoring.clone(),
            reloading.clone(),
            own.clone(),
            token.clone(),
        );
        let (incidents, silences, playbooks) =
            (incidents.clone(), silences.clone(), playbooks.clone());
        async move {
            own.run_terms(&token, || async {
                restore_engine(&engine, &incidents, &silences).await?;
                freezer.reload().await?;
                for id in engine.running_playbooks() {
                    let _ = playbooks.send(id);
                }
                Ok::<(), RuntimeError>(())
            })
            .await
        }
    });
    owner_work::spawn(&rt, &ownership, &engine, playbooks_rx, tick);

    // Every replica: HTTP intake forwarded by the others, requests, freezes.
    let (client, me, intake_slot, serving, token) = (
        rt.client.clone(),
        rt.host.id().to_owned(),
        slot.clone(),
        ownership.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background("forwarded HTTP intake", move || {
        intake::forward::serve_forwarded(
            client.clone(),
            me.clone(),
            intake_slot.clone(),
            serving.clone(),
            token.clone(),
        )
    });
    endpoints::register(&rt, &engine).await?;
    freeze::run(&rt, freezer, tick, ownership.clone()).await?;
    let _ = slot.set(engine);
    let lease_time = rt.config.lease.ttl() + rt.config.lease.renew() * 2;
    ownership.settled(lease_time).await;
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
    let mtbf = Gauge::<f64, AtomicU64>::default();
    rt.metrics
        .register("incidents_open", "Incidents open now", open.clone());
    rt.metrics.register(
        "incidents",
        "Incidents known, by severity",
        by_severity.clone(),
    );
    for sev in ["sev1", "sev2", "sev3", "sev4"] {
        by_severity
            .get_or_create(&vec![("severity".to_owned(), sev.to_owned())])
            .set(0);
    }
    rt.metrics
        .register_collector(engine::metrics::ResponseTimes(engine.clone()));
    rt.metrics.register(
        "incident_mtbf_seconds",
        "Mean time between incidents of a service",
        mtbf.clone(),
    );
    let (engine, token) = (engine.clone(), rt.shutdown_token());
    let gauges = (open, by_severity, mtbf);
    rt.spawn_loop(LoopSpec::new("incident metrics").optional(), move || {
        let (engine, token) = (engine.clone(), token.clone());
        let (open, by_severity, mtbf) = gauges.clone();
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
                    mtbf.set(m.mtbf_seconds.unwrap_or(0.0));
                }
            }
        }
        }
    });
}
