//! Where the world is kept: in this process, or in KV shared by every deployer
//! (compare-and-set on each service record's revision), with a local mirror that a
//! KV watch keeps current.

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_runtime::work::{Created, Edit, Records, Saved};

use super::{Key, Mirrored, SimCluster, SimSvc};
use crate::target::TargetError;

/// The key prefix of the world's records in the deployer's bucket
/// (`sim.<service>.<environment>`).
pub const SIM_PREFIX: &str = "sim";

/// The lease (in the deployer's bucket) whose holder generates the shared world's
/// traffic.
pub const TRAFFIC_LEASE: &str = "deployer-sim-traffic";

/// Tries of a compare-and-set before the world is reported contended.
const TRIES: u32 = 32;

/// A loop of the shared world stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// The watch of the world's records could not be started or failed.
    #[error("cannot watch the simulated world: {0}")]
    Watch(#[source] kv::WatchError),
    /// The watch failed while running.
    #[error("the watch of the simulated world failed: {0}")]
    Watcher(#[source] kv::WatcherError),
    /// The watch or the subscription ended.
    #[error("the {0} ended")]
    Ended(&'static str),
    /// The traffic subscription could not be made.
    #[error("cannot hear the simulated traffic: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
}

/// The world in KV.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) records: Records<SimSvc>,
}

impl Shared {
    pub(super) fn new(kv: kv::Store) -> Self {
        Self {
            records: Records::new(kv, SIM_PREFIX, |_| false),
        }
    }
}

fn id(service: &str, environment: &str) -> String {
    format!("{service}.{environment}")
}

fn unavailable(e: impl std::fmt::Display) -> TargetError {
    TargetError::Unavailable {
        target: "simulated cluster",
        message: e.to_string(),
    }
}

impl SimCluster {
    /// One service's record, read from the world itself.
    pub(super) async fn load(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Option<SimSvc>, TargetError> {
        match &self.world {
            None => Ok(self
                .lock()
                .services
                .get(&(service.to_owned(), environment.to_owned()))
                .and_then(|m| m.svc.clone())),
            Some(w) => Ok(w
                .records
                .load(id(service, environment))
                .await
                .map_err(unavailable)?
                .map(|v| v.value)),
        }
    }

    /// Changes one service's record: `change` sees the newest record (or `init` when
    /// there is none; without `init`, nothing happens and the answer is `None`) and
    /// may be run again when another writer got there first.
    pub(super) async fn edit<R>(
        &self,
        service: &str,
        environment: &str,
        init: Option<SimSvc>,
        mut change: impl FnMut(&mut SimSvc) -> Result<Edit<R>, TargetError>,
    ) -> Result<Option<R>, TargetError> {
        let key = (service.to_owned(), environment.to_owned());
        let Some(world) = &self.world else {
            return self.edit_local(key, init, change);
        };
        let id = id(service, environment);
        for _ in 0..TRIES {
            let loaded = world.records.load(&id).await.map_err(unavailable)?;
            let (mut svc, revision) = match (loaded, &init) {
                (Some(v), _) => (v.value, Some(v.revision)),
                (None, Some(init)) => (init.clone(), None),
                (None, None) => return Ok(None),
            };
            let answer = match change(&mut svc)? {
                Edit::Keep(answer) => return Ok(Some(answer)),
                Edit::Save(answer) => answer,
            };
            let stored = match revision {
                Some(revision) => match world
                    .records
                    .save(&id, &svc, revision)
                    .await
                    .map_err(unavailable)?
                {
                    Saved::Stored(r) => Some(r),
                    Saved::Conflict => None,
                },
                None => match world.records.create(&id, &svc).await.map_err(unavailable)? {
                    Created::Stored(r) => Some(r),
                    Created::Exists => None,
                },
            };
            if let Some(revision) = stored {
                self.mirror(key, revision, Some(svc));
                return Ok(Some(answer));
            }
        }
        Err(unavailable(format!(
            "{service} in {environment} changed under every one of {TRIES} tries"
        )))
    }

    fn edit_local<R>(
        &self,
        key: Key,
        init: Option<SimSvc>,
        mut change: impl FnMut(&mut SimSvc) -> Result<Edit<R>, TargetError>,
    ) -> Result<Option<R>, TargetError> {
        let mut state = self.lock();
        let current = state.services.get(&key).and_then(|m| m.svc.clone());
        let Some(mut svc) = current.or(init) else {
            return Ok(None);
        };
        match change(&mut svc)? {
            Edit::Keep(answer) => Ok(Some(answer)),
            Edit::Save(answer) => {
                state.services.insert(
                    key,
                    Mirrored {
                        revision: 0,
                        svc: Some(svc),
                    },
                );
                Ok(Some(answer))
            }
        }
    }

    /// Removes every service of an environment from the world.
    pub(super) async fn remove_environment(&self, environment: &str) -> Result<(), TargetError> {
        let Some(world) = &self.world else {
            self.lock()
                .services
                .retain(|(_, env), _| env != environment);
            return Ok(());
        };
        let suffix = format!(".{environment}");
        for id in world.records.ids().await.map_err(unavailable)? {
            if let Some(service) = id.strip_suffix(&suffix) {
                let key = world.records.key(&id);
                world
                    .records
                    .kv()
                    .delete(key.as_str())
                    .await
                    .map_err(unavailable)?;
                self.forget(service, environment);
            }
        }
        Ok(())
    }

    fn forget(&self, service: &str, environment: &str) {
        let mut state = self.lock();
        if let Some(m) = state
            .services
            .get_mut(&(service.to_owned(), environment.to_owned()))
        {
            m.svc = None;
        }
    }

    /// Records `svc` (`None`: deleted) at `revision` unless a newer one is known.
    fn mirror(&self, key: Key, revision: u64, svc: Option<SimSvc>) {
        let mut state = self.lock();
        let known = state.services.get(&key).map(|m| m.revision);
        if known.is_none_or(|k| k < revision) {
            state.services.insert(key, Mirrored { revision, svc });
        }
    }

    /// Keeps the mirror of the shared world current from a KV watch until
    /// `shutdown` (a no-op for a process-local world).
    pub(super) async fn follow_world(self, shutdown: CancellationToken) -> Result<(), WorldError> {
        let Some(world) = &self.world else {
            shutdown.cancelled().await;
            return Ok(());
        };
        let mut watch = world
            .records
            .kv()
            .watch_with_history(format!("{SIM_PREFIX}.>"))
            .await
            .map_err(WorldError::Watch)?;
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = watch.next() => match next {
                    None => return Err(WorldError::Ended("simulated world watch")),
                    Some(Err(e)) => return Err(WorldError::Watcher(e)),
                    Some(Ok(entry)) => entry,
                },
            };
            let Some((service, environment)) = entry
                .key
                .strip_prefix(&format!("{SIM_PREFIX}."))
                .and_then(|rest| rest.split_once('.'))
            else {
                continue;
            };
            let key = (service.to_owned(), environment.to_owned());
            let svc = match entry.operation {
                kv::Operation::Put => {
                    match toronto_protocol::codec::from_json_bounded::<SimSvc>(&entry.value) {
                        Ok(svc) => Some(svc),
                        Err(e) => {
                            tracing::warn!(key = %entry.key, error = %e, "unreadable simulated-world record");
                            continue;
                        }
                    }
                }
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            self.mirror(key, entry.revision, svc);
        }
    }
}
