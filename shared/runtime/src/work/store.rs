//! Typed records in a JetStream KV bucket with compare-and-set on revision.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::marker::PhantomData;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::WorkError;

/// A record with the KV revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// The revision to compare against on the next save.
    pub revision: u64,
}

/// What a compare-and-set came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Saved {
    /// Stored at this new revision.
    Stored(u64),
    /// Someone stored a newer revision first: read it again and decide again.
    Conflict,
}

impl Saved {
    /// Whether it was stored.
    pub fn is_stored(self) -> bool {
        matches!(self, Saved::Stored(_))
    }
}

/// What creating a record came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Created {
    /// Stored at this revision.
    Stored(u64),
    /// The key already holds a record.
    Exists,
}

/// What an [`Records::update`] step decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit<R> {
    /// Store the changed record, then answer `R`.
    Save(R),
    /// Store nothing; answer `R`.
    Keep(R),
}

/// How often a compare-and-set is tried before [`WorkError::Contended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries, the first included.
    pub attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 10 }
    }
}

impl RetryPolicy {
    /// The tries, numbered from 1.
    pub fn tries(self) -> std::ops::RangeInclusive<u32> {
        1..=self.attempts.max(1)
    }

    /// The error once every try met a conflict.
    pub fn exhausted(self, key: impl Into<String>) -> WorkError {
        WorkError::Contended {
            key: key.into(),
            attempts: self.attempts.max(1),
        }
    }
}

/// Records of one type under `<prefix>.<id>` in a KV bucket. `ended` tells a record
/// whose work is over (a lock held by one is free to take).
pub struct Records<T> {
    kv: kv::Store,
    prefix: &'static str,
    ended: fn(&T) -> bool,
    policy: RetryPolicy,
    _record: PhantomData<fn() -> T>,
}

impl<T> Clone for Records<T> {
    fn clone(&self) -> Self {
        Self {
            kv: self.kv.clone(),
            prefix: self.prefix,
            ended: self.ended,
            policy: self.policy,
            _record: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Records<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("bucket", &self.kv.name)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> Records<T> {
    /// Records under `<prefix>.<id>` in `kv`.
    pub fn new(kv: kv::Store, prefix: &'static str, ended: fn(&T) -> bool) -> Self {
        Self {
            kv,
            prefix,
            ended,
            policy: RetryPolicy::default(),
            _record: PhantomData,
        }
    }

    /// The same records with another retry policy.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The retry policy of [`Records::update`].
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// The bucket.
    pub fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// The key of a record.
    pub fn key(&self, id: impl Display) -> String {
        format!("{}.{id}", self.prefix)
    }

    /// Whether the record's work is over.
    pub fn has_ended(&self, record: &T) -> bool {
        (self.ended)(record)
    }

    /// The record, if there is one (a deleted record is none).
    pub async fn load(&self, id: impl Display) -> Result<Option<Versioned<T>>, WorkError> {
        let key = self.key(id);
        let entry = self
            .kv
            .entry(key.as_str())
            .await
            .map_err(|source| WorkError::Read {
                key: key.clone(),
                source,
            })?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let value = toronto_protocol::codec::from_json_bounded(&entry.value)
                    .map_err(|source| WorkError::Decode { key, source })?;
                Ok(Some(Versioned {
                    value,
                    revision: entry.revision,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Stores a new record unless the key holds one.
    pub async fn create(&self, id: impl Display, value: &T) -> Result<Created, WorkError> {
        let key = self.key(id);
        let bytes = encode(&key, value)?;
        match self.kv.create(key.as_str(), bytes).await {
            Ok(revision) => Ok(Created::Stored(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Created::Exists),
            Err(source) => Err(WorkError::Create { key, source }),
        }
    }

    /// Stores the record if nobody changed it since `revision`.
    pub async fn save(
        &self,
        id: impl Display,
        value: &T,
        revision: u64,
    ) -> Result<Saved, WorkError> {
        let key = self.key(id);
        let bytes = encode(&key, value)?;
        match self.kv.update(key.as_str(), bytes, revision).await {
            Ok(revision) => Ok(Saved::Stored(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Saved::Conflict),
            Err(source) => Err(WorkError::Update { key, source }),
        }
    }

    /// Stores the record whatever the revision (for a record only one writer owns).
    pub async fn put(&self, id: impl Display, value: &T) -> Result<u64, WorkError> {
        let key = self.key(id);
        let bytes = encode(&key, value)?;
        self.kv
            .put(key.as_str(), bytes)
            .await
            .map_err(|source| WorkError::Put { key, source })
    }

    /// Reads, changes and saves a record, reading it again on every conflict up to the
    /// retry policy. `None` when there is no record; [`WorkError::Contended`] when
    /// every try met a conflict.
    pub async fn update<R>(
        &self,
        id: impl Display,
        mut change: impl FnMut(&mut T) -> Edit<R>,
    ) -> Result<Option<(T, R)>, WorkError> {
        let id = id.to_string();
        for _ in self.policy.tries() {
            let Some(Versioned {
                mut value,
                revision,
            }) = self.load(&id).await?
            else {
                return Ok(None);
            };
            match change(&mut value) {
                Edit::Keep(answer) => return Ok(Some((value, answer))),
                Edit::Save(answer) => {
                    if self.save(&id, &value, revision).await?.is_stored() {
                        return Ok(Some((value, answer)));
                    }
                }
            }
        }
        Err(self.policy.exhausted(self.key(id)))
    }

    /// The ids of every record, sorted, each once (a KV key listing may repeat one).
    pub async fn ids(&self) -> Result<BTreeSet<String>, WorkError> {
        let prefix = format!("{}.", self.prefix);
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|source| WorkError::Keys { source })?
            .try_collect()
            .await
            .map_err(|source| WorkError::KeyListing { source })?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect())
    }

    /// Every readable record (one that cannot be read is skipped).
    pub async fn all(&self) -> Result<Vec<T>, WorkError> {
        let mut out = Vec::new();
        for id in self.ids().await? {
            match self.load(&id).await {
                Ok(Some(v)) => out.push(v.value),
                Ok(None) | Err(WorkError::Decode { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Bytes, WorkError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|source| WorkError::Encode {
            key: key.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_counts_its_tries_and_names_the_key_when_exhausted() {
        let policy = RetryPolicy { attempts: 3 };
        assert_eq!(policy.tries().count(), 3);
        assert_eq!(RetryPolicy { attempts: 0 }.tries().count(), 1);
        let e = policy.exhausted("plan.1");
        assert!(matches!(e, WorkError::Contended { ref key, attempts: 3 } if key == "plan.1"));
        assert_eq!(e.to_string(), "plan.1 kept changing: gave up after 3 tries");
        assert!(e.is_transient());
    }

    #[test]
    fn saved_tells_stored_from_conflict() {
        assert!(Saved::Stored(4).is_stored());
        assert!(!Saved::Conflict.is_stored());
    }
}
