//! The simulated cluster: a [`Target`](crate::target::Target) with pods per version, a
//! traffic split and injectable faults per version (error rate, added latency, crash
//! loop).
//!
//! **It is a simulation**: nothing real is deployed. It exists so that `toronto up`,
//! the demo and the end-to-end tests can run whole rollouts on one machine without a
//! Kubernetes API server.
//!
//! It is one world, outside the deployers, as a real cluster is. A deployer started
//! against the simulated target ([`SimCluster::shared`]) keeps the world in the
//! deployer's KV bucket (`<prefix>_rollouts`, one record per service and environment
//! under `sim.<service>.<environment>`), changed only by compare-and-set on the
//! record's revision: every replica of the deployer, and a deployer restarted, sees
//! the same pods, versions, traffic split and faults, and two replicas applying at
//! once lose no update. Pod start times are wall-clock milliseconds, so every
//! replica agrees on which pods are ready.
//!
//! One replica at a time (the holder of the `deployer-sim-traffic` lease in the same
//! bucket) generates the world's synthetic requests every tick, counts them in
//! Prometheus metrics (`toronto_sim_*` on its `/metrics`: summing the replicas counts
//! each request once) and publishes them on `toronto.metrics.<service>.<environment>`
//! as `metrics.batch` envelopes, so the monitor reads them as it reads real metrics.
//! Every replica hears those batches back and keeps the last two minutes of them, so
//! that each judges a canary by the same traffic ([`SimCluster::observed`]).
//!
//! [`SimCluster::new`] makes a world that lives in one process instead (for tests
//! that share it between in-process deployers).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use toronto_protocol::rollout::{SimFault, SimService, SimTamper, SimWorkload};
use toronto_runtime::work::Edit;

use crate::target::{Layout, Routing, TargetError, Track};

mod target;
mod traffic;
mod world;

pub use world::{SIM_PREFIX, TRAFFIC_LEASE, WorldError};

/// How the simulation behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSettings {
    /// Time between traffic ticks.
    pub tick: Duration,
    /// Synthetic requests per tick and service (split by the traffic weights).
    pub requests_per_tick: u32,
    /// Time a new pod takes to become ready.
    pub pod_start: Duration,
    /// Latency of a healthy request.
    pub base_latency: Duration,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            requests_per_tick: 200,
            pod_start: Duration::from_millis(300),
            base_latency: Duration::from_millis(20),
        }
    }
}

/// The step keys a service record remembers (the newest).
const APPLIED_KEPT: usize = 256;

/// One pod: when it (last) started, in Unix milliseconds (one clock for every replica
/// of the world).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Pod {
    started_ms: i64,
}

/// One workload as the world keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SimWl {
    track: Track,
    version: String,
    image: String,
    replicas: u32,
    pods: Vec<Pod>,
    /// During a rolling update, the version whose pods keep serving (max unavailable
    /// 0) until the new pods are ready.
    retiring: Option<String>,
}

impl SimWl {
    /// The version serving this workload's traffic now, and its ready pods.
    fn serving<'a>(
        &'a self,
        faults: &BTreeMap<String, SimFault>,
        now_ms: i64,
        pod_start: Duration,
    ) -> (&'a str, u32) {
        let ready = ready_pods(self, faults.get(&self.version), now_ms, pod_start);
        match &self.retiring {
            Some(old) if ready < self.replicas => (old.as_str(), self.replicas),
            _ => (self.version.as_str(), ready),
        }
    }
}

/// One service in one environment: the record stored under
/// `sim.<service>.<environment>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SimSvc {
    workloads: BTreeMap<String, SimWl>,
    routing: Routing,
    faults: BTreeMap<String, SimFault>,
    last_step_key: Option<String>,
    /// It has served traffic (it gets traffic, and errors, from then on).
    served: bool,
    /// The step keys of its change-producing applies, oldest first (the newest
    /// [`APPLIED_KEPT`]).
    #[serde(default)]
    applied: VecDeque<String>,
}

impl SimSvc {
    fn new(routing: Routing) -> Self {
        Self {
            workloads: BTreeMap::new(),
            routing,
            faults: BTreeMap::new(),
            last_step_key: None,
            served: false,
            applied: VecDeque::new(),
        }
    }
}

/// One change-producing apply, as the simulated API server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedStep {
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The step that produced it (`<rollout id>:<step id>`).
    pub step_key: String,
}

/// What one track served in one tick.
#[derive(Debug, Clone)]
struct TickStats {
    at: Instant,
    /// The version that served these requests.
    version: String,
    requests: u64,
    errors: u64,
    latency_sum: f64,
}

/// A service record as this process last saw it, with its KV revision (0 in a
/// process-local world); `None` once deleted.
#[derive(Debug, Clone)]
struct Mirrored {
    revision: u64,
    svc: Option<SimSvc>,
}

type Key = (String, String);

#[derive(Debug, Default)]
struct State {
    /// The world (process-local), or the newest records seen of it (shared).
    services: BTreeMap<Key, Mirrored>,
    apply_calls: u64,
    history: BTreeMap<(String, String, String), VecDeque<TickStats>>,
}

impl State {
    fn live(&self) -> impl Iterator<Item = (&Key, &SimSvc)> {
        self.services
            .iter()
            .filter_map(|(k, m)| m.svc.as_ref().map(|s| (k, s)))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    environment: String,
    version: String,
    track: String,
}

#[derive(Debug, Clone)]
struct SimMetrics {
    requests: Family<RequestLabels, Counter>,
    errors: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    /// The label sets of versions the world ran at the last tick: what the families
    /// may hold (see `SimMetrics::forget_retired`).
    known: Arc<Mutex<HashSet<RequestLabels>>>,
}

impl Default for SimMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            }),
            known: Arc::default(),
        }
    }
}

/// The simulated cluster. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct SimCluster {
    state: Arc<Mutex<State>>,
    settings: SimSettings,
    metrics: SimMetrics,
    /// The shared world in KV; `None`: the world lives in this process.
    world: Option<world::Shared>,
    /// A process-local world: whether one of its holders generates traffic now.
    driving: Arc<AtomicBool>,
    /// Marks the traffic this handle (and its clones) publishes, so that it keeps
    /// what it generated at once and skips hearing it back.
    origin: Arc<str>,
}

const HISTORY: Duration = Duration::from_secs(120);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SimCluster {
    /// A new, empty simulated cluster that lives in this process: deployers given
    /// the same (cloned) cluster see the same "API server", as two replicas would.
    pub fn new(settings: SimSettings) -> Self {
        Self {
            state: Arc::default(),
            settings,
            metrics: SimMetrics::default(),
            world: None,
            driving: Arc::default(),
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }

    /// The shared simulated cluster whose world is kept in `kv` (the deployer's
    /// bucket) under `sim.<service>.<environment>`: every deployer opening the same
    /// bucket sees the same world. [`SimCluster::run`] starts its loops.
    pub fn shared(settings: SimSettings, kv: async_nats::jetstream::kv::Store) -> Self {
        Self {
            world: Some(world::Shared::new(kv)),
            ..Self::new(settings)
        }
    }

    /// Whether the world is kept in KV (shared by every deployer on the bucket).
    pub fn is_shared(&self) -> bool {
        self.world.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the simulation's request, error and latency metrics on `metrics`.
    pub fn register_metrics(&self, metrics: &toronto_runtime::Metrics) {
        metrics.register(
            "sim_http_requests",
            "Simulated cluster (a simulation): requests served per version",
            self.metrics.requests.clone(),
        );
        metrics.register(
            "sim_http_errors",
            "Simulated cluster (a simulation): failed requests per version",
            self.metrics.errors.clone(),
        );
        metrics.register(
            "sim_http_request_duration_seconds",
            "Simulated cluster (a simulation): request latency per version",
            self.metrics.latency.clone(),
        );
    }

    /// Sets the faults of one version (replacing earlier ones); a fault with no effect
    /// clears them.
    pub async fn set_fault(&self, fault: SimFault) -> Result<SimService, TargetError> {
        if !(0.0..=1.0).contains(&fault.error_rate) {
            return Err(refused("error_rate must be between 0 and 1"));
        }
        let svc = self
            .edit(&fault.service, &fault.environment, None, |svc| {
                if fault.error_rate == 0.0 && fault.latency_ms == 0 && !fault.crash_loop {
                    svc.faults.remove(&fault.version);
                } else {
                    svc.faults.insert(fault.version.clone(), fault.clone());
                }
                Ok(Edit::Save(svc.clone()))
            })
            .await?
            .ok_or_else(|| not_deployed(&fault.service, &fault.environment))?;
        Ok(view(&fault.service, &fault.environment, &svc))
    }

    /// Changes a live workload behind the deployer's back (as `kubectl edit` would).
    pub async fn tamper(&self, change: SimTamper) -> Result<SimService, TargetError> {
        let name = change
            .workload
            .clone()
            .unwrap_or_else(|| change.service.clone());
        let now = now_ms();
        let svc = self
            .edit(&change.service, &change.environment, None, |svc| {
                let wl = svc
                    .workloads
                    .get_mut(&name)
                    .ok_or_else(|| refused(format!("no workload {name}")))?;
                if let Some(image) = &change.image {
                    wl.image = image.clone();
                    wl.pods = (0..wl.replicas).map(|_| Pod { started_ms: now }).collect();
                }
                if let Some(replicas) = change.replicas {
                    wl.replicas = replicas;
                    wl.pods.resize(replicas as usize, Pod { started_ms: now });
                }
                Ok(Edit::Save(svc.clone()))
            })
            .await?
            .ok_or_else(|| not_deployed(&change.service, &change.environment))?;
        Ok(view(&change.service, &change.environment, &svc))
    }

    /// The live view of one service (read from the world itself, not a cache).
    pub async fn get(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Option<SimService>, TargetError> {
        Ok(self
            .load(service, environment)
            .await?
            .map(|svc| view(service, environment, &svc)))
    }

    /// Every change-producing apply this process has seen in the world (each
    /// service's newest 256), by service and environment, oldest first within each
    /// (re-applying the step that produced the live state changes nothing and is not
    /// listed).
    pub fn applied_steps(&self) -> Vec<AppliedStep> {
        let state = self.lock();
        state
            .live()
            .flat_map(|((service, environment), svc)| {
                svc.applied.iter().map(|step_key| AppliedStep {
                    service: service.clone(),
                    environment: environment.clone(),
                    step_key: step_key.clone(),
                })
            })
            .collect()
    }

    /// How many times `apply` was called through this handle, changes or not.
    pub fn apply_calls(&self) -> u64 {
        self.lock().apply_calls
    }

    /// Requests, errors and mean latency (seconds) that one track of a service served
    /// over the last `window`, of `version` only when it is given; `None` without
    /// traffic.
    pub fn observed(
        &self,
        service: &str,
        environment: &str,
        track: Track,
        version: Option<&str>,
        window: Duration,
    ) -> Option<(u64, u64, f64)> {
        let state = self.lock();
        let ticks = state.history.get(&(
            service.to_owned(),
            environment.to_owned(),
            track.as_str().to_owned(),
        ))?;
        let since = Instant::now().checked_sub(window)?;
        let (mut requests, mut errors, mut latency) = (0, 0, 0.0);
        let served = |t: &&TickStats| version.is_none_or(|v| t.version == v);
        for t in ticks.iter().filter(|t| t.at >= since).filter(served) {
            requests += t.requests;
            errors += t.errors;
            latency += t.latency_sum;
        }
        (requests > 0).then(|| (requests, errors, latency / requests as f64))
    }
}

fn ready_pods(wl: &SimWl, fault: Option<&SimFault>, now_ms: i64, pod_start: Duration) -> u32 {
    if fault.is_some_and(|f| f.crash_loop) {
        return 0;
    }
    let start = i64::try_from(pod_start.as_millis()).unwrap_or(i64::MAX);
    wl.pods
        .iter()
        .filter(|p| now_ms.saturating_sub(p.started_ms) >= start)
        .count() as u32
}

fn view(service: &str, environment: &str, svc: &SimSvc) -> SimService {
    let now = now_ms();
    let workloads = svc
        .workloads
        .iter()
        .map(|(name, wl)| {
            let fault = svc.faults.get(&wl.version);
            let crashing = if fault.is_some_and(|f| f.crash_loop) {
                wl.replicas
            } else {
                0
            };
            (
                name.clone(),
                SimWorkload {
                    version: wl.version.clone(),
                    image: wl.image.clone(),
                    replicas: wl.replicas,
                    ready: ready_pods(wl, fault, now, Duration::ZERO).min(wl.replicas),
                    crashing,
                },
            )
        })
        .collect();
    let layout = Layout {
        service: service.to_owned(),
        environment: environment.to_owned(),
        workloads: svc
            .workloads
            .iter()
            .map(|(name, w)| crate::target::Workload {
                name: name.clone(),
                track: w.track,
                version: w.version.clone(),
                image: w.image.clone(),
                replicas: w.replicas,
            })
            .collect(),
        routing: svc.routing.clone(),
        step_key: String::new(),
        progress_deadline_seconds: 0,
        pod_template: None,
    };
    SimService {
        simulated: true,
        service: service.to_owned(),
        environment: environment.to_owned(),
        workloads,
        traffic: layout.traffic().into_iter().collect(),
        faults: svc.faults.clone(),
    }
}

fn refused(message: impl Into<String>) -> TargetError {
    TargetError::Refused {
        target: "simulated cluster",
        message: message.into(),
    }
}

fn not_deployed(service: &str, environment: &str) -> TargetError {
    refused(format!(
        "{service} is not deployed in {environment} on the simulated cluster"
    ))
}
