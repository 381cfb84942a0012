//! The replay guard: a signed request is taken once. Its signed-at time must be
//! within the window of now, and its signature must be new; signatures are kept in a
//! KV bucket whose entries expire after twice the window, so every replica sees them.
//!
//! The guard keys on the signature, not the envelope id: a client that retries a
//! request (same envelope id, signed again) is not a replay, and the service's own
//! idempotency answers it; the same signed bytes sent twice are.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use chrono::{DateTime, Utc};

use super::{AuthError, Refusal};

/// Refuses signed requests outside the time window or seen before.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    store: Store,
    window: Duration,
}

impl ReplayGuard {
    /// A guard over `store` (created with a `max_age` of at least twice `window`).
    pub fn new(store: Store, window: Duration) -> Self {
        Self { store, window }
    }

    /// How far the signed-at time may be from now, either way.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Refuses a signed-at time outside the window.
    pub fn check_time(&self, signed_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Refusal> {
        let skew = (now - signed_at).abs().to_std().unwrap_or(Duration::MAX);
        if skew > self.window {
            return Err(Refusal::Stale {
                signed_at,
                window_secs: self.window.as_secs(),
            });
        }
        Ok(())
    }

    /// Records `signature` (a verified base64url signature, a valid KV key) of the
    /// request with envelope id `id`; refuses it if it was recorded before.
    pub async fn check_new(&self, signature: &str, id: &str) -> Result<(), Refusal> {
        match self.store.create(signature, bytes::Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                Err(Refusal::Replayed { id: id.to_owned() })
            }
            Err(e) => Err(Refusal::Unavailable(AuthError::Bucket(Box::new(e)))),
        }
    }
}
