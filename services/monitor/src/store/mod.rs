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

    /// Lets go of the slots after the last series and of index capacity once more than
    /// half of it is unused (after a peak of series).
    fn shrink(&mut self) {
        if self.free.len() * 2 <= self.slots.len() {
            return;
        }
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        let len = self.slots.len();
        self.free.retain(|&id| (id as usize) < len);
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
        let slots = &self.slots;
        self.index
            .shrink(|id| Some(&slots.get(id as usize)?.as_ref()?.key));
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
            metric.shrink();
            !metric.is_empty()
        });
        strings.shrink();
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
mod tests;
