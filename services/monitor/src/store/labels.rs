//! Label names and values interned store-wide, and the per-metric index of series by
//! their labels and by each (name, value) pair they hold.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use super::Labels;

/// A series' labels: (name, value) string ids, in the order of the names.
pub(super) type Key = Box<[(u32, u32)]>;

/// Every label name and value held by a series, once, counted by the series that hold
/// it; one no series holds any more is let go.
#[derive(Debug, Default)]
pub(super) struct Strings {
    ids: HashMap<Arc<str>, u32>,
    /// By id: the string and how many label slots of series hold it.
    entries: Vec<(Option<Arc<str>>, u32)>,
    free: Vec<u32>,
}

impl Strings {
    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            self.entries[id as usize].1 += 1;
            return id;
        }
        let held: Arc<str> = Arc::from(s);
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = (Some(held.clone()), 1);
                id
            }
            None => {
                self.entries.push((Some(held.clone()), 1));
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(held, id);
        id
    }

    fn release(&mut self, id: u32) {
        let entry = &mut self.entries[id as usize];
        entry.1 -= 1;
        if entry.1 == 0 {
            if let Some(s) = entry.0.take() {
                self.ids.remove(&*s);
            }
            self.free.push(id);
        }
    }

    /// Lets go of unused capacity once three quarters of it is unused.
    pub(super) fn shrink(&mut self) {
        if self.ids.len() * 4 >= self.entries.capacity() {
            return;
        }
        while self.entries.last().is_some_and(|(s, _)| s.is_none()) {
            self.entries.pop();
        }
        let len = self.entries.len();
        self.free.retain(|&id| (id as usize) < len);
        self.entries.shrink_to_fit();
        self.free.shrink_to_fit();
        self.ids.shrink_to_fit();
    }

    /// The string of `id`.
    pub(super) fn name(&self, id: u32) -> &str {
        self.entries[id as usize].0.as_deref().unwrap_or_default()
    }

    /// Strings held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The key of `labels`, if every name and value is held.
    pub(super) fn key_of(&self, labels: &Labels) -> Option<Vec<(u32, u32)>> {
        labels
            .iter()
            .map(|(k, v)| Some((self.get(k)?, self.get(v)?)))
            .collect()
    }

    /// The key of `labels`, interning what is new; held until [`Strings::release_key`].
    pub(super) fn intern_key(&mut self, labels: &Labels) -> Key {
        labels
            .iter()
            .map(|(k, v)| (self.intern(k), self.intern(v)))
            .collect()
    }

    pub(super) fn release_key(&mut self, key: &[(u32, u32)]) {
        for &(k, v) in key.iter() {
            self.release(k);
            self.release(v);
        }
    }

    /// The labels of `key`.
    pub(super) fn labels(&self, key: &[(u32, u32)]) -> Labels {
        key.iter()
            .map(|&(k, v)| (self.name(k).to_owned(), self.name(v).to_owned()))
            .collect()
    }

    /// Heap bytes held (estimated from capacities).
    pub(super) fn heap_bytes(&self) -> usize {
        table_bytes(self.ids.capacity(), size_of::<(Arc<str>, u32)>())
            + self.entries.capacity() * size_of::<(Option<Arc<str>>, u32)>()
            + self.free.capacity() * size_of::<u32>()
            + self
                .ids
                .keys()
                .map(|s| 2 * size_of::<usize>() + s.len())
                .sum::<usize>()
    }
}

/// Heap bytes of a hash table of `capacity` entries of `entry` bytes (hashbrown: a
/// power of two of buckets at most 7/8 full, one control byte each).
pub(super) fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (entry + 1) + 16
}

/// The series of one metric name by their key, and by each (name, value) pair. The
/// keys themselves are held by the series: the index asks for them by id.
#[derive(Debug, Default)]
pub(super) struct Index {
    hasher: RandomState,
    /// Series ids, hashed by their key.
    by_key: HashTable<u32>,
    /// Sorted series ids.
    by_pair: HashMap<(u32, u32), Vec<u32>>,
}

impl Index {
    fn hash(&self, key: &[(u32, u32)]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The id of the series of `key`.
    pub(super) fn get<'a>(
        &self,
        key: &[(u32, u32)],
        key_of: impl Fn(u32) -> Option<&'a [(u32, u32)]>,
    ) -> Option<u32> {
        self.by_key
            .find(self.hash(key), |&id| key_of(id) == Some(key))
            .copied()
    }

    /// Indexes series `id`, whose key `key_of` already tells.
    pub(super) fn add<'a>(&mut self, id: u32, key_of: impl Fn(u32) -> Option<&'a [(u32, u32)]>) {
        let key = key_of(id).unwrap_or_default();
        for &pair in key {
            let ids = self.by_pair.entry(pair).or_default();
            if let Err(at) = ids.binary_search(&id) {
                ids.insert(at, id);
            }
        }
        let hasher = &self.hasher;
        self.by_key
            .insert_unique(hasher.hash_one(key), id, |&other| {
                hasher.hash_one(key_of(other).unwrap_or_default())
            });
    }

    /// Forgets series `id` of `key`.
    pub(super) fn remove(&mut self, key: &[(u32, u32)], id: u32) {
        if let Ok(entry) = self.by_key.find_entry(self.hash(key), |&other| other == id) {
            entry.remove();
        }
        for pair in key {
            let Some(ids) = self.by_pair.get_mut(pair) else {
                continue;
            };
            if let Ok(at) = ids.binary_search(&id) {
                ids.remove(at);
            }
            if ids.is_empty() {
                self.by_pair.remove(pair);
            } else if ids.capacity() > 2 * ids.len() + 4 {
                ids.shrink_to_fit();
            }
        }
    }

    /// Lets go of the tables' capacity when three quarters of it is unused.
    pub(super) fn shrink<'a>(&mut self, key_of: impl Fn(u32) -> Option<&'a [(u32, u32)]>) {
        if self.by_key.len() * 4 < self.by_key.capacity() {
            let hasher = &self.hasher;
            self.by_key
                .shrink_to_fit(|&id| hasher.hash_one(key_of(id).unwrap_or_default()));
        }
        if self.by_pair.len() * 4 < self.by_pair.capacity() {
            self.by_pair.shrink_to_fit();
        }
    }

    /// The ids of the series holding every pair of `matchers` (a key), read from the
    /// pair held by the fewest series.
    pub(super) fn matching<'a>(
        &'a self,
        matchers: &'a [(u32, u32)],
        key_of: impl Fn(u32) -> Option<&'a [(u32, u32)]> + 'a,
    ) -> impl Iterator<Item = u32> + 'a {
        let mut fewest: Option<&Vec<u32>> = None;
        for pair in matchers {
            match self.by_pair.get(pair) {
                None => {
                    fewest = None;
                    break;
                }
                Some(ids) if fewest.is_none_or(|f| ids.len() < f.len()) => fewest = Some(ids),
                Some(_) => {}
            }
        }
        fewest.into_iter().flatten().copied().filter(move |&id| {
            key_of(id).is_some_and(|key| matchers.iter().all(|m| key.contains(m)))
        })
    }

    /// (Name, value) pairs indexed.
    #[cfg(test)]
    pub(super) fn pairs(&self) -> usize {
        self.by_pair.len()
    }

    /// Heap bytes held (estimated from capacities).
    pub(super) fn heap_bytes(&self) -> usize {
        table_bytes(self.by_key.capacity(), size_of::<u32>())
            + table_bytes(self.by_pair.capacity(), size_of::<((u32, u32), Vec<u32>)>())
            + self
                .by_pair
                .values()
                .map(|ids| ids.capacity() * size_of::<u32>())
                .sum::<usize>()
    }
}
