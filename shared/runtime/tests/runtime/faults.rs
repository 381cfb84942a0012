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
    assert!(
        metrics.contains("toronto_background_loop_restarts_total{loop=\"flaky consumer\"}"),
        "{metrics}"
    );

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
