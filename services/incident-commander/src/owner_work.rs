//! The single-writer work: supervised loops that run only in this replica's terms of
//! ownership ([`crate::replica`]) and stop when a term ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use toronto_runtime::ServiceRuntime;
use toronto_runtime::jetstream::{ConsumerSpec, run_consumer};
use uuid::Uuid;

use crate::engine::Engine;
use crate::replica::Ownership;
use crate::{KIND, intake, outbound, playbook};

/// Starts the owner's loops: alerts from the bus, deadlines, housekeeping, playbooks,
/// rollout events and the outbox sender.
pub(crate) fn spawn(
    rt: &ServiceRuntime,
    ownership: &Ownership,
    engine: &Arc<Engine>,
    playbooks_rx: UnboundedReceiver<Uuid>,
    tick: Duration,
) {
    outbound::start::spawn_sender(rt, engine.clone(), ownership.clone());
    let remote = playbook::Remote {
        client: rt.client.clone(),
        subjects: rt.subjects.clone(),
        source: rt.source(),
        timeout: rt.config.nats.request_timeout(),
    };

    let (running, runner_remote, playbooks_rx, token, own) = (
        engine.clone(),
        remote.clone(),
        Arc::new(tokio::sync::Mutex::new(playbooks_rx)),
        rt.shutdown_token(),
        ownership.clone(),
    );
    rt.spawn_background("playbooks", move || {
        let (engine, remote, rx, token, own) = (
            running.clone(),
            runner_remote.clone(),
            playbooks_rx.clone(),
            token.clone(),
            own.clone(),
        );
        async move {
            own.each_term(&token, |stop| {
                let (engine, remote, rx) = (engine.clone(), remote.clone(), rx.clone());
                async move {
                    let mut rx = rx.lock_owned().await;
                    playbook::runner(engine, remote, &mut rx, stop).await
                }
            })
            .await
        }
    });

    let (following, js, subjects, token, own) = (
        engine.clone(),
        rt.js.clone(),
        rt.subjects.clone(),
        rt.shutdown_token(),
        ownership.clone(),
    );
    rt.spawn_background("rollout events", move || {
        let (engine, js, subjects, token, own) = (
            following.clone(),
            js.clone(),
            subjects.clone(),
            token.clone(),
            own.clone(),
        );
        async move {
            own.each_term(&token, |stop| {
                playbook::follow_rollouts(engine.clone(), js.clone(), subjects.clone(), stop)
            })
            .await
        }
    });

    let (ticker, token, tick_remote, own) = (
        engine.clone(),
        rt.shutdown_token(),
        remote.clone(),
        ownership.clone(),
    );
    rt.spawn_background("deadlines", move || {
        let (ticker, token, tick_remote, own) = (
            ticker.clone(),
            token.clone(),
            tick_remote.clone(),
            own.clone(),
        );
        async move {
            own.each_term(&token, |stop| {
                let (ticker, tick_remote) = (ticker.clone(), tick_remote.clone());
                async move {
                    let mut every = tokio::time::interval(tick);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                            _ = every.tick() => {
                                let quiet = ticker.deadlines();
                                playbook::confirm_quiet(&ticker, &tick_remote, quiet).await;
                            }
                        }
                    }
                }
            })
            .await
        }
    });

    let (keeper, token, own) = (engine.clone(), rt.shutdown_token(), ownership.clone());
    rt.spawn_background("housekeeping", move || {
        let (keeper, token, own) = (keeper.clone(), token.clone(), own.clone());
        async move {
            own.each_term(&token, |stop| {
                let keeper = keeper.clone();
                async move {
                    let mut every = tokio::time::interval(crate::engine::HOUSEKEEPING_EVERY);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                            _ = every.tick() => {
                                let forgotten = keeper.housekeeping();
                                tracing::debug!(forgotten, "alerts resolved long ago forgotten");
                            }
                        }
                    }
                }
            })
            .await
        }
    });

    // Alerts from the bus: a durable consumer, so none is lost while no replica owns
    // the work or the service is down.
    let spec = ConsumerSpec {
        stream: rt.subjects.events_stream(),
        durable: format!("{}-alerts", KIND.service_name()),
        filter_subject: Some(rt.subjects.event("alert", ">")),
        ack_wait: Duration::from_secs(30),
        max_deliver: 5,
        // One at a time: a firing and its resolution must not swap places.
        concurrency: 1,
    };
    let (bus, js, dead_letters, metrics, token, own) = (
        engine.clone(),
        rt.js.clone(),
        rt.dead_letters.clone(),
        rt.metrics.clone(),
        rt.shutdown_token(),
        ownership.clone(),
    );
    rt.spawn_background("alerts from the bus", move || {
        let (bus, js, dead_letters, metrics, token, own) = (
            bus.clone(),
            js.clone(),
            dead_letters.clone(),
            metrics.clone(),
            token.clone(),
            own.clone(),
        );
        let spec = spec.clone();
        async move {
            own.each_term(&token, |stop| {
                let bus = bus.clone();
                run_consumer(
                    js.clone(),
                    spec.clone(),
                    dead_letters.clone(),
                    metrics.clone(),
                    stop,
                    move |delivery| intake::handle_bus_alert(bus.clone(), delivery),
                )
            })
            .await
        }
    });
}
