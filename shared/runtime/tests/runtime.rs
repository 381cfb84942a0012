//! The runtime against a real nats-server (started by the test kit): endpoints and
//! their errors, the ADR-32 service API, JetStream delivery and dead letters,
//! reconnection and graceful shutdown.

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
use toronto_protocol::messages::{Status, StatusRequest};
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
use toronto_testkit::NatsServer;

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

async fn assert_still_serving(client: &Client) {
    let reply: Envelope<Echoed> = call(
        client,
        SUBJECT,
        &envelope("still here"),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .expect("the service keeps answering");
    assert_eq!(reply.data.text, "still here");
}

#[tokio::test]
async fn each_bad_input_gets_its_code_and_the_service_keeps_answering() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let _host = echo_host(
        &client,
        EndpointConfig {
            max_payload_bytes: 4096,
            concurrency: 8,
        },
    )
    .await;
    let good = serde_json::to_value(envelope("hi")).unwrap();

    let mut cases: Vec<(&str, Vec<u8>, HeaderMap, u16, &str)> = Vec::new();
    cases.push((
        "malformed JSON",
        b"{\"specversion\": ".to_vec(),
        json_headers(),
        400,
        "malformed json",
    ));
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("source");
    cases.push((
        "missing attribute",
        serde_json::to_vec(&missing).unwrap(),
        json_headers(),
        400,
        "missing required attribute `source`",
    ));
    let mut bad_id = good.clone();
    bad_id["id"] = "12345".into();
    cases.push((
        "non-UUID id",
        serde_json::to_vec(&bad_id).unwrap(),
        json_headers(),
        400,
        "not a UUID",
    ));
    let mut future = good.clone();
    future["type"] = "ai.toronto.devops.test.echo.v3".into();
    cases.push((
        "unsupported major",
        serde_json::to_vec(&future).unwrap(),
        json_headers(),
        422,
        "unsupported version",
    ));
    let mut other = good.clone();
    other["type"] = "ai.toronto.devops.task.deploy.v1".into();
    cases.push((
        "type not taken here",
        serde_json::to_vec(&other).unwrap(),
        json_headers(),
        400,
        "not accepted here",
    ));
    let mut big = good.clone();
    big["data"]["text"] = "x".repeat(5000).into();
    cases.push((
        "oversized payload",
        serde_json::to_vec(&big).unwrap(),
        json_headers(),
        413,
        "over the limit",
    ));
    let mut bad_data = good.clone();
    bad_data["data"] = serde_json::json!({"text": 42});
    cases.push((
        "data of the wrong shape",
        serde_json::to_vec(&bad_data).unwrap(),
        json_headers(),
        400,
        "invalid data",
    ));
    let mut xml = HeaderMap::new();
    xml.insert("Content-Type", "text/xml");
    cases.push((
        "unknown content type",
        serde_json::to_vec(&good).unwrap(),
        xml,
        400,
        "unsupported content type",
    ));

    for (what, bytes, headers, status, text) in cases {
        let (code, reply, reply_headers) = raw(&client, bytes, headers).await;
        assert_eq!(code, Some(status), "{what}");
        assert_eq!(reply.ty, "ai.toronto.devops.error.v1", "{what}");
        let body: ErrorBody = serde_json::from_value(reply.data).unwrap();
        assert_eq!(body.code.status(), status, "{what}");
        assert!(body.message.contains(text), "{what}: {}", body.message);
        assert_eq!(
            reply_headers
                .get("Nats-Service-Error")
                .map(|v| v.as_str().to_owned()),
            Some(body.message.clone()),
            "{what}"
        );
        if status == 422 {
            assert_eq!(
                body.details.unwrap()["supported"],
                serde_json::json!([
                    "ai.toronto.devops.test.echo.v1",
                    "ai.toronto.devops.test.echo.v2"
                ])
            );
        }
        assert_still_serving(&client).await;
    }

    // The previous major is still accepted.
    let mut previous = good.clone();
    previous["type"] = "ai.toronto.devops.test.echo.v1".into();
    let (code, reply, _) = raw(
        &client,
        serde_json::to_vec(&previous).unwrap(),
        json_headers(),
    )
    .await;
    assert_eq!(code, None);
    assert_eq!(reply.data["text"], "hi");
}

#[tokio::test]
async fn handler_errors_and_panics_become_error_envelopes() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let _host = echo_host(&client, EndpointConfig::default()).await;

    let err = call::<_, Echoed>(
        &client,
        SUBJECT,
        &envelope(""),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    match err {
        CallError::Remote(body) => assert_eq!(body.code, ErrorCode::NotFound),
        other => panic!("expected a remote error, got {other}"),
    }

    let panicking = Envelope::builder(
        "toronto://test-client",
        Echo {
            text: "boom".into(),
            panic: true,
            ..Default::default()
        },
    )
    .build();
    let err = call::<_, Echoed>(
        &client,
        SUBJECT,
        &panicking,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert_still_serving(&client).await;

    // A message with line breaks still makes a valid header; the body keeps it whole.
    let request = envelope("fail:first line\nsecond line");
    let (code, reply, headers) = raw(
        &client,
        encode(&request, Encoding::Json).unwrap(),
        json_headers(),
    )
    .await;
    assert_eq!(code, Some(409));
    assert_eq!(
        headers.get("Nats-Service-Error").unwrap().as_str(),
        "first line second line"
    );
    assert_eq!(reply.data["message"], "first line\nsecond line");
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn replies_use_the_request_encoding_and_continue_the_flow() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let _host = echo_host(&client, EndpointConfig::default()).await;
    let request = envelope("packed");
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/cloudevents+msgpack");
    let (code, reply, reply_headers) = raw(
        &client,
        encode(&request, Encoding::MessagePack).unwrap(),
        headers,
    )
    .await;
    assert_eq!(code, None);
    assert_eq!(
        reply_headers.get("Content-Type").unwrap().as_str(),
        "application/cloudevents+msgpack"
    );
    assert_eq!(reply.ty, "ai.toronto.devops.test.echoed.v1");
    assert_eq!(reply.data["text"], "packed");
    assert_eq!(reply.correlationid, request.correlationid);
    assert_eq!(reply.causationid, Some(request.id.to_string()));
    let req_trace =
        toronto_protocol::TraceParent::parse(request.traceparent.as_deref().unwrap()).unwrap();
    let reply_trace =
        toronto_protocol::TraceParent::parse(reply.traceparent.as_deref().unwrap()).unwrap();
    assert_eq!(req_trace.trace_id, reply_trace.trace_id);
    let header_trace =
        toronto_protocol::TraceParent::parse(reply_headers.get("traceparent").unwrap().as_str())
            .unwrap();
    assert_eq!(header_trace.trace_id, req_trace.trace_id);

    // A trace context that arrives only as a header is continued as well.
    let mut bare = serde_json::to_value(envelope("header trace")).unwrap();
    bare.as_object_mut().unwrap().remove("traceparent");
    let mut headers = json_headers();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    let (_, reply, _) = raw(&client, serde_json::to_vec(&bare).unwrap(), headers).await;
    assert!(
        reply
            .traceparent
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
}

#[tokio::test]
async fn requests_run_concurrently_up_to_the_bound() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let host = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig {
            max_payload_bytes: 4096,
            concurrency: 4,
        },
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (f, p) = (in_flight.clone(), peak.clone());
    host.add_endpoint("echo", SUBJECT, move |req: Request<Echo>| {
        let (f, p) = (f.clone(), p.clone());
        async move {
            let now = f.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            f.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, ErrorBody>(Echoed {
                text: req.data().text.clone(),
            })
        }
    })
    .await
    .unwrap();
    client.flush().await.unwrap();
    let calls = (0..12).map(|i| {
        let client = client.clone();
        async move {
            call::<_, Echoed>(
                &client,
                SUBJECT,
                &envelope(&format!("n{i}")),
                Encoding::Json,
                Duration::from_secs(10),
            )
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(peak.load(Ordering::SeqCst), 4, "handled at once");
}

async fn srv(client: &Client, subject: &str) -> serde_json::Value {
    let reply = client
        .request(subject.to_owned(), Bytes::new())
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test]
async fn service_api_answers_ping_info_and_stats_per_adr_32() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let host = echo_host(&client, EndpointConfig::default()).await;
    assert_still_serving(&client).await;
    let _ = call::<_, Echoed>(
        &client,
        SUBJECT,
        &envelope(""),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await;

    for subject in [
        "$SRV.PING",
        "$SRV.PING.toronto-test",
        &format!("$SRV.PING.toronto-test.{}", host.id()),
    ] {
        let ping = srv(&client, subject).await;
        assert_eq!(ping["type"], "io.nats.micro.v1.ping_response", "{subject}");
        assert_eq!(ping["name"], "toronto-test");
        assert_eq!(ping["id"], host.id());
        assert_eq!(ping["version"], "1.2.3");
        assert_eq!(ping["metadata"]["k"], "v");
    }

    let info = srv(&client, "$SRV.INFO.toronto-test").await;
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    assert_eq!(info["description"], "runtime tests");
    let endpoint = &info["endpoints"][0];
    assert_eq!(endpoint["name"], "echo");
    assert_eq!(endpoint["subject"], SUBJECT);
    assert_eq!(endpoint["queue_group"], "toronto-test");
    assert_eq!(
        endpoint["metadata"]["request_type"],
        "ai.toronto.devops.test.echo.v2"
    );

    let stats = srv(&client, "$SRV.STATS.toronto-test").await;
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    assert!(chrono::DateTime::parse_from_rfc3339(stats["started"].as_str().unwrap()).is_ok());
    let endpoint = &stats["endpoints"][0];
    assert_eq!(endpoint["name"], "echo");
    assert_eq!(endpoint["num_requests"], 2);
    assert_eq!(endpoint["num_errors"], 1);
    assert!(endpoint["processing_time"].as_u64().unwrap() > 0);
    assert!(endpoint["average_processing_time"].as_u64().unwrap() > 0);
    assert!(
        endpoint["last_error"]
            .as_str()
            .unwrap()
            .contains("nothing to echo")
    );

    // async-nats's own client types read our answers.
    let typed: async_nats::service::Stats = serde_json::from_value(stats).unwrap();
    assert_eq!(typed.endpoints[0].errors, 1);
}

async fn js_setup(
    server: &NatsServer,
) -> (
    Client,
    async_nats::jetstream::Context,
    toronto_protocol::Subjects,
) {
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = toronto_protocol::Subjects::default();
    ensure_streams(&js, &subjects, &Default::default())
        .await
        .unwrap();
    (client, js, subjects)
}

#[tokio::test]
async fn a_publish_repeated_with_the_same_id_is_stored_once() {
    let server = NatsServer::start().await;
    let (_client, js, subjects) = js_setup(&server).await;
    let event = envelope("once");
    let subject = subjects.event("test", "happened");
    let first = publish_envelope(&js, &subject, &event).await.unwrap();
    let second = publish_envelope(&js, &subject, &event).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    // Stored with its id as Nats-Msg-Id and its trace context as a header.
    let stored = js
        .get_stream(subjects.events_stream())
        .await
        .unwrap()
        .get_raw_message(first.sequence)
        .await
        .unwrap();
    assert_eq!(
        stored.headers.get("Nats-Msg-Id").unwrap().as_str(),
        event.id.to_string()
    );
    assert_eq!(
        stored.headers.get("traceparent").map(|v| v.as_str()),
        event.traceparent.as_deref()
    );
    let info = js
        .get_stream(subjects.events_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 1);
    // A new envelope with the same content is a new event.
    publish_envelope(&js, &subject, &envelope("once"))
        .await
        .unwrap();
    let info = js
        .get_stream(subjects.events_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 2);
}

fn consumer_spec(subjects: &toronto_protocol::Subjects, max_deliver: i64) -> ConsumerSpec {
    ConsumerSpec {
        stream: subjects.tasks_stream(),
        durable: "test-worker".into(),
        filter_subject: None,
        ack_wait: Duration::from_secs(1),
        max_deliver,
        concurrency: 4,
    }
}

/// Runs a durable consumer of the tasks stream (max deliver `max_deliver`) in the
/// background; cancel the token to stop it.
fn spawn_consumer<H, Fut>(
    js: &async_nats::jetstream::Context,
    subjects: &toronto_protocol::Subjects,
    max_deliver: i64,
    handler: H,
) -> (
    tokio::task::JoinHandle<Result<(), toronto_runtime::jetstream::JetStreamError>>,
    CancellationToken,
)
where
    H: Fn(toronto_runtime::jetstream::Delivery) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_consumer(
        js.clone(),
        consumer_spec(subjects, max_deliver),
        DeadLetters::new(js.clone(), subjects, "test", Metrics::new()),
        Metrics::new(),
        shutdown.clone(),
        handler,
    ));
    (task, shutdown)
}

/// Waits (bounded) until the tasks work queue holds no message.
async fn tasks_queue_drains(
    js: &async_nats::jetstream::Context,
    subjects: &toronto_protocol::Subjects,
) -> bool {
    for _ in 0..50 {
        let info = js
            .get_stream(subjects.tasks_stream())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        if info.state.messages == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_nakd_message_is_redelivered_and_then_acked() {
    let server = NatsServer::start().await;
    let (_client, js, subjects) = js_setup(&server).await;
    let dlq = DeadLetters::new(js.clone(), &subjects, "test", Metrics::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run_consumer(
        js.clone(),
        consumer_spec(&subjects, 5),
        dlq,
        Metrics::new(),
        shutdown.clone(),
        move |d| {
            let tx = tx.clone();
            async move {
                let n = d.deliveries();
                tx.send(n).unwrap();
                if n == 1 {
                    Outcome::Retry {
                        delay: Some(Duration::from_millis(100)),
                        reason: "not yet".into(),
                    }
                } else {
                    Outcome::Ack
                }
            }
        },
    ));
    publish_envelope(&js, &subjects.tasks(), &envelope("task"))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first, second), (1, 2));
    // Acked on a work queue: the stream is empty afterwards.
    assert!(
        tasks_queue_drains(&js, &subjects).await,
        "the acked task left the work queue"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_consumer_killed_mid_message_lets_another_take_it() {
    let server = NatsServer::start().await;
    let (_client, js, subjects) = js_setup(&server).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let tx_a = tx.clone();
    let (first, _never_cancelled) = spawn_consumer(&js, &subjects, 5, move |_d| {
        let tx = tx_a.clone();
        async move {
            tx.send("a").unwrap();
            // Dies mid-message: never returns a verdict.
            std::future::pending::<Outcome>().await
        }
    });
    publish_envelope(&js, &subjects.tasks(), &envelope("task"))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap(),
        Some("a")
    );
    first.abort();

    let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
    let (second, shutdown) = spawn_consumer(&js, &subjects, 5, move |d| {
        let tx = tx_b.clone();
        async move {
            tx.send((d.deliveries(), d.payload().clone())).unwrap();
            Outcome::Ack
        }
    });
    let (deliveries, payload) = tokio::time::timeout(Duration::from_secs(10), rx_b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deliveries, 2, "redelivered after the ack deadline");
    let env: Envelope<Echo> = toronto_protocol::decode(&payload, Encoding::Json).unwrap();
    assert_eq!(env.data.text, "task");
    shutdown.cancel();
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn max_deliver_parks_the_message_in_the_dlq_with_its_reason() {
    let server = NatsServer::start().await;
    let (client, js, subjects) = js_setup(&server).await;
    let mut dlq_sub = client.subscribe(subjects.dlq("test")).await.unwrap();
    client.flush().await.unwrap();
    let (worker, shutdown) = spawn_consumer(&js, &subjects, 3, |_d| async {
        Outcome::Retry {
            delay: Some(Duration::from_millis(50)),
            reason: "the deployer is down".into(),
        }
    });
    let task = envelope("doomed");
    let original = encode(&task, Encoding::Json).unwrap();
    publish_envelope(&js, &subjects.tasks(), &task)
        .await
        .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(15), dlq_sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        parked.payload.as_ref(),
        original.as_slice(),
        "original bytes kept"
    );
    let headers = parked.headers.unwrap();
    let reason = headers.get(DLQ_REASON_HEADER).unwrap().as_str();
    assert!(reason.contains("the deployer is down"), "{reason}");
    assert!(reason.contains("max deliver 3"), "{reason}");
    assert_eq!(headers.get(DLQ_DELIVERIES_HEADER).unwrap().as_str(), "3");
    assert_eq!(
        headers.get(DLQ_SUBJECT_HEADER).unwrap().as_str(),
        subjects.tasks()
    );
    // It is kept in the DLQ stream for inspection and replay.
    let dlq_stream = js.get_stream(subjects.dlq_stream()).await.unwrap();
    let stored = dlq_stream
        .get_last_raw_message_by_subject(&subjects.dlq("test"))
        .await
        .unwrap();
    assert_eq!(stored.payload.as_ref(), original.as_slice());
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_refused_message_without_reply_subject_is_parked_not_dropped() {
    let server = NatsServer::start().await;
    let (client, js, subjects) = js_setup(&server).await;
    let host = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig::default(),
        Metrics::new(),
        Some(DeadLetters::new(
            js.clone(),
            &subjects,
            "test",
            Metrics::new(),
        )),
    )
    .await
    .unwrap();
    host.add_endpoint("echo", SUBJECT, echo).await.unwrap();
    let mut dlq_sub = client.subscribe(subjects.dlq("test")).await.unwrap();
    client.flush().await.unwrap();
    client
        .publish(SUBJECT, Bytes::from_static(b"not an envelope"))
        .await
        .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq_sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parked.payload.as_ref(), b"not an envelope");
    let reason = parked
        .headers
        .unwrap()
        .get(DLQ_REASON_HEADER)
        .unwrap()
        .as_str()
        .to_owned();
    assert!(reason.contains("malformed"), "{reason}");
}

fn runtime_config(server: &NatsServer) -> Config {
    let mut config = Config::default();
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

#[tokio::test]
async fn a_nats_restart_under_a_running_service_is_survived() {
    let mut server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let rt = ServiceRuntime::start(
        ServiceKind::Planner,
        "0.0.1",
        runtime_config(&server),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let addr = rt.http_addr.unwrap();
    let status_subject = rt.subjects.status(ServiceKind::Planner);
    let running = tokio::spawn(rt.run_until_shutdown());
    wait_for_readyz(addr, 200).await;
    let healthz = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status().as_u16(), 200);

    server.stop().await;
    wait_for_readyz(addr, 503).await;
    server.start_again().await;
    wait_for_readyz(addr, 200).await;

    let client = server.client().await;
    let mut answered = None;
    for _ in 0..50 {
        let request = Envelope::builder("toronto://test", StatusRequest::default()).build();
        if let Ok(reply) = call::<_, Status>(
            &client,
            &status_subject,
            &request,
            Encoding::Json,
            Duration::from_secs(1),
        )
        .await
        {
            answered = Some(reply.data);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = answered.expect("the service answers again without a restart of its own");
    assert!(status.nats_connected);
    assert_eq!(status.service, "toronto-planner");

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("toronto_requests_total{endpoint=\"status\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("toronto_nats_connected 1"), "{metrics}");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_then_stops_taking_work() {
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let rt = ServiceRuntime::start(
        ServiceKind::Monitor,
        "0.0.1",
        runtime_config(&server),
        shutdown.clone(),
    )
    .await
    .unwrap();
    rt.endpoint("echo", echo).await.unwrap();
    let subject = rt.subjects.command(ServiceKind::Monitor, "echo");
    let addr = rt.http_addr.unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let slow = Envelope::builder(
        "toronto://test",
        Echo {
            text: "slow".into(),
            sleep_ms: 1500,
            ..Default::default()
        },
    )
    .build();
    let in_flight = {
        let client = client.clone();
        let subject = subject.clone();
        tokio::spawn(async move {
            call::<_, Echoed>(
                &client,
                &subject,
                &slow,
                Encoding::Json,
                Duration::from_secs(10),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    wait_for_readyz(addr, 0).await; // HTTP goes away once the service is down
    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(reply.data.text, "slow");
    running.await.unwrap().unwrap();
    let err = call::<_, Echoed>(
        &client,
        &subject,
        &envelope("late"),
        Encoding::Json,
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CallError::NoResponders(_)), "{err}");
}

// ---- connection: credentials and TLS from TORONTO_* variables, against real servers ----

fn vars(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Connects with the config the variables give; false when no connection is made
/// within the bound (the client keeps retrying forever, so a refusal never ends).
async fn connects(vars: &HashMap<String, String>) -> bool {
    let config = Config::from_vars(vars).expect("valid configuration");
    let metrics = Metrics::new();
    let token = CancellationToken::new();
    let attempt = toronto_runtime::connect::connect(&config.nats, "toronto-test", &metrics, &token);
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(client)) => {
            // Prove the connection carries traffic, not just that it opened.
            let mut sub = client.subscribe("auth.check").await.unwrap();
            client
                .publish("auth.check", Bytes::from_static(b"x"))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(2), sub.next())
                .await
                .ok()
                .flatten()
                .is_some()
        }
        _ => false,
    }
}

#[tokio::test]
async fn user_password_and_token_come_from_the_environment() {
    let server =
        NatsServer::start_with_config("authorization { user: ops, password: \"12345\" }").await;
    let url = server.url();
    assert!(
        connects(&vars(&[
            ("TORONTO_NATS_URL", url.clone()),
            ("TORONTO_NATS_USER", "ops".into()),
            ("TORONTO_NATS_PASSWORD", "12345".into()),
        ]))
        .await
    );
    assert!(
        !connects(&vars(&[
            ("TORONTO_NATS_URL", url.clone()),
            ("TORONTO_NATS_USER", "ops".into()),
            ("TORONTO_NATS_PASSWORD", "wrong".into()),
        ]))
        .await,
        "a wrong password is refused"
    );

    let server = NatsServer::start_with_config("authorization { token: \"s3cr3t-t0ken\" }").await;
    assert!(
        connects(&vars(&[
            ("TORONTO_NATS_URL", server.url()),
            ("TORONTO_NATS_TOKEN", "s3cr3t-t0ken".into())
        ]))
        .await
    );
    assert!(
        !connects(&vars(&[("TORONTO_NATS_URL", server.url())])).await,
        "no token, no connection"
    );
}

#[tokio::test]
async fn nkey_seed_authenticates() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ))
    .await;
    assert!(
        connects(&vars(&[
            ("TORONTO_NATS_URL", server.url()),
            ("TORONTO_NATS_NKEY_SEED", user.seed().unwrap()),
        ]))
        .await
    );
    let stranger = nkeys::KeyPair::new_user();
    assert!(
        !connects(&vars(&[
            ("TORONTO_NATS_URL", server.url()),
            ("TORONTO_NATS_NKEY_SEED", stranger.seed().unwrap()),
        ]))
        .await,
        "an unknown key is refused"
    );
}

#[tokio::test]
async fn mutual_tls_with_ca_and_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["toronto-test".into()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let ca_file = write("ca.pem", ca.pem());
    let server_file = write("server.pem", server_cert.pem());
    let server_key_file = write("server-key.pem", server_key.serialize_pem());
    let client_file = write("client.pem", client_cert.pem());
    let client_key_file = write("client-key.pem", client_key.serialize_pem());

    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: \"{server_file}\", key_file: \"{server_key_file}\", ca_file: \"{ca_file}\", verify: true }}"
    ))
    .await;
    assert!(
        connects(&vars(&[
            ("TORONTO_NATS_URL", server.url()),
            ("TORONTO_NATS_TLS_CA", ca_file.clone()),
            ("TORONTO_NATS_TLS_CERT", client_file),
            ("TORONTO_NATS_TLS_KEY", client_key_file),
        ]))
        .await
    );
    assert!(
        !connects(&vars(&[
            ("TORONTO_NATS_URL", server.url()),
            ("TORONTO_NATS_TLS_CA", ca_file)
        ]))
        .await,
        "without a client certificate the server refuses"
    );
}

#[tokio::test]
async fn on_a_three_node_cluster_a_service_survives_losing_its_node() {
    let mut cluster = toronto_testkit::NatsCluster::start(3).await;
    let mut config = Config::default();
    config.nats.urls = cluster.urls();
    config.http.addr = "127.0.0.1:0".into();
    config.jetstream.replicas = 3;
    let shutdown = CancellationToken::new();
    let rt = ServiceRuntime::start(ServiceKind::Deployer, "0.0.1", config, shutdown.clone())
        .await
        .unwrap();
    let service_client = rt.client.clone();
    let events = rt.events.clone();
    let addr = rt.http_addr.unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());

    // R3 streams were created on the cluster.
    let js = async_nats::jetstream::new(cluster.client(0).await);
    let mut stream = js.get_stream("TORONTO_DEVOPS_EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.num_replicas, 3);

    // Kill the node the service is connected to.
    let name = service_client.server_info().server_name;
    let node: usize = name.trim_start_matches('n').parse().unwrap();
    cluster.kill(node).await;
    let survivor = (node + 1) % 3;
    let client = cluster.client(survivor).await;

    wait_for_readyz(addr, 200).await;
    let mut answered = false;
    for _ in 0..100 {
        let request = Envelope::builder("toronto://test", StatusRequest::default()).build();
        if call::<_, Status>(
            &client,
            "toronto.devops.v1.deployer.status",
            &request,
            Encoding::Json,
            Duration::from_secs(1),
        )
        .await
        .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the service answers through another node");
    assert_ne!(
        service_client.server_info().server_name,
        name,
        "it moved to another node"
    );

    // Events are still stored (two of three replicas are up).
    let mut stored = false;
    for _ in 0..100 {
        if events
            .publish("test", "survived", &envelope("still here"))
            .await
            .is_ok()
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        stored,
        "publishing to the R3 events stream works with one node down"
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn progress_acks_keep_long_work_from_being_redelivered() {
    let server = NatsServer::start().await;
    let (_client, js, subjects) = js_setup(&server).await;
    let deliveries = Arc::new(AtomicUsize::new(0));
    let seen = deliveries.clone();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    // ack_wait is 1 s; the work takes 2.5 s and reports progress every 400 ms.
    let (worker, shutdown) = spawn_consumer(&js, &subjects, 5, move |d| {
        let seen = seen.clone();
        let done_tx = done_tx.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                d.progress().await;
            }
            done_tx.send(d.deliveries()).unwrap();
            Outcome::Ack
        }
    });
    publish_envelope(&js, &subjects.tasks(), &envelope("long"))
        .await
        .unwrap();
    let delivered_as = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivered_as, 1);
    // Past another ack deadline, still nobody got it a second time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        deliveries.load(Ordering::SeqCst),
        1,
        "no redelivery while progress was reported"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_rejected_message_goes_to_the_dlq_at_once() {
    let server = NatsServer::start().await;
    let (client, js, subjects) = js_setup(&server).await;
    let mut dlq_sub = client.subscribe(subjects.dlq("test")).await.unwrap();
    client.flush().await.unwrap();
    let (worker, shutdown) = spawn_consumer(&js, &subjects, 5, |_d| async {
        Outcome::Reject {
            reason: "schema version 9 is not supported".into(),
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "peer-msg-1");
    js.publish_with_headers(
        subjects.tasks(),
        headers,
        Bytes::from_static(b"{\"not\":\"an envelope\"}"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(10), dlq_sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parked.payload.as_ref(), b"{\"not\":\"an envelope\"}");
    let headers = parked.headers.unwrap();
    assert_eq!(
        headers.get(DLQ_REASON_HEADER).unwrap().as_str(),
        "schema version 9 is not supported"
    );
    assert_eq!(headers.get(DLQ_DELIVERIES_HEADER).unwrap().as_str(), "1");
    assert_eq!(
        headers
            .get(toronto_runtime::jetstream::DLQ_ORIGINAL_MSG_ID_HEADER)
            .unwrap()
            .as_str(),
        "peer-msg-1"
    );
    // Terminated, so it left the work queue.
    assert!(
        tasks_queue_drains(&js, &subjects).await,
        "the rejected task left the work queue"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn dead_letters_can_be_listed_and_replayed_once_fixed() {
    use toronto_runtime::jetstream::{list_dead_letters, replay_dead_letter};
    let server = NatsServer::start().await;
    let (client, js, subjects) = js_setup(&server).await;
    // A consumer that cannot handle the task yet.
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let flag = broken.clone();
    let (worker, shutdown) = spawn_consumer(&js, &subjects, 5, move |d| {
        let flag = flag.clone();
        let tx = tx.clone();
        async move {
            if flag.load(Ordering::SeqCst) {
                Outcome::Reject {
                    reason: "no plan for task type `chaos`".into(),
                }
            } else {
                tx.send(d.payload().clone()).unwrap();
                Outcome::Ack
            }
        }
    });
    let task = encode(&envelope("chaos please"), Encoding::Json).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/cloudevents+json");
    js.publish_with_headers(subjects.tasks(), headers, Bytes::from(task.clone()))
        .await
        .unwrap()
        .await
        .unwrap();

    let mut letters = Vec::new();
    for _ in 0..100 {
        letters = list_dead_letters(&js, &subjects, 10).await.unwrap();
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.reason, "no plan for task type `chaos`");
    assert_eq!(letter.origin, "test-worker");
    assert_eq!(letter.original_subject, subjects.tasks());
    assert_eq!(letter.payload.as_ref(), task.as_slice());

    // Fixed: the replayed task is handled, with its original bytes and headers.
    broken.store(false, Ordering::SeqCst);
    let target = replay_dead_letter(&js, &subjects, letter.sequence, false)
        .await
        .unwrap();
    assert_eq!(target, subjects.tasks());
    let payload = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload.as_ref(), task.as_slice());
    assert!(
        list_dead_letters(&js, &subjects, 10)
            .await
            .unwrap()
            .is_empty(),
        "replayed letters leave the DLQ"
    );
    assert!(
        replay_dead_letter(&js, &subjects, letter.sequence, false)
            .await
            .is_err(),
        "nothing to replay twice"
    );

    // A letter refused by a request endpoint is replayed as a plain message.
    let host = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig::default(),
        Metrics::new(),
        Some(DeadLetters::new(
            js.clone(),
            &subjects,
            "test",
            Metrics::new(),
        )),
    )
    .await
    .unwrap();
    host.add_endpoint("echo", SUBJECT, echo).await.unwrap();
    client.flush().await.unwrap();
    client
        .publish(SUBJECT, Bytes::from_static(b"garbage"))
        .await
        .unwrap();
    let mut letters = Vec::new();
    for _ in 0..100 {
        letters = list_dead_letters(&js, &subjects, 10).await.unwrap();
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters[0].original_subject, SUBJECT);
    let mut watch = client.subscribe(SUBJECT).await.unwrap();
    client.flush().await.unwrap();
    replay_dead_letter(&js, &subjects, letters[0].sequence, true)
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.payload.as_ref(), b"garbage");
    assert_eq!(
        list_dead_letters(&js, &subjects, 10).await.unwrap().len(),
        2,
        "kept, and parked again"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

/// A second request type, for the multi-type endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Shout {
    text: String,
}

impl Message for Shout {
    const NAME: &'static str = "test.shout";
    const MAJOR: u32 = 1;
}

#[tokio::test]
async fn an_endpoint_can_take_several_request_types() {
    use toronto_runtime::Accepts;
    let server = NatsServer::start().await;
    let client = server.client().await;
    let host = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    host.add_endpoint_any(
        "speak",
        SUBJECT,
        Accepts::new().with::<Echo>().with::<Shout>(),
        |req: Request<serde_json::Value>| async move {
            if let Some(echo) = req.typed::<Echo>() {
                return Ok(Echoed {
                    text: echo?.data.text,
                });
            }
            if let Some(shout) = req.typed::<Shout>() {
                return Ok(Echoed {
                    text: shout?.data.text.to_uppercase(),
                });
            }
            unreachable!("the runtime refuses other types before the handler runs")
        },
    )
    .await
    .unwrap();
    client.flush().await.unwrap();

    let reply: Envelope<Echoed> = call(
        &client,
        SUBJECT,
        &envelope("hi"),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(reply.data.text, "hi");
    let shout = Envelope::builder("toronto://test", Shout { text: "hi".into() }).build();
    let reply: Envelope<Echoed> = call(
        &client,
        SUBJECT,
        &shout,
        Encoding::MessagePack,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(reply.data.text, "HI");

    let other = Envelope::builder("toronto://test", StatusRequest::default()).build();
    match call::<_, Echoed>(
        &client,
        SUBJECT,
        &other,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    {
        Err(CallError::Remote(body)) => {
            assert_eq!(body.code, ErrorCode::BadRequest);
            assert_eq!(
                body.details.unwrap()["expected"],
                serde_json::json!([
                    "ai.toronto.devops.test.echo.v2",
                    "ai.toronto.devops.test.shout.v1"
                ])
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
    let mut future = serde_json::to_value(&shout).unwrap();
    future["type"] = "ai.toronto.devops.test.shout.v2".into();
    let (code, reply, _) = raw(
        &client,
        serde_json::to_vec(&future).unwrap(),
        json_headers(),
    )
    .await;
    assert_eq!(code, Some(422));
    assert_eq!(
        reply.data["details"]["supported"],
        serde_json::json!(["ai.toronto.devops.test.shout.v1"])
    );
    let mut bad = serde_json::to_value(&shout).unwrap();
    bad["data"] = serde_json::json!({"text": 7});
    let (code, _, _) = raw(&client, serde_json::to_vec(&bad).unwrap(), json_headers()).await;
    assert_eq!(code, Some(400), "bad data of an accepted type");

    let info = srv(&client, "$SRV.INFO.toronto-test").await;
    assert_eq!(
        info["endpoints"][0]["metadata"]["request_type"],
        "ai.toronto.devops.test.echo.v2,ai.toronto.devops.test.shout.v1"
    );
}
