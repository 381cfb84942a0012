//! Request/reply cost of the runtime next to raw async-nats, against one real
//! nats-server, plus envelope codec throughput. Prints figures; asserts nothing.
//!
//! Three paths side by side in one run: raw (512 bytes echoed, no headers), the
//! contract's floor (raw async-nats carrying what the contract makes every request
//! carry: the request envelope's bytes, `Content-Type` and `traceparent` both ways, a
//! reply of the runtime's reply size, no codec and no validation), and the runtime (a
//! typed endpoint called through `rpc::call`).
//!
//! Run: `cargo bench -p toronto-runtime --bench request_reply`
//! (set `BENCH_SCALE=0.2` for a quicker, noisier run; `BENCH_SPLIT=1` breaks the
//! runtime's cost down into headers, service side and client side; `BENCH_ONLY=raw|floor|service|client|runtime`
//! runs one path 64-way, for a profiler).

use std::time::{Duration, Instant};

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

async fn one_request(client: &Client, path: Path, payload: &Bytes, envelope: &Envelope<Payload>) {
    match path {
        Path::Raw => {
            let reply = client.request(RAW_SUBJECT, payload.clone()).await.unwrap();
            assert_eq!(reply.payload.len(), payload.len());
        }
        Path::RuntimeRawClient => {
            let bytes = Bytes::from(encode(envelope, Encoding::Json).unwrap());
            let reply = client.request(RUNTIME_SUBJECT, bytes).await.unwrap();
            assert!(reply.payload.len() > 512);
        }
        Path::Canned => {
            let reply: Envelope<Payload> = call(
                client,
                "bench.canned",
                envelope,
                Encoding::Json,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            assert_eq!(reply.data.text.len(), 512);
        }
        Path::Floor => {
            // The contract's floor: the request envelope's bytes and headers, answered
            // with the same headers and a reply of the runtime's reply size, no codec.
            let bytes = Bytes::from(encode(envelope, Encoding::Json).unwrap());
            let mut h = async_nats::HeaderMap::new();
            h.insert("Content-Type", "application/cloudevents+json");
            h.insert("traceparent", TRACEPARENT);
            let reply = client
                .request_with_headers("bench.floor", h, bytes)
                .await
                .unwrap();
            assert!(reply.payload.len() > 512);
        }
        Path::RawSpawn => {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Content-Type", "application/cloudevents+json");
            let reply = client
                .request_with_headers("bench.rawspawn", h, payload.clone())
                .await
                .unwrap();
            assert_eq!(reply.payload.len(), payload.len());
        }
        Path::RawHeaders => {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Content-Type", "application/cloudevents+json");
            h.insert("traceparent", TRACEPARENT);
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
                Encoding::Json,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            assert_eq!(reply.data.text.len(), envelope.data.text.len());
        }
    }
}

async fn sequential(
    client: &Client,
    path: Path,
    n: usize,
    payload: &Bytes,
    envelope: &Envelope<Payload>,
) -> (Duration, Duration) {
    for _ in 0..scale(200) {
        one_request(client, path, payload, envelope).await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        one_request(client, path, payload, envelope).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn concurrent(
    client: &Client,
    path: Path,
    workers: usize,
    total: usize,
    payload: &Bytes,
    envelope: &Envelope<Payload>,
) -> f64 {
    let per_worker = total / workers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let client = client.clone();
            let payload = payload.clone();
            let envelope = envelope.clone();
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    one_request(&client, path, &payload, &envelope).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per_worker * workers) as f64 / start.elapsed().as_secs_f64()
}

fn codec_rate(encoding: Encoding, n: usize) -> f64 {
    let envelope = Envelope::builder(
        "toronto://bench",
        Payload {
            text: "x".repeat(1024),
        },
    )
    .subject("shop-api")
    .build();
    let start = Instant::now();
    for _ in 0..n {
        let bytes = encode(&envelope, encoding).unwrap();
        let back: Envelope<Payload> = decode(&bytes, encoding).unwrap();
        std::hint::black_box(back);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
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
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Content-Type", "application/cloudevents+json");
                    c.publish_with_headers(reply, h, m.payload).await.unwrap();
                }
            });
        }
    });

    // Raw, answering a fixed reply envelope: isolates the typed client's cost.
    let canned = Bytes::from(
        encode(
            &Envelope::builder(
                "toronto://bench",
                Payload {
                    text: "x".repeat(512),
                },
            )
            .build(),
            Encoding::Json,
        )
        .unwrap(),
    );
    let mut canned_sub = responder.subscribe("bench.canned").await.unwrap();
    let canned_client = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = canned_sub.next().await {
            if let Some(reply) = m.reply {
                canned_client.publish(reply, canned.clone()).await.unwrap();
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

    let payload = Bytes::from(vec![b'x'; 512]);
    let envelope = Envelope::builder(
        "toronto://bench",
        Payload {
            text: "x".repeat(512),
        },
    )
    .build();

    // The floor: raw, with the contract's headers both ways and the runtime's reply size.
    let reply_size = requester
        .request(
            RUNTIME_SUBJECT,
            Bytes::from(encode(&envelope, Encoding::Json).unwrap()),
        )
        .await
        .unwrap()
        .payload
        .len();
    let floor_reply = Bytes::from(vec![b'x'; reply_size]);
    let mut floor_sub = responder.subscribe("bench.floor").await.unwrap();
    let floor_client = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = floor_sub.next().await {
            if let Some(reply) = m.reply {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Content-Type", "application/cloudevents+json");
                h.insert("traceparent", TRACEPARENT);
                floor_client
                    .publish_with_headers(reply, h, floor_reply.clone())
                    .await
                    .unwrap();
            }
        }
    });
    responder.flush().await.unwrap();

    if let Ok(only) = std::env::var("BENCH_ONLY") {
        // One path, 64-way, for a profiler (`perf record`).
        let path = match only.as_str() {
            "raw" => Path::Raw,
            "floor" => Path::Floor,
            "service" => Path::RuntimeRawClient,
            "client" => Path::Canned,
            _ => Path::Runtime,
        };
        let rate = concurrent(&requester, path, 64, scale(100_000), &payload, &envelope).await;
        println!("{only}: 64-way {rate:.0}/s");
        return;
    }
    if std::env::var("BENCH_SPLIT").is_ok() {
        // Where the runtime's cost goes: headers alone, then a task per request, then
        // the service side alone (pre-encoded request, no client-side codec), the whole
        // path, and the typed client alone (against a raw responder with a fixed reply).
        for (name, path) in [
            ("raw", Path::Raw),
            ("raw+headers", Path::RawHeaders),
            ("raw+headers+spawn", Path::RawSpawn),
            ("floor", Path::Floor),
            ("runtime, raw client", Path::RuntimeRawClient),
            ("runtime", Path::Runtime),
            ("typed client only", Path::Canned),
        ] {
            let (p50, _) = sequential(&requester, path, scale(3000), &payload, &envelope).await;
            let rate = concurrent(&requester, path, 64, scale(20_000), &payload, &envelope).await;
            println!(
                "{name:<22} p50 {:>7.1} us  64-way {rate:>8.0}/s",
                p50.as_secs_f64() * 1e6
            );
        }
        return;
    }
    let n = scale(5000);
    let total = scale(40_000);
    println!(
        "request/reply against nats-server at {} (512-byte payload; floor: raw with the \
         contract's headers both ways, the request envelope's bytes and a {reply_size}-byte reply)",
        server.url()
    );
    println!(
        "{:<34} {:>11} {:>11} {:>11} {:>8} {:>8}",
        "", "raw", "floor", "runtime", "vs raw", "vs floor"
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for path in [Path::Raw, Path::Floor, Path::Runtime] {
        let (p50, p99) = sequential(&requester, path, n, &payload, &envelope).await;
        p50s.push(us(p50));
        p99s.push(us(p99));
    }
    for (label, v, goal) in [
        (
            format!("sequential p50 ({n} requests)"),
            &p50s,
            "  (goal <= 1.25x raw)",
        ),
        ("sequential p99".to_owned(), &p99s, ""),
    ] {
        println!(
            "{label:<34} {:>8.1} us {:>8.1} us {:>8.1} us {:>7.2}x {:>7.2}x{goal}",
            v[0],
            v[1],
            v[2],
            v[2] / v[0],
            v[2] / v[1]
        );
    }
    for workers in [16, 64] {
        let mut rates = Vec::new();
        for path in [Path::Raw, Path::Floor, Path::Runtime] {
            rates.push(concurrent(&requester, path, workers, total, &payload, &envelope).await);
        }
        println!(
            "{:<34} {:>9.0}/s {:>9.0}/s {:>9.0}/s {:>7.2}x {:>7.2}x  (goal >= 0.80x raw)",
            format!("{workers}-way concurrent ({total} requests)"),
            rates[0],
            rates[1],
            rates[2],
            rates[2] / rates[0],
            rates[2] / rates[1]
        );
    }

    let stats = host.stats();
    let avg_ns = stats["endpoints"][0]["average_processing_time"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "{:<34} {:>28.1} us",
        "time inside the endpoint (average)",
        avg_ns as f64 / 1000.0
    );

    let codec_n = scale(100_000);
    println!();
    println!("envelope encode+decode, 1 KiB data ({codec_n} round trips)");
    println!("  json     {:>10.0}/s", codec_rate(Encoding::Json, codec_n));
    println!(
        "  msgpack  {:>10.0}/s",
        codec_rate(Encoding::MessagePack, codec_n)
    );
    host.stop(Duration::from_secs(1)).await;
}
