//! The incident commander against real servers: a real nats-server (test kit), a real
//! Alertmanager and Prometheus (Debian's binaries), and the deployer (simulated
//! cluster) and monitor started in-process. Assertions are on what a user sees:
//! incidents, their events, pages, HTTP answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_incident_commander::settings::{Policy, Settings};
use toronto_protocol::alerts::{Alert, AlertStatus};
use toronto_protocol::incidents::{
    Incident, IncidentAction, IncidentEvent, IncidentList, IncidentMetrics, IncidentMetricsQuery,
    IncidentNote, IncidentState, Incidents, InhibitionCreate, InhibitionList, InhibitionRules,
    Matcher, Page, Postmortem, PostmortemRequest, Severity, Silence, SilenceCreate, SilenceExpire,
    SilenceList, Silences,
};
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::{CallError, call};
use toronto_testkit::NatsServer;

type Running = tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>;

struct Commander {
    shutdown: CancellationToken,
    running: Running,
    http: SocketAddr,
}

async fn start_commander(url: &str, settings: Settings) -> Commander {
    let mut config = Config::default();
    config.nats.urls = vec![url.to_owned()];
    config.http.addr = "127.0.0.1:0".into();
    config.shutdown_grace_secs = 5;
    let shutdown = CancellationToken::new();
    let rt = toronto_incident_commander::start_with(config, settings, shutdown.clone())
        .await
        .expect("the incident commander starts");
    let http = rt.http_addr.expect("HTTP enabled");
    let running = tokio::spawn(rt.run_until_shutdown());
    Commander {
        shutdown,
        running,
        http,
    }
}

impl Commander {
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

fn quick() -> Settings {
    Settings {
        resolve_hold: Duration::from_millis(200),
        tick: Duration::from_millis(100),
        recovery_poll: Duration::from_millis(200),
        ..Settings::default()
    }
}

/// Everything published on the bus that a test watches.
struct Bus {
    client: async_nats::Client,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, bytes::Bytes)>,
    seen: Vec<(String, bytes::Bytes)>,
}

async fn bus(client: &async_nats::Client, subjects: &[&str]) -> Bus {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for s in subjects {
        let mut sub = client.subscribe(s.to_string()).await.unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let _ = tx.send((m.subject.to_string(), m.payload));
            }
        });
    }
    toronto_runtime::service::confirm_subscriptions(client).await;
    Bus {
        client: client.clone(),
        rx,
        seen: Vec::new(),
    }
}

impl Bus {
    /// Waits for a message on `subject` whose payload decodes as `T` and satisfies `f`.
    async fn wait<T: Message>(&mut self, subject: &str, f: impl Fn(&T) -> bool) -> T {
        let decode = |p: &bytes::Bytes| toronto_protocol::decode::<T>(p, Encoding::Json).ok();
        if let Some(found) = self
            .seen
            .iter()
            .filter(|(s, _)| s == subject)
            .filter_map(|(_, p)| decode(p))
            .find(|d| f(&d.data))
        {
            return found.data;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (s, p) = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing matching on {subject} within 60 s"))
                .unwrap();
            self.seen.push((s.clone(), p.clone()));
            if s == subject
                && let Some(d) = decode(&p)
                && f(&d.data)
            {
                return d.data;
            }
        }
    }

    /// Waits for any message on `subject` and returns its bytes.
    async fn raw(&mut self, subject: &str) -> bytes::Bytes {
        if let Some((_, p)) = self.seen.iter().find(|(s, _)| s == subject) {
            return p.clone();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (s, p) = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing on {subject} within 60 s"))
                .unwrap();
            self.seen.push((s.clone(), p.clone()));
            if s == subject {
                return p;
            }
        }
    }

    /// Every message seen so far on `subject` (after draining what arrived).
    fn all<T: Message>(&mut self, subject: &str) -> Vec<T> {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
        self.seen
            .iter()
            .filter(|(s, _)| s == subject)
            .filter_map(|(_, p)| toronto_protocol::decode::<T>(p, Encoding::Json).ok())
            .map(|e| e.data)
            .collect()
    }

    async fn request<Req: Message, Resp: Message>(
        &self,
        verb: &str,
        data: Req,
    ) -> Result<Resp, CallError> {
        let envelope = Envelope::builder("toronto://test", data).build();
        call(
            &self.client,
            &format!("toronto.devops.v1.incident.{verb}"),
            &envelope,
            Encoding::Json,
            Duration::from_secs(10),
        )
        .await
        .map(|r: Envelope<Resp>| r.data)
    }

    async fn incidents(&self) -> Vec<Incident> {
        self.request::<_, Incidents>("list", IncidentList::default())
            .await
            .unwrap()
            .incidents
    }

    async fn incident(&self, id: uuid::Uuid) -> Incident {
        self.request("get", toronto_protocol::incidents::IncidentGet { id })
            .await
            .unwrap()
    }
}

const OPENED: &str = "toronto.devops.v1.events.incident.opened";
const RESOLVED: &str = "toronto.devops.v1.events.incident.resolved";
const ESCALATED: &str = "toronto.devops.v1.events.incident.escalated";
const PAGES: &str = "toronto.devops.v1.events.page.sent";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn postable(pairs: &[(&str, &str)], resolved: bool) -> serde_json::Value {
    let now = chrono::Utc::now();
    let mut v = serde_json::json!({
        "labels": labels(pairs),
        "annotations": { "summary": format!("{} is failing", pairs[0].1) },
        "startsAt": (now - chrono::Duration::seconds(5)).to_rfc3339(),
    });
    if resolved {
        v["endsAt"] = serde_json::json!(now.to_rfc3339());
    }
    v
}

async fn post(url: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Publishes a monitor-style alert on the bus (JetStream, as the monitor does).
async fn publish_alert(client: &async_nats::Client, pairs: &[(&str, &str)], status: AlertStatus) {
    let l = labels(pairs);
    let alert = Alert {
        fingerprint: toronto_protocol::alerts::fingerprint(&l),
        status,
        labels: l,
        annotations: BTreeMap::new(),
        burn_rates: BTreeMap::new(),
        budget_remaining: None,
        starts_at: chrono::Utc::now(),
        ends_at: (status == AlertStatus::Resolved).then(chrono::Utc::now),
        generator: "toronto://test".into(),
    };
    let what = match status {
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    };
    let env = Envelope::builder("toronto://test", alert).build();
    let js = async_nats::jetstream::new(client.clone());
    toronto_runtime::jetstream::publish_envelope(
        &js,
        &format!("toronto.devops.v1.events.alert.{what}"),
        &env,
    )
    .await
    .unwrap();
}

// ------------------------------------------------------------------ real Alertmanager

struct Child {
    _child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(url: &str, log: &std::path::Path) {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{url} never became ready:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Debian's Alertmanager 0.25 on a free port, sending to `webhook`.
async fn alertmanager(webhook: &str) -> Child {
    let bin = std::env::var("TORONTO_ALERTMANAGER_BIN")
        .unwrap_or_else(|_| "prometheus-alertmanager".into());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: incident\n  group_by: ['alertname', 'service']\n  group_wait: 100ms\n  group_interval: 300ms\n  repeat_interval: 1h\n\
             receivers:\n  - name: incident\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("alertmanager.log");
    let child = tokio::process::Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} (apt-get install prometheus-alertmanager): {e}")
        });
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &log).await;
    Child {
        _child: child,
        url,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_burst_of_duplicates_from_alertmanager_opens_one_incident_that_its_resolution_resolves() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(&server.url(), quick()).await;
    let am = alertmanager(&ic.url("/api/v1/alertmanager/webhook")).await;

    // 1,000 copies of the same alert, in ten concurrent batches of 100.
    let alert = postable(
        &[
            ("alertname", "CartErrors"),
            ("service", "cart"),
            ("environment", "production"),
        ],
        false,
    );
    let batch = serde_json::Value::Array(vec![alert.clone(); 100]);
    let am_alerts = format!("{}/api/v2/alerts", am.url);
    let sends = (0..10).map(|_| post(&am_alerts, &batch));
    for r in futures::future::join_all(sends).await {
        assert!(r.status().is_success(), "{}", r.status());
    }
    let opened: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "cart")
        .await;
    assert_eq!(opened.environment, "production");
    assert_eq!(opened.state, IncidentState::Triggered);

    // The same alert sent straight to our Alertmanager-compatible API is a duplicate.
    let r = post(&ic.url("/api/v2/alerts"), &batch).await;
    assert_eq!(r.status(), 200);
    let incident = bus.incident(opened.id).await;
    assert_eq!(incident.origin, "alertmanager");
    assert_eq!(incident.alerts_total, 1);
    assert!(incident.duplicates >= 100, "{}", incident.duplicates);

    // Resolved at Alertmanager: it sends the resolution, the incident resolves.
    let resolved = postable(
        &[
            ("alertname", "CartErrors"),
            ("service", "cart"),
            ("environment", "production"),
        ],
        true,
    );
    let r = post(
        &format!("{}/api/v2/alerts", am.url),
        &serde_json::json!([resolved]),
    )
    .await;
    assert!(r.status().is_success());
    let done: IncidentEvent = bus
        .wait(RESOLVED, |e: &IncidentEvent| e.id == opened.id)
        .await;
    assert!(
        done.change.contains("all alerts resolved"),
        "{}",
        done.change
    );
    assert_eq!(
        bus.all::<IncidentEvent>(OPENED).len(),
        1,
        "one incident only"
    );
    let all = bus.incidents().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, IncidentState::Resolved);
    assert!(
        all[0]
            .timeline
            .iter()
            .any(|t| t.text.contains("CartErrors") && t.text.contains("resolved"))
    );
    ic.stop().await;
}

#[tokio::test]
async fn prometheus_fires_a_rule_straight_at_the_alerts_api() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(&server.url(), quick()).await;
    let bin = std::env::var("TORONTO_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n  - name: shop\n    interval: 200ms\n    rules:\n      - alert: ShopDown\n        expr: vector(1)\n        labels: { service: shop, environment: staging, severity: page }\n        annotations: { summary: 'shop is down' }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  evaluation_interval: 200ms\nrule_files: ['{}']\nalerting:\n  alertmanagers:\n    - api_version: v2\n      static_configs:\n        - targets: ['{}']\n",
            dir.path().join("rules.yml").display(),
            ic.http
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("prometheus.log");
    let _prometheus = tokio::process::Command::new(&bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // Alerts evaluated before the notifier has discovered its target (about 5 s)
        // count as sent; resend soon rather than after the default minute.
        .arg("--rules.alert.resend-delay=500ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin} (apt-get install prometheus): {e}"));
    wait_ready(&format!("http://127.0.0.1:{port}"), &log).await;

    let opened: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "shop")
        .await;
    assert_eq!(opened.title, "shop is down");
    assert_eq!(opened.environment, "staging");
    let incident = bus.incident(opened.id).await;
    assert_eq!(incident.origin, "prometheus");
    assert_eq!(incident.labels["alertname"], "ShopDown");
    ic.stop().await;
}

#[tokio::test]
async fn pagerduty_events_and_malformed_payloads_are_answered_and_never_half_applied() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(
        &client,
        &["toronto.devops.v1.events.>", "toronto.devops.v1.dlq.>"],
    )
    .await;
    let ic = start_commander(&server.url(), quick()).await;

    // A webhook whose second alert is malformed: 400 naming it, and nothing applied.
    let webhook = serde_json::json!({
        "version": "4", "groupKey": "{}:{alertname=\"A\"}", "status": "firing",
        "receiver": "incident", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am", "truncatedAlerts": 0,
        "alerts": [
            { "status": "firing", "labels": { "alertname": "A", "service": "web" },
              "startsAt": "2026-11-26T08:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "aaa" },
            { "status": "burning", "labels": { "alertname": "B", "service": "db" },
              "startsAt": "2026-11-26T08:00:00Z", "fingerprint": "bbb" }
        ]
    });
    let r = post(&ic.url("/api/v1/alertmanager/webhook"), &webhook).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("alerts[1].status"),
        "{body}"
    );
    let r = post(
        &ic.url("/api/v2/alerts"),
        &serde_json::json!([{ "labels": { "alertname": "C", "service": "api" } }, { "labels": {} }]),
    )
    .await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("[1].labels"),
        "{body}"
    );
    let r = reqwest::Client::new()
        .post(ic.url("/api/v2/alerts"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(bus.incidents().await.is_empty(), "nothing half-applied");

    // PagerDuty: a bad severity is refused with the reason ...
    let pd = |action: &str, severity: &str| {
        serde_json::json!({
            "routing_key": "R0123456789", "event_action": action, "dedup_key": "disk-full-db1",
            "payload": { "summary": "disk full on db1", "source": "db1", "severity": severity,
                         "component": "orders-db", "custom_details": { "environment": "production" } }
        })
    };
    let r = post(&ic.url("/v2/enqueue"), &pd("trigger", "apocalyptic")).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "invalid event");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("payload.severity")
    );
    assert!(bus.incidents().await.is_empty());

    // ... a trigger opens an incident and answers the dedup key, acknowledge and
    // resolve act on it.
    let r = post(&ic.url("/v2/enqueue"), &pd("trigger", "critical")).await;
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["dedup_key"], "disk-full-db1");
    assert_eq!(body["status"], "success");
    let incident = bus.incidents().await.pop().expect("an incident");
    assert_eq!(incident.service, "orders-db");
    assert_eq!(incident.origin, "pagerduty");
    let r = post(&ic.url("/v2/enqueue"), &pd("acknowledge", "critical")).await;
    assert_eq!(r.status(), 202);
    let acked = bus.incident(incident.id).await;
    assert_eq!(acked.state, IncidentState::Acknowledged);
    assert_eq!(acked.commander.as_deref(), Some("pagerduty"));
    let r = post(&ic.url("/v2/enqueue"), &pd("resolve", "critical")).await;
    assert_eq!(r.status(), 202);
    bus.wait(RESOLVED, |e: &IncidentEvent| e.id == incident.id)
        .await;

    // A malformed alert event on the bus is parked in the dead-letter stream with
    // the reason, and opens nothing.
    let js = async_nats::jetstream::new(client.clone());
    js.publish(
        "toronto.devops.v1.events.alert.firing",
        r#"{"specversion":"1.0","id":"0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1","source":"x","type":"ai.toronto.devops.alert.v1","data":{"status":"firing"}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let parked = bus.raw("toronto.devops.v1.dlq.incident").await;
    assert!(String::from_utf8_lossy(&parked).contains("\"status\":\"firing\""));
    assert_eq!(bus.incidents().await.len(), 1);
    ic.stop().await;
}

#[tokio::test]
async fn silences_suppress_until_they_expire_inhibitions_hold_and_both_survive_a_restart() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(&server.url(), quick()).await;
    let alerts = ic.url("/api/v2/alerts");

    let silence: Silence = bus
        .request(
            "silence.create",
            SilenceCreate {
                matchers: vec![Matcher {
                    name: "service".into(),
                    value: "cart|checkout".into(),
                    is_regex: true,
                    is_equal: true,
                }],
                starts_at: None,
                ends_at: chrono::Utc::now() + chrono::Duration::hours(1),
                created_by: "alice".into(),
                comment: "maintenance".into(),
            },
        )
        .await
        .unwrap();
    let bad = bus
        .request::<_, Silence>(
            "silence.create",
            SilenceCreate {
                matchers: vec![Matcher {
                    name: "service".into(),
                    value: "(".into(),
                    is_regex: true,
                    is_equal: true,
                }],
                starts_at: None,
                ends_at: chrono::Utc::now() + chrono::Duration::hours(1),
                created_by: "alice".into(),
                comment: "bad".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("regular expression"), "{bad}");

    let cart = [
        ("alertname", "CartErrors"),
        ("service", "cart"),
        ("environment", "production"),
    ];
    assert_eq!(
        post(&alerts, &serde_json::json!([postable(&cart, false)]))
            .await
            .status(),
        200
    );
    assert!(bus.incidents().await.is_empty(), "silenced");

    // The inhibition rule: a cluster outage holds back warnings in its environment.
    bus.request::<_, toronto_protocol::incidents::InhibitionRule>(
        "inhibition.create",
        InhibitionCreate {
            source_matchers: vec![Matcher {
                name: "alertname".into(),
                value: "ClusterDown".into(),
                is_regex: false,
                is_equal: true,
            }],
            target_matchers: vec![Matcher {
                name: "severity".into(),
                value: "warning".into(),
                is_regex: false,
                is_equal: true,
            }],
            equal: vec!["environment".into()],
            created_by: "alice".into(),
            comment: String::new(),
        },
    )
    .await
    .unwrap();

    // Restart: the silence and the rule are still there and still hold.
    ic.stop().await;
    let ic = start_commander(&server.url(), quick()).await;
    let alerts = ic.url("/api/v2/alerts");
    let listed: Silences = bus
        .request("silence.list", SilenceList { active: true })
        .await
        .unwrap();
    assert_eq!(listed.silences.len(), 1);
    let rules: InhibitionRules = bus
        .request("inhibition.list", InhibitionList {})
        .await
        .unwrap();
    assert_eq!(rules.rules.len(), 1);

    let cluster = [
        ("alertname", "ClusterDown"),
        ("service", "platform"),
        ("environment", "production"),
    ];
    let latency_prod = [
        ("alertname", "HighLatency"),
        ("service", "search"),
        ("environment", "production"),
        ("severity", "warning"),
    ];
    let latency_staging = [
        ("alertname", "HighLatency"),
        ("service", "search"),
        ("environment", "staging"),
        ("severity", "warning"),
    ];
    for a in [&cluster[..], &latency_prod[..], &latency_staging[..]] {
        assert_eq!(
            post(&alerts, &serde_json::json!([postable(a, false)]))
                .await
                .status(),
            200
        );
    }
    let open = |incidents: &[Incident], service: &str, env: &str| {
        incidents
            .iter()
            .any(|i| i.service == service && i.environment == env && i.state.is_open())
    };
    let now = bus.incidents().await;
    assert!(open(&now, "platform", "production"));
    assert!(
        open(&now, "search", "staging"),
        "other environment: not inhibited"
    );
    assert!(!open(&now, "search", "production"), "inhibited");
    assert!(
        !open(&now, "cart", "production"),
        "still silenced after the restart"
    );

    // The silence expires: the cart alert, still firing, opens its incident.
    let expired: Silence = bus
        .request(
            "silence.expire",
            SilenceExpire {
                id: silence.id,
                by: "alice".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(expired.expired_by.as_deref(), Some("alice"));
    assert!(open(&bus.incidents().await, "cart", "production"));

    // The cluster alert resolves: the held-back warning is released.
    assert_eq!(
        post(&alerts, &serde_json::json!([postable(&cluster, true)]))
            .await
            .status(),
        200
    );
    assert!(open(&bus.incidents().await, "search", "production"));
    ic.stop().await;
}

fn escalation_policy() -> Policy {
    Policy::from_yaml(
        r#"
escalation_policies:
  - name: default
    levels:
      - notify: [schedule:primary]
        ack_timeout_seconds: 2
      - notify: [agent:sre]
        ack_timeout_seconds: 2
default_escalation: default
schedules:
  - name: primary
    participants: [alice]
    start: 2026-01-01T00:00:00Z
    handoff_seconds: 86400
"#,
    )
    .unwrap()
}

#[tokio::test]
async fn escalation_pages_the_next_level_after_the_deadline_even_across_a_restart() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(
        &client,
        &["toronto.devops.v1.events.>", "toronto.agents.sre.v1.notify"],
    )
    .await;
    let settings = Settings {
        policy: escalation_policy(),
        ..quick()
    };
    let ic = start_commander(&server.url(), settings.clone()).await;
    publish_alert(
        &client,
        &[
            ("alertname", "Down"),
            ("service", "billing"),
            ("environment", "production"),
        ],
        AlertStatus::Firing,
    )
    .await;
    let first: Page = bus.wait(PAGES, |p: &Page| p.level == Some(0)).await;
    assert_eq!(first.target, "user:alice", "the schedule's person on call");

    // The service restarts while the first level's deadline runs.
    ic.stop().await;
    let ic = start_commander(&server.url(), settings).await;

    let second: Page = bus.wait(PAGES, |p: &Page| p.level == Some(1)).await;
    assert_eq!(second.target, "agent:sre");
    assert_eq!(second.incident_id, first.incident_id);
    bus.wait("toronto.agents.sre.v1.notify", |p: &Page| {
        p.level == Some(1)
    })
    .await;
    // The policy runs out; exactly one page per level went out.
    bus.wait(ESCALATED, |e: &IncidentEvent| {
        e.change.contains("exhausted")
    })
    .await;
    let pages: Vec<Page> = bus.all(PAGES);
    assert_eq!(pages.len(), 2, "{pages:#?}");
    let incident = bus.incident(first.incident_id).await;
    assert_eq!(incident.escalation.pages_sent, 2);

    // An acknowledgement stops escalation.
    let acked: Incident = bus
        .request(
            "ack",
            IncidentAction {
                id: incident.id,
                by: "alice".into(),
                reason: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(acked.state, IncidentState::Acknowledged);
    assert!(acked.escalation.next_at.is_none());
    ic.stop().await;
}

#[tokio::test]
async fn the_postmortem_has_the_timeline_and_the_durations_and_metrics_count_it() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(&server.url(), quick()).await;
    let incident: Incident = bus
        .request(
            "open",
            toronto_protocol::incidents::IncidentOpen {
                title: "Checkout latency".into(),
                service: "checkout".into(),
                environment: "production".into(),
                severity: Some(Severity::Sev2),
                labels: BTreeMap::new(),
                by: "bob".into(),
            },
        )
        .await
        .unwrap();
    let early = bus
        .request::<_, Postmortem>(
            "postmortem",
            PostmortemRequest {
                id: incident.id,
                by: "bob".into(),
                action_items: vec![],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(early.code(), toronto_protocol::ErrorCode::Conflict);
    let action = |id| IncidentAction {
        id,
        by: "bob".into(),
        reason: Some("looking".into()),
    };
    bus.request::<_, Incident>("ack", action(incident.id))
        .await
        .unwrap();
    bus.request::<_, Incident>(
        "note",
        IncidentNote {
            id: incident.id,
            by: "agent:developer".into(),
            text: "cache hit ratio dropped to 10%".into(),
            action_item: false,
        },
    )
    .await
    .unwrap();
    bus.request::<_, Incident>("mitigate", action(incident.id))
        .await
        .unwrap();
    let resolved: Incident = bus.request("resolve", action(incident.id)).await.unwrap();
    let pm: Postmortem = bus
        .request(
            "postmortem",
            PostmortemRequest {
                id: incident.id,
                by: "bob".into(),
                action_items: vec!["alert on cache hit ratio".into()],
            },
        )
        .await
        .unwrap();
    let md = &pm.markdown;
    for section in [
        "## Summary",
        "## Impact",
        "## Detection",
        "## Response",
        "## Timeline",
        "## Contributing change",
        "## Notes",
        "## Action items",
        "## Durations",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    assert!(md.contains("cache hit ratio dropped to 10%"));
    assert!(md.contains("- [ ] alert on cache hit ratio"));
    assert!(md.contains("acknowledged by bob"));
    let ack = resolved.acknowledged_at.unwrap();
    let expected = (ack - resolved.opened_at).num_milliseconds() as f64 / 1000.0;
    assert_eq!(pm.time_to_acknowledge_seconds, Some(expected));
    let expected =
        (resolved.resolved_at.unwrap() - resolved.opened_at).num_milliseconds() as f64 / 1000.0;
    assert_eq!(pm.time_to_resolve_seconds, Some(expected));
    assert!(md.contains(&ack.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()));
    assert_eq!(bus.incident(incident.id).await.state, IncidentState::Closed);

    let m: IncidentMetrics = bus
        .request("metrics", IncidentMetricsQuery::default())
        .await
        .unwrap();
    assert_eq!(m.incidents, 1);
    assert_eq!(m.by_severity["sev2"], 1);
    assert!(m.mttr_seconds.unwrap() >= m.mtta_seconds.unwrap());
    // /metrics follows within a second or so.
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(ic.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("incident_incidents{severity=\"sev2\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("incident_incidents{severity=\"sev2\"} 1"),
        "{text}"
    );
    assert!(text.contains("incident_mttr_seconds"), "{text}");
    ic.stop().await;
}

fn slo(service: &str) -> String {
    format!(
        r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: availability
spec:
  service: {service}
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: 0.99
  indicator:
    spec:
      ratioMetric:
        bad:
          metricSource: {{ type: Bus, spec: {{ query: 'http_errors{{service="{service}",environment="production"}}' }} }}
        total:
          metricSource: {{ type: Bus, spec: {{ query: 'http_requests{{service="{service}",environment="production"}}' }} }}
"#
    )
}

/// Publishes 100 requests of `service` with `errors` failures every 100 ms until `stop`.
fn traffic(
    client: async_nats::Client,
    service: &'static str,
    errors: f64,
    stop: CancellationToken,
) {
    use toronto_protocol::analysis::{MetricBatch, MetricSample};
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        while !stop.is_cancelled() {
            every.tick().await;
            let now = chrono::Utc::now();
            let l = labels(&[("service", service), ("environment", "production")]);
            let sample = |name: &str, value: f64| MetricSample {
                name: name.into(),
                labels: l.clone(),
                value,
                timestamp: now,
            };
            let batch = MetricBatch {
                service: service.into(),
                environment: "production".into(),
                source: "test".into(),
                samples: vec![
                    sample("http_requests", 100.0),
                    sample("http_errors", errors),
                ],
            };
            let env = Envelope::builder("toronto://test", batch).build();
            let _ = client
                .publish(
                    format!("toronto.metrics.{service}.production"),
                    toronto_protocol::encode(&env, Encoding::Json)
                        .unwrap()
                        .into(),
                )
                .await;
        }
    });
}

#[tokio::test]
async fn a_playbook_rolls_back_the_linked_change_and_resolves_only_once_the_monitor_confirms() {
    use toronto_deployer::{SimCluster, SimSettings};
    use toronto_protocol::rollout::{Rollout, RolloutPhase, SimFault, SimService};
    use toronto_protocol::tasks::{DeployTask, ExecuteAccepted, ExecuteRequest, PlanTask};

    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    config.shutdown_grace_secs = 2;

    // The deployer on the simulated cluster (a simulation), as its own tests run it.
    let deployer_settings = toronto_deployer::Settings {
        lease: Duration::from_secs(2),
        analysis_interval: Duration::from_millis(200),
        analysis_window: Duration::from_secs(2),
        analysis_timeout: Duration::from_millis(300),
        step_pause: Duration::from_millis(200),
        scale_down_delay: Duration::from_millis(200),
        progress_deadline: Duration::from_secs(30),
        drift_interval: Duration::ZERO,
        sim: SimSettings {
            tick: Duration::from_millis(50),
            requests_per_tick: 200,
            pod_start: Duration::from_millis(100),
            base_latency: Duration::from_millis(20),
        },
        ..Default::default()
    };
    let sim = SimCluster::new(deployer_settings.sim.clone());
    let deployer_stop = CancellationToken::new();
    let deployer = toronto_deployer::start_with(
        config.clone(),
        deployer_settings,
        Some(sim.clone()),
        deployer_stop.clone(),
    )
    .await
    .unwrap();
    let deployer_running = tokio::spawn(deployer.runtime.run_until_shutdown());

    // The monitor evaluates both services' SLOs, time compressed (5m lasts 0.83 s).
    let slo_dir = tempfile::tempdir().unwrap();
    std::fs::write(slo_dir.path().join("cart.yaml"), slo("cart")).unwrap();
    std::fs::write(slo_dir.path().join("pay.yaml"), slo("pay")).unwrap();
    let monitor_stop = CancellationToken::new();
    let monitor = toronto_monitor::start_with(
        config.clone(),
        toronto_monitor::Settings {
            slo_dir: Some(slo_dir.path().to_owned()),
            time_scale: 360.0,
            slo_interval: Duration::from_millis(200),
            ..Default::default()
        },
        monitor_stop.clone(),
    )
    .await
    .unwrap();
    let monitor_running = tokio::spawn(monitor.run_until_shutdown());

    let policy = Policy::from_yaml(
        r#"
default_severity: sev3
playbooks:
  - name: roll-back-the-change
    when: { change_linked: true }
    actions:
      - action: deployer.rollback
      - { action: wait_recovery, timeout_seconds: 60 }
  - name: wait-it-out
    when: { services: [pay] }
    actions:
      - { action: wait_recovery, timeout_seconds: 2 }
autonomy:
  severities: [sev1, sev2, sev3, sev4]
  environments: [production]
"#,
    )
    .unwrap();
    let ic = start_commander(&server.url(), Settings { policy, ..quick() }).await;

    let deployer_call = |verb: &'static str, task: PlanTask| {
        let client = client.clone();
        async move {
            let env = Envelope::builder(
                "toronto://test",
                ExecuteRequest {
                    plan_id: uuid::Uuid::now_v7(),
                    idempotency_key: uuid::Uuid::now_v7().to_string(),
                    task,
                },
            )
            .build();
            call::<_, ExecuteAccepted>(
                &client,
                &format!("toronto.devops.v1.deployer.{verb}"),
                &env,
                Encoding::Json,
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .data
        }
    };
    let deploy = |version: &str| {
        PlanTask::Deploy(Box::new(DeployTask {
            service: "cart".into(),
            version: version.into(),
            image: Some(format!("registry.example/cart:{version}")),
            environment: "production".into(),
            strategy: Default::default(),
            change: None,
            fix: false,
            policy_override: None,
        }))
    };
    for version in ["1.0.0", "2.0.0"] {
        deployer_call("rollout.start", deploy(version)).await;
        let done: Rollout = bus
            .wait(
                "toronto.devops.v1.events.rollout.succeeded",
                |r: &Rollout| r.version == version,
            )
            .await;
        assert_eq!(done.phase, RolloutPhase::Succeeded);
    }
    // 2.0.0 turns out bad: half its requests fail. The page fires.
    let fault = Envelope::builder(
        "toronto://test",
        SimFault {
            service: "cart".into(),
            environment: "production".into(),
            version: "2.0.0".into(),
            error_rate: 0.5,
            ..Default::default()
        },
    )
    .build();
    call::<_, SimService>(
        &client,
        "toronto.devops.v1.deployer.sim.fault",
        &fault,
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    publish_alert(
        &client,
        &[
            ("alertname", "SLOErrorBudgetBurnPage"),
            ("service", "cart"),
            ("environment", "production"),
            ("slo", "availability"),
        ],
        AlertStatus::Firing,
    )
    .await;

    // The incident links the 2.0.0 rollout, is raised to SEV2, and its playbook rolls
    // back; it resolves once the monitor says the short window is clean again.
    let opened: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "cart")
        .await;
    assert_eq!(
        opened.severity,
        Severity::Sev2,
        "raised from SEV3 by the change"
    );
    let resolved: IncidentEvent = bus
        .wait(RESOLVED, |e: &IncidentEvent| e.id == opened.id)
        .await;
    assert!(
        resolved.change.contains("the monitor confirmed recovery"),
        "{}",
        resolved.change
    );
    let incident = bus.incident(opened.id).await;
    assert_eq!(incident.changes.len(), 1, "{:?}", incident.changes);
    assert_eq!(incident.changes[0].version, "2.0.0");
    assert_eq!(
        incident.changes[0].previous_version.as_deref(),
        Some("1.0.0")
    );
    assert!(incident.severity_reason.contains("recent change"));
    let position = |needle: &str| {
        incident
            .timeline
            .iter()
            .position(|t| t.text.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {:#?}", incident.timeline))
    };
    assert!(position("deployer.rollback") < position("confirmed recovery"));
    // The rollback's own rollout events, from the stream, are on the timeline too.
    assert!(position("(rollback)") < position("confirmed recovery"));
    assert!(incident.mitigated_at.unwrap() <= incident.resolved_at.unwrap());
    // The simulated cluster serves 1.0.0 again.
    let view: SimService = call::<_, SimService>(
        &client,
        "toronto.devops.v1.deployer.sim.get",
        &Envelope::builder(
            "toronto://test",
            toronto_protocol::rollout::RolloutRef {
                service: Some("cart".into()),
                environment: Some("production".into()),
                ..Default::default()
            },
        )
        .build(),
        Encoding::Json,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .data;
    assert_eq!(view.traffic.get("1.0.0"), Some(&100), "{view:?}");

    // Where the errors go on, recovery is never confirmed: it escalates again and
    // stays open.
    let stop = CancellationToken::new();
    traffic(client.clone(), "pay", 50.0, stop.clone());
    publish_alert(
        &client,
        &[
            ("alertname", "SLOErrorBudgetBurnPage"),
            ("service", "pay"),
            ("environment", "production"),
        ],
        AlertStatus::Firing,
    )
    .await;
    let pay: IncidentEvent = bus
        .wait(OPENED, |e: &IncidentEvent| e.service == "pay")
        .await;
    let again: IncidentEvent = bus
        .wait(ESCALATED, |e: &IncidentEvent| e.id == pay.id)
        .await;
    assert!(
        again.change.contains("recovery not confirmed"),
        "{}",
        again.change
    );
    let pay = bus.incident(pay.id).await;
    assert!(pay.state.is_open(), "{:?}", pay.state);
    assert_eq!(pay.playbook.unwrap().state, "failed");
    stop.cancel();

    ic.stop().await;
    deployer_stop.cancel();
    monitor_stop.cancel();
    let _ = deployer_running.await;
    let _ = monitor_running.await;
}

#[tokio::test]
async fn a_flapping_alert_keeps_one_incident_and_a_quick_return_reopens_it() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(
        &server.url(),
        Settings {
            resolve_hold: Duration::from_secs(1),
            ..quick()
        },
    )
    .await;
    let alerts = ic.url("/api/v2/alerts");
    let flappy = [
        ("alertname", "QueueDepth"),
        ("service", "orders"),
        ("environment", "production"),
    ];
    // Fires, clears and fires again within the hold: one incident, never resolved.
    for resolved in [false, true, false] {
        let r = post(&alerts, &serde_json::json!([postable(&flappy, resolved)])).await;
        assert_eq!(r.status(), 200);
    }
    let incidents = bus.incidents().await;
    assert_eq!(incidents.len(), 1);
    let id = incidents[0].id;
    assert!(incidents[0].state.is_open());
    assert_eq!(incidents[0].alerts_firing, 1);
    assert_eq!(incidents[0].alerts_total, 1);
    // Clears for good: resolved after the hold.
    post(&alerts, &serde_json::json!([postable(&flappy, true)])).await;
    bus.wait(RESOLVED, |e: &IncidentEvent| e.id == id).await;
    assert!(
        bus.all::<IncidentEvent>(RESOLVED).len() == 1,
        "resolved once, after the flapping"
    );
    // Back within the reopen window: the same incident reopens.
    post(&alerts, &serde_json::json!([postable(&flappy, false)])).await;
    let incidents = bus.incidents().await;
    assert_eq!(incidents.len(), 1, "no second incident");
    assert_eq!(incidents[0].state, IncidentState::Triggered);
    assert!(incidents[0].timeline.iter().any(|t| t.kind == "reopened"));
    ic.stop().await;
}

#[tokio::test]
async fn severity_follows_the_rules_and_the_autonomy_policy_holds_a_sev1_playbook_for_a_human() {
    use toronto_protocol::incidents::PlaybookRunRequest;
    let server = NatsServer::start().await;
    let client = server.client().await;
    let mut bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let policy = Policy::from_yaml(
        r#"
default_severity: sev4
severity_rules:
  - severity: sev1
    environments: [production]
    slo_tiers: [critical]
  - severity: sev2
    min_services: 2
playbooks:
  - name: scale-out
    when: { min_severity: sev2 }
    actions:
      - { action: deployer.scale, replicas: 10 }
autonomy:
  severities: [sev3, sev4]
  environments: [production]
"#,
    )
    .unwrap();
    let ic = start_commander(
        &server.url(),
        Settings {
            group_by: vec!["environment".into(), "alertname".into()],
            policy,
            ..quick()
        },
    )
    .await;
    let alerts = ic.url("/api/v2/alerts");
    let send = |pairs: &'static [(&'static str, &'static str)]| {
        let alerts = alerts.clone();
        async move {
            let r = post(&alerts, &serde_json::json!([postable(pairs, false)])).await;
            assert_eq!(r.status(), 200);
        }
    };
    // SLO tier critical in production: SEV1, and its playbook waits for a human.
    send(&[
        ("alertname", "CheckoutSLO"),
        ("service", "checkout"),
        ("environment", "production"),
        ("slo_tier", "critical"),
    ])
    .await;
    // Two services in one group: SEV2 once the second joins.
    send(&[
        ("alertname", "Latency"),
        ("service", "search"),
        ("environment", "staging"),
    ])
    .await;
    let staging = bus
        .incidents()
        .await
        .into_iter()
        .find(|i| i.environment == "staging")
        .unwrap();
    assert_eq!(staging.severity, Severity::Sev4);
    send(&[
        ("alertname", "Latency"),
        ("service", "ads"),
        ("environment", "staging"),
    ])
    .await;
    let staging = bus.incident(staging.id).await;
    assert_eq!(staging.services, vec!["search", "ads"]);
    assert_eq!(
        staging.severity,
        Severity::Sev2,
        "{}",
        staging.severity_reason
    );

    let sev1 = bus
        .incidents()
        .await
        .into_iter()
        .find(|i| i.service == "checkout")
        .unwrap();
    assert_eq!(sev1.severity, Severity::Sev1);
    let run = sev1.playbook.clone().unwrap();
    assert_eq!(run.state, "waiting_approval");
    assert!(
        sev1.timeline
            .iter()
            .any(|t| t.text.contains("needs a human"))
    );
    // A human runs it: it acts (no deployer answers here, so the action fails and
    // the incident escalates, with the reason on the timeline).
    let started: Incident = bus
        .request(
            "playbook.run",
            PlaybookRunRequest {
                id: sev1.id,
                playbook: None,
                by: "bob".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(started.playbook.unwrap().state, "running");
    let escalated: IncidentEvent = bus
        .wait(ESCALATED, |e: &IncidentEvent| e.id == sev1.id)
        .await;
    assert!(
        escalated.change.contains("deployer.scale failed"),
        "{}",
        escalated.change
    );
    assert_eq!(
        bus.incident(sev1.id).await.playbook.unwrap().state,
        "failed"
    );
    ic.stop().await;
}
