//! A stack for the console's tests: planner, deployer (simulated cluster), monitor and
//! incident commander in-process against a test nats-server, the demo's peers and
//! seeded service `shop`, and the console behind a "proxy" at 127.0.0.1 (the test
//! itself, or the browser, sends the identity header from there). Alice and bob are
//! registered principals (operator and approver); the console signs with the test
//! admin's seed on their behalf; everything runs with `TORONTO_AUTH=required`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::Client;
use tokio_util::sync::CancellationToken;
use toronto_commands::Role;
use toronto_console::Settings;
use toronto_protocol::auth::Role as Right;
use toronto_protocol::incidents::{Incident, IncidentOpen, Severity};
use toronto_protocol::rollout::{Rollout, SimFault, SimService};
use toronto_protocol::tasks::{CanaryStep, DeployTask, Plan, Strategy, SubmitAccepted};
use toronto_protocol::{Encoding, Envelope, Message};
use toronto_runtime::auth::Signer;
use toronto_runtime::rpc::call_signed;
use toronto_runtime::{Config, ServiceRuntime};
use toronto_testkit::{NatsServer, Recorder};

/// The header the test proxy sets.
pub const USER_HEADER: &str = "X-Forwarded-User";

/// A hostile text, put in an incident's title and labels.
pub const HOSTILE: &str = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";

/// The running stack.
pub struct Stack {
    /// The NATS server (kept alive).
    pub server: NatsServer,
    /// A client for the test.
    pub client: Client,
    /// The console's URL, with its base path (`http://127.0.0.1:P/ops`).
    pub url: String,
    /// Events seen.
    pub events: Recorder,
    /// Alice's key (a registered operator and approver).
    pub alice: Signer,
    shutdown: CancellationToken,
    running: Vec<ServiceRuntime>,
    demo: Option<toronto_cli::demo::Demo>,
}

fn config(server: &NatsServer) -> Config {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    config.shutdown_grace_secs = 2;
    config
}

impl Stack {
    /// Starts everything; the console is served under `/ops`.
    pub async fn start() -> Stack {
        let server = NatsServer::start().await;
        let client = server.client().await;
        let events = Recorder::start(&client, &["toronto.devops.v1.events.>"]).await;
        let rights = [Right::Operator, Right::Approver];
        let alice = toronto_testkit::person(&client, "alice", &rights, &[]).await;
        toronto_testkit::person(&client, "bob", &rights, &[]).await;
        let shutdown = CancellationToken::new();
        let mut running = Vec::new();
        running.push(
            Box::pin(toronto_planner::start_with(
                config(&server),
                toronto_planner::Settings {
                    promotion: Vec::new(),
                    budget_environments: Vec::new(),
                    gate_timeout: Duration::from_secs(5),
                    lease: Duration::from_secs(10),
                    ..Default::default()
                },
                shutdown.clone(),
            ))
            .await
            .unwrap(),
        );
        running.push(
            Box::pin(toronto_deployer::start_with(
                config(&server),
                toronto_deployer::Settings {
                    step_pause: Duration::from_secs(60),
                    drift_interval: Duration::ZERO,
                    // The page shows the canary analysis' evidence: let the analysis,
                    // not an SLO alert that may fire first, abort the bad canary.
                    abort_on_alert: false,
                    ..Default::default()
                },
                None,
                shutdown.clone(),
            ))
            .await
            .unwrap()
            .runtime,
        );
        running.push(
            Box::pin(toronto_monitor::start_with(
                config(&server),
                toronto_monitor::Settings {
                    // Real time: the canary analysis, not the SLO's burn alert, stops
                    // the bad canary, so the abort carries per-metric evidence.
                    slo_interval: Duration::from_millis(500),
                    ..Default::default()
                },
                shutdown.clone(),
            ))
            .await
            .unwrap(),
        );
        running.push(
            Box::pin(toronto_incident_commander::start_with(
                config(&server),
                toronto_incident_commander::Settings::default(),
                shutdown.clone(),
            ))
            .await
            .unwrap(),
        );
        // The demo: peers that pass every gate, `shop` 1.0.0 in staging and production.
        let demo_settings =
            toronto_cli::demo::DemoSettings::from_vars(&Default::default()).unwrap();
        let demo = Box::pin(toronto_cli::demo::Demo::start(
            &config(&server),
            &demo_settings,
        ))
        .await
        .unwrap();
        let mut console_config = config(&server);
        console_config.http.addr = "127.0.0.1:0".into();
        let console = Box::pin(toronto_console::start_with(
            console_config,
            Settings {
                base_path: "/ops".into(),
                user_header: Some(USER_HEADER.to_ascii_lowercase()),
                trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
                roles: HashMap::from([
                    ("alice".to_owned(), Role::Operator),
                    ("bob".to_owned(), Role::Operator),
                ]),
                ..Default::default()
            },
            shutdown.clone(),
        ))
        .await
        .unwrap();
        let url = format!("http://{}/ops", console.http_addr.unwrap());
        running.push(console);
        let mut stack = Stack {
            server,
            client,
            url,
            events,
            alice,
            shutdown,
            running,
            demo: Some(demo),
        };
        // The demo's seed deploys have finished.
        for env in ["staging", "production"] {
            stack
                .events
                .wait(
                    "toronto.devops.v1.events.rollout.succeeded",
                    |r: &Rollout| r.environment == env && r.version == "1.0.0",
                )
                .await;
        }
        stack
    }

    /// Stops everything.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for rt in self.running.drain(..) {
            let _ = rt.run_until_shutdown().await;
        }
        if let Some(demo) = self.demo.take() {
            demo.stop().await;
        }
        self.server.stop().await;
    }

    /// Asks `subject` as `source`, signed by the test admin.
    pub async fn ask<Req: Message, Resp: Message>(
        &self,
        source: &str,
        subject: &str,
        data: Req,
    ) -> Resp {
        self.ask_as(&toronto_testkit::test_identity(), source, subject, data)
            .await
    }

    /// Asks `subject` as `source`, signed by `signer`.
    pub async fn ask_as<Req: Message, Resp: Message>(
        &self,
        signer: &Signer,
        source: &str,
        subject: &str,
        data: Req,
    ) -> Resp {
        let envelope = Envelope::builder(source, data).build();
        call_signed(
            &self.client,
            Some(signer),
            subject,
            &envelope,
            Encoding::Json,
            Duration::from_secs(10),
        )
        .await
        .map(|r: Envelope<Resp>| r.data)
        .unwrap_or_else(|e| panic!("{subject}: {e}"))
    }

    /// `alice` asks for a canary of `shop` `version` in `environment`; its plan.
    pub async fn deploy(
        &self,
        version: &str,
        environment: &str,
        steps: &[(u8, u64)],
    ) -> uuid::Uuid {
        let task = DeployTask {
            service: "shop".into(),
            version: version.into(),
            image: None,
            environment: environment.into(),
            strategy: Strategy::Canary {
                steps: steps
                    .iter()
                    .map(|(w, p)| CanaryStep {
                        weight: *w,
                        pause_seconds: Some(*p),
                    })
                    .collect(),
            },
            change: None,
            fix: false,
            policy_override: None,
        };
        let accepted: SubmitAccepted = self
            .ask_as(
                &self.alice,
                "toronto://humans/alice",
                "toronto.devops.v1.planner.submit",
                task,
            )
            .await;
        accepted.plan_id
    }

    /// Waits for the rollout of `version` in `environment` to reach `weight`.
    pub async fn rollout_at(&mut self, version: &str, environment: &str, weight: u8) -> Rollout {
        let (v, e) = (version.to_owned(), environment.to_owned());
        self.events
            .wait(
                "toronto.devops.v1.events.rollout.progressed",
                move |r: &Rollout| r.version == v && r.environment == e && r.weight == weight,
            )
            .await
    }

    /// Every request to `version` in `environment` fails from now on.
    pub async fn fault(&self, version: &str, environment: &str) {
        let _: SimService = self
            .ask(
                "toronto://test",
                "toronto.devops.v1.deployer.sim.fault",
                SimFault {
                    service: "shop".into(),
                    environment: environment.into(),
                    version: version.into(),
                    error_rate: 1.0,
                    ..Default::default()
                },
            )
            .await;
    }

    /// Waits until the plan waits for a human.
    pub async fn waiting(&mut self, plan: uuid::Uuid) -> Plan {
        self.events
            .wait("toronto.devops.v1.events.gate.waiting", |p: &Plan| {
                p.id == plan
            })
            .await
    }

    /// Opens an incident by hand with hostile text in its title and labels.
    pub async fn hostile_incident(&self) -> Incident {
        self.ask(
            "toronto://test",
            "toronto.devops.v1.incident.open",
            IncidentOpen {
                title: format!("checkout errors {HOSTILE}"),
                service: "shop".into(),
                environment: "staging".into(),
                severity: Some(Severity::Sev2),
                labels: [("team".to_owned(), HOSTILE.to_owned())].into(),
                by: "carol".into(),
            },
        )
        .await
    }
}
