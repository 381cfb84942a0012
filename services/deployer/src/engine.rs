//! The rollout engine: one state machine per rollout, kept in KV, advanced by
//! whichever deployer holds its work-queue message.
//!
//! Work arrives as "advance rollout X" messages on a JetStream work queue consumed by
//! every deployer replica. The rollout in KV is the truth: every change is a
//! compare-and-set on its revision, and a lease names the instance working on it.
//! The owner keeps the message with progress acks while it waits (for pods to become
//! ready, through a pause with analysis); if it dies, the message's ack deadline (the
//! lease length) runs out, another replica receives it, sees the lease expired and
//! carries on from the stored state. Each step is applied under the key
//! `<rollout id>:<step id>` and marked in KV before it is applied, so a successor
//! re-applies at most the step that was in flight, with the same layout (a no-op
//! for the target), and never an earlier one.
//!
//! Each pass of [`Deployer::reconcile`] reads the rollout, does one bounded thing and
//! says when to come back, in the manner of a kube-rs reconciler.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use toronto_protocol::analysis::{
    AnalysisMetric, AnalysisOutcome, CanaryAnalyze, CanaryVerdict, Direction, MetricEvidence,
    SampleSummary,
};
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::rollout::{
    AdvanceRollout, AnalysisRecord, PendingCommand, Revision, Rollout, RolloutPhase, RolloutStep,
    RolloutStepKind, RolloutStepState,
};
use toronto_protocol::tasks::{Lease, Strategy};
use toronto_protocol::{Encoding, Envelope, ErrorBody, ErrorCode, ServiceKind, Subjects};
use toronto_runtime::jetstream::{Delivery, Events, Outcome, publish_envelope};
use toronto_runtime::rpc::{CallError, call};
use uuid::Uuid;

use crate::settings::Settings;
use crate::sim::SimCluster;
use crate::target::{Layout, Routing, Target, TargetError, Track, Workload};

/// Replicas of a service deployed for the first time.
pub const DEFAULT_REPLICAS: u32 = 3;

/// What runs in a service and environment now, and what ran before (KV
/// `release.<service>.<environment>`): the desired spec drift is measured against and
/// the revision history rollbacks restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The desired layout now.
    pub layout: Layout,
    /// The version serving now.
    pub current: Revision,
    /// Earlier versions, newest last (at most 10).
    pub history: Vec<Revision>,
    /// The rollout that put it there.
    pub rollout_id: Option<Uuid>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Evidence against a rollout heard on the bus (an alert on its service, or a
/// failing continuous analysis).
#[derive(Debug, Clone)]
pub(crate) struct Heard {
    at: DateTime<Utc>,
    rollout_id: Option<Uuid>,
    source: &'static str,
    verdict: CanaryVerdict,
}

/// Evidence heard per service and environment.
pub(crate) type HeardBook = HashMap<(String, String), Vec<Heard>>;

/// The deployer's state and connections, shared by its endpoints and its runner.
#[derive(Clone)]
pub struct Deployer {
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) subjects: Subjects,
    pub(crate) source: String,
    pub(crate) events: Events,
    pub(crate) rollouts: kv::Store,
    pub(crate) target: Arc<dyn Target>,
    pub(crate) sim: Option<SimCluster>,
    pub(crate) settings: Settings,
    pub(crate) instance: String,
    /// Cancelled to stop this instance as a crash would (nothing acked, nothing saved).
    pub(crate) crash: CancellationToken,
    /// Cancelled at a graceful shutdown: rollouts are handed over to other replicas.
    pub(crate) shutdown: CancellationToken,
    pub(crate) heard: Arc<Mutex<HeardBook>>,
    /// Steps this instance has applied in this process (a successor re-applies the
    /// step in flight once, to be sure it reached the target).
    pub(crate) applied_here: Arc<Mutex<HashSet<String>>>,
    pub(crate) last_analysis: Arc<Mutex<HashMap<Uuid, std::time::Instant>>>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("instance", &self.instance)
            .field("target", &self.target.kind())
            .finish_non_exhaustive()
    }
}

/// The deployer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// JetStream or KV failed.
    #[error("state store unavailable: {0}")]
    Store(String),
    /// The target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
}

pub(crate) fn store<E: std::fmt::Display>(e: E) -> EngineError {
    EngineError::Store(e.to_string())
}

impl From<EngineError> for ErrorBody {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Target(TargetError::Refused { .. }) => {
                ErrorBody::new(ErrorCode::BadRequest, e.to_string())
            }
            _ => ErrorBody::new(ErrorCode::Unavailable, e.to_string()),
        }
    }
}

/// Checks canary weights: 1 to 100, strictly increasing.
pub fn check_weights(weights: &[u8]) -> Result<(), String> {
    if weights.is_empty() {
        return Err("at least one canary step is needed".into());
    }
    for w in weights {
        if *w == 0 || *w > 100 {
            return Err(format!("canary weight {w} is not between 1 and 100"));
        }
    }
    for pair in weights.windows(2) {
        if pair[1] <= pair[0] {
            return Err(format!(
                "canary steps must increase: {} comes after {}",
                pair[1], pair[0]
            ));
        }
    }
    Ok(())
}

/// The shape a layout routes traffic in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// One workload.
    Rolling,
    /// Stable and canary.
    Canary,
    /// Blue and green.
    BlueGreen,
}

impl Family {
    /// The family of a strategy.
    pub fn of_strategy(s: &Strategy) -> Self {
        match s {
            Strategy::Rolling => Self::Rolling,
            Strategy::BlueGreen => Self::BlueGreen,
            Strategy::Canary { .. } => Self::Canary,
        }
    }

    /// The family of a layout.
    pub fn of_layout(l: &Layout) -> Self {
        match l.routing {
            Routing::Rolling { .. } => Self::Rolling,
            Routing::BlueGreen { .. } => Self::BlueGreen,
            Routing::Canary { .. } => Self::Canary,
        }
    }
}

fn step(id: String, kind: RolloutStepKind, weight: u8, pause: Duration) -> RolloutStep {
    RolloutStep {
        id,
        kind,
        weight,
        pause_seconds: pause.as_secs(),
        state: RolloutStepState::Pending,
        applied_at: None,
        ready_at: None,
        done_at: None,
    }
}

/// The steps of a rollout of `strategy` over `previous` (what runs now). A first
/// deploy, a change of strategy family and a rollback put the version in place in one
/// `replace` step: there is nothing to compare a canary with, or the shape changes.
pub fn plan_steps(
    strategy: &Strategy,
    previous: Option<&Release>,
    settings: &Settings,
    is_rollback: bool,
) -> Result<Vec<RolloutStep>, String> {
    let pause = settings.step_pause;
    if let Strategy::Canary { steps } = strategy
        && !steps.is_empty()
    {
        check_weights(&steps.iter().map(|s| s.weight).collect::<Vec<_>>())?;
    }
    let family = Family::of_strategy(strategy);
    let replace = is_rollback || previous.is_none_or(|p| Family::of_layout(&p.layout) != family);
    if replace {
        return Ok(vec![step(
            "replace".into(),
            RolloutStepKind::Replace,
            100,
            Duration::ZERO,
        )]);
    }
    Ok(match strategy {
        Strategy::Rolling => vec![step(
            "rolling".into(),
            RolloutStepKind::Rolling,
            100,
            Duration::ZERO,
        )],
        Strategy::BlueGreen => vec![
            step("preview".into(), RolloutStepKind::Preview, 0, pause),
            step(
                "switch".into(),
                RolloutStepKind::Switch,
                100,
                settings.scale_down_delay,
            ),
            step(
                "scale-down".into(),
                RolloutStepKind::ScaleDown,
                100,
                Duration::ZERO,
            ),
        ],
        Strategy::Canary { steps } => {
            let weights: Vec<(u8, Duration)> = if steps.is_empty() {
                settings.canary_steps.iter().map(|w| (*w, pause)).collect()
            } else {
                steps
                    .iter()
                    .map(|s| {
                        (
                            s.weight,
                            s.pause_seconds.map(Duration::from_secs).unwrap_or(pause),
                        )
                    })
                    .collect()
            };
            let mut out: Vec<RolloutStep> = weights
                .iter()
                .filter(|(w, _)| *w < 100)
                .map(|(w, p)| step(format!("weight-{w}"), RolloutStepKind::Weight, *w, *p))
                .collect();
            out.push(step(
                "promote".into(),
                RolloutStepKind::Promote,
                100,
                Duration::ZERO,
            ));
            out
        }
    })
}

fn workload(name: String, track: Track, rev: &Revision, replicas: u32) -> Workload {
    Workload {
        name,
        track,
        version: rev.version.clone(),
        image: rev.image.clone(),
        replicas,
    }
}

/// Adds, at 0 replicas, every workload of `before` that `layout` does not name, so
/// that what a change leaves behind stops running.
fn zero_others(mut layout: Layout, before: Option<&Layout>) -> Layout {
    if let Some(before) = before {
        for w in &before.workloads {
            if !layout.workloads.iter().any(|x| x.name == w.name) {
                let mut w = w.clone();
                w.replicas = 0;
                layout.workloads.push(w);
            }
        }
    }
    layout
}

fn active_colour(layout: &Layout) -> Option<Track> {
    match layout.routing {
        Routing::BlueGreen { active, .. } => Some(active),
        _ => None,
    }
}

/// The layout in which `rev` serves everything, in `family`'s shape.
pub fn steady_layout(
    family: Family,
    service: &str,
    environment: &str,
    rev: &Revision,
    before: Option<&Layout>,
) -> Layout {
    let (workloads, routing) = match family {
        Family::Rolling => (
            vec![workload(service.into(), Track::Stable, rev, rev.replicas)],
            Routing::Rolling {
                max_surge: "25%".into(),
                max_unavailable: "0".into(),
            },
        ),
        Family::Canary => (
            vec![
                workload(service.into(), Track::Stable, rev, rev.replicas),
                workload(format!("{service}-canary"), Track::Canary, rev, 0),
            ],
            Routing::Canary { canary_weight: 0 },
        ),
        Family::BlueGreen => {
            let colour = before
                .and_then(active_colour)
                .map(Track::other_colour)
                .unwrap_or(Track::Blue);
            (
                vec![workload(
                    format!("{service}-{}", colour.as_str()),
                    colour,
                    rev,
                    rev.replicas,
                )],
                Routing::BlueGreen {
                    active: colour,
                    preview: None,
                },
            )
        }
    };
    zero_others(
        Layout {
            service: service.into(),
            environment: environment.into(),
            workloads,
            routing,
            step_key: String::new(),
            progress_deadline_seconds: 0,
        },
        before,
    )
}

/// The layout a step of `r` applies, given what ran before it.
pub fn step_layout(
    r: &Rollout,
    step: &RolloutStep,
    before: Option<&Release>,
    settings: &Settings,
) -> Layout {
    let new = Revision {
        version: r.version.clone(),
        image: r.image.clone(),
        replicas: r.replicas,
    };
    let before_layout = before.map(|b| &b.layout);
    let old = r.previous.clone().unwrap_or_else(|| new.clone());
    let svc = r.service.as_str();
    let env = r.environment.as_str();
    let mut layout = match step.kind {
        RolloutStepKind::Replace => {
            // A rollback keeps the service's shape; anything else takes the strategy's.
            let family = if r.is_rollback {
                before_layout.map_or(Family::Rolling, Family::of_layout)
            } else {
                Family::of_strategy(&r.strategy)
            };
            steady_layout(family, svc, env, &new, before_layout)
        }
        RolloutStepKind::Rolling => steady_layout(Family::Rolling, svc, env, &new, before_layout),
        RolloutStepKind::Promote => steady_layout(Family::Canary, svc, env, &new, before_layout),
        RolloutStepKind::Weight => {
            let total = r.replicas.max(1);
            let canary = ((total * u32::from(step.weight)).div_ceil(100)).max(1);
            let stable = total.saturating_sub(canary).max(1);
            zero_others(
                Layout {
                    service: svc.into(),
                    environment: env.into(),
                    workloads: vec![
                        workload(svc.into(), Track::Stable, &old, stable),
                        workload(format!("{svc}-canary"), Track::Canary, &new, canary),
                    ],
                    routing: Routing::Canary {
                        canary_weight: step.weight,
                    },
                    step_key: String::new(),
                    progress_deadline_seconds: 0,
                },
                before_layout,
            )
        }
        RolloutStepKind::Preview | RolloutStepKind::Switch | RolloutStepKind::ScaleDown => {
            let old_colour = before_layout.and_then(active_colour).unwrap_or(Track::Blue);
            let new_colour = old_colour.other_colour();
            let old_replicas = if step.kind == RolloutStepKind::ScaleDown {
                0
            } else {
                old.replicas
            };
            let routing = match step.kind {
                RolloutStepKind::Preview => Routing::BlueGreen {
                    active: old_colour,
                    preview: Some(new_colour),
                },
                RolloutStepKind::Switch => Routing::BlueGreen {
                    active: new_colour,
                    preview: Some(old_colour),
                },
                _ => Routing::BlueGreen {
                    active: new_colour,
                    preview: None,
                },
            };
            zero_others(
                Layout {
                    service: svc.into(),
                    environment: env.into(),
                    workloads: vec![
                        workload(
                            format!("{svc}-{}", old_colour.as_str()),
                            old_colour,
                            &old,
                            old_replicas,
                        ),
                        workload(
                            format!("{svc}-{}", new_colour.as_str()),
                            new_colour,
                            &new,
                            r.replicas,
                        ),
                    ],
                    routing,
                    step_key: String::new(),
                    progress_deadline_seconds: 0,
                },
                before_layout,
            )
        }
    };
    layout.step_key = format!("{}:{}", r.id, step.id);
    layout.progress_deadline_seconds = settings.progress_deadline.as_secs().clamp(1, 86_400) as u32;
    layout
}

/// What to apply to send all traffic back to what ran before `r` (or, for a first
/// deploy, to stop the new version).
pub fn rollback_layout(r: &Rollout, before: Option<&Release>, settings: &Settings) -> Layout {
    let current = r
        .steps
        .get(r.step_index.min(r.steps.len().saturating_sub(1)))
        .map(|s| step_layout(r, s, before, settings));
    let mut layout = match before {
        Some(b) => zero_others(b.layout.clone(), current.as_ref()),
        None => {
            let mut l = current.unwrap_or_else(|| {
                steady_layout(
                    Family::of_strategy(&r.strategy),
                    &r.service,
                    &r.environment,
                    &Revision {
                        version: r.version.clone(),
                        image: r.image.clone(),
                        replicas: 0,
                    },
                    None,
                )
            });
            for w in &mut l.workloads {
                w.replicas = 0;
            }
            l
        }
    };
    layout.step_key = format!("{}:rollback", r.id);
    layout.progress_deadline_seconds = settings.progress_deadline.as_secs().clamp(1, 86_400) as u32;
    layout
}

pub(crate) fn rollout_key(id: Uuid) -> String {
    format!("rollout.{id}")
}

pub(crate) fn active_key(service: &str, environment: &str) -> String {
    format!("active.{service}.{environment}")
}

pub(crate) fn release_key(service: &str, environment: &str) -> String {
    format!("release.{service}.{environment}")
}

/// A KV-safe form of an idempotency key.
pub(crate) fn idempotency_key(key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("key.{hex}")
}

/// What one pass of the reconciler decided.
enum Next {
    /// Come back after this long (keeping the message).
    After(Duration),
    /// Nothing more to do now: acknowledge the message.
    Done,
}

impl Deployer {
    /// The work-queue subject of the runner.
    pub fn runs_subject(&self) -> String {
        format!("{}.deployer.runs", self.subjects.devops_root())
    }

    /// The work-queue stream of the runner.
    pub fn runs_stream(&self) -> String {
        self.subjects
            .tasks_stream()
            .replace("_DEVOPS_TASKS", "_DEVOPS_ROLLOUT_RUNS")
    }

    /// Creates the runner's work queue.
    pub async fn ensure_runs_stream(&self, replicas: usize) -> Result<(), EngineError> {
        self.js
            .create_or_update_stream(stream::Config {
                name: self.runs_stream(),
                description: Some("Deployer work: rollouts to advance (work queue)".into()),
                subjects: vec![self.runs_subject()],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(store)
    }

    /// Asks the runner to advance a rollout.
    pub(crate) async fn enqueue(&self, rollout_id: Uuid) -> Result<(), EngineError> {
        let envelope =
            Envelope::builder(self.source.clone(), AdvanceRollout { rollout_id }).build();
        publish_envelope(&self.js, &self.runs_subject(), &envelope)
            .await
            .map(|_| ())
            .map_err(store)
    }

    pub(crate) async fn load(&self, id: Uuid) -> Result<Option<(Rollout, u64)>, EngineError> {
        match self.rollouts.entry(rollout_key(id)).await.map_err(store)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let r = serde_json::from_slice(&entry.value).map_err(store)?;
                Ok(Some((r, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Stores the rollout if nobody changed it since `revision`; `None` on a conflict.
    pub(crate) async fn save(
        &self,
        r: &mut Rollout,
        revision: u64,
    ) -> Result<Option<u64>, EngineError> {
        r.updated_at = Utc::now();
        let bytes = serde_json::to_vec(r).map_err(store)?;
        match self
            .rollouts
            .update(rollout_key(r.id), Bytes::from(bytes), revision)
            .await
        {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(store(e)),
        }
    }

    /// Stores a new rollout.
    pub(crate) async fn create(&self, r: &Rollout) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(r).map_err(store)?;
        self.rollouts
            .create(rollout_key(r.id), Bytes::from(bytes))
            .await
            .map(|_| ())
            .map_err(store)
    }

    /// The release of a service in an environment, with its KV revision.
    pub async fn release(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Option<(Release, u64)>, EngineError> {
        match self
            .rollouts
            .entry(release_key(service, environment))
            .await
            .map_err(store)?
        {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let r = serde_json::from_slice(&entry.value).map_err(store)?;
                Ok(Some((r, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// The bucket's keys that start with `prefix`, sorted, each once (a KV key listing
    /// may repeat a key).
    pub(crate) async fn keys_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeSet<String>, EngineError> {
        use futures::TryStreamExt;
        Ok(self
            .rollouts
            .keys()
            .await
            .map_err(store)?
            .try_collect::<Vec<_>>()
            .await
            .map_err(store)?
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect())
    }

    /// Every release (for drift checks).
    pub async fn releases(&self) -> Result<Vec<Release>, EngineError> {
        let keys = self.keys_with_prefix("release.").await?;
        let mut out = Vec::new();
        for key in keys {
            if let Some(entry) = self.rollouts.entry(&key).await.map_err(store)?
                && entry.operation == kv::Operation::Put
                && let Ok(r) = serde_json::from_slice(&entry.value)
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Writes the release (any revision: only the owner of the service's active
    /// rollout, or a scale with no rollout active, writes it).
    pub(crate) async fn put_release(&self, release: &Release) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(release).map_err(store)?;
        self.rollouts
            .put(
                release_key(&release.layout.service, &release.layout.environment),
                Bytes::from(bytes),
            )
            .await
            .map(|_| ())
            .map_err(store)
    }

    /// Takes the one-active-rollout lock of a service and environment for `id`;
    /// `Err(holder)` while another rollout that has not ended holds it.
    pub(crate) async fn take_active(
        &self,
        service: &str,
        environment: &str,
        id: Uuid,
    ) -> Result<Result<(), Uuid>, EngineError> {
        let key = active_key(service, environment);
        let mine = Bytes::from(id.to_string());
        for _ in 0..5 {
            match self.rollouts.create(&key, mine.clone()).await {
                Ok(_) => return Ok(Ok(())),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(store(e)),
            }
            let Some(entry) = self.rollouts.entry(&key).await.map_err(store)? else {
                continue;
            };
            let holder = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| Uuid::parse_str(s).ok());
            if holder == Some(id) {
                return Ok(Ok(()));
            }
            if let Some(h) = holder
                && self
                    .load(h)
                    .await?
                    .is_some_and(|(r, _)| !r.phase.is_final())
            {
                return Ok(Err(h));
            }
            // The holder ended without letting go (it died at the end): take over.
            if self
                .rollouts
                .update(&key, mine.clone(), entry.revision)
                .await
                .is_ok()
            {
                return Ok(Ok(()));
            }
        }
        Err(EngineError::Store(
            "the active-rollout lock kept changing".into(),
        ))
    }

    /// The rollout holding the active lock of a service and environment, if it runs.
    pub(crate) async fn active(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Option<Rollout>, EngineError> {
        let Some(entry) = self
            .rollouts
            .entry(active_key(service, environment))
            .await
            .map_err(store)?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let Some(id) = std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            return Ok(None);
        };
        Ok(self
            .load(id)
            .await?
            .map(|(r, _)| r)
            .filter(|r| !r.phase.is_final()))
    }

    /// Lets go of the active-rollout lock if `r` holds it.
    pub(crate) async fn release_active(&self, r: &Rollout) -> Result<(), EngineError> {
        let key = active_key(&r.service, &r.environment);
        if let Some(entry) = self.rollouts.entry(&key).await.map_err(store)?
            && entry.operation == kv::Operation::Put
            && entry.value.as_ref() == r.id.to_string().as_bytes()
        {
            let _ = self
                .rollouts
                .delete_expect_revision(&key, Some(entry.revision))
                .await;
        }
        Ok(())
    }

    /// Publishes `rollout.<what>` with the rollout as data.
    pub(crate) async fn announce(&self, what: &str, r: &Rollout) {
        let flow = FlowContext {
            id: r.id,
            correlationid: r.correlationid.clone().unwrap_or_else(|| r.id.to_string()),
            traceparent: None,
        };
        let event = Envelope::builder(self.source.clone(), r.clone())
            .subject(r.service.clone())
            .caused_by(&flow)
            .build();
        if let Err(e) = self.events.publish("rollout", what, &event).await {
            tracing::error!(rollout = %r.id, what, error = %e, "cannot publish rollout event");
        }
    }

    /// Advances a rollout for as long as this delivery lasts.
    pub(crate) async fn advance(&self, rollout_id: Uuid, delivery: &Delivery) -> Outcome {
        let mut last_progress = std::time::Instant::now();
        loop {
            if self.crash.is_cancelled() {
                return Outcome::Abandon;
            }
            if self.shutdown.is_cancelled() {
                return self.hand_over(rollout_id).await;
            }
            let next = match self.reconcile(rollout_id).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(rollout = %rollout_id, error = %e, "cannot advance rollout");
                    return Outcome::Retry {
                        delay: Some(Duration::from_secs(1)),
                        reason: e.to_string(),
                    };
                }
            };
            match next {
                Next::Done => return Outcome::Ack,
                Next::After(wait) => {
                    if last_progress.elapsed() >= self.settings.lease / 4 {
                        delivery.progress().await;
                        last_progress = std::time::Instant::now();
                    }
                    tokio::select! {
                        _ = self.crash.cancelled() => return Outcome::Abandon,
                        _ = self.shutdown.cancelled() => return self.hand_over(rollout_id).await,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// At a graceful shutdown: gives up the lease so that another replica, receiving
    /// the message at once, carries on without waiting for the lease to run out.
    async fn hand_over(&self, rollout_id: Uuid) -> Outcome {
        for _ in 0..5 {
            let Ok(Some((mut r, revision))) = self.load(rollout_id).await else {
                break;
            };
            if r.lease.as_ref().is_none_or(|l| l.owner != self.instance) {
                break;
            }
            r.lease = None;
            if let Ok(Some(_)) = self.save(&mut r, revision).await {
                break;
            }
        }
        Outcome::Retry {
            delay: Some(Duration::from_millis(100)),
            reason: "handed over at shutdown".into(),
        }
    }

    /// One pass over a rollout: reads it, does one bounded thing, saves it.
    async fn reconcile(&self, id: Uuid) -> Result<Next, EngineError> {
        let Some((mut r, revision)) = self.load(id).await? else {
            return Ok(Next::Done);
        };
        if r.phase.is_final() {
            self.release_active(&r).await?;
            return Ok(Next::Done);
        }
        let now = Utc::now();
        if let Some(lease) = &r.lease
            && lease.owner != self.instance
            && lease.until > now
        {
            // Another deployer holds it (its own message keeps it going).
            return Ok(Next::Done);
        }
        let renew = r.lease.as_ref().is_none_or(|l| {
            l.owner != self.instance
                || (l.until - now).to_std().unwrap_or_default() < self.settings.lease / 2
        });
        if renew {
            r.lease = Some(Lease {
                owner: self.instance.clone(),
                until: now
                    + chrono::Duration::from_std(self.settings.lease)
                        .unwrap_or(chrono::Duration::MAX),
            });
            if self.save(&mut r, revision).await?.is_none() {
                return Ok(Next::After(Duration::ZERO));
            }
            return Ok(Next::After(Duration::ZERO));
        }
        let before = self
            .release(&r.service, &r.environment)
            .await?
            .map(|(b, _)| b);
        // Commands first.
        match r.pending.clone() {
            Some(PendingCommand::Abort { by, reason }) => {
                r.pending = None;
                let why = format!("aborted by {by}: {reason}");
                return self
                    .roll_back(r, revision, before.as_ref(), RolloutPhase::Aborted, why)
                    .await;
            }
            Some(PendingCommand::Pause { by }) => {
                r.pending = None;
                r.phase = RolloutPhase::Paused;
                r.reason = Some(format!("paused by {by}"));
                r.lease = None;
                if self.save(&mut r, revision).await?.is_some() {
                    self.announce("paused", &r).await;
                    return Ok(Next::Done);
                }
                return Ok(Next::After(Duration::ZERO));
            }
            _ => {}
        }
        if r.phase == RolloutPhase::Paused {
            r.lease = None;
            if self.save(&mut r, revision).await?.is_some() {
                return Ok(Next::Done);
            }
            return Ok(Next::After(Duration::ZERO));
        }
        let Some(current) = r.steps.get(r.step_index).cloned() else {
            return self.succeed(r, revision, before).await;
        };
        match current.state {
            RolloutStepState::Pending => {
                let layout = step_layout(&r, &current, before.as_ref(), &self.settings);
                {
                    let s = &mut r.steps[r.step_index];
                    s.state = RolloutStepState::Running;
                    s.applied_at = Some(now);
                }
                r.weight = r.weight.max(if current.kind == RolloutStepKind::Preview {
                    0
                } else {
                    current.weight
                });
                if self.save(&mut r, revision).await?.is_none() {
                    return Ok(Next::After(Duration::ZERO));
                }
                self.apply(&r, &layout).await
            }
            RolloutStepState::Running if current.ready_at.is_none() => {
                let layout = step_layout(&r, &current, before.as_ref(), &self.settings);
                let applied_here = self
                    .applied_here
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&layout.step_key);
                if !applied_here {
                    // Taken over mid-step: make sure the step reached the target (same
                    // key, same layout: no change if it had).
                    return self.apply(&r, &layout).await;
                }
                let names: Vec<String> = layout
                    .workloads
                    .iter()
                    .filter(|w| w.replicas > 0)
                    .map(|w| w.name.clone())
                    .collect();
                let status = match self.target.status(&r.service, &r.environment, &names).await {
                    Ok(s) => s,
                    Err(TargetError::Unavailable { .. }) => {
                        return Ok(Next::After(Duration::from_millis(500)));
                    }
                    Err(e) => {
                        let why = format!("cannot read the rollout's status: {e}");
                        return self
                            .roll_back(r, revision, before.as_ref(), RolloutPhase::Failed, why)
                            .await;
                    }
                };
                let mut waiting = Vec::new();
                for w in layout.workloads.iter().filter(|w| w.replicas > 0) {
                    match status.workload(&w.name) {
                        Some(s) if s.failure.is_some() => {
                            let why = format!(
                                "{} cannot progress: {}",
                                w.name,
                                s.failure.clone().unwrap_or_default()
                            );
                            if current.applied_at.is_some_and(|at| {
                                (now - at).to_std().unwrap_or_default()
                                    >= self.settings.progress_deadline
                            }) {
                                return self
                                    .roll_back(
                                        r,
                                        revision,
                                        before.as_ref(),
                                        RolloutPhase::Failed,
                                        format!("progress deadline exceeded: {why}"),
                                    )
                                    .await;
                            }
                            waiting.push(why);
                        }
                        Some(s) if s.is_ready() && s.version == w.version => {}
                        Some(s) => {
                            waiting.push(format!("{}: {}/{} ready", w.name, s.ready, w.replicas))
                        }
                        None => waiting.push(format!("{}: not created yet", w.name)),
                    }
                }
                if waiting.is_empty() {
                    r.steps[r.step_index].ready_at = Some(now);
                    if self.save(&mut r, revision).await?.is_some() {
                        self.announce("progressed", &r).await;
                    }
                    return Ok(Next::After(Duration::ZERO));
                }
                let deadline_passed = current.applied_at.is_some_and(|at| {
                    (now - at).to_std().unwrap_or_default() >= self.settings.progress_deadline
                });
                if deadline_passed {
                    let why = format!(
                        "progress deadline of {}s exceeded: {}",
                        self.settings.progress_deadline.as_secs(),
                        waiting.join("; ")
                    );
                    return self
                        .roll_back(r, revision, before.as_ref(), RolloutPhase::Failed, why)
                        .await;
                }
                Ok(Next::After(Duration::from_millis(100)))
            }
            RolloutStepState::Running => {
                // Ready: pause with analysis, unless promoted.
                if let Some(evidence) = self.evidence_against(&r, &current, before.as_ref()).await {
                    let why = format!(
                        "{} analysis failed: {}",
                        evidence.source, evidence.verdict.reason
                    );
                    r.analyses.push(evidence);
                    trim(&mut r.analyses);
                    return self
                        .roll_back(r, revision, before.as_ref(), RolloutPhase::Aborted, why)
                        .await;
                }
                let ready_at = current.ready_at.unwrap_or(now);
                let pause_over = (now - ready_at).to_std().unwrap_or_default()
                    >= Duration::from_secs(current.pause_seconds);
                let promoted = matches!(r.pending, Some(PendingCommand::Promote { .. }));
                if !pause_over && !promoted {
                    let left = Duration::from_secs(current.pause_seconds)
                        .saturating_sub((now - ready_at).to_std().unwrap_or_default());
                    return Ok(Next::After(
                        left.min(self.settings.analysis_interval / 4)
                            .max(Duration::from_millis(20)),
                    ));
                }
                let full = matches!(r.pending, Some(PendingCommand::Promote { full: true, .. }));
                r.pending = None;
                {
                    let s = &mut r.steps[r.step_index];
                    s.state = RolloutStepState::Done;
                    s.done_at = Some(now);
                }
                r.step_index += 1;
                if full {
                    // Straight to the last step.
                    let last = r.steps.len() - 1;
                    for s in &mut r.steps[r.step_index..last] {
                        s.state = RolloutStepState::Done;
                        s.done_at = Some(now);
                    }
                    r.step_index = last;
                }
                let more = r.step_index < r.steps.len();
                let hold = more
                    && !promoted
                    && r.manual_promotion
                    && r.steps[r.step_index].kind != RolloutStepKind::ScaleDown;
                if hold {
                    r.phase = RolloutPhase::Paused;
                    r.reason = Some(format!(
                        "waiting for rollout.promote before step {}",
                        r.steps[r.step_index].id
                    ));
                    r.lease = None;
                }
                if self.save(&mut r, revision).await?.is_none() {
                    return Ok(Next::After(Duration::ZERO));
                }
                if promoted {
                    self.announce("promoted", &r).await;
                }
                if hold {
                    self.announce("paused", &r).await;
                    return Ok(Next::Done);
                }
                Ok(Next::After(Duration::ZERO))
            }
            RolloutStepState::Done => {
                r.step_index += 1;
                if self.save(&mut r, revision).await?.is_none() {
                    return Ok(Next::After(Duration::ZERO));
                }
                Ok(Next::After(Duration::ZERO))
            }
        }
    }

    /// Applies a step's layout; the target refusing fails the rollout.
    async fn apply(&self, r: &Rollout, layout: &Layout) -> Result<Next, EngineError> {
        match self.target.apply(layout).await {
            Ok(()) => {
                self.applied_here
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(layout.step_key.clone());
                tracing::info!(rollout = %r.id, step = %layout.step_key, "step applied");
                Ok(Next::After(Duration::ZERO))
            }
            Err(TargetError::Unavailable { message, .. }) => {
                tracing::warn!(rollout = %r.id, message, "target unavailable; retrying");
                Ok(Next::After(Duration::from_secs(1)))
            }
            Err(e) => {
                let Some((r, revision)) = self.load(r.id).await? else {
                    return Ok(Next::Done);
                };
                let before = self
                    .release(&r.service, &r.environment)
                    .await?
                    .map(|(b, _)| b);
                self.roll_back(
                    r,
                    revision,
                    before.as_ref(),
                    RolloutPhase::Failed,
                    format!("the target refused the step: {e}"),
                )
                .await
            }
        }
    }

    /// Sends traffic back to what ran before and ends the rollout in `phase`.
    async fn roll_back(
        &self,
        mut r: Rollout,
        revision: u64,
        before: Option<&Release>,
        phase: RolloutPhase,
        reason: String,
    ) -> Result<Next, EngineError> {
        let layout = rollback_layout(&r, before, &self.settings);
        match self.target.apply(&layout).await {
            Ok(()) => {}
            Err(TargetError::Unavailable { message, .. }) => {
                tracing::warn!(rollout = %r.id, message, "cannot roll back yet; retrying");
                return Ok(Next::After(Duration::from_secs(1)));
            }
            Err(e) => {
                tracing::error!(rollout = %r.id, error = %e, "the target refused the rollback");
            }
        }
        let now = Utc::now();
        r.phase = phase;
        r.reason = Some(reason);
        r.rolled_back = true;
        r.weight = 0;
        r.lease = None;
        r.pending = None;
        r.finished_at = Some(now);
        if self.save(&mut r, revision).await?.is_none() {
            return Ok(Next::After(Duration::ZERO));
        }
        tracing::warn!(rollout = %r.id, reason = r.reason.as_deref().unwrap_or(""), "rollout rolled back");
        self.announce(
            if phase == RolloutPhase::Aborted {
                "aborted"
            } else {
                "failed"
            },
            &r,
        )
        .await;
        self.announce("rolled_back", &r).await;
        self.release_active(&r).await?;
        self.last_analysis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&r.id);
        Ok(Next::Done)
    }

    /// Every step done: the new version is the release.
    async fn succeed(
        &self,
        mut r: Rollout,
        revision: u64,
        before: Option<Release>,
    ) -> Result<Next, EngineError> {
        let now = Utc::now();
        let last = r.steps.last().cloned();
        let layout = last
            .map(|s| step_layout(&r, &s, before.as_ref(), &self.settings))
            .unwrap_or_else(|| {
                steady_layout(
                    Family::of_strategy(&r.strategy),
                    &r.service,
                    &r.environment,
                    &Revision {
                        version: r.version.clone(),
                        image: r.image.clone(),
                        replicas: r.replicas,
                    },
                    before.as_ref().map(|b| &b.layout),
                )
            });
        let mut history = before
            .as_ref()
            .map(|b| b.history.clone())
            .unwrap_or_default();
        if r.is_rollback {
            // Going back to an earlier version forgets what came after it, so that the
            // next plain rollback goes further back rather than forward again.
            if let Some(pos) = history.iter().rposition(|h| h.version == r.version) {
                history.truncate(pos);
            }
        } else if let Some(b) = &before {
            history.push(b.current.clone());
        }
        let excess = history.len().saturating_sub(10);
        history.drain(..excess);
        let release = Release {
            layout,
            current: Revision {
                version: r.version.clone(),
                image: r.image.clone(),
                replicas: r.replicas,
            },
            history,
            rollout_id: Some(r.id),
            at: now,
        };
        self.put_release(&release).await?;
        r.phase = RolloutPhase::Succeeded;
        r.weight = 100;
        r.lease = None;
        r.finished_at = Some(now);
        r.reason = None;
        if self.save(&mut r, revision).await?.is_none() {
            return Ok(Next::After(Duration::ZERO));
        }
        self.announce(
            if r.is_rollback {
                "rolled_back"
            } else {
                "succeeded"
            },
            &r,
        )
        .await;
        self.release_active(&r).await?;
        Ok(Next::Done)
    }

    /// Evidence that the step should be aborted: something heard on the bus, or an
    /// analysis run now (at most once per analysis interval).
    async fn evidence_against(
        &self,
        r: &Rollout,
        step: &RolloutStep,
        before: Option<&Release>,
    ) -> Option<AnalysisRecord> {
        // Only steps that send traffic to the new version are judged (not a rollback,
        // which the alert that asked for it must not abort).
        let (canary, baseline) = analysis_tracks(r, step, before, &self.settings)?;
        if let Some(h) = self.take_heard(r) {
            return Some(AnalysisRecord {
                step: step.id.clone(),
                source: h.source.into(),
                verdict: h.verdict,
            });
        }
        {
            let mut last = self.last_analysis.lock().unwrap_or_else(|e| e.into_inner());
            if last
                .get(&r.id)
                .is_some_and(|t| t.elapsed() < self.settings.analysis_interval)
            {
                return None;
            }
            last.insert(r.id, std::time::Instant::now());
        }
        let (source, verdict) = self.analyze(r, canary, baseline).await?;
        (verdict.outcome == AnalysisOutcome::Fail).then(|| AnalysisRecord {
            step: step.id.clone(),
            source: source.into(),
            verdict,
        })
    }

    /// A firing alert heard on the service since `since`, described.
    pub(crate) fn heard_alert(
        &self,
        service: &str,
        environment: &str,
        since: DateTime<Utc>,
    ) -> Option<String> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard
            .get(&(service.to_owned(), environment.to_owned()))?
            .iter()
            .find(|h| h.at >= since && h.source == "alert")
            .map(|h| h.verdict.reason.clone())
    }

    /// Evidence heard on the bus since the rollout began.
    fn take_heard(&self, r: &Rollout) -> Option<Heard> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard
            .get(&(r.service.clone(), r.environment.clone()))?
            .iter()
            .find(|h| {
                h.at >= r.created_at
                    && h.rollout_id.is_none_or(|id| id == r.id)
                    && (h.source != "alert" || self.settings.abort_on_alert)
            })
            .cloned()
    }

    /// Asks the monitor; falls back to the simulated target's own numbers when no
    /// monitor answers.
    async fn analyze(
        &self,
        r: &Rollout,
        canary: Track,
        baseline: Track,
    ) -> Option<(&'static str, CanaryVerdict)> {
        let request = CanaryAnalyze {
            service: r.service.clone(),
            environment: r.environment.clone(),
            // The version too: an earlier canary's samples on the same track must not
            // count against this one.
            canary: [
                ("track".to_owned(), canary.as_str().to_owned()),
                ("version".to_owned(), r.version.clone()),
            ]
            .into(),
            baseline: [("track".to_owned(), baseline.as_str().to_owned())]
                .into_iter()
                .chain(
                    r.previous
                        .as_ref()
                        .map(|p| ("version".to_owned(), p.version.clone())),
                )
                .collect(),
            metrics: vec![
                AnalysisMetric {
                    name: "http_error_ratio".into(),
                    query: None,
                    direction: Direction::Increase,
                    max_relative_effect: None,
                    max_absolute_effect: Some(self.settings.max_error_ratio_increase),
                    critical: true,
                    must_have_data: false,
                },
                AnalysisMetric {
                    name: "http_latency_seconds".into(),
                    query: None,
                    direction: Direction::Increase,
                    max_relative_effect: Some(self.settings.max_latency_increase),
                    max_absolute_effect: None,
                    critical: false,
                    must_have_data: false,
                },
            ],
            window_seconds: self.settings.analysis_window.as_secs_f64(),
            confidence: None,
            rollout_id: Some(r.id),
        };
        let envelope = Envelope::builder(self.source.clone(), request)
            .subject(r.service.clone())
            .build();
        let subject = self
            .subjects
            .command(ServiceKind::Monitor, "canary.analyze");
        match call::<_, CanaryVerdict>(
            &self.client,
            &subject,
            &envelope,
            Encoding::Json,
            self.settings.analysis_timeout,
        )
        .await
        {
            Ok(reply) => Some(("monitor", reply.data)),
            Err(CallError::NoResponders(_) | CallError::Timeout { .. }) => {
                let sim = self.sim.as_ref()?;
                Some((
                    "threshold",
                    threshold_verdict(sim, r, canary, baseline, &self.settings),
                ))
            }
            Err(e) => {
                tracing::warn!(rollout = %r.id, error = %e, "canary analysis failed");
                None
            }
        }
    }

    /// Records a failing verdict or a firing alert heard on the bus.
    pub(crate) fn hear(&self, service: &str, environment: &str, heard: Heard) {
        let mut map = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let list = map
            .entry((service.to_owned(), environment.to_owned()))
            .or_default();
        list.push(heard);
        let excess = list.len().saturating_sub(50);
        list.drain(..excess);
    }

    /// Listens for alerts on services and failing continuous analyses until shutdown.
    pub(crate) async fn listen(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        use futures::StreamExt;
        let root = format!("{}.events", self.subjects.devops_root());
        let mut alerts = self
            .client
            .subscribe(format!("{root}.alert.firing"))
            .await
            .map_err(store)?;
        let mut results = self
            .client
            .subscribe(format!("{root}.analysis.result"))
            .await
            .map_err(store)?;
        toronto_runtime::service::confirm_subscriptions(&self.client).await;
        loop {
            let (message, is_alert) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.crash.cancelled() => return Ok(()),
                Some(m) = alerts.next() => (m, true),
                Some(m) = results.next() => (m, false),
                else => return Ok(()),
            };
            let Ok(raw) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
                continue;
            };
            let data = raw.get("data").cloned().unwrap_or_default();
            if is_alert {
                let label = |name: &str| {
                    data.get(name)
                        .or_else(|| data.get("labels").and_then(|l| l.get(name)))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                };
                let (Some(service), Some(environment)) = (label("service"), label("environment"))
                else {
                    continue;
                };
                let summary = label("summary")
                    .or_else(|| label("alertname"))
                    .or_else(|| label("slo"))
                    .unwrap_or_else(|| "alert".into());
                let verdict = CanaryVerdict {
                    service: service.clone(),
                    environment: environment.clone(),
                    rollout_id: None,
                    outcome: AnalysisOutcome::Fail,
                    reason: format!("alert firing on {service} in {environment}: {summary}"),
                    metrics: Vec::new(),
                    analyzed_at: Utc::now(),
                };
                self.hear(
                    &service,
                    &environment,
                    Heard {
                        at: Utc::now(),
                        rollout_id: None,
                        source: "alert",
                        verdict,
                    },
                );
            } else if let Ok(verdict) = serde_json::from_value::<CanaryVerdict>(data)
                && verdict.outcome == AnalysisOutcome::Fail
                && verdict.rollout_id.is_some()
            {
                let (service, environment) = (verdict.service.clone(), verdict.environment.clone());
                self.hear(
                    &service,
                    &environment,
                    Heard {
                        at: Utc::now(),
                        rollout_id: verdict.rollout_id,
                        source: "monitor",
                        verdict,
                    },
                );
            }
        }
    }
}

fn trim(analyses: &mut Vec<AnalysisRecord>) {
    let excess = analyses.len().saturating_sub(20);
    analyses.drain(..excess);
}

/// Which tracks a step compares (new, baseline), when it has something to analyse:
/// the canary with the stable, or the new colour (behind the preview Service, then
/// active) with the old one.
fn analysis_tracks(
    r: &Rollout,
    step: &RolloutStep,
    before: Option<&Release>,
    settings: &Settings,
) -> Option<(Track, Track)> {
    match step.kind {
        RolloutStepKind::Weight => Some((Track::Canary, Track::Stable)),
        RolloutStepKind::Preview | RolloutStepKind::Switch => {
            let layout = step_layout(r, step, before, settings);
            let new = layout
                .workloads
                .iter()
                .find(|w| w.version == r.version && w.replicas > 0)?
                .track;
            Some((new, new.other_colour()))
        }
        _ => None,
    }
}

/// A threshold check on the simulated cluster's own counts: the canary fails when its
/// error ratio exceeds the baseline's by more than the allowed increase.
fn threshold_verdict(
    sim: &SimCluster,
    r: &Rollout,
    canary: Track,
    baseline: Track,
    settings: &Settings,
) -> CanaryVerdict {
    let window = settings.analysis_window;
    let c = sim.observed(&r.service, &r.environment, canary, window);
    let b = sim.observed(&r.service, &r.environment, baseline, window);
    let summary = |x: Option<(u64, u64, f64)>| SampleSummary {
        count: x.map_or(0, |v| v.0 as usize),
        median: None,
        mean: x.map(|(req, err, _)| err as f64 / req.max(1) as f64),
    };
    let (outcome, reason) = match (c, b) {
        (Some((cr, ce, _)), Some((br, be, _))) => {
            let cratio = ce as f64 / cr.max(1) as f64;
            let bratio = be as f64 / br.max(1) as f64;
            if cratio - bratio > settings.max_error_ratio_increase {
                (
                    AnalysisOutcome::Fail,
                    format!(
                        "canary error ratio {cratio:.3} exceeds the baseline's {bratio:.3} by more than {}",
                        settings.max_error_ratio_increase
                    ),
                )
            } else {
                (
                    AnalysisOutcome::Pass,
                    format!("canary error ratio {cratio:.3}, baseline {bratio:.3}"),
                )
            }
        }
        _ => (
            AnalysisOutcome::Inconclusive,
            "no traffic measured yet".to_owned(),
        ),
    };
    CanaryVerdict {
        service: r.service.clone(),
        environment: r.environment.clone(),
        rollout_id: Some(r.id),
        outcome,
        reason: reason.clone(),
        metrics: vec![MetricEvidence {
            name: "http_error_ratio".into(),
            outcome,
            critical: true,
            canary: summary(c),
            baseline: summary(b),
            u: None,
            p_value: None,
            effect: None,
            reason,
        }],
        analyzed_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toronto_protocol::tasks::CanaryStep;

    fn release(family: Family, version: &str) -> Release {
        let rev = Revision {
            version: version.into(),
            image: format!("shop:{version}"),
            replicas: 4,
        };
        Release {
            layout: steady_layout(family, "shop", "production", &rev, None),
            current: rev,
            history: Vec::new(),
            rollout_id: None,
            at: Utc::now(),
        }
    }

    #[test]
    fn weights_must_increase_within_range() {
        assert!(check_weights(&[10, 25, 50, 100]).is_ok());
        assert!(
            check_weights(&[25, 10])
                .unwrap_err()
                .contains("must increase")
        );
        assert!(
            check_weights(&[0, 10])
                .unwrap_err()
                .contains("between 1 and 100")
        );
        assert!(check_weights(&[]).is_err());
    }

    #[test]
    fn canary_steps_end_with_promote_and_first_deploy_replaces() {
        let settings = Settings::default();
        let strategy = Strategy::Canary {
            steps: vec![
                CanaryStep {
                    weight: 20,
                    pause_seconds: Some(5),
                },
                CanaryStep {
                    weight: 100,
                    pause_seconds: None,
                },
            ],
        };
        let before = release(Family::Canary, "1.0.0");
        let steps = plan_steps(&strategy, Some(&before), &settings, false).unwrap();
        let ids: Vec<_> = steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["weight-20", "promote"]);
        assert_eq!(steps[0].pause_seconds, 5);
        let first = plan_steps(&strategy, None, &settings, false).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, RolloutStepKind::Replace);
    }

    #[test]
    fn blue_green_switches_to_the_other_colour() {
        let settings = Settings::default();
        let before = release(Family::BlueGreen, "1.0.0");
        let steps = plan_steps(&Strategy::BlueGreen, Some(&before), &settings, false).unwrap();
        let r = Rollout {
            id: Uuid::nil(),
            service: "shop".into(),
            environment: "production".into(),
            version: "2.0.0".into(),
            image: "shop:2.0.0".into(),
            strategy: Strategy::BlueGreen,
            replicas: 4,
            previous: Some(before.current.clone()),
            phase: RolloutPhase::Progressing,
            steps: steps.clone(),
            step_index: 0,
            weight: 0,
            manual_promotion: false,
            reason: None,
            rolled_back: false,
            is_rollback: false,
            pending: None,
            analyses: Vec::new(),
            plan_id: None,
            idempotency_key: "k".into(),
            correlationid: None,
            requested_by: None,
            lease: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
        };
        let preview = step_layout(&r, &steps[0], Some(&before), &settings);
        assert_eq!(
            preview.routing,
            Routing::BlueGreen {
                active: Track::Blue,
                preview: Some(Track::Green)
            }
        );
        let switch = step_layout(&r, &steps[1], Some(&before), &settings);
        assert_eq!(
            switch.routing,
            Routing::BlueGreen {
                active: Track::Green,
                preview: Some(Track::Blue)
            }
        );
        let green = switch
            .workloads
            .iter()
            .find(|w| w.name == "shop-green")
            .unwrap();
        assert_eq!(green.version, "2.0.0");
        let back = rollback_layout(&r, Some(&before), &settings);
        assert_eq!(
            back.routing,
            Routing::BlueGreen {
                active: Track::Blue,
                preview: None
            }
        );
        assert_eq!(
            back.workloads
                .iter()
                .find(|w| w.name == "shop-green")
                .unwrap()
                .replicas,
            0
        );
    }
}
