//! A single JetStream-enabled NATS server for one test.

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::bin::{Backend, backend, nats_server_bin};
use crate::error::TestkitError;
use crate::node::{Node, Ports, Readiness, free_ports, render_config};

/// How long a server gets to accept clients and answer JetStream requests.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a fresh start picks new ports when one was taken in the meantime.
pub(crate) const FRESH_PORT_ATTEMPTS: usize = 4;

/// A nats-server `tls {}` block for [`NatsServer::start_with_config`]: the server's
/// certificate and key (PEM files), the CA that client certificates must chain to, and
/// whether every client must present one (`verify`, mutual TLS). Readiness is then
/// checked over the monitoring port, so the test kit's plain client is not needed.
pub fn tls_config(cert: &Path, key: &Path, ca: &Path, verify: bool) -> String {
    format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: {verify} }}",
        cert.display(),
        key.display(),
        ca.display()
    )
}

/// A real nats-server with JetStream for one test, listening on a free port of 127.0.0.1 with
/// its config, log and JetStream store in a temporary directory.
///
/// It can be stopped, started again and restarted on the same port with the same store, so
/// tests can exercise reconnects and JetStream persistence. Dropping it kills the server
/// (also when the test panics) and removes the directory.
#[derive(Debug)]
pub struct NatsServer {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Binary(BinaryServer),
    #[cfg(feature = "testcontainers")]
    Container(Box<crate::container::ContainerServer>),
}

#[derive(Debug)]
struct BinaryServer {
    // Field order matters: the process is killed before its directory is removed.
    node: Node,
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a server: JetStream on, a free client port on 127.0.0.1, the store in a temporary
    /// directory; returns once it accepts clients and JetStream answers (at most ~15 s).
    ///
    /// # Panics
    ///
    /// With the [`TestkitError`] message when the server cannot be started (it is for tests).
    pub async fn start() -> NatsServer {
        Self::try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`NatsServer::start`] returning the error instead of panicking.
    ///
    /// # Errors
    ///
    /// When no suitable nats-server is found (see [`crate::nats_server_bin`]), when it does
    /// not become ready in time, or when `TORONTO_TESTKIT_NATS` names an unavailable backend.
    pub async fn try_start() -> Result<NatsServer, TestkitError> {
        Self::try_start_with_config("").await
    }

    /// [`NatsServer::start`] with extra nats-server config text appended to the generated
    /// config file, e.g. `"max_payload: 2MB"` or an `authorization { ... }` block.
    ///
    /// The testkit sets `listen`, `http` (monitoring, used for readiness when the anonymous
    /// client cannot ask JetStream) and `jetstream`; overriding those breaks the testkit.
    /// With an authorization block, [`NatsServer::client`] (which has no credentials) fails:
    /// connect with your own options to [`NatsServer::url`].
    ///
    /// # Panics
    ///
    /// With the [`TestkitError`] message when the server cannot be started.
    pub async fn start_with_config(extra: &str) -> NatsServer {
        Self::try_start_with_config(extra)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`NatsServer::start_with_config`] returning the error instead of panicking.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::try_start`]; also when the config is invalid (the message quotes the
    /// server's log).
    pub async fn try_start_with_config(extra: &str) -> Result<NatsServer, TestkitError> {
        // A test's own reqwest clients need the process-wide rustls provider too.
        toronto_runtime::tls::install_crypto_provider();
        match backend()? {
            Backend::Binary => Ok(NatsServer {
                inner: Inner::Binary(BinaryServer::start(extra).await?),
            }),
            #[cfg(feature = "testcontainers")]
            Backend::Testcontainers => Ok(NatsServer {
                inner: Inner::Container(Box::new(
                    crate::container::ContainerServer::start(extra).await?,
                )),
            }),
            #[cfg(not(feature = "testcontainers"))]
            Backend::Testcontainers => Err(TestkitError::TestcontainersFeatureMissing),
        }
    }

    /// The client URL, `nats://127.0.0.1:<port>` (for the container backend, the host the
    /// container engine reports).
    pub fn url(&self) -> String {
        match &self.inner {
            Inner::Binary(s) => s.node.url(),
            #[cfg(feature = "testcontainers")]
            Inner::Container(c) => c.url(),
        }
    }

    /// The client URL with the `tls://` scheme, `tls://127.0.0.1:<port>`, for a server
    /// started with a [`tls_config`] block (a client given it requires TLS).
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port())
    }

    /// The client port; it stays the same across [`NatsServer::restart`].
    pub fn port(&self) -> u16 {
        match &self.inner {
            Inner::Binary(s) => s.node.ports.client,
            #[cfg(feature = "testcontainers")]
            Inner::Container(c) => c.port(),
        }
    }

    /// The JetStream store directory (kept across restarts). For the container backend the
    /// store lives inside the container and this is an empty temporary directory.
    pub fn store_dir(&self) -> &Path {
        match &self.inner {
            Inner::Binary(s) => &s.node.store_dir,
            #[cfg(feature = "testcontainers")]
            Inner::Container(c) => c.dir(),
        }
    }

    /// The server's log file (stdout and stderr of every start, appended).
    /// For the container backend there is none and this path does not exist.
    pub fn log_path(&self) -> &Path {
        match &self.inner {
            Inner::Binary(s) => &s.node.log_path,
            #[cfg(feature = "testcontainers")]
            Inner::Container(c) => c.dir(),
        }
    }

    /// A client connected to this server (default options: it reconnects forever, so it
    /// survives [`NatsServer::restart`]).
    ///
    /// # Panics
    ///
    /// When the connection fails, e.g. because the server is stopped or requires credentials.
    pub async fn client(&self) -> async_nats::Client {
        let url = self.url();
        async_nats::connect(url.as_str()).await.unwrap_or_else(|e| {
            panic!(
                "{}",
                TestkitError::Connect {
                    url,
                    detail: e.to_string()
                }
            )
        })
    }

    /// Stops the server (SIGTERM, SIGKILL after a 5 s grace) and waits for it to exit; the
    /// port and the store are kept for [`NatsServer::start_again`]. No-op if it is stopped.
    ///
    /// # Panics
    ///
    /// For the container backend, which does not support it.
    pub async fn stop(&mut self) {
        self.binary("stop").node.stop().await;
    }

    /// Starts the stopped server again on the same port with the same store (JetStream data
    /// survives) and waits until it accepts clients and JetStream answers. If the port is
    /// briefly still in use, the start is retried. No-op if it is running.
    ///
    /// # Panics
    ///
    /// When the server does not become ready in time, and for the container backend.
    pub async fn start_again(&mut self) {
        let server = self.binary("start_again");
        if server.node.is_running() {
            return;
        }
        if let Err(e) = server
            .node
            .start(Readiness::JetStream, START_TIMEOUT, true)
            .await
        {
            panic!("{e}");
        }
    }

    /// [`NatsServer::stop`] then [`NatsServer::start_again`].
    ///
    /// # Panics
    ///
    /// As [`NatsServer::start_again`].
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Whether the server process is running (always true for the container backend).
    pub fn is_running(&self) -> bool {
        match &self.inner {
            Inner::Binary(s) => s.node.is_running(),
            #[cfg(feature = "testcontainers")]
            Inner::Container(_) => true,
        }
    }

    fn binary(&mut self, operation: &'static str) -> &mut BinaryServer {
        #[cfg(not(feature = "testcontainers"))]
        let _ = operation;
        match &mut self.inner {
            Inner::Binary(s) => s,
            #[cfg(feature = "testcontainers")]
            Inner::Container(_) => panic!(
                "{}",
                TestkitError::Unsupported {
                    operation,
                    backend: "testcontainers",
                }
            ),
        }
    }
}

impl Drop for NatsServer {
    /// Kills the server process; the temporary directory is removed afterwards.
    fn drop(&mut self) {
        match &self.inner {
            Inner::Binary(s) => s.node.kill_blocking(),
            #[cfg(feature = "testcontainers")]
            Inner::Container(_) => {} // the container is removed when it is dropped
        }
    }
}

impl BinaryServer {
    async fn start(extra: &str) -> Result<Self, TestkitError> {
        let bin = nats_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("toronto-nats-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temporary directory", e))?;
        let mut attempt = 1;
        loop {
            let p = free_ports(2)?;
            let ports = Ports {
                client: p[0],
                http: p[1],
                cluster: None,
            };
            let label = format!(
                "on 127.0.0.1:{} (files in {})",
                ports.client,
                dir.path().display()
            );
            let mut node = Node::new(bin.clone(), dir.path(), label, ports);
            node.write_config(&render_config(None, ports, &node.store_dir, None, extra))?;
            match node.start(Readiness::JetStream, START_TIMEOUT, false).await {
                Ok(()) => return Ok(Self { node, _dir: dir }),
                Err(TestkitError::PortInUse { .. }) if attempt < FRESH_PORT_ATTEMPTS => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
