//! The tasks the agent takes: deploy, rollback, scale, chaos experiment, pipeline,
//! ephemeral environment, and [`PlanTask`], the task a plan is made from.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::{Environment, InvalidVersion, NameError, ServiceName, Version};
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
    /// An emergency: put the version back in one step, without the strategy's
    /// analysed steps (recorded on the rollout and in its events). Without it a
    /// rollback is verified like any deploy.
    #[serde(default)]
    pub emergency: bool,
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

    /// [`service`](Self::service) as a checked [`ServiceName`].
    pub fn service_name(&self) -> Result<ServiceName, NameError> {
        self.service().parse()
    }

    /// [`environment`](Self::environment) as a checked [`Environment`].
    pub fn environment_name(&self) -> Result<Environment, NameError> {
        self.environment().parse()
    }
}

impl DeployTask {
    /// [`version`](Self::version) as a checked [`Version`].
    pub fn checked_version(&self) -> Result<Version, InvalidVersion> {
        self.version.parse()
    }
}
