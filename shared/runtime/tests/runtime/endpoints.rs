//! Endpoints: bad input and its codes, handler errors and panics, encodings, bounded
//! concurrency, the ADR-32 service API and endpoints taking several request types.

use super::*;

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
    bad_id["id"] = "".into();
    cases.push((
        "empty id",
        serde_json::to_vec(&bad_id).unwrap(),
        json_headers(),
        400,
        "missing required attribute `id`",
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

    let err = echo_endpoint(&client)
        .send::<_, Echoed>("", &envelope(""))
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
    let err = echo_endpoint(&client)
        .send::<_, Echoed>("", &panicking)
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

#[tokio::test]
async fn service_api_answers_ping_info_and_stats_per_adr_32() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let host = echo_host(&client, EndpointConfig::default()).await;
    assert_still_serving(&client).await;
    let _ = echo_endpoint(&client)
        .send::<_, Echoed>("", &envelope(""))
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

    let reply: Envelope<Echoed> = echo_endpoint(&client)
        .send("", &envelope("hi"))
        .await
        .unwrap();
    assert_eq!(reply.data.text, "hi");
    let shout = Envelope::builder("toronto://test", Shout { text: "hi".into() }).build();
    let reply: Envelope<Echoed> = echo_endpoint(&client)
        .with_encoding(Encoding::MessagePack)
        .send("", &shout)
        .await
        .unwrap();
    assert_eq!(reply.data.text, "HI");

    let other = Envelope::builder("toronto://test", StatusRequest::default()).build();
    match echo_endpoint(&client).send::<_, Echoed>("", &other).await {
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

#[tokio::test]
async fn binary_content_mode_is_served_and_checked_like_structured_mode() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let _host = echo_host(&client, EndpointConfig::default()).await;
    let binary = |id: &str, ty: &str| {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0");
        h.insert("ce-id", id);
        h.insert("ce-source", "urn:peer:binary");
        h.insert("ce-type", ty);
        h.insert("ce-correlationid", "flow-7");
        h.insert("Content-Type", "application/json");
        h
    };
    let echo = Echo::message_type().to_string();
    let (code, reply, reply_headers) = raw(
        &client,
        br#"{"text":"bare data"}"#.to_vec(),
        binary("order 7", &echo),
    )
    .await;
    assert_eq!(code, None);
    assert_eq!(reply.data["text"], "bare data");
    assert_eq!(reply.causationid.as_deref(), Some("order 7"));
    assert_eq!(reply.correlationid.as_deref(), Some("flow-7"));
    // The reply is a structured envelope.
    assert_eq!(
        reply_headers.get("Content-Type").unwrap().as_str(),
        "application/cloudevents+json"
    );
    // Checked like structured mode: a missing attribute, bad data, an unknown major.
    let mut no_source = binary("x", &echo);
    no_source.insert("ce-source", "");
    let (code, reply, _) = raw(&client, b"{}".to_vec(), no_source).await;
    assert_eq!(code, Some(400));
    assert!(reply.data["message"].as_str().unwrap().contains("`source`"));
    let (code, _, _) = raw(&client, br#"{"text":1}"#.to_vec(), binary("x", &echo)).await;
    assert_eq!(code, Some(400));
    let (code, _, _) = raw(
        &client,
        b"{}".to_vec(),
        binary("x", "ai.toronto.devops.test.echo.v9"),
    )
    .await;
    assert_eq!(code, Some(422));
}
