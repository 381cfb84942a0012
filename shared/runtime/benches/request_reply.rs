//! Request/reply cost of the runtime next to raw async-nats, against one real
//! nats-server, plus envelope codec throughput. Prints figures; asserts nothing.
//!
//! Three paths side by side in one run: raw (512 bytes echoed, no headers), the
//! contract's floor (raw async-nats carrying what the contract makes every request
//! carry: the request envelope's bytes, `Content-Type` and `traceparent` both ways, a
//! reply of the runtime's reply size, no codec and no validation), and the runtime (a
//! typed endpoint called through `rpc::call`).
//!
//! The paths are measured in rounds (`BENCH_ROUNDS`, 5 unless set): each round runs
//! every row (sequential, 16-way, 64-way) of every path, the paths in turn, so that
//! load from other processes on a shared machine falls on all of them alike. Each
//! figure is the median over the rounds and each ratio the median of the per-round
//! ratios; beside wall time it prints the CPU time per request of this process and
//! of the nats-server (from `/proc/<pid>/stat`), which load disturbs far less.
//!
//! Run: `cargo bench -p toronto-runtime --bench request_reply`
//! (set `BENCH_SCALE=0.2` for a quicker, noisier run; `BENCH_SPLIT=1` breaks the
//! runtime's cost down into headers, service side and client side;
//! `BENCH_ONLY=raw|floor|service|client|runtime` runs one path `BENCH_WAYS` (64)
//! way, for a profiler; `BENCH_LOGS=1` installs the logging every service installs,
//! JSON at `info`, so that the runtime's per-request span is recorded as in a service).
//! `BENCH_ENCODING=json|msgpack` (json unless set) picks the envelope encoding: the
//! floor then carries the MessagePack bytes of the same envelopes, and the runtime's
//! client sends MessagePack (the service answers in the request's encoding).
//! `BENCH_ONLY=codec` prints only the envelope codec rates (both encodings).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toronto_protocol::{Encoding, Envelope, ErrorBody, Message, decode, decode_raw, encode};
use toronto_runtime::Metrics;
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::rpc::call;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_testkit::NatsServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Payload {
    text: String,
}

impl Message for Payload {
    const NAME: &'static str = "bench.payload";
    const MAJOR: u32 = 1;
}

// The same allocator as the service binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RAW_SUBJECT: &str = "bench.raw";
const RUNTIME_SUBJECT: &str = "bench.runtime";

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(50)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[derive(Clone, Copy)]
enum Path {
    Raw,
    Runtime,
    RuntimeRawClient,
    RawHeaders,
    RawSpawn,
    Canned,
    Floor,
}

/// The traceparent the floor path sends and answers with, as the contract's headers do.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What every request of a path sends, built once.
struct Load {
    /// The raw paths' 512 bytes.
    payload: Bytes,
    /// The typed client's request envelope.
    envelope: Envelope<Payload>,
    /// That envelope's bytes in `encoding`, for the paths that send it without a codec.
    request_bytes: Bytes,
    /// The envelope encoding of every path that carries an envelope (`BENCH_ENCODING`).
    encoding: Encoding,
}

/// The encoding named by `BENCH_ENCODING` (`json` unless set).
fn bench_encoding() -> Encoding {
    match std::env::var("BENCH_ENCODING").as_deref() {
        Err(_) | Ok("json") => Encoding::Json,
        Ok("msgpack") => Encoding::MessagePack,
        Ok(other) => panic!("BENCH_ENCODING={other}: use json or msgpack"),
    }
}

fn encoding_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Json => "json",
        Encoding::MessagePack => "msgpack",
    }
}

/// `Content-Type` (and `traceparent`, when asked) as the contract's requests carry them.
fn contract_headers(encoding: Encoding, traceparent: bool) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Content-Type", encoding.content_type());
    if traceparent {
        h.insert("traceparent", TRACEPARENT);
    }
    h
}

async fn one_request(client: &Client, path: Path, load: &Load) {
    let Load {
        payload,
        envelope,
        request_bytes,
        encoding,
    } = load;
    let encoding = *encoding;
    match path {
        Path::Raw => {
            let reply = client.request(RAW_SUBJECT, payload.clone()).await.unwrap();
            assert_eq!(reply.payload.len(), payload.len());
        }
        Path::RuntimeRawClient => {
            let h = contract_headers(encoding, true);
            let reply = client
                .request_with_headers(RUNTIME_SUBJECT, h, request_bytes.clone())
                .await
                .unwrap();
            assert!(reply.payload.len() > 512);
        }
        Path::Canned => {
            let reply: Envelope<Payload> = call(
                client,
                "bench.canned",
                envelope,
                encoding,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            assert_eq!(reply.data.text.len(), 512);
        }
        Path::Floor => {
            // The contract's floor: the request envelope's bytes and headers, answered
            // with the same headers and a reply of the runtime's reply size, no codec.
            let h = contract_headers(encoding, true);
            let reply = client
                .request_with_headers("bench.floor", h, request_bytes.clone())
                .await
                .unwrap();
            assert!(reply.payload.len() > 512);
        }
        Path::RawSpawn => {
            let h = contract_headers(encoding, false);
            let reply = client
                .request_with_headers("bench.rawspawn", h, payload.clone())
                .await
                .unwrap();
            assert_eq!(reply.payload.len(), payload.len());
        }
        Path::RawHeaders => {
            let h = contract_headers(encoding, true);
            let reply = client
                .request_with_headers(RAW_SUBJECT, h, payload.clone())
                .await
                .unwrap();
            assert_eq!(reply.payload.len(), payload.len());
        }
        Path::Runtime => {
            let reply: Envelope<Payload> = call(
                client,
                RUNTIME_SUBJECT,
                envelope,
                encoding,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            assert_eq!(reply.data.text.len(), envelope.data.text.len());
        }
    }
}

/// One measured stretch: sequential latency or concurrent throughput.
#[derive(Clone, Copy)]
enum Row {
    Sequential,
    Ways(usize),
}

/// What one stretch of one path measured.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// p50 in µs (sequential) or requests per second (concurrent).
    value: f64,
    /// p99 in µs (sequential only).
    p99: f64,
    /// CPU time of this process per request, µs.
    cpu_us: f64,
    /// CPU time of the nats-server per request, µs (0 when it cannot be read).
    server_cpu_us: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU ticks of process `pid` (`self` for this one).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `)`.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The nats-server this process started (the test kit's child), to read its CPU.
fn nats_server_pid() -> Option<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let comm = &stat[stat.find('(')? + 1..stat.rfind(')')?];
            let ppid = stat[stat.rfind(')')? + 2..].split(' ').nth(1)?;
            (comm == "nats-server" && ppid == me).then_some(pid)
        })
}

async fn sequential(client: &Client, path: Path, n: usize, load: &Load) -> (f64, f64) {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        one_request(client, path, load).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
    )
}

async fn concurrent(
    client: &Client,
    path: Path,
    workers: usize,
    total: usize,
    load: &Arc<Load>,
) -> (f64, usize) {
    let per_worker = total / workers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let client = client.clone();
            let load = load.clone();
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    one_request(&client, path, &load).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let done = per_worker * workers;
    (done as f64 / start.elapsed().as_secs_f64(), done)
}

/// Measures one stretch of `path`, with the CPU this process and the server spent on it.
async fn measure(
    client: &Client,
    path: Path,
    row: Row,
    (n, total): (usize, usize),
    load: &Arc<Load>,
    server: Option<&str>,
) -> Sample {
    for _ in 0..scale(100) {
        one_request(client, path, load).await;
    }
    let cpu = || cpu_ticks("self").unwrap_or(0);
    let server_cpu = || server.and_then(cpu_ticks).unwrap_or(0);
    let (cpu0, server0) = (cpu(), server_cpu());
    let (value, p99, count) = match row {
        Row::Sequential => {
            let (p50, p99) = sequential(client, path, n, load).await;
            (p50, p99, n)
        }
        Row::Ways(workers) => {
            let (rate, done) = concurrent(client, path, workers, total, load).await;
            (rate, 0.0, done)
        }
    };
    let per_request = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / count as f64;
    Sample {
        value,
        p99,
        cpu_us: per_request(cpu() - cpu0),
        server_cpu_us: per_request(server_cpu() - server0),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Every round measures each row of each path once, the paths in turn (each round
/// starting with the next path), so that load from elsewhere falls on all of them.
/// Returns `[row][path][round]`.
async fn interleaved(
    client: &Client,
    paths: &[Path],
    rows: &[Row],
    sizes: (usize, usize),
    rounds: usize,
    load: &Arc<Load>,
    server: Option<&str>,
) -> Vec<Vec<Vec<Sample>>> {
    let mut results = vec![vec![Vec::with_capacity(rounds); paths.len()]; rows.len()];
    for round in 0..rounds {
        for (r, row) in rows.iter().enumerate() {
            for k in 0..paths.len() {
                let p = (k + round) % paths.len();
                let sample = measure(client, paths[p], *row, sizes, load, server).await;
                results[r][p].push(sample);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    results
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
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
fn print_codec_rates() {
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

#[tokio::main]
async fn main() {
    if std::env::var("BENCH_ONLY").as_deref() == Ok("codec") {
        print_codec_rates();
        return;
    }
    let encoding = bench_encoding();
    if std::env::var("BENCH_LOGS").is_ok() {
        // The logging every service installs (JSON on stderr, `info`), so that the
        // request's span costs what it costs in a service.
        toronto_runtime::telemetry::init(&toronto_runtime::config::LogConfig::default());
    }
    let server = NatsServer::start().await;
    let responder = server.client().await;
    let requester = server.client().await;

    // Raw: the plainest async-nats responder.
    let mut raw_sub = responder.subscribe(RAW_SUBJECT).await.unwrap();
    let raw_client = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = raw_sub.next().await {
            if let Some(reply) = m.reply {
                raw_client.publish(reply, m.payload).await.unwrap();
            }
        }
    });

    // Raw, but shaped like a service: a task per request and a header on the reply.
    let mut spawn_sub = responder.subscribe("bench.rawspawn").await.unwrap();
    let spawn_client = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = spawn_sub.next().await {
            let c = spawn_client.clone();
            tokio::spawn(async move {
                if let Some(reply) = m.reply {
                    let h = contract_headers(encoding, false);
                    c.publish_with_headers(reply, h, m.payload).await.unwrap();
                }
            });
        }
    });

    // Raw, answering a fixed reply envelope: isolates the typed client's cost.
    let canned_headers = contract_headers(encoding, false);
    let canned = Bytes::from(
        encode(
            &Envelope::builder(
                "toronto://bench",
                Payload {
                    text: "x".repeat(512),
                },
            )
            .build(),
            encoding,
        )
        .unwrap(),
    );
    let mut canned_sub = responder.subscribe("bench.canned").await.unwrap();
    let canned_client = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = canned_sub.next().await {
            if let Some(reply) = m.reply {
                // JSON needs no header (absent means JSON), as before.
                let sent = match encoding {
                    Encoding::Json => canned_client.publish(reply, canned.clone()).await,
                    Encoding::MessagePack => {
                        canned_client
                            .publish_with_headers(reply, canned_headers.clone(), canned.clone())
                            .await
                    }
                };
                sent.unwrap();
            }
        }
    });

    // Runtime: a typed endpoint with envelope decode, validation and encode.
    let host = ServiceHost::start(
        responder.clone(),
        ServiceSpec {
            name: "toronto-bench".into(),
            version: "0.0.0".into(),
            description: "benchmark".into(),
            metadata: Default::default(),
            queue_group: "toronto-bench".into(),
            source: "toronto://bench".into(),
        },
        EndpointConfig {
            max_payload_bytes: 256 * 1024,
            concurrency: 256,
        },
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    host.add_endpoint(
        "echo",
        RUNTIME_SUBJECT,
        |req: Request<Payload>| async move { Ok::<_, ErrorBody>(req.envelope.data) },
    )
    .await
    .unwrap();
    responder.flush().await.unwrap();

    let envelope = Envelope::builder(
        "toronto://bench",
        Payload {
            text: "x".repeat(512),
        },
    )
    .build();
    let request_bytes = Bytes::from(encode(&envelope, encoding).unwrap());
    let load = Arc::new(Load {
        payload: Bytes::from(vec![b'x'; 512]),
        envelope,
        request_bytes: request_bytes.clone(),
        encoding,
    });

    // The floor: raw, with the contract's headers both ways and the runtime's reply size.
    let probe = requester
        .request_with_headers(
            RUNTIME_SUBJECT,
            contract_headers(encoding, true),
            request_bytes,
        )
        .await
        .unwrap();
    // The service answers in the request's encoding.
    let reply_type = probe
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(reply_type.as_deref(), Some(encoding.content_type()));
    let _: Envelope<Payload> = decode(&probe.payload, encoding).unwrap();
    let reply_size = probe.payload.len();
    let floor_reply = Bytes::from(vec![b'x'; reply_size]);
    let mut floor_sub = responder.subscribe("bench.floor").await.unwrap();
    let floor_client = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = floor_sub.next().await {
            if let Some(reply) = m.reply {
                let h = contract_headers(encoding, true);
                floor_client
                    .publish_with_headers(reply, h, floor_reply.clone())
                    .await
                    .unwrap();
            }
        }
    });
    responder.flush().await.unwrap();

    if let Ok(only) = std::env::var("BENCH_ONLY") {
        // One path, `BENCH_WAYS` in flight (64 unless set), for a profiler (`perf record`).
        let path = match only.as_str() {
            "raw" => Path::Raw,
            "floor" => Path::Floor,
            "service" => Path::RuntimeRawClient,
            "client" => Path::Canned,
            _ => Path::Runtime,
        };
        let ways = std::env::var("BENCH_WAYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let (rate, _) = concurrent(&requester, path, ways, scale(100_000), &load).await;
        println!("{only}: {ways}-way {rate:.0}/s");
        return;
    }

    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(5)
        .max(1);
    let server_pid = nats_server_pid();
    let rows = [Row::Sequential, Row::Ways(16), Row::Ways(64)];
    let (n, total) = (scale(2000), scale(20_000));
    let load_before = loadavg();

    if std::env::var("BENCH_SPLIT").is_ok() {
        // Where the runtime's cost goes: headers alone, then a task per request, then
        // the service side alone (pre-encoded request, no client-side codec), the whole
        // path, and the typed client alone (against a raw responder with a fixed reply).
        let paths = [
            ("raw", Path::Raw),
            ("raw+headers", Path::RawHeaders),
            ("raw+headers+spawn", Path::RawSpawn),
            ("floor", Path::Floor),
            ("runtime, raw client", Path::RuntimeRawClient),
            ("runtime", Path::Runtime),
            ("typed client only", Path::Canned),
        ];
        let kinds: Vec<Path> = paths.iter().map(|(_, p)| *p).collect();
        let results = interleaved(
            &requester,
            &kinds,
            &rows,
            (n, total),
            rounds,
            &load,
            server_pid.as_deref(),
        )
        .await;
        println!(
            "encoding {}; {rounds} rounds interleaved, medians; load average {load_before} \
             before, {} after",
            encoding_name(encoding),
            loadavg()
        );
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>24}",
            "", "p50", "16-way", "64-way", "CPU/request 16-way"
        );
        for (i, (name, _)) in paths.iter().enumerate() {
            let value = |r: usize| median(results[r][i].iter().map(|s| s.value).collect());
            let cpu = median(results[1][i].iter().map(|s| s.cpu_us).collect());
            let server = median(results[1][i].iter().map(|s| s.server_cpu_us).collect());
            println!(
                "{name:<22} {:>7.1} us {:>8.0}/s {:>8.0}/s {cpu:>6.1} us + server {server:>5.1} us",
                value(0),
                value(1),
                value(2),
            );
        }
        return;
    }

    let paths = [Path::Raw, Path::Floor, Path::Runtime];
    let results = interleaved(
        &requester,
        &paths,
        &rows,
        (n, total),
        rounds,
        &load,
        server_pid.as_deref(),
    )
    .await;
    println!(
        "request/reply, encoding {}, against nats-server at {} (512-byte payload; floor: raw \
         with the contract's headers both ways, the request envelope's bytes and a \
         {reply_size}-byte reply)",
        encoding_name(encoding),
        server.url()
    );
    println!(
        "{rounds} rounds, raw/floor/runtime interleaved; each figure the median over rounds, each \
         ratio the median of the per-round ratios; load average {load_before} before, {} after",
        loadavg()
    );
    println!(
        "{:<38} {:>11} {:>11} {:>11} {:>8} {:>8}",
        "", "raw", "floor", "runtime", "vs raw", "vs floor"
    );
    // One table line: the median of each path and of the runtime's per-round ratios.
    let line = |label: String, r: usize, pick: fn(&Sample) -> f64, unit: &str, goal: &str| {
        let of = |p: usize| median(results[r][p].iter().map(pick).collect());
        let ratio = |p: usize| {
            median(
                (0..rounds)
                    .map(|i| pick(&results[r][2][i]) / pick(&results[r][p][i]))
                    .collect(),
            )
        };
        let cell = |v: f64| match unit {
            "/s" => format!("{v:>9.0}/s"),
            _ => format!("{v:>8.1} {unit}"),
        };
        println!(
            "{label:<38} {} {} {} {:>7.2}x {:>7.2}x{goal}",
            cell(of(0)),
            cell(of(1)),
            cell(of(2)),
            ratio(0),
            ratio(1)
        );
    };
    let latency_goal = "  (goal <= 1.25x raw, <= 1.10x floor)";
    let rate_goal = "  (goal >= 0.80x raw, >= 0.90x floor)";
    line(
        format!("sequential p50 ({n} requests)"),
        0,
        |s| s.value,
        "us",
        latency_goal,
    );
    line("sequential p99".to_owned(), 0, |s| s.p99, "us", "");
    line(
        format!("16-way concurrent ({total} requests)"),
        1,
        |s| s.value,
        "/s",
        rate_goal,
    );
    line(
        format!("64-way concurrent ({total} requests)"),
        2,
        |s| s.value,
        "/s",
        rate_goal,
    );
    for (r, ways) in [(1, 16), (2, 64)] {
        line(
            format!("CPU/request {ways}-way, this process"),
            r,
            |s| s.cpu_us,
            "us",
            "",
        );
        if server_pid.is_some() {
            line(
                format!("CPU/request {ways}-way, nats-server"),
                r,
                |s| s.server_cpu_us,
                "us",
                "",
            );
        }
    }
    let stats = host.stats();
    let avg_ns = stats["endpoints"][0]["average_processing_time"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "{:<38} {:>35.1} us",
        "time inside the endpoint (average)",
        avg_ns as f64 / 1000.0
    );
    // The spread: runtime against floor, round by round.
    for (r, what, pick) in [
        (0, "p50", (|s: &Sample| s.value) as fn(&Sample) -> f64),
        (1, "16-way", |s: &Sample| s.value),
        (2, "64-way", |s: &Sample| s.value),
    ] {
        let ratios: Vec<String> = (0..rounds)
            .map(|i| format!("{:.2}", pick(&results[r][2][i]) / pick(&results[r][1][i])))
            .collect();
        println!("runtime/floor by round, {what:<7} {}", ratios.join(" "));
    }

    println!();
    print_codec_rates();
    host.stop(Duration::from_secs(1)).await;
}
