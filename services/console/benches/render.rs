//! Page time of the console with a large history: 1,000 rollouts and 1,000 incidents
//! (and 1,000 plans), served by stand-in planner, deployer, monitor and incident
//! commander endpoints on a real nats-server (they answer list and get requests from
//! memory, honouring `limit` as the real ones do). Each page is fetched over HTTP from
//! the console many times; the figures are request to last byte, NATS round trips
//! included. Prints p50, p99 and max per page (goal: p99 < 50 ms), then the memory of
//! this process (the console plus the stand-ins and their history).
//!
//! `cargo bench -p toronto-console` (needs the pinned nats-server, see the testkit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use toronto_protocol::alerts::{SloEntries, SloEntry, SloList};
use toronto_protocol::incidents::{Incident, IncidentGet, IncidentList, Incidents};
use toronto_protocol::rollout::{Rollout, RolloutList, RolloutRef, Rollouts};
use toronto_protocol::status::{BuildInfo, Status, StatusRequest};
use toronto_protocol::tasks::{DoraQuery, DoraReport, Plan, PlanGet, PlanList, Plans};
use toronto_protocol::{ErrorBody, ErrorCode};
use toronto_runtime::{Config, Request};
use toronto_testkit::{NatsServer, fake_service};

const HISTORY: usize = 1000;
const RUNS: usize = 200;

fn at(minutes_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339()
}

fn rollout(i: usize) -> Rollout {
    let metric = |name: &str, outcome: &str| {
        json!({"name": name, "outcome": outcome, "critical": true,
               "canary": {"count": 30, "median": 0.02, "mean": 0.021},
               "baseline": {"count": 30, "median": 0.01, "mean": 0.011},
               "u": 310.0, "p_value": 0.03, "effect": 0.5,
               "reason": format!("canary <{name}> against baseline")})
    };
    let steps: Vec<_> = [10, 25, 50, 100]
        .iter()
        .enumerate()
        .map(|(n, w)| {
            json!({"id": format!("weight-{w}"), "kind": "weight", "weight": w,
            "pause_seconds": 60, "state": "done", "applied_at": at(40 - n as i64 * 5),
            "ready_at": at(39 - n as i64 * 5), "done_at": at(36 - n as i64 * 5)})
        })
        .collect();
    let analyses: Vec<_> = (0..3)
        .map(|n| json!({"step": format!("weight-{}", [10, 25, 50][n]), "source": "monitor",
            "verdict": {"service": format!("svc-{}", i % 20), "environment": "production",
                "outcome": "pass", "reason": "every metric passed",
                "metrics": [metric("http_error_ratio", "pass"), metric("latency_p99", "pass"), metric("saturation", "pass")],
                "analyzed_at": at(30)}}))
        .collect();
    serde_json::from_value(json!({
        "id": uuid::Uuid::now_v7(), "service": format!("svc-{}", i % 20), "environment": "production",
        "version": format!("1.{i}.0"), "image": format!("registry/svc:1.{i}.0"),
        "strategy": {"kind": "canary"}, "replicas": 4,
        "previous": {"version": format!("1.{}.0", i.saturating_sub(1)), "image": "registry/svc:old", "replicas": 4},
        "phase": if i.is_multiple_of(10) { "progressing" } else { "succeeded" },
        "steps": steps, "step_index": 3, "weight": if i.is_multiple_of(10) { 50 } else { 100 },
        "analyses": analyses, "idempotency_key": format!("k{i}"),
        "created_at": at(45), "updated_at": at(30), "finished_at": at(30)
    }))
    .unwrap()
}

fn incident(i: usize) -> Incident {
    let timeline: Vec<_> = (0..40)
        .map(|n| {
            let kind = ["alert", "page", "note", "escalated"][n as usize % 4];
            json!({"at": at(60 - n), "kind": kind,
            "by": "incident-commander", "text": format!("entry {n} <b>with markup</b>")})
        })
        .collect();
    let severity = ["sev1", "sev2", "sev3", "sev4"][i % 4];
    serde_json::from_value(json!({
        "id": uuid::Uuid::now_v7(), "key": format!("svc-{}", i % 20), "title": format!("errors on svc-{} <x>", i % 20),
        "service": format!("svc-{}", i % 20), "environment": "production", "services": [format!("svc-{}", i % 20)],
        "labels": {"alertname": "HighErrorRate", "team": "payments"},
        "state": if i.is_multiple_of(7) { "triggered" } else { "resolved" }, "severity": severity,
        "severity_reason": "rule", "alerts_firing": 1, "alerts_total": 3, "duplicates": 10,
        "fingerprints": ["a", "b"], "origin": "bus", "changes": [],
        "escalation": {"level": 1, "cycle": 0, "pages_sent": 3},
        "detected_at": at(61), "opened_at": at(60), "timeline": timeline, "version": 9
    }))
    .unwrap()
}

fn plan(i: usize) -> Plan {
    let steps: Vec<_> = [
        "policy",
        "error_budget",
        "security_scan",
        "qa_test",
        "approval",
        "execute",
    ]
    .iter()
    .map(|k| {
        json!({"id": k.replace('_', "-"), "kind": k, "state": "succeeded", "attempts": 1,
            "started_at": at(50), "finished_at": at(49), "reason": "passed"})
    })
    .collect();
    serde_json::from_value(json!({
        "id": uuid::Uuid::now_v7(), "task_id": uuid::Uuid::now_v7(),
        "task": {"kind": "deploy", "service": format!("svc-{}", i % 20), "version": format!("1.{i}.0"),
                 "environment": "production", "strategy": {"kind": "canary"}},
        "state": "completed", "requested_by": "toronto://agents/developer/dev-1", "correlationid": "c",
        "intake": "queue", "created_at": at(50), "steps": steps,
        "decisions": [{"by": "bob", "role": "operator", "approved": true, "at": at(49)}]
    }))
    .unwrap()
}

fn slo(i: usize) -> SloEntry {
    serde_json::from_value(json!({
        "definition": {"slo": "availability", "service": format!("svc-{i}"), "environment": "production",
            "objective": 0.999, "window_days": 30, "source": "bus", "error_ratio_query": "q"},
        "status": {"service": format!("svc-{i}"), "slo": "availability", "objective": 0.999,
            "budget_remaining": 0.7, "exhausted": false,
            "burn_rates": {"5m": 1.0, "30m": 0.9, "1h": 0.8, "2h": 0.7, "6h": 0.6, "1d": 0.5, "3d": 0.4},
            "evaluated_at": at(0)}
    }))
    .unwrap()
}

/// One page of `all` from the offset in `cursor`, and the next page's cursor (the
/// stand-ins page as the services do: `limit` rows, a cursor while more remain; only
/// the page's rows are cloned).
fn paged<'a, T: Clone + 'a>(
    all: impl Iterator<Item = &'a T>,
    limit: Option<usize>,
    cursor: Option<&str>,
) -> (Vec<T>, Option<String>) {
    let start = cursor.and_then(|c| c.parse().ok()).unwrap_or(0usize);
    let limit = limit.unwrap_or(50);
    let mut rows: Vec<T> = all.skip(start).take(limit + 1).cloned().collect();
    let next = (rows.len() > limit).then(|| (start + limit).to_string());
    rows.truncate(limit);
    (rows, next)
}

fn status(name: &str) -> Status {
    Status {
        service: name.into(),
        instance_id: "bench".into(),
        version: "0.0.1".into(),
        started_at: chrono::Utc::now(),
        uptime_seconds: 1.0,
        nats_connected: true,
        build: BuildInfo::current("0.0.1"),
        loops: Vec::new(),
        auth: Some("required".into()),
        lease: None,
    }
}

fn not_found() -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, "no such thing")
}

fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let rollouts: Arc<Vec<Rollout>> = Arc::new((0..HISTORY).map(rollout).rev().collect());
    let incidents: Arc<Vec<Incident>> = Arc::new((0..HISTORY).map(incident).rev().collect());
    let plans: Arc<Vec<Plan>> = Arc::new((0..HISTORY).map(plan).rev().collect());
    let slos: Arc<Vec<SloEntry>> = Arc::new((0..20).map(slo).collect());

    let deployer = fake_service(&client, "toronto-deployer", "toronto://devops/deployer").await;
    let r = rollouts.clone();
    deployer
        .add_endpoint(
            "rollout-list",
            "toronto.devops.v1.deployer.rollout.list",
            move |req: Request<RolloutList>| {
                let (r, q) = (r.clone(), req.data().clone());
                async move {
                    let all = r.iter().filter(|x| !q.active || !x.phase.is_final());
                    let (rows, next_cursor) = paged(all, q.limit, q.cursor.as_deref());
                    Ok::<_, ErrorBody>(Rollouts {
                        rollouts: rows,
                        next_cursor,
                    })
                }
            },
        )
        .await
        .unwrap();
    let r = rollouts.clone();
    deployer
        .add_endpoint(
            "rollout-get",
            "toronto.devops.v1.deployer.rollout.get",
            move |req: Request<RolloutRef>| {
                let (r, id) = (r.clone(), req.data().id);
                async move {
                    r.iter()
                        .find(|x| Some(x.id) == id)
                        .cloned()
                        .ok_or_else(not_found)
                }
            },
        )
        .await
        .unwrap();
    let incident_commander = fake_service(
        &client,
        "toronto-incident-commander",
        "toronto://devops/incident",
    )
    .await;
    let i = incidents.clone();
    incident_commander
        .add_endpoint(
            "list",
            "toronto.devops.v1.incident.list",
            move |req: Request<IncidentList>| {
                let (i, q) = (i.clone(), req.data().clone());
                async move {
                    let all = i.iter().filter(|x| !q.open || x.state.is_open());
                    let (rows, next_cursor) = paged(all, q.limit, q.cursor.as_deref());
                    Ok::<_, ErrorBody>(Incidents {
                        incidents: rows,
                        next_cursor,
                    })
                }
            },
        )
        .await
        .unwrap();
    let i = incidents.clone();
    incident_commander
        .add_endpoint(
            "get",
            "toronto.devops.v1.incident.get",
            move |req: Request<IncidentGet>| {
                let (i, id) = (i.clone(), req.data().id);
                async move { i.iter().find(|x| x.id == id).cloned().ok_or_else(not_found) }
            },
        )
        .await
        .unwrap();
    let planner = fake_service(&client, "toronto-planner", "toronto://devops/planner").await;
    let p = plans.clone();
    planner
        .add_endpoint(
            "plan-list",
            "toronto.devops.v1.planner.plan.list",
            move |req: Request<PlanList>| {
                let (p, q) = (p.clone(), req.data().clone());
                async move {
                    let (plans, next_cursor) = paged(p.iter(), q.limit, q.cursor.as_deref());
                    Ok::<_, ErrorBody>(Plans { plans, next_cursor })
                }
            },
        )
        .await
        .unwrap();
    let p = plans.clone();
    planner
        .add_endpoint(
            "plan-get",
            "toronto.devops.v1.planner.plan.get",
            move |req: Request<PlanGet>| {
                let (p, id) = (p.clone(), req.data().plan_id);
                async move { p.iter().find(|x| x.id == id).cloned().ok_or_else(not_found) }
            },
        )
        .await
        .unwrap();
    planner
        .add_endpoint(
            "dora",
            "toronto.devops.v1.planner.dora.get",
            |req: Request<DoraQuery>| {
                let q = req.data().clone();
                async move {
                    Ok::<_, ErrorBody>(DoraReport {
                        service: q.service,
                        environment: q.environment.unwrap_or_default(),
                        window_start: chrono::Utc::now(),
                        window_end: chrono::Utc::now(),
                        deployments: 40,
                        deployment_frequency_per_day: 1.3,
                        lead_time_median_seconds: Some(5400.0),
                        lead_time_mean_seconds: Some(6000.0),
                        failed_changes: 2,
                        failures_by_cause: Default::default(),
                        change_failure_rate: Some(0.05),
                        time_to_restore_median_seconds: Some(600.0),
                        trend: (0..q.weeks.unwrap_or(0))
                            .map(|_| toronto_protocol::tasks::DoraWeek {
                                start: chrono::Utc::now(),
                                end: chrono::Utc::now(),
                                deployments: 10,
                                failed_changes: 1,
                                lead_time_median_seconds: Some(5400.0),
                                time_to_restore_median_seconds: Some(600.0),
                            })
                            .collect(),
                    })
                }
            },
        )
        .await
        .unwrap();
    let monitor = fake_service(&client, "toronto-monitor", "toronto://devops/monitor").await;
    let s = slos.clone();
    monitor
        .add_endpoint(
            "slo-list",
            "toronto.devops.v1.monitor.slo.list",
            move |_req: Request<SloList>| {
                let s = s.clone();
                async move { Ok::<_, ErrorBody>(SloEntries { slos: s.to_vec() }) }
            },
        )
        .await
        .unwrap();
    for (host, name, token) in [
        (&deployer, "toronto-deployer", "deployer"),
        (
            &incident_commander,
            "toronto-incident-commander",
            "incident",
        ),
        (&planner, "toronto-planner", "planner"),
        (&monitor, "toronto-monitor", "monitor"),
    ] {
        let name = name.to_owned();
        host.add_endpoint(
            "status",
            format!("toronto.devops.v1.{token}.status"),
            move |_r: Request<StatusRequest>| {
                let s = status(&name);
                async move { Ok::<_, ErrorBody>(s) }
            },
        )
        .await
        .unwrap();
    }

    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let console = toronto_console::start_with(
        config,
        toronto_console::Settings::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", console.http_addr.unwrap());
    let http = reqwest::Client::new();
    println!(
        "console bench: {HISTORY} rollouts, {HISTORY} incidents, {HISTORY} plans in history; {RUNS} requests per page over HTTP (chat bridge absent: the overview's health shows it down)"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "page", "p50 ms", "p99 ms", "max ms", "KiB"
    );
    let pick = |n: usize| n * 7919 % HISTORY;
    type PathOf<'a> = Box<dyn Fn(usize) -> String + 'a>;
    let pages: Vec<(&str, PathOf)> = vec![
        ("overview", Box::new(|_| "/".into())),
        ("rollouts (page 1)", Box::new(|_| "/rollouts".into())),
        (
            "rollouts (page 20)",
            Box::new(|_| "/rollouts?page=19".into()),
        ),
        (
            "rollout",
            Box::new(|n| format!("/rollouts/{}", rollouts[pick(n)].id)),
        ),
        ("plans", Box::new(|_| "/plans".into())),
        (
            "plan",
            Box::new(|n| format!("/plans/{}", plans[pick(n)].id)),
        ),
        ("incidents", Box::new(|_| "/incidents".into())),
        (
            "incident",
            Box::new(|n| format!("/incidents/{}", incidents[pick(n)].id)),
        ),
        ("slos", Box::new(|_| "/slos".into())),
        ("dora", Box::new(|_| "/dora".into())),
    ];
    let mut worst = 0.0_f64;
    for (name, path) in &pages {
        for n in 0..5 {
            let res = http.get(format!("{base}{}", path(n))).send().await.unwrap();
            assert_eq!(res.status(), 200, "{name}");
            res.bytes().await.unwrap();
        }
        let mut times = Vec::with_capacity(RUNS);
        let mut size = 0;
        for n in 0..RUNS {
            let url = format!("{base}{}", path(n));
            let start = Instant::now();
            let res = http.get(url).send().await.unwrap();
            assert_eq!(res.status(), 200, "{name}");
            size = res.bytes().await.unwrap().len();
            times.push(start.elapsed());
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let p99 = ms(times[(RUNS * 99 / 100).min(RUNS - 1)]);
        worst = worst.max(p99);
        println!(
            "{name:<28} {:>9.2} {p99:>9.2} {:>9.2} {:>9}",
            ms(times[RUNS / 2]),
            ms(times[RUNS - 1]),
            size / 1024
        );
    }
    println!("worst p99: {worst:.2} ms (goal < 50 ms)");
    println!(
        "memory of this process (console + stand-ins + history): {}",
        rss()
    );
    shutdown.cancel();
    console.run_until_shutdown().await.unwrap();
}
