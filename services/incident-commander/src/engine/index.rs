//! Indexes and running totals over the incidents, so that the work done every second
//! (deadlines, gauges, the freeze sweep) grows with the open incidents, not with every
//! incident ever kept.
//!
//! The index is kept in one place: after every turn, each incident the turn asked to
//! persist, or holds an alert note for, is re-read ([`Index::update`]); at start, every
//! incident loaded from KV is. Every change of an incident is persisted (an alert that
//! resolves when its note is announced), so the index always agrees with the incidents.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use toronto_protocol::incidents::{Incident, IncidentMetrics, IncidentState, Severity};
use uuid::Uuid;

use super::metrics::RESPONSE_BUCKETS;

/// What one incident adds to the index, as last read.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    open: bool,
    escalate_at: Option<DateTime<Utc>>,
    quiet_since: Option<DateTime<Utc>>,
    severity: Severity,
    service: String,
    opened_at: DateTime<Utc>,
    ack_ms: Option<i64>,
    resolve_ms: Option<i64>,
}

impl Entry {
    fn of(inc: &Incident) -> Self {
        Self {
            open: inc.state.is_open(),
            escalate_at: inc
                .escalation
                .next_at
                .filter(|_| inc.state == IncidentState::Triggered),
            quiet_since: inc
                .quiet_since
                .filter(|_| inc.state.is_open() && inc.alerts_firing == 0),
            severity: inc.severity,
            service: inc.service.clone(),
            opened_at: inc.opened_at,
            ack_ms: inc.acknowledged_at.map(|t| ms(inc.opened_at, t)),
            resolve_ms: inc.resolved_at.map(|t| ms(inc.opened_at, t)),
        }
    }
}

fn ms(a: DateTime<Utc>, b: DateTime<Utc>) -> i64 {
    (b - a).num_milliseconds()
}

/// A running sum and count of durations in milliseconds.
#[derive(Debug, Default, Clone, Copy)]
struct Sum {
    ms: i128,
    count: u64,
}

impl Sum {
    fn add(&mut self, v: Option<i64>, sign: i128) {
        if let Some(v) = v {
            self.ms += sign * i128::from(v);
            if sign > 0 {
                self.count += 1;
            } else {
                self.count -= 1;
            }
        }
    }

    fn mean_seconds(self) -> Option<f64> {
        (self.count > 0).then(|| self.ms as f64 / 1000.0 / self.count as f64)
    }
}

/// A response-time histogram kept as incidents change: the sum and count, and how many
/// times fall in each bucket of [`RESPONSE_BUCKETS`] (the last past its last bound).
#[derive(Debug, Default, Clone, Copy)]
pub struct Times {
    sum: Sum,
    buckets: [u64; RESPONSE_BUCKETS.len() + 1],
}

impl Times {
    fn add(&mut self, v: Option<i64>, sign: i128) {
        let Some(v) = v else {
            return;
        };
        self.sum.add(Some(v), sign);
        let secs = v as f64 / 1000.0;
        let i = RESPONSE_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(RESPONSE_BUCKETS.len());
        let n = &mut self.buckets[i];
        *n = if sign > 0 {
            *n + 1
        } else {
            n.saturating_sub(1)
        };
    }

    /// The sum of the times, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum.ms as f64 / 1000.0
    }

    /// How many times.
    pub fn count(&self) -> u64 {
        self.sum.count
    }

    /// The mean, in seconds (None: no times).
    pub fn mean_seconds(&self) -> Option<f64> {
        self.sum.mean_seconds()
    }

    /// Each bucket's upper bound (the last `+Inf`) and how many times fall in it (not
    /// cumulative).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        RESPONSE_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets)
            .collect()
    }
}

/// The open incidents, the escalations by when they are due, and the totals that
/// `incident.metrics` (over every service) reports.
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<Uuid, Entry>,
    open: BTreeSet<Uuid>,
    escalations: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// Open incidents with no alert firing, by when they went quiet.
    quiet: BTreeSet<(DateTime<Utc>, Uuid)>,
    by_severity: BTreeMap<Severity, u64>,
    acknowledged: Times,
    resolved: Times,
    /// Opening times of each service's incidents, for MTBF.
    opened: HashMap<String, BTreeSet<(DateTime<Utc>, Uuid)>>,
    /// Sum of the gaps between consecutive incidents of a service (the span from the
    /// first to the last), over every service, and how many gaps.
    gaps: Sum,
}

impl Index {
    /// Re-reads one incident (None: it is gone).
    pub fn update(&mut self, id: Uuid, inc: Option<&Incident>) {
        let new = inc.map(Entry::of);
        let old = self.entries.get(&id);
        if old == new.as_ref() {
            return;
        }
        if let Some(old) = self.entries.remove(&id) {
            self.apply(id, &old, -1);
        }
        if let Some(new) = new {
            self.apply(id, &new, 1);
            self.entries.insert(id, new);
        }
    }

    fn apply(&mut self, id: Uuid, e: &Entry, sign: i128) {
        let add = sign > 0;
        if e.open {
            set(&mut self.open, id, add);
        }
        if let Some(at) = e.escalate_at {
            set(&mut self.escalations, (at, id), add);
        }
        if let Some(at) = e.quiet_since {
            set(&mut self.quiet, (at, id), add);
        }
        let n = self.by_severity.entry(e.severity).or_default();
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
        self.acknowledged.add(e.ack_ms, sign);
        self.resolved.add(e.resolve_ms, sign);
        let times = self.opened.entry(e.service.clone()).or_default();
        let (ms_before, n_before) = span(times);
        set(times, (e.opened_at, id), add);
        let (ms_after, n_after) = span(times);
        self.gaps.ms += ms_after - ms_before;
        self.gaps.count = self.gaps.count + n_after - n_before;
        if times.is_empty() {
            self.opened.remove(&e.service);
        }
    }

    /// The open incidents, by id.
    pub fn open(&self) -> &BTreeSet<Uuid> {
        &self.open
    }

    /// Triggered incidents whose escalation is due at `now`, soonest first.
    pub fn escalations_due(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        self.escalations
            .range(..=(now, Uuid::max()))
            .map(|(_, id)| *id)
            .collect()
    }

    /// Open incidents with no alert firing since `since` or earlier.
    pub fn quiet_since(&self, since: DateTime<Utc>) -> Vec<Uuid> {
        self.quiet
            .range(..=(since, Uuid::max()))
            .map(|(_, id)| *id)
            .collect()
    }

    /// Times to acknowledge and to resolve, over every incident that got there.
    pub fn response_times(&self) -> (Times, Times) {
        (self.acknowledged, self.resolved)
    }

    /// MTTA, MTTR, MTBF and counts over every incident.
    pub fn metrics(&self) -> IncidentMetrics {
        let mut by_severity: BTreeMap<String, u64> = [
            Severity::Sev1,
            Severity::Sev2,
            Severity::Sev3,
            Severity::Sev4,
        ]
        .iter()
        .map(|s| (s.label().to_lowercase(), 0))
        .collect();
        for (s, n) in &self.by_severity {
            *by_severity.entry(s.label().to_lowercase()).or_default() += n;
        }
        IncidentMetrics {
            incidents: self.entries.len() as u64,
            open: self.open.len() as u64,
            by_severity,
            mtta_seconds: self.acknowledged.mean_seconds(),
            mttr_seconds: self.resolved.mean_seconds(),
            mtbf_seconds: self.gaps.mean_seconds(),
        }
    }
}

/// The gaps between consecutive openings: their sum (the span from the first to the
/// last, in milliseconds) and how many (`len - 1`).
fn span(times: &BTreeSet<(DateTime<Utc>, Uuid)>) -> (i128, u64) {
    match (times.first(), times.last()) {
        (Some(a), Some(b)) if times.len() > 1 => (i128::from(ms(a.0, b.0)), times.len() as u64 - 1),
        _ => (0, 0),
    }
}

fn set<T: Ord>(s: &mut BTreeSet<T>, v: T, add: bool) {
    if add {
        s.insert(v);
    } else {
        s.remove(&v);
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
