//! Finding, listing and commanding rollouts (`rollout.get`, `.list`, `.promote`,
//! `.abort`, `.pause`, `.resume`).

use chrono::Utc;
use toronto_protocol::rollout::RolloutEvent;
use toronto_protocol::rollout::{
    PendingCommand, Rollout, RolloutCommand, RolloutList, RolloutPhase, RolloutRef, Rollouts,
};
use toronto_protocol::{ErrorBody, ErrorCode};
use toronto_runtime::work::Edit;
use uuid::Uuid;

use super::{Verb, bad, not_found};
use crate::engine::{Deployer, EngineError};

/// Most rollouts `rollout.list` reads from the bucket at once.
const LOAD_AHEAD: usize = 64;

impl Deployer {
    /// Finds a rollout by id, or the newest of a service in an environment.
    pub async fn find(
        &self,
        id: Option<Uuid>,
        service: Option<&str>,
        environment: Option<&str>,
    ) -> Result<Rollout, ErrorBody> {
        if let Some(id) = id {
            return self
                .load(id)
                .await?
                .map(|(r, _)| r)
                .ok_or_else(|| not_found(format!("no rollout {id}")));
        }
        let (Some(service), Some(environment)) = (service, environment) else {
            return Err(bad(
                "name the rollout by `id`, or by `service` and `environment`",
            ));
        };
        if let Some(r) = self.active(service, environment).await? {
            return Ok(r);
        }
        let list = self
            .list(&RolloutList {
                service: Some(service.into()),
                environment: Some(environment.into()),
                active: false,
                limit: Some(1),
                cursor: None,
            })
            .await?;
        list.rollouts
            .into_iter()
            .next()
            .ok_or_else(|| not_found(format!("no rollout of {service} in {environment}")))
    }

    /// `rollout.get`.
    pub async fn get(&self, q: &RolloutRef) -> Result<Rollout, ErrorBody> {
        self.find(q.id, q.service.as_deref(), q.environment.as_deref())
            .await
    }

    /// `rollout.list`: newest first (rollout ids are UUID v7: key order is creation
    /// order), one page of at most the capped `limit`, going on after `cursor` (the
    /// last id of the page before). The ids come from the live index; only the
    /// rollouts a page shows, and at most ten pages' worth that filters drop, are read
    /// and decoded, as many at once as the page still lacks (at most [`LOAD_AHEAD`]),
    /// so that a page costs a few round trips to the bucket rather than one per rollout.
    pub async fn list(&self, q: &RolloutList) -> Result<Rollouts, ErrorBody> {
        let limit = toronto_protocol::page::limit(q.limit);
        let before = match &q.cursor {
            None => None,
            Some(c) => Some(c.parse::<Uuid>().map_err(|_| {
                bad(format!(
                    "`cursor` `{c}` is not one this service gave: pass the `next_cursor` of the page before"
                ))
            })?),
        };
        let cursor = before.map(|b| b.to_string());
        let budget = limit * 10;
        let ids: Vec<Uuid> = self
            .newest_rollout_ids(cursor.as_deref(), budget + 1)
            .await?
            .iter()
            .filter_map(|id| id.parse::<Uuid>().ok())
            .collect();
        let mut out = Vec::new();
        let mut scanned = 0;
        while scanned < ids.len() {
            if out.len() == limit || scanned == budget {
                return Ok(Rollouts {
                    rollouts: out,
                    next_cursor: Some(ids[scanned - 1].to_string()),
                });
            }
            let wanted = (limit - out.len()).min(budget - scanned).min(LOAD_AHEAD);
            let batch = &ids[scanned..(scanned + wanted).min(ids.len())];
            scanned += batch.len();
            let loaded = futures::future::join_all(batch.iter().map(|id| self.load(*id))).await;
            for found in loaded {
                let Some((r, _)) = found? else {
                    continue;
                };
                if q.service.as_ref().is_some_and(|s| s != &r.service)
                    || q.environment.as_ref().is_some_and(|e| e != &r.environment)
                    || (q.active && r.phase.is_final())
                {
                    continue;
                }
                out.push(r);
            }
        }
        Ok(Rollouts {
            rollouts: out,
            next_cursor: None,
        })
    }

    /// `rollout.promote`, `.abort`, `.pause`, `.resume`: recorded on the rollout for
    /// the instance running it (or carried out here when nobody runs it).
    pub async fn command(&self, c: &RolloutCommand, verb: Verb) -> Result<Rollout, ErrorBody> {
        let found = self
            .find(c.id, c.service.as_deref(), c.environment.as_deref())
            .await?;
        let by = c.by.clone().unwrap_or_else(|| "someone".into());
        let updated = self
            .records
            .update(found.id, |r| match apply_command(r, c, verb, &by) {
                Ok(Some(change)) => {
                    r.updated_at = Utc::now();
                    Edit::Save(Ok(Some(change)))
                }
                other => Edit::Keep(other),
            })
            .await
            .map_err(EngineError::from)?;
        let Some((r, answer)) = updated else {
            return Err(not_found(format!("no rollout {}", found.id)));
        };
        let Some(change) = answer? else {
            return Ok(r);
        };
        if let Some(what) = change.event {
            self.announce(what, &r).await;
        }
        if change.wake {
            self.enqueue(r.id).await?;
        }
        Ok(r)
    }
}

/// What a command changed on a rollout: whether the runner must be woken, and the
/// event to announce.
struct Change {
    wake: bool,
    event: Option<RolloutEvent>,
}

/// Records a command on a rollout; `None` when there is nothing to change.
fn apply_command(
    r: &mut Rollout,
    c: &RolloutCommand,
    verb: Verb,
    by: &str,
) -> Result<Option<Change>, ErrorBody> {
    if r.phase.is_final() {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("rollout {} has already ended ({:?})", r.id, r.phase).to_lowercase(),
        ));
    }
    let mut wake = false;
    let mut event = None;
    match verb {
        Verb::Abort => {
            r.pending = Some(PendingCommand::Abort {
                by: by.to_owned(),
                reason: c.reason.clone().unwrap_or_else(|| "no reason given".into()),
            });
            wake = r.phase == RolloutPhase::Paused;
            if wake {
                r.phase = RolloutPhase::Progressing;
            }
        }
        Verb::Pause => {
            if r.phase == RolloutPhase::Paused {
                return Ok(None);
            }
            r.pending = Some(PendingCommand::Pause { by: by.to_owned() });
        }
        Verb::Resume => {
            if r.phase != RolloutPhase::Paused {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("rollout {} is not paused", r.id),
                ));
            }
            r.phase = RolloutPhase::Progressing;
            r.reason = None;
            wake = true;
            event = Some(RolloutEvent::Resumed);
        }
        Verb::Promote
            if r.phase == RolloutPhase::Paused
                && r.steps.get(r.step_index).is_some_and(|s| {
                    s.state == toronto_protocol::rollout::RolloutStepState::Running
                }) =>
        {
            // Paused within a step (no analysis data, or `rollout.pause`): the runner
            // ends the step, unverified.
            r.phase = RolloutPhase::Progressing;
            r.reason = None;
            r.pending = Some(PendingCommand::Promote {
                by: by.to_owned(),
                full: c.full,
            });
            wake = true;
            event = Some(RolloutEvent::Promoted);
        }
        Verb::Promote if r.phase == RolloutPhase::Paused => {
            // Held between steps: go on to the next (or, `full`, the last).
            r.phase = RolloutPhase::Progressing;
            r.reason = None;
            if c.full && r.step_index < r.steps.len() {
                let last = r.steps.len() - 1;
                let now = Utc::now();
                for s in &mut r.steps[r.step_index..last] {
                    s.state = toronto_protocol::rollout::RolloutStepState::Done;
                    s.done_at = Some(now);
                }
                r.step_index = last;
            }
            wake = true;
            event = Some(RolloutEvent::Promoted);
        }
        Verb::Promote => {
            // Running: the runner ends the current pause (or skips to the end).
            r.pending = Some(PendingCommand::Promote {
                by: by.to_owned(),
                full: c.full,
            });
        }
    }
    Ok(Some(Change { wake, event }))
}
