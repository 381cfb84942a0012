//! `kill -9` of the deployer watching a chaos experiment: another replica takes the
//! experiment over, ends it on time and removes its fault.

use std::time::Duration;

use toronto_protocol::rollout::{ChaosRun, ChaosState, RolloutRef};
use toronto_protocol::tasks::{
    AbortCondition, ChaosExperimentTask, ChaosFault, ExecuteAccepted, ExecuteRequest, PlanTask,
};
use uuid::Uuid;

use super::Row;
use super::harness::{Cluster, ENV};

const SECONDS: u64 = 6;

async fn experiment_taken_over(c: &mut Cluster, service: &str) -> Result<String, String> {
    c.baseline(service).await?;
    let request = ExecuteRequest {
        plan_id: Uuid::now_v7(),
        idempotency_key: Uuid::now_v7().to_string(),
        task: PlanTask::ChaosExperiment(ChaosExperimentTask {
            service: service.into(),
            environment: ENV.into(),
            fault: ChaosFault::ErrorRate { rate: 0.3 },
            duration_seconds: SECONDS,
            abort_conditions: vec![AbortCondition::AlertFiring],
        }),
    };
    let accepted: ExecuteAccepted = c
        .deployer()
        .request("chaos.run", request)
        .await
        .map_err(|e| format!("chaos.run: {e}"))?;
    let id: Uuid = accepted
        .reference
        .as_deref()
        .and_then(|r| r.strip_prefix("chaos "))
        .and_then(|id| id.parse().ok())
        .ok_or("chaos.run answered no experiment")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holder = super::cases::lease_holder(c, "toronto_rollouts", "deployer-chaos")
        .await
        .ok_or("no deployer holds the chaos lease")?;
    c.kill(&holder)
        .await
        .ok_or("the chaos lease holder is not one of ours")?;
    c.add("deployer").await;
    if faults(c, service).await? == 0 {
        return Err("the fault was gone right after the kill".into());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let run = loop {
        let run: Result<ChaosRun, _> = c
            .deployer()
            .request(
                "chaos.get",
                RolloutRef {
                    id: Some(id),
                    ..Default::default()
                },
            )
            .await;
        match run {
            Ok(run) if run.state != ChaosState::Running => break run,
            _ if tokio::time::Instant::now() > deadline => {
                return Err("the experiment was never ended: orphaned".into());
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    if run.state != ChaosState::Completed {
        return Err(format!(
            "the experiment ended {:?}: {:?}",
            run.state, run.reason
        ));
    }
    let ran = (run.ended_at.unwrap_or(run.started_at) - run.started_at).num_milliseconds();
    if faults(c, service).await? != 0 {
        return Err("the fault outlived the experiment".into());
    }
    Ok(format!(
        "killed the watching deployer after 1 s; completed after {:.1} s of {SECONDS} s; fault removed",
        ran as f64 / 1000.0
    ))
}

/// How many faults the shared simulated world holds for `service`.
async fn faults(c: &Cluster, service: &str) -> Result<usize, String> {
    let record = c.sim_record(service).await?;
    Ok(record["faults"].as_object().map_or(0, |f| f.len()))
}

pub async fn kill_deployer_mid_chaos(cluster: &mut Cluster) -> Row {
    Row {
        fault: "kill -9 deployer mid-chaos-experiment",
        checked: "another replica takes the experiment over, ends it on time, removes the fault",
        result: experiment_taken_over(cluster, "chaosk").await,
    }
}
