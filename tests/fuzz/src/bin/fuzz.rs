//! A time-bounded mutational fuzzer over every target of `toronto_fuzz`: it starts
//! from each target's seeds and corpus, mutates (bit flips, byte changes, inserted and
//! removed ranges, repeated ranges that deepen nesting, splices of two inputs, and
//! tokens such as brackets and huge numbers), keeps what is new in length, and prints,
//! per target, the executions and the crashes. A crashing input is written to
//! `tests/fuzz/corpus/<target>/` so that the test run replays it from then on.
//!
//! ```sh
//! scripts/fuzz 60        # seconds in all, shared by the targets
//! ```

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use toronto_fuzz::{TARGETS, Target, check, corpus_dir};

const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b",",
    b":",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\\u0000",
    "\u{202e}".as_bytes(),
    b"\n",
    b"--",
    b"=",
    b"~",
    b"*",
    b"apiVersion: openslo/v1\n",
    b"\xc1",
    b"\xff\xff\xff\xff",
    b"\x91\x91\x91",
    b"\xdf\xff\xff\xff\xff",
];

fn mutate(rng: &mut StdRng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                out.splice(i..i, token.iter().copied());
            }
            3 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                out.drain(a..b);
            }
            4 if len > 1 => {
                // Repeat a range many times: deep nesting, long strings.
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 8));
                let chunk = out[a..b].to_vec();
                let times = rng.random_range(2..200);
                for _ in 0..times {
                    out.splice(b..b, chunk.iter().copied());
                }
            }
            5 if !pool.is_empty() => {
                let other = &pool[rng.random_range(0..pool.len())];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            6 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..600);
                let open = if rng.random() { b'[' } else { b'{' };
                out.splice(i..i, std::iter::repeat_n(open, n));
            }
            _ => {
                let n = rng.random_range(0..32);
                out.extend((0..n).map(|_| rng.random::<u8>()));
            }
        }
    }
    out.truncate(256 * 1024);
    out
}

fn corpus(target: &Target) -> Vec<Vec<u8>> {
    let mut pool: Vec<Vec<u8>> = target.seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    if let Ok(entries) = std::fs::read_dir(corpus_dir(target.name)) {
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                pool.push(bytes);
            }
        }
    }
    pool
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    // The panics are counted and saved; their messages would flood the output.
    std::panic::set_hook(Box::new(|_| {}));
    let budget = Duration::from_secs(seconds) / TARGETS.len() as u32;
    println!(
        "fuzzing {} targets for {seconds} s (seed {seed})",
        TARGETS.len()
    );
    println!(
        "{:<18} {:>12} {:>10} {:>8}",
        "target", "executions", "execs/s", "crashes"
    );
    let mut crashed = 0;
    for target in TARGETS {
        let mut rng = StdRng::seed_from_u64(seed ^ target.name.len() as u64);
        let mut pool = corpus(target);
        let (started, mut runs, mut crashes) = (Instant::now(), 0u64, 0u64);
        while started.elapsed() < budget {
            let base = pool[rng.random_range(0..pool.len())].clone();
            let input = mutate(&mut rng, &base, &pool);
            runs += 1;
            if let Err(message) = check(target, &input) {
                crashes += 1;
                let dir = corpus_dir(target.name);
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("crash-{runs}-{}", input.len()));
                let _ = std::fs::write(&file, &input);
                eprintln!(
                    "{}: crash saved to {}: {message}",
                    target.name,
                    file.display()
                );
            }
            // Keep a few mutants as new starting points, bounded.
            if pool.len() < 256 && rng.random_range(0..64) == 0 {
                pool.push(input);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{:<18} {:>12} {:>10.0} {:>8}",
            target.name,
            runs,
            runs as f64 / secs,
            crashes
        );
        crashed += crashes;
    }
    if crashed > 0 {
        std::process::exit(1);
    }
}
