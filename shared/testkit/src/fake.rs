//! Stand-ins for services and peer agents: a [`ServiceHost`] under a given name, to which
//! a test adds the endpoints it needs.

use async_nats::Client;
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::{Metrics, ServiceHost, ServiceSpec};

/// Starts an ADR-32 service named `name` (also its queue group) whose replies carry
/// `source`, with default endpoint limits and no dead letters; panics if it cannot.
pub async fn fake_service(client: &Client, name: &str, source: &str) -> ServiceHost {
    ServiceHost::start(
        client.clone(),
        ServiceSpec {
            name: name.to_owned(),
            version: "0.0.1".to_owned(),
            description: format!("{name}, a stand-in for tests"),
            metadata: Default::default(),
            queue_group: name.to_owned(),
            source: source.to_owned(),
        },
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}
