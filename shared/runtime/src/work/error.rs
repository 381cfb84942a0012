//! What can go wrong with durable work.

use async_nats::jetstream::kv;

use crate::jetstream::JetStreamError;

/// A KV or work-queue operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// An entry could not be read.
    #[error("cannot read {key}")]
    Read {
        /// The key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::EntryError,
    },
    /// The keys of a bucket could not be listed.
    #[error("cannot list the keys of the bucket")]
    Keys {
        /// The server's answer.
        #[source]
        source: kv::WatchError,
    },
    /// The key listing broke off.
    #[error("the key listing broke off")]
    KeyListing {
        /// The server's answer.
        #[source]
        source: kv::WatcherError,
    },
    /// The live index of a bucket's ids could not be filled or stopped following it.
    #[error("the index of the bucket's ids is down: {reason}")]
    Index {
        /// What happened.
        reason: String,
    },
    /// A stored record is not what its type says.
    #[error("{key} holds an unreadable record")]
    Decode {
        /// The key.
        key: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be serialised.
    #[error("cannot encode {key}")]
    Encode {
        /// The key.
        key: String,
        /// The serialiser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A new entry could not be created (other than because it exists).
    #[error("cannot create {key}")]
    Create {
        /// The key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::CreateError,
    },
    /// An entry could not be updated (other than because of a newer revision).
    #[error("cannot update {key}")]
    Update {
        /// The key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::UpdateError,
    },
    /// An entry could not be written.
    #[error("cannot write {key}")]
    Put {
        /// The key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::PutError,
    },
    /// Every try of a compare-and-set met a newer revision.
    #[error("{key} kept changing: gave up after {attempts} tries")]
    Contended {
        /// The key.
        key: String,
        /// Tries made.
        attempts: u32,
    },
    /// The work queue failed.
    #[error(transparent)]
    Queue(#[from] JetStreamError),
}

impl WorkError {
    /// Whether trying again later may help (everything but a record that cannot be
    /// read or written as its type).
    pub fn is_transient(&self) -> bool {
        !matches!(self, WorkError::Decode { .. } | WorkError::Encode { .. })
    }
}
