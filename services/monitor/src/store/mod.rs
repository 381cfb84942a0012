//! The in-memory time-series store: every sample the monitor receives (bus pushes,
//! scrapes, probes), per series (name + labels), for a bounded time and a bounded
//! number of samples per series and of series.
//!
//! Held compactly: label names and values are interned store-wide ([`labels`]), each
//! metric name indexes its series by key and by (name, value) pair as small ids, and a
//! series' samples are sealed into encoded blocks ([`chunk`]) of about a byte or two
//! per regular sample, behind a small open buffer of the newest.

mod chunk;
mod labels;
mod series;

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use labels::{Index, Key, Strings, table_bytes};
use series::Series;

/// Labels of a series, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// A series whose newest sample is older than this (before the store's clock) has its
/// open buffer sealed at the next [`Store::prune`].
const QUIET_MS: i64 = 30_000;

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
    /// Series by id; the ids of removed series are reused.
    slots: Vec<Option<Series>>,
    free: Vec<u32>,
    index: Index,
}

impl Metric {
    fn series(&self, id: u32) -> Option<&Series> {
        self.slots.get(id as usize)?.as_ref()
    }

    fn key(&self, id: u32) -> Option<&[(u32, u32)]> {
        Some(&self.series(id)?.key)
    }

    fn is_empty(&self) -> bool {
        self.slots.len() == self.free.len()
    }

    /// Adds an empty series of `key`; returns its id.
    fn add(&mut self, key: Key) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[id as usize] = Some(Series::new(key));
        let slots = &self.slots;
        self.index
            .add(id, |id| Some(&slots.get(id as usize)?.as_ref()?.key));
        id
    }

    /// The series whose labels hold all of `matchers`: every series for none, else
    /// those of the index's smallest matching pair.
    fn matching<'a>(
        &'a self,
        strings: &Strings,
        matchers: &Labels,
    ) -> Box<dyn Iterator<Item = &'a Series> + 'a> {
        if matchers.is_empty() {
            return Box::new(self.slots.iter().flatten());
        }
        let Some(key) = strings.key_of(matchers) else {
            return Box::new(std::iter::empty());
        };
        let ids: Vec<u32> = self.index.matching(&key, |id| self.key(id)).collect();
        Box::new(ids.into_iter().filter_map(|id| self.series(id)))
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Option<Series>>()
            + self.free.capacity() * size_of::<u32>()
            + self
                .slots
                .iter()
                .flatten()
                .map(Series::heap_bytes)
                .sum::<usize>()
            + self.index.heap_bytes()
    }
}

#[derive(Debug, Default)]
struct Inner {
    strings: Strings,
    metrics: HashMap<String, Metric>,
}

/// The store. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    limits: StoreLimits,
    inner: RwLock<Inner>,
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
            inner: RwLock::new(Inner::default()),
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
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        self.insert_locked(&mut inner, name, labels, samples, oldest)
    }

    /// Adds the samples of one message, each `(name, labels, timestamp_ms, value)`,
    /// under one hold of the lock; returns how many were kept.
    pub fn insert_batch<'a>(
        &self,
        samples: impl IntoIterator<Item = (&'a str, &'a Labels, i64, f64)>,
    ) -> usize {
        let oldest = now_ms() - self.limits.retention_ms;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        samples
            .into_iter()
            .map(|(name, labels, ts, value)| {
                self.insert_locked(
                    &mut inner,
                    name,
                    labels,
                    std::iter::once((ts, value)),
                    oldest,
                )
            })
            .sum()
    }

    /// Adds samples of one series to the store's (locked) contents; returns how many
    /// were kept.
    fn insert_locked(
        &self,
        inner: &mut Inner,
        name: &str,
        labels: &Labels,
        samples: impl IntoIterator<Item = (i64, f64)>,
        oldest: i64,
    ) -> usize {
        let (mut kept, mut refused) = (0, 0);
        let Inner { strings, metrics } = inner;
        if !metrics.contains_key(name) {
            metrics.insert(name.to_owned(), Metric::default());
        }
        let Some(metric) = metrics.get_mut(name) else {
            return 0;
        };
        let known = strings
            .key_of(labels)
            .and_then(|key| metric.index.get(&key, |id| metric.key(id)));
        let id = match known {
            Some(id) => id,
            None => {
                if self.count.load(Ordering::Relaxed) as usize >= self.limits.max_series {
                    let n = samples.into_iter().count() as u64;
                    self.counters.refused.fetch_add(n, Ordering::Relaxed);
                    if metric.is_empty() {
                        metrics.remove(name);
                    }
                    return 0;
                }
                self.count.fetch_add(1, Ordering::Relaxed);
                metric.add(strings.intern_key(labels))
            }
        };
        let Some(series) = metric.slots[id as usize].as_mut() else {
            return 0;
        };
        for (ts, value) in samples {
            if !value.is_finite() || ts < oldest {
                refused += 1;
                continue;
            }
            series.insert(ts, value);
            kept += 1;
        }
        let len = series.len();
        if len > self.limits.max_samples_per_series {
            series.drop_oldest(len - self.limits.max_samples_per_series);
        }
        series.drop_before(oldest);
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
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let Some(metric) = inner.metrics.get(name) else {
            return Vec::new();
        };
        metric
            .matching(&inner.strings, matchers)
            .filter_map(|series| {
                let picked: Vec<(i64, f64)> = series.range(from_ms, to_ms).collect();
                (!picked.is_empty()).then(|| (inner.strings.labels(&series.key), picked))
            })
            .collect()
    }

    /// The values of every matching series in `[from_ms, to_ms]`, pooled.
    pub fn values(&self, name: &str, matchers: &Labels, from_ms: i64, to_ms: i64) -> Vec<f64> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let Some(metric) = inner.metrics.get(name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for series in metric.matching(&inner.strings, matchers) {
            out.extend(series.range(from_ms, to_ms).map(|(_, v)| v));
        }
        out
    }

    /// The sum of the values of every matching series in `(from_ms, to_ms]`.
    pub fn sum(&self, name: &str, matchers: &Labels, from_ms: i64, to_ms: i64) -> (f64, usize) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let (Some(metric), Some(after)) = (inner.metrics.get(name), from_ms.checked_add(1)) else {
            return (0.0, 0);
        };
        let (mut sum, mut n) = (0.0, 0);
        for series in metric.matching(&inner.strings, matchers) {
            for (_, v) in series.range(after, to_ms) {
                sum += v;
                n += 1;
            }
        }
        (sum, n)
    }

    /// Drops samples older than the retention and series left empty (with the label
    /// strings and index entries only they held); seals the open buffer of series gone
    /// quiet.
    pub fn prune(&self) {
        self.prune_at(now_ms());
    }

    /// [`Store::prune`] as at `now` (milliseconds since the epoch): for replaying a
    /// load faster than it happened.
    pub fn prune_at(&self, now: i64) {
        let oldest = now - self.limits.retention_ms;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Inner { strings, metrics } = &mut *inner;
        let mut removed = 0u64;
        metrics.retain(|_, metric| {
            for (id, slot) in metric.slots.iter_mut().enumerate() {
                let Some(series) = slot else {
                    continue;
                };
                series.drop_before(oldest);
                series.seal_if_quiet(now - QUIET_MS);
                if series.is_empty() {
                    metric.index.remove(&series.key, id as u32);
                    strings.release_key(&series.key);
                    *slot = None;
                    metric.free.push(id as u32);
                    removed += 1;
                }
            }
            !metric.is_empty()
        });
        self.count.fetch_sub(removed, Ordering::Relaxed);
    }

    /// How many series and samples it holds.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let all = || {
            inner
                .metrics
                .values()
                .flat_map(|m| m.slots.iter().flatten())
        };
        (all().count(), all().map(Series::len).sum())
    }

    /// The heap bytes it holds, estimated from its structures' capacities (not the
    /// allocator's rounding or bookkeeping).
    pub fn bytes(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.strings.heap_bytes()
            + table_bytes(inner.metrics.capacity(), size_of::<(String, Metric)>())
            + inner
                .metrics
                .iter()
                .map(|(name, m)| name.capacity() + m.heap_bytes())
                .sum::<usize>()
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
    fn a_series_labels_are_interned_once_and_let_go_with_it() {
        let store = Store::new(StoreLimits {
            retention_ms: 1000,
            ..Default::default()
        });
        let now = now_ms();
        let v1 = labels(&[("service", "shop"), ("track", "canary"), ("version", "1")]);
        let v2 = labels(&[("service", "shop"), ("track", "canary"), ("version", "2")]);
        store.insert("m", &v1, now - 900, 1.0);
        store.insert("n", &v1, now - 900, 1.0);
        store.insert("m", &v2, now, 2.0);
        {
            let inner = store.inner.read().unwrap();
            // service, shop, track, canary, version, 1, 2: each once for three series.
            assert_eq!(inner.strings.len(), 7);
            assert_eq!(inner.metrics["m"].index.pairs(), 4);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        store.prune();
        let inner = store.inner.read().unwrap();
        // Version 1 is gone from both names, its string and its pair with it.
        assert_eq!(inner.strings.len(), 6);
        assert_eq!(inner.metrics["m"].index.pairs(), 3);
        assert!(!inner.metrics.contains_key("n"));
        assert_eq!(store.size(), (1, 1));
    }

    #[test]
    fn a_stale_series_is_small() {
        let store = Store::new(StoreLimits::default());
        let start = now_ms() - 200_000;
        // 68 one-second ticks of the simulated traffic for 125 versions: request and
        // error counts, their ratio, and a mean latency with every mantissa bit noise.
        let mut x = 0x9e37_79b9_u64;
        for version in 0..125 {
            let l = labels(&[
                ("environment", "staging"),
                ("service", "svc-1"),
                ("track", "canary"),
                ("version", &format!("1.0.{version}")),
            ]);
            for name in [
                "http_requests",
                "http_errors",
                "http_error_ratio",
                "http_latency_seconds",
            ] {
                let samples = (0..68).map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (requests, errors) = (20 + x % 2, u64::from(x.is_multiple_of(31)));
                    let value = match name {
                        "http_requests" => requests as f64,
                        "http_errors" => errors as f64,
                        "http_error_ratio" => errors as f64 / requests as f64,
                        _ => 0.045 * (0.7 + (x % 1_000_003) as f64 / 1_666_671.0),
                    };
                    (start + i * 1000 + (x % 5) as i64, value)
                });
                store.insert_many(name, &l, samples);
            }
        }
        let before = store.bytes();
        store.prune();
        let after = store.bytes();
        assert_eq!(store.size(), (500, 34_000));
        // Labels, index entries and 68 samples each, sealed; the open buffers are gone.
        assert!(after < before / 4, "{after} of {before}");
        assert!(after / 500 < 500, "{} bytes a series", after / 500);
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
