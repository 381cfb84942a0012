//! The blast-radius freeze gate: while a severe incident is open, the incident
//! commander freezes the services it touches (and their direct dependents and
//! dependencies); a deploy to one of them is refused unless it is the fix
//! (`fix: true`). The planner asks the incident commander (`incident.freeze.list`);
//! when no incident commander runs there is nothing frozen, and when it does not
//! answer in time the gate fails closed.

use toronto_protocol::incidents::{FreezeList, Freezes};
use toronto_protocol::tasks::DeployTask;
use toronto_protocol::{Encoding, Envelope, ServiceKind};
use toronto_runtime::rpc::{CallError, call};

use super::StepResult;
use crate::intake::Planner;

impl Planner {
    /// `Some(refusal)` when the service is frozen by an incident and the deploy is not
    /// the fix; `None` lets the policy gate carry on.
    pub(super) async fn check_freeze(&self, deploy: &DeployTask) -> Option<StepResult> {
        let query = FreezeList {
            service: Some(deploy.service.clone()),
            environment: Some(deploy.environment.clone()),
        };
        let request = Envelope::builder(self.source.clone(), query).build();
        let subject = self
            .subjects
            .command(ServiceKind::IncidentCommander, "freeze.list");
        let reply = call::<_, Freezes>(
            &self.client,
            &subject,
            &request,
            Encoding::Json,
            self.settings.gate_timeout,
        )
        .await;
        let freezes = match reply {
            Ok(r) => r.data.freezes,
            Err(CallError::NoResponders(_)) => return None,
            Err(e) => {
                return Some(StepResult::Failed {
                    reason: format!("the incident commander could not tell about freezes: {e}"),
                    findings: None,
                });
            }
        };
        if freezes.is_empty() {
            return None;
        }
        let incidents: Vec<String> = freezes
            .iter()
            .map(|f| format!("incident {} ({})", f.incident_id, f.title))
            .collect();
        let findings = serde_json::to_value(&freezes).ok();
        if deploy.fix {
            // Recorded on the plan; the policy gate still runs.
            tracing::info!(service = %deploy.service, "a fix passes the freeze of {}", incidents.join(", "));
            return None;
        }
        Some(StepResult::Failed {
            reason: format!(
                "{} in {} is frozen by {}; only the fix (fix: true) may deploy",
                deploy.service,
                deploy.environment,
                incidents.join(", ")
            ),
            findings,
        })
    }
}
