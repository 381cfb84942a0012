//! The testkit's error type.

use std::path::PathBuf;
use std::time::Duration;

use crate::bin::INSTALL_HINT;

/// Everything that can go wrong while finding, starting or stopping a NATS server for a test.
///
/// The messages are meant to be read in a failing test's output: they say what was tried,
/// and for startup failures they end with the tail of the server's log.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// `TORONTO_NATS_SERVER_BIN` names a file that does not exist.
    #[error(
        "TORONTO_NATS_SERVER_BIN is set to {path}, which is not an existing file; {hint}",
        path = .path.display(),
        hint = INSTALL_HINT
    )]
    EnvBinMissing {
        /// The value of `TORONTO_NATS_SERVER_BIN`.
        path: PathBuf,
    },

    /// No nats-server binary was found anywhere the testkit looks.
    #[error("nats-server not found (looked at {searched}); {hint}", hint = INSTALL_HINT)]
    NotFound {
        /// The places that were searched, human-readable.
        searched: String,
    },

    /// `nats-server --version` could not be run or printed something unexpected.
    #[error("could not get the version of {bin} with --version: {detail}; {hint}", bin = .bin.display(), hint = INSTALL_HINT)]
    Version {
        /// The binary that was asked.
        bin: PathBuf,
        /// What went wrong (spawn error, exit status or unparsable output).
        detail: String,
    },

    /// The nats-server found is older than [`crate::MIN_NATS_SERVER_VERSION`].
    #[error(
        "{bin} is nats-server {found}, older than the minimum {min_major}.{min_minor} the tests need; {hint}",
        bin = .bin.display(),
        min_major = crate::MIN_NATS_SERVER_VERSION.0,
        min_minor = crate::MIN_NATS_SERVER_VERSION.1,
        hint = INSTALL_HINT
    )]
    TooOld {
        /// The binary that was found.
        bin: PathBuf,
        /// The version it reported, e.g. `2.9.10`.
        found: String,
    },

    /// An I/O operation of the testkit itself failed (temp dir, config file, log file, spawn).
    #[error("{context}: {source}")]
    Io {
        /// What the testkit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The server process exited while the testkit waited for it to become ready.
    #[error(
        "nats-server {what} exited during startup ({status}); its config:\n{config}\nlog tail:\n{log_tail}"
    )]
    Exited {
        /// Which server (e.g. `on 127.0.0.1:4222` or `node n1`).
        what: String,
        /// Its exit status.
        status: String,
        /// The generated config file it was started with.
        config: String,
        /// The last lines of its log.
        log_tail: String,
    },

    /// The server's port stayed in use by another process for the whole startup timeout.
    #[error(
        "nats-server {what} could not bind its ports (address already in use); log tail:\n{log_tail}"
    )]
    PortInUse {
        /// Which server.
        what: String,
        /// The last lines of its log.
        log_tail: String,
    },

    /// The server did not accept clients (or JetStream did not answer) within the timeout.
    #[error(
        "nats-server {what} was not ready within {timeout:?}: {last_error}; log tail:\n{log_tail}"
    )]
    NotReady {
        /// Which server.
        what: String,
        /// How long the testkit waited.
        timeout: Duration,
        /// The last readiness probe's error.
        last_error: String,
        /// The last lines of its log.
        log_tail: String,
    },

    /// `TORONTO_TESTKIT_NATS` has a value the testkit does not know.
    #[error(
        "TORONTO_TESTKIT_NATS={value} is not a known backend; use `binary` (the default) or `testcontainers`"
    )]
    UnknownBackend {
        /// The value found.
        value: String,
    },

    /// `TORONTO_TESTKIT_NATS=testcontainers` without the cargo feature.
    #[error(
        "TORONTO_TESTKIT_NATS=testcontainers needs the testcontainers backend compiled in: build with `--features toronto-testkit/testcontainers` (and run a Docker engine), or unset TORONTO_TESTKIT_NATS to use the nats-server binary"
    )]
    TestcontainersFeatureMissing,

    /// The operation is not available for the server's backend.
    #[error("{operation} is not supported for the {backend} backend of toronto-testkit")]
    Unsupported {
        /// What was asked for, e.g. `restart`.
        operation: &'static str,
        /// The backend, e.g. `testcontainers`.
        backend: &'static str,
    },

    /// Starting the container failed (testcontainers backend).
    #[error("could not start the NATS container (is a Docker engine running?): {0}")]
    Container(String),

    /// A client could not connect to a server the testkit started.
    #[error("could not connect a client to {url}: {detail}")]
    Connect {
        /// The server URL.
        url: String,
        /// The connect error.
        detail: String,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
