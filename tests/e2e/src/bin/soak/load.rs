//! The soak's load: `alert.firing` events published to the events stream at a steady
//! rate, and deploy tasks submitted to the planner at a steady rate, for a bounded
//! time ([`drive`]); then what became of every plan and event, and the latency of
//! `planner.submit` and `plan.get` ([`settle`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{StreamExt, stream};
use toronto_protocol::alerts::{Alert, AlertStatus};
use toronto_protocol::tasks::{DeployTask, Plan, PlanGet, PlanState, Strategy, SubmitAccepted};
use toronto_protocol::{Encoding, Envelope};
use toronto_testkit::Requester;
use uuid::Uuid;

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Load {
    /// How long the load runs.
    pub duration: Duration,
    /// `alert.firing` events per second.
    pub events_per_second: u64,
    /// Deploy tasks per minute.
    pub tasks_per_minute: u64,
    /// The services the tasks deploy (round robin), each task a new version.
    pub services: usize,
}

/// What the load did.
#[derive(Debug)]
pub struct Driven {
    elapsed: f64,
    published: u64,
    publish_errors: u64,
    events_before: u64,
    plans: Vec<Uuid>,
    submit_ms: Vec<f64>,
    submit_errors: u64,
}

impl Driven {
    /// Submits that were refused or timed out, and events not published.
    pub fn errors(&self) -> u64 {
        self.submit_errors + self.publish_errors
    }
}

/// What became of the plans.
#[derive(Debug, Default)]
pub struct Settled {
    /// Plans not completed (failed, cancelled, unfinished or unreadable).
    pub not_completed: u64,
}

fn alert(i: u64) -> Alert {
    let labels: BTreeMap<String, String> = [
        ("alertname", "SoakAlert".to_owned()),
        ("service", format!("soak-alerts-{}", i % 10)),
        ("environment", "soak".to_owned()),
        ("severity", "ticket".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Alert {
        fingerprint: toronto_protocol::alerts::fingerprint(&labels),
        status: AlertStatus::Firing,
        labels,
        annotations: BTreeMap::new(),
        burn_rates: BTreeMap::new(),
        budget_remaining: None,
        starts_at: Utc::now(),
        ends_at: None,
        generator: "toronto://soak".into(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: {} requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Runs the load for its duration; returns once the last submit is answered.
pub async fn drive(client: &async_nats::Client, planner: &Requester, load: &Load) -> Driven {
    let js = async_nats::jetstream::new(client.clone());
    let duration = load.duration;
    let events_before = stream_messages(&js, "TORONTO_DEVOPS_EVENTS").await;
    let started = Instant::now();

    // Events: batches every 10 ms.
    let published = Arc::new(AtomicU64::new(0));
    let publish_errors = Arc::new(AtomicU64::new(0));
    let events = {
        let (client, published, publish_errors) =
            (client.clone(), published.clone(), publish_errors.clone());
        let rate = load.events_per_second as f64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut i = 0u64;
            while started.elapsed() < duration {
                tick.tick().await;
                // As many as the rate asks for by now: a slow tick is caught up.
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                while i < due {
                    let envelope = Envelope::builder("toronto://soak", alert(i)).build();
                    i += 1;
                    let Ok(bytes) = toronto_protocol::encode(&envelope, Encoding::Json) else {
                        continue;
                    };
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Content-Type", Encoding::Json.content_type());
                    headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
                    match client
                        .publish_with_headers(
                            "toronto.devops.v1.events.alert.firing",
                            headers,
                            bytes.into(),
                        )
                        .await
                    {
                        Ok(()) => published.fetch_add(1, Ordering::Relaxed),
                        Err(_) => publish_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
            let _ = client.flush().await;
        })
    };

    // Tasks: one every 60 / tasks-per-minute seconds, round robin over the services,
    // each submitted without waiting for the one before.
    let mut submits = tokio::task::JoinSet::new();
    let every = Duration::from_secs_f64(60.0 / load.tasks_per_minute.max(1) as f64);
    let mut tick = tokio::time::interval(every);
    let mut n = 0usize;
    while started.elapsed() < duration {
        tick.tick().await;
        let task = DeployTask {
            service: format!("soak-{}", n % load.services.max(1)),
            version: format!("1.0.{n}"),
            image: None,
            environment: "staging".into(),
            strategy: Strategy::Rolling,
            change: None,
            fix: false,
            policy_override: None,
        };
        n += 1;
        let planner = planner.clone();
        submits.spawn(async move {
            let t = Instant::now();
            planner
                .request::<_, SubmitAccepted>("submit", task)
                .await
                .map(|a| (a.plan_id, t.elapsed().as_secs_f64() * 1000.0))
        });
    }
    let mut driven = Driven {
        elapsed: 0.0,
        published: 0,
        publish_errors: 0,
        events_before,
        plans: Vec::new(),
        submit_ms: Vec::new(),
        submit_errors: 0,
    };
    while let Some(done) = submits.join_next().await {
        match done {
            Ok(Ok((id, ms))) => {
                driven.plans.push(id);
                driven.submit_ms.push(ms);
            }
            Ok(Err(e)) => {
                driven.submit_errors += 1;
                eprintln!("submit failed: {e}");
            }
            Err(e) => {
                driven.submit_errors += 1;
                eprintln!("submit task failed: {e}");
            }
        }
    }
    if let Err(e) = events.await {
        eprintln!("the event publisher failed: {e}");
    }
    driven.elapsed = started.elapsed().as_secs_f64();
    driven.published = published.load(Ordering::Relaxed);
    driven.publish_errors = publish_errors.load(Ordering::Relaxed);
    driven
}

/// How many `plan.get` requests the settling reads keep in flight.
const READS_IN_FLIGHT: usize = 32;

/// Waits up to `within` for the last plans to finish, reads every plan and prints
/// the load's figures.
pub async fn settle(
    client: &async_nats::Client,
    planner: &Requester,
    driven: Driven,
    within: Duration,
) -> Settled {
    let js = async_nats::jetstream::new(client.clone());
    let settle = Instant::now();
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let mut get_ms = Vec::new();
    let mut pending: Vec<Uuid> = driven.plans.clone();
    while !pending.is_empty() && settle.elapsed() < within {
        // Many reads in flight: one at a time, a thousand plans took minutes per pass.
        let read: Vec<(Uuid, Option<Plan>, f64)> = stream::iter(pending)
            .map(|id| async move {
                let t = Instant::now();
                let plan = planner
                    .request::<_, Plan>("plan.get", PlanGet { plan_id: id })
                    .await
                    .ok();
                (id, plan, t.elapsed().as_secs_f64() * 1000.0)
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .collect()
            .await;
        let mut still = Vec::new();
        for (id, plan, ms) in read {
            match plan {
                Some(p) => {
                    get_ms.push(ms);
                    if !p.state.is_final() {
                        still.push(id);
                    }
                }
                None => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // Why plans failed, by reason (its first 120 characters).
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut settled = Settled::default();
    let last: Vec<Option<Plan>> = stream::iter(&driven.plans)
        .map(|id| async move {
            planner
                .request::<_, Plan>("plan.get", PlanGet { plan_id: *id })
                .await
                .ok()
        })
        .buffered(READS_IN_FLIGHT)
        .collect()
        .await;
    for plan in last {
        let state = match plan {
            Some(p) if p.state == PlanState::Completed => "completed".to_owned(),
            Some(p) => {
                if p.state == PlanState::Failed {
                    let reason: String = p.reason.unwrap_or_default().chars().take(120).collect();
                    *failures.entry(reason).or_default() += 1;
                }
                format!("{:?}", p.state).to_lowercase()
            }
            None => "unreadable".to_owned(),
        };
        if state != "completed" {
            settled.not_completed += 1;
        }
        *states.entry(state).or_default() += 1;
    }
    let stored = stream_messages(&js, "TORONTO_DEVOPS_EVENTS")
        .await
        .saturating_sub(driven.events_before);
    let elapsed = driven.elapsed;
    println!("ran {elapsed:.0} s");
    println!(
        "events: {} published ({:.0}/s), {} publish errors; events stream grew by {stored} (alerts plus the stack's own events)",
        driven.published,
        driven.published as f64 / elapsed,
        driven.publish_errors,
    );
    println!(
        "tasks: {} submitted ({:.1}/min), {} refused or timed out",
        driven.plans.len(),
        driven.plans.len() as f64 / elapsed * 60.0,
        driven.submit_errors
    );
    println!("plans: {states:?}");
    for (reason, n) in &failures {
        println!("  failed ({n}): {reason}");
    }
    summary("planner.submit", driven.submit_ms);
    summary("planner.plan.get", get_ms);
    settled
}
