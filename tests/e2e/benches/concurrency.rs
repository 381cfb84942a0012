//! Concurrency at scale: many canary rollouts in flight at once on the simulated
//! cluster, each analysed every second, with the deployer and the monitor running as
//! their own processes on a real nats-server. Prints the analysis latency (request to
//! verdict, timed by a third party listening on the bus), how punctual the analyses were
//! (the gap between two analyses of one rollout), and the CPU each process used.
//! Asserts nothing.
//!
//! Run: `cargo bench -p toronto-e2e --bench concurrency`. `BENCH_ROLLOUTS` (default 100)
//! and `BENCH_SECONDS` (default 30, the measured stretch) change the load.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::process::{Child, Command};
use toronto_protocol::analysis::CanaryAnalyze;
use toronto_protocol::tasks::{
    CanaryStep, DeployTask, ExecuteAccepted, ExecuteRequest, PlanTask, Strategy,
};
use toronto_protocol::{Encoding, decode};
use toronto_testkit::{NatsServer, Requester};
use uuid::Uuid;

/// Time between two analyses of one rollout (`BENCH_INTERVAL_MS`, default 1000): the
/// deployer's analysis interval and its sequential test's interval both, so that each
/// rollout is analysed once per interval, the sequential test included.
fn interval() -> Duration {
    Duration::from_millis(env_number("BENCH_INTERVAL_MS", 1000))
}
/// Requests about one rollout closer than this belong to one analysis round.
const ROUND: Duration = Duration::from_millis(100);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One service process (the e2e test fixture running the real service).
async fn spawn(kind: &str, url: &str, pause: u64) -> Child {
    let log = std::env::temp_dir().join(format!(
        "toronto-bench-concurrency-{}-{kind}.log",
        std::process::id()
    ));
    let stderr = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_test_service"))
        .arg(kind)
        .envs([
            ("TORONTO_NATS_URL", url.to_owned()),
            ("TORONTO_HTTP_ADDR", String::new()),
            ("TORONTO_LOG", "warn".into()),
            ("TORONTO_LOG_FORMAT", "text".into()),
            (
                "TORONTO_DEPLOYER_ANALYSIS_INTERVAL_MS",
                interval().as_millis().to_string(),
            ),
            (
                "TORONTO_DEPLOYER_SEQUENTIAL_INTERVAL_MS",
                interval().as_millis().to_string(),
            ),
            ("TORONTO_DEPLOYER_FIRST_DEPLOY_PAUSE_SECONDS", "1".into()),
            ("TORONTO_DEPLOYER_STEP_PAUSE_SECONDS", pause.to_string()),
            ("TORONTO_DEPLOYER_DRIFT_INTERVAL_SECONDS", "0".into()),
            ("TORONTO_DEPLOYER_SIM_POD_START_MS", "100".into()),
            ("TORONTO_DEPLOYER_SCALE_DOWN_DELAY_SECONDS", "1".into()),
        ])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncBufReadExt;
        while out.read_line(&mut line).await.unwrap() > 0 {
            if line.starts_with("instance ") {
                return;
            }
            line.clear();
        }
        panic!("{kind} ended; see {}", log.display());
    })
    .await
    .unwrap_or_else(|_| panic!("{kind} did not start; see {}", log.display()));
    child
}

/// CPU time (user + system) a process has used so far.
fn cpu(child: &Child) -> Duration {
    let pid = child.id().expect("running");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

fn deploy(service: &str, version: &str, pause: u64) -> ExecuteRequest {
    ExecuteRequest {
        plan_id: Uuid::now_v7(),
        idempotency_key: Uuid::now_v7().to_string(),
        task: PlanTask::Deploy(Box::new(DeployTask {
            service: service.into(),
            version: version.into(),
            image: None,
            environment: "staging".into(),
            strategy: Strategy::Canary {
                steps: [10, 50]
                    .into_iter()
                    .map(|weight| CanaryStep {
                        weight,
                        pause_seconds: Some(pause),
                    })
                    .collect(),
            },
            change: None,
            fix: false,
            policy_override: None,
        })),
    }
}

/// Starts one deploy of every service, sixteen requests at a time; the ids of the
/// rollouts.
async fn wave(deployer: &Requester, services: &[String], version: &str, pause: u64) -> Vec<String> {
    futures::stream::iter(services.iter().cloned())
        .map(|service| {
            let (deployer, version) = (deployer.clone(), version.to_owned());
            async move {
                let request = deploy(&service, &version, pause);
                // The service's slot frees a moment after its last rollout's final event.
                let mut tries = 0;
                let accepted: ExecuteAccepted = loop {
                    match deployer.request("rollout.start", request.clone()).await {
                        Ok(accepted) => break accepted,
                        // The same request again (its idempotency key makes it one
                        // rollout) when the deployer was too busy to answer in time.
                        Err(e)
                            if tries < 50
                                && (e.to_string().contains("still running")
                                    || e.to_string().contains("did not answer")) =>
                        {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("rollout.start of {service}: {e}"),
                    }
                };
                let reference = accepted.reference.expect("a rollout reference");
                reference.trim_start_matches("rollout ").to_owned()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

async fn wait_ended(ended: &mut async_nats::Subscriber, ids: &[String], limit: Duration) -> usize {
    let mut open: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let deadline = tokio::time::Instant::now() + limit;
    while !open.is_empty() {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, ended.next()).await else {
            break;
        };
        let last = m.subject.as_str().rsplit('.').next().unwrap_or_default();
        if !matches!(last, "succeeded" | "aborted" | "failed") {
            continue;
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload)
            && let Some(id) = v["data"]["id"].as_str()
        {
            open.remove(id);
        }
    }
    ids.len() - open.len()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let rollouts = env_number("BENCH_ROLLOUTS", 100) as usize;
    let seconds = env_number("BENCH_SECONDS", 30);
    // Each canary step lasts longer than the measured stretch plus the time to start
    // every rollout, so that all of them are in flight while it is measured.
    let pause = seconds + 60;
    let server = NatsServer::start().await;
    let url = server.url();
    let monitor = spawn("monitor", &url, pause).await;
    let deployer_proc = spawn("deployer", &url, pause).await;
    let client = server.client().await;
    let deployer = Requester::service(client.clone(), "deployer")
        .signed_by(toronto_testkit::test_identity())
        .with_timeout(Duration::from_secs(10));
    let services: Vec<String> = (0..rollouts).map(|i| format!("svc-{i}")).collect();
    let mut ended = client
        .subscribe("toronto.devops.v1.events.rollout.*")
        .await
        .unwrap();

    // Every service's first deploy, so that the canaries have a baseline.
    let first = wave(&deployer, &services, "1.0.0", pause).await;
    let done = wait_ended(&mut ended, &first, Duration::from_secs(300)).await;
    println!("first deploys ended: {done} of {rollouts}");
    // The rollouts' slots are released just after their final events.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The canaries, observed on the bus: every analysis request and its reply.
    // An observer on its own connection, which only timestamps what it hears (every
    // analysis request, and every reply to anyone) in two tasks; the requests are
    // matched and decoded after the stretch, so that the observer's own work does
    // not delay what it times.
    let observer = server.client().await;
    let asks = observer
        .subscribe("toronto.devops.v1.monitor.canary.analyze")
        .await
        .unwrap();
    let replies = observer.subscribe("_INBOX.>").await.unwrap();
    let recording = tokio_util::sync::CancellationToken::new();
    let record = |mut sub: async_nats::Subscriber, token: tokio_util::sync::CancellationToken| {
        tokio::spawn(async move {
            let mut heard: Vec<(Instant, async_nats::Message)> = Vec::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => return heard,
                    m = sub.next() => match m {
                        Some(m) => heard.push((Instant::now(), m)),
                        None => return heard,
                    },
                }
            }
        })
    };
    let started_at = Instant::now();
    let canaries = wave(&deployer, &services, "2.0.0", pause).await;
    println!(
        "{} canaries started in {:.1} s",
        canaries.len(),
        started_at.elapsed().as_secs_f64()
    );
    // Let every canary reach its first analysis, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (asks, replies) = (
        record(asks, recording.clone()),
        record(replies, recording.clone()),
    );
    let cpu_start = (cpu(&deployer_proc), cpu(&monitor));
    let measured_from = Instant::now();
    // Requests sent before the stretch wait in the subscriptions' buffers until the
    // recorders start: they are told apart by the time the deployer sent them.
    let sent_from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu_end = (cpu(&deployer_proc), cpu(&monitor));
    let measured_to = Instant::now();
    let wall = measured_to - measured_from;
    // Replies to the last requests may come a moment after the stretch.
    let stop = recording.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
    });
    recording.cancelled().await;
    let (asks, replies) = (asks.await.unwrap(), replies.await.unwrap());
    // Timed by the envelopes' own `time` (set by the deployer as it sends a request,
    // by the monitor as it answers), so that when the observer hears them does not
    // matter.
    let sent_at = |payload: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["time"].as_str().map(str::to_owned))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let answered: HashMap<String, async_nats::Message> = replies
        .into_iter()
        .rev()
        .map(|(_, m)| (m.subject.to_string(), m))
        .collect();
    let mut requests: Vec<(chrono::DateTime<chrono::Utc>, String, Option<Duration>)> = asks
        .into_iter()
        .filter(|(heard, _)| *heard <= measured_to)
        .filter_map(|(_, m)| {
            let envelope = decode::<CanaryAnalyze>(&m.payload, Encoding::Json).ok()?;
            let at = envelope.time.filter(|at| *at >= sent_from)?;
            let rollout = envelope.data.rollout_id?.to_string();
            let latency = m
                .reply
                .as_ref()
                .and_then(|r| answered.get(r.as_str()))
                .and_then(|reply| sent_at(&reply.payload))
                .and_then(|answered_at| (answered_at - at).to_std().ok());
            Some((at, rollout, latency))
        })
        .collect();
    requests.sort_by_key(|r| r.0);
    let asked = requests.len();
    let mut latencies = Vec::new();
    let mut last_by_rollout: BTreeMap<String, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    let mut gaps = Vec::new();
    let mut rounds = 0usize;
    // Requests that joined a round already asked.
    let mut doubled = 0usize;
    for (at, rollout, latency) in requests {
        // Requests of one rollout less than 100 ms apart are one round.
        match last_by_rollout.get(&rollout) {
            Some(before) if (at - *before).to_std().unwrap_or_default() < ROUND => doubled += 1,
            Some(before) => {
                gaps.push((at - *before).to_std().unwrap_or_default());
                last_by_rollout.insert(rollout.clone(), at);
                rounds += 1;
            }
            None => {
                last_by_rollout.insert(rollout.clone(), at);
                rounds += 1;
            }
        }
        latencies.extend(latency);
    }

    let in_flight = last_by_rollout.len();
    latencies.sort();
    gaps.sort();
    let late = gaps
        .iter()
        .filter(|g| **g > interval() + interval() / 2)
        .count();
    let expected = (in_flight as f64 * wall.as_secs_f64() / interval().as_secs_f64()) as usize;
    println!();
    println!(
        "{rollouts} canaries, analysis every {} ms, {} s measured on {} cores",
        interval().as_millis(),
        seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<44} {:>10}", "figure", "value");
    println!(
        "{:<44} {:>10}",
        "rollouts analysed in the stretch", in_flight
    );
    println!(
        "{:<44} {:>10}",
        "analysis rounds (expected: 1/s per rollout)",
        format!("{rounds} / {expected}")
    );
    println!(
        "{:<44} {:>10}",
        "canary.analyze requests answered",
        latencies.len()
    );
    println!(
        "{:<44} {:>10}",
        "analyses unanswered",
        asked - latencies.len()
    );
    println!("{:<44} {:>10}", "requests beyond one per round", doubled);
    println!(
        "{:<44} {:>10}",
        "analysis latency p50 (ms)",
        ms(percentile(&latencies, 0.5))
    );
    println!(
        "{:<44} {:>10}",
        "analysis latency p99 (ms)",
        ms(percentile(&latencies, 0.99))
    );
    println!(
        "{:<44} {:>10}",
        "analysis latency max (ms)",
        ms(percentile(&latencies, 1.0))
    );
    println!(
        "{:<44} {:>10}",
        "gap between rounds p50 (ms)",
        ms(percentile(&gaps, 0.5))
    );
    println!(
        "{:<44} {:>10}",
        "gap between rounds p99 (ms)",
        ms(percentile(&gaps, 0.99))
    );
    println!(
        "{:<44} {:>10}",
        "rounds late (gap > 1.5 x interval)",
        format!("{late} of {}", gaps.len())
    );
    for (name, (a, b)) in [
        ("deployer", (cpu_start.0, cpu_end.0)),
        ("monitor", (cpu_start.1, cpu_end.1)),
    ] {
        println!(
            "{:<44} {:>10}",
            format!("{name} CPU (% of one core)"),
            format!("{:.0}", (b - a).as_secs_f64() / wall.as_secs_f64() * 100.0)
        );
    }
    println!(
        "{:<44} {:>10}",
        "load average (1 min) at the end",
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default()
    );
    // CPU per analysis: a figure that another load on the machine changes little.
    for (name, (a, b)) in [
        ("deployer", (cpu_start.0, cpu_end.0)),
        ("monitor", (cpu_start.1, cpu_end.1)),
    ] {
        println!(
            "{:<44} {:>10}",
            format!("{name} CPU per analysis (ms)"),
            format!(
                "{:.2}",
                (b - a).as_secs_f64() * 1000.0 / latencies.len().max(1) as f64
            )
        );
    }
    let goal = percentile(&latencies, 0.99) < Duration::from_millis(50) && late == 0;
    println!(
        "goal (every analysis on time, p99 under 50 ms): {}",
        if goal { "met" } else { "NOT met" }
    );
    let _ = wait_ended(&mut ended, &canaries, Duration::from_millis(10)).await;
    drop((deployer_proc, monitor));
}
