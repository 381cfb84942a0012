//! A stateful **fake** Kubernetes API server for tests, where no real one can run.
//!
//! [`FakeKubeApi`] is a real HTTP server on `127.0.0.1` that a real Kubernetes client
//! (kube-rs, kubectl) talks to through [`FakeKubeApi::url`] or the kubeconfig it
//! writes. It is not Kubernetes, and says so: every answer carries the header
//! `x-toronto-fake` ([`FAKE_HEADER`]), `/version` answers `v1.35.0-toronto-fake`, and
//! it prints one line naming itself when it starts.
//!
//! What it models:
//! - objects per resource, namespace and name ([`RESOURCES`]: Namespaces, Services,
//!   ConfigMaps, Pods, Deployments, Gateway API HTTPRoutes, Istio VirtualServices),
//!   with `uid`, `creationTimestamp`, `resourceVersion` (bumped by every change, not
//!   by a no-op write) and `generation` (bumped by a change of `spec`);
//! - get, list (label selectors `a=b`, `a!=b`, `a`, `!a`; `limit`/`continue`),
//!   create (POST), server-side apply (PATCH `application/apply-patch+yaml` with
//!   `fieldManager` and `force`), JSON merge patch (strategic merge patches are
//!   treated as merge patches) and delete (with `preconditions`), answering real
//!   status codes and `Status` bodies: 404 `NotFound` (also for a missing namespace),
//!   409 `AlreadyExists` and `Conflict` (stale `resourceVersion`, failed
//!   precondition, apply conflict with another field manager), 422 `Invalid`;
//! - field ownership by manager (`metadata.managedFields`): an apply removes the
//!   fields its manager dropped, conflicts on fields another manager set differently
//!   unless forced, and a merge patch takes over the fields it changes. Lists are
//!   atomic (a real server merges some by key);
//! - validation: names, label values, a Deployment's selector (required, matching
//!   its template, immutable), containers with a name and an image, Service ports;
//! - the Deployment controller on a tick (see the `controller` module), with images
//!   a test marks bad never becoming ready and reporting `ProgressDeadlineExceeded`,
//!   and its pods as Pod objects (deleting one makes the controller start it again).
//!
//! Not modelled: watches, authentication and RBAC, admission, ReplicaSets as objects,
//! finalizers (deletes are immediate; deleting a namespace deletes its
//! objects at once), `dryRun`, field selectors, JSON patches, and API discovery.
//!
//! Every request body is read up to [`MAX_BODY_BYTES`] (413 beyond) and parsed by
//! serde_json, which refuses nesting deeper than 128.

mod controller;
mod fields;
mod http;
mod pods;
mod resources;
mod selector;
mod store;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use http::{FAKE_HEADER, FAKE_HEADER_VALUE, MAX_BODY_BYTES};
pub use resources::{RESOURCES, Resource};
pub use store::{ApiError, Write};

use store::Store;

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeKubeOptions {
    /// Time between two steps of the Deployment controller (a pod starts or becomes
    /// ready in one step).
    pub tick: Duration,
    /// Caps every Deployment's `progressDeadlineSeconds`, so that a test sees
    /// `ProgressDeadlineExceeded` quickly; `None` honours the Deployments' own.
    pub progress_deadline: Option<Duration>,
}

impl Default for FakeKubeOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            progress_deadline: None,
        }
    }
}

/// A running fake API server; stopped when dropped.
#[derive(Debug)]
pub struct FakeKubeApi {
    url: String,
    store: Arc<Mutex<Store>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeKubeApi {
    /// Starts a fake with the default options.
    pub async fn start() -> Self {
        Self::start_with(FakeKubeOptions::default()).await
    }

    /// Starts a fake on a free port of `127.0.0.1`.
    pub async fn start_with(options: FakeKubeOptions) -> Self {
        let store: Arc<Mutex<Store>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Kubernetes API server");
        let addr = listener.local_addr().expect("a local address");
        let shared = store.clone();
        let app = axum::Router::new().fallback(move |method, uri, headers, body| {
            http::handle(shared.clone(), method, uri, headers, body)
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let ticking = store.clone();
        let controller = tokio::spawn(async move {
            let mut every = tokio::time::interval(options.tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let mut s = ticking.lock().unwrap_or_else(|e| e.into_inner());
                controller::tick(&mut s, Instant::now(), options.progress_deadline);
            }
        });
        let url = format!("http://{addr}");
        eprintln!("toronto-testkit: FAKE Kubernetes API server (not a cluster) at {url}");
        Self {
            url,
            store,
            tasks: vec![server, controller],
        }
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig (YAML) whose current context is this fake, without credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: toronto-fake\n  cluster:\n    server: {}\ncontexts:\n- name: toronto-fake\n  context:\n    cluster: toronto-fake\n    user: toronto-fake\n    namespace: default\nusers:\n- name: toronto-fake\n  user: {{}}\ncurrent-context: toronto-fake\n",
            self.url
        )
    }

    /// Writes [`FakeKubeApi::kubeconfig`] to `dir/kubeconfig` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig())?;
        Ok(path)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates an object as `kubectl create` would (field manager `kubectl-create`).
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let r = resources::resource_of_kind(kind).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("kind {kind:?} is not served by the fake"),
            )
        })?;
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.store().create(r, &ns, "kubectl-create", object)
    }

    /// Creates namespace `name` (if missing).
    pub fn create_namespace(&self, name: &str) {
        let made = self.create(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
        if let Err(e) = made
            && e.reason != "AlreadyExists"
        {
            panic!("namespace {name}: {}", e.message);
        }
    }

    /// The object of `kind` (`Deployment`) in namespace `ns` (empty for cluster-scoped
    /// kinds), as a GET answers it.
    pub fn object(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.store().find(kind, ns, name)
    }

    /// The names of every object of `kind` in `ns`.
    pub fn names(&self, kind: &str, ns: &str) -> Vec<String> {
        let Some(r) = resources::resource_of_kind(kind) else {
            return Vec::new();
        };
        self.store()
            .list(r, Some(ns), &selector::Selector::default())
            .iter()
            .filter_map(|o| {
                o.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Marks an image bad: pods running it never become ready, so their Deployment
    /// reports `ProgressDeadlineExceeded` once its deadline passes.
    pub fn mark_bad_image(&self, image: &str) {
        self.store().bad_images.insert(image.to_owned());
    }

    /// Every write accepted so far, oldest first.
    pub fn writes(&self) -> Vec<Write> {
        self.store().writes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_http_and_says_it_is_a_fake() {
        let fake = FakeKubeApi::start().await;
        fake.create_namespace("prod");
        fake.create_namespace("prod");
        assert_eq!(fake.names("Namespace", ""), ["prod"]);
        let (host, port) = fake
            .url()
            .trim_start_matches("http://")
            .split_once(':')
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect((host, port.parse::<u16>().unwrap()))
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(
                b"GET /api/v1/namespaces/nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        assert!(out.contains(FAKE_HEADER), "{out}");
        assert!(out.contains("\"reason\":\"NotFound\""), "{out}");
        assert!(fake.kubeconfig().contains(fake.url()));
    }
}
