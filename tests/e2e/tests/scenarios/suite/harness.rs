//! The processes of the fault suite and what the cases ask of them.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use toronto_protocol::rollout::{Rollout, RolloutRef};
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, GateVerdict, Plan, PlanGet, PlanState, Strategy, SubmitAccepted,
};
use toronto_protocol::{Encoding, Envelope};
use toronto_testkit::{NatsCluster, NatsServer, Requester};
use uuid::Uuid;

/// The environment every case deploys to (security and QA gates, no approval).
pub const ENV: &str = "staging";

/// The kinds run twice each.
pub const KINDS: [&str; 4] = ["planner", "deployer", "monitor", "incident-commander"];

/// One service process.
pub struct Proc {
    pub kind: &'static str,
    pub id: String,
    child: Child,
}

/// The nats-server, the service processes and the test peers.
pub struct Cluster {
    /// The single nats-server, or
    pub server: Option<NatsServer>,
    /// a cluster of nats-servers (streams and buckets at three replicas).
    pub nodes: Option<NatsCluster>,
    urls: String,
    pub client: async_nats::Client,
    pub procs: Vec<Proc>,
    logs: std::path::PathBuf,
    peers: tokio::task::JoinHandle<()>,
}

/// Fast settings for every service (short leases, pauses and ticks).
pub fn service_env(url: &str) -> Vec<(&'static str, String)> {
    [
        ("TORONTO_NATS_URL", url),
        (
            "TORONTO_JETSTREAM_REPLICAS",
            if url.contains(',') { "3" } else { "1" },
        ),
        ("TORONTO_HTTP_ADDR", ""),
        ("TORONTO_LOG", "info"),
        ("TORONTO_LOG_FORMAT", "text"),
        ("TORONTO_SHUTDOWN_GRACE_SECONDS", "2"),
        ("TORONTO_LEASE_TTL_SECONDS", "3"),
        ("TORONTO_LEASE_RENEW_SECONDS", "1"),
        ("TORONTO_PLANNER_GATE_TIMEOUT_MS", "2000"),
        ("TORONTO_PLANNER_LEASE_SECONDS", "4"),
        ("TORONTO_PLANNER_SWEEP_SECONDS", "2"),
        ("TORONTO_DEPLOYER_LEASE_SECONDS", "2"),
        ("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", "1"),
        ("TORONTO_DEPLOYER_ANALYSIS_INTERVAL_MS", "300"),
        ("TORONTO_DEPLOYER_ANALYSIS_WINDOW_SECONDS", "2"),
        ("TORONTO_DEPLOYER_SCALE_DOWN_DELAY_SECONDS", "1"),
        ("TORONTO_DEPLOYER_DRIFT_INTERVAL_SECONDS", "0"),
        ("TORONTO_DEPLOYER_SIM_TICK_MS", "100"),
        ("TORONTO_DEPLOYER_SIM_POD_START_MS", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// The incident commanders' policy: the on-call person is paged, then, without an
/// acknowledgement within 4 s, the next level.
const POLICY: &str = r#"
escalation_policies:
  - name: default
    levels:
      - { notify: [user:alice], ack_timeout_seconds: 4 }
      - { notify: [user:bob], ack_timeout_seconds: 600 }
default_escalation: default
"#;

/// The first level's acknowledgement deadline in [`POLICY`].
pub const ESCALATION_DEADLINE: Duration = Duration::from_secs(4);

/// Starts one service process and waits until it says which instance it is.
pub async fn spawn(kind: &'static str, url: &str, log: &std::path::Path) -> Proc {
    spawn_with(kind, url, log, &[]).await
}

/// [`spawn`] with more variables.
pub async fn spawn_with(
    kind: &'static str,
    url: &str,
    log: &std::path::Path,
    extra: &[(&str, String)],
) -> Proc {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_test_service"))
        .arg(kind)
        .envs(service_env(url))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let id = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(id) = line.strip_prefix("instance ") {
                return id.to_owned();
            }
        }
        panic!("{kind} ended before it started; see {}", log.display());
    })
    .await
    .unwrap_or_else(|_| panic!("{kind} did not start; see {}", log.display()));
    Proc { kind, id, child }
}

impl Cluster {
    /// A nats-server, two of every service, and the test peers.
    pub async fn start() -> Self {
        let server = NatsServer::start().await;
        let client = server.client().await;
        let urls = server.url();
        let mut cluster = Self::with(Some(server), None, urls, client);
        for kind in KINDS {
            for _ in 0..2 {
                cluster.add(kind).await;
            }
        }
        cluster
    }

    /// A 3-node NATS cluster (every stream and bucket at three replicas), one planner,
    /// monitor and incident commander, two deployers, and the test peers.
    pub async fn start_on_three_nodes() -> Self {
        let nodes = NatsCluster::start(3).await;
        let urls = nodes.urls();
        let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
        let client = async_nats::connect(addrs).await.unwrap();
        let mut cluster = Self::with(None, Some(nodes), urls.join(","), client);
        for kind in KINDS {
            cluster.add(kind).await;
        }
        cluster.add("deployer").await;
        cluster
    }

    fn with(
        server: Option<NatsServer>,
        nodes: Option<NatsCluster>,
        urls: String,
        client: async_nats::Client,
    ) -> Self {
        // Kept after the run, to read when a case fails.
        let logs = std::env::temp_dir().join(format!(
            "toronto-fault-suite-{}-{}",
            std::process::id(),
            if nodes.is_some() { "r3" } else { "r1" }
        ));
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("incident-policy.yaml"), POLICY).unwrap();
        let peers = tokio::spawn(peers(client.clone()));
        Self {
            server,
            nodes,
            urls,
            client,
            procs: Vec::new(),
            logs,
            peers,
        }
    }

    /// Where the service processes write their logs (one file per kind).
    pub fn logs(&self) -> &std::path::Path {
        &self.logs
    }

    /// Starts one more process of `kind`.
    pub async fn add(&mut self, kind: &'static str) {
        let log = self.logs.join(format!("{kind}.log"));
        let proc = spawn_with(
            kind,
            &self.urls,
            &log,
            &[(
                "TORONTO_INCIDENT_POLICY_FILE",
                self.logs.join("incident-policy.yaml").display().to_string(),
            )],
        )
        .await;
        self.procs.push(proc);
    }

    /// `kill -9` of the process running instance `id`; its kind.
    pub async fn kill(&mut self, id: &str) -> Option<&'static str> {
        let at = self.procs.iter().position(|p| p.id == id)?;
        let mut proc = self.procs.remove(at);
        proc.child.start_kill().ok()?;
        let _ = proc.child.wait().await;
        Some(proc.kind)
    }

    /// `kill -9` of one process of `kind` (the first).
    pub async fn kill_one(&mut self, kind: &str) -> Option<String> {
        let id = self.procs.iter().find(|p| p.kind == kind)?.id.clone();
        self.kill(&id).await;
        Some(id)
    }

    /// Stops every process (SIGKILL: nothing is left to check) and the peers.
    pub async fn stop(mut self) {
        for p in &mut self.procs {
            let _ = p.child.start_kill();
            let _ = p.child.wait().await;
        }
        self.peers.abort();
    }

    pub fn planner(&self) -> Requester {
        Requester::service(self.client.clone(), "planner").with_timeout(Duration::from_secs(10))
    }

    pub fn deployer(&self) -> Requester {
        Requester::service(self.client.clone(), "deployer").with_timeout(Duration::from_secs(10))
    }

    /// Submits a deploy of `service` `version` (a canary through `weights`).
    pub async fn submit(
        &self,
        service: &str,
        version: &str,
        weights: &[u8],
    ) -> Result<Uuid, String> {
        let strategy = if weights.is_empty() {
            Strategy::Rolling
        } else {
            Strategy::Canary {
                steps: weights
                    .iter()
                    .map(|w| CanaryStep {
                        weight: *w,
                        pause_seconds: Some(1),
                    })
                    .collect(),
            }
        };
        let task = DeployTask {
            service: service.into(),
            version: version.into(),
            image: Some(format!("registry.example/{service}:{version}")),
            environment: ENV.into(),
            strategy,
            change: None,
            fix: false,
            policy_override: None,
        };
        self.planner()
            .request::<_, SubmitAccepted>("submit", task)
            .await
            .map(|a| a.plan_id)
            .map_err(|e| format!("submit: {e}"))
    }

    /// The plan, if the planner answers.
    pub async fn plan(&self, id: Uuid) -> Option<Plan> {
        self.planner()
            .with_timeout(Duration::from_secs(3))
            .request::<_, Plan>("plan.get", PlanGet { plan_id: id })
            .await
            .ok()
    }

    /// Waits for the plan to end; its final state.
    pub async fn plan_end(&self, id: Uuid, within: Duration) -> Result<Plan, String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(p) = self.plan(id).await {
                if p.state.is_final() {
                    return Ok(p);
                }
                last = Some(p);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seen = last.map(|p| {
            let steps: Vec<String> = p
                .steps
                .iter()
                .map(|s| format!("{} {:?}", s.id, s.state))
                .collect();
            format!(
                "{:?}, steps [{}], lease {:?}",
                p.state,
                steps.join(", "),
                p.lease.map(|l| l.owner)
            )
        });
        Err(format!(
            "plan {id} did not end within {within:?} (last seen: {})",
            seen.unwrap_or_else(|| "nothing".into())
        ))
    }

    /// The latest rollout of `service`, if the deployer answers.
    pub async fn rollout(&self, service: &str) -> Option<Rollout> {
        self.deployer()
            .with_timeout(Duration::from_secs(3))
            .request::<_, Rollout>(
                "rollout.get",
                RolloutRef {
                    service: Some(service.into()),
                    environment: Some(ENV.into()),
                    ..Default::default()
                },
            )
            .await
            .ok()
    }

    /// Waits until the latest rollout of `service` is of `version` and has been
    /// through `steps` steps; that rollout.
    pub async fn rollout_at(
        &self,
        service: &str,
        version: &str,
        steps: usize,
    ) -> Result<Rollout, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            if let Some(r) = self.rollout(service).await
                && r.version == version
                && r.steps.iter().filter(|s| s.applied_at.is_some()).count() >= steps
            {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{service} {version} never reached step {steps}"))
    }

    /// Ships the first version of `service` (rolling), to have a baseline.
    pub async fn baseline(&self, service: &str) -> Result<(), String> {
        let plan = self.submit(service, "1.0.0", &[]).await?;
        completed(self.plan_end(plan, Duration::from_secs(90)).await?)
    }

    /// The shared simulated world's record of `service`.
    pub async fn sim_record(&self, service: &str) -> Result<serde_json::Value, String> {
        let js = async_nats::jetstream::new(self.client.clone());
        let kv = js
            .get_key_value("toronto_rollouts")
            .await
            .map_err(|e| e.to_string())?;
        let entry = kv
            .get(format!("sim.{service}.{ENV}"))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{service} is not in the simulated world"))?;
        serde_json::from_slice(&entry).map_err(|e| e.to_string())
    }

    /// The shared simulated world's change-producing applies of `service`.
    pub async fn applied(&self, service: &str) -> Result<Vec<String>, String> {
        let record = self.sim_record(service).await?;
        Ok(record["applied"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// No step of `service` applied twice, and exactly `rollouts` rollouts (one per
    /// plan: no task run twice); a note for the table.
    pub async fn once_each(&self, service: &str, rollouts: usize) -> Result<String, String> {
        let applied = self.applied(service).await?;
        let unique: BTreeSet<_> = applied.iter().collect();
        if unique.len() != applied.len() {
            return Err(format!("a step applied twice: {applied:?}"));
        }
        let ids: BTreeSet<_> = applied
            .iter()
            .filter_map(|k| k.split_once(':').map(|(id, _)| id))
            .collect();
        if ids.len() != rollouts {
            return Err(format!(
                "{} rollouts for {rollouts} plans: {applied:?}",
                ids.len()
            ));
        }
        Ok(format!("{} steps applied once each", applied.len()))
    }
}

/// `Ok` when the plan completed, else why not.
pub fn completed(plan: Plan) -> Result<(), String> {
    if plan.state == PlanState::Completed {
        Ok(())
    } else {
        Err(format!(
            "plan {} ended {:?}: {}",
            plan.id,
            plan.state,
            plan.reason.unwrap_or_default()
        ))
    }
}

/// Test peers for the security and QA agents: they pass, except for services named
/// `silent-*` (never answered), `slow-*` (answered after [`SLOW_PEER`]) and
/// `garbage-*` (answered with bytes that are no envelope).
async fn peers(client: async_nats::Client) {
    let mut scan = client
        .subscribe("toronto.agents.security.v1.scan")
        .await
        .unwrap();
    let mut test = client.subscribe("toronto.agents.qa.v1.test").await.unwrap();
    loop {
        let m = tokio::select! {
            Some(m) = scan.next() => m,
            Some(m) = test.next() => m,
            else => return,
        };
        let Some(reply) = m.reply.clone() else {
            continue;
        };
        let request: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        let service = request["data"]["service"].as_str().unwrap_or_default();
        let body = if service.starts_with("silent-") {
            continue;
        } else if service.starts_with("slow-") {
            // Answered after a second, in time for the gate: the plan holds its lease
            // all that while.
            let (client, verdict) = (client.clone(), passing());
            tokio::spawn(async move {
                tokio::time::sleep(SLOW_PEER).await;
                let _ = client.publish(reply, verdict).await;
            });
            continue;
        } else if service.starts_with("garbage-") {
            bytes::Bytes::from_static(b"\x93\xffnot an envelope{")
        } else {
            passing()
        };
        let _ = client.publish(reply, body).await;
    }
}

/// How long a `slow-*` service's peers take to answer (the gate timeout is 2 s).
const SLOW_PEER: Duration = Duration::from_secs(1);

/// A passing gate verdict, encoded.
fn passing() -> bytes::Bytes {
    let verdict = GateVerdict {
        passed: true,
        reason: Some("test peer: clean".into()),
        findings: None,
    };
    let envelope = Envelope::builder("toronto://agents/test", verdict).build();
    toronto_protocol::encode(&envelope, Encoding::Json)
        .unwrap()
        .into()
}
