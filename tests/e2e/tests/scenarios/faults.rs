//! Faults under the whole stack: every service started in-process against one real
//! nats-server, which is then restarted. Every supervised background loop of every
//! service must be running again afterwards (named in the failure), `/readyz` must
//! be 200 again, and work put on the bus after the restart must be done.

use std::collections::BTreeMap;
use std::time::Duration;
use toronto_e2e::permissions_conf;

use tokio_util::sync::CancellationToken;
use toronto_protocol::ServiceKind;
use toronto_protocol::status::{LoopState, Status, StatusRequest};
use toronto_runtime::Config;
use toronto_testkit::{NatsServer, Requester};

const KINDS: [ServiceKind; 5] = [
    ServiceKind::Planner,
    ServiceKind::Deployer,
    ServiceKind::Monitor,
    ServiceKind::IncidentCommander,
    ServiceKind::ChatBridge,
];

async fn status(client: &async_nats::Client, kind: ServiceKind) -> Option<Status> {
    let subject = toronto_protocol::Subjects::default().status(kind);
    Requester::new(client.clone(), subject)
        .with_timeout(Duration::from_secs(2))
        .request::<_, Status>("", StatusRequest::default())
        .await
        .ok()
}

async fn readyz(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Every service's loops, once each is ready with all of them running; panics naming
/// the loops that are not, after `within`.
async fn all_loops_running(
    client: &async_nats::Client,
    addrs: &BTreeMap<ServiceKind, std::net::SocketAddr>,
    within: Duration,
) -> BTreeMap<ServiceKind, Status> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut seen = BTreeMap::new();
        let mut not_yet = Vec::new();
        for kind in KINDS {
            match status(client, kind).await {
                Some(s) => {
                    for l in s.loops.iter().filter(|l| l.state != LoopState::Running) {
                        not_yet.push(format!("{}: {} is {:?}", s.service, l.name, l.state));
                    }
                    seen.insert(kind, s);
                }
                None => not_yet.push(format!("{}: no status", kind.service_name())),
            }
            let code = readyz(addrs[&kind]).await;
            if code != 200 {
                not_yet.push(format!("{}: /readyz {code}", kind.service_name()));
            }
        }
        if not_yet.is_empty() {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not resumed: {not_yet:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_nats_restart_every_loop_of_every_service_resumes() {
    let mut server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let mut addrs = BTreeMap::new();
    let mut running = Vec::new();
    for kind in KINDS {
        let mut config = toronto_testkit::with_test_admin(Config::default());
        config.nats.urls = vec![server.url()];
        config.http.addr = "127.0.0.1:0".into();
        config.shutdown_grace_secs = 5;
        let rt = toronto_cli::up::start_service(kind, config, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("{} starts: {e}", kind.service_name()));
        addrs.insert(kind, rt.http_addr.expect("HTTP is served"));
        running.push(tokio::spawn(rt.run_until_shutdown()));
    }
    let client = server.client().await;
    let before = all_loops_running(&client, &addrs, Duration::from_secs(30)).await;
    // The chat bridge has loops only with its own listener or webhooks configured.
    for kind in KINDS.into_iter().filter(|k| *k != ServiceKind::ChatBridge) {
        assert!(
            !before[&kind].loops.is_empty(),
            "{} reports no loops",
            kind.service_name()
        );
    }

    // Down long enough for consumers' heartbeats and requests to fail.
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    server.start_again().await;
    let client = server.client().await;
    let after = all_loops_running(&client, &addrs, Duration::from_secs(60)).await;
    for kind in KINDS {
        let names = |s: &Status| s.loops.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&before[&kind]), names(&after[&kind]));
        for l in &after[&kind].loops {
            eprintln!(
                "{}: {} running, {} restarts{}",
                after[&kind].service,
                l.name,
                l.restarts,
                l.last_error
                    .as_deref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            );
        }
    }

    // A consumer deleted under a running service (what an over-privileged user did in
    // issue 17): its loop ends, is restarted, and makes the consumer again.
    let js = async_nats::jetstream::new(client.clone());
    js.delete_consumer_from_stream("toronto-incident-commander-alerts", "TORONTO_DEVOPS_EVENTS")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&client, ServiceKind::IncidentCommander).await;
        let alerts = s
            .as_ref()
            .and_then(|s| s.loops.iter().find(|l| l.name == "alerts from the bus"))
            .cloned();
        if let Some(l) = &alerts
            && l.restarts >= 1
            && l.state == LoopState::Running
        {
            eprintln!("alerts from the bus restarted: {l:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alerts consumer loop was not restarted: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Work after all that: a bus alert opens an incident (the incident commander's
    // durable alerts consumer runs again).
    let mut opened =
        toronto_testkit::Recorder::start(&client, &["toronto.devops.v1.events.incident.opened"])
            .await;
    let alert: toronto_protocol::alerts::Alert = serde_json::from_value(serde_json::json!({
        "fingerprint": "after-restart",
        "status": "firing",
        "labels": {"alertname": "HighErrorRate", "service": "shop-api",
                   "environment": "production", "severity": "page"},
        "annotations": {"summary": "errors after the restart"},
        "starts_at": chrono::Utc::now(),
        "generator": "toronto://test"
    }))
    .unwrap();
    let envelope = toronto_protocol::Envelope::builder("toronto://test", alert).build();
    js.publish(
        "toronto.devops.v1.events.alert.firing",
        toronto_protocol::encode(&envelope, toronto_protocol::Encoding::Json)
            .unwrap()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    opened
        .wait::<toronto_protocol::incidents::IncidentEvent>(
            "toronto.devops.v1.events.incident.opened",
            |_| true,
        )
        .await;

    shutdown.cancel();
    for r in running {
        r.await.unwrap().unwrap();
    }
}

async fn connect_as(server: &NatsServer, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), format!("pw-{user}"))
        .connect(server.url())
        .await
        .unwrap()
}

#[tokio::test]
async fn no_service_user_may_destroy_streams_buckets_or_other_consumers() {
    use async_nats::jetstream::consumer::pull;
    let server = NatsServer::start_with_config(&permissions_conf()).await;
    let subjects = toronto_protocol::Subjects::default();
    let admin = connect_as(&server, "admin").await;
    let done = toronto_cli::bootstrap::bootstrap(&admin, &subjects, &Default::default())
        .await
        .expect("the admin bootstraps");
    assert!(
        done.buckets.contains(&"toronto_plans".to_owned()),
        "{done:?}"
    );
    let js = async_nats::jetstream::new(admin.clone());
    // Durable consumers of two services, and an event to lose.
    let durables = [
        (
            subjects.tasks_stream(),
            toronto_planner::INTAKE_CONSUMER.to_owned(),
        ),
        (
            subjects.events_stream(),
            "toronto-incident-commander-alerts".to_owned(),
        ),
    ];
    for (stream, durable) in &durables {
        js.get_stream(stream)
            .await
            .unwrap()
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    js.publish(subjects.event("plan", "created"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let mut refused = Vec::new();
    for user in ["planner", "deployer", "monitor", "incident", "chat"] {
        let client = connect_as(&server, user).await;
        let as_user = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(500))
            .build(client);
        let mut events =
            toronto_runtime::jetstream::stream_configs(&subjects, &Default::default()).remove(0);
        events.max_messages = 1;
        let mut tried = vec![
            (
                "update the events stream",
                as_user.update_stream(events).await.is_ok(),
            ),
            (
                "purge the events stream",
                match as_user.get_stream(subjects.events_stream()).await {
                    Ok(s) => s.purge().await.is_ok(),
                    Err(_) => false,
                },
            ),
            (
                "delete the events stream",
                as_user
                    .delete_stream(subjects.events_stream())
                    .await
                    .is_ok(),
            ),
            (
                "delete the tasks stream",
                as_user.delete_stream(subjects.tasks_stream()).await.is_ok(),
            ),
            (
                "purge the plans bucket",
                match as_user.get_stream("KV_toronto_plans").await {
                    Ok(s) => s.purge().await.is_ok(),
                    Err(_) => false,
                },
            ),
            (
                "delete the incidents bucket",
                as_user.delete_key_value("toronto_incidents").await.is_ok(),
            ),
        ];
        for (stream, durable) in &durables {
            tried.push((
                "delete another service's consumer",
                as_user
                    .delete_consumer_from_stream(durable, stream)
                    .await
                    .is_ok(),
            ));
        }
        for (what, allowed) in tried {
            assert!(!allowed, "{user} may {what}");
            refused.push(format!("{user}: {what}"));
        }
    }
    eprintln!("refused: {} operations", refused.len());

    // Nothing changed.
    let info = js
        .get_stream(subjects.events_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.max_messages, -1);
    assert_eq!(info.state.messages, 1);
    for (stream, durable) in &durables {
        js.get_stream(stream)
            .await
            .unwrap()
            .consumer_info(durable)
            .await
            .unwrap_or_else(|e| panic!("{durable} is gone: {e}"));
    }
    js.get_key_value("toronto_incidents").await.unwrap();
    js.get_stream(subjects.tasks_stream()).await.unwrap();
}

#[tokio::test]
async fn bootstrap_makes_the_identity_buckets_and_every_service_user_can_use_them() {
    use toronto_runtime::auth::{AccessRule, AuthConfig, Authenticator, Presented, Signer};
    let server = NatsServer::start_with_config(&permissions_conf()).await;
    let subjects = toronto_protocol::Subjects::default();
    let admin = connect_as(&server, "admin").await;
    let done = toronto_cli::bootstrap::bootstrap(&admin, &subjects, &Default::default())
        .await
        .expect("the admin bootstraps");
    // The buckets as the services would make them, TTLs included.
    let js = async_nats::jetstream::new(admin.clone());
    let wanted = toronto_cli::bootstrap::ttl_buckets(&subjects, &AuthConfig::default(), 1);
    assert_eq!(wanted.len(), 3);
    for want in wanted {
        assert!(done.buckets.contains(&want.bucket), "{done:?}");
        let status = js
            .get_key_value(want.bucket.as_str())
            .await
            .unwrap()
            .status()
            .await
            .unwrap();
        assert_eq!(status.history(), want.history, "{}", want.bucket);
        assert_eq!(status.max_age(), want.max_age, "{}", want.bucket);
    }
    let chat_replay = js.get_key_value("toronto_chat_replay").await.unwrap();
    assert_eq!(
        chat_replay.status().await.unwrap().max_age(),
        toronto_chat_bridge::verify::replay_bucket_config(
            &toronto_protocol::Subjects::default(),
            1
        )
        .max_age
    );

    // Each service user opens the registry and the replay guard and verifies a signed
    // request (so protected endpoints answer rather than 503).
    let operator = Signer::generate();
    let config = AuthConfig {
        admins: vec![operator.public_key()],
        ..Default::default()
    };
    let stop = CancellationToken::new();
    for user in ["planner", "deployer", "monitor", "incident", "chat"] {
        let client = connect_as(&server, user).await;
        let as_user = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client);
        let auth = tokio::time::timeout(
            Duration::from_secs(5),
            Authenticator::start(&as_user, &subjects, &config, 1, stop.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("{user}: the identity buckets open in time"))
        .unwrap_or_else(|e| panic!("{user}: {e}"));
        let subject = "toronto.devops.v1.planner.plan.approve";
        let payload = format!("{{\"id\":\"{user}\"}}");
        let mut headers = async_nats::HeaderMap::new();
        operator.apply(&mut headers, subject, payload.as_bytes());
        let id = format!("req-{user}");
        let request = Presented {
            subject,
            headers: Some(&headers),
            payload: payload.as_bytes(),
            id: &id,
            source: "toronto://cli",
            target: None,
        };
        auth.verify(AccessRule::Signed, request)
            .await
            .unwrap_or_else(|e| panic!("{user} verifies a signed request: {e}"));
        let replayed = auth.verify(AccessRule::Signed, request).await.unwrap_err();
        assert!(
            replayed.to_string().contains("replay"),
            "{user}: {replayed}"
        );
    }
    // Only the planner writes the registry; only the chat bridge its replay guard.
    for (user, bucket, allowed) in [
        ("planner", "toronto_identities", true),
        ("deployer", "toronto_identities", false),
        ("chat", "toronto_chat_replay", true),
        ("monitor", "toronto_chat_replay", false),
    ] {
        let client = connect_as(&server, user).await;
        let as_user = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(500))
            .build(client);
        let put = match as_user.get_key_value(bucket).await {
            Ok(kv) => kv.put("probe", "x".into()).await.is_ok(),
            Err(_) => false,
        };
        assert_eq!(put, allowed, "{user} writing {bucket}");
    }
    stop.cancel();
}
