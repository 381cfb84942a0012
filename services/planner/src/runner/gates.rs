//! The gates of a deploy: policy (freeze windows, promotion order), error budget,
//! and peer agents' verdicts, each failing closed.

use chrono::Utc;
use toronto_protocol::tasks::{GateVerdict, PlanState, PlanTask};
use toronto_protocol::{Encoding, Envelope, ServiceKind};
use toronto_runtime::auth::AuthMode;
use toronto_runtime::rpc::{CallError, call, call_for_signed_reply};

use super::StepResult;
use crate::intake::Planner;

impl Planner {
    /// The policy gate of a deploy: freeze windows and promotion order, unless an
    /// admin overrides them with a recorded reason.
    pub(super) async fn check_policy(
        &self,
        deploy: &toronto_protocol::tasks::DeployTask,
    ) -> StepResult {
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
    pub(super) async fn check_budget(
        &self,
        deploy: &toronto_protocol::tasks::DeployTask,
    ) -> StepResult {
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
            // `fix: true` is a claim anyone can write: it counts only when the incident
            // commander has an open incident of the service for it to fix.
            return match self.open_incident(&deploy.service).await {
                Ok(Some(incident)) => StepResult::Passed {
                    reason: Some(format!(
                        "the change is the fix of {incident}: it passes although the budget is exhausted for {}",
                        exhausted.join(", ")
                    )),
                    findings,
                    artifacts: Vec::new(),
                },
                Ok(None) => StepResult::Failed {
                    reason: format!(
                        "the error budget is exhausted for {}; `fix: true` is refused: {} has no open incident to fix",
                        exhausted.join(", "),
                        deploy.service
                    ),
                    findings,
                },
                Err(e) => StepResult::Failed {
                    reason: format!(
                        "the error budget is exhausted for {}; the incident commander could not tell whether {} has an open incident to fix: {e}",
                        exhausted.join(", "),
                        deploy.service
                    ),
                    findings,
                },
            };
        }
        StepResult::Failed {
            reason: format!("the error budget is exhausted for {}", exhausted.join(", ")),
            findings,
        }
    }

    /// The newest open incident of `service`, as `incident <id> (<title>)`.
    async fn open_incident(&self, service: &str) -> Result<Option<String>, CallError> {
        let request = Envelope::builder(
            self.source.clone(),
            toronto_protocol::incidents::IncidentList {
                service: Some(service.to_owned()),
                open: true,
                limit: Some(1),
                ..Default::default()
            },
        )
        .build();
        let subject = self
            .subjects
            .command(ServiceKind::IncidentCommander, "list");
        let reply = call::<_, toronto_protocol::incidents::Incidents>(
            &self.client,
            &subject,
            &request,
            Encoding::Json,
            self.settings.gate_timeout,
        )
        .await?;
        Ok(reply
            .data
            .incidents
            .first()
            .map(|i| format!("incident {} ({})", i.id, i.title)))
    }

    /// Asks a peer agent for a gate verdict; no answer within the deadline fails the
    /// gate (fail closed).
    pub(super) async fn ask_peer<T: toronto_protocol::Message>(
        &self,
        role: &str,
        verb: &str,
        request: T,
    ) -> StepResult {
        let subject = self.subjects.peer(role, verb);
        let timeout = self.settings.gate_timeout;
        let envelope = Envelope::builder(self.source.clone(), request).build();
        let verdict =
            call_for_signed_reply::<_, GateVerdict>(&self.client, &subject, &envelope, timeout)
                .await;
        // A registered agent's verdict counts only when that agent signed it.
        if let (Ok(reply), Some(auth)) = (&verdict, &self.auth) {
            let source = format!("toronto://agents/{role}");
            match auth.verify_reply(
                &source,
                &reply.subject,
                reply.headers.as_ref(),
                &reply.payload,
            ) {
                Ok(_) => {}
                Err(refusal) if auth.mode() == AuthMode::Permissive => {
                    tracing::warn!(role, reason = %refusal, "would refuse the verdict (permissive mode)");
                }
                Err(refusal) => {
                    return StepResult::Failed {
                        reason: format!("the {role} agent's verdict is refused: {refusal}"),
                        findings: None,
                    };
                }
            }
        }
        match verdict.map(|reply| reply.envelope) {
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
}
