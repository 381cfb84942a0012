//! The incident commander over the wire, against real servers: a real nats-server
//! (test kit), a real Alertmanager and Prometheus (Debian's binaries). Assertions are
//! on what a user sees: incidents, their events, pages, HTTP answers, and what
//! survives a restart. The engine's rules are unit-tested beside it
//! (`src/engine/*_tests.rs`); scenarios with the deployer and the monitor live in the
//! end-to-end crate (`tests/e2e/tests/scenarios/incidents.rs`).

mod http_auth;
mod intake;
mod lifecycle;
mod outbound;
mod replicas;
mod suppress;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

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
use toronto_runtime::rpc::CallError;
use toronto_testkit::{NatsServer, Recorder};

type Running = tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>;

struct Commander {
    shutdown: CancellationToken,
    running: Running,
    http: SocketAddr,
}

async fn start_commander(url: &str, settings: Settings) -> Commander {
    let mut config = toronto_testkit::with_test_admin(Config::default());
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
    events: Recorder,
    /// The people the tests name, as verified principals (operators).
    people: tokio::sync::Mutex<std::collections::HashMap<String, toronto_runtime::auth::Signer>>,
}

async fn bus(client: &async_nats::Client, subjects: &[&str]) -> Bus {
    Bus {
        client: client.clone(),
        events: Recorder::start(client, subjects).await,
        people: Default::default(),
    }
}

impl Bus {
    /// Waits for a message on `subject` whose payload decodes as `T` and satisfies `f`.
    async fn wait<T: Message>(&mut self, subject: &str, f: impl Fn(&T) -> bool) -> T {
        self.events.wait(subject, f).await
    }

    /// Waits for any message on `subject` and returns its bytes.
    async fn raw(&mut self, subject: &str) -> bytes::Bytes {
        self.events.raw(subject).await
    }

    /// Every message seen so far on `subject` (after draining what arrived).
    fn all<T: Message>(&mut self, subject: &str) -> Vec<T> {
        self.events.all(subject)
    }

    async fn request<Req: Message, Resp: Message>(
        &self,
        verb: &str,
        data: Req,
    ) -> Result<Resp, CallError> {
        // A command names who acts (`by`, `created_by`): the test signs as that person,
        // a registered operator, since the commander records the verified signer.
        let value = serde_json::to_value(&data).unwrap();
        let who = ["by", "created_by"]
            .iter()
            .find_map(|f| value.get(*f).and_then(|v| v.as_str()))
            .filter(|w| toronto_protocol::auth::valid_principal_id(w))
            .map(str::to_owned);
        let signer = match who {
            Some(who) => {
                let mut people = self.people.lock().await;
                if !people.contains_key(&who) {
                    let roles = [toronto_protocol::auth::Role::Operator];
                    let key = toronto_testkit::person(&self.client, &who, &roles, &[]).await;
                    people.insert(who.clone(), key);
                }
                people.get(&who).cloned()
            }
            None => toronto_runtime::auth::process_signer(),
        };
        let envelope = Envelope::builder("toronto://test", data).build();
        toronto_runtime::rpc::call_signed(
            &self.client,
            signer.as_ref(),
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
