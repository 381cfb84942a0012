//! Two monitors on one real nats-server: both ingest every metric, one (the lease's
//! owner) announces. The owner is cut off from NATS while an SLO burns; the survivor
//! takes over and the page still fires, once.

use std::time::Instant;
use toronto_testkit::TcpProxy as Proxy;

use toronto_protocol::status::LeaseRole;
use toronto_runtime::lease::{LeaseConfig, LeaseWatch};

use super::slo::{cart_slo, compressed, traffic};
use super::*;

const LEASE: LeaseConfig = LeaseConfig {
    ttl_ms: 1_000,
    renew_ms: 200,
};

struct Replica {
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>,
    lease: LeaseWatch,
}

async fn replica(url: &str, settings: Settings) -> Replica {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = "127.0.0.1:0".into();
    config.shutdown_grace_secs = 2;
    config.lease = LEASE;
    let shutdown = CancellationToken::new();
    let rt = toronto_monitor::start_with(config, settings, shutdown.clone())
        .await
        .unwrap();
    let lease = rt.lease_watch().expect("the monitor joined its lease");
    Replica {
        shutdown,
        running: tokio::spawn(rt.run_until_shutdown()),
        lease,
    }
}

async fn until_owner(lease: &LeaseWatch, within: Duration) {
    let mut rx = lease.subscribe();
    tokio::time::timeout(within, rx.wait_for(|s| s.role == LeaseRole::Owner))
        .await
        .expect("owner in time")
        .unwrap();
}

#[tokio::test]
async fn the_owner_cut_off_while_an_slo_burns_the_page_still_fires_once() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cart.yaml"), cart_slo()).unwrap();
    let nats: std::net::SocketAddr = server.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = Proxy::start(nats).await;
    let a = replica(&proxy.url, compressed(dir.path())).await;
    until_owner(&a.lease, Duration::from_secs(5)).await;
    let b = replica(&server.url(), compressed(dir.path())).await;
    tokio::time::sleep(LEASE.renew() * 2).await;
    assert!(a.lease.is_owner() && !b.lease.is_owner());

    let mut alerts = client
        .subscribe("toronto.devops.v1.events.alert.>")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = CancellationToken::new();
    let publisher = traffic(client.clone(), errors.clone(), stop.clone());
    // Healthy for a while: both replicas build the same history.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Half the requests fail; a moment later the owner's host dies.
    errors.store(50, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let cut = Instant::now();
    until_owner(&b.lease, LEASE.ttl() * 5).await;
    let took_over = cut.elapsed();
    assert!(
        took_over <= LEASE.ttl() + LEASE.renew() * 3,
        "took over after {took_over:?}"
    );

    // The page fires (from whichever replica owned the lease then), and no other
    // page follows in the 3 s after it.
    let mut fired = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let quiet = if fired.is_empty() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(3)
        };
        let Ok(Some(msg)) = tokio::time::timeout(quiet, alerts.next()).await else {
            break;
        };
        let alert: Envelope<toronto_protocol::alerts::Alert> =
            toronto_protocol::decode(&msg.payload, Encoding::Json).unwrap();
        if msg.subject.as_str() == "toronto.devops.v1.events.alert.firing"
            && alert.data.labels["severity"] == "page"
        {
            fired.push(alert.data);
        }
    }
    assert_eq!(fired.len(), 1, "the page fires once: {fired:#?}");
    assert_eq!(fired[0].labels["service"], "cart");
    assert!(b.lease.is_owner() && !a.lease.is_owner());

    stop.cancel();
    publisher.await.unwrap();
    b.shutdown.cancel();
    b.running.await.unwrap().unwrap();
    a.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), a.running).await;
    drop(server);
}
