//! What the planner tells others about a plan: its events on the bus, the requesting
//! peer's notify subject, and a delegating agent's task vocabulary (`accept_task`,
//! `progress_update`, `task_completed`).

use bytes::Bytes;
use toronto_protocol::Envelope;
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::tasks::Plan;

use toronto_protocol::EventKind;
use toronto_protocol::tasks::PlanEvent;

use crate::intake::{IntakeError, Planner, requester_role};

impl Planner {
    /// Publishes the event `what` (a plan, step or gate event) with the plan as its data.
    pub(crate) async fn announce<K: EventKind>(
        &self,
        what: K,
        plan: &Plan,
        flow: &FlowContext,
    ) -> Result<(), IntakeError> {
        let event = Envelope::builder(self.source.clone(), plan.clone())
            .subject(plan.task.service())
            .event(K::ENTITY, what.as_str())
            .caused_by(flow)
            .build();
        self.events
            .publish(K::ENTITY, what.as_str(), &event)
            .await?;
        // A delegating agent hears of its task in the delegation vocabulary.
        if let Some(d) = &plan.delegation {
            self.answer_delegation(d, K::ENTITY, what.as_str(), plan, flow)
                .await;
            return Ok(());
        }
        // The requesting peer hears of its plan on its own notify subject.
        if let Some(role) = requester_role(&plan.requested_by) {
            let subject = self.subjects.notify(role);
            if let Ok(bytes) = toronto_protocol::encode(&event, toronto_protocol::Encoding::Json) {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "Content-Type",
                    toronto_protocol::Encoding::Json.content_type(),
                );
                if let Err(e) = self
                    .client
                    .publish_with_headers(subject, headers, Bytes::from(bytes))
                    .await
                {
                    tracing::warn!(error = %e, "cannot notify the requesting peer");
                }
            }
        }
        Ok(())
    }

    /// Publishes `message` to `toronto.agents.<role>.v1.notify` (best effort: the
    /// plan goes on whether the peer listens or not).
    pub(crate) async fn notify_role<T: toronto_protocol::Message>(
        &self,
        role: &str,
        message: T,
        flow: &FlowContext,
    ) {
        let envelope = Envelope::builder(self.source.clone(), message)
            .caused_by(flow)
            .build();
        let Ok(bytes) = toronto_protocol::encode(&envelope, toronto_protocol::Encoding::Json)
        else {
            return;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Content-Type",
            toronto_protocol::Encoding::Json.content_type(),
        );
        if let Err(e) = self
            .client
            .publish_with_headers(self.subjects.notify(role), headers, Bytes::from(bytes))
            .await
        {
            tracing::warn!(error = %e, role, "cannot notify the delegating agent");
        }
    }

    /// Translates a plan event into the delegation vocabulary: `accept_task` when the
    /// plan is made, `progress_update` as steps go, `task_completed` at the end.
    async fn answer_delegation(
        &self,
        d: &toronto_protocol::delegation::Delegation,
        entity: &str,
        what: &str,
        plan: &Plan,
        flow: &FlowContext,
    ) {
        use toronto_protocol::delegation::{AcceptTask, ProgressUpdate, TaskCompleted};
        let event = (entity == PlanEvent::ENTITY)
            .then(|| PlanEvent::from_token(what).ok())
            .flatten();
        match event {
            Some(PlanEvent::Created) => {
                let accept = AcceptTask {
                    task_id: d.task_id.clone(),
                    plan_id: plan.id,
                    agent: "devops".into(),
                };
                self.notify_role(&d.role, accept, flow).await;
            }
            Some(end @ (PlanEvent::Completed | PlanEvent::Failed | PlanEvent::Cancelled)) => {
                let success = end == PlanEvent::Completed;
                let summary = if success {
                    let last = plan.steps.last().and_then(|s| s.reason.clone());
                    format!(
                        "done: {} {} in {}{}",
                        plan.task.kind(),
                        plan.task.service(),
                        plan.task.environment(),
                        last.map(|r| format!(" ({r})")).unwrap_or_default()
                    )
                } else {
                    format!(
                        "{what}: {}",
                        plan.reason
                            .clone()
                            .or_else(|| plan.cancellation.as_ref().map(|c| c.reason.clone()))
                            .unwrap_or_default()
                    )
                };
                let done = TaskCompleted {
                    task_id: d.task_id.clone(),
                    plan_id: plan.id,
                    success,
                    summary,
                    artifacts: plan.artifacts.clone(),
                };
                self.notify_role(&d.role, done, flow).await;
            }
            // The task was answered when the plan was cancelled.
            Some(PlanEvent::Stopped) => {}
            None => {
                let current = plan
                    .steps
                    .iter()
                    .rev()
                    .find(|s| s.state != toronto_protocol::tasks::StepState::Pending);
                let done = plan
                    .steps
                    .iter()
                    .filter(|s| s.state == toronto_protocol::tasks::StepState::Succeeded)
                    .count();
                let update = ProgressUpdate {
                    task_id: d.task_id.clone(),
                    plan_id: plan.id,
                    state: plan.state,
                    step: current.map(|s| s.id.clone()),
                    message: format!(
                        "{entity} {what}{}",
                        current
                            .map(|s| format!(
                                ": {}{}",
                                s.id,
                                s.reason
                                    .as_ref()
                                    .map(|r| format!(" ({r})"))
                                    .unwrap_or_default()
                            ))
                            .unwrap_or_default()
                    ),
                    progress: done as f64 / plan.steps.len().max(1) as f64,
                };
                self.notify_role(&d.role, update, flow).await;
            }
        }
    }
}
