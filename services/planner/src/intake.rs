//! Task intake, the same behaviour through both doors (`planner.submit` and the
//! `TORONTO_DEVOPS_TASKS` work queue): decode, validate with every reason, make one
//! plan per task (deduplicated by the task's envelope id), record it, announce it.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::tasks::{
    Cancellation, ChaosExperimentTask, ChaosFault, DeployTask, PipelineTask, Plan, PlanCancel,
    PlanList, PlanState, PlanTask, ProvisionEnvironmentTask, RollbackTask, ScaleTask, Strategy,
    SubmitAccepted,
};
use toronto_protocol::{Envelope, ErrorBody, ErrorCode, RawEnvelope};
use toronto_runtime::Accepts;
use toronto_runtime::jetstream::Events;
use uuid::Uuid;

/// The task types the planner takes.
pub fn accepts() -> Accepts {
    Accepts::new()
        .with::<DeployTask>()
        .with::<RollbackTask>()
        .with::<ScaleTask>()
        .with::<PipelineTask>()
        .with::<ProvisionEnvironmentTask>()
        .with::<ChaosExperimentTask>()
        .with::<toronto_protocol::delegation::AssignTask>()
}

/// Why a task was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The task is wrong; every reason is listed. Sending it again will not help.
    #[error("task rejected: {}", .0.join("; "))]
    Rejected(Vec<String>),
    /// State could not be read or written; trying again may succeed.
    #[error("planner state unavailable: {0}")]
    Unavailable(String),
}

impl From<IntakeError> for ErrorBody {
    fn from(e: IntakeError) -> Self {
        match &e {
            IntakeError::Rejected(reasons) => ErrorBody::new(ErrorCode::BadRequest, e.to_string())
                .with_details(json!({ "reasons": reasons })),
            IntakeError::Unavailable(_) => ErrorBody::new(ErrorCode::Unavailable, e.to_string()),
        }
    }
}

/// The planner's state and connections, shared by the endpoints, the intake and the
/// runner.
#[derive(Clone, Debug)]
pub struct Planner {
    pub(crate) plans: kv::Store,
    pub(crate) events: Events,
    pub(crate) source: String,
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) subjects: toronto_protocol::Subjects,
    pub(crate) settings: crate::settings::Settings,
    /// This instance, as the owner of the plans it works on.
    pub(crate) instance: String,
}

fn dns_label(what: &str, value: &str, reasons: &mut Vec<String>) {
    if let Err(problem) = toronto_protocol::domain::check_dns_label(value) {
        reasons.push(format!("{what} `{value}` {problem}"));
    }
}

fn version(what: &str, value: &str, reasons: &mut Vec<String>) {
    if let Err(problem) = toronto_protocol::domain::check_version(value) {
        reasons.push(format!("{what} `{value}` {problem}"));
    }
}

fn token(what: &str, value: &str, reasons: &mut Vec<String>) {
    if value.is_empty() || value.len() > 255 || value.chars().any(char::is_whitespace) {
        reasons.push(format!(
            "{what} `{value}` must be 1-255 characters without spaces"
        ));
    }
}

/// Every reason the task cannot be planned; empty when it can.
pub fn validate(task: &PlanTask) -> Vec<String> {
    let mut reasons = Vec::new();
    dns_label("service", task.service(), &mut reasons);
    dns_label("environment", task.environment(), &mut reasons);
    match task {
        PlanTask::Deploy(t) => {
            version("version", &t.version, &mut reasons);
            if let Some(image) = &t.image {
                token("image", image, &mut reasons);
            }
            if let Strategy::Canary { steps } = &t.strategy
                && !steps.is_empty()
            {
                let mut previous = 0u8;
                for step in steps {
                    if step.weight == 0 || step.weight > 100 {
                        reasons.push(format!(
                            "canary step weight {} must be 1 to 100",
                            step.weight
                        ));
                    } else if step.weight <= previous {
                        reasons.push(format!(
                            "canary step weights must increase: {} follows {previous}",
                            step.weight
                        ));
                    }
                    previous = previous.max(step.weight);
                }
                if steps.last().map(|s| s.weight) != Some(100) {
                    reasons.push("the last canary step must be 100 (full promotion)".into());
                }
            }
        }
        PlanTask::Rollback(t) => {
            if let Some(v) = &t.target_version {
                version("target_version", v, &mut reasons);
            }
        }
        PlanTask::Scale(t) => {
            if t.replicas > 1000 {
                reasons.push(format!("replicas {} is over the limit of 1000", t.replicas));
            }
        }
        PlanTask::ProvisionEnvironment(t) => {
            if t.services.is_empty() {
                reasons.push("an environment needs at least one service".into());
            }
            for s in &t.services {
                dns_label("service", &s.service, &mut reasons);
                version("version", &s.version, &mut reasons);
            }
            if t.ttl_seconds == 0 || t.ttl_seconds > 30 * 86_400 {
                reasons.push(format!(
                    "ttl_seconds {} must be 1 to {} (30 days)",
                    t.ttl_seconds,
                    30 * 86_400
                ));
            }
        }
        PlanTask::ChaosExperiment(t) => {
            if t.duration_seconds == 0 || t.duration_seconds > 3600 {
                reasons.push(format!(
                    "duration_seconds {} must be 1 to 3600",
                    t.duration_seconds
                ));
            }
            match &t.fault {
                ChaosFault::ErrorRate { rate } if !(0.0..=1.0).contains(rate) => {
                    reasons.push(format!("error rate {rate} must be 0 to 1"));
                }
                ChaosFault::PodKill { count: 0 } => {
                    reasons.push("pod_kill needs a count of at least 1".into());
                }
                _ => {}
            }
            for c in &t.abort_conditions {
                if let toronto_protocol::tasks::AbortCondition::ErrorRatioAbove { threshold } = c
                    && !(0.0..=1.0).contains(threshold)
                {
                    reasons.push(format!("abort threshold {threshold} must be 0 to 1"));
                }
            }
        }
        PlanTask::Pipeline(t) => {
            token("repository", &t.repository, &mut reasons);
            for env in &t.environments {
                dns_label("pipeline environment", env, &mut reasons);
            }
            if let Some(image) = &t.image {
                token("image", image, &mut reasons);
            }
        }
    }
    reasons
}

/// The task in a validated envelope whose type is one of [`accepts`].
pub fn task_of(envelope: &RawEnvelope) -> Result<PlanTask, IntakeError> {
    let ty = envelope
        .message_type()
        .map_err(|e| IntakeError::Rejected(vec![e.to_string()]))?;
    let data = envelope.data.clone();
    let bad = |e: serde_json::Error| IntakeError::Rejected(vec![format!("invalid {}: {e}", ty)]);
    match ty.name.as_str() {
        "task.deploy" => serde_json::from_value(data)
            .map(|d| PlanTask::Deploy(Box::new(d)))
            .map_err(bad),
        "task.rollback" => serde_json::from_value(data)
            .map(PlanTask::Rollback)
            .map_err(bad),
        "task.scale" => serde_json::from_value(data)
            .map(PlanTask::Scale)
            .map_err(bad),
        "task.provision_environment" => serde_json::from_value(data)
            .map(PlanTask::ProvisionEnvironment)
            .map_err(bad),
        "task.pipeline" => serde_json::from_value(data)
            .map(PlanTask::Pipeline)
            .map_err(bad),
        "task.chaos_experiment" => serde_json::from_value(data)
            .map(PlanTask::ChaosExperiment)
            .map_err(bad),
        "agent.assign_task" => {
            serde_json::from_value::<toronto_protocol::delegation::AssignTask>(data)
                .map(|a| a.task)
                .map_err(bad)
        }
        other => Err(IntakeError::Rejected(vec![format!(
            "task type `{other}` is not one the planner takes"
        )])),
    }
}

/// The peer role in a requester's source, e.g. `developer` in
/// `toronto://agents/developer/alice`.
pub fn requester_role(source: &str) -> Option<&str> {
    let role = source
        .strip_prefix("toronto://agents/")?
        .split('/')
        .next()?;
    (!role.is_empty()
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
    .then_some(role)
}

/// The delegation of an `agent.assign_task` envelope (as far as it can be read, so
/// that even a malformed task can be refused to its sender).
fn delegation_of(envelope: &RawEnvelope) -> Option<toronto_protocol::delegation::Delegation> {
    let ty = envelope.message_type().ok()?;
    if ty.name != "agent.assign_task" {
        return None;
    }
    let data = &envelope.data;
    Some(toronto_protocol::delegation::Delegation {
        task_id: data.get("task_id")?.as_str()?.to_owned(),
        role: data.get("from_role")?.as_str()?.to_owned(),
        agent: data
            .get("from_agent")
            .and_then(|a| a.as_str())
            .map(str::to_owned),
    })
}

fn valid_role(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 64
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> IntakeError {
    IntakeError::Unavailable(e.to_string())
}

impl Planner {
    /// The planner of a started service runtime.
    pub fn new(
        rt: &toronto_runtime::ServiceRuntime,
        plans: kv::Store,
        settings: crate::settings::Settings,
    ) -> Self {
        Self {
            plans,
            events: rt.events.clone(),
            source: rt.source(),
            client: rt.client.clone(),
            js: rt.js.clone(),
            subjects: rt.subjects.clone(),
            settings,
            instance: rt.host.id().to_owned(),
        }
    }

    /// Takes a task: one plan per task envelope id, however often it arrives.
    pub async fn take(
        &self,
        envelope: &RawEnvelope,
        intake: &str,
    ) -> Result<SubmitAccepted, IntakeError> {
        let delegation = delegation_of(envelope);
        let taken = task_of(envelope).and_then(|task| {
            let mut reasons = validate(&task);
            if let Some(d) = &delegation
                && !valid_role(&d.role)
            {
                reasons.push(format!(
                    "from_role `{}` must be a role name (lowercase letters, digits, `-`, `_`)",
                    d.role
                ));
            }
            if reasons.is_empty() {
                Ok(task)
            } else {
                Err(IntakeError::Rejected(reasons))
            }
        });
        let task = match taken {
            Ok(task) => task,
            Err(IntakeError::Rejected(reasons)) => {
                // A delegating agent hears `reject_task` with every reason.
                if let Some(d) = &delegation
                    && valid_role(&d.role)
                {
                    let reject = toronto_protocol::delegation::RejectTask {
                        task_id: d.task_id.clone(),
                        agent: "devops".into(),
                        reasons: reasons.clone(),
                    };
                    self.notify_role(&d.role, reject, &envelope.flow()).await;
                }
                return Err(IntakeError::Rejected(reasons));
            }
            Err(e) => return Err(e),
        };
        // Claim the task id first: whoever claims it makes the plan.
        let task_key = format!("task.{}", envelope.id);
        let fresh_id = Uuid::now_v7();
        let (plan_id, duplicate) = match self
            .plans
            .create(&task_key, Bytes::from(fresh_id.to_string()))
            .await
        {
            Ok(_) => (fresh_id, false),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let existing = self
                    .plans
                    .get(&task_key)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| unavailable("task claim vanished"))?;
                let id = std::str::from_utf8(&existing)
                    .ok()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| unavailable("task claim is not a plan id"))?;
                (id, true)
            }
            Err(e) => return Err(unavailable(e)),
        };
        let plan_key = format!("plan.{plan_id}");
        if duplicate
            && self
                .plans
                .get(&plan_key)
                .await
                .map_err(unavailable)?
                .is_some()
        {
            return Ok(SubmitAccepted {
                plan_id,
                duplicate: true,
            });
        }
        // A claim without its plan (the claimer died in between) is completed here.
        let plan = Plan {
            id: plan_id,
            task_id: envelope.id,
            task,
            state: PlanState::Queued,
            requested_by: envelope.source.clone(),
            correlationid: envelope.flow().correlationid,
            intake: intake.to_owned(),
            created_at: Utc::now(),
            cancellation: None,
            steps: Vec::new(),
            reason: None,
            decisions: Vec::new(),
            updated_at: None,
            artifacts: Vec::new(),
            lease: None,
            delegation,
        };
        let mut plan = plan;
        plan.steps = crate::runner::steps_for(&plan.task, &self.settings);
        let bytes = serde_json::to_vec(&plan).map_err(unavailable)?;
        match self.plans.create(&plan_key, Bytes::from(bytes)).await {
            Ok(_) => {}
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                return Ok(SubmitAccepted {
                    plan_id,
                    duplicate: true,
                });
            }
            Err(e) => return Err(unavailable(e)),
        }
        self.announce("plan", "created", &plan, &envelope.flow())
            .await?;
        self.enqueue(plan.id).await?;
        Ok(SubmitAccepted { plan_id, duplicate })
    }

    /// Publishes `<entity>.<what>` with the plan as its data.
    pub(crate) async fn announce(
        &self,
        entity: &str,
        what: &str,
        plan: &Plan,
        flow: &FlowContext,
    ) -> Result<(), IntakeError> {
        let event = Envelope::builder(self.source.clone(), plan.clone())
            .subject(plan.task.service())
            .caused_by(flow)
            .build();
        self.events
            .publish(entity, what, &event)
            .await
            .map_err(unavailable)?;
        // A delegating agent hears of its task in the delegation vocabulary.
        if let Some(d) = &plan.delegation {
            self.answer_delegation(d, entity, what, plan, flow).await;
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
    async fn notify_role<T: toronto_protocol::Message>(
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
        match (entity, what) {
            ("plan", "created") => {
                let accept = AcceptTask {
                    task_id: d.task_id.clone(),
                    plan_id: plan.id,
                    agent: "devops".into(),
                };
                self.notify_role(&d.role, accept, flow).await;
            }
            ("plan", "completed" | "failed" | "cancelled") => {
                let success = what == "completed";
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
            (entity, what) => {
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

    /// Cancels a plan (compare-and-set on its revision); the cancelled plan, or
    /// `not_found`, or `conflict` when it already ended.
    pub async fn cancel(
        &self,
        request: &PlanCancel,
        flow: &FlowContext,
    ) -> Result<Plan, ErrorBody> {
        let key = format!("plan.{}", request.plan_id);
        let mut reasons = Vec::new();
        if request.by.trim().is_empty() {
            reasons.push("`by` must name who cancels the plan".to_owned());
        }
        if request.reason.trim().is_empty() {
            reasons.push("`reason` must say why".to_owned());
        }
        if !reasons.is_empty() {
            return Err(IntakeError::Rejected(reasons).into());
        }
        for _ in 0..5 {
            let entry = self
                .plans
                .entry(key.clone())
                .await
                .map_err(unavailable)?
                .filter(|e| e.operation == kv::Operation::Put)
                .ok_or_else(|| {
                    ErrorBody::new(ErrorCode::NotFound, format!("no plan {}", request.plan_id))
                })?;
            let mut plan: Plan = serde_json::from_slice(&entry.value).map_err(unavailable)?;
            if plan.state.is_final() {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("plan {} has already ended: {:?}", plan.id, plan.state).to_lowercase(),
                ));
            }
            plan.state = PlanState::Cancelled;
            plan.lease = None;
            plan.updated_at = Some(Utc::now());
            plan.cancellation = Some(Cancellation {
                by: request.by.clone(),
                reason: request.reason.clone(),
                at: Utc::now(),
            });
            let bytes = serde_json::to_vec(&plan).map_err(unavailable)?;
            match self
                .plans
                .update(&key, Bytes::from(bytes), entry.revision)
                .await
            {
                Ok(_) => {
                    self.announce("plan", "cancelled", &plan, flow).await?;
                    self.release_turn(&plan).await?;
                    return Ok(plan);
                }
                // Someone else changed the plan in between: read it again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(e).into()),
            }
        }
        Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("plan {} kept changing; try again", request.plan_id),
        ))
    }

    /// One plan by id.
    pub async fn get(&self, plan_id: Uuid) -> Result<Option<Plan>, IntakeError> {
        match self
            .plans
            .get(format!("plan.{plan_id}"))
            .await
            .map_err(unavailable)?
        {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(unavailable),
            None => Ok(None),
        }
    }

    /// Plans matching the query, newest first.
    pub async fn list(&self, query: &PlanList) -> Result<Vec<Plan>, IntakeError> {
        use futures::TryStreamExt;
        // A key updated while the listing runs can come twice: collect into a set.
        let keys: std::collections::BTreeSet<String> = match self.plans.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(unavailable)?,
            Err(e) => return Err(unavailable(e)),
        };
        let mut plans = Vec::new();
        for key in keys.iter().filter(|k| k.starts_with("plan.")) {
            if let Some(bytes) = self.plans.get(key).await.map_err(unavailable)?
                && let Ok(plan) = serde_json::from_slice::<Plan>(&bytes)
                && query
                    .service
                    .as_deref()
                    .is_none_or(|s| plan.task.service() == s)
                && query
                    .environment
                    .as_deref()
                    .is_none_or(|e| plan.task.environment() == e)
                && query.state.is_none_or(|s| plan.state == s)
                && query
                    .requested_by
                    .as_deref()
                    .is_none_or(|r| plan.requested_by == r)
            {
                plans.push(plan);
            }
        }
        plans.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        plans.truncate(query.limit.unwrap_or(100));
        Ok(plans)
    }
}
