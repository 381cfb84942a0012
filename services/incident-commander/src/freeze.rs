//! Blast-radius freezes. While an incident of a freezing severity (SEV1 and SEV2 by
//! default) is open, the services it affects and their direct dependents and
//! dependencies (from the policy's dependency map) are frozen in its environment:
//! rollouts in flight there are paused through the deployer's `rollout.pause`, and the
//! planner refuses new deploys to them unless the deploy is the incident's fix (it
//! asks `incident.freeze.list`). The freeze and its lifting are events
//! (`freeze.started`, `freeze.lifted`) and timeline entries. An admin may lift a
//! freeze early with a reason (`incident.freeze.lift`); resolving the incident lifts
//! it, and the paused rollouts resume or are aborted as the policy says. Freezes are
//! kept in the incidents bucket (`freeze.<incident id>`), so a restart keeps them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use toronto_protocol::incidents::{
    Freeze, FreezeEvent, FreezeList, Freezes, IncidentAction, IncidentEventKind, Severity,
};
use toronto_protocol::rollout::{Rollout, RolloutCommand, RolloutList, Rollouts};
use toronto_protocol::{
    Encoding, Envelope, ErrorBody, ErrorCode, EventKind, Message, ServiceKind, Subjects,
};
use toronto_runtime::rpc::{CallError, call};
use toronto_runtime::{Request, RuntimeError, ServiceRuntime};
use uuid::Uuid;

use crate::engine::{Engine, derived_id};

/// Who lifts a freeze when its incident resolves.
pub const SELF: &str = "incident-commander";
const KEY_PREFIX: &str = "freeze.";

/// The policy's `freeze:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FreezePolicy {
    /// Severities that freeze (empty: no freeze).
    pub severities: Vec<Severity>,
    /// The service-dependency map: each service and the services it depends on. A
    /// freeze covers the affected services, what they depend on, and what depends on
    /// them (one step each way).
    pub dependencies: BTreeMap<String, Vec<String>>,
    /// What paused rollouts do when the freeze lifts: `resume` or `abort`.
    pub on_lift: OnLift,
}

impl Default for FreezePolicy {
    fn default() -> Self {
        Self {
            // Opt-in: a policy names the severities that freeze (e.g. sev1 and sev2).
            severities: Vec::new(),
            dependencies: BTreeMap::new(),
            on_lift: OnLift::Resume,
        }
    }
}

/// What paused rollouts do when a freeze lifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLift {
    /// `rollout.resume`.
    Resume,
    /// `rollout.abort` (back to the previous version).
    Abort,
}

impl FreezePolicy {
    /// The blast radius of `affected`: them, their direct dependencies and direct
    /// dependents.
    pub fn blast_radius(&self, affected: &[String]) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = affected.iter().cloned().collect();
        for s in affected {
            if let Some(deps) = self.dependencies.get(s) {
                out.extend(deps.iter().cloned());
            }
            for (dependent, deps) in &self.dependencies {
                if deps.contains(s) {
                    out.insert(dependent.clone());
                }
            }
        }
        out
    }
}

/// A freeze request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// No freeze in force for this incident.
    #[error("incident {0} has no freeze in force")]
    NotFrozen(Uuid),
    /// Lifting early needs a reason.
    #[error("reason: lifting a freeze early needs a reason")]
    NoReason,
    /// The freeze could not be written.
    #[error("cannot write the freeze")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<FreezeError> for ErrorBody {
    fn from(e: FreezeError) -> Self {
        let code = match e {
            FreezeError::NotFrozen(_) => ErrorCode::NotFound,
            FreezeError::NoReason => ErrorCode::BadRequest,
            FreezeError::Store(_) => ErrorCode::Unavailable,
        };
        ErrorBody::new(code, e.to_string())
    }
}

/// The freezes and how to act on them.
pub struct Freezer {
    engine: Arc<Engine>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    source: String,
    timeout: Duration,
    store: kv::Store,
    freezes: Mutex<BTreeMap<Uuid, Freeze>>,
}

impl std::fmt::Debug for Freezer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freezer").finish_non_exhaustive()
    }
}

impl Freezer {
    /// A freezer over the incidents bucket, with the freezes kept there.
    pub async fn start(
        rt: &ServiceRuntime,
        engine: Arc<Engine>,
        store: kv::Store,
    ) -> Result<Arc<Self>, RuntimeError> {
        let freezes = load(&store).await?;
        Ok(Arc::new(Self {
            engine,
            client: rt.client.clone(),
            js: rt.js.clone(),
            subjects: rt.subjects.clone(),
            source: rt.source(),
            timeout: rt.config.nats.request_timeout(),
            store,
            freezes: Mutex::new(freezes),
        }))
    }

    /// Reads the freezes again from the bucket (a replica that takes over).
    pub async fn reload(&self) -> Result<(), RuntimeError> {
        *self.freezes.lock().await = load(&self.store).await?;
        Ok(())
    }

    fn policy(&self) -> &FreezePolicy {
        &self.engine.settings.policy.freeze
    }

    async fn ask<Req: Message, Resp: Message>(
        &self,
        verb: &str,
        data: Req,
    ) -> Result<Resp, CallError> {
        let env = Envelope::builder(self.source.clone(), data).build();
        let subject = self.subjects.command(ServiceKind::Deployer, verb);
        call::<Req, Resp>(&self.client, &subject, &env, Encoding::Json, self.timeout)
            .await
            .map(|r| r.data)
    }

    async fn save(&self, f: &Freeze) -> Result<(), FreezeError> {
        let key = format!("{KEY_PREFIX}{}", f.incident_id);
        let value = serde_json::to_vec(f).map_err(|e| FreezeError::Store(Box::new(e)))?;
        self.store
            .put(key, value.into())
            .await
            .map(|_| ())
            .map_err(|e| FreezeError::Store(Box::new(e)))
    }

    async fn forget(&self, id: Uuid) {
        if let Err(e) = self.store.purge(format!("{KEY_PREFIX}{id}")).await {
            tracing::warn!(incident = %id, error = %e, "cannot delete a freeze record");
        }
    }

    async fn announce(&self, what: FreezeEvent, f: &Freeze) {
        let mut env = Envelope::builder(self.source.clone(), f.clone())
            .subject(f.incident_id.to_string())
            .event("freeze", what.as_str())
            .build();
        env.id =
            derived_id(&format!("freeze:{}:{what}:{}", f.incident_id, f.started_at)).to_string();
        let subject = what.subject(&self.subjects);
        if let Err(e) = toronto_runtime::jetstream::publish_envelope(&self.js, &subject, &env).await
        {
            tracing::error!(subject, error = %e, "cannot publish a freeze event");
        }
    }

    /// Rollouts in flight in `environment` for these services, except rollbacks: a
    /// rollback is the remedy (a playbook's or a human's), never paused by a freeze.
    async fn in_flight(&self, environment: &str, services: &BTreeSet<String>) -> Vec<Rollout> {
        let query = RolloutList {
            service: None,
            environment: Some(environment.to_owned()),
            active: true,
            limit: Some(500),
            cursor: None,
        };
        match self.ask::<_, Rollouts>("rollout.list", query).await {
            Ok(r) => r
                .rollouts
                .into_iter()
                .filter(|r| services.contains(&r.service) && !r.is_rollback)
                .collect(),
            Err(CallError::NoResponders(_)) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list rollouts to pause");
                Vec::new()
            }
        }
    }

    async fn command(&self, verb: &str, id: Uuid, reason: String) -> Result<(), String> {
        let cmd = RolloutCommand {
            id: Some(id),
            service: None,
            environment: None,
            by: Some(SELF.into()),
            reason: Some(reason),
            full: false,
        };
        self.ask::<_, Rollout>(verb, cmd)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Freezes what newly severe incidents touch and lifts the freezes of incidents
    /// that resolved (or became milder). Run on every tick.
    pub async fn sweep(&self) {
        let severe = self.engine.severe_open(&self.policy().severities);
        let open: BTreeSet<Uuid> = self.engine.open_ids();
        let mut freezes = self.freezes.lock().await;
        for inc in &severe {
            if freezes.contains_key(&inc.id) {
                continue;
            }
            let mut affected = inc.services.clone();
            if !affected.contains(&inc.service) {
                affected.insert(0, inc.service.clone());
            }
            let radius = self.policy().blast_radius(&affected);
            let mut f = Freeze {
                incident_id: inc.id,
                title: inc.title.clone(),
                severity: inc.severity,
                environment: inc.environment.clone(),
                affected,
                services: radius.iter().cloned().collect(),
                started_at: chrono::Utc::now(),
                paused_rollouts: Vec::new(),
                lifted_at: None,
                lifted_by: None,
                lift_reason: None,
            };
            // Recorded before anything is paused, so a crash cannot leave a pause
            // nobody lifts.
            if let Err(e) = self.save(&f).await {
                tracing::error!(incident = %inc.id, error = %e, "cannot record a freeze; retrying next tick");
                continue;
            }
            let mut notes = Vec::new();
            for r in self.in_flight(&inc.environment, &radius).await {
                let why = format!("frozen by incident {}", inc.id);
                match self.command("rollout.pause", r.id, why).await {
                    Ok(()) => {
                        f.paused_rollouts.push(r.id);
                        notes.push(format!("paused rollout {} of {}", r.id, r.service));
                    }
                    Err(e) => notes.push(format!(
                        "cannot pause rollout {} of {}: {e}",
                        r.id, r.service
                    )),
                }
            }
            if let Err(e) = self.save(&f).await {
                tracing::error!(incident = %inc.id, error = %e, "cannot record paused rollouts");
            }
            let mut text = format!(
                "freeze: {} in {} take no new change while this incident is open",
                f.services.join(", "),
                f.environment
            );
            for n in notes {
                text.push_str("; ");
                text.push_str(&n);
            }
            self.engine
                .remark(inc.id, IncidentEventKind::Frozen, text, Some(SELF));
            self.announce(FreezeEvent::Started, &f).await;
            freezes.insert(inc.id, f);
        }
        let severe_ids: BTreeSet<Uuid> = severe.iter().map(|i| i.id).collect();
        let ended: Vec<Uuid> = freezes
            .iter()
            .filter(|(id, f)| {
                !severe_ids.contains(id) && (f.lifted_at.is_none() || !open.contains(id))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            let Some(mut f) = freezes.remove(&id) else {
                continue;
            };
            if f.lifted_at.is_none() {
                let why = if open.contains(&id) {
                    "the incident is no longer severe enough to freeze"
                } else {
                    "the incident is resolved"
                };
                self.lift(&mut f, SELF, why).await;
            }
            if open.contains(&id) {
                // Milder but open: kept as lifted, so it does not freeze again.
                let _ = self.save(&f).await;
                freezes.insert(id, f);
            } else {
                self.forget(id).await;
            }
        }
    }

    /// Lifts a freeze: paused rollouts resume or abort, event and timeline entry.
    async fn lift(&self, f: &mut Freeze, by: &str, reason: &str) {
        let verb = match self.policy().on_lift {
            OnLift::Resume => "rollout.resume",
            OnLift::Abort => "rollout.abort",
        };
        let mut notes = Vec::new();
        for id in f.paused_rollouts.clone() {
            let why = format!("freeze of incident {} lifted: {reason}", f.incident_id);
            match self.command(verb, id, why).await {
                Ok(()) => notes.push(format!("{verb} {id}")),
                Err(e) => notes.push(format!("{verb} {id} failed: {e}")),
            }
        }
        f.lifted_at = Some(chrono::Utc::now());
        f.lifted_by = Some(by.to_owned());
        f.lift_reason = Some(reason.to_owned());
        let mut text = format!("freeze lifted by {by}: {reason}");
        for n in notes {
            text.push_str("; ");
            text.push_str(&n);
        }
        self.engine
            .remark(f.incident_id, IncidentEventKind::Unfrozen, text, Some(by));
        self.announce(FreezeEvent::Lifted, f).await;
    }

    /// `incident.freeze.lift`: an admin lifts a freeze early, with a reason.
    pub async fn lift_early(&self, req: &IncidentAction) -> Result<Freeze, FreezeError> {
        let reason = req
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or(FreezeError::NoReason)?;
        let mut freezes = self.freezes.lock().await;
        let f = freezes
            .get_mut(&req.id)
            .filter(|f| f.lifted_at.is_none())
            .ok_or(FreezeError::NotFrozen(req.id))?;
        self.lift(f, &req.by, reason).await;
        self.save(f).await?;
        Ok(f.clone())
    }

    /// `incident.freeze.list`: the freezes in force.
    pub async fn list(&self, q: &FreezeList) -> Freezes {
        let freezes = self.freezes.lock().await;
        Freezes {
            freezes: freezes
                .values()
                .filter(|f| f.lifted_at.is_none())
                .filter(|f| q.service.as_ref().is_none_or(|s| f.services.contains(s)))
                .filter(|f| q.environment.as_ref().is_none_or(|e| &f.environment == e))
                .cloned()
                .collect(),
        }
    }
}

/// The freezes kept in the incidents bucket.
async fn load(store: &kv::Store) -> Result<BTreeMap<Uuid, Freeze>, RuntimeError> {
    let mut freezes = BTreeMap::new();
    let keys: Vec<String> = match store.keys().await {
        Ok(k) => k.filter_map(|k| async move { k.ok() }).collect().await,
        Err(e) => {
            return Err(RuntimeError::Restore {
                from: format!("KV bucket {}", store.name),
                source: Box::new(e),
            });
        }
    };
    for key in keys.into_iter().filter(|k| k.starts_with(KEY_PREFIX)) {
        if let Ok(Some(v)) = store.get(&key).await
            && let Ok(f) = serde_json::from_slice::<Freeze>(&v)
        {
            freezes.insert(f.incident_id, f);
        }
    }
    Ok(freezes)
}

/// Registers `incident.freeze.list` and `incident.freeze.lift`, and runs the sweep
/// every `tick` (supervised by the runtime).
pub async fn run(
    rt: &ServiceRuntime,
    freezer: Arc<Freezer>,
    tick: Duration,
    ownership: crate::replica::Ownership,
) -> Result<(), RuntimeError> {
    let f = freezer.clone();
    rt.endpoint("freeze.list", move |req: Request<FreezeList>| {
        let f = f.clone();
        async move { Ok::<_, ErrorBody>(f.list(req.data()).await) }
    })
    .await?;
    let f = freezer.clone();
    rt.endpoint("freeze.lift", move |req: Request<IncidentAction>| {
        let f = f.clone();
        async move { f.lift_early(req.data()).await.map_err(ErrorBody::from) }
    })
    .await?;
    let token: CancellationToken = rt.shutdown_token();
    // The sweep is the owner's work (it pauses and resumes rollouts).
    rt.spawn_background("freezes", move || {
        let (freezer, token, ownership) = (freezer.clone(), token.clone(), ownership.clone());
        async move {
            ownership
                .each_term(&token, |stop| {
                    let freezer = freezer.clone();
                    async move {
                        let mut every = tokio::time::interval(tick);
                        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                                _ = every.tick() => freezer.sweep().await,
                            }
                        }
                    }
                })
                .await
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blast_radius_is_one_step_each_way_on_the_dependency_map() {
        let policy: FreezePolicy = serde_yaml_ng::from_str(
            "dependencies:\n  web: [api]\n  api: [db, cache]\n  batch: [db]\n  admin: [web]\non_lift: abort\n",
        )
        .unwrap();
        let radius = policy.blast_radius(&["api".to_owned()]);
        let radius: Vec<&str> = radius.iter().map(String::as_str).collect();
        assert_eq!(
            radius,
            ["api", "cache", "db", "web"],
            "not admin (two steps), not batch"
        );
        assert_eq!(policy.on_lift, OnLift::Abort);
        assert!(
            FreezePolicy::default().severities.is_empty(),
            "freezes are opt-in"
        );
    }
}
