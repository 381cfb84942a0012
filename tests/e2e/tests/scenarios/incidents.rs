//! The incident commander with the deployer (simulated cluster) and the monitor: a
//! playbook rolls back the linked change, and recovery is confirmed (or not) by the
//! monitor.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_incident_commander::settings::{Policy, Settings};
use toronto_protocol::alerts::{Alert, AlertStatus};
use toronto_protocol::incidents::{Incident, IncidentEvent, PlaybookState, Severity};
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::Config;
use toronto_runtime::rpc::call;
use toronto_testkit::{NatsServer, Recorder};

type Running = tokio::task::JoinHandle<Result<(), toronto_runtime::RuntimeError>>;

const OPENED: &str = "toronto.devops.v1.events.incident.opened";
const RESOLVED: &str = "toronto.devops.v1.events.incident.resolved";
const ESCALATED: &str = "toronto.devops.v1.events.incident.escalated";

struct Commander {
    shutdown: CancellationToken,
    running: Running,
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
    let running = tokio::spawn(rt.run_until_shutdown());
    Commander { shutdown, running }
}

impl Commander {
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
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

/// Events on the bus that the test watches.
struct Bus {
    client: async_nats::Client,
    events: Recorder,
}

async fn bus(client: &async_nats::Client, subject: &str) -> Bus {
    Bus {
        client: client.clone(),
        events: Recorder::start(client, &[subject]).await,
    }
}

impl Bus {
    /// Waits for a message on `subject` whose payload decodes as `T` and satisfies `f`.
    async fn wait<T: Message>(&mut self, subject: &str, f: impl Fn(&T) -> bool) -> T {
        self.events.wait(subject, f).await
    }

    async fn incident(&self, id: uuid::Uuid) -> Incident {
        let envelope = Envelope::builder(
            "toronto://test",
            toronto_protocol::incidents::IncidentGet { id },
        )
        .build();
        call(
            &self.client,
            "toronto.devops.v1.incident.get",
            &envelope,
            Encoding::Json,
            Duration::from_secs(10),
        )
        .await
        .map(|r: Envelope<Incident>| r.data)
        .unwrap()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

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

fn slo(service: &str) -> String {
    toronto_testkit::slo::bus_availability(
        "availability",
        service,
        &format!(r#"service="{service}",environment="production""#),
        0.99,
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
    let mut bus = bus(&client, "toronto.devops.v1.events.>").await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
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
    assert_eq!(pay.playbook.unwrap().state, PlaybookState::Failed);
    stop.cancel();

    ic.stop().await;
    deployer_stop.cancel();
    monitor_stop.cancel();
    let _ = deployer_running.await;
    let _ = monitor_running.await;
}
