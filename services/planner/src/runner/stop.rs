//! Cancelling stops what the plan started: its rollout is aborted (and rolled back by
//! the deployer), an environment it provisioned is torn down. What was stopped is
//! recorded on the plan (`cancellation.stopped`) and announced as `plan.stopped`.
//!
//! Two paths reach here, so a cancel racing a step never lets the step's work run on:
//! the `plan.cancel` handler stops work the plan had already recorded, and the runner
//! stops work whose start it records only after the plan was cancelled.

use chrono::Utc;
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::rollout::{Rollout, RolloutCommand};
use toronto_protocol::tasks::{Plan, PlanEvent, PlanTask, StepKind, StepState, StepWork, Stopped};
use toronto_protocol::{Encoding, Envelope, ErrorCode, ServiceKind};
use toronto_runtime::rpc::{CallError, call};
use toronto_runtime::work::Edit;

use crate::intake::Planner;

impl Planner {
    /// Stops the work a cancelled plan had recorded: the rollout or experiment its
    /// steps wait for, and an environment it provisioned and has not torn down.
    pub(crate) async fn stop_started(&self, plan: &Plan, flow: &FlowContext) {
        for step in &plan.steps {
            if let (Some(work), StepState::Running | StepState::Waiting) = (step.work, step.state) {
                self.stop_work(plan, &step.id, work, flow).await;
            }
        }
        if let PlanTask::ProvisionEnvironment(_) = &plan.task {
            let provisioned = plan
                .steps
                .iter()
                .any(|s| s.kind == StepKind::Execute && s.state == StepState::Succeeded);
            if provisioned {
                self.tear_down(plan, flow).await;
            }
        }
    }

    /// Stops one piece of work a cancelled plan started, and records that it did.
    pub(crate) async fn stop_work(
        &self,
        plan: &Plan,
        step: &str,
        work: StepWork,
        flow: &FlowContext,
    ) {
        let (done, detail) = match work {
            StepWork::Rollout { id } => {
                let why = cancellation_reason(plan);
                let command = RolloutCommand {
                    id: Some(id),
                    by: Some(format!("planner (plan {})", plan.id)),
                    reason: Some(why),
                    ..Default::default()
                };
                match self
                    .deployer::<_, Rollout>("rollout.abort", command, flow)
                    .await
                {
                    Ok(r) => (
                        true,
                        format!(
                            "rollout {id} aborted at {} percent; the deployer rolls it back",
                            r.weight
                        ),
                    ),
                    // It ended before the abort arrived: nothing is left running.
                    Err(CallError::Remote(e)) if e.code == ErrorCode::Conflict => (
                        true,
                        format!("rollout {id} had already ended: {}", e.message),
                    ),
                    Err(e) => (false, format!("rollout {id} could not be aborted: {e}")),
                }
            }
            StepWork::Chaos { id } => (
                false,
                format!(
                    "chaos experiment {id} runs until its duration ends or an abort condition holds: the deployer has no stop command"
                ),
            ),
        };
        self.record_stop(plan, step, Some(work), done, detail, flow)
            .await;
    }

    /// Tears down the environment a cancelled plan provisioned.
    async fn tear_down(&self, plan: &Plan, flow: &FlowContext) {
        let Some(step) = plan.steps.iter().find(|s| s.kind == StepKind::Teardown) else {
            return;
        };
        if step.state == StepState::Succeeded {
            return;
        }
        let (done, detail) = match self.run_step(plan, step).await {
            super::StepResult::Passed { reason, .. } => (
                true,
                reason.unwrap_or_else(|| "environment torn down".into()),
            ),
            super::StepResult::Failed { reason, .. }
            | super::StepResult::Retry { reason }
            | super::StepResult::Wait { reason, .. } => (false, reason),
        };
        self.record_stop(plan, &step.id, None, done, detail, flow)
            .await;
    }

    /// Records on the plan what a cancellation stopped, and announces `plan.stopped`.
    async fn record_stop(
        &self,
        plan: &Plan,
        step: &str,
        work: Option<StepWork>,
        done: bool,
        detail: String,
        flow: &FlowContext,
    ) {
        if done {
            tracing::info!(plan = %plan.id, step, %detail, "cancelled plan: work stopped");
        } else {
            tracing::warn!(plan = %plan.id, step, %detail, "cancelled plan: work not stopped");
        }
        let entry = Stopped {
            step: step.to_owned(),
            work,
            done,
            detail,
            at: Utc::now(),
        };
        let saved = self
            .records
            .update(plan.id, |p| {
                let Some(c) = p.cancellation.as_mut() else {
                    return Edit::Keep(false);
                };
                // Both paths may stop the same work; one record of it is enough.
                if c.stopped.iter().any(|s| s.step == entry.step && s.done) {
                    return Edit::Keep(false);
                }
                c.stopped.push(entry.clone());
                p.updated_at = Some(Utc::now());
                Edit::Save(true)
            })
            .await;
        match saved {
            Ok(Some((p, true))) => {
                if let Err(e) = self.announce(PlanEvent::Stopped, &p, flow).await {
                    tracing::warn!(plan = %plan.id, error = %e, "plan.stopped not announced");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(plan = %plan.id, error = %e, "the stop was not recorded"),
        }
    }

    /// A request to the deployer, continuing the plan's flow.
    async fn deployer<M: toronto_protocol::Message, R: toronto_protocol::Message>(
        &self,
        verb: &str,
        message: M,
        flow: &FlowContext,
    ) -> Result<R, CallError> {
        let request = Envelope::builder(self.source.clone(), message)
            .caused_by(flow)
            .build();
        let subject = self.subjects.command(ServiceKind::Deployer, verb);
        call::<_, R>(
            &self.client,
            &subject,
            &request,
            Encoding::Json,
            self.settings.gate_timeout,
        )
        .await
        .map(|reply| reply.data)
    }
}

/// Why the work stops, as told to the deployer.
fn cancellation_reason(plan: &Plan) -> String {
    match &plan.cancellation {
        Some(c) => format!("plan {} cancelled by {}: {}", plan.id, c.by, c.reason),
        None => format!("plan {} cancelled", plan.id),
    }
}
