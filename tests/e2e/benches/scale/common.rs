//! What every group of the scale bench shares: the table row, timing, the
//! services' configuration, requests, and writing history into a KV bucket.

pub use std::time::{Duration, Instant};

pub use async_nats::jetstream;
pub use futures::StreamExt;
pub use serde::de::DeserializeOwned;
pub use tokio_util::sync::CancellationToken;
pub use toronto_protocol::incidents::{IncidentList, Incidents};
pub use toronto_protocol::rollout::{Rollout, RolloutList, Rollouts};
pub use toronto_protocol::tasks::{
    DeployTask, DoraQuery, DoraReport, ExecuteAccepted, ExecuteRequest, GateVerdict, PlanList,
    PlanTask, Plans, SecurityScanRequest, Strategy, SubmitAccepted,
};
pub use toronto_protocol::{Encoding, Envelope, ErrorBody, Message, encode};
pub use toronto_runtime::config::EndpointConfig;
pub use toronto_runtime::rpc::call;
pub use toronto_runtime::service::{Request, ServiceHost, ServiceSpec};
pub use toronto_runtime::{Config, Metrics};
pub use toronto_testkit::NatsServer;
pub use uuid::Uuid;

pub const V1: &str = "toronto.devops.v1";

pub fn scale() -> f64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// The three history sizes of an operation whose 1x is `base`.
pub fn sizes(base: usize) -> [usize; 3] {
    let b = ((base as f64 * scale()) as usize).max(10);
    [b, b * 10, b * 100]
}

/// One row of the table: an operation's median time at each history size.
pub struct Row {
    pub operation: &'static str,
    pub history: [usize; 3],
    pub unit: &'static str,
    pub median: [Duration; 3],
}

impl Row {
    pub fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let slope = ms(self.median[2]) / ms(self.median[0]).max(1e-9);
        println!(
            "{:<34} {:>7} {:>7} {:>8} {:<9} {:>9.3} {:>9.3} {:>9.3} {:>7.2}x  {}",
            self.operation,
            self.history[0],
            self.history[1],
            self.history[2],
            self.unit,
            ms(self.median[0]),
            ms(self.median[1]),
            ms(self.median[2]),
            slope,
            if slope <= 2.0 { "flat" } else { "GROWS" }
        );
    }
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub fn config(server: &NatsServer) -> Config {
    // Auth on, as deployed: the test admin is the first admin and signs every request.
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    config.log.filter = "off".into();
    config
}

pub async fn ask<Req: Message, Resp: Message>(
    client: &async_nats::Client,
    verb: &str,
    data: Req,
) -> Resp {
    let envelope = Envelope::builder("toronto://bench", data).build();
    call::<_, Resp>(
        client,
        &format!("{V1}.{verb}"),
        &envelope,
        Encoding::Json,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{verb}: {e}"))
    .data
}

/// Times `op` `n` times after two warm-up runs; the median.
pub async fn time<F, Fut>(n: usize, mut op: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..2 {
        op(1_000_000 + i).await;
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        op(i).await;
        samples.push(t.elapsed());
    }
    median(samples)
}

/// Copies of `record` (a JSON object with an `id`) under `<prefix>.<new id>` in `kv`
/// until the prefix holds `target` records, `count` of them written before; the id
/// of the last one written (the newest: ids are UUID v7).
pub async fn seed(
    kv: &jetstream::kv::Store,
    prefix: &str,
    record: &serde_json::Value,
    edit: impl Fn(&mut serde_json::Value),
    count: &mut usize,
    target: usize,
) -> Option<Uuid> {
    let mut pending = Vec::new();
    let mut last = None;
    while *count < target {
        let id = Uuid::now_v7();
        last = Some(id);
        let mut copy = record.clone();
        copy["id"] = serde_json::Value::String(id.to_string());
        edit(&mut copy);
        pending.push(kv.put(
            format!("{prefix}.{id}"),
            serde_json::to_vec(&copy).unwrap().into(),
        ));
        *count += 1;
        if pending.len() == 256 {
            for p in futures::future::join_all(pending.drain(..)).await {
                p.unwrap();
            }
        }
    }
    for p in futures::future::join_all(pending).await {
        p.unwrap();
    }
    last
}

/// Waits until the first page of a listing starts with `newest` (the service's live
/// index has taken in the history just written: it follows the bucket with a watch,
/// which delivers every record written), at most two minutes. Timing before that
/// would time the index catching up, a cost of how much was just written.
pub async fn until_listed<F, Fut>(what: &str, newest: Option<Uuid>, mut first: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Uuid>>,
{
    let Some(newest) = newest else {
        return;
    };
    for _ in 0..1200 {
        if first().await == Some(newest) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the newest record written is not listed after two minutes");
}

pub async fn kv_json<T: DeserializeOwned>(kv: &jetstream::kv::Store, key: &str) -> T {
    let bytes = kv.get(key).await.unwrap().expect("the record exists");
    serde_json::from_slice(&bytes).unwrap()
}

pub fn deploy(service: String) -> DeployTask {
    DeployTask {
        service,
        version: "1.0.0".into(),
        image: None,
        environment: "dev".into(),
        strategy: Strategy::Rolling,
        change: None,
        fix: false,
        policy_override: None,
    }
}
