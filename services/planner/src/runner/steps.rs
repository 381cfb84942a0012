//! Running one step of a plan: a gate (policy, error budget, a peer's verdict), the
//! pipeline generator, or the hand-over to the deployer and the wait for its work.

use toronto_protocol::envelope::FlowContext;
use toronto_protocol::rollout::{ChaosRun, ChaosState, Rollout, RolloutPhase, RolloutRef};
use toronto_protocol::tasks::{
    ExecuteAccepted, ExecuteRequest, Plan, PlanTask, QaTestRequest, SecurityScanRequest, Step,
    StepKind, StepWork,
};
use toronto_protocol::{Encoding, Envelope, ErrorCode, ServiceKind};
use toronto_runtime::rpc::{CallError, call};
use uuid::Uuid;

use super::StepResult;
use crate::intake::Planner;

impl Planner {
    /// Runs one step; the key `<plan id>:<step id>` makes it idempotent at the executor.
    pub(super) async fn run_step(&self, plan: &Plan, step: &Step) -> StepResult {
        let key = format!("{}:{}", plan.id, step.id);
        let timeout = self.settings.gate_timeout;
        match (step.kind, &plan.task) {
            (StepKind::Policy, PlanTask::Deploy(d)) => match self.check_freeze(d).await {
                Some(refused) => refused,
                None => self.check_policy(d).await,
            },
            (StepKind::ErrorBudget, PlanTask::Deploy(d)) => {
                self.check_budget(d, step.attempts).await
            }
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
            (StepKind::ArchitectReview, _) => self.architect_review(plan, key).await,
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
                    id: plan.task_id.clone(),
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
    pub(super) async fn rollout_result(&self, id: Uuid) -> StepResult {
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
                    work: Some(StepWork::Rollout { id }),
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
                work: Some(StepWork::Rollout { id }),
                reason: format!("waiting: rollout {id}, whose state cannot be read now: {e}"),
            },
        }
    }

    /// Where a chaos experiment the deployer runs stands, as a step result: it passes
    /// when the experiment ran its course and fails when an abort condition held.
    pub(super) async fn chaos_result(&self, id: Uuid) -> StepResult {
        match self.deployer_get::<ChaosRun>("chaos.get", id).await {
            Ok(run) => {
                let reason = run.reason.clone().unwrap_or_default();
                match run.state {
                    ChaosState::Running => StepResult::Wait {
                        work: Some(StepWork::Chaos { id }),
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
                work: Some(StepWork::Chaos { id }),
                reason: format!(
                    "waiting: chaos experiment {id}, whose state cannot be read now: {e}"
                ),
            },
        }
    }
}
