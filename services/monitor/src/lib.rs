//! The monitor: metric sources, SLOs with error budgets, burn-rate alerts, canary analysis.
//!
//! This crate is the service as a library (`run(config, shutdown)`); its binary is a
//! thin `main`, and `toronto up` starts the same function in-process. So far it
//! registers its NATS service, sets up its state buckets, answers `status` and
//! `slo.get` (the SLO statuses kept in `toronto_slo_status`), and turns OpenSLO files into
//! Prometheus rules ([`slo`]); metric sources and live evaluation come with its issue.
#![forbid(unsafe_code)]

pub mod slo;

use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{SloGet, SloStatus, SloStatuses};
use toronto_protocol::{ErrorBody, ErrorCode, ServiceKind};
use toronto_runtime::Request;
pub use toronto_runtime::{Config, RuntimeError, ServiceRuntime};

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::Monitor;

/// KV buckets this service owns (`<prefix>_<name>`), with the history each keeps.
pub const BUCKETS: &[(&str, i64)] = &[("slo_status", 8)];

/// Starts the service and returns it running; stop it by cancelling `shutdown` and
/// awaiting [`ServiceRuntime::run_until_shutdown`].
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let rt = ServiceRuntime::start(KIND, env!("CARGO_PKG_VERSION"), config, shutdown).await?;
    let status = rt.kv(BUCKETS[0].0, BUCKETS[0].1).await?;
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
