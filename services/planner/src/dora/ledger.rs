//! The DORA ledger: the records of the event stream, folded once and kept in memory.
//!
//! A query reads only the events published since the previous one (from the stream
//! sequence where that one stopped) and sums the figures kept per day
//! ([`super::days`]), so its cost does not grow with the events already folded. A report is kept until a new event arrives or [`REPORT_TTL`] passes, so
//! dashboards polling the same figures cost one small stream read each. Records older
//! than [`HORIZON`] are dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use toronto_protocol::tasks::{DoraQuery, DoraReport};

use super::days::Ledger;

/// The longest window a query may ask for, in days.
pub const MAX_WINDOW_DAYS: u32 = 92;
/// The longest failure window a query may ask for, in hours.
pub const MAX_FAILURE_HOURS: u32 = 7 * 24;
/// How far back the ledger keeps records: the longest window, a day of slack for the
/// deploys that began before it, and the longest failure window.
pub const HORIZON: chrono::Duration =
    chrono::Duration::days(MAX_WINDOW_DAYS as i64 + 1 + (MAX_FAILURE_HOURS as i64 / 24));
/// How long a computed report answers the same query while no event arrives.
pub const REPORT_TTL: Duration = Duration::from_secs(5);
/// How often records older than the horizon are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The ledger's state; one query at a time updates it.
#[derive(Debug)]
pub struct State {
    /// The records folded so far, with their figures per day.
    pub records: Ledger,
    /// The stream sequence of the next event to read; `None` before the first read.
    pub next: Option<u64>,
    pruned: Instant,
    reports: HashMap<String, Cached>,
}

#[derive(Debug)]
struct Cached {
    next: Option<u64>,
    at: Instant,
    report: DoraReport,
}

impl Default for State {
    fn default() -> Self {
        Self {
            records: Ledger::default(),
            next: None,
            pruned: Instant::now(),
            reports: HashMap::new(),
        }
    }
}

impl State {
    /// Where the next read starts: after the last event read, or the horizon's start.
    pub fn start(&self, now: DateTime<Utc>) -> Start {
        match self.next {
            Some(seq) => Start::Sequence(seq),
            None => Start::Time(now - HORIZON),
        }
    }

    /// Notes that events up to stream sequence `last` were folded.
    pub fn read_to(&mut self, last: u64) {
        self.next = Some(last + 1);
    }

    /// Drops records older than the horizon, now and then.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        if self.pruned.elapsed() >= PRUNE_EVERY {
            self.records.retain_since(now - HORIZON);
            self.pruned = Instant::now();
        }
    }

    /// The report kept for `query`, if no event arrived since and it is fresh.
    pub fn cached(&self, query: &DoraQuery) -> Option<DoraReport> {
        let c = self.reports.get(&key(query))?;
        (c.next == self.next && c.at.elapsed() < REPORT_TTL).then(|| c.report.clone())
    }

    /// Keeps `report` for `query`.
    pub fn keep(&mut self, query: &DoraQuery, report: &DoraReport) {
        // Stale entries are dropped when a new event makes every report stale.
        let next = self.next;
        self.reports.retain(|_, c| c.next == next);
        self.reports.insert(
            key(query),
            Cached {
                next,
                at: Instant::now(),
                report: report.clone(),
            },
        );
    }
}

/// Where a read of the events stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this stream sequence.
    Sequence(u64),
    /// At the first event published at or after this time.
    Time(DateTime<Utc>),
}

fn key(query: &DoraQuery) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        query.service,
        query.environment,
        query.window_days,
        query.failure_window_hours,
        query.weeks
    )
}

/// The reasons a query is refused, if any.
pub fn check(query: &DoraQuery) -> Vec<String> {
    let mut reasons = Vec::new();
    if query.window_days.is_some_and(|d| d > MAX_WINDOW_DAYS) {
        reasons.push(format!("window_days must be at most {MAX_WINDOW_DAYS}"));
    }
    if query
        .failure_window_hours
        .is_some_and(|h| h > MAX_FAILURE_HOURS)
    {
        reasons.push(format!(
            "failure_window_hours must be at most {MAX_FAILURE_HOURS}"
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(deployments: u64) -> DoraReport {
        let query = DoraQuery::default();
        let mut report = Ledger::default().report(&query, Utc::now());
        report.deployments = deployments;
        report
    }

    #[test]
    fn a_report_is_kept_until_an_event_arrives() {
        let mut state = State::default();
        let q = DoraQuery::default();
        state.read_to(10);
        assert!(state.cached(&q).is_none());
        state.keep(&q, &report(3));
        assert_eq!(state.cached(&q).unwrap().deployments, 3);
        let other = DoraQuery {
            service: Some("shop".into()),
            ..Default::default()
        };
        assert!(
            state.cached(&other).is_none(),
            "another query is not answered"
        );
        state.read_to(11);
        assert!(state.cached(&q).is_none(), "a new event makes it stale");
        assert_eq!(state.start(Utc::now()), Start::Sequence(12));
    }

    #[test]
    fn the_first_read_starts_at_the_horizon() {
        let now = Utc::now();
        assert_eq!(State::default().start(now), Start::Time(now - HORIZON));
    }

    #[test]
    fn windows_beyond_the_horizon_are_refused() {
        assert!(check(&DoraQuery::default()).is_empty());
        let q = DoraQuery {
            window_days: Some(MAX_WINDOW_DAYS + 1),
            failure_window_hours: Some(MAX_FAILURE_HOURS + 1),
            ..Default::default()
        };
        assert_eq!(check(&q).len(), 2);
    }
}
