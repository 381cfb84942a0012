//! Plan execution: steps in order (gates, approval, hand-over to the deployer), one
//! active plan per service and environment, durable across planner restarts.
//!
//! Work arrives as "advance plan X" messages on a JetStream work queue consumed by
//! every planner replica. The plan in KV is the truth: each change is a
//! compare-and-set on its revision, and a lease names the instance working on it, so
//! two replicas never run the same plan at once, and a replica that dies mid-step
//! loses its lease when the message's ack deadline (the same length) runs out, after
//! which another replica picks the message up and carries on from the stored state.
//! Steps are idempotent by `plan id:step id`, the key every executor receives.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use bytes::Bytes;
use chrono::Utc;
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::rollout::{ChaosRun, ChaosState, Rollout, RolloutPhase, RolloutRef};
use toronto_protocol::tasks::{
    AdvancePlan, Decision, ExecuteAccepted, ExecuteRequest, GateVerdict, Lease, Plan, PlanDecision,
    PlanState, PlanTask, QaTestRequest, SecurityScanRequest, Step, StepKind, StepState,
};
use toronto_protocol::{Encoding, Envelope, ErrorBody, ErrorCode, ServiceKind};
use toronto_runtime::jetstream::{Delivery, Outcome, publish_envelope};
use toronto_runtime::rpc::{CallError, call};
use uuid::Uuid;

use crate::intake::{IntakeError, Planner, unavailable};
use crate::settings::Settings;

/// The steps of a plan for `task`.
pub fn steps_for(task: &PlanTask, settings: &Settings) -> Vec<Step> {
    match task {
        PlanTask::Pipeline(_) => return vec![Step::new("generate", StepKind::Generate)],
        PlanTask::ProvisionEnvironment(_) => {
            return vec![
                Step::new("execute", StepKind::Execute),
                Step::new("teardown", StepKind::Teardown),
            ];
        }
        _ => {}
    }
    let mut steps = Vec::new();
    if let PlanTask::Deploy(deploy) = task {
        steps.push(Step::new("policy", StepKind::Policy));
        if settings.budget_environments.contains(&deploy.environment) {
            steps.push(Step::new("error-budget", StepKind::ErrorBudget));
        }
        steps.push(Step::new("security-scan", StepKind::SecurityScan));
        if settings.qa_environments.contains(&deploy.environment) {
            steps.push(Step::new("qa-test", StepKind::QaTest));
        }
    }
    let needs_approval = !matches!(task, PlanTask::Rollback(_))
        && settings
            .approval_environments
            .iter()
            .any(|e| e == task.environment());
    if needs_approval {
        steps.push(Step::new("approval", StepKind::Approval));
    }
    steps.push(Step::new("execute", StepKind::Execute));
    steps
}

/// The work-queue subject of the runner.
pub fn runs_subject(planner: &Planner) -> String {
    format!("{}.planner.runs", planner.subjects.devops_root())
}

/// The work-queue stream of the runner.
pub fn runs_stream(planner: &Planner) -> String {
    planner
        .subjects
        .tasks_stream()
        .replace("_DEVOPS_TASKS", "_DEVOPS_PLAN_RUNS")
}

/// Creates the runner's work queue.
pub async fn ensure_runs_stream(planner: &Planner, replicas: usize) -> Result<(), IntakeError> {
    planner
        .js
        .create_or_update_stream(stream::Config {
            name: runs_stream(planner),
            description: Some("Planner work: plans to advance (work queue)".into()),
            subjects: vec![runs_subject(planner)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// What running a step came to.
enum StepResult {
    Passed {
        reason: Option<String>,
        findings: Option<serde_json::Value>,
        artifacts: Vec<toronto_protocol::tasks::Artifact>,
    },
    Failed {
        reason: String,
        findings: Option<serde_json::Value>,
    },
    /// Try again later (the step goes back to pending).
    Retry { reason: String },
    /// The executor took the work on and is carrying it out (a rollout): the step
    /// waits, and the rollout's end wakes the plan.
    Wait { reason: String },
}

fn turn_key(plan: &Plan) -> String {
    format!("turn.{}.{}", plan.task.service(), plan.task.environment())
}

fn plan_key(id: Uuid) -> String {
    format!("plan.{id}")
}

impl Planner {
    /// Asks the runner to advance a plan.
    pub(crate) async fn enqueue(&self, plan_id: Uuid) -> Result<(), IntakeError> {
        let envelope = Envelope::builder(self.source.clone(), AdvancePlan { plan_id }).build();
        publish_envelope(&self.js, &runs_subject(self), &envelope)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn load(&self, id: Uuid) -> Result<Option<(Plan, u64)>, IntakeError> {
        match self.plans.entry(plan_key(id)).await.map_err(unavailable)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let plan = serde_json::from_slice(&entry.value).map_err(unavailable)?;
                Ok(Some((plan, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Stores the plan if nobody changed it since `revision`; false on a conflict.
    async fn save(&self, plan: &mut Plan, revision: u64) -> Result<Option<u64>, IntakeError> {
        plan.updated_at = Some(Utc::now());
        let bytes = serde_json::to_vec(plan).map_err(unavailable)?;
        match self
            .plans
            .update(plan_key(plan.id), Bytes::from(bytes), revision)
            .await
        {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Takes the service and environment's turn for `plan`; false while another plan
    /// that has not ended holds it.
    async fn take_turn(&self, plan: &Plan) -> Result<bool, IntakeError> {
        let key = turn_key(plan);
        let mine = Bytes::from(plan.id.to_string());
        for _ in 0..5 {
            match self.plans.create(&key, mine.clone()).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable(e)),
            }
            let Some(entry) = self.plans.entry(&key).await.map_err(unavailable)? else {
                continue;
            };
            let holder = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| Uuid::parse_str(s).ok());
            if holder == Some(plan.id) {
                return Ok(true);
            }
            let holder_active = match holder {
                Some(h) => self
                    .load(h)
                    .await?
                    .is_some_and(|(p, _)| !p.state.is_final()),
                None => false,
            };
            if holder_active {
                return Ok(false);
            }
            // The holder ended without handing the turn on: take it over.
            if self
                .plans
                .update(&key, mine.clone(), entry.revision)
                .await
                .is_ok()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Gives up the turn held by `plan` (if it holds it) and wakes the oldest queued
    /// plan of the same service and environment.
    pub(crate) async fn release_turn(&self, plan: &Plan) -> Result<(), IntakeError> {
        let key = turn_key(plan);
        if let Some(entry) = self.plans.entry(&key).await.map_err(unavailable)?
            && entry.operation == kv::Operation::Put
            && entry.value.as_ref() == plan.id.to_string().as_bytes()
        {
            // A conflict means someone else already moved the turn on.
            let _ = self
                .plans
                .delete_expect_revision(&key, Some(entry.revision))
                .await;
        }
        let query = toronto_protocol::tasks::PlanList {
            service: Some(plan.task.service().to_owned()),
            environment: Some(plan.task.environment().to_owned()),
            state: Some(PlanState::Queued),
            ..Default::default()
        };
        let mut queued = self.list(&query).await?;
        queued.sort_by_key(|p| p.created_at);
        if let Some(next) = queued.first() {
            self.enqueue(next.id).await?;
        }
        Ok(())
    }

    /// Advances a plan as far as it can go now.
    pub(crate) async fn advance(&self, plan_id: Uuid, delivery: &Delivery) -> Outcome {
        match self.advance_inner(plan_id, delivery).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Retry {
                delay: Some(Duration::from_secs(1)),
                reason: e.to_string(),
            },
        }
    }

    async fn advance_inner(
        &self,
        plan_id: Uuid,
        delivery: &Delivery,
    ) -> Result<Outcome, IntakeError> {
        for _ in 0..100 {
            let Some((mut plan, revision)) = self.load(plan_id).await? else {
                return Ok(Outcome::Ack);
            };
            let flow = FlowContext {
                id: plan.task_id,
                correlationid: plan.correlationid.clone(),
                traceparent: None,
            };
            if plan.state.is_final() {
                self.release_turn(&plan).await?;
                return Ok(Outcome::Ack);
            }
            let now = Utc::now();
            if let Some(lease) = &plan.lease
                && lease.owner != self.instance
                && lease.until > now
            {
                // Another planner is on it; it carries on by itself.
                return Ok(Outcome::Ack);
            }
            let lease_until = now
                + chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX);
            plan.lease = Some(Lease {
                owner: self.instance.clone(),
                until: lease_until,
            });
            if plan.state == PlanState::Queued {
                if !self.take_turn(&plan).await? {
                    return Ok(Outcome::Ack); // woken again when the turn is released
                }
                plan.state = PlanState::Running;
            }
            let Some(index) = plan
                .steps
                .iter()
                .position(|s| s.state != StepState::Succeeded)
            else {
                plan.state = PlanState::Completed;
                plan.lease = None;
                if self.save(&mut plan, revision).await?.is_none() {
                    continue;
                }
                self.announce("plan", "completed", &plan, &flow).await?;
                self.release_turn(&plan).await?;
                return Ok(Outcome::Ack);
            };
            let step = plan.steps[index].clone();
            match step.state {
                StepState::Failed => {
                    plan.state = PlanState::Failed;
                    plan.reason = Some(format!(
                        "step {} failed: {}",
                        step.id,
                        step.reason.clone().unwrap_or_default()
                    ));
                    plan.lease = None;
                    if self.save(&mut plan, revision).await?.is_none() {
                        continue;
                    }
                    self.announce("plan", "failed", &plan, &flow).await?;
                    self.release_turn(&plan).await?;
                    return Ok(Outcome::Ack);
                }
                StepState::Waiting => {
                    plan.state = PlanState::Waiting;
                    plan.lease = None;
                    if self.save(&mut plan, revision).await?.is_none() {
                        continue;
                    }
                    return Ok(Outcome::Ack);
                }
                StepState::Succeeded => unreachable!("skipped above"),
                StepState::Pending | StepState::Running => {}
            }
            if let Some(not_before) = step.not_before
                && not_before > now
            {
                // Not yet (e.g. a teardown at the end of a TTL): come back then.
                plan.lease = None;
                if self.save(&mut plan, revision).await?.is_none() {
                    continue;
                }
                let wait = (not_before - now).to_std().unwrap_or_default();
                return Ok(Outcome::Retry {
                    delay: Some(wait + Duration::from_millis(50)),
                    reason: format!("step {} waits until {}", step.id, not_before.to_rfc3339()),
                });
            }
            if step.kind == StepKind::Approval {
                let s = &mut plan.steps[index];
                s.state = StepState::Waiting;
                s.started_at = Some(now);
                plan.state = PlanState::Waiting;
                plan.lease = None;
                if self.save(&mut plan, revision).await?.is_none() {
                    continue;
                }
                self.announce("gate", "waiting", &plan, &flow).await?;
                return Ok(Outcome::Ack);
            }
            {
                let s = &mut plan.steps[index];
                s.state = StepState::Running;
                s.attempts += 1;
                s.started_at = Some(now);
            }
            plan.state = PlanState::Running;
            if self.save(&mut plan, revision).await?.is_none() {
                continue;
            }
            self.announce("step", "started", &plan, &flow).await?;
            delivery.progress().await;
            let result = self.run_step(&plan, &plan.steps[index]).await;
            match self.finish_step(plan_id, index, result, &flow).await? {
                Some(outcome) => return Ok(outcome),
                None => continue,
            }
        }
        Err(unavailable("the plan kept changing under the runner"))
    }

    /// Records a step's result (re-reading the plan for a fresh revision); `Some` when
    /// the runner should stop here with that outcome.
    async fn finish_step(
        &self,
        plan_id: Uuid,
        index: usize,
        result: StepResult,
        flow: &FlowContext,
    ) -> Result<Option<Outcome>, IntakeError> {
        for _ in 0..10 {
            let Some((mut plan, revision)) = self.load(plan_id).await? else {
                return Ok(Some(Outcome::Ack));
            };
            if plan.state.is_final() {
                // Cancelled meanwhile: the result no longer matters.
                return Ok(Some(Outcome::Ack));
            }
            let kind = plan.steps[index].kind;
            let gate = matches!(
                kind,
                StepKind::Policy
                    | StepKind::ErrorBudget
                    | StepKind::SecurityScan
                    | StepKind::QaTest
            );
            let mut retry = None;
            let mut wait = false;
            {
                let s = &mut plan.steps[index];
                match &result {
                    StepResult::Passed {
                        reason, findings, ..
                    } => {
                        s.state = StepState::Succeeded;
                        s.reason = reason.clone();
                        s.findings = findings.clone();
                        s.finished_at = Some(Utc::now());
                    }
                    StepResult::Failed { reason, findings } => {
                        s.state = StepState::Failed;
                        s.reason = Some(reason.clone());
                        s.findings = findings.clone();
                        s.finished_at = Some(Utc::now());
                    }
                    StepResult::Retry { reason } => {
                        s.state = StepState::Pending;
                        s.reason = Some(reason.clone());
                        retry = Some(reason.clone());
                    }
                    StepResult::Wait { reason } => {
                        // Asking again is not another attempt.
                        s.state = StepState::Waiting;
                        s.attempts = s.attempts.saturating_sub(1);
                        s.reason = Some(reason.clone());
                        wait = true;
                    }
                }
            }
            if retry.is_some() || wait {
                plan.lease = None;
            }
            if wait {
                plan.state = PlanState::Waiting;
            }
            // An environment's teardown is due a TTL after it was provisioned.
            if let (
                PlanTask::ProvisionEnvironment(env),
                StepKind::Execute,
                StepResult::Passed { .. },
            ) = (&plan.task, kind, &result)
                && let Some(teardown) = plan.steps.iter_mut().find(|s| s.kind == StepKind::Teardown)
            {
                teardown.not_before =
                    Some(Utc::now() + chrono::Duration::seconds(env.ttl_seconds as i64));
            }
            if let StepResult::Passed { artifacts, .. } = &result {
                for artifact in artifacts {
                    plan.artifacts.retain(|a| a.path != artifact.path);
                    plan.artifacts.push(artifact.clone());
                }
            }
            if self.save(&mut plan, revision).await?.is_none() {
                continue;
            }
            if gate {
                let what = match result {
                    StepResult::Passed { .. } => Some("passed"),
                    StepResult::Failed { .. } => Some("failed"),
                    StepResult::Retry { .. } | StepResult::Wait { .. } => None,
                };
                if let Some(what) = what {
                    self.announce("gate", what, &plan, flow).await?;
                }
            }
            if wait {
                self.announce("step", "waiting", &plan, flow).await?;
                return Ok(Some(Outcome::Ack));
            }
            if retry.is_none() {
                self.announce("step", "finished", &plan, flow).await?;
            }
            return Ok(retry.map(|reason| {
                let attempts = plan.steps[index].attempts;
                Outcome::Retry {
                    delay: Some(toronto_runtime::connect::backoff(attempts as usize + 2)),
                    reason,
                }
            }));
        }
        Err(unavailable("the plan kept changing while a step finished"))
    }

    async fn run_step(&self, plan: &Plan, step: &Step) -> StepResult {
        let key = format!("{}:{}", plan.id, step.id);
        let timeout = self.settings.gate_timeout;
        match (step.kind, &plan.task) {
            (StepKind::Policy, PlanTask::Deploy(d)) => self.check_policy(d).await,
            (StepKind::ErrorBudget, PlanTask::Deploy(d)) => self.check_budget(d).await,
            (StepKind::Generate, PlanTask::Pipeline(p)) => match crate::pipeline::generate(p) {
                Ok(artifact) => StepResult::Passed {
                    reason: Some(format!("wrote {}", artifact.path)),
                    findings: None,
                    artifacts: vec![artifact],
                },
                Err(e) => StepResult::Failed {
                    reason: format!("cannot write the pipeline: {e}"),
                    findings: None,
                },
            },
            (StepKind::SecurityScan, PlanTask::Deploy(d)) => {
                let request = SecurityScanRequest {
                    plan_id: plan.id,
                    idempotency_key: key,
                    service: d.service.clone(),
                    version: d.version.clone(),
                    image: d
                        .image
                        .clone()
                        .unwrap_or_else(|| format!("{}:{}", d.service, d.version)),
                };
                self.ask_peer("security", "scan", request).await
            }
            (StepKind::QaTest, PlanTask::Deploy(d)) => {
                let request = QaTestRequest {
                    plan_id: plan.id,
                    idempotency_key: key,
                    environment: d.environment.clone(),
                    service: d.service.clone(),
                    version: d.version.clone(),
                    suite: self.settings.qa_suite.clone(),
                };
                self.ask_peer("qa", "test", request).await
            }
            (StepKind::Execute | StepKind::Teardown, task) => {
                let verb = match task {
                    PlanTask::ProvisionEnvironment(_) if step.kind == StepKind::Teardown => {
                        "environment.teardown"
                    }
                    PlanTask::ProvisionEnvironment(_) => "environment.provision",
                    PlanTask::Deploy(_) => "rollout.start",
                    PlanTask::Rollback(_) => "rollback",
                    PlanTask::Scale(_) => "scale",
                    PlanTask::ChaosExperiment(_) => "chaos.run",
                    PlanTask::Pipeline(_) => {
                        return StepResult::Failed {
                            reason: "a pipeline is generated, not executed".into(),
                            findings: None,
                        };
                    }
                };
                let subject = self.subjects.command(ServiceKind::Deployer, verb);
                let request = Envelope::builder(
                    self.source.clone(),
                    ExecuteRequest {
                        plan_id: plan.id,
                        idempotency_key: key,
                        task: task.clone(),
                    },
                )
                .subject(task.service())
                // The rollout continues the plan's flow: one correlation id from the
                // task to the last rollout event.
                .caused_by(&FlowContext {
                    id: plan.task_id,
                    correlationid: plan.correlationid.clone(),
                    traceparent: None,
                })
                .build();
                match call::<_, ExecuteAccepted>(
                    &self.client,
                    &subject,
                    &request,
                    Encoding::Json,
                    timeout,
                )
                .await
                {
                    Ok(reply) => {
                        let reference = reply.data.reference.unwrap_or_default();
                        // A rollout (a deploy, or a rollback to an earlier version) ends
                        // later: the step passes when it succeeds.
                        let rollout = reference
                            .strip_prefix("rollout ")
                            .filter(|rest| !rest.contains(' '))
                            .and_then(|id| id.parse::<Uuid>().ok());
                        let chaos = reference
                            .strip_prefix("chaos ")
                            .and_then(|id| id.parse::<Uuid>().ok());
                        match (rollout, chaos) {
                            (Some(id), _) => self.rollout_result(id).await,
                            (None, Some(id)) => self.chaos_result(id).await,
                            (None, None) => StepResult::Passed {
                                reason: Some(format!("deployer: {reference}")),
                                findings: None,
                                artifacts: Vec::new(),
                            },
                        }
                    }
                    Err(e) => {
                        let reason = format!("the deployer did not take the task: {e}");
                        let retryable = !matches!(&e, CallError::Remote(b) if b.code == ErrorCode::BadRequest || b.code == ErrorCode::Forbidden);
                        if retryable && step.attempts < self.settings.execute_attempts {
                            StepResult::Retry { reason }
                        } else {
                            StepResult::Failed {
                                reason,
                                findings: None,
                            }
                        }
                    }
                }
            }
            (kind, _) => StepResult::Failed {
                reason: format!("step {kind:?} does not apply to this task"),
                findings: None,
            },
        }
    }

    /// Asks the deployer for the work it took on (`rollout.get`, `chaos.get`) by id.
    async fn deployer_get<T: toronto_protocol::Message>(
        &self,
        verb: &str,
        id: Uuid,
    ) -> Result<T, CallError> {
        let request = Envelope::builder(
            self.source.clone(),
            RolloutRef {
                id: Some(id),
                ..Default::default()
            },
        )
        .build();
        let subject = self.subjects.command(ServiceKind::Deployer, verb);
        call::<_, T>(
            &self.client,
            &subject,
            &request,
            Encoding::Json,
            self.settings.gate_timeout,
        )
        .await
        .map(|reply| reply.data)
    }

    /// Where a rollout the deployer took on stands, as a step result.
    async fn rollout_result(&self, id: Uuid) -> StepResult {
        match self.deployer_get::<Rollout>("rollout.get", id).await {
            Ok(r) => match r.phase {
                RolloutPhase::Succeeded => StepResult::Passed {
                    reason: Some(format!(
                        "rollout {id} {} {} in {}",
                        if r.is_rollback { "put back" } else { "shipped" },
                        r.version,
                        r.environment
                    )),
                    findings: None,
                    artifacts: Vec::new(),
                },
                RolloutPhase::Aborted | RolloutPhase::Failed => StepResult::Failed {
                    reason: format!(
                        "rollout {id} {}: {}",
                        if r.phase == RolloutPhase::Aborted {
                            "was aborted and rolled back"
                        } else {
                            "failed and was rolled back"
                        },
                        r.reason.unwrap_or_default()
                    ),
                    findings: serde_json::to_value(&r.analyses).ok(),
                },
                RolloutPhase::Progressing | RolloutPhase::Paused => StepResult::Wait {
                    reason: format!(
                        "waiting: rollout {id} is {} at {} percent",
                        if r.phase == RolloutPhase::Paused {
                            "paused"
                        } else {
                            "progressing"
                        },
                        r.weight
                    ),
                },
            },
            // The plan is woken when the rollout ends; meanwhile say what is unknown.
            Err(e) => StepResult::Wait {
                reason: format!("waiting: rollout {id}, whose state cannot be read now: {e}"),
            },
        }
    }

    /// Where a chaos experiment the deployer runs stands, as a step result: it passes
    /// when the experiment ran its course and fails when an abort condition held.
    async fn chaos_result(&self, id: Uuid) -> StepResult {
        match self.deployer_get::<ChaosRun>("chaos.get", id).await {
            Ok(run) => {
                let reason = run.reason.clone().unwrap_or_default();
                match run.state {
                    ChaosState::Running => StepResult::Wait {
                        reason: format!("waiting: chaos experiment {id} is running"),
                    },
                    ChaosState::Completed => StepResult::Passed {
                        reason: Some(format!("chaos experiment {id} completed: {reason}")),
                        findings: None,
                        artifacts: Vec::new(),
                    },
                    ChaosState::Aborted | ChaosState::Failed => StepResult::Failed {
                        reason: format!(
                            "chaos experiment {id} {}: {reason}",
                            if run.state == ChaosState::Aborted {
                                "was aborted"
                            } else {
                                "failed"
                            }
                        ),
                        findings: serde_json::to_value(&run).ok(),
                    },
                }
            }
            Err(e) => StepResult::Wait {
                reason: format!(
                    "waiting: chaos experiment {id}, whose state cannot be read now: {e}"
                ),
            },
        }
    }

    /// A rollout or experiment of `plan_id` ended: wakes the plan whose execute step
    /// waits for it. `Retry` while the plan has not yet recorded that it waits.
    pub(crate) async fn work_ended(&self, plan_id: Option<Uuid>) -> Outcome {
        let Some(plan_id) = plan_id else {
            return Outcome::Ack;
        };
        for _ in 0..20 {
            let Ok(loaded) = self.load(plan_id).await else {
                return Outcome::Retry {
                    delay: Some(Duration::from_secs(1)),
                    reason: "plans unavailable".into(),
                };
            };
            let Some((mut plan, revision)) = loaded else {
                return Outcome::Ack;
            };
            if plan.state.is_final() {
                return Outcome::Ack;
            }
            let Some(index) = plan
                .steps
                .iter()
                .position(|s| matches!(s.kind, StepKind::Execute))
            else {
                return Outcome::Ack;
            };
            match plan.steps[index].state {
                StepState::Waiting => {}
                StepState::Running => {
                    return Outcome::Retry {
                        delay: Some(Duration::from_millis(300)),
                        reason: format!("plan {plan_id} is still recording its step"),
                    };
                }
                _ => return Outcome::Ack,
            }
            plan.steps[index].state = StepState::Pending;
            plan.state = PlanState::Running;
            match self.save(&mut plan, revision).await {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(e) => {
                    return Outcome::Retry {
                        delay: Some(Duration::from_secs(1)),
                        reason: e.to_string(),
                    };
                }
            }
            return match self.enqueue(plan_id).await {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::Retry {
                    delay: Some(Duration::from_secs(1)),
                    reason: e.to_string(),
                },
            };
        }
        Outcome::Retry {
            delay: Some(Duration::from_secs(1)),
            reason: "the plan kept changing".into(),
        }
    }

    /// The policy gate of a deploy: freeze windows and promotion order, unless an
    /// admin overrides them with a recorded reason.
    async fn check_policy(&self, deploy: &toronto_protocol::tasks::DeployTask) -> StepResult {
        let now = Utc::now();
        let mut violations = Vec::new();
        for window in &self.settings.freeze_windows {
            if window.environment == deploy.environment && window.start <= now && now < window.end {
                violations.push(format!(
                    "{} is frozen until {}",
                    deploy.environment,
                    window.end.to_rfc3339()
                ));
            }
        }
        for (target, source) in &self.settings.promotion {
            if target != &deploy.environment {
                continue;
            }
            let query = toronto_protocol::tasks::PlanList {
                service: Some(deploy.service.clone()),
                environment: Some(source.clone()),
                state: Some(PlanState::Completed),
                ..Default::default()
            };
            let promoted = match self.list(&query).await {
                Ok(plans) => plans
                    .iter()
                    .any(|p| matches!(&p.task, PlanTask::Deploy(d) if d.version == deploy.version)),
                Err(e) => {
                    return StepResult::Retry {
                        reason: format!("cannot read earlier plans: {e}"),
                    };
                }
            };
            if !promoted {
                violations.push(format!(
                    "{} {} has not succeeded in {source} before {target}",
                    deploy.service, deploy.version
                ));
            }
        }
        if violations.is_empty() {
            return StepResult::Passed {
                reason: Some("promotion order and freeze windows allow it".into()),
                findings: None,
                artifacts: Vec::new(),
            };
        }
        match &deploy.policy_override {
            Some(o) if self.settings.admin_roles.iter().any(|r| r == &o.role) => {
                StepResult::Passed {
                    reason: Some(format!("overridden by {} ({}): {}", o.by, o.role, o.reason)),
                    findings: Some(serde_json::json!({ "overridden": violations })),
                    artifacts: Vec::new(),
                }
            }
            Some(o) => StepResult::Failed {
                reason: format!(
                    "{}; the override by {} is refused: role `{}` is not an admin role",
                    violations.join("; "),
                    o.by,
                    o.role
                ),
                findings: Some(serde_json::json!({ "violations": violations })),
            },
            None => StepResult::Failed {
                reason: violations.join("; "),
                findings: Some(serde_json::json!({ "violations": violations })),
            },
        }
    }

    /// The error-budget gate: the monitor's SLO statuses of the service; an exhausted
    /// budget refuses the deploy unless it is the fix. No answer fails it (fail closed).
    async fn check_budget(&self, deploy: &toronto_protocol::tasks::DeployTask) -> StepResult {
        let request = Envelope::builder(
            self.source.clone(),
            toronto_protocol::tasks::SloGet {
                service: deploy.service.clone(),
            },
        )
        .build();
        let subject = self.subjects.command(ServiceKind::Monitor, "slo.get");
        let reply = call::<_, toronto_protocol::tasks::SloStatuses>(
            &self.client,
            &subject,
            &request,
            Encoding::Json,
            self.settings.gate_timeout,
        )
        .await;
        let statuses = match reply {
            Ok(r) => r.data.statuses,
            Err(e) => {
                return StepResult::Failed {
                    reason: format!("the monitor could not tell the error budget: {e}"),
                    findings: None,
                };
            }
        };
        let findings = serde_json::to_value(&statuses).ok();
        let exhausted: Vec<String> = statuses
            .iter()
            .filter(|s| s.exhausted)
            .map(|s| {
                format!(
                    "{} ({:.1}% of the budget left)",
                    s.slo,
                    s.budget_remaining * 100.0
                )
            })
            .collect();
        if exhausted.is_empty() {
            let reason = if statuses.is_empty() {
                format!("{} has no SLO", deploy.service)
            } else {
                "error budget left".to_owned()
            };
            return StepResult::Passed {
                reason: Some(reason),
                findings,
                artifacts: Vec::new(),
            };
        }
        if deploy.fix {
            return StepResult::Passed {
                reason: Some(format!(
                    "the change is the fix: it passes although the budget is exhausted for {}",
                    exhausted.join(", ")
                )),
                findings,
                artifacts: Vec::new(),
            };
        }
        StepResult::Failed {
            reason: format!("the error budget is exhausted for {}", exhausted.join(", ")),
            findings,
        }
    }

    /// Asks a peer agent for a gate verdict; no answer within the deadline fails the
    /// gate (fail closed).
    async fn ask_peer<T: toronto_protocol::Message>(
        &self,
        role: &str,
        verb: &str,
        request: T,
    ) -> StepResult {
        let subject = self.subjects.peer(role, verb);
        let timeout = self.settings.gate_timeout;
        let envelope = Envelope::builder(self.source.clone(), request).build();
        match call::<_, GateVerdict>(&self.client, &subject, &envelope, Encoding::Json, timeout)
            .await
        {
            Ok(reply) if reply.data.passed => StepResult::Passed {
                reason: reply.data.reason,
                findings: reply.data.findings,
                artifacts: Vec::new(),
            },
            Ok(reply) => StepResult::Failed {
                reason: format!(
                    "the {role} agent failed the gate: {}",
                    reply
                        .data
                        .reason
                        .unwrap_or_else(|| "no reason given".into())
                ),
                findings: reply.data.findings,
            },
            Err(CallError::Timeout { after, .. }) => StepResult::Failed {
                reason: format!(
                    "the {role} agent did not answer within {:.1} s",
                    after.as_secs_f64()
                ),
                findings: None,
            },
            Err(CallError::NoResponders(_)) => StepResult::Failed {
                reason: format!("no {role} agent answers on {subject}"),
                findings: None,
            },
            Err(e) => StepResult::Failed {
                reason: format!("the {role} agent's answer is unusable: {e}"),
                findings: None,
            },
        }
    }

    /// A human approves or rejects a plan waiting for approval.
    pub(crate) async fn decide(
        &self,
        decision: &PlanDecision,
        approve: bool,
        flow: &FlowContext,
    ) -> Result<Plan, ErrorBody> {
        if !self
            .settings
            .approver_roles
            .iter()
            .any(|r| r == &decision.role)
        {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!(
                    "role `{}` may not decide on plans (approver roles: {})",
                    decision.role,
                    self.settings.approver_roles.join(", ")
                ),
            ));
        }
        for _ in 0..10 {
            let (mut plan, revision) = self.load(decision.plan_id).await?.ok_or_else(|| {
                ErrorBody::new(ErrorCode::NotFound, format!("no plan {}", decision.plan_id))
            })?;
            let requester = plan.requested_by.rsplit('/').next().unwrap_or_default();
            if decision.by == plan.requested_by || decision.by == requester {
                return Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!(
                        "{} asked for this change and may not approve it",
                        decision.by
                    ),
                ));
            }
            let Some(index) = plan
                .steps
                .iter()
                .position(|s| s.kind == StepKind::Approval && s.state == StepState::Waiting)
            else {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("plan {} is not waiting for approval", plan.id),
                ));
            };
            let verdict = if approve { "approved" } else { "rejected" };
            {
                let s = &mut plan.steps[index];
                s.state = if approve {
                    StepState::Succeeded
                } else {
                    StepState::Failed
                };
                s.reason = Some(format!(
                    "{verdict} by {} ({}){}",
                    decision.by,
                    decision.role,
                    decision
                        .comment
                        .as_ref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                ));
                s.finished_at = Some(Utc::now());
            }
            plan.decisions.push(Decision {
                by: decision.by.clone(),
                role: decision.role.clone(),
                approved: approve,
                comment: decision.comment.clone(),
                at: Utc::now(),
            });
            plan.state = PlanState::Running;
            if self.save(&mut plan, revision).await?.is_none() {
                continue;
            }
            self.announce(
                "gate",
                if approve { "passed" } else { "failed" },
                &plan,
                flow,
            )
            .await?;
            self.enqueue(plan.id).await?;
            return Ok(plan);
        }
        Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("plan {} kept changing; try again", decision.plan_id),
        ))
    }
}
