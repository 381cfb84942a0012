//! The rollout reconciler: each pass reads a rollout, does one bounded thing (apply
//! a step, wait for readiness, pause with analysis, promote, roll back, succeed) and
//! says when to come back, in the manner of a kube-rs reconciler.

use std::time::Duration;
use toronto_protocol::rollout::RolloutEvent;

use chrono::Utc;
use toronto_protocol::analysis::OnNoData;
use toronto_protocol::rollout::{
    AnalysisRecord, PendingCommand, Revision, Rollout, RolloutPhase, RolloutStep, RolloutStepKind,
    RolloutStepState,
};
use toronto_runtime::jetstream::{Delivery, Outcome};
use toronto_runtime::work::{Claim, Driven, Next, Saved, drive, lease};
use uuid::Uuid;

use super::analysis::trim;
use super::{Deployer, EngineError, Family, Release, rollback_layout, steady_layout, step_layout};
use crate::target::{Layout, TargetError};

impl Deployer {
    /// Advances a rollout for as long as this delivery lasts.
    pub(crate) async fn advance(&self, rollout_id: Uuid, delivery: &Delivery) -> Outcome {
        // A redelivered message is one whose holder did not keep it: that holder may
        // have died with its lease still running, so the message waits the lease out.
        let redelivered = delivery.deliveries() > 1;
        let driven = drive(
            delivery,
            self.settings.lease / 4,
            &self.crash,
            &self.shutdown,
            || self.reconcile(rollout_id, redelivered),
        )
        .await;
        match driven {
            Driven::Done => Outcome::Ack,
            Driven::Failed(e) => {
                tracing::warn!(rollout = %rollout_id, error = %e, "cannot advance rollout");
                Outcome::Retry {
                    delay: Some(Duration::from_secs(1)),
                    reason: e.to_string(),
                }
            }
            Driven::Crashed => Outcome::Abandon,
            Driven::ShutDown => self.hand_over(rollout_id).await,
        }
    }

    /// At a graceful shutdown: gives up the lease so that another replica, receiving
    /// the message at once, carries on without waiting for the lease to run out.
    async fn hand_over(&self, rollout_id: Uuid) -> Outcome {
        let me = self.instance.clone();
        let given_up = self
            .records
            .update(rollout_id, |r| {
                if lease::holds(r.lease.as_ref(), &me) {
                    r.lease = None;
                    r.updated_at = Utc::now();
                    toronto_runtime::work::Edit::Save(())
                } else {
                    toronto_runtime::work::Edit::Keep(())
                }
            })
            .await;
        if let Err(e) = given_up {
            tracing::warn!(rollout = %rollout_id, error = %e, "cannot give up the lease at shutdown");
        }
        Outcome::Retry {
            delay: Some(Duration::from_millis(100)),
            reason: "handed over at shutdown".into(),
        }
    }

    /// One pass over a rollout: reads it, does one bounded thing, saves it.
    /// `redelivered`: the message was given up by an earlier holder (see [`Self::advance`]).
    async fn reconcile(&self, id: Uuid, redelivered: bool) -> Result<Next, EngineError> {
        let Some((mut r, revision)) = self.load(id).await? else {
            return Ok(Next::Done);
        };
        if r.phase.is_final() {
            self.release_active(&r).await?;
            return Ok(Next::Done);
        }
        let now = Utc::now();
        let length = self.settings.lease;
        match lease::claim(r.lease.as_ref(), &self.instance, now, length, length / 2) {
            // Another deployer holds it. A first delivery is a wake-up while the holder
            // works (its own message keeps it going); a redelivery may be the dead
            // holder's own message, so it is kept until the lease runs out and taken then
            // (acknowledging it would leave the rollout with nobody to advance it).
            Claim::Held { until, .. } if redelivered => {
                let left = (until - now).to_std().unwrap_or_default();
                // Checked at least every quarter lease, so the message's progress acks go on.
                return Ok(Next::After(
                    (left + Duration::from_millis(50)).min(length / 4),
                ));
            }
            Claim::Held { .. } => return Ok(Next::Done),
            Claim::Take(lease) => {
                r.lease = Some(lease);
                // Stored or not (a conflict), the next pass reads it again.
                let _ = self.save(&mut r, revision).await?;
                return Ok(Next::After(Duration::ZERO));
            }
            Claim::Keep => {}
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
                if self.save(&mut r, revision).await?.is_stored() {
                    self.announce(RolloutEvent::Paused, &r).await;
                    return Ok(Next::Done);
                }
                return Ok(Next::After(Duration::ZERO));
            }
            _ => {}
        }
        if r.phase == RolloutPhase::Paused {
            r.lease = None;
            if self.save(&mut r, revision).await?.is_stored() {
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
                if self.save(&mut r, revision).await? == Saved::Conflict {
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
                    if self.save(&mut r, revision).await?.is_stored() {
                        Box::pin(self.hand_over_adopted(&r, before.as_ref())).await;
                        self.announce(RolloutEvent::Progressed, &r).await;
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
                // Boxed: keeps this future small (it is polled on small stacks).
                let evidence = Box::pin(self.evidence_against(&r, &current, before.as_ref())).await;
                if let Some(evidence) = evidence {
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
                let hold = self.step_hold(&r, &current, before.as_ref());
                let pause_over = (now - ready_at).to_std().unwrap_or_default() >= hold;
                let promoted = matches!(r.pending, Some(PendingCommand::Promote { .. }));
                if !pause_over && !promoted {
                    let left = hold.saturating_sub((now - ready_at).to_std().unwrap_or_default());
                    // Sleeps until the next analysis is due or the pause ends, whichever
                    // comes first, unless evidence is heard on the service sooner.
                    let wait = left
                        .min(self.next_analysis_in(r.id, &current))
                        .max(Duration::from_millis(20));
                    // Boxed: keeps the reconciler's future small.
                    Box::pin(self.pause(&r.service, &r.environment, wait)).await;
                    return Ok(Next::After(Duration::ZERO));
                }
                if !promoted
                    && let Some((policy, verdict)) = self.no_data(&r, &current, before.as_ref())
                {
                    let step_id = current.id.clone();
                    let why = format!(
                        "no analysis data for step {step_id} (on_no_data: {}): {}",
                        policy.as_str(),
                        verdict.reason
                    );
                    r.analyses.push(AnalysisRecord {
                        step: step_id,
                        source: "no_data".into(),
                        verdict,
                    });
                    trim(&mut r.analyses);
                    self.forget_analyses(r.id);
                    match policy {
                        OnNoData::Fail => {
                            return self
                                .roll_back(r, revision, before.as_ref(), RolloutPhase::Aborted, why)
                                .await;
                        }
                        OnNoData::Pause => {
                            r.phase = RolloutPhase::Paused;
                            r.reason = Some(format!(
                                "{why}; resume to analyse again, promote to go on unverified, or abort"
                            ));
                            r.lease = None;
                            if self.save(&mut r, revision).await?.is_stored() {
                                tracing::warn!(rollout = %r.id, reason = r.reason.as_deref().unwrap_or(""), "rollout paused: no analysis data");
                                self.announce(RolloutEvent::Paused, &r).await;
                                return Ok(Next::Done);
                            }
                            return Ok(Next::After(Duration::ZERO));
                        }
                        OnNoData::Promote => {
                            tracing::warn!(rollout = %r.id, why, "promoting without analysis data");
                        }
                    }
                }
                // A step that goes on keeps the analysis it passed, so a rollout shows
                // what it was judged on, not only what failed it.
                if let Some(passed) = self.passed_analysis(&r, &current) {
                    r.analyses.push(passed);
                    trim(&mut r.analyses);
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
                if self.save(&mut r, revision).await? == Saved::Conflict {
                    return Ok(Next::After(Duration::ZERO));
                }
                if promoted {
                    self.announce(RolloutEvent::Promoted, &r).await;
                }
                if hold {
                    self.announce(RolloutEvent::Paused, &r).await;
                    return Ok(Next::Done);
                }
                Ok(Next::After(Duration::ZERO))
            }
            RolloutStepState::Done => {
                r.step_index += 1;
                if self.save(&mut r, revision).await? == Saved::Conflict {
                    return Ok(Next::After(Duration::ZERO));
                }
                Ok(Next::After(Duration::ZERO))
            }
        }
    }

    /// Time until the next analysis of `step` is due: one analysis period after the
    /// last analysis of the rollout began (a full period when it is overdue, which is
    /// a step that is not analysed: its pass found nothing to do).
    fn next_analysis_in(&self, id: Uuid, step: &RolloutStep) -> Duration {
        let compare = matches!(
            step.kind,
            RolloutStepKind::Weight | RolloutStepKind::Preview | RolloutStepKind::Switch
        );
        let every = self.analysis_period(compare);
        let since = self
            .last_analysis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(std::time::Instant::elapsed);
        match since {
            Some(since) if since < every => every - since,
            _ => every,
        }
    }

    /// Sleeps for `wait`, or until evidence against the service is heard (see
    /// [`Deployer::hear`]), or this instance stops.
    async fn pause(&self, service: &str, environment: &str, wait: Duration) {
        let waker = self.waker(service, environment);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = waker.notified() => {}
            _ = self.crash.cancelled() => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Applies a step's layout; the target refusing fails the rollout.
    async fn apply(&self, r: &Rollout, layout: &Layout) -> Result<Next, EngineError> {
        let layout = &self.with_pod_template(layout.clone()).await?;
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
        if !Box::pin(self.restore_adopted(&r, before)).await {
            return Ok(Next::After(Duration::from_secs(1)));
        }
        let layout = self
            .with_pod_template(rollback_layout(&r, before, &self.settings))
            .await?;
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
        if self.save(&mut r, revision).await? == Saved::Conflict {
            return Ok(Next::After(Duration::ZERO));
        }
        tracing::warn!(rollout = %r.id, reason = r.reason.as_deref().unwrap_or(""), "rollout rolled back");
        self.announce(
            if phase == RolloutPhase::Aborted {
                RolloutEvent::Aborted
            } else {
                RolloutEvent::Failed
            },
            &r,
        )
        .await;
        self.announce(RolloutEvent::RolledBack, &r).await;
        self.release_active(&r).await?;
        self.forget_rollout(r.id);
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
        let layout = self.with_pod_template(layout).await?;
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
        // The user's adopted Deployment hands its traffic over once ours serve.
        if let Some(adopted) = self
            .workload(&r.service, &r.environment)
            .await?
            .and_then(|w| w.adopted)
            && let Err(e) = self.target.scale_adopted(&r.environment, &adopted, 0).await
        {
            tracing::warn!(rollout = %r.id, deployment = adopted, error = %e, "cannot scale the adopted Deployment down");
        }
        r.phase = RolloutPhase::Succeeded;
        r.weight = 100;
        r.lease = None;
        r.finished_at = Some(now);
        r.reason = None;
        if self.save(&mut r, revision).await? == Saved::Conflict {
            return Ok(Next::After(Duration::ZERO));
        }
        self.announce(
            if r.is_rollback {
                RolloutEvent::RolledBack
            } else {
                RolloutEvent::Succeeded
            },
            &r,
        )
        .await;
        self.release_active(&r).await?;
        self.forget_rollout(r.id);
        Ok(Next::Done)
    }
}
