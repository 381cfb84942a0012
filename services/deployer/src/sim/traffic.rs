//! The world's synthetic traffic: generated every tick by one holder of the world
//! (the lease holder of a shared world), published on the bus, and heard back by
//! every replica as the history canary judgements and chaos abort conditions read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use toronto_protocol::analysis::{MetricBatch, MetricSample};
use toronto_protocol::{Encoding, Envelope, Subjects};
use toronto_runtime::ServiceRuntime;
use toronto_runtime::lease::{Candidate, LeaseWatch};
use toronto_runtime::work::Edit;

use super::world::{TRAFFIC_LEASE, WorldError};
use super::{HISTORY, RequestLabels, SimCluster, SimSvc, TickStats, now_ms, ready_pods};
use crate::target::{Routing, Track};

/// The `source` of the batches the simulation publishes.
const SOURCE: &str = "simulated-cluster";

/// How the batches are encoded: MessagePack, less to write and to read than JSON for
/// a batch of numbers (the monitor reads either).
const ENCODING: Encoding = Encoding::MessagePack;

/// The header naming the handle that generated a batch (see [`SimCluster`]'s
/// `origin`): the generator keeps its own traffic without hearing it back.
const ORIGIN_HEADER: &str = "Toronto-Sim-Origin";

/// What one tick generated, and what it changed in a shared world.
#[derive(Debug, Default)]
struct Tick {
    batches: Vec<MetricBatch>,
    /// Services that served traffic for the first time.
    served: Vec<(String, String)>,
    /// Rolling updates whose new pods are all ready: (service, environment, workload).
    settled: Vec<(String, String, String)>,
}

/// Takes the process-local world's traffic while held, gives it back when dropped.
struct Driving(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Driving {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl SimCluster {
    /// Starts the world's loops on `rt` (each supervised): for a shared world, the
    /// watch that keeps this replica's view current, the listener that hears the
    /// world's traffic and the candidacy for the traffic lease; and the traffic
    /// generator, which ticks only while this replica holds the lease (for a
    /// process-local world: while no other holder of it generates).
    pub fn run(&self, rt: &ServiceRuntime) {
        self.register_metrics(&rt.metrics);
        let lease = match &self.world {
            None => None,
            Some(world) => {
                let (sim, token) = (self.clone(), rt.shutdown_token());
                rt.spawn_background("simulated world follower", move || {
                    sim.clone().follow_world(token.clone())
                });
                let (sim, client, subject, token) = (
                    self.clone(),
                    rt.client.clone(),
                    rt.subjects.metrics_all(),
                    rt.shutdown_token(),
                );
                rt.spawn_background("simulated traffic listener", move || {
                    sim.clone()
                        .hear_traffic(client.clone(), subject.clone(), token.clone())
                });
                let (candidate, watch) = Candidate::new(
                    world.records.kv().clone(),
                    TRAFFIC_LEASE,
                    rt.host.id(),
                    rt.config.lease.clone(),
                );
                let candidate = Arc::new(tokio::sync::Mutex::new(candidate));
                let token = rt.shutdown_token();
                rt.spawn_background("simulated traffic lease", move || {
                    let (candidate, token) = (candidate.clone(), token.clone());
                    async move { candidate.lock_owned().await.run(token).await }
                });
                Some(watch)
            }
        };
        let (sim, client, subjects, source, token) = (
            self.clone(),
            rt.client.clone(),
            rt.subjects.clone(),
            rt.source(),
            rt.shutdown_token(),
        );
        rt.spawn_background("simulated cluster traffic", move || {
            sim.clone().run_traffic(
                client.clone(),
                subjects.clone(),
                source.clone(),
                lease.clone(),
                token.clone(),
            )
        });
    }

    /// Generates traffic every tick and publishes it on the bus until `shutdown`,
    /// while this handle drives the world: it holds `lease` (a shared world), or no
    /// other handle of a process-local world drives it.
    pub async fn run_traffic(
        self,
        client: async_nats::Client,
        subjects: Subjects,
        source: String,
        lease: Option<LeaseWatch>,
        shutdown: CancellationToken,
    ) -> Result<(), std::convert::Infallible> {
        let mut interval = tokio::time::interval(self.settings.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut driving: Option<Driving> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = interval.tick() => {}
            }
            let mine = match &lease {
                Some(lease) => lease.is_owner(),
                None => {
                    if driving.is_none()
                        && self
                            .driving
                            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        driving = Some(Driving(self.driving.clone()));
                    }
                    driving.is_some()
                }
            };
            if !mine {
                continue;
            }
            // Generated and encoded on the blocking pool: a tick of a hundred services
            // is thousands of random draws and a hundred encodings, which would
            // otherwise hold one of the async workers that serve the deployer's
            // requests and rollouts for as long.
            let (sim, subjects, source) = (self.clone(), subjects.clone(), source.clone());
            let generated =
                tokio::task::spawn_blocking(move || sim.tick_encoded(&subjects, &source)).await;
            let (tick, messages) = match generated {
                Ok(generated) => generated,
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Cancelled: the runtime is shutting down.
                    Err(_) => return Ok(()),
                },
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", ENCODING.content_type());
            headers.insert(ORIGIN_HEADER, &*self.origin);
            for (subject, bytes) in messages {
                if let Err(e) = client
                    .publish_with_headers(subject, headers.clone(), bytes.into())
                    .await
                {
                    tracing::debug!(error = %e, "cannot publish simulated metrics");
                }
            }
            self.settle(tick).await;
        }
    }

    /// Stores what a tick changed in a shared world (first traffic, finished rolling
    /// updates); a process-local world changed them in the tick.
    async fn settle(&self, tick: Tick) {
        let pod_start = self.settings.pod_start;
        for (service, environment) in tick.served {
            let r = self
                .edit(&service, &environment, None, |svc| {
                    Ok(if svc.served {
                        Edit::Keep(())
                    } else {
                        svc.served = true;
                        Edit::Save(())
                    })
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "cannot record simulated traffic");
            }
        }
        for (service, environment, name) in tick.settled {
            let r = self
                .edit(&service, &environment, None, |svc| {
                    let faults = svc.faults.clone();
                    let Some(wl) = svc.workloads.get_mut(&name) else {
                        return Ok(Edit::Keep(()));
                    };
                    let ready = ready_pods(wl, faults.get(&wl.version), now_ms(), pod_start);
                    Ok(if wl.retiring.is_some() && ready >= wl.replicas {
                        wl.retiring = None;
                        Edit::Save(())
                    } else {
                        Edit::Keep(())
                    })
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "cannot finish a simulated rolling update");
            }
        }
    }

    /// Hears the shared world's published traffic and keeps it as this replica's
    /// history, until `shutdown`.
    pub(super) async fn hear_traffic(
        self,
        client: async_nats::Client,
        subject: String,
        shutdown: CancellationToken,
    ) -> Result<(), WorldError> {
        let mut sub = client
            .subscribe(subject)
            .await
            .map_err(WorldError::Subscribe)?;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = sub.next() => m.ok_or(WorldError::Ended("simulated traffic subscription"))?,
            };
            // What this handle generated is in its history already.
            let own = message
                .headers
                .as_ref()
                .and_then(|h| h.get(ORIGIN_HEADER))
                .is_some_and(|o| o.as_str() == &*self.origin);
            if own {
                continue;
            }
            let Ok(envelope) = toronto_runtime::service::decode_message::<MetricBatch>(
                message.headers.as_ref(),
                &message.payload,
            ) else {
                continue;
            };
            if envelope.data.source == SOURCE {
                self.hear(&envelope.data);
            }
        }
    }

    /// Adds one published batch to the history, per track and version.
    fn hear(&self, batch: &MetricBatch) {
        let now = Instant::now();
        let mut per_track: BTreeMap<(String, String), TickStats> = BTreeMap::new();
        let key = |s: &toronto_protocol::analysis::MetricSample| {
            let version = s.labels.get("version").cloned().unwrap_or_default();
            Some((s.labels.get("track")?.clone(), version))
        };
        for s in &batch.samples {
            let Some((track, version)) = key(s) else {
                continue;
            };
            let stats = per_track
                .entry((track, version.clone()))
                .or_insert(TickStats {
                    at: now,
                    version,
                    requests: 0,
                    errors: 0,
                    latency_sum: 0.0,
                });
            match s.name.as_str() {
                "http_requests" => stats.requests += s.value.max(0.0) as u64,
                "http_errors" => stats.errors += s.value.max(0.0) as u64,
                _ => {}
            }
        }
        for s in &batch.samples {
            if s.name == "http_latency_seconds"
                && let Some(stats) = key(s).and_then(|k| per_track.get_mut(&k))
            {
                stats.latency_sum += s.value * stats.requests as f64;
            }
        }
        let mut state = self.lock();
        for ((track, _), stats) in per_track {
            push_history(
                &mut state.history,
                (batch.service.clone(), batch.environment.clone(), track),
                stats,
            );
        }
    }

    /// One tick ([`SimCluster::tick`]) with its batches encoded: what is left of the
    /// tick, and each batch's subject and bytes.
    fn tick_encoded(&self, subjects: &Subjects, source: &str) -> (Tick, Vec<(String, Vec<u8>)>) {
        let mut tick = self.tick();
        let messages = std::mem::take(&mut tick.batches)
            .into_iter()
            .filter_map(|batch| {
                let subject = subjects.metrics(&batch.service, &batch.environment);
                let envelope = Envelope::builder(source.to_owned(), batch).build();
                match toronto_protocol::encode(&envelope, ENCODING) {
                    Ok(bytes) => Some((subject, bytes)),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot encode simulated metrics");
                        None
                    }
                }
            })
            .collect();
        (tick, messages)
    }

    /// One tick of synthetic traffic: what every service served, as metric batches,
    /// kept in this handle's history at once (other replicas of a shared world hear
    /// it from the bus). A process-local world records its changes at once; a shared
    /// world stores them in [`SimCluster::settle`].
    fn tick(&self) -> Tick {
        let now = Instant::now();
        let now_ms = now_ms();
        let timestamp = Utc::now();
        let pod_start = self.settings.pod_start;
        let per_tick = self.settings.requests_per_tick;
        let base = self.settings.base_latency.as_secs_f64();
        let local = self.world.is_none();
        // A fast generator, seeded from the thread's: twenty thousand draws a tick
        // for a hundred services.
        let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
        let mut state = self.lock();
        let mut tick = Tick::default();
        let mut history = Vec::new();
        for ((service, environment), svc) in state.live() {
            let mut samples = Vec::new();
            let ready = |name: &str| {
                svc.workloads
                    .get(name)
                    .is_some_and(|w| w.serving(&svc.faults, now_ms, pod_start).1 > 0)
            };
            let routed = shares(svc, per_tick, &ready);
            if !svc.served && !routed.iter().any(|(n, _)| ready(n)) {
                // Nobody calls a service that has never come up.
                continue;
            }
            if !svc.served {
                tick.served.push((service.clone(), environment.clone()));
            }
            for (name, share) in routed {
                let Some(wl) = svc.workloads.get(&name) else {
                    continue;
                };
                let (version, ready) = wl.serving(&svc.faults, now_ms, pod_start);
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
                        version: labels.version.clone(),
                        requests,
                        errors,
                        latency_sum,
                    },
                ));
                // The batch names the service and environment; each sample only what
                // tells the series apart (the monitor adds the batch's two).
                let sample_labels: BTreeMap<String, String> = [
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
                tick.batches.push(MetricBatch {
                    service: service.clone(),
                    environment: environment.clone(),
                    source: SOURCE.into(),
                    samples,
                });
            }
        }
        // Rolling updates finish once the new pods are ready.
        for ((service, environment), svc) in state.live() {
            for (name, wl) in &svc.workloads {
                if wl.retiring.is_some()
                    && ready_pods(wl, svc.faults.get(&wl.version), now_ms, pod_start) >= wl.replicas
                {
                    tick.settled
                        .push((service.clone(), environment.clone(), name.clone()));
                }
            }
        }
        if local {
            for key in std::mem::take(&mut tick.served) {
                if let Some(svc) = svc_mut(&mut state.services, &key) {
                    svc.served = true;
                }
            }
            for (service, environment, name) in std::mem::take(&mut tick.settled) {
                if let Some(wl) = svc_mut(&mut state.services, &(service, environment))
                    .and_then(|svc| svc.workloads.get_mut(&name))
                {
                    wl.retiring = None;
                }
            }
        }
        for (key, stats) in history {
            push_history(&mut state.history, key, stats);
        }
        self.metrics.forget_retired(state.live());
        tick
    }
}

impl super::SimMetrics {
    /// Removes the request, error and latency series of every version that no
    /// workload of `live` runs any more (retired by a rolling update, or its workload
    /// or service removed), as a real version's process would have restarted: else
    /// the families keep one label set per version ever deployed. In steady state it
    /// allocates nothing but one set of borrowed labels.
    fn forget_retired<'a>(&self, live: impl Iterator<Item = (&'a super::Key, &'a SimSvc)>) {
        let mut running: std::collections::HashSet<(&str, &str, &str, &str)> =
            std::collections::HashSet::new();
        for ((service, environment), svc) in live {
            for wl in svc.workloads.values() {
                for version in std::iter::once(&wl.version).chain(wl.retiring.as_ref()) {
                    running.insert((service, environment, version, wl.track.as_str()));
                }
            }
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|l| {
            let key = (
                l.service.as_str(),
                l.environment.as_str(),
                l.version.as_str(),
                l.track.as_str(),
            );
            let keep = running.contains(&key);
            if !keep {
                self.requests.remove(l);
                self.errors.remove(l);
                self.latency.remove(l);
            }
            keep
        });
        // `known` is a subset of `running` now: equal sizes, nothing new.
        if known.len() < running.len() {
            for (service, environment, version, track) in running {
                known.insert(RequestLabels {
                    service: service.to_owned(),
                    environment: environment.to_owned(),
                    version: version.to_owned(),
                    track: track.to_owned(),
                });
            }
        }
    }
}

fn svc_mut<'a>(
    services: &'a mut BTreeMap<super::Key, super::Mirrored>,
    key: &super::Key,
) -> Option<&'a mut SimSvc> {
    services.get_mut(key).and_then(|m| m.svc.as_mut())
}

fn push_history(
    history: &mut BTreeMap<(String, String, String), std::collections::VecDeque<TickStats>>,
    key: (String, String, String),
    stats: TickStats,
) {
    let now = stats.at;
    let ticks = history.entry(key).or_default();
    ticks.push_back(stats);
    while ticks
        .front()
        .is_some_and(|t| now.duration_since(t.at) > HISTORY)
    {
        ticks.pop_front();
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

#[cfg(test)]
#[path = "traffic_tests.rs"]
mod tests;
