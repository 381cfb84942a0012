//! Real `nats-server` processes for tests: a single JetStream node that can be stopped,
//! started again and restarted on the same port with the same store, and small JetStream
//! clusters whose nodes can be killed and restarted.
//!
//! No mocks: every [`NatsServer`] and [`NatsCluster`] runs the real binary found by
//! [`nats_server_bin`] (pinned version [`PINNED_NATS_SERVER_VERSION`], installed by
//! `scripts/install-tools`). Each server gets free ports on `127.0.0.1`, a generated config
//! file, a JetStream store and a log file in its own temporary directory; everything is
//! killed and removed when the value is dropped, also when a test panics.
//!
//! [`request()`] and [`Requester`] send typed request envelopes to a service and decode its
//! typed reply or its error envelope, the one helper every test that talks to a service uses.
//!
//! With the cargo feature `testcontainers` and `TORONTO_TESTKIT_NATS=testcontainers`,
//! [`NatsServer`] runs in a container instead (needs a Docker engine; no stop/restart).
//!
//! ```no_run
//! # async fn demo() {
//! let server = toronto_testkit::NatsServer::start().await;
//! let client = server.client().await;
//! client.publish("greetings", "hello".into()).await.unwrap();
//! # }
//! ```
#![forbid(unsafe_code)]

mod bin;
mod cluster;
#[cfg(feature = "testcontainers")]
mod container;
mod error;
mod fake;
mod identity;
pub mod kube_api;
pub mod kubectl;
mod node;
pub mod peers;
mod prometheus;
mod proxy;
pub mod recorder;
pub mod request;
pub mod rollouts;
mod server;
pub mod slo;

pub use bin::{
    BACKEND_ENV, BIN_ENV, INSTALL_HINT, nats_server_bin, parse_nats_server_version,
    resolve_nats_server_bin,
};
pub use cluster::NatsCluster;
pub use error::TestkitError;
pub use fake::fake_service;
pub use identity::{
    TEST_ADMIN_SEED, person, principal, put_principal, test_identity, test_identity_file,
    with_test_admin,
};
pub use kube_api::{FakeKubeApi, FakeKubeOptions};
pub use prometheus::Prometheus;
pub use proxy::TcpProxy;
pub use recorder::Recorder;
pub use request::{REQUEST_TIMEOUT, Requester, TEST_SOURCE, remote_error, request};
pub use server::{NatsServer, tls_config};

/// The nats-server version the project pins for tests (installed by `scripts/install-tools`).
pub const PINNED_NATS_SERVER_VERSION: &str = "2.15.1";

/// The oldest nats-server (major, minor) the testkit accepts; older servers lack JetStream
/// APIs the agent uses (see the `server_2_10` feature of async-nats).
pub const MIN_NATS_SERVER_VERSION: (u32, u32) = (2, 10);
