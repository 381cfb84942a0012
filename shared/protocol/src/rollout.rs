//! The deployer's side of the contract: rollouts and their commands and events,
//! drift reports, and the simulated cluster's fault injection.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::analysis::CanaryVerdict;
use crate::event_kind::event_kinds;
use crate::message::Message;
use crate::tasks::{Lease, Strategy};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Steps are being carried out.
    Progressing,
    /// Held until `rollout.resume` or `rollout.promote`.
    Paused,
    /// The new version serves all traffic.
    Succeeded,
    /// Stopped by analysis, an alert or the abort command; traffic is back on the
    /// previous version.
    Aborted,
    /// Missed its progress deadline (or could not be applied); rolled back.
    Failed,
}

impl RolloutPhase {
    /// Whether the rollout has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Aborted | Self::Failed)
    }
}

event_kinds! {
    /// The rollout events the deployer publishes (`events.rollout.<kind>`; the data is
    /// the [`Rollout`], the envelope subject its service).
    pub enum RolloutEvent for "rollout" {
        /// A rollout was accepted and begins.
        Started = "started",
        /// A step was carried out (weight or step changed).
        Progressed = "progressed",
        /// The rollout holds at a pause step or by command.
        Paused = "paused",
        /// A paused rollout goes on.
        Resumed = "resumed",
        /// Promoted by command: it skips to the end.
        Promoted = "promoted",
        /// The new version serves all traffic.
        Succeeded = "succeeded",
        /// Stopped by analysis, an alert or the abort command.
        Aborted = "aborted",
        /// Missed its deadline or could not be applied.
        Failed = "failed",
        /// Traffic is back on the previous version (after an abort or a failure), or a
        /// rollback rollout finished.
        RolledBack = "rolled_back",
    }
}

/// What a step of a rollout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStepKind {
    /// Rolling: replace the pods with the new version.
    Rolling,
    /// Blue-green: bring the new colour up behind the preview Service.
    Preview,
    /// Blue-green: point the active Service at the new colour.
    Switch,
    /// Blue-green: scale the old colour down (after a delay).
    ScaleDown,
    /// Canary: send `weight` percent of traffic to the canary.
    Weight,
    /// Canary: the new version becomes stable; the canary goes away.
    Promote,
    /// Put a version in place at once, in the service's current shape (a first
    /// deploy, a change of strategy family, or a rollback to an earlier version).
    Replace,
}

/// The state of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStepState {
    /// Not started.
    Pending,
    /// Applied; waiting for the target to be ready, or pausing with analysis.
    Running,
    /// Done.
    Done,
}

/// One step of a rollout; `id` is its idempotency key within the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RolloutStep {
    /// Unique within the rollout, e.g. `weight-25`.
    pub id: String,
    /// What it does.
    pub kind: RolloutStepKind,
    /// Percent of traffic on the new version once the step is applied.
    pub weight: u8,
    /// Seconds to wait after the step is ready (with analysis running) before the next.
    #[serde(default)]
    pub pause_seconds: u64,
    /// Its state.
    pub state: RolloutStepState,
    /// When it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<DateTime<Utc>>,
    /// When the target reported it ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<DateTime<Utc>>,
    /// When it was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<DateTime<Utc>>,
    /// What the step really does when that differs from what was asked, e.g. a canary
    /// weight the replica count cannot reach without a traffic router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A version of a service as it runs (or ran) in an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Revision {
    /// The version.
    pub version: String,
    /// Its image.
    pub image: String,
    /// Replicas.
    pub replicas: u32,
}

/// An analysis the rollout took into account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AnalysisRecord {
    /// The step it ran in.
    pub step: String,
    /// Where the verdict came from: `monitor`, `threshold` (the simulated target's own
    /// metrics, when no monitor answers) or `alert`.
    pub source: String,
    /// The verdict with its evidence.
    pub verdict: CanaryVerdict,
}

/// A rollout: the state machine the deployer keeps in KV (`rollout.<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rollout {
    /// Its id.
    pub id: Uuid,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The new version.
    pub version: String,
    /// Its image.
    pub image: String,
    /// The strategy.
    pub strategy: Strategy,
    /// Replicas of the service.
    pub replicas: u32,
    /// What ran before (restored on abort or failure); absent for a first deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Revision>,
    /// Where it stands.
    pub phase: RolloutPhase,
    /// The steps, in order.
    pub steps: Vec<RolloutStep>,
    /// Index of the current step.
    pub step_index: usize,
    /// Percent of traffic on the new version now.
    pub weight: u8,
    /// Pause before every step after the first until `rollout.promote`.
    #[serde(default)]
    pub manual_promotion: bool,
    /// Why it is paused, failed or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether traffic was sent back to the previous version.
    #[serde(default)]
    pub rolled_back: bool,
    /// This rollout is a rollback (`rollback` command or task) to `version`.
    #[serde(default)]
    pub is_rollback: bool,
    /// A rollback the operator called an emergency: one `replace` step, no analysis
    /// (`requested_by` says who skipped the verification).
    #[serde(default)]
    pub emergency: bool,
    /// A command waiting for the instance running the rollout to carry it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingCommand>,
    /// The analyses that decided something, newest last (at most 20 kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analyses: Vec<AnalysisRecord>,
    /// The plan that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Uuid>,
    /// The idempotency key it was started with.
    pub idempotency_key: String,
    /// Correlation id of the flow it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// Who asked (the envelope's source or a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The deployer instance working on it, and until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl Message for Rollout {
    const NAME: &'static str = "rollout";
    const MAJOR: u32 = 1;
}

/// A command on a running rollout, recorded in it until the runner carries it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum PendingCommand {
    /// Stop and send traffic back to the previous version.
    Abort {
        /// Who asked.
        by: String,
        /// Why.
        reason: String,
    },
    /// Hold after the current step.
    Pause {
        /// Who asked.
        by: String,
    },
    /// End the current pause now (`full`: skip the remaining steps).
    Promote {
        /// Who asked.
        by: String,
        /// Go to 100 percent now.
        full: bool,
    },
}

/// What the deployer's runner is asked to do: advance a rollout (internal work queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AdvanceRollout {
    /// The rollout.
    pub rollout_id: Uuid,
}

impl Message for AdvanceRollout {
    const NAME: &'static str = "deployer.advance";
    const MAJOR: u32 = 1;
}

/// Names a rollout: by id, or the newest one of a service in an environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRef {
    /// The rollout's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// The service (with `environment`, when `id` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl Message for RolloutRef {
    const NAME: &'static str = "rollout.ref";
    const MAJOR: u32 = 1;
}

/// A command on a running rollout (`rollout.promote`, `.abort`, `.pause`, `.resume`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutCommand {
    /// The rollout's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// The service (with `environment`, when `id` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Who asks (recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why (recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `promote` only: skip the remaining steps and go to 100 percent now.
    #[serde(default)]
    pub full: bool,
}

impl Message for RolloutCommand {
    const NAME: &'static str = "rollout.command";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        self.by = Some(principal.to_owned());
    }
}

/// Lists rollouts (`rollout.list`), newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutList {
    /// Only this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Only rollouts that have not ended.
    #[serde(default)]
    pub active: bool,
    /// At most this many (default 50, at most 500: see [`crate::page`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Where to go on: the `next_cursor` of the page before (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Message for RolloutList {
    const NAME: &'static str = "rollout.list";
    const MAJOR: u32 = 1;
}

/// Rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rollouts {
    /// Newest first.
    pub rollouts: Vec<Rollout>,
    /// Present when there may be more: ask again with it as `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Message for Rollouts {
    const NAME: &'static str = "rollouts";
    const MAJOR: u32 = 1;
}

/// Compares live objects with the desired spec (`drift.check`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriftCheck {
    /// Only this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Put the desired spec back where it drifted (default: the configured setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediate: Option<bool>,
}

impl Message for DriftCheck {
    const NAME: &'static str = "drift.check";
    const MAJOR: u32 = 1;
}

/// One managed field that differs between the desired spec and the live object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Drift {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The object, e.g. `Deployment/shop-api-canary`.
    pub object: String,
    /// The field, e.g. `spec.replicas`.
    pub field: String,
    /// What we want.
    pub desired: serde_json::Value,
    /// What is there (null when the object is missing).
    pub live: serde_json::Value,
    /// Whether it was put back.
    #[serde(default)]
    pub remediated: bool,
}

impl Message for Drift {
    const NAME: &'static str = "drift";
    const MAJOR: u32 = 1;
}

/// What `drift.check` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DriftReport {
    /// How many services were compared.
    pub checked: usize,
    /// Every difference.
    pub drifts: Vec<Drift>,
}

impl Message for DriftReport {
    const NAME: &'static str = "drift.report";
    const MAJOR: u32 = 1;
}

/// Faults injected into one version on the simulated cluster (`sim.fault`).
/// The simulated cluster is a simulation: nothing real is deployed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimFault {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The version the faults apply to.
    pub version: String,
    /// Fraction of requests that fail, 0 to 1.
    #[serde(default)]
    pub error_rate: f64,
    /// Milliseconds added to every request.
    #[serde(default)]
    pub latency_ms: u64,
    /// Pods of this version never become ready.
    #[serde(default)]
    pub crash_loop: bool,
}

impl Message for SimFault {
    const NAME: &'static str = "sim.fault";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;
}

/// An out-of-band change on the simulated cluster (`sim.tamper`), as someone running
/// `kubectl edit` would make: it is what drift detection exists to catch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimTamper {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The workload, e.g. `shop-api` or `shop-api-canary` (default: the service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Set its replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Set its image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl Message for SimTamper {
    const NAME: &'static str = "sim.tamper";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;
}

/// The simulated cluster's view of one service (answer of `sim.fault`, `sim.tamper`
/// and `sim.get`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SimService {
    /// Always `true`: this is a simulation.
    pub simulated: bool,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// Its workloads by name, with their live state.
    pub workloads: BTreeMap<String, SimWorkload>,
    /// Percent of traffic per version.
    pub traffic: BTreeMap<String, u8>,
    /// Faults per version.
    pub faults: BTreeMap<String, SimFault>,
}

impl Message for SimService {
    const NAME: &'static str = "sim.service";
    const MAJOR: u32 = 1;
}

/// One simulated workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SimWorkload {
    /// The version its pods run.
    pub version: String,
    /// Its image.
    pub image: String,
    /// Replicas wanted.
    pub replicas: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Pods restarting (crash loop).
    pub crashing: u32,
}

/// Where a chaos experiment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChaosState {
    /// The fault is in place.
    Running,
    /// An abort condition held: the fault was removed early.
    Aborted,
    /// It ran its full duration; the fault was removed.
    Completed,
    /// The fault could not be injected.
    Failed,
}

event_kinds! {
    /// The chaos events the deployer publishes (`events.chaos.<kind>`; the data is the
    /// [`ChaosRun`]).
    pub enum ChaosEvent for "chaos" {
        /// The fault is in place.
        Started = "started",
        /// An abort condition held; the fault was removed early.
        Aborted = "aborted",
        /// The experiment ran its full duration.
        Completed = "completed",
        /// The fault could not be injected.
        Failed = "failed",
    }
}

/// A chaos experiment run by the deployer (KV `chaos.<id>`; the data of `chaos.started`,
/// `chaos.aborted`, `chaos.completed` and `chaos.failed` events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChaosRun {
    /// Its id.
    pub id: Uuid,
    /// What was asked.
    pub experiment: crate::tasks::ChaosExperimentTask,
    /// Where it stands.
    pub state: ChaosState,
    /// Why it ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plan that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Uuid>,
    /// When the fault went in.
    pub started_at: DateTime<Utc>,
    /// When it was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

impl Message for ChaosRun {
    const NAME: &'static str = "chaos.run";
    const MAJOR: u32 = 1;
}
