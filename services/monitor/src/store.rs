//! The in-memory time-series store: every sample the monitor receives (bus pushes,
//! scrapes, probes), per series (name + labels), for a bounded time and a bounded
//! number of samples per series and of series.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Labels of a series, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// One series' samples, oldest first: (milliseconds since the epoch, value).
pub type Samples = VecDeque<(i64, f64)>;

/// Limits of the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreLimits {
    /// Samples older than this (relative to the newest sample of the store's clock)
    /// are dropped, in milliseconds.
    pub retention_ms: i64,
    /// Samples kept per series; the oldest go first.
    pub max_samples_per_series: usize,
    /// Series kept; samples of new series beyond it are refused (and counted).
    pub max_series: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            retention_ms: 15 * 60 * 1000,
            max_samples_per_series: 10_000,
            max_series: 100_000,
        }
    }
}

/// Counters of what the store took and refused.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Samples stored.
    pub accepted: AtomicU64,
    /// Samples refused: not finite, or of a new series beyond the series limit.
    pub refused: AtomicU64,
}

/// The series of one metric name.
#[derive(Debug, Default)]
struct Metric {
    /// Samples by labels. Each series' labels are held once, shared with the index.
    series: HashMap<Arc<Labels>, Samples>,
    /// The labels of the series by each (label, value) pair they hold, so that a
    /// selection reads the series of one pair instead of every series of the name.
    by_pair: HashMap<(String, String), HashSet<Arc<Labels>>>,
}

impl Metric {
    fn index(&mut self, labels: &Arc<Labels>) {
        for (k, v) in labels.iter() {
            self.by_pair
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(Arc::clone(labels));
        }
    }

    fn unindex(&mut self, labels: &Labels) {
        for (k, v) in labels {
            let pair = (k.clone(), v.clone());
            if let Some(set) = self.by_pair.get_mut(&pair) {
                set.remove(labels);
                if set.is_empty() {
                    self.by_pair.remove(&pair);
                }
            }
        }
    }

    /// The series whose labels hold all of `matchers`.
    fn matching<'a>(
        &'a self,
        matchers: &'a Labels,
    ) -> Box<dyn Iterator<Item = (&'a Labels, &'a Samples)> + 'a> {
        if matchers.is_empty() {
            return Box::new(self.series.iter().map(|(l, s)| (&**l, s)));
        }
        // The pair held by the fewest series.
        let mut fewest: Option<&HashSet<Arc<Labels>>> = None;
        for (k, v) in matchers {
            match self.by_pair.get(&(k.clone(), v.clone())) {
                None => return Box::new(std::iter::empty()),
                Some(set) if fewest.is_none_or(|f| set.len() < f.len()) => fewest = Some(set),
                Some(_) => {}
            }
        }
        Box::new(
            fewest
                .into_iter()
                .flatten()
                .filter(move |labels| matches(labels, matchers))
                .filter_map(|labels| self.series.get_key_value(&**labels))
                .map(|(l, s)| (&**l, s)),
        )
    }
}

/// The store. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    limits: StoreLimits,
    // name -> labels -> samples
    series: RwLock<HashMap<String, Metric>>,
    count: AtomicU64,
    /// What was taken and refused.
    pub counters: StoreCounters,
}

/// The current time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// An empty store with `limits`.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            series: RwLock::new(HashMap::new()),
            count: AtomicU64::new(0),
            counters: StoreCounters::default(),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// Adds one sample; returns whether it was kept.
    pub fn insert(&self, name: &str, labels: &Labels, timestamp_ms: i64, value: f64) -> bool {
        self.insert_many(name, labels, std::iter::once((timestamp_ms, value))) == 1
    }

    /// Adds samples of one series; returns how many were kept.
    pub fn insert_many(
        &self,
        name: &str,
        labels: &Labels,
        samples: impl IntoIterator<Item = (i64, f64)>,
    ) -> usize {
        let oldest = now_ms() - self.limits.retention_ms;
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        self.insert_locked(&mut map, name, labels, samples, oldest)
    }

    /// Adds the samples of one message, each `(name, labels, timestamp_ms, value)`,
    /// under one hold of the lock; returns how many were kept.
    pub fn insert_batch<'a>(
        &self,
        samples: impl IntoIterator<Item = (&'a str, &'a Labels, i64, f64)>,
    ) -> usize {
        let oldest = now_ms() - self.limits.retention_ms;
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        samples
            .into_iter()
            .map(|(name, labels, ts, value)| {
                self.insert_locked(&mut map, name, labels, std::iter::once((ts, value)), oldest)
            })
            .sum()
    }

    /// Adds samples of one series to `map` (the store's, locked); returns how many were
    /// kept.
    fn insert_locked(
        &self,
        map: &mut HashMap<String, Metric>,
        name: &str,
        labels: &Labels,
        samples: impl IntoIterator<Item = (i64, f64)>,
        oldest: i64,
    ) -> usize {
        let mut kept = 0;
        let mut refused = 0;
        if !map.contains_key(name) {
            map.insert(name.to_owned(), Metric::default());
        }
        let Some(metric) = map.get_mut(name) else {
            return 0;
        };
        if !metric.series.contains_key(labels) {
            if self.count.load(Ordering::Relaxed) as usize >= self.limits.max_series {
                let n = samples.into_iter().count() as u64;
                self.counters.refused.fetch_add(n, Ordering::Relaxed);
                if metric.series.is_empty() {
                    map.remove(name);
                }
                return 0;
            }
            self.count.fetch_add(1, Ordering::Relaxed);
            let shared = Arc::new(labels.clone());
            metric.index(&shared);
            metric.series.insert(shared, Samples::new());
        }
        let Some(series) = metric.series.get_mut(labels) else {
            return 0;
        };
        for (ts, value) in samples {
            if !value.is_finite() || ts < oldest {
                refused += 1;
                continue;
            }
            match series.back() {
                Some(&(last, _)) if ts < last => {
                    // Out of order: keep the series sorted.
                    let at = series.partition_point(|&(t, _)| t <= ts);
                    series.insert(at, (ts, value));
                }
                _ => series.push_back((ts, value)),
            }
            kept += 1;
        }
        while series.len() > self.limits.max_samples_per_series {
            series.pop_front();
        }
        while series.front().is_some_and(|&(t, _)| t < oldest) {
            series.pop_front();
        }
        self.counters
            .accepted
            .fetch_add(kept as u64, Ordering::Relaxed);
        self.counters
            .refused
            .fetch_add(refused as u64, Ordering::Relaxed);
        kept
    }

    /// Every series named `name` whose labels include all of `matchers`, with its
    /// samples in `[from_ms, to_ms]`.
    pub fn select(
        &self,
        name: &str,
        matchers: &Labels,
        from_ms: i64,
        to_ms: i64,
    ) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let Some(metric) = map.get(name) else {
            return Vec::new();
        };
        metric
            .matching(matchers)
            .map(|(labels, samples)| {
                let start = samples.partition_point(|&(t, _)| t < from_ms);
                let picked: Vec<(i64, f64)> = samples
                    .range(start..)
                    .take_while(|&&(t, _)| t <= to_ms)
                    .copied()
                    .collect();
                (labels.clone(), picked)
            })
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }

    /// The values of every matching series in `[from_ms, to_ms]`, pooled.
    pub fn values(&self, name: &str, matchers: &Labels, from_ms: i64, to_ms: i64) -> Vec<f64> {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let Some(metric) = map.get(name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (_, samples) in metric.matching(matchers) {
            let start = samples.partition_point(|&(t, _)| t < from_ms);
            out.extend(
                samples
                    .range(start..)
                    .take_while(|&&(t, _)| t <= to_ms)
                    .map(|&(_, v)| v),
            );
        }
        out
    }

    /// The sum of the values of every matching series in `(from_ms, to_ms]`.
    pub fn sum(&self, name: &str, matchers: &Labels, from_ms: i64, to_ms: i64) -> (f64, usize) {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let Some(metric) = map.get(name) else {
            return (0.0, 0);
        };
        let (mut sum, mut n) = (0.0, 0);
        for (_, samples) in metric.matching(matchers) {
            let start = samples.partition_point(|&(t, _)| t <= from_ms);
            for &(_, v) in samples.range(start..).take_while(|&&(t, _)| t <= to_ms) {
                sum += v;
                n += 1;
            }
        }
        (sum, n)
    }

    /// Drops samples older than the retention and series left empty.
    pub fn prune(&self) {
        let oldest = now_ms() - self.limits.retention_ms;
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0u64;
        map.retain(|_, metric| {
            let mut gone = Vec::new();
            metric.series.retain(|labels, samples| {
                while samples.front().is_some_and(|&(t, _)| t < oldest) {
                    samples.pop_front();
                }
                let keep = !samples.is_empty();
                if !keep {
                    gone.push(Arc::clone(labels));
                }
                keep
            });
            removed += gone.len() as u64;
            for labels in &gone {
                metric.unindex(labels);
            }
            !metric.series.is_empty()
        });
        self.count.fetch_sub(removed, Ordering::Relaxed);
    }

    /// How many series and samples it holds.
    pub fn size(&self) -> (usize, usize) {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let series = map.values().map(|m| m.series.len()).sum();
        let samples = map
            .values()
            .flat_map(|m| m.series.values())
            .map(VecDeque::len)
            .sum();
        (series, samples)
    }
}

/// Whether `labels` hold every (name, value) of `matchers`.
pub fn matches(labels: &Labels, matchers: &Labels) -> bool {
    matchers.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selects_by_label_subset_and_time() {
        let store = Store::new(StoreLimits::default());
        let now = now_ms();
        let canary = labels(&[("service", "a"), ("track", "canary")]);
        let stable = labels(&[("service", "a"), ("track", "stable")]);
        for i in 0..10 {
            store.insert("m", &canary, now - 1000 + i * 100, i as f64);
            store.insert("m", &stable, now - 1000 + i * 100, 100.0);
        }
        let got = store.values("m", &labels(&[("track", "canary")]), now - 450, now);
        assert_eq!(got, vec![6.0, 7.0, 8.0, 9.0]);
        assert_eq!(
            store
                .values("m", &labels(&[("service", "a")]), 0, now)
                .len(),
            20
        );
        assert!(store.values("other", &Labels::new(), 0, now).is_empty());
        let (sum, n) = store.sum("m", &labels(&[("track", "canary")]), now - 500, now);
        assert_eq!((sum, n), (6.0 + 7.0 + 8.0 + 9.0, 4));
        // Both labels, a pair no series holds, and a pair of another name.
        let both = labels(&[("service", "a"), ("track", "stable")]);
        assert_eq!(store.values("m", &both, 0, now), vec![100.0; 10]);
        assert!(
            store
                .values("m", &labels(&[("service", "b")]), 0, now)
                .is_empty()
        );
        assert!(
            store
                .values("m", &labels(&[("track", "x")]), 0, now)
                .is_empty()
        );
    }

    #[test]
    fn a_batch_stores_like_single_inserts() {
        let store = Store::new(StoreLimits {
            max_series: 2,
            ..Default::default()
        });
        let now = now_ms();
        let (a, b, c) = (
            labels(&[("track", "a")]),
            labels(&[("track", "b")]),
            labels(&[("track", "c")]),
        );
        let kept = store.insert_batch([
            ("m", &a, now, 1.0),
            ("m", &a, now - 5, 0.5),
            ("n", &b, now, 2.0),
            ("m", &a, now, f64::NAN),
            // A third series is beyond the limit.
            ("m", &c, now, 3.0),
        ]);
        assert_eq!(kept, 3);
        assert_eq!(store.values("m", &a, 0, now), vec![0.5, 1.0]);
        assert_eq!(store.values("n", &b, 0, now), vec![2.0]);
        assert_eq!(store.size(), (2, 3));
        assert_eq!(store.counters.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_series_pruned_away_is_no_longer_selected() {
        let store = Store::new(StoreLimits {
            retention_ms: 1000,
            ..Default::default()
        });
        let now = now_ms();
        let old = labels(&[("service", "old")]);
        let new = labels(&[("service", "new")]);
        store.insert("m", &old, now - 900, 1.0);
        store.insert("m", &new, now, 2.0);
        std::thread::sleep(std::time::Duration::from_millis(200));
        store.prune();
        assert_eq!(store.size().0, 1);
        assert!(store.select("m", &old, 0, i64::MAX).is_empty());
        assert_eq!(store.select("m", &Labels::new(), 0, i64::MAX).len(), 1);
        // It comes back with a new sample.
        store.insert("m", &old, now_ms(), 3.0);
        assert_eq!(store.values("m", &old, 0, i64::MAX), vec![3.0]);
    }

    #[test]
    fn a_series_labels_are_held_once_and_shared_with_the_index() {
        let store = Store::new(StoreLimits::default());
        let three = labels(&[("service", "shop"), ("track", "canary"), ("version", "2")]);
        store.insert("m", &three, now_ms(), 1.0);
        store.insert("m", &three, now_ms(), 2.0);
        let map = store.series.read().unwrap();
        let metric = &map["m"];
        let (held, _) = metric.series.get_key_value(&three).unwrap();
        // The series map's copy and one per (label, value) pair in the index.
        assert_eq!(Arc::strong_count(held), 1 + 3);
        assert_eq!(metric.by_pair.len(), 3);
    }

    #[test]
    fn bounds_samples_series_and_age() {
        let store = Store::new(StoreLimits {
            retention_ms: 60_000,
            max_samples_per_series: 5,
            max_series: 2,
        });
        let now = now_ms();
        let l = labels(&[("a", "1")]);
        for i in 0..10 {
            store.insert("m", &l, now - 10 + i, i as f64);
        }
        assert_eq!(
            store.values("m", &l, 0, now + 10),
            vec![5.0, 6.0, 7.0, 8.0, 9.0]
        );
        // Too old, not finite: refused.
        assert!(!store.insert("m", &l, now - 120_000, 1.0));
        assert!(!store.insert("m", &l, now, f64::NAN));
        // A third series is refused.
        assert!(store.insert("m", &labels(&[("a", "2")]), now, 1.0));
        assert!(!store.insert("m", &labels(&[("a", "3")]), now, 1.0));
        assert_eq!(store.size().0, 2);
        // Out-of-order samples stay sorted.
        let store = Store::new(StoreLimits::default());
        store.insert("n", &l, now, 2.0);
        store.insert("n", &l, now - 5, 1.0);
        assert_eq!(store.values("n", &l, 0, now), vec![1.0, 2.0]);
    }
}
