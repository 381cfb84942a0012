//! Plan execution: steps in order (gates, approval, hand-over to the deployer), one
//! active plan per service and environment, durable across planner restarts.
//!
//! Work arrives as "advance plan X" messages on a JetStream work queue consumed by
//! every planner replica. The plan in KV is the truth: each change is a
//! compare-and-set on its revision, and a lease names the instance working on it, so
//! two replicas never run the same plan at once, and a replica that dies mid-step
//! loses its lease when the message's ack deadline (the same length) runs out, after
//! which another replica picks the message up and carries on from the stored state.
//! Steps are idempotent by `plan id:step id`, the key every executor receives. The
//! store, the lease, the per-scope turn and the queue are [`toronto_runtime::work`]'s;
//! this module describes the steps.

use std::time::Duration;
use toronto_protocol::tasks::{GateEvent, PlanEvent, StepEvent};

use async_nats::jetstream::kv;
use chrono::Utc;
use toronto_protocol::Envelope;
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::tasks::{
    AdvancePlan, Plan, PlanState, PlanTask, Step, StepKind, StepState, StepWork,
};
use toronto_runtime::jetstream::{Delivery, Outcome};
use toronto_runtime::work::{Claim, KeyLock, Records, Saved, Taken, WorkError, lease};
use uuid::Uuid;

use crate::intake::{IntakeError, Planner};
use crate::settings::Settings;

mod architect;
mod decide;
mod freeze;
mod gates;
mod steps;
mod stop;
mod sweep;

pub use sweep::Swept;

/// The steps of a plan for `task`.
pub fn steps_for(task: &PlanTask, settings: &Settings) -> Vec<Step> {
    match task {
        PlanTask::Pipeline(_) => return vec![Step::new("generate", StepKind::Generate)],
        PlanTask::ProvisionEnvironment(_) => {
            let mut steps = Vec::new();
            if !settings.architect_environments.is_empty() {
                steps.push(Step::new("architect-review", StepKind::ArchitectReview));
            }
            steps.push(Step::new("execute", StepKind::Execute));
            steps.push(Step::new("teardown", StepKind::Teardown));
            return steps;
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
    // Asked at run time, and only when the task is an infrastructure change.
    let infrastructure = match task {
        PlanTask::Deploy(d) => settings.architect_reviews(&d.environment),
        PlanTask::Scale(s) => settings.architect_reviews(&s.environment),
        _ => false,
    };
    if infrastructure {
        steps.push(Step::new("architect-review", StepKind::ArchitectReview));
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

/// What running a step came to.
pub(crate) enum StepResult {
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
    Wait {
        reason: String,
        /// The work waited for: what cancelling the plan stops.
        work: Option<StepWork>,
    },
}

/// How many passes one delivery makes over a plan (steps done and conflicts met)
/// before it gives up with [`WorkError::Contended`] and is retried.
const MAX_PASSES: u32 = 100;

/// The plans of a bucket, under `plan.<id>`.
pub(crate) fn plan_records(kv: kv::Store) -> Records<Plan> {
    Records::new(kv, "plan", |p: &Plan| p.state.is_final())
}

/// The turns beside `records` (one active plan per service and environment), under
/// `turn.<service>.<environment>`.
pub(crate) fn turns(records: Records<Plan>) -> KeyLock<Plan> {
    KeyLock::new(records, "turn")
}

/// The scope of a plan's turn: its service and environment.
pub(crate) fn scope(plan: &Plan) -> String {
    format!("{}.{}", plan.task.service(), plan.task.environment())
}

/// Runs `work`, sending a progress ack for `delivery` now and every `every` until it
/// ends, so that its message is not redelivered while it is being worked on.
async fn with_progress<F: std::future::Future>(
    delivery: &Delivery,
    every: Duration,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => delivery.progress().await,
        }
    }
}

impl Planner {
    /// Asks the runner to advance a plan.
    pub(crate) async fn enqueue(&self, plan_id: Uuid) -> Result<(), IntakeError> {
        let envelope = Envelope::builder(self.source.clone(), AdvancePlan { plan_id }).build();
        Ok(self.runs.enqueue(&envelope).await?)
    }

    /// A plan with its revision.
    pub(crate) async fn load(&self, id: Uuid) -> Result<Option<(Plan, u64)>, IntakeError> {
        Ok(self.records.load(id).await?.map(|v| (v.value, v.revision)))
    }

    /// Stores the plan if nobody changed it since `revision`.
    pub(crate) async fn save(&self, plan: &mut Plan, revision: u64) -> Result<Saved, IntakeError> {
        plan.updated_at = Some(Utc::now());
        Ok(self.records.save(plan.id, plan, revision).await?)
    }

    /// Gives up the turn held by `plan` (if it holds it) and wakes the oldest queued
    /// plan of the same service and environment.
    pub(crate) async fn release_turn(&self, plan: &Plan) -> Result<(), IntakeError> {
        self.release_scope(&scope(plan), plan.id).await
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
        for _ in 0..MAX_PASSES {
            let Some((mut plan, revision)) = self.load(plan_id).await? else {
                return Ok(Outcome::Ack);
            };
            let flow = FlowContext {
                id: plan.task_id.clone(),
                correlationid: plan.correlationid.clone(),
                traceparent: None,
            };
            if plan.state.is_final() {
                self.release_turn(&plan).await?;
                return Ok(Outcome::Ack);
            }
            let now = Utc::now();
            // The lease is renewed on every pass and stored with the pass's first save.
            match lease::claim(
                plan.lease.as_ref(),
                &self.instance,
                now,
                self.settings.lease,
                Duration::MAX,
            ) {
                // Another planner holds it. A first delivery is a wake-up while the
                // holder works (its own message keeps it going); a redelivery may be a
                // dead holder's own message, so it is kept until the lease runs out and
                // taken then (acknowledging it would strand the plan with nobody to
                // advance it).
                Claim::Held { until, owner } if delivery.deliveries() > 1 => {
                    let left = (until - now).to_std().unwrap_or_default();
                    return Ok(Outcome::Retry {
                        delay: Some(
                            (left + Duration::from_millis(50)).min(self.settings.lease / 4),
                        ),
                        reason: format!("held by {owner} until its lease runs out"),
                    });
                }
                Claim::Held { .. } => return Ok(Outcome::Ack),
                Claim::Take(lease) => plan.lease = Some(lease),
                Claim::Keep => {}
            }
            if plan.state == PlanState::Queued {
                if let Taken::HeldBy(_) = self.turns.take(&scope(&plan), plan.id).await? {
                    return Ok(Outcome::Ack); // woken again when the turn is released
                }
                self.queue.remove(&scope(&plan), &[plan.id]).await?;
                plan.state = PlanState::Running;
            }
            let Some(index) = plan
                .steps
                .iter()
                .position(|s| s.state != StepState::Succeeded)
            else {
                plan.state = PlanState::Completed;
                plan.lease = None;
                if self.save(&mut plan, revision).await? == Saved::Conflict {
                    continue;
                }
                self.announce(PlanEvent::Completed, &plan, &flow).await?;
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
                    if self.save(&mut plan, revision).await? == Saved::Conflict {
                        continue;
                    }
                    self.announce(PlanEvent::Failed, &plan, &flow).await?;
                    self.release_turn(&plan).await?;
                    return Ok(Outcome::Ack);
                }
                StepState::Waiting => {
                    plan.state = PlanState::Waiting;
                    plan.lease = None;
                    if self.save(&mut plan, revision).await? == Saved::Conflict {
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
                if self.save(&mut plan, revision).await? == Saved::Conflict {
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
                if self.save(&mut plan, revision).await? == Saved::Conflict {
                    continue;
                }
                self.announce(GateEvent::Waiting, &plan, &flow).await?;
                return Ok(Outcome::Ack);
            }
            {
                let s = &mut plan.steps[index];
                s.state = StepState::Running;
                s.attempts += 1;
                s.started_at = Some(now);
            }
            plan.state = PlanState::Running;
            if self.save(&mut plan, revision).await? == Saved::Conflict {
                continue;
            }
            self.announce(StepEvent::Started, &plan, &flow).await?;
            // A long step (a gate asking a slow peer) keeps its message: progress acks
            // hold off the redelivery for as long as the step runs here.
            let every = self.settings.lease / 3;
            let result =
                with_progress(delivery, every, self.run_step(&plan, &plan.steps[index])).await;
            match self.finish_step(plan_id, index, result, &flow).await? {
                Some(outcome) => return Ok(outcome),
                None => continue,
            }
        }
        Err(WorkError::Contended {
            key: self.records.key(plan_id),
            attempts: MAX_PASSES,
        }
        .into())
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
        for _ in self.records.policy().tries() {
            let Some((mut plan, revision)) = self.load(plan_id).await? else {
                return Ok(Some(Outcome::Ack));
            };
            if plan.state.is_final() {
                // Cancelled while the step ran: whatever it started is stopped now.
                let step = plan.steps[index].id.clone();
                match (&result, plan.steps[index].kind, &plan.task) {
                    (
                        StepResult::Wait {
                            work: Some(work), ..
                        },
                        _,
                        _,
                    ) => {
                        self.stop_work(&plan, &step, *work, flow).await;
                    }
                    (
                        StepResult::Passed { .. },
                        StepKind::Execute,
                        PlanTask::ProvisionEnvironment(_),
                    ) => {
                        let mut provisioned = plan.clone();
                        provisioned.steps[index].state = StepState::Succeeded;
                        self.stop_started(&provisioned, flow).await;
                    }
                    _ => {}
                }
                return Ok(Some(Outcome::Ack));
            }
            let kind = plan.steps[index].kind;
            let gate = matches!(
                kind,
                StepKind::Policy
                    | StepKind::ErrorBudget
                    | StepKind::SecurityScan
                    | StepKind::QaTest
                    | StepKind::ArchitectReview
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
                    StepResult::Wait { reason, work } => {
                        // Asking again is not another attempt.
                        s.state = StepState::Waiting;
                        s.work = *work;
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
            if self.save(&mut plan, revision).await? == Saved::Conflict {
                continue;
            }
            if gate {
                let what = match result {
                    StepResult::Passed { .. } => Some(GateEvent::Passed),
                    StepResult::Failed { .. } => Some(GateEvent::Failed),
                    StepResult::Retry { .. } | StepResult::Wait { .. } => None,
                };
                if let Some(what) = what {
                    self.announce(what, &plan, flow).await?;
                }
            }
            if wait {
                self.announce(StepEvent::Waiting, &plan, flow).await?;
                return Ok(Some(Outcome::Ack));
            }
            if retry.is_none() {
                self.announce(StepEvent::Finished, &plan, flow).await?;
            }
            return Ok(retry.map(|reason| {
                let attempts = plan.steps[index].attempts;
                Outcome::Retry {
                    delay: Some(toronto_runtime::connect::backoff(attempts as usize + 2)),
                    reason,
                }
            }));
        }
        Err(self
            .records
            .policy()
            .exhausted(self.records.key(plan_id))
            .into())
    }

    /// A rollout or experiment of `plan_id` ended: wakes the plan whose execute step
    /// waits for it. `Retry` while the plan has not yet recorded that it waits.
    pub(crate) async fn work_ended(&self, plan_id: Option<Uuid>) -> Outcome {
        let Some(plan_id) = plan_id else {
            return Outcome::Ack;
        };
        for _ in self.records.policy().tries() {
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
                Ok(Saved::Stored(_)) => {}
                Ok(Saved::Conflict) => continue,
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
}
