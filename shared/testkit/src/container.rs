//! The testcontainers backend of [`crate::NatsServer`] (cargo feature `testcontainers`).

use std::path::Path;

use tempfile::TempDir;
use testcontainers_modules::nats::{Nats, NatsServerCmd};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

use crate::PINNED_NATS_SERVER_VERSION;
use crate::error::TestkitError;
use crate::node::{Readiness, wait_for_url};
use crate::server::START_TIMEOUT;

/// The client port inside the container.
const NATS_PORT: u16 = 4222;

/// A `nats` container with JetStream (`--jetstream`), its client port mapped to the host.
#[derive(Debug)]
pub(crate) struct ContainerServer {
    // Dropping the container removes it.
    _container: ContainerAsync<Nats>,
    host: String,
    port: u16,
    dir: TempDir,
}

impl ContainerServer {
    /// Starts the container (image `nats:<pinned version>`) and waits until JetStream answers.
    pub(crate) async fn start(extra: &str) -> Result<Self, TestkitError> {
        if !extra.trim().is_empty() {
            return Err(TestkitError::Unsupported {
                operation: "extra nats-server config",
                backend: "testcontainers",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("toronto-nats-container-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temporary directory", e))?;
        let cmd = NatsServerCmd::default().with_jetstream();
        let container = Nats::default()
            .with_cmd(&cmd)
            .with_tag(PINNED_NATS_SERVER_VERSION)
            .start()
            .await
            .map_err(|e| TestkitError::Container(e.to_string()))?;
        let host = container
            .get_host()
            .await
            .map_err(|e| TestkitError::Container(e.to_string()))?
            .to_string();
        let port = container
            .get_host_port_ipv4(NATS_PORT)
            .await
            .map_err(|e| TestkitError::Container(e.to_string()))?;
        let server = Self {
            _container: container,
            host,
            port,
            dir,
        };
        wait_for_url(&server.url(), Readiness::JetStream, START_TIMEOUT)
            .await
            .map_err(|e| TestkitError::Container(format!("{}: {e}", server.url())))?;
        Ok(server)
    }

    /// `nats://<host>:<mapped port>`.
    pub(crate) fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// The mapped client port on the host.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// An empty temporary directory (the store lives in the container).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}
