//! The compact encoding of a run of samples (a block): timestamps as delta-of-delta in
//! variable-length bit fields, values XORed with the previous value's bits with the
//! leading and trailing zero counts (Gorilla, Pelkonen et al., VLDB 2015). Lossless:
//! every timestamp and every value's exact bits come back, in order.

/// Samples per block sealed from a series' open buffer.
pub(super) const BLOCK: usize = 128;

/// Bits appended to a byte buffer, most significant bit first.
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (8 when a new byte is needed).
    used: u32,
}

impl BitWriter {
    fn new() -> Self {
        Self {
            bytes: Vec::new(),
            used: 8,
        }
    }

    /// Appends the low `bits` bits of `value` (at most 64).
    fn push(&mut self, value: u64, bits: u32) {
        let mut left = bits;
        while left > 0 {
            if self.used == 8 {
                self.bytes.push(0);
                self.used = 0;
            }
            let room = 8 - self.used;
            let take = room.min(left);
            let chunk = ((value >> (left - take)) & ((1u64 << take) - 1)) as u8;
            if let Some(last) = self.bytes.last_mut() {
                *last |= chunk << (room - take);
            }
            self.used += take;
            left -= take;
        }
    }

    fn bit(&mut self, set: bool) {
        self.push(u64::from(set), 1);
    }
}

/// Bits read back from a byte buffer; past its end it reads zeros.
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn read(&mut self, bits: u32) -> u64 {
        let mut value = 0u64;
        let mut left = bits;
        while left > 0 {
            let byte = self.bytes.get(self.pos / 8).copied().unwrap_or(0);
            let offset = (self.pos % 8) as u32;
            let room = 8 - offset;
            let take = room.min(left);
            let chunk = (byte >> (room - take)) & (((1u16 << take) - 1) as u8);
            value = (value << take) | u64::from(chunk);
            self.pos += take as usize;
            left -= take;
        }
        value
    }

    fn bit(&mut self) -> bool {
        self.read(1) == 1
    }
}

/// Delta-of-delta buckets after the one-bit `0` for zero: (prefix, prefix bits,
/// payload bits), of the zigzag-encoded value.
const BUCKETS: [(u64, u32, u32); 5] = [
    (0b10, 2, 4),
    (0b110, 3, 8),
    (0b1110, 4, 12),
    (0b11110, 5, 32),
    (0b11111, 5, 64),
];

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The running state shared by the encoder and the decoder.
#[derive(Clone, Copy)]
struct State {
    time: i64,
    delta: i64,
    bits: u64,
    /// Leading and trailing zeros of the last XOR window; 64 before the first.
    leading: u32,
    trailing: u32,
}

fn encode(samples: &[(i64, f64)]) -> Box<[u8]> {
    let mut w = BitWriter::new();
    let mut s = State {
        time: 0,
        delta: 0,
        bits: 0,
        leading: 64,
        trailing: 64,
    };
    for (i, &(t, v)) in samples.iter().enumerate() {
        let bits = v.to_bits();
        if i == 0 {
            w.push(t as u64, 64);
        } else {
            // Wrapping: a bijection on 64 bits, so any pair of timestamps round-trips.
            let delta = t.wrapping_sub(s.time);
            let zz = zigzag(delta.wrapping_sub(s.delta));
            s.delta = delta;
            if zz == 0 {
                w.bit(false);
            } else {
                let &(prefix, prefix_bits, payload) = BUCKETS
                    .iter()
                    .find(|&&(_, _, payload)| payload == 64 || zz < 1u64 << payload)
                    .unwrap_or(&BUCKETS[4]);
                w.push(prefix, prefix_bits);
                w.push(zz, payload);
            }
        }
        // The first value is XORed with the bits of 0.0.
        let xor = bits ^ s.bits;
        if xor == 0 {
            w.bit(false);
        } else {
            w.bit(true);
            let (lz, tz) = (xor.leading_zeros(), xor.trailing_zeros());
            // Inside the previous window, unless it wastes more bits than a new
            // window's 12-bit header.
            if s.leading <= lz && s.trailing <= tz && lz + tz <= s.leading + s.trailing + 12 {
                w.bit(false);
                w.push(xor >> s.trailing, 64 - s.leading - s.trailing);
            } else {
                let len = 64 - lz - tz;
                w.bit(true);
                w.push(u64::from(lz), 6);
                w.push(u64::from(len - 1), 6);
                w.push(xor >> tz, len);
                (s.leading, s.trailing) = (lz, tz);
            }
        }
        s.time = t;
        s.bits = bits;
    }
    // A copy of the exact size: shrinking the grown buffer in place would keep its
    // allocation (mimalloc keeps a block when the new size is at least half of it).
    Box::from(w.bytes.as_slice())
}

/// The samples of a block, decoded as they are read.
pub(super) struct Decoder<'a> {
    r: BitReader<'a>,
    left: usize,
    first: bool,
    s: State,
}

impl Iterator for Decoder<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let s = &mut self.s;
        if self.first {
            self.first = false;
            s.time = self.r.read(64) as i64;
        } else {
            let mut zz = 0;
            if self.r.bit() {
                let mut bucket = 0;
                while bucket < 4 && self.r.bit() {
                    bucket += 1;
                }
                zz = self.r.read(BUCKETS[bucket].2);
            }
            s.delta = s.delta.wrapping_add(unzigzag(zz));
            s.time = s.time.wrapping_add(s.delta);
        }
        if self.r.bit() {
            if self.r.bit() {
                s.leading = self.r.read(6) as u32;
                let len = self.r.read(6) as u32 + 1;
                s.trailing = 64 - s.leading - len;
            }
            let len = 64 - s.leading - s.trailing;
            s.bits ^= self.r.read(len) << s.trailing;
        }
        Some((s.time, f64::from_bits(s.bits)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// Encoded samples, oldest first; the first `skip` of them are dropped (by retention
/// or the per-series limit) but stay encoded until the whole block goes.
#[derive(Debug)]
pub(super) struct Block {
    /// Timestamp of the first sample kept.
    pub(super) first: i64,
    /// Timestamp of the last sample.
    pub(super) last: i64,
    len: u16,
    skip: u16,
    data: Box<[u8]>,
}

impl Block {
    /// Blocks of at most [`BLOCK`] samples holding `samples` (sorted by time).
    pub(super) fn seal(samples: &[(i64, f64)]) -> impl Iterator<Item = Block> + '_ {
        samples.chunks(BLOCK).map(|run| Block {
            first: run[0].0,
            last: run[run.len() - 1].0,
            len: run.len() as u16,
            skip: 0,
            data: encode(run),
        })
    }

    /// Samples kept.
    pub(super) fn live(&self) -> usize {
        usize::from(self.len - self.skip)
    }

    /// The samples kept, oldest first.
    pub(super) fn iter(&self) -> std::iter::Skip<Decoder<'_>> {
        Decoder {
            r: BitReader {
                bytes: &self.data,
                pos: 0,
            },
            left: usize::from(self.len),
            first: true,
            s: State {
                time: 0,
                delta: 0,
                bits: 0,
                leading: 64,
                trailing: 64,
            },
        }
        .skip(usize::from(self.skip))
    }

    /// Drops the `n` oldest samples kept (fewer than [`Block::live`]).
    pub(super) fn skip(&mut self, n: usize) {
        self.skip += n as u16;
        if let Some((t, _)) = self.iter().next() {
            self.first = t;
        }
    }

    /// Heap bytes of the encoding.
    pub(super) fn heap_bytes(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a deterministic generator, enough to vary bit patterns.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A finite value: random bits, extremes, zeros, small decimals, counters.
        fn value(&mut self, prev: f64) -> f64 {
            const EDGES: [f64; 9] = [
                0.0,
                -0.0,
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
                -f64::MIN_POSITIVE,
                5e-324,
                -5e-324,
                1.0,
            ];
            match self.below(6) {
                0 => loop {
                    let v = f64::from_bits(self.next());
                    if v.is_finite() {
                        return v;
                    }
                },
                1 => EDGES[self.below(EDGES.len() as u64) as usize],
                2 => prev,
                3 => prev + self.below(100) as f64,
                4 => self.below(10_000) as f64 / 10_000.0,
                _ => 0.045 * (0.7 + self.below(600) as f64 / 1000.0),
            }
        }

        fn time(&mut self, prev: i64) -> i64 {
            match self.below(8) {
                0 => self.next() as i64,
                1 => [i64::MIN, i64::MAX, 0, -1][self.below(4) as usize],
                2 => prev.wrapping_add(self.below(1 << 40) as i64),
                3 => prev.wrapping_add(1000 + self.below(5) as i64),
                _ => prev.wrapping_add(1000),
            }
        }
    }

    fn same(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
    }

    #[test]
    fn blocks_round_trip_every_bit() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for round in 0..2_000 {
            let n = 1 + g.below(300) as usize;
            let (mut t, mut v) = (g.next() as i64, 0.0);
            let samples: Vec<(i64, f64)> = (0..n)
                .map(|_| {
                    // Some runs are regular through and through.
                    t = if round % 4 == 0 {
                        t.wrapping_add(1000)
                    } else {
                        g.time(t)
                    };
                    v = g.value(v);
                    (t, v)
                })
                .collect();
            let decoded: Vec<(i64, f64)> = Block::seal(&samples)
                .flat_map(|b| b.iter().collect::<Vec<_>>())
                .collect();
            assert!(same(&samples, &decoded), "round {round}");
        }
    }

    #[test]
    fn regular_samples_take_a_few_bits() {
        let counter: Vec<(i64, f64)> = (0..128)
            .map(|i| (1_700_000_000_000 + i * 1000, (i / 3) as f64))
            .collect();
        let block = Block::seal(&counter).next().unwrap();
        // 8 bytes for the first timestamp, then 2 bits or a short XOR window each.
        assert!(
            block.heap_bytes() < 16 + 128 * 3 / 8 + 128 * 20 / 8,
            "{}",
            block.heap_bytes()
        );
        let constant: Vec<(i64, f64)> = (0..128).map(|i| (i * 15_000, 0.0)).collect();
        // The first timestamp, a zero bit for 0.0, the first delta in 37 bits, then two
        // zero bits a sample.
        assert_eq!(
            Block::seal(&constant).next().unwrap().heap_bytes(),
            (64 + 1 + 38 + 2 * 126usize).div_ceil(8)
        );
    }

    #[test]
    fn skipping_drops_the_oldest_and_moves_the_first_timestamp() {
        let samples: Vec<(i64, f64)> = (0..10).map(|i| (i * 10, i as f64)).collect();
        let mut block = Block::seal(&samples).next().unwrap();
        block.skip(3);
        assert_eq!((block.first, block.last, block.live()), (30, 90, 7));
        assert_eq!(block.iter().next(), Some((30, 3.0)));
        assert!(same(&block.iter().collect::<Vec<_>>(), &samples[3..]));
    }
}
