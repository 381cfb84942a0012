//! Request/reply cost of the runtime next to raw async-nats, against one real
//! nats-server, plus envelope codec throughput. Prints figures; asserts nothing.
//!
//! Three paths side by side in one run: raw (512 bytes echoed, no headers), the
//! contract's floor (raw async-nats carrying what the contract makes every request
//! carry: the request envelope's bytes, `Content-Type` and `traceparent` both ways, a
//! reply of the runtime's reply size, no codec and no validation), the floor plus the
//! contract's codec (the request envelope encoded and decoded, a reply envelope built,
//! encoded and decoded: the least any implementation of the contract does, on raw
//! async-nats with no task, stats or tracing), and the runtime (a typed endpoint called
//! through `rpc::call`).
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
//! `BENCH_ONLY=raw|floor|codecfloor|service|client|runtime` runs one path `BENCH_WAYS` (64)
//! way, for a profiler; `BENCH_LOGS=1` installs the logging every service installs,
//! JSON at `info`, so that the runtime's per-request span is recorded as in a service).
//! `BENCH_ENCODING=json|msgpack` (json unless set) picks the envelope encoding: the
//! floor then carries the MessagePack bytes of the same envelopes, and the runtime's
//! client sends MessagePack (the service answers in the request's encoding).
//! `BENCH_ONLY=codec` prints only the envelope codec rates (both encodings).

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toronto_protocol::{Encoding, Envelope, ErrorBody, Message, decode, encode};
use toronto_runtime::Metrics;
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::rpc::call;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_testkit::NatsServer;

mod codec;
mod measure;

use codec::{bench_encoding, encoding_name, print_codec_rates};
use measure::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(crate) struct Payload {
    pub(crate) text: String,
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

pub(crate) fn scale(n: usize) -> usize {
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
    CodecFloor,
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
        Path::Floor | Path::RuntimeRawClient => {
            // The request envelope's bytes and the contract's headers, no codec: to the
            // floor's responder (the same headers back and a reply of the runtime's
            // reply size), or to the runtime's endpoint (its service side alone).
            let subject = match path {
                Path::Floor => "bench.floor",
                _ => RUNTIME_SUBJECT,
            };
            let h = contract_headers(encoding, true);
            let reply = client
                .request_with_headers(subject, h, request_bytes.clone())
                .await
                .unwrap();
            assert!(reply.payload.len() > 512);
        }
        Path::CodecFloor => {
            // The floor plus the contract's codec, and nothing else: the request
            // envelope encoded, sent with the contract's headers, the reply decoded.
            let h = contract_headers(encoding, true);
            let bytes = Bytes::from(encode(envelope, encoding).unwrap());
            let reply = client
                .request_with_headers("bench.codecfloor", h, bytes)
                .await
                .unwrap();
            let reply: Envelope<Payload> = decode(&reply.payload, encoding).unwrap();
            assert_eq!(reply.data.text.len(), envelope.data.text.len());
        }
        Path::RawSpawn | Path::RawHeaders => {
            // 512 raw bytes with headers: to a responder with a task per request, or
            // to the raw echo.
            let (subject, traceparent) = match path {
                Path::RawSpawn => ("bench.rawspawn", false),
                _ => (RAW_SUBJECT, true),
            };
            let h = contract_headers(encoding, traceparent);
            let reply = client
                .request_with_headers(subject, h, payload.clone())
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

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
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
    // The floor plus the contract's codec: the request decoded and validated, a reply
    // envelope (fresh id and time, the request's flow) encoded; no task, no stats.
    let mut codec_sub = responder.subscribe("bench.codecfloor").await.unwrap();
    let codec_client = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = codec_sub.next().await {
            if let Some(reply) = m.reply {
                let request: Envelope<Payload> = decode(&m.payload, encoding).unwrap();
                let flow = request.flow();
                let answer = Envelope::builder("toronto://bench", request.data)
                    .caused_by(&flow)
                    .build();
                let h = contract_headers(encoding, true);
                codec_client
                    .publish_with_headers(reply, h, Bytes::from(encode(&answer, encoding).unwrap()))
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
            "codecfloor" => Path::CodecFloor,
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
            ("floor+codec", Path::CodecFloor),
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

    let paths = [Path::Raw, Path::Floor, Path::CodecFloor, Path::Runtime];
    const RUNTIME: usize = 3;
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
         {reply_size}-byte reply; floor+codec: the floor plus the contract's \
         envelope encode and decode on both sides)",
        encoding_name(encoding),
        server.url()
    );
    println!(
        "{rounds} rounds, the paths interleaved; each figure the median over rounds, each \
         ratio the median of the per-round ratios; load average {load_before} before, {} after",
        loadavg()
    );
    println!(
        "{:<38} {:>11} {:>11} {:>11} {:>11} {:>8} {:>8} {:>8}",
        "", "raw", "floor", "floor+codec", "runtime", "vs raw", "vs floor", "vs f+c"
    );
    // One table line: the median of each path and of the runtime's per-round ratios.
    let line = |label: String, r: usize, pick: fn(&Sample) -> f64, unit: &str, goal: &str| {
        let of = |p: usize| median(results[r][p].iter().map(pick).collect());
        let ratio = |p: usize| {
            median(
                (0..rounds)
                    .map(|i| pick(&results[r][RUNTIME][i]) / pick(&results[r][p][i]))
                    .collect(),
            )
        };
        let cell = |v: f64| match unit {
            "/s" => format!("{v:>9.0}/s"),
            _ => format!("{v:>8.1} {unit}"),
        };
        println!(
            "{label:<38} {} {} {} {} {:>7.2}x {:>7.2}x {:>7.2}x{goal}",
            cell(of(0)),
            cell(of(1)),
            cell(of(2)),
            cell(of(RUNTIME)),
            ratio(0),
            ratio(1),
            ratio(2)
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
        "{:<38} {:>47.1} us",
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
            .map(|i| {
                format!(
                    "{:.2}",
                    pick(&results[r][RUNTIME][i]) / pick(&results[r][1][i])
                )
            })
            .collect();
        println!("runtime/floor by round, {what:<7} {}", ratios.join(" "));
    }

    println!();
    print_codec_rates();
    host.stop(Duration::from_secs(1)).await;
}
