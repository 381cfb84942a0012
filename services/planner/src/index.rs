//! The queued plans of each service and environment, oldest first, in one KV entry per
//! scope (`queue.<service>.<environment>`, a JSON list of plan ids), so that waking the
//! next plan when a turn is released reads that scope's queue, never every plan.
//!
//! Ids are added when a plan is made and dropped when it takes its turn or is found to
//! have left the queue (ended, cancelled); every change is a compare-and-set.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use toronto_runtime::work::{RetryPolicy, WorkError};
use uuid::Uuid;

/// The largest queue entry read (bytes): about 20,000 queued plans of one scope.
const MAX_ENTRY: usize = 800 * 1024;

/// The queued plans per scope, beside the plans in their bucket.
#[derive(Debug, Clone)]
pub(crate) struct QueueIndex {
    kv: kv::Store,
    policy: RetryPolicy,
}

impl QueueIndex {
    /// The index in the plans' bucket.
    pub(crate) fn new(kv: kv::Store, policy: RetryPolicy) -> Self {
        Self { kv, policy }
    }

    fn key(scope: &str) -> String {
        format!("queue.{scope}")
    }

    /// The queued plan ids of `scope`, oldest first, with the entry's revision.
    async fn read(&self, key: &str) -> Result<(Vec<Uuid>, Option<u64>), WorkError> {
        let entry = self.kv.entry(key).await.map_err(|source| WorkError::Read {
            key: key.to_owned(),
            source,
        })?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok((Vec::new(), None));
        };
        if entry.value.len() > MAX_ENTRY {
            tracing::warn!(
                key,
                bytes = entry.value.len(),
                "queue index too large; read as empty"
            );
            return Ok((Vec::new(), Some(entry.revision)));
        }
        // A damaged entry is rebuilt from the plans that are queued later on.
        let ids = serde_json::from_slice(&entry.value).unwrap_or_default();
        Ok((ids, Some(entry.revision)))
    }

    /// Writes the ids unless the entry changed since `revision`; `false` on a conflict.
    async fn write(
        &self,
        key: &str,
        ids: &[Uuid],
        revision: Option<u64>,
    ) -> Result<bool, WorkError> {
        let value = Bytes::from(serde_json::to_vec(ids).unwrap_or_default());
        match revision {
            Some(revision) => Ok(self.kv.update(key, value, revision).await.is_ok()),
            None => match self.kv.create(key, value).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
                Err(source) => Err(WorkError::Create {
                    key: key.to_owned(),
                    source,
                }),
            },
        }
    }

    /// Changes the queue of `scope` with `edit` (which says whether it changed it).
    async fn edit(
        &self,
        scope: &str,
        mut edit: impl FnMut(&mut Vec<Uuid>) -> bool,
    ) -> Result<(), WorkError> {
        let key = Self::key(scope);
        for _ in self.policy.tries() {
            let (mut ids, revision) = self.read(&key).await?;
            if !edit(&mut ids) {
                return Ok(());
            }
            if self.write(&key, &ids, revision).await? {
                return Ok(());
            }
        }
        Err(self.policy.exhausted(key))
    }

    /// Adds a plan at the end of its scope's queue (once).
    pub(crate) async fn push(&self, scope: &str, id: Uuid) -> Result<(), WorkError> {
        self.edit(scope, |ids| {
            if ids.contains(&id) {
                return false;
            }
            ids.push(id);
            true
        })
        .await
    }

    /// Drops plans from their scope's queue.
    pub(crate) async fn remove(&self, scope: &str, gone: &[Uuid]) -> Result<(), WorkError> {
        if gone.is_empty() {
            return Ok(());
        }
        self.edit(scope, |ids| {
            let before = ids.len();
            ids.retain(|id| !gone.contains(id));
            ids.len() != before
        })
        .await
    }

    /// The queued plan ids of `scope`, oldest first.
    pub(crate) async fn queued(&self, scope: &str) -> Result<Vec<Uuid>, WorkError> {
        Ok(self.read(&Self::key(scope)).await?.0)
    }
}
