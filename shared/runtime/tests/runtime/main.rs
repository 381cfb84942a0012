//! The runtime against a real nats-server (started by the test kit): endpoints and
//! their errors, the ADR-32 service API, JetStream delivery and dead letters,
//! reconnection and graceful shutdown. One binary, one module per concern:
//! [`endpoints`] (requests, errors, encodings, the ADR-32 service API), [`delivery`]
//! (JetStream publishes, consumers and dead letters), [`lifecycle`] (reconnection,
//! shutdown, credentials, clusters), [`tls`] (TLS to NATS), [`peers`] (the peer
//! agents' NATS users) and [`lease`] (the replicas' lease).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use toronto_protocol::status::{Status, StatusRequest};
use toronto_protocol::{
    Encoding, Envelope, ErrorBody, ErrorCode, Message, ServiceKind, decode_raw, encode,
};
use toronto_runtime::config::{Config, EndpointConfig};
use toronto_runtime::jetstream::{
    ConsumerSpec, DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, DLQ_SUBJECT_HEADER, DeadLetters,
    Outcome, ensure_streams, publish_envelope, run_consumer,
};
use toronto_runtime::rpc::{CallError, call};
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_runtime::{Metrics, ServiceRuntime};
use toronto_testkit::{NatsServer, Requester};

/// A test request: echoes `text`, optionally after a pause, or panics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Echo {
    text: String,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    panic: bool,
}

impl Message for Echo {
    const NAME: &'static str = "test.echo";
    const MAJOR: u32 = 2;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Echoed {
    text: String,
}

impl Message for Echoed {
    const NAME: &'static str = "test.echoed";
    const MAJOR: u32 = 1;
}

const SUBJECT: &str = "test.devops.v1.echo";

fn spec() -> ServiceSpec {
    ServiceSpec {
        name: "toronto-test".into(),
        version: "1.2.3".into(),
        description: "runtime tests".into(),
        metadata: HashMap::from([("k".into(), "v".into())]),
        queue_group: "toronto-test".into(),
        source: "toronto://test".into(),
    }
}

async fn echo(req: Request<Echo>) -> Result<Echoed, ErrorBody> {
    let data = req.data().clone();
    if data.panic {
        panic!("asked to panic");
    }
    if data.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(data.sleep_ms)).await;
    }
    if data.text.is_empty() {
        return Err(ErrorBody::new(ErrorCode::NotFound, "nothing to echo"));
    }
    if let Some(reason) = data.text.strip_prefix("fail:") {
        return Err(ErrorBody::new(ErrorCode::Conflict, reason));
    }
    Ok(Echoed { text: data.text })
}

async fn echo_host(client: &Client, limits: EndpointConfig) -> ServiceHost {
    let host = ServiceHost::start(client.clone(), spec(), limits, Metrics::new(), None)
        .await
        .unwrap();
    host.add_endpoint("echo", SUBJECT, echo).await.unwrap();
    client.flush().await.unwrap();
    host
}

fn envelope(text: &str) -> Envelope<Echo> {
    Envelope::builder(
        "toronto://test-client",
        Echo {
            text: text.into(),
            ..Default::default()
        },
    )
    .build()
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Content-Type", "application/cloudevents+json");
    h
}

/// Sends raw bytes and returns (error code header, decoded reply envelope).
async fn raw(
    client: &Client,
    bytes: Vec<u8>,
    headers: HeaderMap,
) -> (Option<u16>, toronto_protocol::RawEnvelope, HeaderMap) {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request_with_headers(SUBJECT, headers, Bytes::from(bytes)),
    )
    .await
    .expect("reply in time")
    .expect("reply");
    let headers = reply.headers.clone().unwrap_or_default();
    let code = headers
        .get("Nats-Service-Error-Code")
        .map(|v| v.as_str().parse().unwrap());
    let encoding =
        Encoding::from_content_type(headers.get("Content-Type").map(|v| v.as_str())).unwrap();
    let env = decode_raw(&reply.payload, encoding).expect("the reply is an envelope");
    (code, env, headers)
}

/// The echo endpoint through the testkit's request helper, answering within 5 s.
fn echo_endpoint(client: &Client) -> Requester {
    Requester::new(client.clone(), SUBJECT).with_timeout(Duration::from_secs(5))
}

async fn assert_still_serving(client: &Client) {
    let reply: Envelope<Echoed> = echo_endpoint(client)
        .send("", &envelope("still here"))
        .await
        .expect("the service keeps answering");
    assert_eq!(reply.data.text, "still here");
}

async fn srv(client: &Client, subject: &str) -> serde_json::Value {
    let reply = client
        .request(subject.to_owned(), Bytes::new())
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

fn runtime_config(server: &NatsServer) -> Config {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    config.shutdown_grace_secs = 10;
    config
}

async fn readyz(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn wait_for_readyz(addr: std::net::SocketAddr, want: u16) {
    for _ in 0..300 {
        if readyz(addr).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {want}");
}

mod auth;
mod delivery;
mod depth;
mod endpoints;
mod faults;
mod lease;
mod lifecycle;
mod peers;
mod tls;
