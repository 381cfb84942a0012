//! The Slack replay guard: a signature is one signature in any hex case, the guard is
//! shared by every bridge replica through KV, and without its bucket Slack requests
//! are refused (503) rather than taken unguarded.

use super::*;

/// A second bridge on the server of `b` (another replica), its chat routes' address.
async fn replica(b: &Bridge) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = Config::default();
    config.nats.urls = vec![b.server.url()];
    config.nats.request_timeout_ms = 3000;
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_chat_bridge::start_with(config, settings(), shutdown.clone())
        .await
        .unwrap();
    let http = rt.http_addr.unwrap();
    let running = tokio::spawn(async move { rt.run_until_shutdown().await.unwrap() });
    (http, shutdown, running)
}

/// POSTs `body` to `/slack/commands` of `addr` with exactly this signature header.
async fn send(addr: SocketAddr, body: &str, ts: i64, signature: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/slack/commands"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// `v0=` then the hex digits with every other letter upper-cased.
fn mixed_case(signature: &str) -> String {
    let (prefix, hex) = signature.split_at(3);
    let hex: String = hex
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("{prefix}{hex}")
}

#[tokio::test]
async fn a_replay_in_any_hex_case_to_any_replica_is_refused_and_runs_nothing() {
    let a = bridge_with(settings()).await;
    let seen = a
        .fake_planner(production_plan("toronto://chat/slack/U_OP1"))
        .await;
    let (b_http, b_stop, b_running) = replica(&a).await;

    let body = command_form("U_OP1", "deploy shop 1.2.0 to staging");
    let ts = now();
    let signature = slack_signature(SECRET.as_bytes(), &ts.to_string(), body.as_bytes());
    let upper = format!("v0={}", signature[3..].to_ascii_uppercase());
    assert_ne!(upper, signature);
    let mixed = mixed_case(&signature);

    // Replica A takes it.
    let first = send(a.http, &body, ts, &signature).await;
    assert_eq!(first.status(), StatusCode::OK);
    let answer: Value = first.json().await.unwrap();
    assert!(!text(&answer).contains("replay"), "{answer}");

    // The same request, its hex in upper, mixed and lower case, to either replica.
    for (addr, sig) in [
        (a.http, &upper),
        (a.http, &mixed),
        (b_http, &signature),
        (b_http, &upper),
        (b_http, &mixed),
    ] {
        let r = send(addr, &body, ts, sig).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{sig} to {addr}");
        assert!(r.text().await.unwrap().contains("replay"));
    }
    let submits = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(what, _)| what != "approve")
        .count();
    assert_eq!(submits, 1, "the deploy reached the planner once");

    // Replica B takes a new request; replica A refuses it after.
    let body = command_form("U_OP2", "help deploy");
    let signature = slack_signature(SECRET.as_bytes(), &ts.to_string(), body.as_bytes());
    assert_eq!(
        send(b_http, &body, ts, &signature).await.status(),
        StatusCode::OK
    );
    let again = send(a.http, &body, ts, &mixed_case(&signature)).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);

    b_stop.cancel();
    b_running.await.unwrap();
    a.stop().await;
}

#[tokio::test]
async fn without_its_bucket_the_guard_refuses_slack_requests_with_503_until_it_is_back() {
    let b = bridge_with(settings()).await;
    let js = async_nats::jetstream::new(b.client.clone());
    let bucket = js
        .get_key_value("toronto_chat_replay")
        .await
        .expect("the bridge opened (here: created) its replay bucket");
    let config = bucket.status().await.unwrap();
    assert_eq!(
        config.max_age(),
        Duration::from_secs(605),
        "twice the window"
    );
    js.delete_key_value("toronto_chat_replay").await.unwrap();

    let r = b
        .slack_raw(
            "/slack/commands",
            &command_form("U_VIEW", "help"),
            SECRET,
            now(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("replay guard is unavailable"),
        "refused, not taken unguarded"
    );
    // The next request opens the bucket again (here the bridge's NATS user may create
    // it; under least privilege `toronto bootstrap` makes it).
    let r = b
        .slack_raw(
            "/slack/commands",
            &command_form("U_VIEW", "help"),
            SECRET,
            now() - 1,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Mattermost does not depend on it.
    let r = b.mattermost(MM_TOKEN, "help").await;
    assert_eq!(r.status(), StatusCode::OK);
    b.stop().await;
}
