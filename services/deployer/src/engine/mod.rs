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
//! Each pass of the reconciler (`reconcile`) reads the rollout, does one bounded
//! thing and says when to come back ([`toronto_runtime::work::Next`]), in the manner
//! of a kube-rs reconciler; `layout` says what each step puts on the target, and
//! `analysis` gathers the evidence against a canary. The record store, the lease,
//! the one-active-rollout lock and the work queue are [`toronto_runtime::work`]'s.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use toronto_protocol::EventKind;
use toronto_protocol::rollout::RolloutEvent;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use toronto_protocol::analysis::CanaryVerdict;
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::rollout::{AdvanceRollout, Revision, Rollout};
use toronto_protocol::workload::WorkloadTemplate;
use toronto_protocol::{Envelope, ErrorBody, ErrorCode, Subjects};
use toronto_runtime::jetstream::{Events, JetStreamError};
use toronto_runtime::work::{Created, KeyLock, Records, Saved, Taken, WorkError, WorkQueue};
use uuid::Uuid;

use crate::settings::Settings;
use crate::sim::SimCluster;
use crate::target::{Layout, Target, TargetError};

mod adoption;
mod analysis;
mod layout;
mod listen;
mod manifest_dir;
mod reconcile;
mod sim_verdict;
mod templates;
mod weights;

pub use manifest_dir::{
    ANNOTATION_ENVIRONMENT, ANNOTATION_SERVICE, ManifestWorkload, ManifestWorkloads, load_workloads,
};
pub use weights::{TrafficSplit, canary_replicas, honest_weights};

pub use templates::{BUILT_IN, built_in, first_deploy_metrics, load_templates, template_for};

pub use layout::{
    FIRST_DEPLOY, Family, StepsError, check_weights, plan_steps, rollback_layout, steady_layout,
    step_layout,
};

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

/// The latest analysis of a rollout's step.
#[derive(Debug, Clone)]
pub(crate) struct LastOutcome {
    step: String,
    source: &'static str,
    verdict: CanaryVerdict,
}

/// Evidence heard per service and environment.
pub(crate) type HeardBook = HashMap<(String, String), Vec<Heard>>;

/// The wakers of pausing rollouts per service and environment.
pub(crate) type WakerBook = HashMap<(String, String), Arc<tokio::sync::Notify>>;

/// The deployer's state and connections, shared by its endpoints and its runner.
#[derive(Clone)]
pub struct Deployer {
    pub(crate) client: async_nats::Client,
    pub(crate) subjects: Subjects,
    pub(crate) source: String,
    pub(crate) events: Events,
    /// The bucket of rollouts, releases, locks and idempotency keys.
    pub(crate) rollouts: kv::Store,
    /// Rollouts (`rollout.<id>`).
    pub(crate) records: Records<Rollout>,
    /// The rollout ids in memory, newest first for `rollout.list`.
    pub(crate) index: toronto_runtime::work::KeyIndex,
    /// Releases (`release.<service>.<environment>`).
    pub(crate) release_records: Records<Release>,
    /// Workload templates (`workload.<service>.<environment>`).
    pub(crate) workload_records: Records<WorkloadTemplate>,
    /// One active rollout per service and environment (`active.<service>.<environment>`).
    pub(crate) active_lock: KeyLock<Rollout>,
    /// The work queue of rollouts to advance.
    pub(crate) runs: WorkQueue,
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
    /// The latest analysis outcome of each rollout's current step (for `on_no_data`).
    pub(crate) last_outcome: Arc<Mutex<HashMap<Uuid, LastOutcome>>>,
    /// Per service and environment: woken when evidence against it is heard, so that
    /// a pausing rollout judges it at once rather than at its next analysis.
    pub(crate) wakers: Arc<Mutex<WakerBook>>,
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
    /// The KV bucket failed, or a record kept changing.
    #[error("state store unavailable: {0}")]
    Store(#[from] WorkError),
    /// The work queue or the events stream failed.
    #[error("state store unavailable: {0}")]
    Queue(#[from] JetStreamError),
    /// A subscription could not be made.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
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

/// The rollouts of a bucket, under `rollout.<id>`.
pub(crate) fn rollout_records(kv: kv::Store) -> Records<Rollout> {
    Records::new(kv, "rollout", |r: &Rollout| r.phase.is_final())
}

/// The releases of a bucket, under `release.<service>.<environment>`.
pub(crate) fn release_records(kv: kv::Store) -> Records<Release> {
    Records::new(kv, "release", |_| false)
}

/// The workload templates of a bucket, under `workload.<service>.<environment>`.
pub(crate) fn workload_records(kv: kv::Store) -> Records<WorkloadTemplate> {
    Records::new(kv, "workload", |_| false)
}

/// The one-active-rollout locks beside `records`, under `active.<service>.<environment>`.
pub(crate) fn active_lock(records: Records<Rollout>) -> KeyLock<Rollout> {
    KeyLock::new(records, "active")
}

/// The scope of a service in an environment (locks and releases).
fn scope(service: &str, environment: &str) -> String {
    format!("{service}.{environment}")
}

/// A KV-safe form of an idempotency key.
pub(crate) fn idempotency_key(key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("key.{hex}")
}

impl Deployer {
    /// Asks the runner to advance a rollout.
    pub(crate) async fn enqueue(&self, rollout_id: Uuid) -> Result<(), EngineError> {
        let envelope =
            Envelope::builder(self.source.clone(), AdvanceRollout { rollout_id }).build();
        Ok(self.runs.enqueue(&envelope).await?)
    }

    /// A rollout with its revision.
    pub(crate) async fn load(&self, id: Uuid) -> Result<Option<(Rollout, u64)>, EngineError> {
        Ok(self.records.load(id).await?.map(|v| (v.value, v.revision)))
    }

    /// Stores the rollout if nobody changed it since `revision`.
    pub(crate) async fn save(&self, r: &mut Rollout, revision: u64) -> Result<Saved, EngineError> {
        r.updated_at = Utc::now();
        Ok(self.records.save(r.id, r, revision).await?)
    }

    /// Stores a new rollout.
    pub(crate) async fn create(&self, r: &Rollout) -> Result<(), EngineError> {
        // A fresh id: it cannot exist already.
        let _ = self.records.create(r.id, r).await?;
        Ok(())
    }

    /// The raw value under `key` (idempotency keys).
    pub(crate) async fn get_raw(&self, key: &str) -> Result<Option<Bytes>, EngineError> {
        self.rollouts.get(key).await.map_err(|source| {
            WorkError::Read {
                key: key.to_owned(),
                source,
            }
            .into()
        })
    }

    /// Stores a raw value under `key` unless the key holds one (idempotency keys).
    pub(crate) async fn create_raw(&self, key: &str, value: Bytes) -> Result<Created, EngineError> {
        match self.rollouts.create(key, value).await {
            Ok(revision) => Ok(Created::Stored(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Created::Exists),
            Err(source) => Err(WorkError::Create {
                key: key.to_owned(),
                source,
            }
            .into()),
        }
    }

    /// The release of a service in an environment, with its KV revision.
    pub async fn release(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Option<(Release, u64)>, EngineError> {
        Ok(self
            .release_records
            .load(scope(service, environment))
            .await?
            .map(|v| (v.value, v.revision)))
    }

    /// Up to `n` rollout ids, newest first, before `before` when given: from the live
    /// index, so the cost does not grow with the number of past rollouts.
    pub(crate) async fn newest_rollout_ids(
        &self,
        before: Option<&str>,
        n: usize,
    ) -> Result<Vec<String>, EngineError> {
        Ok(self.index.newest_or_list(&self.records, before, n).await?)
    }

    /// Every release (for drift checks).
    pub async fn releases(&self) -> Result<Vec<Release>, EngineError> {
        Ok(self.release_records.all().await?)
    }

    /// Writes the release (any revision: only the owner of the service's active
    /// rollout, or a scale with no rollout active, writes it).
    pub(crate) async fn put_release(&self, release: &Release) -> Result<(), EngineError> {
        let id = scope(&release.layout.service, &release.layout.environment);
        self.release_records.put(id, release).await?;
        Ok(())
    }

    /// The workload template of a service in an environment: the one registered with
    /// `workload.put`, else one read from `TORONTO_DEPLOYER_WORKLOAD_DIR`.
    pub async fn workload(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Option<WorkloadTemplate>, EngineError> {
        let registered = self
            .workload_records
            .load(scope(service, environment))
            .await?
            .map(|v| v.value);
        Ok(registered.or_else(|| {
            self.settings
                .workload_manifests
                .get(&(service.to_owned(), environment.to_owned()))
                .map(|m| WorkloadTemplate {
                    service: service.to_owned(),
                    environment: environment.to_owned(),
                    pod_template: m.pod_template.clone(),
                    adopted: None,
                    replicas: m.replicas,
                    by: Some(format!("file {}", m.file)),
                    updated_at: Utc::now(),
                })
        }))
    }

    /// Stores a workload template.
    pub(crate) async fn put_workload(&self, w: &WorkloadTemplate) -> Result<(), EngineError> {
        self.workload_records
            .put(scope(&w.service, &w.environment), w)
            .await?;
        Ok(())
    }

    /// `layout` made from the service's pod template, when one is registered.
    pub(crate) async fn with_pod_template(
        &self,
        mut layout: Layout,
    ) -> Result<Layout, EngineError> {
        layout.pod_template = self
            .workload(&layout.service, &layout.environment)
            .await?
            .map(|w| w.pod_template);
        Ok(layout)
    }

    /// Takes the one-active-rollout lock of a service and environment for `id`.
    pub(crate) async fn take_active(
        &self,
        service: &str,
        environment: &str,
        id: Uuid,
    ) -> Result<Taken, EngineError> {
        Ok(self
            .active_lock
            .take(&scope(service, environment), id)
            .await?)
    }

    /// The rollout holding the active lock of a service and environment, if it runs.
    pub(crate) async fn active(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Option<Rollout>, EngineError> {
        Ok(self
            .active_lock
            .active(&scope(service, environment))
            .await?)
    }

    /// Lets go of the active-rollout lock if `r` holds it.
    pub(crate) async fn release_active(&self, r: &Rollout) -> Result<(), EngineError> {
        Ok(self
            .active_lock
            .release(&scope(&r.service, &r.environment), r.id)
            .await?)
    }

    /// The waker of a service in an environment (see [`Deployer::hear`]).
    pub(crate) fn waker(&self, service: &str, environment: &str) -> Arc<tokio::sync::Notify> {
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((service.to_owned(), environment.to_owned()))
            .or_default()
            .clone()
    }

    /// Publishes `rollout.<what>` with the rollout as data.
    pub(crate) async fn announce(&self, what: RolloutEvent, r: &Rollout) {
        let flow = FlowContext {
            id: r.id.to_string(),
            correlationid: r.correlationid.clone().unwrap_or_else(|| r.id.to_string()),
            traceparent: None,
        };
        let event = Envelope::builder(self.source.clone(), r.clone())
            .subject(r.service.clone())
            .caused_by(&flow)
            .build();
        // Retried for about half a minute (a stream electing a new leader after a node
        // is lost refuses publishes for a while): the planner waits for this event, and
        // the envelope id as `Nats-Msg-Id` keeps a retried event stored once.
        const ATTEMPTS: usize = 10;
        for attempt in 0..ATTEMPTS {
            let Err(e) = self
                .events
                .publish(RolloutEvent::ENTITY, what.as_str(), &event)
                .await
            else {
                return;
            };
            if attempt + 1 == ATTEMPTS {
                tracing::error!(rollout = %r.id, what = what.as_str(), error = %e, "cannot publish rollout event; giving up");
                return;
            }
            tracing::warn!(rollout = %r.id, what = what.as_str(), error = %e, "cannot publish rollout event; retrying");
            let delay = toronto_runtime::connect::exponential_backoff(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(4),
                attempt,
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.crash.cancelled() => return,
            }
        }
    }
}
