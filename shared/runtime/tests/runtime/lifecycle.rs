//! Lifecycle: a NATS restart under a running service, graceful shutdown, credentials
//! from `TORONTO_*` variables (TLS is in `tls.rs`), and losing a node of a three-node cluster.

use super::*;

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
    let status =
        Requester::new(client.clone(), status_subject).with_timeout(Duration::from_secs(1));
    for _ in 0..50 {
        if let Ok(reply) = status
            .request::<_, Status>("", StatusRequest::default())
            .await
        {
            answered = Some(reply);
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
async fn on_a_three_node_cluster_a_service_survives_losing_its_node() {
    let mut cluster = toronto_testkit::NatsCluster::start(3).await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
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
    let deployer =
        Requester::service(client.clone(), "deployer").with_timeout(Duration::from_secs(1));
    for _ in 0..100 {
        if deployer
            .request::<_, Status>("status", StatusRequest::default())
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
