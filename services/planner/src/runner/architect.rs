//! The architect gate: an infrastructure change (a service's first deploy to an
//! environment, a new environment, a change of strategy family, a scale beyond the
//! configured factor) is reviewed by the architect agent
//! (`toronto.agents.architect.v1.review`) like the security and QA gates ask theirs,
//! failing closed. Whether a task is such a change is decided when the gate runs,
//! from what the deployer runs then; an ordinary change passes without asking.

use std::mem::discriminant;

use chrono::{DateTime, Utc};
use toronto_protocol::rollout::{Rollout, RolloutList, RolloutPhase, Rollouts};
use toronto_protocol::tasks::{
    ArchitectReviewRequest, InfraChange, Plan, PlanList, PlanState, PlanTask, Strategy,
};
use toronto_protocol::{Encoding, Envelope, ServiceKind};
use toronto_runtime::rpc::{CallError, call};

use super::StepResult;
use crate::intake::Planner;

/// Pages of the service's rollouts read to find the one serving (50 each).
const MAX_PAGES: usize = 4;

/// Why the gate cannot tell whether a task is an infrastructure change.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReviewError {
    /// The deployer did not answer `rollout.list`.
    #[error("the deployer could not list the rollouts of {service} in {environment}: {source}")]
    Rollouts {
        /// The service.
        service: String,
        /// The environment.
        environment: String,
        /// Why.
        #[source]
        source: CallError,
    },
    /// The planner's own plans could not be read.
    #[error("cannot read earlier plans: {0}")]
    Plans(#[source] crate::intake::IntakeError),
}

/// What serves a service in an environment now, as far as the gate needs it.
struct Serving {
    strategy: Strategy,
    replicas: u32,
    since: Option<DateTime<Utc>>,
}

impl Planner {
    /// The architect gate of `plan`: asks the architect when the task is an
    /// infrastructure change, else passes without asking.
    pub(super) async fn architect_review(&self, plan: &Plan, key: String) -> StepResult {
        let changes = match self.infra_changes(&plan.task).await {
            Ok(changes) => changes,
            Err(e) => {
                return StepResult::Failed {
                    reason: format!(
                        "cannot tell whether the task is an infrastructure change, so the architect gate fails closed: {e}"
                    ),
                    findings: None,
                };
            }
        };
        if changes.is_empty() {
            return StepResult::Passed {
                reason: Some("not an infrastructure change: the architect is not asked".into()),
                findings: None,
                artifacts: Vec::new(),
            };
        }
        let request = ArchitectReviewRequest {
            plan_id: plan.id,
            idempotency_key: key,
            service: plan.task.service().to_owned(),
            environment: plan.task.environment().to_owned(),
            changes,
            task: plan.task.clone(),
        };
        self.ask_peer("architect", "review", request).await
    }

    /// The infrastructure changes `task` makes (none for an ordinary change).
    pub(crate) async fn infra_changes(
        &self,
        task: &PlanTask,
    ) -> Result<Vec<InfraChange>, ReviewError> {
        Ok(match task {
            PlanTask::ProvisionEnvironment(_) => vec![InfraChange::ProvisionEnvironment],
            PlanTask::Deploy(d) => match self.serving(&d.service, &d.environment).await? {
                None => vec![InfraChange::FirstDeploy],
                Some(s) if discriminant(&s.strategy) != discriminant(&d.strategy) => {
                    vec![InfraChange::StrategyChange {
                        from: s.strategy,
                        to: d.strategy.clone(),
                    }]
                }
                Some(_) => Vec::new(),
            },
            PlanTask::Scale(t) => {
                let Some(serving) = self.serving(&t.service, &t.environment).await? else {
                    // Nothing runs: the deployer refuses the scale itself.
                    return Ok(Vec::new());
                };
                let from = self
                    .scaled_since(&t.service, &t.environment, serving.since)
                    .await?
                    .unwrap_or(serving.replicas);
                let factor = self.settings.architect_scale_factor;
                let (f, to) = (f64::from(from), f64::from(t.replicas));
                if to > f * factor || to * factor < f {
                    vec![InfraChange::Scale {
                        from,
                        to: t.replicas,
                        factor,
                    }]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        })
    }

    /// The newest rollout of the service that succeeded (what serves now), read from
    /// the deployer a page at a time; `None` when nothing of it ever succeeded there.
    async fn serving(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Option<Serving>, ReviewError> {
        let subject = self.subjects.command(ServiceKind::Deployer, "rollout.list");
        let mut cursor = None;
        for _ in 0..MAX_PAGES {
            let request = Envelope::builder(
                self.source.clone(),
                RolloutList {
                    service: Some(service.to_owned()),
                    environment: Some(environment.to_owned()),
                    active: false,
                    limit: Some(50),
                    cursor,
                },
            )
            .build();
            let page = call::<_, Rollouts>(
                &self.client,
                &subject,
                &request,
                Encoding::Json,
                self.settings.gate_timeout,
            )
            .await
            .map_err(|source| ReviewError::Rollouts {
                service: service.to_owned(),
                environment: environment.to_owned(),
                source,
            })?
            .data;
            if let Some(r) = page
                .rollouts
                .iter()
                .find(|r| r.phase == RolloutPhase::Succeeded)
            {
                return Ok(Some(serving_of(r)));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The replicas of the newest completed scale plan of the service after `since`.
    async fn scaled_since(
        &self,
        service: &str,
        environment: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Option<u32>, ReviewError> {
        let plans = self
            .list(&PlanList {
                service: Some(service.to_owned()),
                environment: Some(environment.to_owned()),
                state: Some(PlanState::Completed),
                ..Default::default()
            })
            .await
            .map_err(ReviewError::Plans)?;
        Ok(plans
            .iter()
            .filter(|p| since.is_none_or(|s| p.updated_at.unwrap_or(p.created_at) > s))
            .find_map(|p| match &p.task {
                PlanTask::Scale(t) => Some(t.replicas),
                _ => None,
            }))
    }
}

fn serving_of(r: &Rollout) -> Serving {
    Serving {
        strategy: r.strategy.clone(),
        replicas: r.replicas,
        since: r.finished_at,
    }
}
