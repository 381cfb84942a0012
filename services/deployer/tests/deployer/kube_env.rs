//! The stack for rollouts on a Kubernetes API: deployers whose target is the
//! Kubernetes target on a real kube client, the real monitor reading a real
//! Prometheus that scrapes the series this test serves for the ready pods of the
//! namespace (as a scrape of each pod with its labels kept would), and the
//! shared full-canary scenario that runs against the testkit's fake API server here
//! and against a real cluster when `KUBECONFIG` is set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use tokio_util::sync::CancellationToken;
use toronto_deployer::kube::{KubeSettings, KubeTarget};
use toronto_deployer::{AnalysisMode, Settings, Target, TargetKind};
use toronto_protocol::rollout::Rollout;
use toronto_protocol::tasks::{DeployTask, PlanTask, Strategy};
use toronto_runtime::Config;
use toronto_testkit::{FakeKubeApi, FakeKubeOptions, Prometheus};
use uuid::Uuid;

use crate::support::{ENV, Stack, stack_on};

/// What the pods of a (service, version) serve on `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Serving {
    /// Requests, this share of them failing with 500.
    Failing(f64),
    /// Nothing: Prometheus never sees these pods.
    Silent,
}

/// (service, version) → what its pods serve; a version not named serves requests
/// failing 1%.
pub type Faults = Arc<Mutex<HashMap<(String, String), Serving>>>;

/// A Prometheus label name for a Kubernetes label (what a scrape config's
/// `labelmap` makes of it: `app.kubernetes.io/name` → `app_kubernetes_io_name`).
fn label_name(raw: &str) -> String {
    raw.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The series of the ready pods in `ns`, as Prometheus scraping each pod with its
/// labels kept would hold them: `http_requests_total` by `code`, 100 requests per
/// second per pod (a little unevenly), labelled `namespace`, `pod` and every pod
/// label. A pod's series begin when it is ready and end with it, so a version
/// nobody runs (or runs under labels a template does not select) has no data.
async fn pod_series(
    pods: &Api<Pod>,
    ns: &str,
    faults: &HashMap<(String, String), Serving>,
) -> Vec<(String, f64)> {
    let Ok(list) = pods.list(&Default::default()).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pod in list {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let (Some(service), Some(version)) = (
            labels.get("app.kubernetes.io/name"),
            labels.get("app.kubernetes.io/version"),
        ) else {
            continue;
        };
        let failing = match faults
            .get(&(service.clone(), version.clone()))
            .copied()
            .unwrap_or(Serving::Failing(0.01))
        {
            Serving::Failing(f) => f,
            Serving::Silent => continue,
        };
        if !ready {
            continue;
        }
        let mut set = format!(
            "namespace=\"{ns}\",pod=\"{}\"",
            pod.metadata.name.clone().unwrap_or_default()
        );
        for (k, v) in &labels {
            set.push_str(&format!(",{}=\"{v}\"", label_name(k)));
        }
        out.push((set, failing));
    }
    out
}

/// Serves `/metrics` for the pods of namespace `ns` on the API server of `config`
/// (see [`pod_series`]).
async fn exporter(
    config: kube::Config,
    ns: String,
    faults: Faults,
) -> (std::net::SocketAddr, CancellationToken) {
    type Counters = (std::time::Instant, u64, HashMap<String, f64>);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    // On a thread of its own, so that Prometheus's scrapes are answered in time
    // however busy the test's runtime is.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = kube::Client::try_from(config).expect("a kube client");
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            let counters: Arc<tokio::sync::Mutex<Counters>> = Arc::new(tokio::sync::Mutex::new((
                std::time::Instant::now(),
                0,
                HashMap::new(),
            )));
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || async move {
                    let faults = faults.lock().unwrap().clone();
                    let series = pod_series(&pods, &ns, &faults).await;
                    let mut state = counters.lock().await;
                    let (last, n, values) = &mut *state;
                    let dt = last.elapsed().as_secs_f64();
                    *last = std::time::Instant::now();
                    *n += 1;
                    let wobble = 1.0 + ((*n * 37 % 11) as f64 - 5.0) / 50.0;
                    let mut out = String::from("# TYPE http_requests_total counter\n");
                    for (set, failing) in series {
                        for (code, share) in [("200", 1.0 - failing), ("500", failing)] {
                            let series = format!("http_requests_total{{{set},code=\"{code}\"}}");
                            let value = values.entry(series.clone()).or_insert(0.0);
                            *value += 100.0 * share * dt * wobble;
                            out.push_str(&format!("{series} {value}\n"));
                        }
                    }
                    out
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
    });
    (addr, stop)
}

/// Runs a test body on a runtime whose two worker threads have 16 MiB stacks: a
/// deployer, the monitor and their clients polled on one default 2 MiB test thread
/// overflow it in a debug build. (`scripts/test` raises `RUST_MIN_STACK` for the test
/// threads of the other tests; these do not depend on it.)
pub fn run(body: impl Future<Output = ()> + Send + 'static) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(16 << 20)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        if let Err(e) = tokio::spawn(body).await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    });
}

/// The analysis window of these tests.
pub const WINDOW: Duration = Duration::from_secs(6);

/// Short pauses and a template analysis (the `app` template) on Kubernetes, with the
/// default `on_no_data: pause`: a step whose version Prometheus cannot see pauses,
/// and the test waiting for it to succeed fails.
pub fn kube_settings() -> Settings {
    Settings {
        target: TargetKind::Kubernetes,
        analysis: AnalysisMode::Templates,
        analysis_window: WINDOW,
        analysis_interval: Duration::from_millis(500),
        analysis_timeout: Duration::from_secs(5),
        progress_deadline: Duration::from_secs(30),
        ..crate::support::settings()
    }
}

/// A kube client configuration for the API server at `url` (no credentials).
pub fn config_for(url: &str) -> kube::Config {
    toronto_runtime::tls::install_crypto_provider();
    kube::Config::new(url.parse().expect("a URL"))
}

/// A kube client for the API server at `url` (no credentials).
pub fn client_for(url: &str) -> kube::Client {
    kube::Client::try_from(config_for(url)).expect("a kube client")
}

/// Everything a rollout on Kubernetes needs besides the cluster.
pub struct KubeStack {
    pub s: Stack,
    /// A client of the same API server (to look and to change things behind the
    /// deployer's back).
    pub client: kube::Client,
    /// The namespace of [`ENV`].
    pub ns: String,
    pub faults: Faults,
    _prom: Prometheus,
    stop_monitor: CancellationToken,
    monitor: tokio::task::JoinHandle<()>,
    stop_exporter: CancellationToken,
}

/// `deployers` deployers on the API server of `config`, with [`ENV`] in namespace
/// `ns`, and the monitor and a Prometheus scraping the namespace's pods.
pub async fn kube_stack(
    config: kube::Config,
    ns: &str,
    deployers: usize,
    settings: Settings,
) -> KubeStack {
    let kube = KubeSettings {
        timeout: Duration::from_secs(5),
        namespaces: [(ENV.to_owned(), ns.to_owned())].into(),
        ..KubeSettings::default()
    };
    let ns = kube.namespace_for(ENV).expect("a namespace");
    let client = kube::Client::try_from(config.clone()).expect("a kube client");
    let faults: Faults = Arc::default();
    let (addr, stop_exporter) = exporter(config, ns.clone(), faults.clone()).await;
    let prom = Prometheus::start(addr, "app").await;
    eprintln!("Prometheus at {} scraping {addr}", prom.url);
    let targets: Vec<Arc<dyn Target>> = (0..deployers)
        .map(|_| Arc::new(KubeTarget::new(client.clone(), kube.clone())) as Arc<dyn Target>)
        .collect();
    let s = stack_on(settings, targets).await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![s._server.url()];
    config.http.addr = String::new();
    let stop_monitor = CancellationToken::new();
    let rt = Box::pin(toronto_monitor::start_with(
        config,
        toronto_monitor::settings::Settings {
            prometheus_url: Some(prom.url.clone()),
            ..Default::default()
        },
        stop_monitor.clone(),
    ))
    .await
    .expect("monitor starts");
    let monitor = tokio::spawn(async move { rt.run_until_shutdown().await.unwrap() });
    KubeStack {
        s,
        client,
        ns,
        faults,
        _prom: prom,
        stop_monitor,
        monitor,
        stop_exporter,
    }
}

/// The fake API server with namespace [`ENV`], quick ticks, and a progress deadline
/// capped at 2 s.
pub async fn fake_api() -> FakeKubeApi {
    let fake = FakeKubeApi::start_with(FakeKubeOptions {
        tick: Duration::from_millis(30),
        progress_deadline: Some(Duration::from_secs(2)),
    })
    .await;
    fake.create_namespace(ENV);
    fake
}

impl KubeStack {
    /// The pods of `version` of `service` fail `failing` of their requests.
    pub fn traffic(&self, service: &str, version: &str, failing: f64) {
        self.serve(service, version, Serving::Failing(failing));
    }

    /// What the pods of `version` of `service` serve.
    pub fn serve(&self, service: &str, version: &str, serving: Serving) {
        self.faults
            .lock()
            .unwrap()
            .insert((service.to_owned(), version.to_owned()), serving);
    }

    /// Starts a deploy of `image` as `version`.
    pub async fn start_image(
        &self,
        service: &str,
        version: &str,
        image: &str,
        strategy: Strategy,
    ) -> Uuid {
        let task = PlanTask::Deploy(Box::new(DeployTask {
            service: service.into(),
            version: version.into(),
            image: Some(image.to_owned()),
            environment: ENV.into(),
            strategy,
            change: None,
            fix: false,
            policy_override: None,
        }));
        self.s.start(task).await
    }

    pub async fn deployment(&self, name: &str) -> Option<Deployment> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        api.get_opt(name).await.expect("get deployment")
    }

    pub async fn service(&self, name: &str) -> Option<Service> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &self.ns);
        api.get_opt(name).await.expect("get service")
    }

    pub async fn stop(self) {
        self.stop_monitor.cancel();
        self.monitor.await.unwrap();
        self.stop_exporter.cancel();
        self.s.stop().await;
    }
}

/// The image and replicas of a Deployment's (first) container.
pub fn image_and_replicas(d: &Deployment) -> (String, i32) {
    let spec = d.spec.clone().unwrap_or_default();
    let image = spec
        .template
        .spec
        .and_then(|p| p.containers.first().and_then(|c| c.image.clone()))
        .unwrap_or_default();
    (image, spec.replicas.unwrap_or(1))
}

/// The full canary, on whatever API server `k` talks to: a first version, then a
/// second that goes through its steps with analysis (Prometheus sees it as healthy as
/// its baseline) and is promoted. Returns the rollout. `image` names the image of a
/// version (a real cluster must be able to pull it).
pub async fn full_canary(
    k: &mut KubeStack,
    service: &str,
    image: impl Fn(&str) -> String,
) -> Rollout {
    k.traffic(service, "1.0.0", 0.01);
    k.traffic(service, "2.0.0", 0.01);
    let first = k
        .start_image(
            service,
            "1.0.0",
            &image("1.0.0"),
            crate::support::canary(&[50], 0),
        )
        .await;
    k.s.event(first, "succeeded", Duration::from_secs(60)).await;
    let id = k
        .start_image(
            service,
            "2.0.0",
            &image("2.0.0"),
            crate::support::canary(&[25, 50], 1),
        )
        .await;
    // Without a router the canary's share is a replica ratio: 25% asked is the
    // share of the pods the replica count can reach, and the step says so.
    let first_step = k.s.event(id, "progressed", Duration::from_secs(60)).await;
    assert!(
        first_step.weight > 0 && first_step.weight < 100,
        "{first_step:?}"
    );
    let note = first_step.steps[0].note.clone().unwrap_or_default();
    assert!(note.contains("25% asked"), "{note}");
    let canary = k
        .deployment(&format!("{service}-canary"))
        .await
        .expect("the canary Deployment exists");
    assert_eq!(image_and_replicas(&canary).0, image("2.0.0"));
    let done = succeeded(k, id).await;
    assert_eq!(done.weight, 100);
    assert_all_passed(&done);
    let stable = k.deployment(service).await.expect("the stable Deployment");
    assert_eq!(image_and_replicas(&stable).0, image("2.0.0"));
    let status = stable.status.clone().unwrap_or_default();
    assert_eq!(
        status.observed_generation, stable.metadata.generation,
        "the controller observed the promoted spec"
    );
    done
}

/// Waits for rollout `id` to succeed; a pause or an end of another kind fails, with
/// the rollout's analyses.
pub async fn succeeded(k: &KubeStack, id: Uuid) -> Rollout {
    use toronto_protocol::rollout::RolloutPhase;
    for _ in 0..600 {
        let r = k.s.rollout(id).await;
        match r.phase {
            RolloutPhase::Succeeded => return r,
            RolloutPhase::Progressing => {}
            _ => panic!("rollout {id} did not succeed: {r:#?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("rollout {id} never ended: {:#?}", k.s.rollout(id).await);
}

/// Every analysed step of `done` kept the passing verdict it went on with.
pub fn assert_all_passed(done: &Rollout) {
    assert!(
        !done.analyses.is_empty(),
        "the steps were analysed: {done:?}"
    );
    assert!(
        done.analyses
            .iter()
            .all(|a| a.verdict.outcome == toronto_protocol::analysis::AnalysisOutcome::Pass),
        "nothing failed: {:?}",
        done.analyses
    );
}
