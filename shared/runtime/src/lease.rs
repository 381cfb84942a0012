//! A service-wide lease: which replica of a service does its single-writer work
//! (escalation deadlines, playbooks, SLO evaluation) now.
//!
//! The lease is one entry of the KV bucket `<prefix>_leases`, keyed by the lease's
//! name. A candidate takes a free entry with `create`, the owner renews it with
//! `update(key, value, revision)` every renew interval, and the KV revision of the
//! write that took it is the fencing token: a former owner's next compare-and-set
//! fails.
//!
//! Time is only ever measured on one clock at a time, so clocks need not agree:
//!
//! - The owner holds the lease until `sent + ttl - renew`, `sent` being when it sent
//!   its last successful renewal. A renewal that fails (or does not come back in time)
//!   makes it step down at that moment at the latest; a renewal refused because the
//!   revision moved makes it step down at once.
//! - A candidate takes over only once it has seen the same revision for a whole TTL
//!   (on its own clock, from when it first saw it: after it was written), with a
//!   compare-and-set on that revision. So the owner has stopped at least one renew
//!   interval before anyone else starts, and two owners never overlap.
//!
//! After the owner dies, a standby takes over within about `ttl + 2 × renew`; an owner
//! that shuts down deletes the entry, and a standby takes over at its next poll.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use toronto_protocol::status::{LeaseRole, LeaseStatus};

/// The bucket of the leases (`<prefix>_leases`) and the history it keeps.
pub const BUCKET: (&str, i64) = ("leases", 1);

/// How long a lease lasts and how often it is renewed (`TORONTO_LEASE_*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Milliseconds without renewal after which a standby takes over
    /// (`TORONTO_LEASE_TTL_SECONDS`).
    pub ttl_ms: u64,
    /// Milliseconds between renewals, and between a standby's looks at the lease
    /// (`TORONTO_LEASE_RENEW_SECONDS`); less than half the TTL.
    pub renew_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 5_000,
            renew_ms: 1_000,
        }
    }
}

impl LeaseConfig {
    /// The TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// The renew interval.
    pub fn renew(&self) -> Duration {
        Duration::from_millis(self.renew_ms)
    }

    /// Refuses a renew interval that leaves the owner no margin (at least half the TTL).
    pub fn check(&self) -> Result<(), String> {
        if self.renew_ms == 0 || self.renew_ms.saturating_mul(2) > self.ttl_ms {
            return Err(format!(
                "TORONTO_LEASE_RENEW_SECONDS ({} ms) must be above 0 and at most half of TORONTO_LEASE_TTL_SECONDS ({} ms)",
                self.renew_ms, self.ttl_ms
            ));
        }
        Ok(())
    }

    /// How long after sending a successful renewal the owner may still act.
    fn hold(&self) -> Duration {
        self.ttl().saturating_sub(self.renew())
    }
}

/// What the lease entry holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The instance holding it.
    holder: String,
}

/// A lease operation that failed (logged by the loop; the lease carries on).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The entry could not be read.
    #[error("cannot read lease {name}")]
    Read {
        /// The lease.
        name: String,
        /// The server's answer.
        #[source]
        source: kv::EntryError,
    },
    /// The entry could not be created.
    #[error("cannot create lease {name}")]
    Create {
        /// The lease.
        name: String,
        /// The server's answer.
        #[source]
        source: kv::CreateError,
    },
    /// The entry could not be updated (other than because its revision moved).
    #[error("cannot renew or take lease {name}")]
    Update {
        /// The lease.
        name: String,
        /// The server's answer.
        #[source]
        source: kv::UpdateError,
    },
    /// The revision moved: someone else holds the lease now.
    #[error("lease {name} is held by another instance (revision {revision} is stale)")]
    Lost {
        /// The lease.
        name: String,
        /// The revision this instance held.
        revision: u64,
    },
}

/// A view of one instance's standing with a lease: cheap to clone and to read.
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    rx: watch::Receiver<LeaseStatus>,
    me: Arc<str>,
}

impl LeaseWatch {
    /// The standing now.
    pub fn current(&self) -> LeaseStatus {
        self.rx.borrow().clone()
    }

    /// Whether this instance owns the lease now.
    pub fn is_owner(&self) -> bool {
        self.rx.borrow().role == LeaseRole::Owner
    }

    /// The fencing token while owner.
    pub fn token(&self) -> Option<u64> {
        let s = self.rx.borrow();
        (s.role == LeaseRole::Owner).then_some(s.token).flatten()
    }

    /// Whether this instance still owns the lease under `token` (work started under a
    /// token checks it before it writes).
    pub fn holds(&self, token: u64) -> bool {
        self.token() == Some(token)
    }

    /// The instance holding the lease as last seen (this one when owner).
    pub fn holder(&self) -> Option<String> {
        self.rx.borrow().holder.clone()
    }

    /// Whether this instance may write what its single-writer work keeps: it owns the
    /// lease, or it let the lease go at shutdown and nobody has taken it since (it
    /// writes what it had left). A deposed owner may not.
    pub fn may_write(&self) -> bool {
        let s = self.rx.borrow();
        s.role == LeaseRole::Owner || s.holder.as_deref() == Some(&*self.me)
    }

    /// This instance's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.rx.clone()
    }
}

struct Held {
    token: u64,
    revision: u64,
    until: Instant,
}

struct Seen {
    revision: u64,
    since: Instant,
}

/// One instance's candidacy for a lease: [`Candidate::run`] keeps it (renews while
/// owner, watches for a lapsed owner while standby) until shutdown.
pub struct Candidate {
    kv: kv::Store,
    name: String,
    me: String,
    config: LeaseConfig,
    tx: Arc<watch::Sender<LeaseStatus>>,
    held: Option<Held>,
    seen: Option<Seen>,
    owner_gauge: Gauge,
    takeovers: Counter,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("name", &self.name)
            .field("me", &self.me)
            .field("token", &self.held.as_ref().map(|h| h.token))
            .finish()
    }
}

impl Candidate {
    /// A standby candidate `me` (a unique instance id) for lease `name` in `kv`.
    pub fn new(kv: kv::Store, name: &str, me: &str, config: LeaseConfig) -> (Self, LeaseWatch) {
        let (tx, rx) = watch::channel(LeaseStatus {
            name: name.to_owned(),
            role: LeaseRole::Standby,
            token: None,
            holder: None,
        });
        let candidate = Self {
            kv,
            name: name.to_owned(),
            me: me.to_owned(),
            config,
            tx: Arc::new(tx),
            held: None,
            seen: None,
            owner_gauge: Gauge::default(),
            takeovers: Counter::default(),
        };
        (
            candidate,
            LeaseWatch {
                rx,
                me: Arc::from(me),
            },
        )
    }

    /// Registers `lease_owner` (1 while owner) and `lease_takeovers` (times this
    /// instance took the lease) in `metrics`.
    pub fn register_metrics(&self, metrics: &crate::Metrics) {
        metrics.register(
            "lease_owner",
            "1 while this instance owns its service's lease, else 0",
            self.owner_gauge.clone(),
        );
        metrics.register(
            "lease_takeovers",
            "Times this instance took its service's lease",
            self.takeovers.clone(),
        );
    }

    /// Keeps the lease until `shutdown`, then lets it go (deletes the entry, so that a
    /// standby takes over at its next look). Errors are logged; it never ends early.
    pub async fn run(
        &mut self,
        shutdown: CancellationToken,
    ) -> Result<(), std::convert::Infallible> {
        loop {
            if let Err(e) = self.step().await {
                tracing::warn!(lease = %self.name, error = %e, "lease");
            }
            let mut wait = self.config.renew();
            if let Some(h) = &self.held {
                wait = wait.min(h.until.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return Ok(());
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: renews the lease when held (stepping down when that fails past the
    /// hold time), else looks at it and takes it when free or lapsed.
    pub async fn step(&mut self) -> Result<(), LeaseError> {
        match self.held.take() {
            Some(held) => self.renew(held).await,
            None => self.look().await,
        }
    }

    async fn renew(&mut self, held: Held) -> Result<(), LeaseError> {
        let sent = Instant::now();
        if sent >= held.until {
            self.step_down(
                held.revision,
                "the lease ran out before it could be renewed",
            );
            return Ok(());
        }
        let update = self.kv.update(&self.name, self.record(), held.revision);
        match tokio::time::timeout(held.until - sent, update).await {
            Ok(Ok(revision)) => {
                self.held = Some(Held {
                    revision,
                    until: sent + self.config.hold(),
                    ..held
                });
                Ok(())
            }
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                self.step_down(held.revision, "another instance took the lease");
                self.seen = None;
                Err(LeaseError::Lost {
                    name: self.name.clone(),
                    revision: held.revision,
                })
            }
            Ok(Err(source)) => {
                if Instant::now() >= held.until {
                    self.step_down(held.revision, "the lease could not be renewed in time");
                } else {
                    self.held = Some(held);
                }
                Err(LeaseError::Update {
                    name: self.name.clone(),
                    source,
                })
            }
            Err(_) => {
                self.step_down(held.revision, "the renewal did not come back in time");
                Ok(())
            }
        }
    }

    /// Steps down now: stops the owner's work (through the watch), and remembers the
    /// own last revision as lapsed (this instance may take it back at once if nobody
    /// else did).
    fn step_down(&mut self, revision: u64, why: &str) {
        tracing::warn!(lease = %self.name, instance = %self.me, why, "stepping down: standby now");
        let lapsed = Instant::now()
            .checked_sub(self.config.ttl())
            .unwrap_or_else(Instant::now);
        self.seen = Some(Seen {
            revision,
            since: lapsed,
        });
        self.publish(LeaseRole::Standby, None, None);
    }

    async fn look(&mut self) -> Result<(), LeaseError> {
        let entry = self
            .kv
            .entry(&self.name)
            .await
            .map_err(|source| LeaseError::Read {
                name: self.name.clone(),
                source,
            })?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            // Free (never taken, or let go): take it.
            return self.take(None).await;
        };
        let holder = serde_json::from_slice::<Record>(&entry.value)
            .ok()
            .map(|r| r.holder);
        let now = Instant::now();
        match &self.seen {
            Some(s)
                if s.revision == entry.revision
                    && now.duration_since(s.since) >= self.config.ttl() =>
            {
                return self.take(Some(entry.revision)).await;
            }
            Some(s) if s.revision == entry.revision => {}
            _ => {
                self.seen = Some(Seen {
                    revision: entry.revision,
                    since: now,
                })
            }
        }
        if self.tx.borrow().holder != holder {
            self.publish(LeaseRole::Standby, None, holder);
        }
        Ok(())
    }

    /// Takes the lease: creates the entry, or replaces revision `lapsed`.
    async fn take(&mut self, lapsed: Option<u64>) -> Result<(), LeaseError> {
        let sent = Instant::now();
        let taken = match lapsed {
            None => match self.kv.create(&self.name, self.record()).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                Err(source) => {
                    return Err(LeaseError::Create {
                        name: self.name.clone(),
                        source,
                    });
                }
            },
            Some(revision) => match self.kv.update(&self.name, self.record(), revision).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                Err(source) => {
                    return Err(LeaseError::Update {
                        name: self.name.clone(),
                        source,
                    });
                }
            },
        };
        match taken {
            Some(revision) => {
                self.held = Some(Held {
                    token: revision,
                    revision,
                    until: sent + self.config.hold(),
                });
                self.seen = None;
                self.takeovers.inc();
                tracing::info!(lease = %self.name, instance = %self.me, token = revision, "took the lease: owner now");
                self.publish(LeaseRole::Owner, Some(revision), Some(self.me.clone()));
            }
            // Someone else was quicker; look again next time.
            None => self.seen = None,
        }
        Ok(())
    }

    /// Lets the lease go: standby first (the work stops), then the entry is deleted
    /// if it is still this instance's revision.
    async fn release(&mut self) {
        let Some(held) = self.held.take() else { return };
        // Standby, the last holder: the work stops, and what it left may be written.
        self.publish(LeaseRole::Standby, None, Some(self.me.clone()));
        let delete = self
            .kv
            .delete_expect_revision(&self.name, Some(held.revision));
        match tokio::time::timeout(self.config.renew(), delete).await {
            Ok(Ok(())) => tracing::info!(lease = %self.name, "let the lease go"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %e, "cannot let the lease go; it lapses after its TTL")
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, "letting the lease go timed out; it lapses after its TTL")
            }
        }
    }

    fn record(&self) -> bytes::Bytes {
        serde_json::to_vec(&Record {
            holder: self.me.clone(),
        })
        .unwrap_or_default()
        .into()
    }

    fn publish(&self, role: LeaseRole, token: Option<u64>, holder: Option<String>) {
        self.owner_gauge.set(i64::from(role == LeaseRole::Owner));
        self.tx.send_replace(LeaseStatus {
            name: self.name.clone(),
            role,
            token,
            holder,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renew_interval_leaves_the_owner_a_margin() {
        assert!(LeaseConfig::default().check().is_ok());
        let tight = LeaseConfig {
            ttl_ms: 1_000,
            renew_ms: 600,
        };
        assert!(tight.check().unwrap_err().contains("at most half"));
        let zero = LeaseConfig {
            ttl_ms: 1_000,
            renew_ms: 0,
        };
        assert!(zero.check().is_err());
        // The owner acts at most until a renew interval before anyone may take over.
        assert_eq!(LeaseConfig::default().hold(), Duration::from_secs(4));
    }

    #[test]
    fn a_watch_reports_the_token_only_while_owner() {
        let (tx, rx) = watch::channel(LeaseStatus {
            name: "x".into(),
            role: LeaseRole::Standby,
            token: None,
            holder: Some("b".into()),
        });
        let w = LeaseWatch {
            rx,
            me: Arc::from("a"),
        };
        assert!(!w.is_owner());
        assert!(!w.may_write());
        assert_eq!(w.token(), None);
        assert_eq!(w.holder().as_deref(), Some("b"));
        tx.send_replace(LeaseStatus {
            name: "x".into(),
            role: LeaseRole::Owner,
            token: Some(7),
            holder: Some("a".into()),
        });
        assert!(w.is_owner());
        assert!(w.holds(7));
        assert!(!w.holds(6));
        assert!(w.may_write());
    }
}
