//! Durable work shared by the planner's plans and the deployer's rollouts.
//!
//! - [`Records`]: typed records in a JetStream KV bucket, every change a
//!   compare-and-set on the entry's revision, with one [`RetryPolicy`] and one outcome
//!   when its tries run out ([`WorkError::Contended`]).
//! - [`lease`]: who works on a record now. A lease is written into the record, so
//!   the revision of the write that took it is its fencing token: a former holder's
//!   next compare-and-set fails.
//! - [`KeyIndex`]: the ids of one kind of record in memory, kept current by a KV
//!   watch, so that a listing's page does not grow with history.
//! - [`KeyLock`]: one active record per scope (one plan, one rollout per service and
//!   environment), taken over when its holder has ended without letting go.
//! - [`WorkQueue`]: the work-queue stream of "advance record X" messages, and
//!   [`drive`], which advances one record for as long as its delivery lasts,
//!   with progress acks, on top of [`crate::jetstream::run_consumer`].

mod error;
mod index;
pub mod lease;
mod lock;
mod queue;
mod store;

pub use error::WorkError;
pub use index::KeyIndex;
pub use lease::Claim;
pub use lock::{KeyLock, Taken};
pub use queue::{Driven, Next, WorkQueue, drive};
pub use store::{Created, Edit, Records, RetryPolicy, Saved, Versioned};
