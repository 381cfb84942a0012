//! Replicas: every replica serves HTTP intake and requests, one owns the work.
//!
//! The replicas share the lease `incident-commander` ([`toronto_runtime::lease`]). The
//! single-writer work (the engine fed by the alert consumer, escalation deadlines,
//! playbooks, rollout events, housekeeping, freezes and the outbox sender, which
//! writes delivery results on the timeline) runs only on the owner, in *terms*: a
//! replica that takes the lease first restores the engine from KV, then starts the
//! work under the term's token; when it loses the lease, the token is cancelled and
//! the work stops. Requests (NATS) are forwarded to the owner by the service host and
//! HTTP intake by [`crate::intake`], both routed by [`Ownership`]: served here only once
//! the term has begun, so never by an engine still being restored. The publisher writes only while this
//! replica owns the lease (or has just let it go at shutdown), so a replica that lost
//! the lease does not overwrite the new owner's records.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use toronto_protocol::status::LeaseRole;
use toronto_runtime::lease::LeaseWatch;
use toronto_runtime::service::{OwnerRoute, Route};

/// The lease's name (its key in `<prefix>_leases`).
pub const LEASE: &str = "incident-commander";

/// One stretch of ownership: the fencing token, and the token that stops the work
/// started in it.
#[derive(Debug, Clone)]
pub struct Term {
    /// The lease's fencing token for this term.
    pub token: u64,
    /// Cancelled when the term ends (the lease is lost, or shutdown).
    pub stop: CancellationToken,
}

/// This replica's standing: the lease, and the term in progress once the engine is
/// restored for it.
#[derive(Debug, Clone)]
pub struct Ownership {
    lease: LeaseWatch,
    terms: Arc<watch::Sender<Option<Term>>>,
}

impl Ownership {
    /// The standing under `lease`, with no term begun.
    pub fn new(lease: LeaseWatch) -> Self {
        Self {
            lease,
            terms: Arc::new(watch::channel(None).0),
        }
    }

    /// The lease.
    pub fn lease(&self) -> &LeaseWatch {
        &self.lease
    }

    /// The term in progress, if this replica owns the work and it has begun.
    pub fn term(&self) -> Option<Term> {
        self.terms
            .borrow()
            .clone()
            .filter(|t| !t.stop.is_cancelled())
    }

    /// Waits for a term in progress; `None` once `shutdown` is cancelled.
    pub async fn next_term(&self, shutdown: &CancellationToken) -> Option<Term> {
        let mut rx = self.terms.subscribe();
        tokio::select! {
            term = rx.wait_for(|t| t.as_ref().is_some_and(|t| !t.stop.is_cancelled())) => {
                term.ok().and_then(|t| t.clone())
            }
            _ = shutdown.cancelled() => None,
        }
    }

    /// Waits (at most `within`) until this replica has begun a term or knows which
    /// replica owns the lease, so that a service just started answers at once.
    pub async fn settled(&self, within: Duration) {
        let mut lease = self.lease.subscribe();
        let mut terms = self.terms.subscribe();
        let _ = tokio::time::timeout(within, async {
            loop {
                let standby_knows = {
                    let s = lease.borrow_and_update();
                    s.role == LeaseRole::Standby && s.holder.is_some()
                };
                if standby_knows || self.term().is_some() {
                    return;
                }
                tokio::select! {
                    _ = lease.changed() => {}
                    _ = terms.changed() => {}
                }
            }
        })
        .await;
    }

    /// Runs the terms until `shutdown`: each time this replica takes the lease,
    /// `begin` (restoring what the work needs) runs first, then the term begins; it
    /// ends when the lease is lost. An error of `begin` ends this run (the supervisor
    /// starts it again); whatever way this returns, the term in progress ends.
    pub async fn run_terms<F, Fut, E>(
        &self,
        shutdown: &CancellationToken,
        mut begin: F,
    ) -> Result<(), E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut lease = self.lease.subscribe();
        loop {
            let owned = tokio::select! {
                s = lease.wait_for(|s| s.role == LeaseRole::Owner) => s.ok().and_then(|s| s.token),
                _ = shutdown.cancelled() => return Ok(()),
            };
            let Some(token) = owned else {
                return Ok(());
            };
            let stop = shutdown.child_token();
            let _ended = stop.clone().drop_guard();
            begin().await?;
            if !self.lease.holds(token) {
                continue;
            }
            self.terms.send_replace(Some(Term {
                token,
                stop: stop.clone(),
            }));
            tracing::info!(token, "owner: the single-writer work starts");
            tokio::select! {
                _ = lease.wait_for(|s| s.role != LeaseRole::Owner || s.token != Some(token)) => {
                    tracing::warn!(token, "the lease is lost: the single-writer work stops");
                }
                _ = shutdown.cancelled() => {}
            }
            stop.cancel();
            self.terms.send_replace(None);
        }
    }

    /// Runs `work` in every term until `shutdown` (a loop body of owner-only work):
    /// `work` gets the term's stop token and must end once it is cancelled.
    pub async fn each_term<F, Fut, E>(
        &self,
        shutdown: &CancellationToken,
        mut work: F,
    ) -> Result<(), E>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        while let Some(term) = self.next_term(shutdown).await {
            work(term.stop.clone()).await?;
            // Ended early (nothing to do, or done): wait for the next term.
            term.stop.cancelled().await;
        }
        Ok(())
    }

    /// Whether this replica serves the engine's requests now: it owns the lease and
    /// its term has begun (the engine is restored).
    pub fn serves(&self) -> bool {
        self.term().is_some_and(|t| self.lease.holds(t.token))
    }

    /// Whether this replica may write the engine's records: it owns the lease, or let
    /// it go at shutdown and writes what was left.
    pub fn may_write(&self) -> bool {
        self.lease.may_write()
    }
}

/// Requests are served where the engine is current: here once this replica's term has
/// begun, at the owner when another replica holds the lease, and nowhere (503) while
/// the lease is free or this replica is still restoring the engine for its term.
impl OwnerRoute for Ownership {
    fn route(&self) -> Route {
        if self.serves() {
            return Route::Here;
        }
        if self.lease.is_owner() {
            return Route::NoOwner;
        }
        match self.lease.holder() {
            Some(holder) if holder != self.lease.me() => Route::Forward(holder),
            _ => Route::NoOwner,
        }
    }
}
