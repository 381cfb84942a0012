//! Tasks handed to the DevOps agent (by peers on `toronto.agents.devops.tasks`, or
//! through `toronto.devops.v1.planner.submit`) and the plans the planner makes of them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Message;

/// Ship a version of a service to an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployTask {
    /// The service, e.g. `shop-api` (a DNS label).
    pub service: String,
    /// The version to ship, e.g. `2.4.1`.
    pub version: String,
    /// The container image; defaults to the service's image at that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The target environment, e.g. `production`.
    pub environment: String,
    /// How to roll it out.
    #[serde(default)]
    pub strategy: Strategy,
    /// Where the change comes from (for DORA lead time and change-aware triage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// The change is the fix for an incident (the error-budget gate lets it through).
    #[serde(default)]
    pub fix: bool,
    /// An admin's override of the policy gate (promotion order, freeze window), with
    /// the reason recorded in the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_override: Option<PolicyOverride>,
}

/// An override of the policy gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    /// Who overrides.
    pub by: String,
    /// Their role; only the configured admin roles may override.
    pub role: String,
    /// Why (recorded in the plan).
    pub reason: String,
}

impl Message for DeployTask {
    const NAME: &'static str = "task.deploy";
    const MAJOR: u32 = 1;
}

/// A rollout strategy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Replace pods a few at a time.
    #[default]
    Rolling,
    /// Bring up the new colour, then switch traffic at once.
    BlueGreen,
    /// Shift traffic in steps, with analysis between them.
    Canary {
        /// Traffic weights in percent, increasing, ending at 100; default 10, 25, 50, 100.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        steps: Vec<CanaryStep>,
    },
}

/// One canary step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of traffic on the canary, 1 to 100.
    pub weight: u8,
    /// Seconds to wait (with analysis running) before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_seconds: Option<u64>,
}

/// Where a change comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Who wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A link to the change (pull request, commit page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// When it was committed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<DateTime<Utc>>,
}

/// Go back to an earlier version of a service in an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackTask {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The version to return to; the previous one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
}

impl Message for RollbackTask {
    const NAME: &'static str = "task.rollback";
    const MAJOR: u32 = 1;
}

/// Change the number of replicas of a service in an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleTask {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The replicas wanted.
    pub replicas: u32,
}

impl Message for ScaleTask {
    const NAME: &'static str = "task.scale";
    const MAJOR: u32 = 1;
}

/// A chaos experiment: inject a fault into a service for a while, and stop early when
/// an abort condition holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosExperimentTask {
    /// The service (the target of the experiment).
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// What to break.
    pub fault: ChaosFault,
    /// How long, in seconds (1 to 3600).
    pub duration_seconds: u64,
    /// When any holds, the fault is removed at once and the experiment ends aborted.
    #[serde(default)]
    pub abort_conditions: Vec<AbortCondition>,
}

impl Message for ChaosExperimentTask {
    const NAME: &'static str = "task.chaos_experiment";
    const MAJOR: u32 = 1;
}

/// A fault a chaos experiment injects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChaosFault {
    /// This fraction of requests fails (simulated target).
    ErrorRate {
        /// 0 to 1.
        rate: f64,
    },
    /// Every request takes this much longer (simulated target).
    Latency {
        /// Milliseconds added.
        ms: u64,
    },
    /// The serving pods crash and restart (simulated target).
    CrashLoop,
    /// Delete this many of the service's pods (simulated target and Kubernetes).
    PodKill {
        /// Pods to delete.
        count: u32,
    },
}

/// When a chaos experiment stops early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AbortCondition {
    /// An alert fires on the service (heard on the bus).
    AlertFiring,
    /// The service's error ratio over the last 2 seconds exceeds `threshold`
    /// (measured by the simulated target).
    ErrorRatioAbove {
        /// 0 to 1.
        threshold: f64,
    },
}

/// Produce a CI pipeline for a repository, as an artifact of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineTask {
    /// The service the repository builds (a DNS label).
    pub service: String,
    /// The repository, e.g. `github.com/acme/shop-api`.
    pub repository: String,
    /// Its language.
    pub language: Language,
    /// The CI system to write the pipeline for.
    pub ci: CiSystem,
    /// Which stages to include (all by default).
    #[serde(default)]
    pub stages: Stages,
    /// Environments the deploy stage goes through, in order (default staging, production).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// The image the build pushes, e.g. `ghcr.io/acme/shop-api` (default: the service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl Message for PipelineTask {
    const NAME: &'static str = "task.pipeline";
    const MAJOR: u32 = 1;
}

/// A repository's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// Cargo.
    Rust,
    /// Go modules.
    Go,
    /// npm.
    Node,
    /// pip and pytest.
    Python,
    /// Maven.
    Java,
}

/// A CI system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CiSystem {
    /// `.github/workflows/*.yml`.
    GithubActions,
    /// `.gitlab-ci.yml`.
    GitlabCi,
}

/// Stages of a generated pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Stages {
    /// Compile.
    pub build: bool,
    /// Run the tests.
    pub test: bool,
    /// Scan for vulnerabilities.
    pub scan: bool,
    /// Hand deploys to the DevOps agent, environment by environment.
    pub deploy: bool,
}

impl Default for Stages {
    fn default() -> Self {
        Self {
            build: true,
            test: true,
            scan: true,
            deploy: true,
        }
    }
}

/// An ephemeral environment (for the QA agent), torn down after its time to live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionEnvironmentTask {
    /// The environment's name (a DNS label), e.g. `qa-pr-1234`.
    pub name: String,
    /// What runs in it.
    pub services: Vec<ServiceVersion>,
    /// Seconds it lives before it is torn down (1 s to 30 days).
    pub ttl_seconds: u64,
}

impl Message for ProvisionEnvironmentTask {
    const NAME: &'static str = "task.provision_environment";
    const MAJOR: u32 = 1;
}

/// A service at a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceVersion {
    /// The service.
    pub service: String,
    /// Its version.
    pub version: String,
}

/// A file a plan produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Artifact {
    /// Where it goes in the repository, e.g. `.github/workflows/ci.yml`.
    pub path: String,
    /// Its media type, e.g. `application/yaml`.
    pub media_type: String,
    /// Its content.
    pub content: String,
}

/// The task a plan was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanTask {
    /// A deploy.
    Deploy(Box<DeployTask>),
    /// A rollback.
    Rollback(RollbackTask),
    /// A scale change.
    Scale(ScaleTask),
    /// A CI pipeline to generate.
    Pipeline(PipelineTask),
    /// An ephemeral environment to provision and later tear down.
    ProvisionEnvironment(ProvisionEnvironmentTask),
    /// A chaos experiment.
    ChaosExperiment(ChaosExperimentTask),
}

impl PlanTask {
    /// Its kind as on the wire, e.g. `deploy`.
    pub fn kind(&self) -> &'static str {
        match self {
            PlanTask::Deploy(_) => "deploy",
            PlanTask::Rollback(_) => "rollback",
            PlanTask::Scale(_) => "scale",
            PlanTask::Pipeline(_) => "pipeline",
            PlanTask::ProvisionEnvironment(_) => "provision_environment",
            PlanTask::ChaosExperiment(_) => "chaos_experiment",
        }
    }

    /// The service it concerns.
    pub fn service(&self) -> &str {
        match self {
            PlanTask::Deploy(t) => &t.service,
            PlanTask::Rollback(t) => &t.service,
            PlanTask::Scale(t) => &t.service,
            PlanTask::Pipeline(t) => &t.service,
            PlanTask::ProvisionEnvironment(t) => &t.name,
            PlanTask::ChaosExperiment(t) => &t.service,
        }
    }

    /// The environment it concerns.
    pub fn environment(&self) -> &str {
        match self {
            PlanTask::Deploy(t) => &t.environment,
            PlanTask::Rollback(t) => &t.environment,
            PlanTask::Scale(t) => &t.environment,
            PlanTask::Pipeline(_) => "ci",
            PlanTask::ProvisionEnvironment(t) => &t.name,
            PlanTask::ChaosExperiment(t) => &t.environment,
        }
    }
}

/// Where a plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Taken in; waiting for its turn (one active plan per service and environment).
    Queued,
    /// Its steps are running.
    Running,
    /// Waiting for a human decision.
    Waiting,
    /// Every step succeeded.
    Completed,
    /// A step failed; `reason` says why.
    Failed,
    /// Stopped on request before it finished.
    Cancelled,
}

impl PlanState {
    /// Whether the plan has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PlanState::Completed | PlanState::Failed | PlanState::Cancelled
        )
    }
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Gate: the environment's policies (promotion order, freeze windows).
    Policy,
    /// Gate: the service's error budget, asked of the monitor.
    ErrorBudget,
    /// Gate: the security agent scans the image.
    SecurityScan,
    /// Gate: the QA agent tests the version.
    QaTest,
    /// Gate: a human with the right role approves.
    Approval,
    /// The deployer carries the task out.
    Execute,
    /// The planner produces artifacts itself (e.g. a CI pipeline).
    Generate,
    /// The deployer tears an ephemeral environment down (not before `not_before`).
    Teardown,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Started (its attempt count says how often).
    Running,
    /// Waiting for a human decision.
    Waiting,
    /// Done.
    Succeeded,
    /// Failed; the plan fails with its reason.
    Failed,
}

/// One step of a plan. Steps run in order; each is idempotent by `plan id:step id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Step {
    /// Unique within the plan, e.g. `security-scan`.
    pub id: String,
    /// What it does.
    pub kind: StepKind,
    /// Where it stands.
    pub state: StepState,
    /// How often it was started.
    pub attempts: u32,
    /// When it last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, or what decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What a gate found (e.g. the security agent's findings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
    /// The step does not start before this time (e.g. a teardown at the end of a TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

impl Step {
    /// A step not yet started.
    pub fn new(id: &str, kind: StepKind) -> Self {
        Self {
            id: id.to_owned(),
            kind,
            state: StepState::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            reason: None,
            findings: None,
            not_before: None,
        }
    }
}

/// A human decision on a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    /// Who decided.
    pub by: String,
    /// In which role.
    pub role: String,
    /// Approved (true) or rejected.
    pub approved: bool,
    /// What they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Who stopped a plan, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cancellation {
    /// Who cancelled it.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A plan: what the planner made of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// The plan's id.
    pub id: Uuid,
    /// The id of the task's envelope (tasks are deduplicated by it).
    pub task_id: Uuid,
    /// The task.
    pub task: PlanTask,
    /// Where it stands.
    pub state: PlanState,
    /// Who asked (the task envelope's `source`).
    pub requested_by: String,
    /// The flow the task belongs to.
    pub correlationid: String,
    /// Which door it came through: `submit` or `queue`.
    pub intake: String,
    /// When the plan was made.
    pub created_at: DateTime<Utc>,
    /// Set when the plan was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<Cancellation>,
    /// The steps, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Why the plan failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human decisions taken on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    /// When it last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Files the plan produced (e.g. a generated CI pipeline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// The planner instance working on it, and until when (a dead owner's lease runs
    /// out and another instance carries on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// The agent that delegated the task (`agent.assign_task`), answered in the
    /// delegation vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<crate::delegation::Delegation>,
}

/// Ownership of a plan's execution for a while.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Lease {
    /// The planner instance.
    pub owner: String,
    /// Until when.
    pub until: DateTime<Utc>,
}

impl Message for Plan {
    const NAME: &'static str = "plan";
    const MAJOR: u32 = 1;
}

/// The answer to a submitted task that was accepted. A rejected task gets the error
/// envelope (`bad_request`) with every reason in `details.reasons`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitAccepted {
    /// The plan made of the task.
    pub plan_id: Uuid,
    /// True when this task (same envelope id) was submitted before: no new plan.
    pub duplicate: bool,
}

impl Message for SubmitAccepted {
    const NAME: &'static str = "planner.submit.accepted";
    const MAJOR: u32 = 1;
}

/// Asks for one plan (`toronto.devops.v1.planner.plan.get`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanGet {
    /// The plan's id.
    pub plan_id: Uuid,
}

impl Message for PlanGet {
    const NAME: &'static str = "planner.plan.get";
    const MAJOR: u32 = 1;
}

/// Asks for plans (`toronto.devops.v1.planner.plan.list`), newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanList {
    /// Only plans of this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only plans for this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Only plans in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PlanState>,
    /// Only plans asked for by this requester (the task's `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// At most this many (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Message for PlanList {
    const NAME: &'static str = "planner.plan.list";
    const MAJOR: u32 = 1;
}

/// Plans, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plans {
    /// The plans.
    pub plans: Vec<Plan>,
}

impl Message for Plans {
    const NAME: &'static str = "plans";
    const MAJOR: u32 = 1;
}

/// Stops a plan (`toronto.devops.v1.planner.plan.cancel`); the reply is the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanCancel {
    /// The plan's id.
    pub plan_id: Uuid,
    /// Who cancels it.
    pub by: String,
    /// Why.
    pub reason: String,
}

impl Message for PlanCancel {
    const NAME: &'static str = "planner.plan.cancel";
    const MAJOR: u32 = 1;
}

/// A human decision on a plan waiting for approval
/// (`toronto.devops.v1.planner.plan.approve` or `.reject`); the reply is the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanDecision {
    /// The plan's id.
    pub plan_id: Uuid,
    /// Who decides (compared with the plan's requester: nobody approves their own change).
    pub by: String,
    /// Their role; only the configured approver roles may decide.
    pub role: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Message for PlanDecision {
    const NAME: &'static str = "planner.plan.decision";
    const MAJOR: u32 = 1;
}

/// The security gate's question to the security agent (`toronto.agents.security.v1.scan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecurityScanRequest {
    /// The plan asking.
    pub plan_id: Uuid,
    /// Same key, same question: answer it once.
    pub idempotency_key: String,
    /// The service.
    pub service: String,
    /// The version.
    pub version: String,
    /// The image to scan.
    pub image: String,
}

impl Message for SecurityScanRequest {
    const NAME: &'static str = "gate.security.scan";
    const MAJOR: u32 = 1;
}

/// The QA gate's question to the QA agent (`toronto.agents.qa.v1.test`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QaTestRequest {
    /// The plan asking.
    pub plan_id: Uuid,
    /// Same key, same question: answer it once.
    pub idempotency_key: String,
    /// The environment the version goes to.
    pub environment: String,
    /// The service.
    pub service: String,
    /// The version.
    pub version: String,
    /// The suite to run.
    pub suite: String,
}

impl Message for QaTestRequest {
    const NAME: &'static str = "gate.qa.test";
    const MAJOR: u32 = 1;
}

/// A peer's verdict on a gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateVerdict {
    /// Whether the gate passes.
    pub passed: bool,
    /// Why, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What was found (vulnerabilities, failed tests...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<serde_json::Value>,
}

impl Message for GateVerdict {
    const NAME: &'static str = "gate.verdict";
    const MAJOR: u32 = 1;
}

/// The planner asks the deployer to carry a task out
/// (`toronto.devops.v1.deployer.rollout.start`, `.rollback` or `.scale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecuteRequest {
    /// The plan asking.
    pub plan_id: Uuid,
    /// Same key, same work: carry it out once.
    pub idempotency_key: String,
    /// What to do.
    pub task: PlanTask,
}

impl Message for ExecuteRequest {
    const NAME: &'static str = "deployer.execute";
    const MAJOR: u32 = 1;
}

/// The deployer took the work on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecuteAccepted {
    /// The deployer's reference for it (e.g. the rollout id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Message for ExecuteAccepted {
    const NAME: &'static str = "deployer.execute.accepted";
    const MAJOR: u32 = 1;
}

/// What the planner's runner is asked to do: advance a plan (internal work queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AdvancePlan {
    /// The plan.
    pub plan_id: Uuid,
}

impl Message for AdvancePlan {
    const NAME: &'static str = "planner.advance";
    const MAJOR: u32 = 1;
}

/// Asks for the DORA figures of a service or of everything
/// (`toronto.devops.v1.planner.dora.get`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DoraQuery {
    /// Only this service (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The environment (default `production`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The window, in days back from now (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_days: Option<u32>,
    /// A deploy followed by a rollback within this many hours counts as a failed
    /// change (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_window_hours: Option<u32>,
}

impl Message for DoraQuery {
    const NAME: &'static str = "planner.dora.get";
    const MAJOR: u32 = 1;
}

/// DORA figures computed from the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DoraReport {
    /// The service, or absent for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The environment.
    pub environment: String,
    /// Start of the window.
    pub window_start: DateTime<Utc>,
    /// End of the window (now).
    pub window_end: DateTime<Utc>,
    /// Deploys that completed in the window.
    pub deployments: u64,
    /// Deploys per day over the window.
    pub deployment_frequency_per_day: f64,
    /// Median seconds from commit to completed deploy (deploys with a commit time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_time_median_seconds: Option<f64>,
    /// Mean of the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_time_mean_seconds: Option<f64>,
    /// Deploys followed by a rollback within the failure window.
    pub failed_changes: u64,
    /// `failed_changes / deployments`; absent without deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_failure_rate: Option<f64>,
    /// Median seconds from a failed deploy to the completed rollback that restored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_restore_median_seconds: Option<f64>,
}

impl Message for DoraReport {
    const NAME: &'static str = "planner.dora.report";
    const MAJOR: u32 = 1;
}

/// Asks the monitor for a service's SLO status (`toronto.devops.v1.monitor.slo.get`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloGet {
    /// The service.
    pub service: String,
}

impl Message for SloGet {
    const NAME: &'static str = "monitor.slo.get";
    const MAJOR: u32 = 1;
}

/// Where one SLO of a service stands, as the monitor last evaluated it (kept in the KV
/// bucket `toronto_slo_status` under `<service>.<slo>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SloStatus {
    /// The service.
    pub service: String,
    /// The SLO's name.
    pub slo: String,
    /// Its objective, e.g. 0.999.
    pub objective: f64,
    /// Fraction of the error budget left over the SLO window (negative when overspent).
    pub budget_remaining: f64,
    /// Whether the budget is spent.
    pub exhausted: bool,
    /// Burn rate per window (`5m`, `1h`, ...).
    #[serde(default)]
    pub burn_rates: std::collections::BTreeMap<String, f64>,
    /// When it was evaluated.
    pub evaluated_at: DateTime<Utc>,
}

impl Message for SloStatus {
    const NAME: &'static str = "slo.status";
    const MAJOR: u32 = 1;
}

/// Every SLO status of a service (empty when it has no SLO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SloStatuses {
    /// The statuses.
    pub statuses: Vec<SloStatus>,
}

impl Message for SloStatuses {
    const NAME: &'static str = "slo.statuses";
    const MAJOR: u32 = 1;
}
