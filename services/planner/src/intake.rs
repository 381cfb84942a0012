//! Task intake, the same behaviour through both doors (`planner.submit` and the
//! `TORONTO_DEVOPS_TASKS` work queue): decode, validate with every reason, make one
//! plan per task (deduplicated by the task's envelope id), record it, announce it.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::tasks::PlanEvent;
use toronto_protocol::tasks::{
    Cancellation, ChaosExperimentTask, ChaosFault, DeployTask, PipelineTask, Plan, PlanCancel,
    PlanList, PlanState, PlanTask, ProvisionEnvironmentTask, RollbackTask, ScaleTask, Strategy,
    SubmitAccepted,
};
use toronto_protocol::{ErrorBody, ErrorCode, RawEnvelope};
use toronto_runtime::Accepts;
use toronto_runtime::jetstream::{Events, JetStreamError};
use toronto_runtime::work::{Created, Edit, KeyLock, Records, WorkError, WorkQueue};
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
    /// Plans could not be read or written, or kept changing; trying again may succeed.
    #[error("planner state unavailable: {0}")]
    Store(#[from] WorkError),
    /// A stream could not be written or read; trying again may succeed.
    #[error("planner state unavailable: {0}")]
    JetStream(#[from] JetStreamError),
    /// The claim of a task names no plan.
    #[error("planner state unavailable: the claim {key} does not name a plan")]
    BadClaim {
        /// The claim's key.
        key: String,
    },
    /// The events stream could not be read.
    #[error("planner state unavailable: cannot read the events stream: {0}")]
    Events(#[source] async_nats::Error),
    /// The verified requester may not ask for this (e.g. an override by a non-admin).
    #[error(transparent)]
    Forbidden(#[from] toronto_runtime::auth::Refusal),
}

impl IntakeError {
    /// Whether sending the task again may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, IntakeError::Rejected(_) | IntakeError::Forbidden(_))
    }
}

impl From<IntakeError> for ErrorBody {
    fn from(e: IntakeError) -> Self {
        match &e {
            IntakeError::Rejected(reasons) => ErrorBody::new(ErrorCode::BadRequest, e.to_string())
                .with_details(json!({ "reasons": reasons })),
            IntakeError::Forbidden(refusal) => ErrorBody::new(refusal.code(), e.to_string()),
            IntakeError::Store(WorkError::Contended { .. }) => {
                ErrorBody::new(ErrorCode::Conflict, e.to_string())
            }
            _ => ErrorBody::new(ErrorCode::Unavailable, e.to_string()),
        }
    }
}

/// The planner's state and connections, shared by the endpoints, the intake and the
/// runner.
#[derive(Clone, Debug)]
pub struct Planner {
    /// The bucket of plans, turns and task claims.
    pub(crate) plans: kv::Store,
    /// Plans (`plan.<id>`).
    pub(crate) records: Records<Plan>,
    /// The plan ids in memory, newest first for `plan.list`.
    pub(crate) index: toronto_runtime::work::KeyIndex,
    /// One running plan per service and environment (`turn.<service>.<environment>`).
    pub(crate) turns: KeyLock<Plan>,
    /// The scopes holding a turn, in memory, for the sweep.
    pub(crate) turn_index: toronto_runtime::work::KeyIndex,
    /// The scopes with a queue of plans, in memory, for the sweep.
    pub(crate) queue_index: toronto_runtime::work::KeyIndex,
    /// The work queue of plans to advance.
    pub(crate) runs: WorkQueue,
    /// The queued plans per service and environment (`queue.<service>.<environment>`).
    pub(crate) queue: crate::index::QueueIndex,
    pub(crate) events: Events,
    pub(crate) source: String,
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) subjects: toronto_protocol::Subjects,
    pub(crate) settings: crate::settings::Settings,
    /// This instance, as the owner of the plans it works on.
    pub(crate) instance: String,
    /// Verifies requests and records decisions (none when the service runs without).
    pub(crate) auth: Option<std::sync::Arc<toronto_runtime::auth::Authenticator>>,
    /// The DORA records folded from the events stream.
    pub(crate) dora: std::sync::Arc<tokio::sync::Mutex<crate::dora::ledger::State>>,
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

impl Planner {
    /// The planner of a started service runtime.
    pub fn new(
        rt: &toronto_runtime::ServiceRuntime,
        plans: kv::Store,
        settings: crate::settings::Settings,
    ) -> Self {
        let records = crate::runner::plan_records(plans.clone());
        Self {
            turns: crate::runner::turns(records.clone()),
            queue: crate::index::QueueIndex::new(plans.clone(), records.policy()),
            index: rt.key_index("plan index", plans.clone(), "plan"),
            turn_index: rt.key_index("turn index", plans.clone(), "turn"),
            queue_index: rt.key_index("queue index", plans.clone(), "queue"),
            records,
            runs: WorkQueue::new(
                rt.js.clone(),
                rt.subjects.plan_runs_stream(),
                rt.subjects.plan_runs(),
                crate::RUNNER_CONSUMER,
                "Planner work: plans to advance (work queue)",
            ),
            plans,
            events: rt.events.clone(),
            source: rt.source(),
            client: rt.client.clone(),
            js: rt.js.clone(),
            subjects: rt.subjects.clone(),
            settings,
            instance: rt.host.id().to_owned(),
            auth: rt.host.auth().cloned(),
            dora: Default::default(),
        }
    }

    /// Takes a task: one plan per task envelope id, however often it arrives.
    pub async fn take(
        &self,
        envelope: &RawEnvelope,
        intake: &str,
        caller: Option<&toronto_runtime::auth::Caller>,
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
        let mut task = match taken {
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
        crate::trust::check_override(&mut task, caller)?;
        // Claim the task id first: whoever claims it makes the plan.
        let task_key = format!(
            "task.{}",
            toronto_protocol::envelope::id_token(&envelope.id)
        );
        let fresh_id = Uuid::now_v7();
        let (plan_id, duplicate) = match self
            .plans
            .create(&task_key, Bytes::from(fresh_id.to_string()))
            .await
        {
            Ok(_) => (fresh_id, false),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let existing =
                    self.plans
                        .get(&task_key)
                        .await
                        .map_err(|source| WorkError::Read {
                            key: task_key.clone(),
                            source,
                        })?;
                let id = existing
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| IntakeError::BadClaim {
                        key: task_key.clone(),
                    })?;
                (id, true)
            }
            Err(source) => {
                return Err(WorkError::Create {
                    key: task_key,
                    source,
                }
                .into());
            }
        };
        if duplicate && self.records.load(plan_id).await?.is_some() {
            return Ok(SubmitAccepted {
                plan_id,
                duplicate: true,
            });
        }
        // A claim without its plan (the claimer died in between) is completed here.
        let plan = Plan {
            id: plan_id,
            task_id: envelope.id.clone(),
            task,
            state: PlanState::Queued,
            requested_by: envelope.source.clone(),
            requested_by_principal: caller.map(|c| c.principal().id.clone()),
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
        if self.records.create(plan_id, &plan).await? == Created::Exists {
            return Ok(SubmitAccepted {
                plan_id,
                duplicate: true,
            });
        }
        self.queue
            .push(&crate::runner::scope(&plan), plan.id)
            .await?;
        self.announce(PlanEvent::Created, &plan, &envelope.flow())
            .await?;
        self.enqueue(plan.id).await?;
        Ok(SubmitAccepted { plan_id, duplicate })
    }

    /// Cancels a plan (compare-and-set on its revision); the cancelled plan, or
    /// `not_found`, or `conflict` when it already ended.
    pub async fn cancel(
        &self,
        request: &PlanCancel,
        flow: &FlowContext,
    ) -> Result<Plan, ErrorBody> {
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
        let cancelled = self
            .records
            .update(request.plan_id, |plan| {
                if plan.state.is_final() {
                    return Edit::Keep(Err(ErrorBody::new(
                        ErrorCode::Conflict,
                        format!("plan {} has already ended: {:?}", plan.id, plan.state)
                            .to_lowercase(),
                    )));
                }
                plan.state = PlanState::Cancelled;
                plan.lease = None;
                plan.updated_at = Some(Utc::now());
                plan.cancellation = Some(Cancellation {
                    by: request.by.clone(),
                    reason: request.reason.clone(),
                    at: Utc::now(),
                    stopped: Vec::new(),
                });
                Edit::Save(Ok(()))
            })
            .await
            .map_err(|e| match e {
                WorkError::Contended { .. } => ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("plan {} kept changing; try again", request.plan_id),
                ),
                e => IntakeError::from(e).into(),
            })?;
        let Some((plan, answer)) = cancelled else {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!("no plan {}", request.plan_id),
            ));
        };
        answer?;
        self.announce(PlanEvent::Cancelled, &plan, flow).await?;
        self.stop_started(&plan, flow).await;
        self.release_turn(&plan).await?;
        Ok(self.get(plan.id).await?.unwrap_or(plan))
    }

    /// One plan by id.
    pub async fn get(&self, plan_id: Uuid) -> Result<Option<Plan>, IntakeError> {
        Ok(self.records.load(plan_id).await?.map(|v| v.value))
    }

    /// Plans matching the query, newest first.
    pub async fn list(&self, query: &PlanList) -> Result<Vec<Plan>, IntakeError> {
        let mut plans: Vec<Plan> = self
            .records
            .all()
            .await?
            .into_iter()
            .filter(|plan| {
                query
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
            })
            .collect();
        plans.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        plans.truncate(query.limit.unwrap_or(100));
        Ok(plans)
    }
}
