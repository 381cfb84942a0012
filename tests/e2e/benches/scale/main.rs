//! How the cost of each operation grows with its history: every operation timed with
//! 1x, 10x and 100x history behind it, against a real nats-server, with the services
//! running in this process. Prints a table; asserts nothing. The goal is a flat slope:
//! the time at 100x at most twice the time at 1x.
//!
//! Run: `cargo bench -p toronto-e2e --bench scale` (`BENCH_SCALE=0.1` divides every
//! history by ten, for a quick look). The history is written straight into the
//! services' KV buckets and event stream (copies of records the services made
//! themselves), so that building 10,000 past plans takes seconds, not hours.
//! `BENCH_ONLY=plans|rollouts|incidents|slos|dora` runs one group.

mod dora;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use toronto_protocol::incidents::{IncidentList, Incidents};
use toronto_protocol::rollout::{Rollout, RolloutList, Rollouts};
use toronto_protocol::tasks::{
    DeployTask, DoraQuery, DoraReport, ExecuteAccepted, ExecuteRequest, GateVerdict, PlanList,
    PlanTask, Plans, SecurityScanRequest, Strategy, SubmitAccepted,
};
use toronto_protocol::{Encoding, Envelope, ErrorBody, Message, encode};
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::rpc::call;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_runtime::{Config, Metrics};
use toronto_testkit::NatsServer;
use uuid::Uuid;

const V1: &str = "toronto.devops.v1";

fn scale() -> f64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// The three history sizes of an operation whose 1x is `base`.
fn sizes(base: usize) -> [usize; 3] {
    let b = ((base as f64 * scale()) as usize).max(10);
    [b, b * 10, b * 100]
}

/// One row of the table: an operation's median time at each history size.
struct Row {
    operation: &'static str,
    history: [usize; 3],
    unit: &'static str,
    median: [Duration; 3],
}

impl Row {
    fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let slope = ms(self.median[2]) / ms(self.median[0]).max(1e-9);
        println!(
            "{:<34} {:>7} {:>7} {:>8} {:<9} {:>9.3} {:>9.3} {:>9.3} {:>7.2}x  {}",
            self.operation,
            self.history[0],
            self.history[1],
            self.history[2],
            self.unit,
            ms(self.median[0]),
            ms(self.median[1]),
            ms(self.median[2]),
            slope,
            if slope <= 2.0 { "flat" } else { "GROWS" }
        );
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn config(server: &NatsServer) -> Config {
    // Auth on, as deployed: the test admin is the first admin and signs every request.
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    config.log.filter = "off".into();
    config
}

async fn ask<Req: Message, Resp: Message>(
    client: &async_nats::Client,
    verb: &str,
    data: Req,
) -> Resp {
    let envelope = Envelope::builder("toronto://bench", data).build();
    call::<_, Resp>(
        client,
        &format!("{V1}.{verb}"),
        &envelope,
        Encoding::Json,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{verb}: {e}"))
    .data
}

/// Times `op` `n` times after two warm-up runs; the median.
async fn time<F, Fut>(n: usize, mut op: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..2 {
        op(1_000_000 + i).await;
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        op(i).await;
        samples.push(t.elapsed());
    }
    median(samples)
}

/// Copies of `record` (a JSON object with an `id`) under `<prefix>.<new id>` in `kv`
/// until the prefix holds `target` records, `count` of them written before.
async fn seed(
    kv: &jetstream::kv::Store,
    prefix: &str,
    record: &serde_json::Value,
    edit: impl Fn(&mut serde_json::Value),
    count: &mut usize,
    target: usize,
) {
    let mut pending = Vec::new();
    while *count < target {
        let id = Uuid::now_v7();
        let mut copy = record.clone();
        copy["id"] = serde_json::Value::String(id.to_string());
        edit(&mut copy);
        pending.push(kv.put(
            format!("{prefix}.{id}"),
            serde_json::to_vec(&copy).unwrap().into(),
        ));
        *count += 1;
        if pending.len() == 256 {
            for p in futures::future::join_all(pending.drain(..)).await {
                p.unwrap();
            }
        }
    }
    for p in futures::future::join_all(pending).await {
        p.unwrap();
    }
}

async fn kv_json<T: DeserializeOwned>(kv: &jetstream::kv::Store, key: &str) -> T {
    let bytes = kv.get(key).await.unwrap().expect("the record exists");
    serde_json::from_slice(&bytes).unwrap()
}

async fn host(client: &async_nats::Client, name: &str) -> ServiceHost {
    ServiceHost::start(
        client.clone(),
        ServiceSpec {
            name: name.into(),
            version: "0.0.0".into(),
            description: "bench peer".into(),
            metadata: Default::default(),
            queue_group: name.into(),
            source: format!("toronto://agents/{name}"),
        },
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap()
}

/// A security peer that passes and a deployer that accepts at once, so that a plan
/// runs to its end in milliseconds.
async fn fake_peers(client: &async_nats::Client) -> Vec<ServiceHost> {
    let security = host(client, "bench-security").await;
    security
        .add_endpoint(
            "scan",
            "toronto.agents.security.v1.scan",
            |_r: Request<SecurityScanRequest>| async {
                Ok::<_, ErrorBody>(GateVerdict {
                    passed: true,
                    reason: None,
                    findings: None,
                })
            },
        )
        .await
        .unwrap();
    let deployer = host(client, "bench-deployer").await;
    deployer
        .add_endpoint(
            "rollout-start",
            format!("{V1}.deployer.rollout.start"),
            |r: Request<ExecuteRequest>| async move {
                Ok::<_, ErrorBody>(ExecuteAccepted {
                    reference: Some(r.data().idempotency_key.clone()),
                })
            },
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    vec![security, deployer]
}

fn deploy(service: String) -> DeployTask {
    DeployTask {
        service,
        version: "1.0.0".into(),
        image: None,
        environment: "dev".into(),
        strategy: Strategy::Rolling,
        change: None,
        fix: false,
        policy_override: None,
    }
}

/// Plans: submit, submit to the plan's end (`plan.completed`), and `plan.list`.
async fn plans(samples: usize) -> Vec<Row> {
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let settings = toronto_planner::Settings {
        promotion: Vec::new(),
        budget_environments: Vec::new(),
        approval_environments: Vec::new(),
        qa_environments: Vec::new(),
        ..Default::default()
    };
    let rt = toronto_planner::start_with(config(&server), settings, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let _peers = fake_peers(&client).await;
    let mut completed = client
        .subscribe(format!("{V1}.events.plan.completed"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("toronto_plans").await.unwrap();

    // One plan made and ended by the planner: the record the history copies.
    let first: SubmitAccepted = ask(&client, "planner.submit", deploy("svc-seed".into())).await;
    completed.next().await.expect("the first plan completes");
    let record: serde_json::Value = kv_json(&kv, &format!("plan.{}", first.plan_id)).await;
    let mut count = 1;

    let history = sizes(100);
    let (mut submit, mut end, mut list) = (
        [Duration::ZERO; 3],
        [Duration::ZERO; 3],
        [Duration::ZERO; 3],
    );
    for (level, target) in history.iter().enumerate() {
        seed(&kv, "plan", &record, |_| {}, &mut count, *target).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        submit[level] = time(samples, |i| {
            let client = client.clone();
            async move {
                let _: SubmitAccepted = ask(
                    &client,
                    "planner.submit",
                    deploy(format!("svc-{level}-s{i}")),
                )
                .await;
            }
        })
        .await;
        // Drain the completions of the plans just submitted.
        while tokio::time::timeout(Duration::from_millis(500), completed.next())
            .await
            .is_ok()
        {}
        let mut samples_end = Vec::new();
        for i in 0..samples {
            let t = Instant::now();
            let _: SubmitAccepted = ask(
                &client,
                "planner.submit",
                deploy(format!("svc-{level}-e{i}")),
            )
            .await;
            tokio::time::timeout(Duration::from_secs(30), completed.next())
                .await
                .expect("the plan completes")
                .unwrap();
            samples_end.push(t.elapsed());
        }
        end[level] = median(samples_end);
        list[level] = time(samples, |_| {
            let client = client.clone();
            async move {
                let page: Plans = ask(&client, "planner.plan.list", PlanList::default()).await;
                assert!(!page.plans.is_empty());
            }
        })
        .await;
        // Plans made while measuring count as history too.
        count += 3 * samples + 4;
    }
    shutdown.cancel();
    let _ = running.await;
    vec![
        Row {
            operation: "plan submit",
            history,
            unit: "plans",
            median: submit,
        },
        Row {
            operation: "plan submit to its end",
            history,
            unit: "plans",
            median: end,
        },
        Row {
            operation: "plan.list (first page)",
            history,
            unit: "plans",
            median: list,
        },
    ]
}

/// Rollouts: `rollout.start` and `rollout.list` on the simulated cluster.
async fn rollouts(samples: usize) -> (Vec<Row>, Rollout) {
    let server = NatsServer::start().await;
    let shutdown = CancellationToken::new();
    let settings = toronto_deployer::Settings::default();
    let started = toronto_deployer::start_with(config(&server), settings, None, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(started.runtime.run_until_shutdown());
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("toronto_rollouts").await.unwrap();
    let start = |client: async_nats::Client, service: String| async move {
        let request = ExecuteRequest {
            plan_id: Uuid::now_v7(),
            idempotency_key: Uuid::now_v7().to_string(),
            task: PlanTask::Deploy(Box::new(deploy(service))),
        };
        let accepted: ExecuteAccepted = ask(&client, "deployer.rollout.start", request).await;
        // "rollout <id>"
        let reference = accepted.reference.expect("a rollout reference");
        reference.trim_start_matches("rollout ").to_owned()
    };
    let first = start(client.clone(), "svc-seed".into()).await;
    let record: serde_json::Value = kv_json(&kv, &format!("rollout.{first}")).await;
    let rollout: Rollout = serde_json::from_value(record.clone()).unwrap();
    let ended = |r: &mut serde_json::Value| r["phase"] = serde_json::json!("succeeded");
    let mut count = 1;
    let history = sizes(100);
    let (mut starts, mut list) = ([Duration::ZERO; 3], [Duration::ZERO; 3]);
    // Every service timed below is deployed once first, so that each timed start is a
    // new version of a known service at every level (a first deploy costs more).
    for i in (0..samples).chain(1_000_000..1_000_002) {
        start(client.clone(), format!("svc-{i}")).await;
        count += 1;
    }
    // No rollout in flight when a level starts (a service takes one at a time, and the
    // simulated traffic of rollouts in flight costs CPU).
    let settle = |client: async_nats::Client| async move {
        for _ in 0..600 {
            let active = RolloutList {
                active: true,
                ..Default::default()
            };
            let page: Rollouts = ask(&client, "deployer.rollout.list", active).await;
            if page.rollouts.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("rollouts still in flight after 5 minutes");
    };
    settle(client.clone()).await;
    for (level, target) in history.iter().enumerate() {
        seed(&kv, "rollout", &record, ended, &mut count, *target).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The same services at every level: each service started is simulated (its
        // traffic costs CPU), so new ones per level would grow the cost with them.
        starts[level] = time(samples, |i| {
            let client = client.clone();
            async move {
                start(client, format!("svc-{i}")).await;
            }
        })
        .await;
        list[level] = time(samples, |_| {
            let client = client.clone();
            async move {
                let page: Rollouts =
                    ask(&client, "deployer.rollout.list", RolloutList::default()).await;
                assert!(!page.rollouts.is_empty());
            }
        })
        .await;
        count += samples + 2;
        settle(client.clone()).await;
    }
    shutdown.cancel();
    let _ = running.await;
    (
        vec![
            Row {
                operation: "rollout.start",
                history,
                unit: "rollouts",
                median: starts,
            },
            Row {
                operation: "rollout.list (first page)",
                history,
                unit: "rollouts",
                median: list,
            },
        ],
        rollout,
    )
}

fn alert(run: &str, i: usize) -> serde_json::Value {
    serde_json::json!({
        "labels": {
            "alertname": "HighErrorRate",
            "service": format!("svc-{run}-{i}"),
            "environment": "production",
            "severity": "page",
        },
        "annotations": { "summary": "error rate above 5%" },
        "startsAt": chrono::Utc::now().to_rfc3339(),
    })
}

/// Incidents: alert intake (HTTP post to `incident.opened`) and `incident.list`.
async fn incidents(samples: usize) -> Vec<Row> {
    let server = NatsServer::start().await;
    let mut config = config(&server);
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_incident_commander::start_with(
        config,
        toronto_incident_commander::settings::Settings::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/api/v2/alerts", rt.http_addr.unwrap());
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let mut opened = client
        .subscribe(format!("{V1}.events.incident.opened"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let http = reqwest::Client::new();
    let post = |alerts: Vec<serde_json::Value>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.post(&url).json(&alerts).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    // Wait until this replica owns the intake (its lease).
    for _ in 0..100 {
        let r = http
            .post(&url)
            .json(&Vec::<serde_json::Value>::new())
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = sizes(100);
    let mut count = 0;
    let (mut intake, mut list) = ([Duration::ZERO; 3], [Duration::ZERO; 3]);
    for (level, target) in history.iter().enumerate() {
        while count < *target {
            let batch: Vec<_> = (count..(*target).min(count + 100))
                .map(|i| alert("h", i))
                .collect();
            count += batch.len();
            post(batch).await;
        }
        // Every incident of the history is open before timing.
        let mut seen = 0;
        while seen < count {
            match tokio::time::timeout(Duration::from_secs(10), opened.next()).await {
                Ok(Some(_)) => seen += 1,
                _ => break,
            }
        }
        while tokio::time::timeout(Duration::from_millis(200), opened.next())
            .await
            .is_ok()
        {}
        let mut taken = Vec::new();
        for i in 0..samples + 2 {
            let t = Instant::now();
            post(vec![alert(&format!("m{level}"), i)]).await;
            tokio::time::timeout(Duration::from_secs(10), opened.next())
                .await
                .expect("the incident opens")
                .unwrap();
            if i >= 2 {
                taken.push(t.elapsed());
            }
        }
        intake[level] = median(taken);
        count += samples + 2;
        list[level] = time(samples, |_| {
            let client = client.clone();
            async move {
                let page: Incidents = ask(&client, "incident.list", IncidentList::default()).await;
                assert!(!page.incidents.is_empty());
            }
        })
        .await;
    }
    shutdown.cancel();
    let _ = running.await;
    vec![
        Row {
            operation: "alert intake to incident.opened",
            history,
            unit: "incidents",
            median: intake,
        },
        Row {
            operation: "incident.list (first page)",
            history,
            unit: "incidents",
            median: list,
        },
    ]
}

/// SLO evaluation: one evaluation of every SLO, per SLO.
fn slos() -> Row {
    use toronto_monitor::evaluate::{EvalSettings, SloEngine};
    use toronto_monitor::store::{Labels, Store, StoreLimits, now_ms};
    const SLO: &str = r#"
apiVersion: openslo/v1
kind: SLO
metadata:
  name: svc-NAME-availability
spec:
  service: svc-NAME
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: 0.999
  indicator:
    spec:
      ratioMetric:
        bad:
          metricSource: { type: Bus, spec: { query: 'http_errors{service="svc-NAME"}' } }
        total:
          metricSource: { type: Bus, spec: { query: 'http_requests{service="svc-NAME"}' } }
"#;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let history = sizes(100);
    let mut per_slo = [Duration::ZERO; 3];
    for (level, n) in history.iter().enumerate() {
        let store = std::sync::Arc::new(Store::new(StoreLimits::default()));
        let engine = SloEngine::new(
            store.clone(),
            None,
            EvalSettings {
                time_scale: 1.0,
                interval: Duration::from_secs(30),
                resolve_evaluations: 3,
                default_environment: "production".into(),
                retention: Duration::from_secs(900),
            },
            "bench".into(),
        );
        let now = now_ms();
        for i in 0..*n {
            engine.put(toronto_monitor::slo::parse(&SLO.replace("NAME", &i.to_string())).unwrap());
            let l: Labels = [("service".to_owned(), format!("svc-{i}"))].into();
            // Two minutes of 1 Hz ticks per service.
            store.insert_many(
                "http_requests",
                &l,
                (0..120).map(|s| (now - 120_000 + s * 1000, 100.0)),
            );
            store.insert_many(
                "http_errors",
                &l,
                (0..120).map(|s| (now - 120_000 + s * 1000, (s % 3) as f64)),
            );
        }
        rt.block_on(engine.evaluate_all());
        let mut samples = Vec::new();
        // More rounds where one is short, so the median is not one noisy round.
        for _ in 0..(2_000 / *n).clamp(5, 21) {
            let t = Instant::now();
            std::hint::black_box(rt.block_on(engine.evaluate_all()));
            samples.push(t.elapsed() / *n as u32);
        }
        per_slo[level] = median(samples);
    }
    Row {
        operation: "SLO evaluation (per SLO)",
        history,
        unit: "SLOs",
        median: per_slo,
    }
}

#[tokio::main]
async fn main() {
    toronto_runtime::auth::install_process_signer(toronto_testkit::test_identity());
    let samples = 20;
    println!(
        "{:<34} {:>7} {:>7} {:>8} {:<9} {:>9} {:>9} {:>9} {:>8}",
        "operation (median ms)", "1x", "10x", "100x", "history", "1x", "10x", "100x", "100x/1x"
    );
    // `BENCH_ONLY=plans|rollouts|incidents|slos|dora` runs one group.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wanted("plans") {
        for r in plans(samples).await {
            r.print();
        }
    }
    // DORA's history is copies of a rollout the deployer made.
    let mut rollout = None;
    if wanted("rollouts") || wanted("dora") {
        let (rows, made) = rollouts(samples).await;
        if wanted("rollouts") {
            for r in &rows {
                r.print();
            }
        }
        rollout = Some(made);
    }
    if wanted("incidents") {
        for r in incidents(samples).await {
            r.print();
        }
    }
    if wanted("slos") {
        // Its own runtime, on a thread of its own.
        tokio::task::spawn_blocking(slos).await.unwrap().print();
    }
    if let Some(rollout) = rollout.filter(|_| wanted("dora")) {
        for r in dora::dora(samples / 2, &rollout).await {
            r.print();
        }
    }
}
