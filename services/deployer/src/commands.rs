//! The deployer's commands: starting rollouts (from the planner), acting on them,
//! rollback, scale, environments, drift, and the simulated cluster's faults.

use chrono::Utc;
use toronto_protocol::rollout::RolloutEvent;
use toronto_protocol::rollout::{Revision, Rollout, RolloutCommand, RolloutPhase};
use toronto_protocol::tasks::{ExecuteAccepted, ExecuteRequest, PlanTask, Strategy};
use toronto_protocol::{ErrorBody, ErrorCode};
use toronto_runtime::Request;
use toronto_runtime::work::{Created, Taken};
use uuid::Uuid;

use crate::engine::{
    DEFAULT_REPLICAS, Deployer, EngineError, Family, Release, honest_weights, idempotency_key,
    plan_steps, steady_layout,
};

mod drift;
mod rollouts;
mod workload;

use drift::zero_missing;

fn bad(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, message)
}

fn not_found(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, message)
}

fn dns_label(what: &str, value: &str) -> Result<(), ErrorBody> {
    toronto_protocol::domain::check_dns_label(value)
        .map_err(|problem| bad(format!("{what} `{value}` {problem}")))
}

fn version_token(value: &str) -> Result<(), ErrorBody> {
    value
        .parse::<toronto_protocol::Version>()
        .map(drop)
        .map_err(|e| bad(e.to_string()))
}

impl Deployer {
    /// `rollout.start`: a deploy task from a plan becomes a rollout (once per
    /// idempotency key; 409 while another rollout of the service and environment runs).
    pub async fn start_rollout(
        &self,
        req: Request<ExecuteRequest>,
    ) -> Result<ExecuteAccepted, ErrorBody> {
        let flow = req.flow();
        let source = req.envelope.source.clone();
        let request = req.envelope.data;
        let PlanTask::Deploy(task) = &request.task else {
            return Err(bad(format!(
                "rollout.start takes a deploy task, not {}",
                request.task.kind()
            )));
        };
        dns_label("service", &task.service)?;
        dns_label("environment", &task.environment)?;
        version_token(&task.version)?;
        if request.idempotency_key.is_empty() {
            return Err(bad("idempotency_key must not be empty"));
        }
        if let Some(id) = self.by_key(&request.idempotency_key).await? {
            return Ok(ExecuteAccepted {
                reference: Some(format!("rollout {id}")),
            });
        }
        let before = self
            .release(&task.service, &task.environment)
            .await?
            .map(|(r, _)| r);
        let workload = self.workload(&task.service, &task.environment).await?;
        // An adopted service's first rollout runs as many replicas as the user's
        // Deployment did.
        let replicas = before.as_ref().map_or_else(
            || {
                workload
                    .as_ref()
                    .and_then(|w| w.replicas)
                    .unwrap_or(DEFAULT_REPLICAS)
            },
            |b| b.current.replicas.max(1),
        );
        let steps = plan_steps(&task.strategy, before.as_ref(), &self.settings, false)
            .map_err(|e| bad(e.to_string()))?;
        let mut steps = honest_weights(steps, replicas, self.target.traffic_split());
        if self.target.kind() == "kubernetes"
            && workload.is_none()
            && let Some(first) = steps.first_mut()
        {
            let minimal = "minimal spec: no workload template is registered for the service, so its Deployments have the image and one `http` port only (adopt the service's own Deployment with deployer.workload.put)";
            first.note = Some(match first.note.take() {
                Some(n) => format!("{n}; {minimal}"),
                None => minimal.to_owned(),
            });
        }
        for note in steps.iter().filter_map(|s| s.note.as_deref()) {
            tracing::warn!(service = %task.service, environment = %task.environment, note, "canary weight by replica ratio");
        }
        let now = Utc::now();
        let rollout = Rollout {
            id: Uuid::now_v7(),
            service: task.service.clone(),
            environment: task.environment.clone(),
            version: task.version.clone(),
            image: task
                .image
                .clone()
                .unwrap_or_else(|| format!("{}:{}", task.service, task.version)),
            strategy: task.strategy.clone(),
            replicas,
            previous: before.as_ref().map(|b| b.current.clone()),
            phase: RolloutPhase::Progressing,
            steps,
            step_index: 0,
            weight: 0,
            manual_promotion: self.settings.manual_promotion.contains(&task.environment),
            reason: None,
            rolled_back: false,
            is_rollback: false,
            emergency: false,
            pending: None,
            analyses: Vec::new(),
            plan_id: Some(request.plan_id),
            idempotency_key: request.idempotency_key.clone(),
            correlationid: Some(flow.correlationid.clone()),
            requested_by: Some(source),
            lease: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        self.begin(rollout).await
    }

    /// Stores a new rollout under its idempotency key and the active lock, and hands
    /// it to the runner.
    async fn begin(&self, rollout: Rollout) -> Result<ExecuteAccepted, ErrorBody> {
        match self
            .take_active(&rollout.service, &rollout.environment, rollout.id)
            .await?
        {
            Taken::Mine => {}
            Taken::HeldBy(holder) => {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!(
                        "rollout {holder} of {} in {} is still running; abort it or wait for it to end",
                        rollout.service, rollout.environment
                    ),
                )
                .with_details(serde_json::json!({ "rollout_id": holder })));
            }
        }
        let key = idempotency_key(&rollout.idempotency_key);
        match self.create_raw(&key, rollout.id.to_string().into()).await? {
            Created::Stored(_) => {}
            Created::Exists => {
                // A twin request won the race: let go of the lock taken for this
                // (never stored) rollout and answer with the twin's.
                self.release_active(&rollout).await?;
                let id = self.by_key(&rollout.idempotency_key).await?;
                return Ok(ExecuteAccepted {
                    reference: id.map(|id| format!("rollout {id}")),
                });
            }
        }
        self.create(&rollout).await?;
        self.announce(RolloutEvent::Started, &rollout).await;
        self.enqueue(rollout.id).await?;
        Ok(ExecuteAccepted {
            reference: Some(format!("rollout {}", rollout.id)),
        })
    }

    async fn by_key(&self, key: &str) -> Result<Option<Uuid>, EngineError> {
        Ok(self
            .get_raw(&idempotency_key(key))
            .await?
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok())))
    }

    /// `rollback`: aborts the running rollout of the service, or puts an earlier
    /// version back (the one before the current, or `target_version`) through the
    /// analysed steps of the service's shape; in one unanalysed step when the task
    /// says `emergency`.
    pub async fn rollback(
        &self,
        req: Request<ExecuteRequest>,
    ) -> Result<ExecuteAccepted, ErrorBody> {
        let flow = req.flow();
        let source = req.envelope.source.clone();
        let request = req.envelope.data;
        let PlanTask::Rollback(task) = &request.task else {
            return Err(bad(format!(
                "rollback takes a rollback task, not {}",
                request.task.kind()
            )));
        };
        dns_label("service", &task.service)?;
        dns_label("environment", &task.environment)?;
        if let Some(id) = self.by_key(&request.idempotency_key).await? {
            return Ok(ExecuteAccepted {
                reference: Some(format!("rollout {id}")),
            });
        }
        if let Some(active) = self.active(&task.service, &task.environment).await? {
            let r = self
                .command(
                    &RolloutCommand {
                        id: Some(active.id),
                        by: Some(source),
                        reason: Some("rollback requested".into()),
                        ..Default::default()
                    },
                    Verb::Abort,
                )
                .await?;
            return Ok(ExecuteAccepted {
                reference: Some(format!("rollout {} (aborted)", r.id)),
            });
        }
        let Some((release, _)) = self.release(&task.service, &task.environment).await? else {
            return Err(not_found(format!(
                "{} has never been deployed to {}",
                task.service, task.environment
            )));
        };
        let target = match &task.target_version {
            Some(v) => release
                .history
                .iter()
                .rev()
                .find(|r| &r.version == v)
                .cloned()
                .ok_or_else(|| {
                    not_found(format!(
                        "{} never ran version {v} in {} (known: {})",
                        task.service,
                        task.environment,
                        release
                            .history
                            .iter()
                            .map(|r| r.version.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
            None => release
                .history
                .iter()
                .rev()
                .find(|r| r.version != release.current.version)
                .cloned()
                .ok_or_else(|| {
                    not_found(format!(
                        "{} has no earlier version in {} to go back to",
                        task.service, task.environment
                    ))
                })?,
        };
        let strategy = match Family::of_layout(&release.layout) {
            Family::Rolling => Strategy::Rolling,
            Family::BlueGreen => Strategy::BlueGreen,
            Family::Canary => Strategy::Canary { steps: Vec::new() },
        };
        // Verified in the service's own shape like any deploy, unless the operator
        // calls it an emergency.
        let steps = plan_steps(&strategy, Some(&release), &self.settings, task.emergency)
            .map_err(|e| bad(e.to_string()))?;
        let steps = honest_weights(steps, release.current.replicas, self.target.traffic_split());
        let reason = if task.emergency {
            tracing::warn!(service = %task.service, environment = %task.environment, by = %source, "emergency rollback: verification skipped");
            format!(
                "emergency rollback from {} requested by {source}: put back in one step without analysis",
                release.current.version
            )
        } else {
            format!("rollback from {}", release.current.version)
        };
        let now = Utc::now();
        let rollout = Rollout {
            id: Uuid::now_v7(),
            service: task.service.clone(),
            environment: task.environment.clone(),
            version: target.version.clone(),
            image: target.image.clone(),
            strategy,
            replicas: release.current.replicas,
            previous: Some(release.current.clone()),
            phase: RolloutPhase::Progressing,
            steps,
            step_index: 0,
            weight: 0,
            manual_promotion: false,
            reason: Some(reason),
            rolled_back: false,
            is_rollback: true,
            emergency: task.emergency,
            pending: None,
            analyses: Vec::new(),
            plan_id: Some(request.plan_id),
            idempotency_key: request.idempotency_key.clone(),
            correlationid: Some(flow.correlationid.clone()),
            requested_by: Some(source),
            lease: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        self.begin(rollout).await
    }

    /// `scale`: changes the replicas of the serving version at once (409 while a
    /// rollout of the service runs).
    pub async fn scale(&self, req: Request<ExecuteRequest>) -> Result<ExecuteAccepted, ErrorBody> {
        let request = req.envelope.data;
        let PlanTask::Scale(task) = &request.task else {
            return Err(bad(format!(
                "scale takes a scale task, not {}",
                request.task.kind()
            )));
        };
        dns_label("service", &task.service)?;
        dns_label("environment", &task.environment)?;
        if task.replicas > 1000 {
            return Err(bad("replicas must be 1000 or fewer"));
        }
        if let Some(active) = self.active(&task.service, &task.environment).await? {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "rollout {} of {} in {} is running; scale after it ends",
                    active.id, task.service, task.environment
                ),
            ));
        }
        let Some((mut release, _)) = self.release(&task.service, &task.environment).await? else {
            return Err(not_found(format!(
                "{} has never been deployed to {}",
                task.service, task.environment
            )));
        };
        release.current.replicas = task.replicas;
        let mut layout = steady_layout(
            Family::of_layout(&release.layout),
            &task.service,
            &task.environment,
            &release.current,
            None,
        );
        // Keep the colour that serves (blue-green) and the objects at rest.
        if let Some(active) = release
            .layout
            .workloads
            .iter()
            .find(|w| w.replicas > 0 && w.version == release.current.version)
        {
            for w in &mut layout.workloads {
                if w.track == crate::target::Track::Blue || w.track == crate::target::Track::Green {
                    w.name = active.name.clone();
                    w.track = active.track;
                }
            }
            if let crate::target::Routing::BlueGreen { .. } = layout.routing {
                layout.routing = crate::target::Routing::BlueGreen {
                    active: active.track,
                    preview: None,
                };
            }
        }
        let mut layout = zero_missing(layout, &release.layout);
        layout.step_key = format!("scale:{}", request.idempotency_key);
        layout.progress_deadline_seconds = release.layout.progress_deadline_seconds.max(1);
        // Scaling keeps the service's pod template.
        let layout = self.with_pod_template(layout).await?;
        self.target
            .apply(&layout)
            .await
            .map_err(EngineError::from)?;
        release.layout = layout;
        release.at = Utc::now();
        self.put_release(&release).await?;
        Ok(ExecuteAccepted {
            reference: Some(format!(
                "{} in {} scaled to {}",
                task.service, task.environment, task.replicas
            )),
        })
    }

    /// `environment.provision` / `environment.teardown`.
    pub async fn environment(
        &self,
        req: Request<ExecuteRequest>,
        teardown: bool,
    ) -> Result<ExecuteAccepted, ErrorBody> {
        let PlanTask::ProvisionEnvironment(task) = &req.envelope.data.task else {
            return Err(bad(
                "environment commands take a provision_environment task",
            ));
        };
        dns_label("environment", &task.name)?;
        if teardown {
            self.target
                .teardown_environment(&task.name)
                .await
                .map_err(EngineError::from)?;
        } else {
            self.target
                .provision_environment(&task.name)
                .await
                .map_err(EngineError::from)?;
            for s in &task.services {
                let rev = Revision {
                    version: s.version.clone(),
                    image: format!("{}:{}", s.service, s.version),
                    replicas: 1,
                };
                let mut layout = steady_layout(Family::Rolling, &s.service, &task.name, &rev, None);
                layout.step_key = format!("provision:{}", req.envelope.data.idempotency_key);
                layout.pod_template = self
                    .workload(&s.service, &task.name)
                    .await?
                    .map(|w| w.pod_template);
                layout.progress_deadline_seconds =
                    self.settings.progress_deadline.as_secs().clamp(1, 86_400) as u32;
                self.target
                    .apply(&layout)
                    .await
                    .map_err(EngineError::from)?;
                self.put_release(&Release {
                    layout,
                    current: rev,
                    history: Vec::new(),
                    rollout_id: None,
                    at: Utc::now(),
                })
                .await?;
            }
        }
        Ok(ExecuteAccepted {
            reference: Some(format!(
                "environment {} {}",
                task.name,
                if teardown { "torn down" } else { "provisioned" }
            )),
        })
    }
}

/// A command on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `rollout.promote`.
    Promote,
    /// `rollout.abort`.
    Abort,
    /// `rollout.pause`.
    Pause,
    /// `rollout.resume`.
    Resume,
}
