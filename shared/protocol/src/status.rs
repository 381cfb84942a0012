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
