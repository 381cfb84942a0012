//! The flagship test's cast and tools: the peers, the event stream reader, the SLO, the
//! log capture and the signers.

use super::*;

pub(crate) const SECRET: &str = "flagship-signing-secret";
pub(crate) const SERVICE: &str = "shop";
pub(crate) const ENV: &str = "production";

/// Everything published on `toronto.devops.v1.events.>`, in order.
pub(crate) struct Stream {
    pub(crate) rx: tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    pub(crate) seen: Vec<(String, serde_json::Value)>,
}

impl Stream {
    /// The first event on `subject` whose data satisfies `pick` (seen before or next).
    pub(crate) async fn wait<T: Message>(&mut self, subject: &str, pick: impl Fn(&T) -> bool) -> T {
        let matches = |s: &str, v: &serde_json::Value| {
            (s == subject)
                .then(|| serde_json::from_value::<T>(v["data"].clone()).ok())
                .flatten()
                .filter(&pick)
        };
        if let Some(found) = self.seen.iter().find_map(|(s, v)| matches(s, v)) {
            return found;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let Ok(Some((s, v))) = tokio::time::timeout_at(deadline, self.rx.recv()).await else {
                let subjects: Vec<&str> = self.seen.iter().map(|(s, _)| s.as_str()).collect();
                panic!("no matching {subject} within 60 s; saw {subjects:?}");
            };
            self.seen.push((s.clone(), v.clone()));
            if let Some(found) = matches(&s, &v) {
                return found;
            }
        }
    }
}

pub(crate) fn config(server: &NatsServer) -> Config {
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    config.shutdown_grace_secs = 2;
    config
}

pub(crate) async fn ask<Req: Message, Resp: Message>(
    client: &async_nats::Client,
    subject: &str,
    data: Req,
) -> Resp {
    let envelope = Envelope::builder("toronto://test", data).build();
    call(
        client,
        subject,
        &envelope,
        Encoding::Json,
        Duration::from_secs(10),
    )
    .await
    .map(|r: Envelope<Resp>| r.data)
    .unwrap_or_else(|e| panic!("{subject}: {e}"))
}

/// Test peers standing in for the security and QA agents: they pass.
pub(crate) async fn peers(client: &async_nats::Client) -> ServiceHost {
    let host = ServiceHost::start(
        client.clone(),
        ServiceSpec {
            name: "test-peers".into(),
            version: "0.0.1".into(),
            description: "test security and QA agents".into(),
            metadata: HashMap::new(),
            queue_group: "test-peers".into(),
            source: "toronto://agents/test".into(),
        },
        EndpointConfig::default(),
        Metrics::new(),
        None,
    )
    .await
    .unwrap();
    let pass = || GateVerdict {
        passed: true,
        reason: Some("test peer: clean".into()),
        findings: None,
    };
    host.add_endpoint(
        "scan",
        "toronto.agents.security.v1.scan",
        move |_r: Request<SecurityScanRequest>| async move { Ok::<_, ErrorBody>(pass()) },
    )
    .await
    .unwrap();
    host.add_endpoint(
        "test",
        "toronto.agents.qa.v1.test",
        move |_r: Request<QaTestRequest>| async move { Ok::<_, ErrorBody>(pass()) },
    )
    .await
    .unwrap();
    host
}

pub(crate) fn slo() -> String {
    toronto_monitor::slo::bus_availability("availability", SERVICE, ENV, 0.99)
}

/// Everything the services log in this test binary (one test: the global subscriber
/// is this test's), kept to search it for secrets.
#[derive(Clone, Default)]
pub(crate) struct Logs(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// A fresh NKey user seed and its signer (the seed is a secret the sweep looks for).
pub(crate) fn seed_and_signer(
    dir: &std::path::Path,
    name: &str,
) -> (String, toronto_runtime::auth::Signer) {
    let path = dir.join(format!("{name}.nk"));
    toronto_runtime::auth::Signer::generate()
        .write_new(&path)
        .unwrap();
    let seed = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    (
        seed,
        toronto_runtime::auth::Signer::from_file(&path).unwrap(),
    )
}
