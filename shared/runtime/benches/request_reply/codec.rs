//! The envelope encoding the bench runs with, and envelope codec throughput in both
//! encodings, per second of this thread's CPU time.

use std::time::Instant;

use toronto_protocol::{Encoding, Envelope, decode, decode_raw, encode};

use crate::{Payload, loadavg, median, scale};

/// The encoding named by `BENCH_ENCODING` (`json` unless set).
pub(crate) fn bench_encoding() -> Encoding {
    match std::env::var("BENCH_ENCODING").as_deref() {
        Err(_) | Ok("json") => Encoding::Json,
        Ok("msgpack") => Encoding::MessagePack,
        Ok(other) => panic!("BENCH_ENCODING={other}: use json or msgpack"),
    }
}

pub(crate) fn encoding_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Json => "json",
        Encoding::MessagePack => "msgpack",
    }
}

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`); load from other
/// processes disturbs it far less than wall time.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Runs `f` `n` times; per second of this thread's CPU time (of wall time when that
/// cannot be read).
fn rate(n: usize, mut f: impl FnMut()) -> f64 {
    let (cpu0, start) = (thread_cpu_ns(), Instant::now());
    for _ in 0..n {
        f();
    }
    let seconds = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => start.elapsed().as_secs_f64(),
    };
    n as f64 / seconds
}

/// The codec rates of both encodings, whatever `BENCH_ENCODING` says: envelope round
/// trips (encode and decode) and decodes alone, 1 KiB data, and MessagePack decodes
/// through the general path (a `Value` tree for `data`, then the payload from it: what
/// `decode` did before its direct path). Measured in 5 interleaved rounds of `codec_n`
/// each (long enough for the CPU clock, which may advance a scheduler tick at a time);
/// medians.
pub(crate) fn print_codec_rates() {
    let codec_n = scale(100_000);
    let envelope = Envelope::builder(
        "toronto://bench",
        Payload {
            text: "x".repeat(1024),
        },
    )
    .subject("shop-api")
    .build();
    let bytes = |encoding| encode(&envelope, encoding).unwrap();
    let (json, msgpack) = (bytes(Encoding::Json), bytes(Encoding::MessagePack));
    let round_trip = |encoding| {
        let bytes = encode(&envelope, encoding).unwrap();
        let back: Envelope<Payload> = decode(&bytes, encoding).unwrap();
        std::hint::black_box(back);
    };
    let decode_only = |bytes: &[u8], encoding| {
        let back: Envelope<Payload> = decode(std::hint::black_box(bytes), encoding).unwrap();
        std::hint::black_box(back);
    };
    let general = |bytes: &[u8]| {
        let raw = decode_raw(std::hint::black_box(bytes), Encoding::MessagePack).unwrap();
        let flow = raw.flow();
        let back: Envelope<Payload> = raw.into_typed().unwrap();
        std::hint::black_box((back, flow));
    };
    let rounds = 5;
    let per_round = codec_n;
    let mut rates = vec![Vec::new(); 5];
    for _ in 0..rounds {
        rates[0].push(rate(per_round, || round_trip(Encoding::Json)));
        rates[1].push(rate(per_round, || decode_only(&json, Encoding::Json)));
        rates[2].push(rate(per_round, || round_trip(Encoding::MessagePack)));
        rates[3].push(rate(per_round, || {
            decode_only(&msgpack, Encoding::MessagePack)
        }));
        rates[4].push(rate(per_round, || general(&msgpack)));
    }
    let [rt_json, json, rt_msgpack, msgpack, tree] = rates
        .into_iter()
        .map(median)
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    println!(
        "envelope codec, 1 KiB data ({codec_n} each in each of {rounds} interleaved rounds, \
         medians; per second of CPU time; load average {})",
        loadavg()
    );
    println!("  {:<9} {:>16} {:>16}", "", "encode+decode", "decode only");
    println!("  {:<9} {rt_json:>14.0}/s {json:>14.0}/s", "json");
    println!("  {:<9} {rt_msgpack:>14.0}/s {msgpack:>14.0}/s", "msgpack");
    println!(
        "  {:<9} {:>16} {tree:>14.0}/s  (general path: Value tree, then the payload)",
        "msgpack", ""
    );
}
