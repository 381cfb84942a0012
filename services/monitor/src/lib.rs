//! The monitor: metric sources, SLOs with error budgets, burn-rate alerts, canary analysis.
//!
//! This crate is the service as a library (`run(config, shutdown)`); its binary is a
//! thin `main`, and `toronto up` starts the same function in-process.
//!
//! - [`bus`]: `MetricBatch` envelopes on `toronto.metrics.>` into the in-memory
//!   time-series [`store`]; [`scrape`]: Prometheus exposition endpoints into the same
//!   store; [`prometheus`]: a client of the Prometheus HTTP API;
//! - [`canary`]: `canary.analyze` (Mann-Whitney U, [`stats`]) from the store or from
//!   [`prometheus`] for metrics with a query; [`watch`]: `canary.watch` / `canary.unwatch`,
//!   verdicts as `analysis.result` events;
//! - [`slo`]: OpenSLO files and their Prometheus rules; [`evaluate`]: SLO evaluation,
//!   error budgets and multi-window multi-burn-rate alerts, statuses in the
//!   `toronto_slo_status` bucket (`slo.get`), `slo.put`, `slo.list`;
//! - [`probes`]: synthetic HTTP probes; [`anomaly`]: median/MAD anomaly detection; both
//!   raise `warning` alerts.
#![forbid(unsafe_code)]

pub mod anomaly;
pub mod bus;
pub mod canary;
pub mod evaluate;
pub mod evidence;
pub mod probes;
pub mod prometheus;
pub mod replica;
pub mod scrape;
pub mod settings;
pub mod slo;
pub mod stats;
pub mod store;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_protocol::alerts::{SloDefinition, SloEntries, SloList, SloPut};
use toronto_protocol::analysis::{CanaryAnalyze, CanaryUnwatch, CanaryWatch, CanaryWatchStatus};
use toronto_protocol::replay::AnalysisReplay;
use toronto_protocol::tasks::{SloGet, SloStatus, SloStatuses};
use toronto_protocol::{ErrorBody, ErrorCode, ServiceKind};
use toronto_runtime::Request;
pub use toronto_runtime::{Config, RuntimeError, ServiceRuntime};

pub use settings::Settings;
use store::{Store, StoreLimits};

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::Monitor;

/// KV buckets this service owns (`<prefix>_<name>`), with the history each keeps.
pub const BUCKETS: &[(&str, i64)] = &[("slo_status", 8), ("slo_definitions", 4)];

fn config_error(e: String) -> RuntimeError {
    RuntimeError::Config(toronto_runtime::config::ConfigError::Invalid(e))
}

/// Starts the service with settings from the `TORONTO_MONITOR_*` variables.
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let settings = Settings::from_env().map_err(|e| RuntimeError::Config(e.into()))?;
    start_with(config, settings, shutdown).await
}

/// Starts the service and returns it running; stop it by cancelling `shutdown` and
/// awaiting [`ServiceRuntime::run_until_shutdown`].
pub async fn start_with(
    config: Config,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let rt = ServiceRuntime::start(KIND, env!("CARGO_PKG_VERSION"), config, shutdown).await?;
    let status = rt.kv(BUCKETS[0].0, BUCKETS[0].1).await?;
    let definitions = rt.kv(BUCKETS[1].0, BUCKETS[1].1).await?;
    // Replicas: every one ingests and answers; the lease's owner announces.
    let lease = rt.lease(replica::LEASE).await?;
    let announcer = replica::Announcer::new(lease, rt.events.clone(), rt.source(), status.clone());
    let (announcing, token) = (announcer.clone(), rt.shutdown_token());
    rt.spawn_background("lease takeovers", move || {
        replica::follow_takeovers(announcing.clone(), token.clone())
    });
    let store = Arc::new(Store::new(StoreLimits {
        retention_ms: settings.retention.as_millis() as i64,
        max_samples_per_series: settings.max_samples_per_series,
        max_series: settings.max_series,
    }));
    let prometheus = settings
        .prometheus_url
        .as_deref()
        .map(|url| prometheus::Prometheus::new(url, settings.http_timeout));

    // Metrics on the bus.
    let counters = bus::BusCounters::default();
    rt.metrics.register(
        "monitor_metric_batches",
        "Metric batches taken from the bus",
        counters.batches.clone(),
    );
    rt.metrics.register(
        "monitor_bad_metric_batches",
        "Messages on the metrics subjects that could not be read",
        counters.bad_batches.clone(),
    );
    rt.metrics.register(
        "monitor_metric_samples",
        "Samples stored from the bus",
        counters.samples.clone(),
    );
    let (client, subject, bus_store, token) = (
        rt.client.clone(),
        rt.subjects.metrics_all(),
        store.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background("metrics from the bus", move || {
        bus::run(
            client.clone(),
            subject.clone(),
            bus_store.clone(),
            counters.clone(),
            token.clone(),
        )
    });
    let series_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    let samples_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    let bytes_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    rt.metrics.register(
        "monitor_store_series",
        "Series in the in-memory store",
        series_gauge.clone(),
    );
    rt.metrics.register(
        "monitor_store_samples",
        "Samples in the in-memory store",
        samples_gauge.clone(),
    );
    rt.metrics.register(
        "monitor_store_bytes",
        "Heap bytes of the in-memory store (estimated from its structures' capacities)",
        bytes_gauge.clone(),
    );
    let pruned = store.clone();
    let token = rt.shutdown_token();
    rt.spawn_background("store pruning", move || {
        let (pruned, token) = (pruned.clone(), token.clone());
        let (series_gauge, samples_gauge, bytes_gauge) = (
            series_gauge.clone(),
            samples_gauge.clone(),
            bytes_gauge.clone(),
        );
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                    _ = every.tick() => {
                        pruned.prune();
                        let (series, samples) = pruned.size();
                        series_gauge.set(series as i64);
                        samples_gauge.set(samples as i64);
                        bytes_gauge.set(pruned.bytes() as i64);
                    }
                }
            }
        }
    });

    // Exposition endpoints to scrape.
    if !settings.scrape_targets.is_empty() {
        let (targets, every, timeout) = (
            settings.scrape_targets.clone(),
            settings.scrape_interval,
            settings.http_timeout,
        );
        let (scraped, token) = (store.clone(), rt.shutdown_token());
        rt.spawn_background("scraping", move || {
            scrape::run(
                targets.clone(),
                every,
                timeout,
                scraped.clone(),
                token.clone(),
            )
        });
    }

    // Synthetic probes and anomaly detection.
    if !settings.probes.is_empty() {
        let (probing, probed, announcing, source, token) = (
            settings.clone(),
            store.clone(),
            announcer.clone(),
            rt.source(),
            rt.shutdown_token(),
        );
        rt.spawn_background("probes", move || {
            probe_loop(
                probing.clone(),
                probed.clone(),
                announcing.clone(),
                source.clone(),
                token.clone(),
            )
        });
    }
    if !settings.anomaly_metrics.is_empty() {
        // A restarted run starts from a fresh detector.
        let detecting = settings.clone();
        let (watched, announcing, source, token) = (
            store.clone(),
            announcer.clone(),
            rt.source(),
            rt.shutdown_token(),
        );
        rt.spawn_background("anomaly detection", move || {
            let detector = anomaly::AnomalyDetector::new(
                detecting.anomaly_metrics.clone(),
                detecting.anomaly_threshold,
                detecting.anomaly_interval.as_millis() as i64,
                detecting.resolve_evaluations,
                detecting.default_environment.clone(),
                source.clone(),
            );
            anomaly_loop(
                detector,
                detecting.anomaly_interval,
                watched.clone(),
                announcing.clone(),
                token.clone(),
            )
        });
    }

    // Canary analysis, once and continuous.
    // Boxed: the bucket calls are large futures, and `start_with` runs inline in
    // `toronto up` and the stack tests.
    let evidence = Box::pin(evidence::EvidenceStore::open(
        &rt.js,
        &rt.subjects,
        settings.evidence_days,
        rt.config.jetstream.replicas,
    ))
    .await?;
    let analyzer = canary::Analyzer::new(store.clone(), prometheus.clone(), settings.min_samples)
        .with_evidence(evidence.clone());
    let min_samples = settings.min_samples;
    rt.endpoint("analysis.replay", move |req: Request<AnalysisReplay>| {
        let evidence = evidence.clone();
        async move {
            Box::pin(evidence.replay(req.data(), min_samples))
                .await
                .map_err(ErrorBody::from)
        }
    })
    .await?;
    let analyze = analyzer.clone();
    rt.endpoint("canary.analyze", move |req: Request<CanaryAnalyze>| {
        let analyzer = analyze.clone();
        async move { analyzer.analyze(req.data()).await }
    })
    .await?;
    let watches = watch::Watches::new(
        analyzer.clone(),
        rt.events.clone(),
        rt.source(),
        rt.shutdown_token(),
    );
    let (following, client, subject, token) = (
        watches.clone(),
        rt.client.clone(),
        rt.subjects.event("rollout", ">"),
        rt.shutdown_token(),
    );
    rt.spawn_background("rollout events", move || {
        following
            .clone()
            .follow_rollouts(client.clone(), subject.clone(), token.clone())
    });
    let (unwatching, client, subject, token) = (
        watches.clone(),
        rt.client.clone(),
        rt.subjects.command(KIND, "canary.unwatch"),
        rt.shutdown_token(),
    );
    rt.spawn_background("canary unwatch", move || {
        unwatching
            .clone()
            .follow_unwatch(client.clone(), subject.clone(), token.clone())
    });
    let start_watch = watches.clone();
    rt.endpoint("canary.watch", move |req: Request<CanaryWatch>| {
        let result = start_watch.start(req.data().clone(), req.flow());
        async move { result }
    })
    .await?;
    let stop_watch = watches.clone();
    rt.endpoint("canary.unwatch", move |req: Request<CanaryUnwatch>| {
        let status: CanaryWatchStatus = stop_watch.stop(req.data().rollout_id);
        async move { Ok::<_, ErrorBody>(status) }
    })
    .await?;

    // SLOs: from the directory, then those put earlier (kept in KV).
    let engine = evaluate::SloEngine::new(
        store.clone(),
        prometheus.clone(),
        evaluate::EvalSettings {
            time_scale: settings.time_scale,
            interval: settings.slo_interval,
            resolve_evaluations: settings.resolve_evaluations,
            default_environment: settings.default_environment.clone(),
            retention: settings.retention,
        },
        rt.source(),
    );
    if let Some(dir) = &settings.slo_dir {
        for slo in load_slo_dir(dir).map_err(config_error)? {
            engine.put(slo);
        }
    }
    load_put_slos(&definitions, &engine).await;
    tracing::info!(slos = engine.len(), "SLOs loaded");
    // SLOs put through any replica reach every replica's engine.
    let (following, watched_definitions, token) =
        (engine.clone(), definitions.clone(), rt.shutdown_token());
    rt.spawn_background("SLO definitions", move || {
        replica::follow_definitions(
            watched_definitions.clone(),
            following.clone(),
            token.clone(),
        )
    });
    let put_engine = engine.clone();
    rt.endpoint("slo.put", move |req: Request<SloPut>| {
        let (engine, definitions) = (put_engine.clone(), definitions.clone());
        async move { put_slo(&engine, &definitions, &req.data().document).await }
    })
    .await?;
    let list_engine = engine.clone();
    let list_engine_for_get = engine.clone();
    rt.endpoint("slo.list", move |req: Request<SloList>| {
        let slos = list_engine.list(req.data().service.as_deref());
        async move { Ok::<_, ErrorBody>(SloEntries { slos }) }
    })
    .await?;
    let (evaluated, slo_status, announcing, every, token) = (
        engine,
        status.clone(),
        announcer.clone(),
        settings.slo_interval,
        rt.shutdown_token(),
    );
    rt.spawn_background("SLO evaluation", move || {
        replica::evaluation_loop(
            evaluated.clone(),
            slo_status.clone(),
            announcing.clone(),
            every,
            token.clone(),
        )
    });

    let defined = list_engine_for_get;
    rt.endpoint("slo.get", move |req: Request<SloGet>| {
        let status = status.clone();
        let service = req.data().service.clone();
        // The SLOs defined for the service, to tell "not evaluated yet" from "none".
        let names: Vec<String> = defined
            .list(Some(&service))
            .into_iter()
            .map(|e| e.definition.slo)
            .collect();
        async move {
            let mut statuses = slo_statuses(&status, &service).await?;
            statuses.pending = names
                .into_iter()
                .filter(|n| !statuses.statuses.iter().any(|s| &s.slo == n))
                .collect();
            Ok::<_, ErrorBody>(statuses)
        }
    })
    .await?;
    Ok(rt)
}

/// Parses every `*.yaml` / `*.yml` file of `dir`; the first malformed one is refused
/// with its path, field and reason.
pub fn load_slo_dir(dir: &std::path::Path) -> Result<Vec<slo::Slo>, String> {
    let read = |e: std::io::Error| format!("TORONTO_MONITOR_SLO_DIR: {}: {e}", dir.display());
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            slo::parse(&text).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect()
}

async fn load_put_slos(
    definitions: &async_nats::jetstream::kv::Store,
    engine: &evaluate::SloEngine,
) {
    use futures::TryStreamExt;
    let keys: Vec<String> = match definitions.keys().await {
        Ok(keys) => keys.try_collect().await.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the SLOs put earlier");
            return;
        }
    };
    for key in keys {
        if let Ok(Some(bytes)) = definitions.get(&key).await {
            match slo::parse(&String::from_utf8_lossy(&bytes)) {
                Ok(slo) => {
                    engine.put(slo);
                }
                Err(e) => tracing::warn!(key, error = %e, "a stored SLO no longer parses"),
            }
        }
    }
}

async fn put_slo(
    engine: &evaluate::SloEngine,
    definitions: &async_nats::jetstream::kv::Store,
    document: &str,
) -> Result<SloDefinition, ErrorBody> {
    let slo = slo::parse(document).map_err(|e| {
        ErrorBody::new(ErrorCode::BadRequest, e.to_string()).with_details(serde_json::json!({
            "errors": [{"field": e.field, "reason": e.reason}]
        }))
    })?;
    definitions
        .put(evaluate::key(&slo), document.to_owned().into_bytes().into())
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, format!("cannot keep the SLO: {e}")))?;
    Ok(engine.put(slo))
}

/// Probes every target every `interval`; alerts on repeated failures.
async fn probe_loop(
    settings: Settings,
    store: Arc<Store>,
    announcer: replica::Announcer,
    source: String,
    shutdown: CancellationToken,
) -> Result<(), reqwest::Error> {
    let http = toronto_runtime::tls::http_client()
        .timeout(settings.http_timeout)
        .build()?;
    let mut tracks: Vec<probes::ProbeTrack> =
        settings.probes.iter().map(|_| Default::default()).collect();
    let mut ticks = tokio::time::interval(settings.probe_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let results = futures::future::join_all(
            settings
                .probes
                .iter()
                .map(|t| probes::probe_once(&http, t, &store)),
        )
        .await;
        for ((target, track), result) in settings.probes.iter().zip(&mut tracks).zip(results) {
            if let Some(alert) =
                track.observe(target, &result, &settings.default_environment, &source)
            {
                announcer.transitions(vec![alert]).await;
            }
        }
    }
}

/// Checks the watched metrics for anomalies every `interval`.
async fn anomaly_loop(
    mut detector: anomaly::AnomalyDetector,
    interval: Duration,
    store: Arc<Store>,
    announcer: replica::Announcer,
    shutdown: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        announcer.transitions(detector.check(&store)).await;
    }
}

/// Every SLO status of `service` in the status bucket (keys `<service>.<slo>`).
async fn slo_statuses(
    status: &async_nats::jetstream::kv::Store,
    service: &str,
) -> Result<SloStatuses, ErrorBody> {
    use futures::TryStreamExt;
    let unavailable = |e: String| ErrorBody::new(ErrorCode::Unavailable, e);
    let prefix = format!("{service}.");
    let keys: std::collections::BTreeSet<String> = status
        .keys()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut statuses = Vec::new();
    for key in keys.iter().filter(|k| k.starts_with(&prefix)) {
        if let Some(bytes) = status
            .get(key)
            .await
            .map_err(|e| unavailable(e.to_string()))?
        {
            match toronto_protocol::codec::from_json_bounded::<SloStatus>(&bytes) {
                Ok(s) => statuses.push(s),
                Err(e) => tracing::warn!(key, error = %e, "unreadable SLO status"),
            }
        }
    }
    Ok(SloStatuses {
        statuses,
        pending: Vec::new(),
    })
}

/// Runs the service until `shutdown` is cancelled, then shuts down gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    start(config, shutdown).await?.run_until_shutdown().await
}
