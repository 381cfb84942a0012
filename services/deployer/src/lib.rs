//! The deployer: rolling, blue-green and canary rollouts on Kubernetes and a simulated cluster.
//!
//! This crate is the service as a library (`run(config, shutdown)`); its binary is a
//! thin `main`, and `toronto up` starts the same function in-process. So far it
//! registers its NATS service, sets up its state buckets and answers `status`; its
//! domain commands arrive with the issues that build on the foundation.
#![forbid(unsafe_code)]

pub mod kube;
pub mod target;

use tokio_util::sync::CancellationToken;
use toronto_protocol::ServiceKind;
pub use toronto_runtime::{Config, RuntimeError, ServiceRuntime};

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::Deployer;

/// KV buckets this service owns (`<prefix>_<name>`), with the history each keeps.
pub const BUCKETS: &[(&str, i64)] = &[("rollouts", 16)];

/// Starts the service and returns it running; stop it by cancelling `shutdown` and
/// awaiting [`ServiceRuntime::run_until_shutdown`].
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let rt = ServiceRuntime::start(KIND, env!("CARGO_PKG_VERSION"), config, shutdown).await?;
    for (bucket, history) in BUCKETS {
        rt.kv(bucket, *history).await?;
    }
    Ok(rt)
}

/// Runs the service until `shutdown` is cancelled, then shuts down gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    start(config, shutdown).await?.run_until_shutdown().await
}
