//! Faults the runtime must absorb: a background loop that fails is restarted and
//! reported by `/readyz` and `status` meanwhile.

use std::sync::atomic::AtomicBool;

use toronto_protocol::status::LoopState;

use super::*;

async fn status_of(client: &Client, subject: &str) -> Status {
    Requester::new(client.clone(), subject)
        .with_timeout(Duration::from_secs(2))
        .request::<_, Status>("", StatusRequest::default())
        .await
        .expect("status answers")
}

#[tokio::test]
async fn a_failing_loop_makes_readyz_503_naming_it_then_recovers() {
    let server = NatsServer::start().await;
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
    let broken = Arc::new(AtomicBool::new(true));
    let runs = Arc::new(AtomicUsize::new(0));
    let (is_broken, counted, token) = (broken.clone(), runs.clone(), shutdown.clone());
    rt.spawn_background("flaky consumer", move || {
        let (is_broken, token) = (is_broken.clone(), token.clone());
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if is_broken.load(Ordering::SeqCst) {
                return Err("the stream went away");
            }
            token.cancelled().await;
            Ok(())
        }
    });
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;

    wait_for_readyz(addr, 503).await;
    let body = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("background loops down: flaky consumer"),
        "{body}"
    );
    let status = status_of(&client, &status_subject).await;
    let flaky = status
        .loops
        .iter()
        .find(|l| l.name == "flaky consumer")
        .unwrap();
    assert!(flaky.required);
    assert_eq!(flaky.last_error.as_deref(), Some("the stream went away"));

    broken.store(false, Ordering::SeqCst);
    wait_for_readyz(addr, 200).await;
    let status = status_of(&client, &status_subject).await;
    let flaky = status
        .loops
        .iter()
        .find(|l| l.name == "flaky consumer")
        .unwrap();
    assert_eq!(flaky.state, LoopState::Running);
    assert!(flaky.restarts >= 1, "{flaky:?}");
    assert_eq!(runs.load(Ordering::SeqCst) as u64, flaky.restarts + 1);
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let restarts = metrics
        .lines()
        .find(|l| l.starts_with("toronto_background_loop_restarts_total{loop=\"flaky consumer\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(restarts.is_some_and(|n| n >= 1.0), "{metrics}");

    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// Serves `/healthz` and an echoing `POST /echo` with short timeouts.
async fn slow_server() -> (std::net::SocketAddr, CancellationToken) {
    use toronto_runtime::http::{HttpTimeouts, serve_listener};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/echo",
            axum::routing::post(|body: String| async move { body }),
        );
    let timeouts = HttpTimeouts {
        header_read: Duration::from_millis(500),
        body_read: Duration::from_millis(500),
        drain: Duration::from_secs(1),
    };
    let stop = CancellationToken::new();
    tokio::spawn(serve_listener(listener, app, timeouts, stop.clone()));
    (addr, stop)
}

/// Reads until the server closes the connection (within 5 s) and returns what it sent.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn slow_and_idle_http_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let (addr, stop) = slow_server().await;

    // Twenty clients that never finish their request head.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let started = std::time::Instant::now();
    for s in &mut slow {
        until_closed(s).await;
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    // A body that stops half-way gets 408 and the connection is closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let reply = until_closed(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");

    // A keep-alive connection that goes idle after its request is closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = until_closed(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // A client that sends its request in time is served.
    let answer = reqwest::Client::new()
        .post(format!("http://{addr}/echo"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.text().await.unwrap(), "hello");
    stop.cancel();
}

#[tokio::test]
async fn the_task_queue_refuses_what_submit_would() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = toronto_protocol::Subjects::default();
    ensure_streams(&js, &subjects, &Default::default())
        .await
        .unwrap();
    let big = Bytes::from(vec![b'x'; 400 * 1024]);
    let refused = match js.publish(subjects.tasks(), big).await {
        Ok(ack) => ack.await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a 400 KiB task was stored in the work queue");
    let fits = Bytes::from(vec![b'x'; 200 * 1024]);
    js.publish(subjects.tasks(), fits)
        .await
        .unwrap()
        .await
        .expect("a task under the limit is stored");
}

#[tokio::test]
async fn a_task_parked_after_max_deliveries_leaves_the_work_queue() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = toronto_protocol::Subjects::default();
    ensure_streams(&js, &subjects, &Default::default())
        .await
        .unwrap();
    let mut dlq_sub = client.subscribe(subjects.dlq("test")).await.unwrap();
    client.flush().await.unwrap();
    // A handler that never gives a verdict (as if its process hung).
    let worker = tokio::spawn(run_consumer(
        js.clone(),
        ConsumerSpec {
            stream: subjects.tasks_stream(),
            durable: "test-hung".into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(1),
            max_deliver: 2,
            concurrency: 4,
        },
        DeadLetters::new(js.clone(), &subjects, "test", Metrics::new()),
        Metrics::new(),
        CancellationToken::new(),
        |_d| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Outcome::Ack
        },
    ));
    publish_envelope(&js, &subjects.tasks(), &envelope("hung"))
        .await
        .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(15), dlq_sub.next())
        .await
        .expect("parked in time")
        .unwrap();
    let reason = parked.headers.unwrap();
    let reason = reason.get(DLQ_REASON_HEADER).unwrap().as_str();
    assert!(reason.contains("max deliver"), "{reason}");
    let mut left = u64::MAX;
    for _ in 0..50 {
        left = js
            .get_stream(subjects.tasks_stream())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the parked task is still in the work queue");
    worker.abort();
}

#[tokio::test]
async fn a_task_refused_for_a_64_kib_field_is_parked_with_its_reason() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = toronto_protocol::Subjects::default();
    ensure_streams(&js, &subjects, &Default::default())
        .await
        .unwrap();
    let mut dlq_sub = client.subscribe(subjects.dlq("test")).await.unwrap();
    client.flush().await.unwrap();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run_consumer(
        js.clone(),
        ConsumerSpec {
            stream: subjects.tasks_stream(),
            durable: "test-refuser".into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(5),
            max_deliver: 3,
            concurrency: 1,
        },
        DeadLetters::new(js.clone(), &subjects, "test", Metrics::new()),
        Metrics::new(),
        shutdown.clone(),
        |d: toronto_runtime::jetstream::Delivery| async move {
            // The handler echoes the invalid field, as a validation error does.
            let text = String::from_utf8_lossy(d.payload()).into_owned();
            Outcome::Reject {
                reason: format!("service: invalid value {text}"),
            }
        },
    ));
    let huge = "v".repeat(64 * 1024);
    publish_envelope(&js, &subjects.tasks(), &envelope(&huge))
        .await
        .unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(15), dlq_sub.next())
        .await
        .expect("parked in time")
        .unwrap();
    assert!(
        parked.payload.len() > 64 * 1024,
        "the original is kept whole"
    );
    let headers = parked.headers.unwrap();
    let reason = headers.get(DLQ_REASON_HEADER).unwrap().as_str();
    assert!(reason.starts_with("service: invalid value"), "{reason}");
    assert!(reason.len() <= toronto_runtime::jetstream::MAX_ECHOED_HEADER_BYTES);
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

/// A reader that stops taking messages from a busy subject holds at most
/// `SUBSCRIPTION_CAPACITY` of them: the rest are dropped, not buffered (what let
/// `toronto up` grow by hundreds of megabytes when starved under the soak's load).
#[tokio::test]
async fn a_subscription_that_falls_behind_holds_a_bounded_number_of_messages() {
    use toronto_runtime::connect::SUBSCRIPTION_CAPACITY;
    let server = NatsServer::start().await;
    let config = runtime_config(&server);
    let token = CancellationToken::new();
    let reader = toronto_runtime::connect::connect(&config.nats, "slow", &Metrics::new(), &token)
        .await
        .expect("connects");
    let mut sub = reader.subscribe("busy.subject").await.unwrap();
    reader.flush().await.unwrap();
    let writer = server.client().await;
    let sent = 3 * SUBSCRIPTION_CAPACITY;
    for i in 0..sent {
        writer
            .publish("busy.subject", Bytes::from(format!("message {i}")))
            .await
            .unwrap();
    }
    writer.flush().await.unwrap();
    // The reader's connection has taken everything in (a round trip after the last
    // publish), while its reader took nothing.
    reader.flush().await.unwrap();
    let mut held = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        held += 1;
    }
    // About the capacity (the client may have a few more in hand as it hands them
    // over), never everything sent, as the client's default of 65,536 would.
    assert!(
        held < 2 * SUBSCRIPTION_CAPACITY && held > 0,
        "{held} of {sent} messages held (capacity {SUBSCRIPTION_CAPACITY})"
    );
}
