//! One active record per scope (e.g. one rollout per service and environment).

use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{Records, WorkError};

/// What taking a lock came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Taken {
    /// The lock is the asker's (taken now, or held already).
    Mine,
    /// Another record whose work has not ended holds it.
    HeldBy(Uuid),
}

/// A per-scope lock kept beside its records, under `<prefix>.<scope>`, holding the
/// id of the record it belongs to. A lock held by a record that has ended (or is
/// gone) is free to take over: a holder that died at its end never blocks a scope.
pub struct KeyLock<T> {
    records: Records<T>,
    prefix: &'static str,
}

impl<T> Clone for KeyLock<T> {
    fn clone(&self) -> Self {
        Self {
            records: self.records.clone(),
            prefix: self.prefix,
        }
    }
}

impl<T> std::fmt::Debug for KeyLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLock")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> KeyLock<T> {
    /// Locks under `<prefix>.<scope>` in the bucket of `records`.
    pub fn new(records: Records<T>, prefix: &'static str) -> Self {
        Self { records, prefix }
    }

    /// The key of a scope's lock.
    pub fn key(&self, scope: &str) -> String {
        format!("{}.{scope}", self.prefix)
    }

    fn kv(&self) -> &kv::Store {
        self.records.kv()
    }

    async fn entry(&self, key: &str) -> Result<Option<kv::Entry>, WorkError> {
        self.kv()
            .entry(key)
            .await
            .map_err(|source| WorkError::Read {
                key: key.to_owned(),
                source,
            })
    }

    /// Takes the lock of `scope` for record `holder`, taking it over from a holder
    /// that has ended; [`WorkError::Contended`] when it kept changing through every
    /// try of the records' retry policy.
    pub async fn take(&self, scope: &str, holder: Uuid) -> Result<Taken, WorkError> {
        let key = self.key(scope);
        let mine = Bytes::from(holder.to_string());
        let policy = self.records.policy();
        for _ in policy.tries() {
            match self.kv().create(key.as_str(), mine.clone()).await {
                Ok(_) => return Ok(Taken::Mine),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(source) => return Err(WorkError::Create { key, source }),
            }
            let Some(entry) = self.entry(&key).await? else {
                continue;
            };
            let current = holder_of(&entry);
            if current == Some(holder) {
                return Ok(Taken::Mine);
            }
            if let Some(other) = current
                && self
                    .records
                    .load(other)
                    .await?
                    .is_some_and(|r| !self.records.has_ended(&r.value))
            {
                return Ok(Taken::HeldBy(other));
            }
            // The holder ended without letting go: take over (unless someone else
            // moved first, then look again).
            if self
                .kv()
                .update(key.as_str(), mine.clone(), entry.revision)
                .await
                .is_ok()
            {
                return Ok(Taken::Mine);
            }
        }
        Err(policy.exhausted(key))
    }

    /// The record holding the lock of `scope`, if it has not ended.
    pub async fn active(&self, scope: &str) -> Result<Option<T>, WorkError> {
        let Some(entry) = self.entry(&self.key(scope)).await? else {
            return Ok(None);
        };
        let Some(id) = holder_of(&entry) else {
            return Ok(None);
        };
        Ok(self
            .records
            .load(id)
            .await?
            .map(|r| r.value)
            .filter(|r| !self.records.has_ended(r)))
    }

    /// The id of the record holding the lock of `scope`, whether or not it has ended.
    pub async fn holder(&self, scope: &str) -> Result<Option<Uuid>, WorkError> {
        Ok(self
            .entry(&self.key(scope))
            .await?
            .as_ref()
            .and_then(holder_of))
    }

    /// Lets go of the lock of `scope` if `holder` holds it. Someone having moved it on
    /// meanwhile is no failure.
    pub async fn release(&self, scope: &str, holder: Uuid) -> Result<(), WorkError> {
        let key = self.key(scope);
        if let Some(entry) = self.entry(&key).await?
            && holder_of(&entry) == Some(holder)
        {
            let _ = self
                .kv()
                .delete_expect_revision(key.as_str(), Some(entry.revision))
                .await;
        }
        Ok(())
    }
}

fn holder_of(entry: &kv::Entry) -> Option<Uuid> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    std::str::from_utf8(&entry.value)
        .ok()
        .and_then(|s| Uuid::parse_str(s).ok())
}
