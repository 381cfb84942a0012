//! The service lease against a real nats-server: one owner among candidates, a
//! takeover within the TTL when the owner stalls or dies, a stale fencing token that
//! writes nothing, stepping down when the lease cannot be renewed, and the lease in
//! `status` and `/readyz`.

use std::time::Instant;

use async_nats::jetstream::{self, kv};
use toronto_protocol::status::LeaseRole;
use toronto_runtime::lease::{Candidate, LeaseConfig, LeaseError, LeaseWatch};

use super::*;

const FAST: LeaseConfig = LeaseConfig {
    ttl_ms: 1_000,
    renew_ms: 200,
};

async fn bucket(client: &Client) -> kv::Store {
    jetstream::new(client.clone())
        .create_key_value(kv::Config {
            bucket: "test_leases".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Waits until `watch` says `role`; returns how long that took.
async fn until_role(watch: &LeaseWatch, role: LeaseRole, within: Duration) -> Duration {
    let started = Instant::now();
    let mut rx = watch.subscribe();
    tokio::time::timeout(within, rx.wait_for(|s| s.role == role))
        .await
        .unwrap_or_else(|_| panic!("not {role:?} within {within:?}: {:?}", watch.current()))
        .unwrap();
    started.elapsed()
}

#[tokio::test]
async fn one_owner_and_a_stalled_owner_is_replaced_and_fenced_off() {
    let server = NatsServer::start().await;
    let (client_a, client_b) = (server.client().await, server.client().await);
    let kv_a = bucket(&client_a).await;
    let kv_b = jetstream::new(client_b.clone())
        .get_key_value("test_leases")
        .await
        .unwrap();

    // A takes the free lease; B, looking on, stays standby and sees A as holder.
    let (mut a, watch_a) = Candidate::new(kv_a.clone(), "svc", "a", FAST);
    a.step().await.unwrap();
    let token_a = watch_a.token().expect("A owns the free lease");
    let (mut b, watch_b) = Candidate::new(kv_b, "svc", "b", FAST);
    let stop_b = CancellationToken::new();
    let token = stop_b.clone();
    let b_task = tokio::spawn(async move { b.run(token).await });

    // While A renews, B never owns.
    for _ in 0..10 {
        tokio::time::sleep(FAST.renew()).await;
        a.step().await.unwrap();
        assert!(watch_a.is_owner());
        assert!(!watch_b.is_owner(), "two owners: {:?}", watch_b.current());
    }
    assert_eq!(watch_b.holder().as_deref(), Some("a"));

    // A stalls (a process frozen, or cut off): B takes over once A's revision has
    // stood still for a TTL, and not before.
    let stalled = Instant::now();
    let took = until_role(&watch_b, LeaseRole::Owner, Duration::from_secs(5)).await;
    assert!(
        took >= FAST.ttl() - FAST.renew(),
        "took over after {took:?}, before the TTL"
    );
    assert!(
        stalled.elapsed() <= FAST.ttl() + FAST.renew() * 3,
        "took {took:?}"
    );
    let token_b = watch_b.token().unwrap();
    assert!(token_b > token_a);

    // A wakes up: it steps down without writing, and its stale token writes nothing.
    a.step().await.unwrap();
    assert!(!watch_a.is_owner());
    let stale = kv_a.update("svc", Bytes::from_static(b"{}"), token_a).await;
    assert_eq!(
        stale.unwrap_err().kind(),
        kv::UpdateErrorKind::WrongLastRevision
    );

    // B lets go on shutdown; the entry is free again.
    stop_b.cancel();
    b_task.await.unwrap().unwrap();
    assert!(!watch_b.is_owner());
    let entry = kv_a.entry("svc").await.unwrap().unwrap();
    assert_ne!(entry.operation, kv::Operation::Put);
}

#[tokio::test]
async fn a_dead_owner_is_replaced_within_the_ttl_and_a_lost_renewal_is_refused() {
    let server = NatsServer::start().await;
    let (client_a, client_b) = (server.client().await, server.client().await);
    let kv_a = bucket(&client_a).await;
    let kv_b = jetstream::new(client_b.clone())
        .get_key_value("test_leases")
        .await
        .unwrap();
    let (mut a, watch_a) = Candidate::new(kv_a.clone(), "svc", "a", FAST);
    let (mut b, watch_b) = Candidate::new(kv_b, "svc", "b", FAST);
    let never = CancellationToken::new();
    let token = never.clone();
    let a_task = tokio::spawn(async move { a.run(token).await });
    until_role(&watch_a, LeaseRole::Owner, Duration::from_secs(5)).await;
    let token = never.clone();
    let b_task = tokio::spawn(async move { b.run(token).await });
    tokio::time::sleep(FAST.renew() * 3).await;
    assert!(watch_a.is_owner() && !watch_b.is_owner());

    // The owner dies without letting go: its task and its connection end.
    a_task.abort();
    drop(kv_a);
    drop(client_a);
    let killed = Instant::now();
    until_role(&watch_b, LeaseRole::Owner, Duration::from_secs(5)).await;
    let takeover = killed.elapsed();
    assert!(
        takeover <= FAST.ttl() + FAST.renew() * 3,
        "takeover took {takeover:?}"
    );

    never.cancel();
    b_task.await.unwrap().unwrap();

    // An owner whose revision moved under it (another writer) steps down at its next
    // renewal, refused as lost, well before its hold runs out.
    let kv_c = jetstream::new(server.client().await)
        .get_key_value("test_leases")
        .await
        .unwrap();
    let (mut c, watch_c) = Candidate::new(kv_c.clone(), "svc", "c", FAST);
    c.step().await.unwrap();
    assert!(watch_c.is_owner(), "B let go: C takes the free lease");
    kv_c.put("svc", Bytes::from_static(b"{\"holder\":\"x\"}"))
        .await
        .unwrap();
    assert!(matches!(c.step().await, Err(LeaseError::Lost { .. })));
    assert!(!watch_c.is_owner());
}

#[tokio::test]
async fn an_owner_that_cannot_renew_steps_down_before_the_ttl() {
    let mut server = NatsServer::start().await;
    let client = server.client().await;
    let store = bucket(&client).await;
    let (mut a, watch) = Candidate::new(store, "svc", "a", FAST);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { a.run(token).await });
    until_role(&watch, LeaseRole::Owner, Duration::from_secs(5)).await;
    server.stop().await;
    // Nobody can take over before a TTL has passed; the owner has stopped by then.
    let stepped = until_role(&watch, LeaseRole::Standby, FAST.ttl()).await;
    assert!(stepped <= FAST.ttl() - FAST.renew() + Duration::from_millis(100));
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_lease_shows_in_status_and_readyz_and_moves_on_shutdown() {
    let server = NatsServer::start().await;
    let mut config = runtime_config(&server);
    config.lease = FAST;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = ServiceRuntime::start(
        ServiceKind::Monitor,
        "1.0.0",
        config.clone(),
        stop_a.clone(),
    )
    .await
    .unwrap();
    let watch_a = a.lease("monitor").await.unwrap();
    until_role(&watch_a, LeaseRole::Owner, Duration::from_secs(5)).await;
    let b = ServiceRuntime::start(ServiceKind::Monitor, "1.0.0", config, stop_b.clone())
        .await
        .unwrap();
    let watch_b = b.lease("monitor").await.unwrap();
    let (addr_a, addr_b) = (a.http_addr.unwrap(), b.http_addr.unwrap());
    let id_a = a.host.id().to_owned();
    tokio::time::sleep(FAST.renew() * 2).await;
    assert!(!watch_b.is_owner());

    let ready = |addr: std::net::SocketAddr| async move {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let text = ready(addr_a).await;
    assert!(
        text.starts_with("ready\nlease monitor: owner (token "),
        "{text}"
    );
    assert_eq!(ready(addr_b).await, "ready\nlease monitor: standby\n");
    let client = server.client().await;
    let statuses = Requester::service(client, "monitor");
    let status: Status = statuses.request("status", StatusRequest {}).await.unwrap();
    let lease = status.lease.expect("the status names the lease");
    assert_eq!(lease.name, "monitor");
    assert_eq!(lease.holder.as_deref(), Some(id_a.as_str()));
    assert!(a.metrics.render().contains("toronto_lease_owner 1"));
    assert!(b.metrics.render().contains("toronto_lease_owner 0"));

    // The owner shuts down and lets go: the standby takes over at its next look.
    let a_done = tokio::spawn(a.run_until_shutdown());
    stop_a.cancel();
    a_done.await.unwrap().unwrap();
    until_role(&watch_b, LeaseRole::Owner, FAST.renew() * 3).await;
    assert!(ready(addr_b).await.contains("lease monitor: owner"));
    stop_b.cancel();
    b.run_until_shutdown().await.unwrap();
}

/// A route that the test sets.
#[derive(Debug, Clone)]
struct Fixed(Arc<std::sync::Mutex<toronto_runtime::service::Route>>);

impl toronto_runtime::service::OwnerRoute for Fixed {
    fn route(&self) -> toronto_runtime::service::Route {
        self.0.lock().unwrap().clone()
    }
}

/// A host whose `approve` endpoint needs the approver role and echoes the principal,
/// served where `route` says.
async fn routed_host(client: &Client, route: Fixed) -> ServiceHost {
    use toronto_protocol::auth::Role;
    use toronto_runtime::auth::{AccessRule, AuthConfig, Authenticator};
    let auth = Authenticator::start(
        &jetstream::new(client.clone()),
        &toronto_protocol::Subjects::default(),
        &AuthConfig::default(),
        1,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    auth.protect("approve", AccessRule::Role(Role::Approver));
    let host = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    host.set_auth(Arc::new(auth));
    host.set_route(Arc::new(route));
    host.add_endpoint(
        "approve",
        "test.devops.v1.approve",
        |req: Request<Echo>| async move {
            let who = req.principal().map(|p| p.id.clone()).unwrap_or_default();
            Ok::<_, ErrorBody>(Echoed { text: who })
        },
    )
    .await
    .unwrap();
    host
}

/// Sends `bytes` signed with `headers`: the reply's text, or its error code.
async fn approve(client: &Client, bytes: &[u8], mut headers: HeaderMap) -> Result<String, u16> {
    headers.insert("Content-Type", "application/cloudevents+json");
    let reply = client
        .request_with_headers(
            "test.devops.v1.approve",
            headers,
            Bytes::copy_from_slice(bytes),
        )
        .await
        .unwrap();
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().parse::<u16>().unwrap());
    let env = toronto_protocol::decode_raw(&reply.payload, Encoding::Json).unwrap();
    match code {
        None => Ok(env.data["text"].as_str().unwrap().to_owned()),
        Some(code) => Err(code),
    }
}

#[tokio::test]
async fn a_standby_forwards_signed_requests_and_the_owner_verifies_them_once() {
    use toronto_protocol::auth::{Principal, PrincipalKind, Role};
    use toronto_runtime::auth::Signer;
    use toronto_runtime::service::Route;
    let server = NatsServer::start().await;
    let (client_a, client_b) = (server.client().await, server.client().await);
    let route_a = Fixed(Arc::new(std::sync::Mutex::new(Route::Here)));
    let a = routed_host(&client_a, route_a.clone()).await;
    let route_b = Fixed(Arc::new(std::sync::Mutex::new(Route::Forward(
        a.id().to_owned(),
    ))));
    let b = routed_host(&client_b, route_b.clone()).await;
    let alice = Signer::generate();
    a.auth()
        .unwrap()
        .registry()
        .unwrap()
        .put(&Principal {
            id: "alice".into(),
            kind: PrincipalKind::Human,
            roles: vec![Role::Approver],
            display_name: "alice".into(),
            revoked: false,
            keys: vec![alice.public_key()],
            sources: vec![],
            chat_ids: vec![],
        })
        .await
        .unwrap();
    // Both registries follow the bucket; give B's a moment (B checks nothing anyway).
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Requests reach both replicas of the queue group; every one is verified and
    // served by the owner, as alice.
    let client = server.client().await;
    let signed = |bytes: &[u8]| {
        let mut h = HeaderMap::new();
        alice.apply(&mut h, "test.devops.v1.approve", bytes);
        h
    };
    for _ in 0..12 {
        let bytes = encode(
            &Envelope::builder("toronto://cli", Echo::default()).build(),
            Encoding::Json,
        )
        .unwrap();
        assert_eq!(
            approve(&client, &bytes, signed(&bytes)).await,
            Ok("alice".into())
        );
    }
    let served = |host: &ServiceHost| host.stats()["endpoints"][0]["num_requests"].as_u64();
    assert_eq!(served(&a), Some(12), "{}", a.stats());
    assert_eq!(served(&b), Some(0), "{}", b.stats());

    // The same signed bytes again are a replay, whichever replica takes them.
    let bytes = encode(
        &Envelope::builder("toronto://cli", Echo::default()).build(),
        Encoding::Json,
    )
    .unwrap();
    let headers = signed(&bytes);
    assert_eq!(
        approve(&client, &bytes, headers.clone()).await,
        Ok("alice".into())
    );
    for _ in 0..4 {
        assert_eq!(approve(&client, &bytes, headers.clone()).await, Err(401));
    }

    // With no owner (a takeover under way), every replica answers 503.
    *route_a.0.lock().unwrap() = Route::NoOwner;
    *route_b.0.lock().unwrap() = Route::NoOwner;
    for _ in 0..4 {
        let bytes = encode(
            &Envelope::builder("toronto://cli", Echo::default()).build(),
            Encoding::Json,
        )
        .unwrap();
        assert_eq!(approve(&client, &bytes, signed(&bytes)).await, Err(503));
    }
}
