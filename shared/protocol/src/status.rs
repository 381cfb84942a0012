//! The status every service answers (`<prefix>.devops.v1.<service>.status`): the request,
//! the reply and the build it reports. Each service's own payloads live in their own modules.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Message;

/// Asks a service how it is (`<prefix>.devops.v1.<service>.status`). No fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusRequest {}

impl Message for StatusRequest {
    const NAME: &'static str = "status.request";
    const MAJOR: u32 = 1;
}

/// A service's answer to [`StatusRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    /// NATS service name, e.g. `toronto-planner`.
    pub service: String,
    /// Id of this instance (the ADR-32 service id).
    pub instance_id: String,
    /// Version of the service.
    pub version: String,
    /// When this instance started.
    pub started_at: DateTime<Utc>,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Whether the instance's NATS connection is up.
    pub nats_connected: bool,
    /// How the binary was built.
    pub build: BuildInfo,
    /// The instance's supervised background loops (consumers, watchers, timers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loops: Vec<LoopStatus>,
    /// How it verifies change requests: `required`, `permissive` or `off`
    /// (`TORONTO_AUTH`); `off` means anyone on the bus may ask it for changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The instance's part in a replicated service's single-writer work (the KV
    /// lease): absent for a service that does not replicate such work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
}

/// Where an instance stands with its service's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeaseStatus {
    /// The lease's name (its key in the `<prefix>_leases` bucket), e.g. `incident-commander`.
    pub name: String,
    /// Owner (does the single-writer work) or standby.
    pub role: LeaseRole,
    /// The fencing token while owner: the KV revision of the write that took the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The instance that holds the lease as last seen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// An instance's role under a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseRole {
    /// Holds the lease: runs the single-writer work.
    Owner,
    /// Does not hold it: serves what every replica serves, and waits to take over.
    Standby,
}

/// One supervised background loop of a service instance, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoopStatus {
    /// The loop's name, e.g. `plan runner`.
    pub name: String,
    /// Whether the instance is not ready while this loop is down.
    pub required: bool,
    /// What the loop is doing now.
    pub state: LoopState,
    /// How many times it was restarted since the instance started.
    pub restarts: u64,
    /// Why it last ended, if it ever did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The state of a supervised background loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoopState {
    /// Running.
    Running,
    /// Ended unexpectedly; waiting out its backoff before it is started again.
    Restarting,
    /// Ended for good because the service (or the loop's own stop signal) asked it to.
    Stopped,
}

impl Message for Status {
    const NAME: &'static str = "status";
    const MAJOR: u32 = 1;
}

/// How a binary was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuildInfo {
    /// Crate version.
    pub version: String,
    /// Git commit, from `TORONTO_BUILD_GIT_SHA` at build time, else `unknown`.
    pub git_sha: String,
    /// `debug` or `release`.
    pub profile: String,
    /// Target architecture and OS, e.g. `x86_64-linux`.
    pub target: String,
}

impl BuildInfo {
    /// Build information of the calling binary; pass `env!("CARGO_PKG_VERSION")`.
    pub fn current(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            git_sha: option_env!("TORONTO_BUILD_GIT_SHA")
                .unwrap_or("unknown")
                .to_owned(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
            target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        }
    }
}
