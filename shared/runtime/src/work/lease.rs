//! Leases: which instance works on a record now.
//!
//! The lease is a field of the record, so taking it is a compare-and-set like any
//! other change, and the revision of that write is the lease's fencing token: a
//! holder that lost its lease (it stalled past `until` and another instance took
//! over) fails its next save with [`super::Saved::Conflict`] instead of overwriting
//! the new holder's work.

use std::time::Duration;

use chrono::{DateTime, Utc};
use toronto_protocol::tasks::Lease;

/// What an instance may do about a record's lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Another instance holds an unexpired lease: leave the record alone.
    Held {
        /// The holder.
        owner: String,
        /// When its lease runs out.
        until: DateTime<Utc>,
    },
    /// This instance holds it with time enough left: carry on.
    Keep,
    /// Free, expired, or this instance's and due for renewal: store this lease
    /// (a compare-and-set) before doing any work.
    Take(Lease),
}

/// Decides about `current` for instance `me` at `now`: a lease lasts `length`, and
/// this instance's own lease is renewed once less than `renew_below` is left
/// (`Duration::MAX` renews it on every pass).
pub fn claim(
    current: Option<&Lease>,
    me: &str,
    now: DateTime<Utc>,
    length: Duration,
    renew_below: Duration,
) -> Claim {
    match current {
        Some(l) if l.owner != me && l.until > now => Claim::Held {
            owner: l.owner.clone(),
            until: l.until,
        },
        Some(l) if l.owner == me && (l.until - now).to_std().unwrap_or_default() >= renew_below => {
            Claim::Keep
        }
        _ => Claim::Take(Lease {
            owner: me.to_owned(),
            until: now + chrono::Duration::from_std(length).unwrap_or(chrono::Duration::MAX),
        }),
    }
}

/// Whether `me` holds `current` (expired or not).
pub fn holds(current: Option<&Lease>, me: &str) -> bool {
    current.is_some_and(|l| l.owner == me)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(owner: &str, until: DateTime<Utc>) -> Lease {
        Lease {
            owner: owner.into(),
            until,
        }
    }

    #[test]
    fn a_free_or_expired_lease_is_taken_for_its_length() {
        let now = Utc::now();
        let length = Duration::from_secs(30);
        let Claim::Take(l) = claim(None, "a", now, length, length / 2) else {
            panic!("a free lease is taken");
        };
        assert_eq!(l.owner, "a");
        assert_eq!(l.until, now + chrono::Duration::seconds(30));
        let expired = lease("b", now - chrono::Duration::seconds(1));
        assert!(matches!(
            claim(Some(&expired), "a", now, length, length / 2),
            Claim::Take(l) if l.owner == "a"
        ));
    }

    #[test]
    fn another_holder_keeps_its_lease_until_it_runs_out() {
        let now = Utc::now();
        let held = lease("b", now + chrono::Duration::seconds(5));
        assert_eq!(
            claim(
                Some(&held),
                "a",
                now,
                Duration::from_secs(30),
                Duration::ZERO
            ),
            Claim::Held {
                owner: "b".into(),
                until: held.until
            }
        );
        assert!(!holds(Some(&held), "a"));
        assert!(holds(Some(&held), "b"));
    }

    #[test]
    fn an_own_lease_is_renewed_when_little_is_left() {
        let now = Utc::now();
        let length = Duration::from_secs(30);
        let fresh = lease("a", now + chrono::Duration::seconds(25));
        assert_eq!(
            claim(Some(&fresh), "a", now, length, length / 2),
            Claim::Keep
        );
        let old = lease("a", now + chrono::Duration::seconds(5));
        assert!(matches!(
            claim(Some(&old), "a", now, length, length / 2),
            Claim::Take(_)
        ));
        assert!(matches!(
            claim(Some(&fresh), "a", now, length, Duration::MAX),
            Claim::Take(_)
        ));
    }
}
