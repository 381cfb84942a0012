//! Chaos experiments: a fault injected into a service for a while, removed early when
//! an abort condition holds (an alert fires on the service, or its error ratio passes a
//! threshold), and in any case at the end.
//!
//! An experiment is recorded in KV (`chaos.<id>`) with its outcome; its events are
//! `chaos.started`, `.aborted`, `.completed` and `.failed`. Any deployer replica may
//! start one (it injects the fault); the holder of the `deployer-chaos` lease watches
//! every running experiment (their ids are kept under `chaos-running.all`). When that
//! replica dies, the next holder of the lease takes the experiments over and watches
//! each until its original end, so no fault outlives its experiment by more than a lease.
//! A graceful shutdown of the watching replica aborts its experiments and removes their
//! faults.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use toronto_protocol::EventKind;
use toronto_protocol::rollout::ChaosEvent;

use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use toronto_protocol::rollout::{ChaosRun, ChaosState, RolloutRef};
use toronto_protocol::tasks::{AbortCondition, ExecuteAccepted, ExecuteRequest, PlanTask};
use toronto_protocol::{Envelope, ErrorBody, ErrorCode};
use toronto_runtime::lease::{Candidate, LeaseWatch};
use toronto_runtime::supervise::LoopSpec;
use toronto_runtime::work::{Created, Edit, Records};
use toronto_runtime::{Request, ServiceRuntime};
use uuid::Uuid;

use crate::engine::{Deployer, EngineError, idempotency_key};
use crate::target::Track;

/// How often abort conditions are checked.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The lease whose holder watches every running experiment.
pub const CHAOS_LEASE: &str = "deployer-chaos";

/// The ids of the experiments running now (one record, `chaos-running.all`): what a
/// new watcher takes over, without reading the history of every experiment.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Running {
    ids: BTreeSet<Uuid>,
}

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
        self.mark_running(run.id, true).await?;
        self.announce_chaos(ChaosEvent::Started, &run).await;
        let id = run.id;
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

    fn running(&self) -> Records<Running> {
        Records::new(self.rollouts.clone(), "chaos-running", |_| false)
    }

    /// Adds `id` to the running experiments, or removes it.
    async fn mark_running(&self, id: Uuid, running: bool) -> Result<(), EngineError> {
        let records = self.running();
        for _ in records.policy().tries() {
            let edited = records
                .update("all", |r| {
                    let changed = if running {
                        r.ids.insert(id)
                    } else {
                        r.ids.remove(&id)
                    };
                    if changed {
                        Edit::Save(())
                    } else {
                        Edit::Keep(())
                    }
                })
                .await?;
            if edited.is_some() || !running {
                return Ok(());
            }
            let first = Running {
                ids: BTreeSet::from([id]),
            };
            if matches!(records.create("all", &first).await?, Created::Stored(_)) {
                return Ok(());
            }
        }
        Err(records.policy().exhausted(records.key("all")).into())
    }

    /// Starts the candidacy for the chaos lease and the watcher (both supervised).
    pub(crate) fn run_chaos(&self, rt: &ServiceRuntime) {
        let (candidate, watch) = Candidate::new(
            self.rollouts.clone(),
            CHAOS_LEASE,
            rt.host.id(),
            rt.config.lease.clone(),
        );
        let candidate = Arc::new(tokio::sync::Mutex::new(candidate));
        // A crash stops the candidacy as a shutdown does.
        let token = CancellationToken::new();
        {
            let (a, b, t) = (self.shutdown.clone(), self.crash.clone(), token.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = a.cancelled() => {}
                    _ = b.cancelled() => {}
                }
                t.cancel();
            });
        }
        rt.spawn_loop(
            LoopSpec::new("chaos lease").until(token.clone()),
            move || {
                let (candidate, token) = (candidate.clone(), token.clone());
                async move { candidate.lock_owned().await.run(token).await }
            },
        );
        let deployer = self.clone();
        rt.spawn_loop(
            LoopSpec::new("chaos watcher").until(self.crash.clone()),
            move || deployer.clone().watch_running(watch.clone()),
        );
    }

    /// While this replica holds the chaos lease: watches every running experiment,
    /// taking over those a dead holder watched. Losing the lease stops the watches (the
    /// next holder goes on with them).
    async fn watch_running(self, lease: LeaseWatch) -> Result<(), EngineError> {
        let watching: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let mut term: Option<CancellationToken> = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = self.crash.cancelled() => return Ok(()),
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            if !lease.is_owner() {
                if let Some(t) = term.take() {
                    t.cancel();
                }
                continue;
            }
            let term = term.get_or_insert_with(CancellationToken::new).clone();
            let ids = match self.running().load("all").await {
                Ok(r) => r.map(|r| r.value.ids).unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the running experiments");
                    continue;
                }
            };
            for id in ids {
                if !watching.lock().expect("not poisoned").insert(id) {
                    continue;
                }
                let (deployer, term, watching) = (self.clone(), term.clone(), watching.clone());
                tokio::spawn(async move {
                    deployer.watch_one(id, term).await;
                    watching.lock().expect("not poisoned").remove(&id);
                });
            }
        }
    }

    /// Loads one experiment and watches it to its end (or until `term` ends).
    async fn watch_one(self, id: Uuid, term: CancellationToken) {
        match self.chaos_runs().load(id).await {
            Ok(Some(run)) if run.value.state == ChaosState::Running => {
                self.watch_experiment(run.value, term).await;
            }
            Ok(_) => {
                // Ended, or never recorded: nothing to watch.
                if let Err(e) = self.mark_running(id, false).await {
                    tracing::warn!(experiment = %id, error = %e, "cannot update the running experiments");
                }
            }
            Err(e) => {
                tracing::warn!(experiment = %id, error = %e, "cannot read an experiment");
            }
        }
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
                        None,
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

    /// Watches an experiment until an abort condition holds or its time (from its
    /// start) is up, then removes the fault and records the outcome. When `term` ends
    /// (the lease is lost) or the deployer crashes, it stops without a word: the next
    /// holder of the lease goes on.
    async fn watch_experiment(&self, mut run: ChaosRun, term: CancellationToken) {
        let exp = run.experiment.clone();
        let until = run.started_at + chrono::Duration::seconds(exp.duration_seconds as i64);
        let mut aborted = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = term.cancelled() => return,
                _ = self.crash.cancelled() => return,
                _ = self.shutdown.cancelled() => {
                    aborted = Some("the deployer shut down".to_owned());
                    break;
                }
            }
            if let Some(reason) = self.abort_reason(&run) {
                aborted = Some(reason);
                break;
            }
            if Utc::now() >= until {
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
        if let Err(e) = self.mark_running(run.id, false).await {
            tracing::warn!(experiment = %run.id, error = %e, "cannot update the running experiments");
        }
        self.announce_chaos(what, &run).await;
    }
}
