//! The runtime every Toronto service is built on: configuration, the NATS
//! connection, the ADR-32 service host with typed endpoints, JetStream streams,
//! consumers and dead letters, HTTP health and metrics, JSON logs, and graceful
//! shutdown.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod config;
pub mod connect;
pub mod http;
pub mod jetstream;
pub mod lease;
pub mod metrics;
pub mod rpc;
pub mod service;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
pub mod tls;
pub mod work;

pub use app::{RuntimeError, ServiceRuntime, service_main};
pub use config::Config;
pub use metrics::Metrics;
pub use service::{Accepts, Request, ServiceHost, ServiceSpec};
