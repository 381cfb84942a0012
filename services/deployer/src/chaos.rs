//! Chaos experiments: a fault injected into a service for a while, removed early when
//! an abort condition holds (an alert fires on the service, or its error ratio passes a
//! threshold), and in any case at the end.
//!
//! An experiment runs in the deployer that accepted it and is recorded in KV
//! (`chaos.<id>`) with its outcome; its events are `chaos.started`, `.aborted`,
//! `.completed` and `.failed`. It is not taken over by another replica if that deployer
//! dies: on the simulated cluster (one world shared by every deployer) the fault stays
//! until it is cleared (`sim.fault` with no effect), and a pod kill on Kubernetes is
//! over once the pods are deleted.

use std::time::Duration;
use toronto_protocol::EventKind;
use toronto_protocol::rollout::ChaosEvent;

use bytes::Bytes;
use chrono::Utc;
use toronto_protocol::rollout::{ChaosRun, ChaosState, RolloutRef};
use toronto_protocol::tasks::{AbortCondition, ExecuteAccepted, ExecuteRequest, PlanTask};
use toronto_protocol::{Envelope, ErrorBody, ErrorCode};
use toronto_runtime::Request;
use uuid::Uuid;

use toronto_runtime::work::{Created, Records};

use crate::engine::{Deployer, EngineError, idempotency_key};
use crate::target::Track;

/// How often abort conditions are checked.
const CHECK_EVERY: Duration = Duration::from_millis(200);

impl Deployer {
    /// `chaos.run`: starts an experiment (once per idempotency key; 409 while a rollout
    /// of the service runs) and answers `chaos <id>` at once.
    pub async fn chaos_run(
        &self,
        req: Request<ExecuteRequest>,
    ) -> Result<ExecuteAccepted, ErrorBody> {
        let request = req.envelope.data;
        let PlanTask::ChaosExperiment(task) = request.task else {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!(
                    "chaos.run takes a chaos_experiment task, not {}",
                    request.task.kind()
                ),
            ));
        };
        if task.duration_seconds == 0 || task.duration_seconds > 3600 {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "duration_seconds must be 1 to 3600",
            ));
        }
        let needs_sim = task
            .abort_conditions
            .iter()
            .any(|c| matches!(c, AbortCondition::ErrorRatioAbove { .. }));
        if needs_sim && self.sim.is_none() {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "error_ratio_above is measured by the simulated target; on Kubernetes use alert_firing",
            ));
        }
        let key = idempotency_key(&request.idempotency_key);
        if let Some(existing) = self.get_raw(&key).await? {
            let id = String::from_utf8_lossy(&existing).into_owned();
            return Ok(ExecuteAccepted {
                reference: Some(format!("chaos {id}")),
            });
        }
        if let Some(active) = self.active(&task.service, &task.environment).await? {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "rollout {} of {} in {} is running; experiment after it ends",
                    active.id, task.service, task.environment
                ),
            ));
        }
        let run = ChaosRun {
            id: Uuid::now_v7(),
            experiment: task,
            state: ChaosState::Running,
            reason: None,
            plan_id: Some(request.plan_id),
            started_at: Utc::now(),
            ended_at: None,
        };
        if !matches!(
            self.create_raw(&key, Bytes::from(run.id.to_string())).await,
            Ok(Created::Stored(_))
        ) {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                "the same experiment was just started; ask again for its reference",
            ));
        }
        let exp = &run.experiment;
        if let Err(e) = self
            .target
            .inject(&exp.service, &exp.environment, &exp.fault)
            .await
        {
            let mut failed = run.clone();
            failed.state = ChaosState::Failed;
            failed.reason = Some(e.to_string());
            failed.ended_at = Some(Utc::now());
            self.save_chaos(&failed).await?;
            self.announce_chaos(ChaosEvent::Failed, &failed).await;
            return Err(EngineError::from(e).into());
        }
        self.save_chaos(&run).await?;
        self.announce_chaos(ChaosEvent::Started, &run).await;
        let id = run.id;
        let deployer = self.clone();
        tokio::spawn(async move { deployer.watch_experiment(run).await });
        Ok(ExecuteAccepted {
            reference: Some(format!("chaos {id}")),
        })
    }

    /// `chaos.get`: an experiment by id.
    pub async fn chaos_get(&self, q: &RolloutRef) -> Result<ChaosRun, ErrorBody> {
        let Some(id) = q.id else {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "chaos.get needs `id`",
            ));
        };
        self.chaos_runs()
            .load(id)
            .await
            .map_err(EngineError::from)?
            .map(|v| v.value)
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no experiment {id}")))
    }

    /// Chaos experiments, under `chaos.<id>` in the rollouts bucket.
    fn chaos_runs(&self) -> Records<ChaosRun> {
        Records::new(self.rollouts.clone(), "chaos", |r: &ChaosRun| {
            r.state != ChaosState::Running
        })
    }

    async fn save_chaos(&self, run: &ChaosRun) -> Result<(), EngineError> {
        self.chaos_runs().put(run.id, run).await?;
        Ok(())
    }

    async fn announce_chaos(&self, what: ChaosEvent, run: &ChaosRun) {
        let event = Envelope::builder(self.source.clone(), run.clone())
            .subject(run.experiment.service.clone())
            .build();
        if let Err(e) = self
            .events
            .publish(ChaosEvent::ENTITY, what.as_str(), &event)
            .await
        {
            tracing::error!(experiment = %run.id, what = what.as_str(), error = %e, "cannot publish chaos event");
        }
    }

    /// The reason to stop now, if an abort condition holds.
    fn abort_reason(&self, run: &ChaosRun) -> Option<String> {
        let exp = &run.experiment;
        for condition in &exp.abort_conditions {
            match condition {
                AbortCondition::AlertFiring => {
                    if let Some(h) =
                        self.heard_alert(&exp.service, &exp.environment, run.started_at)
                    {
                        return Some(format!("abort condition alert_firing held: {h}"));
                    }
                }
                AbortCondition::ErrorRatioAbove { threshold } => {
                    let sim = self.sim.as_ref()?;
                    let (requests, errors, _) = sim.observed(
                        &exp.service,
                        &exp.environment,
                        Track::Stable,
                        Duration::from_secs(2),
                    )?;
                    let ratio = errors as f64 / requests.max(1) as f64;
                    if ratio > *threshold {
                        return Some(format!(
                            "abort condition error_ratio_above {threshold} held: the error ratio was {ratio:.3} over the last 2 s"
                        ));
                    }
                }
            }
        }
        None
    }

    /// Watches an experiment until an abort condition holds or its time is up, then
    /// removes the fault and records the outcome.
    async fn watch_experiment(self, mut run: ChaosRun) {
        let exp = run.experiment.clone();
        let until = tokio::time::Instant::now() + Duration::from_secs(exp.duration_seconds);
        let mut aborted = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = self.shutdown.cancelled() => {
                    aborted = Some("the deployer shut down".to_owned());
                    break;
                }
            }
            if let Some(reason) = self.abort_reason(&run) {
                aborted = Some(reason);
                break;
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
        }
        if let Err(e) = self
            .target
            .clear(&exp.service, &exp.environment, &exp.fault)
            .await
        {
            tracing::error!(experiment = %run.id, error = %e, "cannot remove the chaos fault");
        }
        run.ended_at = Some(Utc::now());
        let what = match aborted {
            Some(reason) => {
                run.state = ChaosState::Aborted;
                run.reason = Some(reason);
                ChaosEvent::Aborted
            }
            None => {
                run.state = ChaosState::Completed;
                run.reason = Some(format!(
                    "ran {} s; no abort condition held",
                    exp.duration_seconds
                ));
                ChaosEvent::Completed
            }
        };
        if let Err(e) = self.save_chaos(&run).await {
            tracing::error!(experiment = %run.id, error = %e, "cannot record the experiment");
        }
        self.announce_chaos(what, &run).await;
    }
}
