//! Human approval: an approver decides on a plan waiting at its approval gate.

use chrono::Utc;
use toronto_protocol::tasks::GateEvent;
use toronto_protocol::tasks::{Decision, Plan, PlanDecision, PlanState, StepKind, StepState};
use toronto_protocol::{ErrorBody, ErrorCode};
use toronto_runtime::Request;
use toronto_runtime::work::Saved;

use crate::intake::Planner;

impl Planner {
    /// A human approves or rejects a plan waiting for approval.
    pub(crate) async fn decide(
        &self,
        request: &Request<PlanDecision>,
        approve: bool,
    ) -> Result<Plan, ErrorBody> {
        let decision = request.data();
        let flow = &request.flow();
        let caller = request.caller.as_deref();
        // A verified decider holds the approver role (the endpoint's access rule);
        // the `role` text of the payload counts only when nothing is verified.
        if caller.is_none()
            && !self
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
        for _ in self.records.policy().tries() {
            let (mut plan, revision) = self.load(decision.plan_id).await?.ok_or_else(|| {
                ErrorBody::new(ErrorCode::NotFound, format!("no plan {}", decision.plan_id))
            })?;
            if let Some(caller) = caller {
                let verdict = crate::trust::check_two_person(&plan, caller);
                let action = "plan-decide:two-person";
                request
                    .audit(self.auth.as_deref(), action, verdict.as_ref().err())
                    .await;
                verdict.map_err(ErrorBody::from)?;
            }
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
            if self.save(&mut plan, revision).await? == Saved::Conflict {
                continue;
            }
            self.announce(
                if approve {
                    GateEvent::Passed
                } else {
                    GateEvent::Failed
                },
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
