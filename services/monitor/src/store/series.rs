//! One series' samples: sealed blocks (compact, see [`super::chunk`]) then an open
//! buffer of the newest samples, sorted by time throughout.

use super::chunk::{BLOCK, Block};
use super::labels::Key;

/// A series: its interned labels and its samples.
#[derive(Debug)]
pub(super) struct Series {
    /// (name, value) ids in the order of the label names.
    pub(super) key: Key,
    blocks: Vec<Block>,
    open: Vec<(i64, f64)>,
}

impl Series {
    pub(super) fn new(key: Key) -> Self {
        Self {
            key,
            blocks: Vec::new(),
            open: Vec::new(),
        }
    }

    /// Samples held.
    pub(super) fn len(&self) -> usize {
        self.blocks.iter().map(Block::live).sum::<usize>() + self.open.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.open.is_empty()
    }

    fn last_time(&self) -> Option<i64> {
        self.open
            .last()
            .map(|&(t, _)| t)
            .or_else(|| self.blocks.last().map(|b| b.last))
    }

    fn first_time(&self) -> Option<i64> {
        self.blocks
            .first()
            .map(|b| b.first)
            .or_else(|| self.open.first().map(|&(t, _)| t))
    }

    /// Adds a sample after every sample of the same or an earlier time.
    pub(super) fn insert(&mut self, t: i64, v: f64) {
        if self.last_time().is_none_or(|last| t >= last) {
            self.open.push((t, v));
        } else if self.open.first().is_some_and(|&(first, _)| first <= t) || self.blocks.is_empty()
        {
            let at = self.open.partition_point(|&(x, _)| x <= t);
            self.open.insert(at, (t, v));
        } else {
            // Out of order into a sealed block: decode, insert, seal again.
            let i = self
                .blocks
                .partition_point(|b| b.first <= t)
                .saturating_sub(1);
            let mut run: Vec<(i64, f64)> = self.blocks[i].iter().collect();
            let at = run.partition_point(|&(x, _)| x <= t);
            run.insert(at, (t, v));
            let sealed: Vec<Block> = Block::seal(&run).collect();
            self.blocks.splice(i..=i, sealed);
        }
        if self.open.len() >= BLOCK {
            self.blocks.extend(Block::seal(&self.open));
            self.open.clear();
        }
    }

    /// Drops the `n` oldest samples.
    pub(super) fn drop_oldest(&mut self, mut n: usize) {
        while n > 0 {
            let Some(block) = self.blocks.first_mut() else {
                self.open.drain(..n.min(self.open.len()));
                return;
            };
            if block.live() <= n {
                n -= block.live();
                self.blocks.remove(0);
            } else {
                block.skip(n);
                return;
            }
        }
    }

    /// Drops the samples older than `oldest`.
    pub(super) fn drop_before(&mut self, oldest: i64) {
        if self.first_time().is_none_or(|t| t >= oldest) {
            return;
        }
        while let Some(block) = self.blocks.first_mut() {
            if block.last < oldest {
                self.blocks.remove(0);
                continue;
            }
            if block.first < oldest {
                let n = block.iter().take_while(|&(t, _)| t < oldest).count();
                block.skip(n);
            }
            return;
        }
        let n = self.open.partition_point(|&(t, _)| t < oldest);
        self.open.drain(..n);
    }

    /// Seals the open buffer if its newest sample is older than `quiet` (joining the
    /// last block when both fit in one) and lets its memory go.
    pub(super) fn seal_if_quiet(&mut self, quiet: i64) {
        if self.open.last().is_none_or(|&(t, _)| t >= quiet) {
            return;
        }
        let open = std::mem::take(&mut self.open);
        match self.blocks.last() {
            Some(last) if last.live() + open.len() <= BLOCK => {
                let mut run: Vec<(i64, f64)> = last.iter().collect();
                run.extend_from_slice(&open);
                self.blocks.pop();
                self.blocks.extend(Block::seal(&run));
            }
            _ => self.blocks.extend(Block::seal(&open)),
        }
        self.blocks.shrink_to_fit();
    }

    /// The samples in `[from, to]`, oldest first.
    pub(super) fn range(&self, from: i64, to: i64) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.blocks
            .iter()
            .filter(move |b| b.last >= from && b.first <= to)
            .flat_map(Block::iter)
            .chain(self.open.iter().copied())
            .skip_while(move |&(t, _)| t < from)
            .take_while(move |&(t, _)| t <= to)
    }

    /// Heap bytes of its key and samples.
    pub(super) fn heap_bytes(&self) -> usize {
        self.key.len() * size_of::<(u32, u32)>()
            + self.blocks.capacity() * size_of::<Block>()
            + self.blocks.iter().map(Block::heap_bytes).sum::<usize>()
            + self.open.capacity() * size_of::<(i64, f64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(samples: impl IntoIterator<Item = (i64, f64)>) -> Vec<(i64, u64)> {
        samples.into_iter().map(|(t, v)| (t, v.to_bits())).collect()
    }

    /// The same operations on a plain sorted vector.
    fn model_insert(model: &mut Vec<(i64, f64)>, t: i64, v: f64) {
        let at = model.partition_point(|&(x, _)| x <= t);
        model.insert(at, (t, v));
    }

    #[test]
    fn behaves_like_a_sorted_vector() {
        let mut series = Series::new(Key::from([]));
        let mut model = Vec::new();
        let mut x = 0x2545_f491_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = 0i64;
        for step in 0..5_000 {
            let r = next();
            match r % 50 {
                0 => {
                    // Out of order, possibly far back, possibly a tie.
                    let back = (next() % 400) as i64 * 1000;
                    let v = f64::from_bits(next() >> 2);
                    series.insert(t - back, v);
                    model_insert(&mut model, t - back, v);
                }
                1 => {
                    let n = (next() % 90) as usize;
                    series.drop_oldest(n);
                    model.drain(..n.min(model.len()));
                }
                2 => {
                    let oldest = t - (next() % 300) as i64 * 1000;
                    series.drop_before(oldest);
                    model.retain(|&(x, _)| x >= oldest);
                }
                3 => series.seal_if_quiet(t + 1),
                _ => {
                    t += 1000 + (r % 3) as i64;
                    let v = if step % 2 == 0 {
                        (step / 7) as f64
                    } else {
                        0.045 * (r % 97) as f64
                    };
                    series.insert(t, v);
                    model_insert(&mut model, t, v);
                }
            }
            assert_eq!(series.len(), model.len(), "step {step}");
            if step % 97 == 0 {
                assert_eq!(
                    bits(series.range(i64::MIN, i64::MAX)),
                    bits(model.iter().copied())
                );
                let (from, to) = (t - 200_000, t - 50_000);
                let want = model.iter().copied().filter(|&(x, _)| x >= from && x <= to);
                assert_eq!(bits(series.range(from, to)), bits(want));
            }
        }
    }

    #[test]
    fn a_quiet_series_lets_its_open_buffer_go() {
        let mut series = Series::new(Key::from([]));
        for i in 0..68 {
            series.insert(i * 1000, 0.045 + i as f64 * 1e-5);
        }
        let open = series.heap_bytes();
        series.seal_if_quiet(10_000);
        assert_eq!(series.heap_bytes(), open, "not quiet yet");
        series.seal_if_quiet(100_000);
        assert_eq!(series.len(), 68);
        assert!(
            series.heap_bytes() < open / 2,
            "{} of {open}",
            series.heap_bytes()
        );
    }
}
