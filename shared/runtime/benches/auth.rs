//! What verified identity costs: signing and verifying one request, and request/reply
//! through a service host with `TORONTO_AUTH=off`, with a signed request to an open
//! endpoint, and to a protected endpoint (verification plus the replay guard's KV
//! write). Prints figures; asserts nothing.
//!
//! Run: `cargo bench -p toronto-runtime --bench auth` (`BENCH_SCALE=0.2` for a quicker run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use toronto_protocol::auth::{Principal, PrincipalKind, Role};
use toronto_protocol::{Encoding, Envelope, ErrorBody, Message, Subjects, encode};
use toronto_runtime::Metrics;
use toronto_runtime::auth::{AccessRule, AuthConfig, Authenticator, Signer};
use toronto_runtime::config::EndpointConfig;
use toronto_runtime::rpc::call_signed;
use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
use toronto_testkit::NatsServer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Payload {
    text: String,
}

impl Message for Payload {
    const NAME: &'static str = "bench.payload";
    const MAJOR: u32 = 1;
}

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(50)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn spec() -> ServiceSpec {
    ServiceSpec {
        name: "toronto-bench".into(),
        version: "0.0.0".into(),
        description: "auth bench".into(),
        metadata: Default::default(),
        queue_group: "toronto-bench".into(),
        source: "toronto://bench".into(),
    }
}

#[tokio::main]
async fn main() {
    let signer = Signer::generate();
    let envelope = Envelope::builder(
        "toronto://bench",
        Payload {
            text: "x".repeat(200),
        },
    )
    .build();
    let bytes = encode(&envelope, Encoding::Json).unwrap();
    let subject = "toronto.devops.v1.bench.protected";

    let n = scale(20_000);
    let started = Instant::now();
    let mut signature = signer.sign(subject, &bytes);
    for _ in 1..n {
        signature = signer.sign(subject, &bytes);
    }
    let sign = started.elapsed() / n as u32;
    let started = Instant::now();
    for _ in 0..n {
        signature.verify(subject, &bytes).unwrap();
    }
    let verify = started.elapsed() / n as u32;
    println!("payload {} bytes", bytes.len());
    println!("sign   {:>8.2} µs per request", sign.as_secs_f64() * 1e6);
    println!(
        "verify {:>8.2} µs per request (signature and time parse)",
        verify.as_secs_f64() * 1e6
    );

    let server = NatsServer::start().await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let auth = Authenticator::start(
        &js,
        &Subjects::default(),
        &AuthConfig::default(),
        1,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    auth.registry()
        .unwrap()
        .put(&Principal {
            id: "bench".into(),
            kind: PrincipalKind::Service,
            roles: vec![Role::Operator],
            display_name: String::new(),
            revoked: false,
            keys: vec![signer.public_key()],
            sources: vec![],
            chat_ids: vec![],
        })
        .await
        .unwrap();
    auth.protect("protected", AccessRule::Role(Role::Operator));
    let auth = Arc::new(auth);
    let with_auth = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    with_auth.set_auth(auth.clone());
    let echo = |req: Request<Payload>| async move { Ok::<_, ErrorBody>(req.data().clone()) };
    with_auth
        .add_endpoint("protected", subject, echo)
        .await
        .unwrap();
    with_auth
        .add_endpoint("open", "toronto.devops.v1.bench.open", echo)
        .await
        .unwrap();
    let off = ServiceHost::start(
        client.clone(),
        spec(),
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    off.set_auth(Arc::new(Authenticator::off()));
    off.add_endpoint("off", "toronto.devops.v1.bench.off", echo)
        .await
        .unwrap();

    let rounds = scale(3_000);
    let cases: [(&str, &str, Option<&Signer>); 3] = [
        ("auth off, unsigned", "toronto.devops.v1.bench.off", None),
        (
            "open endpoint, signed",
            "toronto.devops.v1.bench.open",
            Some(&signer),
        ),
        ("protected, verified + replay guard", subject, Some(&signer)),
    ];
    let mut medians = Vec::new();
    for (what, subject, signer) in cases {
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds + 100 {
            let envelope = Envelope::builder(
                "toronto://bench",
                Payload {
                    text: "x".repeat(200),
                },
            )
            .build();
            let started = Instant::now();
            let _: Envelope<Payload> = call_signed(
                &client,
                signer,
                subject,
                &envelope,
                Encoding::Json,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            if i >= 100 {
                samples.push(started.elapsed());
            }
        }
        let m = median(samples);
        println!(
            "request/reply {what:<36} median {:>8.1} µs",
            m.as_secs_f64() * 1e6
        );
        medians.push(m);
    }
    println!(
        "added by auth: signing client {:+.1} µs, verification + replay guard {:+.1} µs (median vs off)",
        (medians[1].as_secs_f64() - medians[0].as_secs_f64()) * 1e6,
        (medians[2].as_secs_f64() - medians[0].as_secs_f64()) * 1e6,
    );
}
