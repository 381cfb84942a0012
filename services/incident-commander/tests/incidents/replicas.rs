//! Two replicas on one real nats-server: both take requests and HTTP intake, one owns
//! the escalation; the owner is cut off from NATS in the middle of an escalation and
//! the next page reaches its HTTP receiver exactly once, no later than its deadline
//! plus the lease's TTL (and a margin), with no page sent twice.

use std::sync::{Arc, Mutex};
use std::time::Instant;
use toronto_testkit::TcpProxy as Proxy;

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::*;

/// When each receiver route took a request.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(String, Instant)>>>);

impl Arrivals {
    fn at(&self, route: &str) -> Vec<Instant> {
        let got = self.0.lock().unwrap();
        got.iter()
            .filter(|(r, _)| r == route)
            .map(|(_, at)| *at)
            .collect()
    }

    async fn first(&self, route: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.at(route).first() {
                return *at;
            }
            assert!(Instant::now() < deadline, "nothing reached /{route}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn receive(State(a): State<Arrivals>, Path(route): Path<String>) -> StatusCode {
    a.0.lock().unwrap().push((route, Instant::now()));
    StatusCode::NO_CONTENT
}

async fn receivers() -> (Arrivals, SocketAddr) {
    let a = Arrivals::default();
    let app = axum::Router::new()
        .route("/{route}", axum::routing::post(receive))
        .with_state(a.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (a, addr)
}

const DEADLINE: Duration = Duration::from_secs(3);

fn two_level_policy(addr: SocketAddr, dir: &tempfile::TempDir) -> Policy {
    let secret = dir.path().join("hook");
    std::fs::write(&secret, "replica-hook-secret\n").unwrap();
    let secret = secret.display();
    Policy::from_yaml(&format!(
        r#"
escalation_policies:
  - name: default
    levels:
      - {{ notify: [user:alice], ack_timeout_seconds: {}, channels: [first] }}
      - {{ notify: [user:bob], ack_timeout_seconds: 60, channels: [second] }}
default_escalation: default
notifications:
  channels:
    first: {{ kind: webhook, url: "http://{addr}/first", secret: {{ file: {secret} }} }}
    second: {{ kind: webhook, url: "http://{addr}/second", secret: {{ file: {secret} }} }}
  min_delay_ms: 100
  max_delay_ms: 400
  max_attempts: 4
"#,
        DEADLINE.as_secs()
    ))
    .unwrap()
}

async fn replica(url: &str, settings: Settings) -> (Commander, toronto_runtime::lease::LeaseWatch) {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = "127.0.0.1:0".into();
    config.shutdown_grace_secs = 2;
    config.lease = LEASE;
    let shutdown = CancellationToken::new();
    let rt = toronto_incident_commander::start_with(config, settings, shutdown.clone())
        .await
        .expect("a replica starts");
    let http = rt.http_addr.expect("HTTP enabled");
    let lease = rt.loops().status();
    assert!(lease.iter().any(|l| l.name == "lease"));
    let watch = status_watch(&rt);
    let running = tokio::spawn(rt.run_until_shutdown());
    (
        Commander {
            shutdown,
            running,
            http,
        },
        watch,
    )
}

const LEASE: toronto_runtime::lease::LeaseConfig = toronto_runtime::lease::LeaseConfig {
    ttl_ms: 1_000,
    renew_ms: 200,
};

/// The replica's lease, as joined at start (a second `lease` call is not made: the
/// watch comes from the runtime's status).
fn status_watch(rt: &toronto_runtime::ServiceRuntime) -> toronto_runtime::lease::LeaseWatch {
    rt.lease_watch()
        .expect("the incident commander joined its lease")
}

#[tokio::test]
async fn the_owner_cut_off_mid_escalation_the_next_page_goes_out_once_and_on_time() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let (arrivals, addr) = receivers().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        policy: two_level_policy(addr, &dir),
        ..quick()
    };
    let nats: SocketAddr = server.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = Proxy::start(nats).await;
    let (a, lease_a) = replica(&proxy.url, settings.clone()).await;
    let (b, lease_b) = replica(&server.url(), settings).await;
    assert!(lease_a.is_owner() && !lease_b.is_owner());

    // HTTP intake on the standby reaches the owner's engine.
    let alert = postable(
        &[
            ("alertname", "Down"),
            ("service", "billing"),
            ("environment", "production"),
            ("severity", "critical"),
        ],
        false,
    );
    let answer = post(&b.url("/api/v2/alerts"), &serde_json::json!([alert])).await;
    assert_eq!(answer.status(), 200);
    let first: Page = bus.wait(PAGES, |p: &Page| p.level == Some(0)).await;
    let first_at = arrivals.first("first", Duration::from_secs(10)).await;
    // Requests reach both replicas (queue group): every one is answered, by the owner.
    for _ in 0..6 {
        let all = bus.incidents().await;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, first.incident_id);
    }

    // A second into the level's deadline, the owner's host dies.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut();
    let cut = Instant::now();

    // The standby takes over within the TTL, from the state in KV.
    let mut rx = lease_b.subscribe();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.role == toronto_protocol::status::LeaseRole::Owner),
    )
    .await
    .expect("the standby takes over")
    .unwrap();
    let took_over = cut.elapsed();
    assert!(!lease_a.is_owner(), "the cut-off owner stepped down");

    // The next page: exactly once, not before its deadline, not later than the
    // deadline plus the TTL and a margin.
    let second_at = arrivals.first("second", Duration::from_secs(15)).await;
    let deadline = first_at + DEADLINE;
    let margin = Duration::from_secs(2);
    assert!(
        second_at + Duration::from_millis(500) >= deadline,
        "paged {:?} before the deadline",
        deadline - second_at
    );
    assert!(
        second_at <= deadline + LEASE.ttl() + margin,
        "paged {:?} after the deadline (takeover took {took_over:?})",
        second_at - deadline
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        arrivals.at("second").len(),
        1,
        "the next page went out once"
    );
    assert_eq!(
        arrivals.at("first").len(),
        1,
        "the first page was not sent again"
    );
    let incident = bus.incident(first.incident_id).await;
    assert_eq!(incident.escalation.pages_sent, 2);
    let second: Vec<Page> = bus
        .all::<Page>(PAGES)
        .into_iter()
        .filter(|p| p.level == Some(1))
        .collect();
    assert_eq!(second.len(), 1, "{second:#?}");

    // The survivor serves requests and HTTP intake alone.
    let answer = post(&b.url("/api/v2/alerts"), &serde_json::json!([alert])).await;
    assert_eq!(answer.status(), 200);
    b.stop().await;
    a.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), a.running).await;
}
