//! One function per fault: it runs the flow on its own service, injects the fault,
//! and answers its row of the table.

use std::time::Duration;

use toronto_protocol::tasks::{Plan, PlanState, StepState};
use toronto_testkit::NatsServer;

use super::Row;
use super::harness::{Cluster, ESCALATION_DEADLINE, completed, spawn};

const PLAN_WITHIN: Duration = Duration::from_secs(120);

fn row(fault: &'static str, checked: &'static str, result: Result<String, String>) -> Row {
    Row {
        fault,
        checked,
        result,
    }
}

/// The holder of lease `key` in `bucket`, if any.
pub(super) async fn lease_holder(cluster: &Cluster, bucket: &str, key: &str) -> Option<String> {
    let js = async_nats::jetstream::new(cluster.client.clone());
    let kv = js.get_key_value(bucket).await.ok()?;
    let value = kv.get(key).await.ok()??;
    let record: serde_json::Value = serde_json::from_slice(&value).ok()?;
    record["holder"].as_str().map(str::to_owned)
}

/// What is done to the running stack once a canary is through its first step.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Nothing,
    KillDeployer,
    KillMonitor,
    KillIncidentCommander,
    RestartNats,
    KillTrafficPublisher,
    KillNatsNode,
}

/// Injects `fault` while `rollout` runs; a note for the table.
async fn inject(
    c: &mut Cluster,
    fault: Fault,
    rollout: toronto_protocol::rollout::Rollout,
) -> Result<String, String> {
    match fault {
        Fault::Nothing => Ok("no fault".into()),
        Fault::KillDeployer => {
            let killed = match rollout.lease.map(|l| l.owner) {
                Some(id) if c.kill(&id).await.is_some() => "the owning deployer",
                _ => {
                    c.kill_one("deployer").await;
                    "a deployer (owner unknown)"
                }
            };
            c.add("deployer").await;
            Ok(format!("killed {killed} at step 1"))
        }
        Fault::KillMonitor => {
            let holder = lease_holder(c, "toronto_leases", toronto_monitor::replica::LEASE).await;
            let killed = match holder {
                Some(id) if c.kill(&id).await.is_some() => "the lease-holding monitor",
                _ => {
                    c.kill_one("monitor").await;
                    "a monitor"
                }
            };
            c.add("monitor").await;
            Ok(format!("killed {killed} during canary analysis"))
        }
        Fault::KillIncidentCommander => {
            let lease = toronto_incident_commander::replica::LEASE;
            let Some(before) = lease_holder(c, "toronto_leases", lease).await else {
                return Err("no incident commander holds its lease".into());
            };
            c.kill(&before).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                match lease_holder(c, "toronto_leases", lease).await {
                    Some(now) if now != before => break,
                    _ if tokio::time::Instant::now() > deadline => {
                        return Err("the standby never took the lease".into());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            c.add("incident-commander").await;
            Ok("killed the lease holder; the standby took over".into())
        }
        Fault::RestartNats => {
            let server = c.server.as_mut().ok_or("no single nats-server")?;
            server.restart().await;
            Ok("nats-server restarted at step 1".into())
        }
        Fault::KillNatsNode => {
            let nodes = c.nodes.as_mut().ok_or("no NATS cluster")?;
            nodes.kill(0).await;
            Ok("node 0 of 3 killed at step 1".into())
        }
        Fault::KillTrafficPublisher => {
            let lease = toronto_deployer::sim::TRAFFIC_LEASE;
            let Some(holder) = lease_holder(c, "toronto_rollouts", lease).await else {
                return Err("nobody generates the simulated traffic".into());
            };
            c.kill(&holder).await;
            c.add("deployer").await;
            Ok("killed the deployer publishing the simulated metrics".into())
        }
    }
}

/// A canary of `service` 1.1.0 after its baseline, with `fault` injected once the
/// rollout is through its first step; then the plan must complete with every step
/// applied once.
async fn canary_with(cluster: &mut Cluster, service: &str, fault: Fault) -> Result<String, String> {
    cluster.baseline(service).await?;
    let plan = cluster.submit(service, "1.1.0", &[25, 50, 100]).await?;
    let rollout = cluster.rollout_at(service, "1.1.0", 1).await?;
    let note = inject(cluster, fault, rollout).await?;
    completed(cluster.plan_end(plan, PLAN_WITHIN).await?)?;
    let once = cluster.once_each(service, 2).await?;
    Ok(format!("{note}; {once}"))
}

pub async fn two_replicas(cluster: &mut Cluster) -> Row {
    row(
        "none: two replicas of every service",
        "plan completes; one rollout per plan; each step applied once",
        canary_with(cluster, "pair", Fault::Nothing).await,
    )
}

pub async fn kill_deployer_mid_rollout(cluster: &mut Cluster) -> Row {
    row(
        "kill -9 deployer mid-rollout",
        "another replica finishes the rollout; each step applied once",
        canary_with(cluster, "kdeploy", Fault::KillDeployer).await,
    )
}

pub async fn kill_planner_mid_plan(cluster: &mut Cluster) -> Row {
    let result = async {
        // The security agent takes a second over `slow-*` services: the plan is in
        // its security gate, its lease held by the planner asking, all that while.
        let service = "slow-kplan";
        cluster.baseline(service).await?;
        let plan = cluster.submit(service, "1.1.0", &[50, 100]).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last = None;
        let owner = loop {
            if let Some(p) = cluster.plan(plan).await {
                let gate = p.steps.iter().find(|s| s.id == "security-scan");
                if let (Some(lease), Some(StepState::Running)) = (&p.lease, gate.map(|s| s.state)) {
                    break lease.owner.clone();
                }
                if p.state.is_final() {
                    return Err(format!(
                        "the plan ended {:?} before its security gate was seen",
                        p.state
                    ));
                }
                last = Some(format!("{:?}: {}", p.state, steps_of(&p)));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the plan never sat in its security gate within 30 s (last: {last:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if cluster.kill(&owner).await.is_none() {
            return Err(format!("no planner process is instance {owner}"));
        }
        cluster.add("planner").await;
        // The replica takes the plan over once the dead owner's lease runs out, and
        // asks the security agent again (the same idempotency key).
        let end = cluster.plan_end(plan, Duration::from_secs(40)).await?;
        let steps = steps_of(&end);
        completed(end)?;
        // The baseline's rollout and the plan's.
        let once = cluster.once_each(service, 2).await?;
        Ok(format!(
            "killed the planner holding the plan in its security gate; {steps}; {once}"
        ))
    }
    .await;
    row(
        "kill -9 planner mid-plan",
        "another replica carries the plan on; one rollout; each step once",
        result,
    )
}

/// A plan's steps and their states, in one line.
fn steps_of(plan: &Plan) -> String {
    plan.steps
        .iter()
        .map(|s| format!("{} {:?} x{}", s.id, s.state, s.attempts))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn kill_monitor_mid_analysis(cluster: &mut Cluster) -> Row {
    row(
        "kill -9 monitor mid-analysis",
        "analysis goes on without it; the rollout completes; each step once",
        canary_with(cluster, "kmon", Fault::KillMonitor).await,
    )
}

pub async fn kill_incident_commander(cluster: &mut Cluster) -> Row {
    row(
        "kill -9 incident commander (lease holder) mid-rollout",
        "the standby takes the lease; the flow completes",
        canary_with(cluster, "kinc", Fault::KillIncidentCommander).await,
    )
}

pub async fn nats_restart_mid_rollout(cluster: &mut Cluster) -> Row {
    row(
        "nats-server restart mid-rollout",
        "every service reconnects; the plan completes; each step once",
        canary_with(cluster, "natsrs", Fault::RestartNats).await,
    )
}

pub async fn metrics_source_disappears(cluster: &mut Cluster) -> Row {
    row(
        "the metrics source disappears mid-canary",
        "another replica publishes the metrics; the rollout completes; each step once",
        canary_with(cluster, "metrics", Fault::KillTrafficPublisher).await,
    )
}

/// A gate whose peer misbehaves must fail the plan with its reason, in time, and
/// start no rollout.
async fn bad_peer(cluster: &Cluster, service: &str) -> Result<String, String> {
    let plan = cluster.submit(service, "1.0.0", &[]).await?;
    let end = cluster.plan_end(plan, Duration::from_secs(30)).await?;
    if end.state != PlanState::Failed {
        return Err(format!("plan ended {:?}, not failed", end.state));
    }
    if cluster.applied(service).await.is_ok() {
        return Err("a rollout started after a failed gate".into());
    }
    Ok(format!(
        "plan failed: {}",
        end.reason.unwrap_or_default().replace('|', "/")
    ))
}

pub async fn silent_peer(cluster: &mut Cluster) -> Row {
    row(
        "a peer (security agent) that never answers",
        "the gate fails closed at its deadline; no rollout",
        bad_peer(cluster, "silent-svc").await,
    )
}

pub async fn garbage_peer(cluster: &mut Cluster) -> Row {
    row(
        "a peer that answers garbage",
        "the gate fails with the decode error; no rollout",
        bad_peer(cluster, "garbage-svc").await,
    )
}

pub async fn started_before_nats() -> Row {
    let result = async {
        let mut server = NatsServer::start().await;
        server.stop().await;
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("deployer.log");
        let url = server.url();
        let starting = tokio::spawn(async move { spawn("deployer", &url, &log).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        if starting.is_finished() {
            return Err("the deployer started without NATS?".to_owned());
        }
        server.start_again().await;
        let proc = tokio::time::timeout(Duration::from_secs(60), starting)
            .await
            .map_err(|_| "the deployer never came up once NATS did".to_owned())?
            .map_err(|e| format!("the deployer exited: {e}"))?;
        let client = server.client().await;
        let status = toronto_testkit::Requester::service(client, "deployer")
            .with_timeout(Duration::from_secs(5))
            .request::<_, toronto_protocol::status::Status>(
                "status",
                toronto_protocol::status::StatusRequest::default(),
            )
            .await
            .map_err(|e| format!("status: {e}"))?;
        drop(proc);
        Ok(format!("instance {} answered status", status.instance_id))
    }
    .await;
    row(
        "a service started before NATS is up",
        "it waits, connects when NATS comes up, and serves",
        result,
    )
}

pub async fn three_node_cluster_loses_a_node() -> Row {
    let mut cluster = Cluster::start_on_three_nodes().await;
    let result = canary_with(&mut cluster, "rthree", Fault::KillNatsNode).await;
    cluster.stop().await;
    row(
        "a 3-node NATS cluster (R3 streams and KV) loses a node mid-rollout",
        "services carry on through the other nodes; the plan completes; each step once",
        result,
    )
}

/// The next page seen within `within`.
async fn next_page(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, std::time::Instant)>,
    within: Duration,
) -> Option<(usize, std::time::Instant)> {
    tokio::time::timeout(within, seen.recv())
        .await
        .ok()
        .flatten()
}

/// Pages seen on the bus (only this case opens incidents): (level, when).
async fn pages(
    client: &async_nats::Client,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<(usize, std::time::Instant)>, String> {
    use futures::StreamExt;
    let mut sub = client
        .subscribe("toronto.devops.v1.events.page.sent")
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(e) = toronto_protocol::decode::<toronto_protocol::incidents::Page>(
                &m.payload,
                toronto_protocol::Encoding::Json,
            ) {
                let _ = tx.send((e.data.level.unwrap_or(0), std::time::Instant::now()));
            }
        }
    });
    Ok(rx)
}

pub async fn kill_incident_commander_mid_escalation(cluster: &mut Cluster) -> Row {
    let result = async {
        let mut seen = pages(&cluster.client).await?;
        let labels: std::collections::BTreeMap<String, String> = [
            ("alertname", "Down"),
            ("service", "escalate"),
            ("environment", "staging"),
            ("severity", "page"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let alert = toronto_protocol::alerts::Alert {
            fingerprint: toronto_protocol::alerts::fingerprint(&labels),
            status: toronto_protocol::alerts::AlertStatus::Firing,
            labels,
            annotations: Default::default(),
            burn_rates: Default::default(),
            budget_remaining: None,
            starts_at: chrono::Utc::now(),
            ends_at: None,
            generator: "toronto://fault-suite".into(),
        };
        let envelope = toronto_protocol::Envelope::builder("toronto://fault-suite", alert).build();
        let bytes = toronto_protocol::encode(&envelope, toronto_protocol::Encoding::Json)
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(cluster.client.clone());
        js.publish("toronto.devops.v1.events.alert.firing", bytes.into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let Some((0, first_at)) = next_page(&mut seen, Duration::from_secs(20)).await else {
            return Err("the first level was never paged".to_owned());
        };
        // A second into the level's deadline, the lease holder dies.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let lease = toronto_incident_commander::replica::LEASE;
        let holder = lease_holder(cluster, "toronto_leases", lease)
            .await
            .ok_or("no incident commander holds its lease")?;
        cluster.kill(&holder).await;
        cluster.add("incident-commander").await;
        let Some((1, second_at)) = next_page(&mut seen, Duration::from_secs(20)).await else {
            return Err("the second level was never paged after the kill".to_owned());
        };
        let after = second_at - first_at;
        if after + Duration::from_millis(500) < ESCALATION_DEADLINE {
            return Err(format!("the second level was paged early, after {after:?}"));
        }
        // Nothing more: each level paged once.
        if let Some((level, _)) = next_page(&mut seen, Duration::from_secs(4)).await {
            return Err(format!("level {level} was paged again"));
        }
        Ok(format!(
            "killed the lease holder; level 1 paged once, {:.1} s after level 0 (deadline {} s)",
            after.as_secs_f64(),
            ESCALATION_DEADLINE.as_secs()
        ))
    }
    .await;
    row(
        "kill -9 incident commander mid-escalation",
        "the standby pages the next level once, not before its deadline",
        result,
    )
}
