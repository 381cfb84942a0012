//! The sweep: a level-triggered look at the plan holding each service and
//! environment's turn, so that no plan waits for an event that was lost.
//!
//! Events drive plans (a rollout's end wakes its plan, a released turn wakes the next
//! queued plan), and an event can be lost: a publish that timed out while a stream
//! elected a new leader, a message parked after its last delivery. Every
//! `TORONTO_PLANNER_SWEEP_SECONDS` the sweep reads the holder of every turn and does
//! what the lost event would have done:
//!
//! - the holder ended (or is gone) without letting go of its turn: the turn is
//!   released, which wakes the next queued plan of that scope;
//! - the holder waits for a rollout or an experiment that has ended: it is woken, as
//!   the end event would have woken it;
//! - the holder is running, nobody has held its lease for two lease lengths and no step
//!   of it waits for a time: it is put on the run queue again;
//! - nobody holds a scope's turn while plans are queued in it, the oldest unchanged for
//!   two lease lengths: that plan is woken.
//!
//! A sweep reads one turn (and one queue) per active scope, from live indexes of the
//! turns and the queues, and never the plans' history. Every replica sweeps; each
//! repair is a compare-and-set (or an extra "advance plan X", which a plan someone
//! works on acknowledges), so replicas sweeping at once repair a plan once.

use std::collections::BTreeSet;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{Plan, PlanState, StepState, StepWork};
use toronto_runtime::jetstream::Outcome;
use uuid::Uuid;

use super::StepResult;
use crate::intake::{IntakeError, Planner};

/// The most scopes one sweep reads (services times environments with a plan running).
const MAX_SCOPES: usize = 10_000;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Scopes read (with a turn held, plans queued, or both).
    pub scopes: usize,
    /// Turns released because their holder had ended.
    pub released: usize,
    /// Plans woken because the work they waited for had ended.
    pub woken: usize,
    /// Plans nobody worked on (running, or first in a free scope's queue), put on
    /// the run queue again.
    pub requeued: usize,
    /// Scopes that could not be read (the next sweep reads them again).
    pub failed: usize,
}

impl Swept {
    /// How many repairs it made.
    pub fn repairs(&self) -> usize {
        self.released + self.woken + self.requeued
    }
}

/// What the sweep did for one scope.
enum Repair {
    Released,
    Woken,
    Requeued,
}

impl Planner {
    /// Sweeps every `TORONTO_PLANNER_SWEEP_SECONDS` until `stop` is cancelled.
    pub async fn sweep_every(&self, stop: CancellationToken) -> Result<(), IntakeError> {
        let mut tick = tokio::time::interval(self.settings.sweep);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            self.sweep().await;
        }
    }

    /// Reads the holder of every turn and the queue of every scope with one, and
    /// repairs what a lost event left undone. Nothing is read while either index is
    /// not live (the next sweep reads them); a scope that cannot be read is logged and
    /// the others are swept.
    pub async fn sweep(&self) -> Swept {
        let (Some(turns), Some(queues)) = (
            self.turn_index.newest(None, MAX_SCOPES),
            self.queue_index.newest(None, MAX_SCOPES),
        ) else {
            return Swept::default();
        };
        let scopes: BTreeSet<String> = turns.into_iter().chain(queues).collect();
        let mut swept = Swept {
            scopes: scopes.len(),
            ..Swept::default()
        };
        for scope in scopes {
            match self.sweep_scope(&scope).await {
                Ok(Some(Repair::Released)) => swept.released += 1,
                Ok(Some(Repair::Woken)) => swept.woken += 1,
                Ok(Some(Repair::Requeued)) => swept.requeued += 1,
                Ok(None) => {}
                Err(e) => {
                    swept.failed += 1;
                    tracing::warn!(scope, error = %e, "sweep: cannot read this scope now");
                }
            }
        }
        swept
    }

    async fn sweep_scope(&self, scope: &str) -> Result<Option<Repair>, IntakeError> {
        let Some(holder) = self.turns.holder(scope).await? else {
            // Nobody holds the turn: the oldest queued plan, if it has waited long
            // enough that no wake-up is on its way, is woken.
            return Ok(self
                .wake_next(scope, None, Some(self.settings.lease * 2))
                .await?
                .then(|| {
                    tracing::info!(
                        scope,
                        "sweep: a free turn with plans queued; the oldest woken"
                    );
                    Repair::Requeued
                }));
        };
        let plan = match self.load(holder).await? {
            Some((plan, _)) if !plan.state.is_final() => plan,
            _ => {
                tracing::info!(scope, plan = %holder, "sweep: the turn's holder has ended; released");
                self.release_scope(scope, holder).await?;
                return Ok(Some(Repair::Released));
            }
        };
        if plan.state == PlanState::Waiting {
            return self.wake_if_ended(&plan).await;
        }
        if stranded(&plan, self.settings.lease) {
            tracing::info!(plan = %plan.id, "sweep: a running plan nobody worked on; queued again");
            self.enqueue(plan.id).await?;
            return Ok(Some(Repair::Requeued));
        }
        Ok(None)
    }

    /// Wakes `plan` when the work its step waits for has ended (an approval waits
    /// for a person: nothing to look at).
    async fn wake_if_ended(&self, plan: &Plan) -> Result<Option<Repair>, IntakeError> {
        let Some(work) = plan
            .steps
            .iter()
            .find(|s| s.state == StepState::Waiting)
            .and_then(|s| s.work)
        else {
            return Ok(None);
        };
        let result = match work {
            StepWork::Rollout { id } => self.rollout_result(id).await,
            StepWork::Chaos { id } => self.chaos_result(id).await,
        };
        if matches!(result, StepResult::Wait { .. }) {
            return Ok(None);
        }
        match self.work_ended(Some(plan.id)).await {
            Outcome::Ack => {
                tracing::info!(plan = %plan.id, ?work, "sweep: the work the plan waited for has ended; woken");
                Ok(Some(Repair::Woken))
            }
            // Changing under us, or the bucket unavailable: the next sweep looks again.
            _ => Ok(None),
        }
    }

    /// Gives up the turn of `scope` if `holder` holds it, and wakes the oldest plan
    /// still queued in that scope.
    pub(crate) async fn release_scope(&self, scope: &str, holder: Uuid) -> Result<(), IntakeError> {
        self.turns.release(scope, holder).await?;
        self.wake_next(scope, Some(holder), None).await?;
        Ok(())
    }

    /// Wakes the oldest plan still queued in `scope` (found in the scope's queue
    /// index; plans that left the queue meanwhile, and `left`, are dropped from it on
    /// the way), if it has not changed for `quiet` when given; whether it woke one.
    async fn wake_next(
        &self,
        scope: &str,
        left: Option<Uuid>,
        quiet: Option<std::time::Duration>,
    ) -> Result<bool, IntakeError> {
        let mut gone: Vec<Uuid> = left.into_iter().collect();
        let mut woken = false;
        for id in self.queue.queued(scope).await? {
            if Some(id) == left {
                continue;
            }
            match self.load(id).await? {
                Some((next, _)) if next.state == PlanState::Queued => {
                    let changed = next.updated_at.unwrap_or(next.created_at);
                    let waited = (Utc::now() - changed).to_std().unwrap_or_default();
                    if quiet.is_none_or(|q| waited > q) {
                        self.enqueue(next.id).await?;
                        woken = true;
                    }
                    break;
                }
                _ => gone.push(id),
            }
        }
        if !gone.is_empty() {
            self.queue.remove(scope, &gone).await?;
        }
        Ok(woken)
    }
}

/// Whether `plan`, running, has had nobody working on it for two lease lengths (its
/// lease gone or run out, and its last change older than that) and no step of it
/// waits for a time of its own (a teardown due later).
fn stranded(plan: &Plan, lease: std::time::Duration) -> bool {
    if !matches!(plan.state, PlanState::Running | PlanState::Queued) {
        return false;
    }
    let now = Utc::now();
    let idle = chrono::Duration::from_std(lease * 2).unwrap_or(chrono::Duration::MAX);
    let unowned = plan.lease.as_ref().is_none_or(|l| l.until < now);
    let quiet = plan.updated_at.is_some_and(|at| now - at > idle);
    let timed = plan
        .steps
        .iter()
        .any(|s| s.state != StepState::Succeeded && s.not_before.is_some_and(|t| t > now));
    unowned && quiet && !timed
}

#[cfg(test)]
mod tests {
    use super::*;
    use toronto_protocol::tasks::{Lease, PlanTask, RollbackTask, Step, StepKind};

    fn plan(state: PlanState, updated_secs_ago: i64) -> Plan {
        let now = Utc::now();
        Plan {
            id: Uuid::new_v4(),
            task_id: "t".into(),
            task: PlanTask::Rollback(RollbackTask {
                service: "svc".into(),
                environment: "staging".into(),
                target_version: None,
                emergency: false,
            }),
            state,
            requested_by: "toronto://test".into(),
            requested_by_principal: None,
            correlationid: "c".into(),
            intake: "submit".into(),
            created_at: now,
            cancellation: None,
            steps: vec![Step::new("execute", StepKind::Execute)],
            reason: None,
            decisions: vec![],
            updated_at: Some(now - chrono::Duration::seconds(updated_secs_ago)),
            artifacts: vec![],
            lease: None,
            delegation: None,
        }
    }

    const LEASE: std::time::Duration = std::time::Duration::from_secs(10);

    #[test]
    fn a_running_plan_left_alone_for_two_leases_is_stranded() {
        assert!(stranded(&plan(PlanState::Running, 30), LEASE));
        assert!(stranded(&plan(PlanState::Queued, 30), LEASE));
    }

    #[test]
    fn a_recent_held_waiting_or_timed_plan_is_not() {
        // Changed within two leases.
        assert!(!stranded(&plan(PlanState::Running, 5), LEASE));
        // A planner holds its lease.
        let mut held = plan(PlanState::Running, 30);
        held.lease = Some(Lease {
            owner: "planner-1".into(),
            until: Utc::now() + chrono::Duration::seconds(5),
        });
        assert!(!stranded(&held, LEASE));
        // Waiting (for a rollout or a person) and ended plans are not run again.
        for state in [
            PlanState::Waiting,
            PlanState::Completed,
            PlanState::Cancelled,
        ] {
            assert!(!stranded(&plan(state, 30), LEASE), "{state:?}");
        }
        // A step due later (a teardown at the end of its TTL).
        let mut timed = plan(PlanState::Running, 30);
        timed.steps[0].not_before = Some(Utc::now() + chrono::Duration::seconds(60));
        assert!(!stranded(&timed, LEASE));
        // Its time has come: run it.
        timed.steps[0].not_before = Some(Utc::now() - chrono::Duration::seconds(1));
        assert!(stranded(&timed, LEASE));
    }
}
