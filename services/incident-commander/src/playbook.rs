//! Playbooks and recovery: runs a playbook's actions (deployer rollback and scale,
//! pages, HTTP probes, waiting for the monitor to confirm recovery), and confirms the
//! recovery of incidents whose alerts all resolved.
//!
//! Recovery is confirmed by the monitor's `slo.get` for the incident's service: every
//! SLO status evaluated after the point in question, with a short-window burn rate
//! (`TORONTO_INCIDENT_RECOVERY_WINDOW`, default `5m`) at or under
//! `TORONTO_INCIDENT_RECOVERY_MAX_BURN_RATE` (default 1.0: the budget is no longer
//! burning faster than it accrues).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use toronto_protocol::EventKind;
use toronto_protocol::rollout::RolloutEvent;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toronto_protocol::incidents::PlaybookState;
use toronto_protocol::rollout::Rollout;
use toronto_protocol::tasks::{
    ExecuteAccepted, ExecuteRequest, PlanTask, RollbackTask, ScaleTask, SloGet, SloStatuses,
};
use toronto_protocol::{Encoding, Envelope, Message, ServiceKind, Subjects};
use toronto_runtime::rpc::{CallError, call};
use uuid::Uuid;

use crate::engine::{Engine, RecentChange};
use crate::settings::Action;

/// How to reach the other services.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The connection.
    pub client: async_nats::Client,
    /// Subjects.
    pub subjects: Subjects,
    /// This service's `source`.
    pub source: String,
    /// How long a request may take.
    pub timeout: Duration,
}

impl Remote {
    async fn request<Req: Message, Resp: Message>(
        &self,
        service: ServiceKind,
        verb: &str,
        data: Req,
        about: &str,
    ) -> Result<Resp, CallError> {
        let env = Envelope::builder(self.source.clone(), data)
            .subject(about.to_owned())
            .build();
        let subject = self.subjects.command(service, verb);
        call::<Req, Resp>(&self.client, &subject, &env, Encoding::Json, self.timeout)
            .await
            .map(|r| r.data)
    }
}

/// What the monitor says about a service's recovery.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Every SLO's short-window burn rate is back under the limit.
    Recovered(String),
    /// Not yet (still burning, not evaluated since, or the monitor did not answer).
    NotYet(String),
    /// Nothing to confirm with: no monitor answers, or it has no SLO for the service.
    NoSlo(String),
}

/// Asks the monitor whether `service` recovered since `since`.
pub async fn check_recovery(
    engine: &Engine,
    remote: &Remote,
    service: &str,
    since: DateTime<Utc>,
) -> Recovery {
    let window = &engine.settings.recovery_window;
    let max = engine.settings.recovery_max_burn_rate;
    let answer: Result<SloStatuses, _> = remote
        .request(
            ServiceKind::Monitor,
            "slo.get",
            SloGet {
                service: service.to_owned(),
            },
            service,
        )
        .await;
    let statuses = match answer {
        Ok(s) => s.statuses,
        Err(CallError::NoResponders(_)) => {
            return Recovery::NoSlo("no monitor answers slo.get".into());
        }
        Err(e) => return Recovery::NotYet(format!("the monitor did not answer: {e}")),
    };
    if statuses.is_empty() {
        return Recovery::NoSlo(format!("the monitor has no SLO for {service}"));
    }
    let mut parts = Vec::new();
    for s in &statuses {
        if s.evaluated_at < since {
            return Recovery::NotYet(format!("SLO {} not evaluated since {since}", s.slo));
        }
        let Some(rate) = s.burn_rates.get(window) else {
            return Recovery::NotYet(format!("SLO {} has no {window} burn rate yet", s.slo));
        };
        if *rate > max {
            return Recovery::NotYet(format!(
                "SLO {} still burns its budget {rate:.2}x over {window} (limit {max})",
                s.slo
            ));
        }
        parts.push(format!("{} {rate:.2}x over {window}", s.slo));
    }
    Recovery::Recovered(format!(
        "the monitor confirmed recovery: {}",
        parts.join(", ")
    ))
}

/// Resolves quiet incidents once recovery is confirmed (or nothing can confirm it).
pub async fn confirm_quiet(engine: &Engine, remote: &Remote, ids: Vec<Uuid>) {
    for id in ids {
        let Ok(inc) = engine.get(id) else { continue };
        let since = inc.quiet_since.unwrap_or(inc.opened_at);
        let verdict = check_recovery(engine, remote, &inc.service, since).await;
        if !engine.still_quiet(id) {
            continue;
        }
        match verdict {
            Recovery::Recovered(why) => {
                let _ = engine.resolve(
                    id,
                    "incident-commander",
                    &format!("all alerts resolved; {why}"),
                );
            }
            Recovery::NoSlo(why) => {
                let _ = engine.resolve(
                    id,
                    "incident-commander",
                    &format!("all alerts resolved ({why}; resolved on the alerts alone)"),
                );
            }
            Recovery::NotYet(why) => engine.recovery_pending(id, &why),
        }
    }
}

/// Runs playbooks as incidents ask for them (one run at a time per incident).
pub async fn runner(
    engine: Arc<Engine>,
    remote: Remote,
    rx: &mut mpsc::UnboundedReceiver<Uuid>,
    shutdown: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let running: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let id = tokio::select! {
            id = rx.recv() => id,
            _ = shutdown.cancelled() => None,
        };
        let Some(id) = id else { break };
        if !running.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            continue;
        }
        let (engine, remote, running, stop) = (
            engine.clone(),
            remote.clone(),
            running.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            tokio::select! {
                _ = run_one(&engine, &remote, id) => {}
                _ = stop.cancelled() => {}
            }
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn run_one(engine: &Engine, remote: &Remote, id: Uuid) {
    while let Some((inc, pb, step)) = engine.playbook_step(id) {
        let Some(action) = pb.actions.get(step) else {
            engine.playbook_progress(
                id,
                step,
                format!("playbook {} done", pb.name),
                Some(PlaybookState::Succeeded),
            );
            engine.flush().await;
            return;
        };
        let last = step + 1 == pb.actions.len();
        let key = format!("incident:{id}:{}:{step}", pb.name);
        let (text, failed) = match action {
            Action::Rollback { target_version } => {
                let task = PlanTask::Rollback(RollbackTask {
                    service: inc.service.clone(),
                    environment: inc.environment.clone(),
                    target_version: target_version.clone(),
                    // An open incident: the playbook puts the version back at once.
                    emergency: true,
                });
                match execute(remote, "rollback", id, key, task, &inc.service).await {
                    Ok(reference) => {
                        let text = format!(
                            "deployer.rollback of {} in {} accepted (rollout {reference})",
                            inc.service, inc.environment
                        );
                        let _ = engine.mitigate(id, "playbook", &text);
                        (text, false)
                    }
                    Err(e) => (format!("deployer.rollback failed: {e}"), true),
                }
            }
            Action::Scale { replicas } => {
                let task = PlanTask::Scale(ScaleTask {
                    service: inc.service.clone(),
                    environment: inc.environment.clone(),
                    replicas: *replicas,
                });
                match execute(remote, "scale", id, key, task, &inc.service).await {
                    Ok(reference) => {
                        let text = format!(
                            "deployer.scale of {} to {replicas} replicas accepted ({reference})",
                            inc.service
                        );
                        let _ = engine.mitigate(id, "playbook", &text);
                        (text, false)
                    }
                    Err(e) => (format!("deployer.scale failed: {e}"), true),
                }
            }
            Action::Page { target } => {
                engine.page_now(id, target, &format!("playbook {}", pb.name));
                (format!("paged {target}"), false)
            }
            Action::Probe { url, expect_status } => match probe(url).await {
                Ok(status) if status == *expect_status => {
                    (format!("probe {url} answered {status}"), false)
                }
                Ok(status) => (
                    format!("probe {url} answered {status}, expected {expect_status}"),
                    true,
                ),
                Err(e) => (format!("probe {url} failed: {e}"), true),
            },
            Action::WaitRecovery { timeout_seconds } => {
                let timeout = timeout_seconds
                    .map(Duration::from_secs_f64)
                    .unwrap_or(engine.settings.recovery_timeout);
                let since = Utc::now();
                let deadline = tokio::time::Instant::now() + timeout;
                let mut last_why;
                loop {
                    match check_recovery(engine, remote, &inc.service, since).await {
                        Recovery::Recovered(why) => {
                            engine.playbook_progress(
                                id,
                                step,
                                why.clone(),
                                Some(PlaybookState::Succeeded),
                            );
                            let _ = engine.resolve(id, "playbook", &why);
                            engine.flush().await;
                            return;
                        }
                        Recovery::NotYet(why) | Recovery::NoSlo(why) => last_why = why,
                    }
                    if tokio::time::Instant::now() + engine.settings.recovery_poll > deadline {
                        break;
                    }
                    tokio::time::sleep(engine.settings.recovery_poll).await;
                }
                (
                    format!(
                        "recovery not confirmed within {:.0}s: {last_why}",
                        timeout.as_secs_f64()
                    ),
                    true,
                )
            }
        };
        if failed {
            engine.playbook_progress(id, step, text.clone(), Some(PlaybookState::Failed));
            let _ = engine.escalate(id, Some("playbook"), &text);
            engine.flush().await;
            return;
        }
        engine.playbook_progress(id, step, text, last.then_some(PlaybookState::Succeeded));
        engine.flush().await;
    }
}

async fn execute(
    remote: &Remote,
    verb: &str,
    incident: Uuid,
    key: String,
    task: PlanTask,
    service: &str,
) -> Result<String, CallError> {
    let accepted: ExecuteAccepted = remote
        .request(
            ServiceKind::Deployer,
            verb,
            ExecuteRequest {
                plan_id: incident,
                idempotency_key: key,
                task,
            },
            service,
        )
        .await?;
    Ok(accepted.reference.unwrap_or_else(|| "no reference".into()))
}

async fn probe(url: &str) -> Result<u16, String> {
    let client = toronto_runtime::tls::http_client()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// Follows rollout events from the events stream (from its start, so a restart
/// still knows recent changes): records the ones that finished, and puts those of
/// affected services on their open incidents' timelines.
pub async fn follow_rollouts(
    engine: Arc<Engine>,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    shutdown: CancellationToken,
) -> Result<(), String> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    use futures::StreamExt;
    let stream = js
        .get_stream(subjects.events_stream())
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects.event(RolloutEvent::ENTITY, ">"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(Ok(msg)) = next else {
            return Err("the rollout events consumer ended".into());
        };
        let Some(what) = RolloutEvent::from_subject(&msg.subject) else {
            continue;
        };
        if matches!(
            what,
            RolloutEvent::Paused | RolloutEvent::Resumed | RolloutEvent::Promoted
        ) {
            continue;
        }
        let Ok(env) = toronto_protocol::decode::<Rollout>(&msg.payload, Encoding::Json) else {
            continue;
        };
        if what != RolloutEvent::Progressed {
            engine.note_rollout(what, &env.data, env.time.unwrap_or(env.data.updated_at));
        }
        // A change is in effect once it takes traffic: a canary step with weight (even
        // one later aborted) or a rollout that succeeded; the first such event counts.
        let r = env.data;
        let succeeded = what == RolloutEvent::Succeeded;
        let took_traffic = what == RolloutEvent::Progressed && r.weight > 0;
        if r.is_rollback || !(succeeded || took_traffic) {
            continue;
        }
        let finished_at = if succeeded {
            r.finished_at.unwrap_or(r.updated_at)
        } else {
            r.updated_at
        };
        engine.record_change(RecentChange {
            rollout_id: r.id,
            service: r.service,
            environment: r.environment,
            version: r.version,
            previous_version: r.previous.map(|p| p.version),
            finished_at,
        });
    }
}
