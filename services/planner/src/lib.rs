//! The planner: task intake from peers and chat, plans with gates and policies.
//!
//! This crate is the service as a library (`run(config, shutdown)`); its binary is a
//! thin `main`, and `toronto up` starts the same function in-process.
//!
//! - [`intake`]: task intake through both doors — `toronto.devops.v1.planner.submit`
//!   (an immediate accept with the plan id, or every reason for a rejection) and the
//!   work queue `TORONTO_DEVOPS_TASKS` (deduplicated by `Nats-Msg-Id`; refused tasks
//!   go to the dead-letter stream with their reasons) — one plan per task, plans in
//!   KV, and the delegation adapter; `plan.get`, `plan.list`, `plan.cancel`.
//! - [`runner`]: plans run their steps (policy and error-budget gates, security and QA
//!   gates asked of peer agents, human approval with `plan.approve` and
//!   `plan.reject`, hand-over to the deployer) durably, one active plan per service
//!   and environment, on [`toronto_runtime::work`].
//! - [`pipeline`]: generated CI pipelines; [`dora`]: DORA metrics from the events.
#![forbid(unsafe_code)]

pub mod dora;
mod identity;
mod index;
pub mod intake;
mod listing;
mod notify;
pub mod pipeline;
pub mod runner;
pub mod settings;
pub mod trust;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{
    AdvancePlan, DoraQuery, PlanCancel, PlanDecision, PlanGet, PlanList,
};
use toronto_protocol::{Encoding, ErrorBody, ErrorCode, ServiceKind};
use toronto_runtime::jetstream::{ConsumerSpec, Delivery, Outcome, run_consumer};
use toronto_runtime::{Request, ServiceRuntime};

pub use intake::{IntakeError, Planner};
pub use settings::Settings;
pub use toronto_runtime::{Config, RuntimeError};

/// Which service this is.
pub const KIND: ServiceKind = ServiceKind::Planner;

/// KV buckets this service owns (`<prefix>_<name>`), with the history each keeps.
pub const BUCKETS: &[(&str, i64)] = &[("plans", 16)];

/// The durable consumer of the task work queue, shared by every planner replica.
pub const INTAKE_CONSUMER: &str = "toronto-planner-intake";

/// The durable consumer of the runner's work queue, shared by every planner replica.
pub const RUNNER_CONSUMER: &str = "toronto-planner-runner";

/// The durable consumer of rollout events (a plan's execute step waits for its
/// rollout to end), shared by every planner replica.
pub const ROLLOUTS_CONSUMER: &str = "toronto-planner-rollouts";

/// The durable consumer of chaos events (a plan's execute step waits for its
/// experiment to end), shared by every planner replica.
pub const CHAOS_CONSUMER: &str = "toronto-planner-chaos";

/// Starts the service with settings from the `TORONTO_PLANNER_*` variables.
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let settings = Settings::from_env().map_err(|e| RuntimeError::Config(e.into()))?;
    start_with(config, settings, shutdown).await
}

/// Starts the service and returns it running; stop it by cancelling `shutdown` and
/// awaiting [`ServiceRuntime::run_until_shutdown`].
pub async fn start_with(
    config: Config,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    let rt = ServiceRuntime::start(KIND, env!("CARGO_PKG_VERSION"), config, shutdown).await?;
    if let Some(auth) = rt.host.auth() {
        // Both doors take tasks only from verified operators.
        auth.protect("submit", toronto_protocol::auth::Access::OPERATOR);
        auth.protect(QUEUE_DOOR, toronto_protocol::auth::Access::OPERATOR);
    }
    identity::register(&rt).await?;
    let plans = rt.kv(BUCKETS[0].0, BUCKETS[0].1).await?;
    let lease = settings.lease;
    let intake = Planner::new(&rt, plans, settings);
    intake.runs.ensure(rt.config.jetstream.replicas).await?;

    let submit = intake.clone();
    rt.host
        .add_endpoint_any(
            "submit",
            rt.subjects.command(KIND, "submit"),
            intake::accepts(),
            move |req: Request<serde_json::Value>| {
                let intake = submit.clone();
                async move {
                    let taken = intake
                        .take(&req.envelope, "submit", req.caller.as_deref())
                        .await;
                    if let Err(intake::IntakeError::Forbidden(refusal)) = &taken {
                        req.audit(intake.auth.as_deref(), "submit:policy", Some(refusal))
                            .await;
                    }
                    taken.map_err(ErrorBody::from)
                }
            },
        )
        .await?;

    let getter = intake.clone();
    rt.endpoint("plan.get", move |req: Request<PlanGet>| {
        let intake = getter.clone();
        async move {
            let id = req.data().plan_id;
            intake
                .get(id)
                .await
                .map_err(ErrorBody::from)?
                .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no plan {id}")))
        }
    })
    .await?;

    let lister = intake.clone();
    rt.endpoint("plan.list", move |req: Request<PlanList>| {
        let intake = lister.clone();
        async move { intake.page(req.data()).await.map_err(ErrorBody::from) }
    })
    .await?;

    let canceller = intake.clone();
    rt.endpoint("plan.cancel", move |req: Request<PlanCancel>| {
        let intake = canceller.clone();
        async move { intake.cancel(req.data(), &req.flow()).await }
    })
    .await?;

    let gauges = dora::DoraGauges::register(&rt.metrics);
    let reporter = intake.clone();
    rt.endpoint("dora.get", move |req: Request<DoraQuery>| {
        let planner = reporter.clone();
        let gauges = gauges.clone();
        async move {
            planner
                .dora(req.data(), &gauges)
                .await
                .map_err(ErrorBody::from)
        }
    })
    .await?;

    for (verb, approve) in [("plan.approve", true), ("plan.reject", false)] {
        let decider = intake.clone();
        rt.endpoint(verb, move |req: Request<PlanDecision>| {
            let intake = decider.clone();
            async move { intake.decide(&req, approve).await }
        })
        .await?;
    }

    // A plan's execute step waits for the work it handed over; the end of that work,
    // announced on the event stream, wakes the plan.
    wake_on_end(
        &rt,
        &intake,
        "rollout watcher",
        ROLLOUTS_CONSUMER,
        "rollout",
        |payload| {
            toronto_protocol::decode::<toronto_protocol::rollout::Rollout>(payload, Encoding::Json)
                .ok()
                .filter(|e| e.data.phase.is_final())
                .map(|e| e.data.plan_id)
        },
    );
    wake_on_end(
        &rt,
        &intake,
        "chaos watcher",
        CHAOS_CONSUMER,
        "chaos",
        |payload| {
            toronto_protocol::decode::<toronto_protocol::rollout::ChaosRun>(payload, Encoding::Json)
                .ok()
                .filter(|e| e.data.state != toronto_protocol::rollout::ChaosState::Running)
                .map(|e| e.data.plan_id)
        },
    );

    if !intake.settings.sweep.is_zero() {
        let (sweeper, token) = (intake.clone(), rt.shutdown_token());
        rt.spawn_background("plan sweep", move || {
            let (planner, token) = (sweeper.clone(), token.clone());
            async move { planner.sweep_every(token).await }
        });
    }

    let advancer = intake.clone();
    let (runs, spec) = (intake.runs.clone(), intake.runs.consumer(lease, 20, 32));
    let (dead_letters, metrics, token) = (
        rt.dead_letters.clone(),
        rt.metrics.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background("plan runner", move || {
        let advancer = advancer.clone();
        runs.clone().run(
            spec.clone(),
            dead_letters.clone(),
            metrics.clone(),
            token.clone(),
            move |work: AdvancePlan, delivery: Delivery| {
                let planner = advancer.clone();
                async move { planner.advance(work.plan_id, &delivery).await }
            },
        )
    });

    let accepts = intake::accepts();
    let queue = intake.clone();
    let spec = ConsumerSpec {
        stream: rt.subjects.tasks_stream(),
        durable: INTAKE_CONSUMER.into(),
        filter_subject: Some(rt.subjects.tasks()),
        ack_wait: Duration::from_secs(30),
        max_deliver: 5,
        concurrency: 16,
    };
    let (js, dead_letters, metrics, token) = (
        rt.js.clone(),
        rt.dead_letters.clone(),
        rt.metrics.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background("task intake", move || {
        let (queue, accepts) = (queue.clone(), accepts.clone());
        run_consumer(
            js.clone(),
            spec.clone(),
            dead_letters.clone(),
            metrics.clone(),
            token.clone(),
            move |delivery: Delivery| {
                let intake = queue.clone();
                let accepts = accepts.clone();
                async move { take_queued(&intake, &accepts, &delivery).await }
            },
        )
    });
    Ok(rt)
}

/// The access rule name of the JetStream task queue (the second door).
const QUEUE_DOOR: &str = "queue";

/// A task from the work queue: a plan, a rejection for the dead-letter stream, or a
/// retry when state is unavailable.
async fn take_queued(
    intake: &Planner,
    accepts: &toronto_runtime::Accepts,
    delivery: &Delivery,
) -> Outcome {
    // Structured or binary CloudEvents content mode.
    let envelope = match toronto_runtime::service::decode_message_raw(
        delivery.headers(),
        delivery.payload(),
    ) {
        Ok(envelope) => envelope,
        Err(e) => {
            return Outcome::Reject {
                reason: e.to_string(),
            };
        }
    };
    if let Err(e) = envelope.message_type().and_then(|ty| accepts.check(&ty)) {
        return Outcome::Reject {
            reason: e.to_string(),
        };
    }
    let caller = match &intake.auth {
        Some(auth) => {
            let id = envelope.id.to_string();
            let presented = toronto_runtime::auth::Presented {
                subject: delivery.subject(),
                headers: delivery.headers(),
                payload: delivery.payload(),
                id: &id,
                source: &envelope.source,
                target: envelope.subject.as_deref(),
            };
            match auth
                .admit_queued(QUEUE_DOOR, presented, delivery.stored_at())
                .await
            {
                Ok(caller) => caller,
                Err(refusal) if refusal.code() == toronto_protocol::ErrorCode::Unavailable => {
                    return Outcome::Retry {
                        delay: Some(Duration::from_secs(1)),
                        reason: refusal.to_string(),
                    };
                }
                Err(refusal) => {
                    return Outcome::Reject {
                        reason: refusal.to_string(),
                    };
                }
            }
        }
        None => None,
    };
    match intake.take(&envelope, "queue", caller.as_deref()).await {
        Ok(accepted) => {
            tracing::info!(plan = %accepted.plan_id, duplicate = accepted.duplicate, "task from the queue planned");
            Outcome::Ack
        }
        Err(e) if !e.is_transient() => Outcome::Reject {
            reason: e.to_string(),
        },
        Err(e) => Outcome::Retry {
            delay: Some(Duration::from_secs(1)),
            reason: e.to_string(),
        },
    }
}

/// Consumes `<entity>.*` events durably; when `ended` says an event ends some work (the
/// plan it belongs to, if any), wakes that plan. Progress events are acknowledged.
fn wake_on_end(
    rt: &ServiceRuntime,
    intake: &Planner,
    what: &'static str,
    durable: &str,
    entity: &str,
    ended: fn(&bytes::Bytes) -> Option<Option<uuid::Uuid>>,
) {
    let waker = intake.clone();
    let spec = ConsumerSpec {
        stream: rt.subjects.events_stream(),
        durable: durable.into(),
        filter_subject: Some(rt.subjects.event(entity, ">")),
        ack_wait: Duration::from_secs(30),
        max_deliver: 20,
        concurrency: 8,
    };
    let (js, dead_letters, metrics, token) = (
        rt.js.clone(),
        rt.dead_letters.clone(),
        rt.metrics.clone(),
        rt.shutdown_token(),
    );
    rt.spawn_background(what, move || {
        let waker = waker.clone();
        run_consumer(
            js.clone(),
            spec.clone(),
            dead_letters.clone(),
            metrics.clone(),
            token.clone(),
            move |delivery: Delivery| {
                let planner = waker.clone();
                async move {
                    match ended(delivery.payload()) {
                        Some(plan_id) => planner.work_ended(plan_id).await,
                        None => Outcome::Ack,
                    }
                }
            },
        )
    });
}

/// Runs the service until `shutdown` is cancelled, then shuts down gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    start(config, shutdown).await?.run_until_shutdown().await
}
