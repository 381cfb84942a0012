//! The simulated cluster: an in-process [`Target`] with pods per version, a traffic
//! split and injectable faults per version (error rate, added latency, crash loop).
//!
//! **It is a simulation**: nothing real is deployed. It exists so that `toronto up`,
//! the demo and the end-to-end tests can run whole rollouts on one machine without a
//! Kubernetes API server. It generates synthetic requests every tick, counts them in
//! Prometheus metrics (`toronto_sim_*`, served on the deployer's `/metrics`) and
//! publishes them on `toronto.metrics.<service>.<environment>` as `metrics.batch`
//! envelopes, so the monitor reads them as it reads real metrics.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use toronto_protocol::analysis::{MetricBatch, MetricSample};
use toronto_protocol::rollout::{SimFault, SimService, SimTamper, SimWorkload};
use toronto_protocol::{Envelope, Subjects};

use crate::target::{Layout, Routing, TargetError, Track};

mod target;

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

#[derive(Debug, Clone)]
struct Pod {
    started: Instant,
}

#[derive(Debug, Clone)]
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
        now: Instant,
        pod_start: Duration,
    ) -> (&'a str, u32) {
        let ready = ready_pods(self, faults.get(&self.version), now, pod_start);
        match &self.retiring {
            Some(old) if ready < self.replicas => (old.as_str(), self.replicas),
            _ => (self.version.as_str(), ready),
        }
    }
}

#[derive(Debug, Clone)]
struct SimSvc {
    workloads: BTreeMap<String, SimWl>,
    routing: Routing,
    faults: BTreeMap<String, SimFault>,
    last_step_key: Option<String>,
    /// It has served traffic (it gets traffic, and errors, from then on).
    served: bool,
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
#[derive(Debug, Clone, Copy)]
struct TickStats {
    at: Instant,
    requests: u64,
    errors: u64,
    latency_sum: f64,
}

#[derive(Debug, Default)]
struct State {
    environments: BTreeSet<String>,
    services: BTreeMap<(String, String), SimSvc>,
    applied: Vec<AppliedStep>,
    apply_calls: u64,
    history: BTreeMap<(String, String, String), VecDeque<TickStats>>,
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
}

impl Default for SimMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            }),
        }
    }
}

/// The simulated cluster. Cheap to clone (shared state): two deployers given the same
/// cluster see the same "API server", as two replicas would.
#[derive(Debug, Clone)]
pub struct SimCluster {
    state: Arc<Mutex<State>>,
    settings: SimSettings,
    metrics: SimMetrics,
}

const HISTORY: Duration = Duration::from_secs(120);

impl SimCluster {
    /// A new, empty simulated cluster.
    pub fn new(settings: SimSettings) -> Self {
        Self {
            state: Arc::default(),
            settings,
            metrics: SimMetrics::default(),
        }
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
    pub fn set_fault(&self, fault: SimFault) -> Result<SimService, TargetError> {
        if !(0.0..=1.0).contains(&fault.error_rate) {
            return Err(refused("error_rate must be between 0 and 1"));
        }
        let mut state = self.lock();
        let key = (fault.service.clone(), fault.environment.clone());
        let svc = state.services.get_mut(&key).ok_or_else(|| {
            refused(format!(
                "{} is not deployed in {} on the simulated cluster",
                fault.service, fault.environment
            ))
        })?;
        if fault.error_rate == 0.0 && fault.latency_ms == 0 && !fault.crash_loop {
            svc.faults.remove(&fault.version);
        } else {
            svc.faults.insert(fault.version.clone(), fault.clone());
        }
        Ok(view(&fault.service, &fault.environment, svc))
    }

    /// Changes a live workload behind the deployer's back (as `kubectl edit` would).
    pub fn tamper(&self, change: SimTamper) -> Result<SimService, TargetError> {
        let mut state = self.lock();
        let key = (change.service.clone(), change.environment.clone());
        let svc = state.services.get_mut(&key).ok_or_else(|| {
            refused(format!(
                "{} is not deployed in {} on the simulated cluster",
                change.service, change.environment
            ))
        })?;
        let name = change
            .workload
            .clone()
            .unwrap_or_else(|| change.service.clone());
        let wl = svc
            .workloads
            .get_mut(&name)
            .ok_or_else(|| refused(format!("no workload {name}")))?;
        let now = Instant::now();
        if let Some(image) = change.image {
            wl.image = image;
            wl.pods = (0..wl.replicas).map(|_| Pod { started: now }).collect();
        }
        if let Some(replicas) = change.replicas {
            wl.replicas = replicas;
            wl.pods.resize(replicas as usize, Pod { started: now });
        }
        Ok(view(&change.service, &change.environment, svc))
    }

    /// The live view of one service.
    pub fn get(&self, service: &str, environment: &str) -> Option<SimService> {
        let state = self.lock();
        state
            .services
            .get(&(service.to_owned(), environment.to_owned()))
            .map(|svc| view(service, environment, svc))
    }

    /// Every change-producing apply so far, oldest first (re-applying the step that
    /// produced the live state changes nothing and is not listed).
    pub fn applied_steps(&self) -> Vec<AppliedStep> {
        self.lock().applied.clone()
    }

    /// How many times `apply` was called, changes or not.
    pub fn apply_calls(&self) -> u64 {
        self.lock().apply_calls
    }

    /// Requests, errors and mean latency (seconds) that one track of a service served
    /// over the last `window`; `None` without traffic.
    pub fn observed(
        &self,
        service: &str,
        environment: &str,
        track: Track,
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
        for t in ticks.iter().filter(|t| t.at >= since) {
            requests += t.requests;
            errors += t.errors;
            latency += t.latency_sum;
        }
        (requests > 0).then(|| (requests, errors, latency / requests as f64))
    }

    /// Generates traffic every tick and publishes it on the bus until `shutdown`.
    pub async fn run_traffic(
        self,
        client: async_nats::Client,
        subjects: Subjects,
        source: String,
        shutdown: CancellationToken,
    ) -> Result<(), std::convert::Infallible> {
        let mut interval = tokio::time::interval(self.settings.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = interval.tick() => {}
            }
            for batch in self.tick() {
                let subject = subjects.metrics(&batch.service, &batch.environment);
                let envelope = Envelope::builder(source.clone(), batch).build();
                let Ok(bytes) =
                    toronto_protocol::encode(&envelope, toronto_protocol::Encoding::Json)
                else {
                    continue;
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "Content-Type",
                    toronto_protocol::Encoding::Json.content_type(),
                );
                if let Err(e) = client
                    .publish_with_headers(subject, headers, bytes.into())
                    .await
                {
                    tracing::debug!(error = %e, "cannot publish simulated metrics");
                }
            }
        }
    }

    /// One tick of synthetic traffic: what every service served, as metric batches.
    pub fn tick(&self) -> Vec<MetricBatch> {
        let now = Instant::now();
        let timestamp = Utc::now();
        let pod_start = self.settings.pod_start;
        let per_tick = self.settings.requests_per_tick;
        let base = self.settings.base_latency.as_secs_f64();
        let mut rng = rand::rng();
        let mut state = self.lock();
        let mut batches = Vec::new();
        let mut history = Vec::new();
        let mut served = Vec::new();
        for ((service, environment), svc) in &state.services {
            let mut samples = Vec::new();
            let ready = |name: &str| {
                svc.workloads
                    .get(name)
                    .is_some_and(|w| w.serving(&svc.faults, now, pod_start).1 > 0)
            };
            let routed = shares(svc, per_tick, &ready);
            if !svc.served && !routed.iter().any(|(n, _)| ready(n)) {
                // Nobody calls a service that has never come up.
                continue;
            }
            served.push((service.clone(), environment.clone()));
            for (name, share) in routed {
                let Some(wl) = svc.workloads.get(&name) else {
                    continue;
                };
                let (version, ready) = wl.serving(&svc.faults, now, pod_start);
                let fault = svc.faults.get(version);
                let (mut errors, mut latency_sum) = (0u64, 0.0f64);
                let labels = RequestLabels {
                    service: service.clone(),
                    environment: environment.clone(),
                    version: version.to_owned(),
                    track: wl.track.as_str().to_owned(),
                };
                let histogram = self.metrics.latency.get_or_create(&labels);
                for _ in 0..share {
                    let failed = ready == 0
                        || fault.is_some_and(|f| rng.random_bool(f.error_rate.clamp(0.0, 1.0)));
                    let added = fault.map_or(0.0, |f| f.latency_ms as f64 / 1000.0);
                    let latency = base * rng.random_range(0.7..1.3) + added;
                    errors += u64::from(failed);
                    latency_sum += latency;
                    histogram.observe(latency);
                }
                drop(histogram);
                let requests = u64::from(share);
                self.metrics
                    .requests
                    .get_or_create(&labels)
                    .inc_by(requests);
                self.metrics.errors.get_or_create(&labels).inc_by(errors);
                history.push((
                    (service.clone(), environment.clone(), labels.track.clone()),
                    TickStats {
                        at: now,
                        requests,
                        errors,
                        latency_sum,
                    },
                ));
                let sample_labels: BTreeMap<String, String> = [
                    ("service".to_owned(), service.clone()),
                    ("environment".to_owned(), environment.clone()),
                    ("version".to_owned(), labels.version.clone()),
                    ("track".to_owned(), labels.track.clone()),
                ]
                .into();
                let mut sample = |name: &str, value: f64| {
                    samples.push(MetricSample {
                        name: name.to_owned(),
                        labels: sample_labels.clone(),
                        value,
                        timestamp,
                    });
                };
                sample("http_requests", requests as f64);
                sample("http_errors", errors as f64);
                if requests > 0 {
                    sample("http_error_ratio", errors as f64 / requests as f64);
                    sample("http_latency_seconds", latency_sum / requests as f64);
                }
            }
            if !samples.is_empty() {
                batches.push(MetricBatch {
                    service: service.clone(),
                    environment: environment.clone(),
                    source: "simulated-cluster".into(),
                    samples,
                });
            }
        }
        for key in served {
            if let Some(svc) = state.services.get_mut(&key) {
                svc.served = true;
            }
        }
        // Rolling updates finish once the new pods are ready.
        for svc in state.services.values_mut() {
            let faults = svc.faults.clone();
            for wl in svc.workloads.values_mut() {
                if wl.retiring.is_some()
                    && ready_pods(wl, faults.get(&wl.version), now, pod_start) >= wl.replicas
                {
                    wl.retiring = None;
                }
            }
        }
        for (key, stats) in history {
            let ticks = state.history.entry(key).or_default();
            ticks.push_back(stats);
            while ticks
                .front()
                .is_some_and(|t| now.duration_since(t.at) > HISTORY)
            {
                ticks.pop_front();
            }
        }
        batches
    }
}

/// Requests per workload this tick: users' traffic by the routing's weights (only
/// to workloads with ready pods, as a Service's endpoints are; all of it fails when
/// none is ready), and a trickle of smoke-test traffic to a blue-green preview.
fn shares(svc: &SimSvc, per_tick: u32, ready: &dyn Fn(&str) -> bool) -> Vec<(String, u32)> {
    let by_track = |t: Track| {
        svc.workloads
            .iter()
            .find(|(_, w)| w.track == t)
            .map(|(n, _)| n.clone())
    };
    let split = |weight: u8| (per_tick * u32::from(weight)).div_ceil(100);
    match &svc.routing {
        Routing::Rolling { .. } => svc
            .workloads
            .keys()
            .next()
            .map(|n| vec![(n.clone(), per_tick)])
            .unwrap_or_default(),
        Routing::BlueGreen { active, preview } => {
            let mut out: Vec<_> = by_track(*active)
                .map(|n| (n, per_tick))
                .into_iter()
                .collect();
            if let Some(p) = preview.and_then(by_track).filter(|p| ready(p)) {
                out.push((p, (per_tick / 10).max(1)));
            }
            out
        }
        Routing::Canary { canary_weight } => {
            let mut out = Vec::new();
            let canary_ready = by_track(Track::Canary).is_some_and(|n| ready(&n));
            let stable_ready = by_track(Track::Stable).is_some_and(|n| ready(&n));
            let weight = match (stable_ready, canary_ready) {
                (_, false) => 0,
                (false, true) => 100,
                (true, true) => *canary_weight,
            };
            if weight < 100
                && let Some(n) = by_track(Track::Stable)
            {
                out.push((n, split(100 - weight)));
            }
            if weight > 0
                && let Some(n) = by_track(Track::Canary)
            {
                out.push((n, split(weight)));
            }
            out
        }
    }
}

fn ready_pods(wl: &SimWl, fault: Option<&SimFault>, now: Instant, pod_start: Duration) -> u32 {
    if fault.is_some_and(|f| f.crash_loop) {
        return 0;
    }
    wl.pods
        .iter()
        .filter(|p| now.duration_since(p.started) >= pod_start)
        .count() as u32
}

fn view(service: &str, environment: &str, svc: &SimSvc) -> SimService {
    let now = Instant::now();
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
