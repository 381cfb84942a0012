//! Faults under the whole stack: every service started in-process against one real
//! nats-server, which is then restarted. Every supervised background loop of every
//! service must be running again afterwards (named in the failure), `/readyz` must
//! be 200 again, and work put on the bus after the restart must be done.

use std::collections::BTreeMap;
use std::time::Duration;

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
        let mut config = Config::default();
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
    for kind in KINDS {
        assert!(
            !before[&kind].loops.is_empty(),
            "{} reports no loops",
            kind.service_name()
        );
    }

    server.restart().await;
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

    // Work after the restart: a bus alert opens an incident (the incident commander's
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
    let js = async_nats::jetstream::new(client.clone());
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
