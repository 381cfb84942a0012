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
//! - [`slo`]: OpenSLO files and their Prometheus rules; `slo.get` answers from the
//!   `toronto_slo_status` bucket.
#![forbid(unsafe_code)]

pub mod bus;
pub mod canary;
pub mod prometheus;
pub mod scrape;
pub mod settings;
pub mod slo;
pub mod stats;
pub mod store;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_protocol::analysis::{CanaryAnalyze, CanaryUnwatch, CanaryWatch, CanaryWatchStatus};
use toronto_protocol::tasks::{SloGet, SloStatus, SloStatuses};
use toronto_protocol::{ErrorBody, ErrorCode, ServiceKind};
use toronto_runtime::Request;
pub use toronto_runtime::{Config, RuntimeError, ServiceRuntime};

pub use settings::Settings;
use store::{Store, StoreLimits};

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::Monitor;

/// KV buckets this service owns (`<prefix>_<name>`), with the history each keeps.
pub const BUCKETS: &[(&str, i64)] = &[("slo_status", 8)];

fn config_error(e: String) -> RuntimeError {
    RuntimeError::Config(toronto_runtime::config::ConfigError::Invalid(e))
}

/// Starts the service with settings from the `TORONTO_MONITOR_*` variables.
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let settings = Settings::from_env().map_err(config_error)?;
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
    rt.spawn_background(
        "metrics from the bus",
        bus::run(
            rt.client.clone(),
            rt.subjects.metrics_all(),
            store.clone(),
            counters,
            rt.shutdown_token(),
        ),
    );
    let pruned = store.clone();
    let token = rt.shutdown_token();
    rt.spawn_background("store pruning", async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                _ = every.tick() => pruned.prune(),
            }
        }
    });

    // Exposition endpoints to scrape.
    if !settings.scrape_targets.is_empty() {
        rt.spawn_background(
            "scraping",
            scrape::run(
                settings.scrape_targets.clone(),
                settings.scrape_interval,
                settings.http_timeout,
                store.clone(),
                rt.shutdown_token(),
            ),
        );
    }

    // Canary analysis, once and continuous.
    let analyzer = canary::Analyzer::new(store.clone(), prometheus.clone(), settings.min_samples);
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
    rt.spawn_background(
        "rollout events",
        watches.clone().follow_rollouts(
            rt.client.clone(),
            rt.subjects.event("rollout", ">"),
            rt.shutdown_token(),
        ),
    );
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

    rt.endpoint("slo.get", move |req: Request<SloGet>| {
        let status = status.clone();
        async move { slo_statuses(&status, &req.data().service).await }
    })
    .await?;
    Ok(rt)
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
            match serde_json::from_slice::<SloStatus>(&bytes) {
                Ok(s) => statuses.push(s),
                Err(e) => tracing::warn!(key, error = %e, "unreadable SLO status"),
            }
        }
    }
    Ok(SloStatuses { statuses })
}

/// Runs the service until `shutdown` is cancelled, then shuts down gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    start(config, shutdown).await?.run_until_shutdown().await
}
