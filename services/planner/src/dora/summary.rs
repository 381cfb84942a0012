//! Mergeable figures: what a day of deploys adds up to, summed over the days of a window.
//!
//! Counts and sums add exactly. Medians come from a [`Summary`]: the values themselves
//! while there are at most [`EXACT_UP_TO`] of them (so small histories give exact
//! medians), else a DDSketch (`sketches-ddsketch`, relative accuracy [`RELATIVE_ERROR`]):
//! each of the two middle values it gives is within 1% of the exact one, so their mean
//! is within 1% of the exact median, and merging two costs their number of bins, not
//! their number of values.

use std::collections::BTreeMap;
use std::fmt;

use sketches_ddsketch::{Config, DDSketch};
use toronto_protocol::tasks::DoraFailureCauses;

use super::judge::{Contribution, Judgement};

/// The most values a [`Summary`] keeps exactly.
pub const EXACT_UP_TO: usize = 64;
/// The relative error of a median from a sketch.
pub const RELATIVE_ERROR: f64 = 0.01;

fn config() -> Config {
    // 2,048 bins at 1% cover values from 1 ms to far beyond any lead time.
    Config::new(RELATIVE_ERROR, 2048, 1e-3)
}

/// Values summarised for their median.
#[derive(Clone, Default)]
pub enum Summary {
    /// Few enough to keep.
    #[default]
    Empty,
    /// The values.
    Exact(Vec<f64>),
    /// A sketch of them.
    Sketch(Box<DDSketch>),
}

impl fmt::Debug for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Exact(v) => f.debug_tuple("Exact").field(v).finish(),
            Self::Sketch(s) => write!(f, "Sketch({} values)", s.count()),
        }
    }
}

impl Summary {
    /// How many values it holds.
    pub fn count(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::Exact(v) => v.len(),
            Self::Sketch(s) => s.count(),
        }
    }

    fn sketch(&mut self) -> &mut DDSketch {
        if !matches!(self, Self::Sketch(_)) {
            let mut sketch = DDSketch::new(config());
            if let Self::Exact(values) = self {
                for v in values.iter() {
                    sketch.add(*v);
                }
            }
            *self = Self::Sketch(Box::new(sketch));
        }
        match self {
            Self::Sketch(s) => s,
            _ => unreachable!("made a sketch above"),
        }
    }

    /// Adds one value.
    pub fn add(&mut self, v: f64) {
        match self {
            Self::Empty => *self = Self::Exact(vec![v]),
            Self::Exact(values) if values.len() < EXACT_UP_TO => values.push(v),
            _ => self.sketch().add(v),
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Summary) {
        match other {
            Self::Empty => {}
            Self::Exact(theirs) => {
                if let Self::Exact(ours) = self
                    && ours.len() + theirs.len() <= EXACT_UP_TO
                {
                    ours.extend_from_slice(theirs);
                    return;
                }
                for v in theirs {
                    self.add(*v);
                }
            }
            Self::Sketch(theirs) => {
                // Both sketches have the same configuration, so merging cannot fail.
                let _ = self.sketch().merge(theirs);
            }
        }
    }

    /// The median (the mean of the two middle values for an even count): exact while
    /// the values are kept, else from the sketch, within [`RELATIVE_ERROR`] of it.
    pub fn median(&self) -> Option<f64> {
        match self {
            Self::Empty => None,
            Self::Exact(values) => {
                let mut values = values.clone();
                values.sort_by(f64::total_cmp);
                let mid = values.len() / 2;
                Some(if values.len().is_multiple_of(2) {
                    (values[mid - 1] + values[mid]) / 2.0
                } else {
                    values[mid]
                })
            }
            Self::Sketch(s) => {
                let n = s.count();
                // The sketch's value at rank `k` (0-based): it takes the rank as
                // `floor(q * (n - 1))`, so `q` aims at the middle of the rank.
                let at = |k: usize| {
                    let q = ((k as f64 + 0.5) / (n as f64 - 1.0)).min(1.0);
                    s.quantile(q).ok().flatten()
                };
                if n < 2 {
                    return s.quantile(0.5).ok().flatten();
                }
                let mid = n / 2;
                if n.is_multiple_of(2) {
                    Some((at(mid - 1)? + at(mid)?) / 2.0)
                } else {
                    at(mid)
                }
            }
        }
    }
}

/// The failures among some deploys.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Deploys that failed.
    pub failed: u64,
    /// By what showed it.
    pub causes: DoraFailureCauses,
    /// Their times to restore, in seconds.
    pub restores: Summary,
}

impl Tally {
    fn add(&mut self, c: &Contribution) {
        if c.failed() {
            self.failed += 1;
            self.causes.aborted += c.causes.aborted;
            self.causes.rolled_back += c.causes.rolled_back;
            self.causes.incident += c.causes.incident;
            if let Some(r) = c.restore {
                self.restores.add(r);
            }
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.failed += other.failed;
        self.causes.aborted += other.causes.aborted;
        self.causes.rolled_back += other.causes.rolled_back;
        self.causes.incident += other.causes.incident;
        self.restores.merge(&other.restores);
    }
}

/// What some deploys (a day of one scope) add up to, for every failure window.
#[derive(Debug, Clone, Default)]
pub struct DayFigures {
    deployments: u64,
    leads: Summary,
    lead_sum: f64,
    /// Deploys that no rollback followed within the longest failure window.
    base: Tally,
    /// Deploys a rollback followed, by the hours after which it came: what they count
    /// without it and with it.
    slots: BTreeMap<u8, [Tally; 2]>,
}

impl DayFigures {
    /// Adds a deploy judged `judgement`, with its lead time if it has one.
    pub fn add(&mut self, judgement: &Judgement, lead: Option<f64>) {
        self.deployments += 1;
        if let Some(lead) = lead {
            self.add_lead(lead);
        }
        match &judgement.rollback {
            None => self.base.add(&judgement.without),
            Some((slot, with)) => {
                let [without_it, with_it] = self.slots.entry(*slot).or_default();
                without_it.add(&judgement.without);
                with_it.add(with);
            }
        }
    }

    /// Adds the lead time of a deploy already added.
    pub fn add_lead(&mut self, lead: f64) {
        self.leads.add(lead);
        self.lead_sum += lead;
    }
}

/// The figures of a window, summed from days and deploys for one failure window.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Deploys.
    pub deployments: u64,
    /// Lead times, in seconds.
    pub leads: Summary,
    /// Their sum.
    pub lead_sum: f64,
    /// The failures.
    pub failures: Tally,
}

impl Totals {
    /// Adds a day's figures for a failure window of `hours`.
    pub fn add_day(&mut self, day: &DayFigures, hours: u32) {
        self.deployments += day.deployments;
        self.leads.merge(&day.leads);
        self.lead_sum += day.lead_sum;
        self.failures.merge(&day.base);
        for (slot, [without_it, with_it]) in &day.slots {
            self.failures.merge(if u32::from(*slot) <= hours {
                with_it
            } else {
                without_it
            });
        }
    }

    /// Adds one deploy for a failure window of `hours`.
    pub fn add_deploy(&mut self, judgement: &Judgement, lead: Option<f64>, hours: u32) {
        self.deployments += 1;
        if let Some(lead) = lead {
            self.leads.add(lead);
            self.lead_sum += lead;
        }
        self.failures.add(&judgement.for_window(hours));
    }

    /// The mean lead time.
    pub fn lead_mean(&self) -> Option<f64> {
        let n = self.leads.count();
        (n > 0).then(|| self.lead_sum / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_values_give_the_exact_median_and_many_a_close_one() {
        let mut s = Summary::default();
        assert_eq!(s.median(), None);
        s.add(600.0);
        s.add(900.0);
        assert_eq!(s.median(), Some(750.0));
        let mut big = Summary::default();
        for i in 1..=1001 {
            big.add(f64::from(i));
        }
        assert!(matches!(big, Summary::Sketch(_)));
        let m = big.median().unwrap();
        assert!((m - 501.0).abs() <= 501.0 * RELATIVE_ERROR, "{m}");
        // Merging small ones stays exact until there are too many.
        let mut a = Summary::default();
        for v in [1.0, 2.0, 3.0] {
            a.add(v);
        }
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.count(), 6);
        assert_eq!(b.median(), Some(2.0));
        b.merge(&big);
        assert_eq!(b.count(), 1007);
    }
}
