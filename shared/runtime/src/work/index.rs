//! A live, in-memory index of the ids of one kind of [`Records`](super::Records), so
//! that a listing's page costs the same whatever the history: the newest ids before a
//! cursor come from a sorted set in memory instead of a key listing of the whole
//! bucket on every request.
//!
//! [`KeyIndex::run`] fills the index once (the bucket's last sequence, then one key
//! listing) and then follows every change after that sequence with a KV watch, so
//! nothing written in between is missed. Run it as a supervised loop: while it is
//! down the index says so ([`KeyIndex::newest`] answers `None`) and callers fall back
//! to listing the keys.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::{Records, WorkError};

#[derive(Debug, Default)]
struct State {
    live: bool,
    ids: BTreeSet<String>,
}

/// The ids under `<prefix>.` in a KV bucket, kept current by [`KeyIndex::run`].
#[derive(Debug, Clone)]
pub struct KeyIndex {
    kv: kv::Store,
    prefix: &'static str,
    state: Arc<RwLock<State>>,
}

impl KeyIndex {
    /// An index (not live until [`KeyIndex::run`] has filled it) of the ids under
    /// `<prefix>.` in `kv`.
    pub fn new(kv: kv::Store, prefix: &'static str) -> Self {
        Self {
            kv,
            prefix,
            state: Arc::default(),
        }
    }

    /// Whether the index follows the bucket now.
    pub fn is_live(&self) -> bool {
        self.state.read().expect("index lock").live
    }

    /// How many ids the index holds.
    pub fn len(&self) -> usize {
        self.state.read().expect("index lock").ids.len()
    }

    /// Whether the index holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `n` ids, greatest first, strictly before `before` when given; `None` while
    /// the index is not live. Costs `n`, whatever the number of ids.
    pub fn newest(&self, before: Option<&str>, n: usize) -> Option<Vec<String>> {
        let state = self.state.read().expect("index lock");
        if !state.live {
            return None;
        }
        let upper = match before {
            Some(b) => Bound::Excluded(b),
            None => Bound::Unbounded,
        };
        Some(
            state
                .ids
                .range::<str, _>((Bound::Unbounded, upper))
                .rev()
                .take(n)
                .cloned()
                .collect(),
        )
    }

    /// Like [`KeyIndex::newest`], but while the index is not live the ids come from a
    /// key listing of `records`' bucket (which costs the whole history).
    pub async fn newest_or_list<T>(
        &self,
        records: &Records<T>,
        before: Option<&str>,
        n: usize,
    ) -> Result<Vec<String>, WorkError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        if let Some(ids) = self.newest(before, n) {
            return Ok(ids);
        }
        let ids = records.ids().await?;
        let upper = match before {
            Some(b) => Bound::Excluded(b),
            None => Bound::Unbounded,
        };
        Ok(ids
            .range::<str, _>((Bound::Unbounded, upper))
            .rev()
            .take(n)
            .cloned()
            .collect())
    }

    /// Fills the index and follows the bucket until `stop` is cancelled (then `Ok`) or
    /// the watch fails or ends (then an error, for the supervisor to run it again).
    /// The index is not live outside this call.
    pub async fn run(&self, stop: CancellationToken) -> Result<(), WorkError> {
        let outcome = self.follow(stop).await;
        self.state.write().expect("index lock").live = false;
        outcome
    }

    async fn follow(&self, stop: CancellationToken) -> Result<(), WorkError> {
        let key_prefix = format!("{}.", self.prefix);
        // Everything after `last` comes through the watch; everything up to it is in
        // the listing that follows (which may also hold some later changes: applying
        // them twice changes nothing).
        let last = self
            .kv
            .stream
            .get_info()
            .await
            .map_err(|source| WorkError::Index {
                reason: source.to_string(),
            })?
            .state
            .last_sequence;
        let mut watch = self
            .kv
            .watch_from_revision(format!("{}>", key_prefix), last + 1)
            .await
            .map_err(|source| WorkError::Keys { source })?;
        let ids: BTreeSet<String> = self
            .kv
            .keys()
            .await
            .map_err(|source| WorkError::Keys { source })?
            .try_filter_map(|k| {
                let id = k.strip_prefix(&key_prefix).map(str::to_owned);
                async move { Ok(id) }
            })
            .try_collect()
            .await
            .map_err(|source| WorkError::KeyListing { source })?;
        {
            let mut state = self.state.write().expect("index lock");
            state.ids = ids;
            state.live = true;
        }
        loop {
            let entry = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                entry = watch.next() => entry,
            };
            let entry = match entry {
                Some(Ok(entry)) => entry,
                Some(Err(source)) => return Err(WorkError::KeyListing { source }),
                None => {
                    return Err(WorkError::Index {
                        reason: "the watch of the bucket ended".into(),
                    });
                }
            };
            let Some(id) = entry.key.strip_prefix(&key_prefix) else {
                continue;
            };
            let mut state = self.state.write().expect("index lock");
            match entry.operation {
                kv::Operation::Put => {
                    state.ids.insert(id.to_owned());
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    state.ids.remove(id);
                }
            }
        }
    }
}
