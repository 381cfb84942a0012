//! The deployer: rolling, blue-green and canary rollouts on Kubernetes and on a
//! simulated cluster, with analysis, abort, rollback and drift detection.
//!
//! This crate is the service as a library (`run(config, shutdown)`); its binary is a
//! thin `main`, and `toronto up` starts the same function in-process.
//!
//! - [`target`]: the [`target::Target`] trait rollouts land on; [`sim`] is the
//!   simulated cluster (a simulation, labelled so everywhere).
//! - [`engine`]: the rollout state machine, durable in KV, advanced through a work
//!   queue so that a rollout survives the loss of the deployer running it.
//! - [`commands`]: the `toronto.devops.v1.deployer.*` commands.
#![forbid(unsafe_code)]

pub mod chaos;
pub mod commands;
pub mod engine;
pub mod kube;
pub mod promql;
pub mod settings;
pub mod sim;
pub mod target;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use toronto_protocol::ServiceKind;
use toronto_protocol::rollout::{
    AdvanceRollout, DriftCheck, RolloutCommand, RolloutList, RolloutRef, SimFault, SimTamper,
};
use toronto_protocol::tasks::ExecuteRequest;
use toronto_protocol::workload::WorkloadPut;
use toronto_runtime::config::ConfigError;
use toronto_runtime::jetstream::Delivery;
use toronto_runtime::supervise::LoopSpec;
use toronto_runtime::work::WorkQueue;
use toronto_runtime::{Request, ServiceRuntime};

pub use commands::Verb;
pub use engine::{Deployer, Release};
pub use settings::{AnalysisMode, Settings, TargetKind};
pub use sim::{SimCluster, SimSettings};
pub use target::Target;
pub use toronto_runtime::{Config, RuntimeError};

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::Deployer;

/// KV buckets this service owns (`<prefix>_<name>`), with the history each keeps.
pub const BUCKETS: &[(&str, i64)] = &[("rollouts", 16)];

/// Durable name of the runner's consumer, shared by every deployer replica.
pub const RUNNER_CONSUMER: &str = "toronto-deployer-runner";

/// Variables of the Kubernetes target (listed with the deployer's own).
pub fn kube_vars() -> &'static [toronto_runtime::config::Var<kube::KubeSettings>] {
    kube::KUBE_VARS
}

/// A running deployer: its runtime and its engine (for tests and the all-in-one
/// runner, which may share one simulated cluster between deployers).
#[derive(Debug)]
pub struct Started {
    /// The service runtime; await [`ServiceRuntime::run_until_shutdown`].
    pub runtime: ServiceRuntime,
    /// The engine.
    pub deployer: Deployer,
}

impl Started {
    /// Stops this deployer's engine as a crash would: its rollouts are left where they
    /// are, unacknowledged and unsaved, for another deployer to take over once their
    /// lease runs out (its endpoints keep answering until shutdown). For tests and
    /// chaos drills.
    pub fn crash(&self) {
        self.deployer.crash.cancel();
    }
}

fn invalid(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Config(ConfigError::Invalid(e.to_string()))
}

/// Starts the service with settings from `TORONTO_DEPLOYER_*` variables.
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let settings = Settings::from_env().map_err(invalid)?;
    Ok(start_with(config, settings, None, shutdown).await?.runtime)
}

/// Starts the service with these settings. With `sim`, rollouts land on that
/// simulated cluster (shared with whoever else holds it); without, the settings'
/// target is created (the simulated one keeps its world in the deployer's bucket,
/// shared by every deployer on it).
pub async fn start_with(
    config: Config,
    settings: Settings,
    sim: Option<SimCluster>,
    shutdown: CancellationToken,
) -> Result<Started, RuntimeError> {
    // Boxed: the caller's future stays small (tests poll it on small stacks).
    Box::pin(start_inner(config, settings, sim, None, shutdown)).await
}

/// Starts the service with rollouts landing on `target` (for instance a
/// [`kube::KubeTarget`] on a client of the caller's choosing).
pub async fn start_on(
    config: Config,
    settings: Settings,
    target: Arc<dyn Target>,
    shutdown: CancellationToken,
) -> Result<Started, RuntimeError> {
    Box::pin(start_inner(config, settings, None, Some(target), shutdown)).await
}

async fn start_inner(
    config: Config,
    settings: Settings,
    sim: Option<SimCluster>,
    given: Option<Arc<dyn Target>>,
    shutdown: CancellationToken,
) -> Result<Started, RuntimeError> {
    let rt = ServiceRuntime::start(KIND, env!("CARGO_PKG_VERSION"), config, shutdown).await?;
    let rollouts = rt.kv(BUCKETS[0].0, BUCKETS[0].1).await?;
    let (target, sim): (Arc<dyn Target>, Option<SimCluster>) = match (given, sim, settings.target) {
        (_, Some(sim), _) => (Arc::new(sim.clone()), Some(sim)),
        (Some(target), None, _) => (target, None),
        (None, None, TargetKind::Simulated) => {
            let sim = SimCluster::shared(settings.sim.clone(), rollouts.clone());
            (Arc::new(sim.clone()), Some(sim))
        }
        (None, None, TargetKind::Kubernetes) => {
            let kube_settings = kube::KubeSettings::from_env().map_err(invalid)?;
            let target = kube::KubeTarget::infer(kube_settings)
                .await
                .map_err(invalid)?;
            (Arc::new(target), None)
        }
    };
    let records = engine::rollout_records(rollouts.clone());
    let runs = WorkQueue::new(
        rt.js.clone(),
        rt.subjects.rollout_runs_stream(),
        rt.subjects.rollout_runs(),
        RUNNER_CONSUMER,
        "Deployer work: rollouts to advance (work queue)",
    );
    let deployer = Deployer {
        client: rt.client.clone(),
        subjects: rt.subjects.clone(),
        source: rt.source(),
        events: rt.events.clone(),
        release_records: engine::release_records(rollouts.clone()),
        workload_records: engine::workload_records(rollouts.clone()),
        active_lock: engine::active_lock(records.clone()),
        index: rt.key_index("rollout index", rollouts.clone(), "rollout"),
        records,
        runs: runs.clone(),
        rollouts,
        target,
        sim: sim.clone(),
        settings: settings.clone(),
        instance: rt.host.id().to_owned(),
        crash: CancellationToken::new(),
        shutdown: rt.shutdown_token(),
        heard: Arc::default(),
        applied_here: Arc::default(),
        last_analysis: Arc::default(),
        last_outcome: Arc::default(),
        wakers: Arc::default(),
    };
    runs.ensure(rt.config.jetstream.replicas).await?;
    if let Some(sim) = &sim {
        sim.run(&rt);
    }

    register(&rt, &deployer).await?;
    deployer.run_chaos(&rt);

    let (listener, token) = (deployer.clone(), rt.shutdown_token());
    rt.spawn_background("alert and analysis listener", move || {
        listener.clone().listen(token.clone())
    });
    if !settings.drift_interval.is_zero() {
        let checker = deployer.clone();
        let token = rt.shutdown_token();
        let every = settings.drift_interval;
        rt.spawn_background("drift checker", move || {
            let (checker, token) = (checker.clone(), token.clone());
            async move {
                let mut interval = tokio::time::interval(every);
                interval.tick().await;
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                        _ = interval.tick() => {}
                    }
                    if let Err(e) = checker.drift_check(&DriftCheck::default()).await {
                        tracing::warn!(error = %e.message, "drift check failed");
                    }
                }
            }
        });
    }
    let advancer = deployer.clone();
    // A crash stops the consumer too, for good.
    let token = CancellationToken::new();
    {
        let (a, b, t) = (rt.shutdown_token(), deployer.crash.clone(), token.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = a.cancelled() => {}
                _ = b.cancelled() => {}
            }
            t.cancel();
        });
    }
    let (spec, dead_letters, metrics) = (
        runs.consumer(settings.lease, 50, ACTIVE_ROLLOUTS),
        rt.dead_letters.clone(),
        rt.metrics.clone(),
    );
    rt.spawn_loop(
        LoopSpec::new("rollout runner").until(deployer.crash.clone()),
        move || {
            let advancer = advancer.clone();
            runs.clone().run(
                spec.clone(),
                dead_letters.clone(),
                metrics.clone(),
                token.clone(),
                move |work: AdvanceRollout, delivery: Delivery| {
                    let deployer = advancer.clone();
                    async move { deployer.advance(work.rollout_id, &delivery).await }
                },
            )
        },
    );
    Ok(Started {
        runtime: rt,
        deployer,
    })
}

/// How many rollouts one deployer advances at once. A rollout holds its slot through its
/// step pauses (a task waiting on a timer), so this bounds the rollouts in flight per
/// replica, not the CPU.
const ACTIVE_ROLLOUTS: usize = 256;

async fn register(rt: &ServiceRuntime, deployer: &Deployer) -> Result<(), RuntimeError> {
    let d = deployer.clone();
    rt.endpoint("rollout.start", move |req: Request<ExecuteRequest>| {
        let d = d.clone();
        async move { d.start_rollout(req).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("rollback", move |req: Request<ExecuteRequest>| {
        let d = d.clone();
        async move { d.rollback(req).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("scale", move |req: Request<ExecuteRequest>| {
        let d = d.clone();
        async move { d.scale(req).await }
    })
    .await?;
    for (verb, teardown) in [
        ("environment.provision", false),
        ("environment.teardown", true),
    ] {
        let d = deployer.clone();
        rt.endpoint(verb, move |req: Request<ExecuteRequest>| {
            let d = d.clone();
            async move { d.environment(req, teardown).await }
        })
        .await?;
    }
    let d = deployer.clone();
    rt.endpoint("rollout.get", move |req: Request<RolloutRef>| {
        let d = d.clone();
        async move { d.get(req.data()).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("rollout.list", move |req: Request<RolloutList>| {
        let d = d.clone();
        async move { d.list(req.data()).await }
    })
    .await?;
    for (name, verb) in [
        ("rollout.promote", Verb::Promote),
        ("rollout.abort", Verb::Abort),
        ("rollout.pause", Verb::Pause),
        ("rollout.resume", Verb::Resume),
    ] {
        let d = deployer.clone();
        rt.endpoint(name, move |req: Request<RolloutCommand>| {
            let d = d.clone();
            async move { d.command(req.data(), verb).await }
        })
        .await?;
    }
    let d = deployer.clone();
    rt.endpoint("chaos.run", move |req: Request<ExecuteRequest>| {
        let d = d.clone();
        async move { d.chaos_run(req).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("chaos.get", move |req: Request<RolloutRef>| {
        let d = d.clone();
        async move { d.chaos_get(req.data()).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("workload.put", move |req: Request<WorkloadPut>| {
        let d = d.clone();
        async move { d.workload_put(req).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("drift.check", move |req: Request<DriftCheck>| {
        let d = d.clone();
        async move { d.drift_check(req.data()).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("sim.fault", move |req: Request<SimFault>| {
        let d = d.clone();
        async move { d.sim_fault(req.envelope.data).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("sim.tamper", move |req: Request<SimTamper>| {
        let d = d.clone();
        async move { d.sim_tamper(req.envelope.data).await }
    })
    .await?;
    let d = deployer.clone();
    rt.endpoint("sim.get", move |req: Request<RolloutRef>| {
        let d = d.clone();
        async move { d.sim_get(req.data()).await }
    })
    .await?;
    Ok(())
}

/// Runs the service until `shutdown` is cancelled, then shuts down gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    start(config, shutdown).await?.run_until_shutdown().await
}
