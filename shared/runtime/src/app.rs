//! A service's whole life: connect, register, serve status and HTTP, shut down
//! gracefully. Every service is built on [`ServiceRuntime`].

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::Client;
use async_nats::connection::State;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use toronto_protocol::status::{BuildInfo, Status, StatusRequest};
use toronto_protocol::{ErrorBody, Message, ServiceKind, Subjects};

use crate::config::{Config, ConfigError};
use crate::connect::{ConnectError, connect};
use crate::http::{self, Readiness};
use crate::jetstream::{DeadLetters, Events, JetStreamError, ensure_kv, ensure_streams};
use crate::metrics::Metrics;
use crate::service::{Request, ServiceError, ServiceHost, ServiceSpec};
use crate::supervise::{LoopSpec, Loops};

/// Why a service could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No NATS connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Streams or buckets could not be set up.
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
    /// The service API could not be registered.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The service could not read back the state it keeps (a KV bucket, a directory).
    #[error("cannot restore state from {from}: {source}")]
    Restore {
        /// Where the state is kept.
        from: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The private CA for outgoing HTTPS cannot be trusted.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The service's own identity (`TORONTO_IDENTITY_FILE`) cannot be read.
    #[error("service identity: {0}")]
    Identity(#[from] crate::auth::SeedError),
    /// The HTTP server could not bind.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A started service: its connection, JetStream context, service host and HTTP
/// server. Add endpoints with [`ServiceRuntime::endpoint`], then
/// [`ServiceRuntime::run_until_shutdown`].
#[derive(Debug)]
pub struct ServiceRuntime {
    /// Which service this is.
    pub kind: ServiceKind,
    /// The configuration it was started with.
    pub config: Config,
    /// The NATS connection.
    pub client: Client,
    /// JetStream over that connection.
    pub js: jetstream::Context,
    /// The subject catalogue.
    pub subjects: Subjects,
    /// The service's metrics.
    pub metrics: Metrics,
    /// Event publisher.
    pub events: Events,
    /// Dead-letter sink of this service.
    pub dead_letters: DeadLetters,
    /// The ADR-32 host.
    pub host: ServiceHost,
    /// Where HTTP is served, if enabled.
    pub http_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    http_stop: CancellationToken,
    http_task: Option<tokio::task::JoinHandle<()>>,
    loops: Loops,
    lease: Arc<std::sync::OnceLock<crate::lease::LeaseWatch>>,
}

impl ServiceRuntime {
    /// Connects to NATS (waiting until it is reachable or `shutdown`), sets up the
    /// streams, registers the service with its `status` endpoint, and serves HTTP.
    pub async fn start(
        kind: ServiceKind,
        version: &str,
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Self, RuntimeError> {
        Self::start_with_routes(kind, version, config, axum::Router::new(), shutdown).await
    }

    /// Like [`ServiceRuntime::start`], and the service's own HTTP `routes` are served
    /// beside `/healthz`, `/readyz` and `/metrics` on the same listener (when HTTP is
    /// enabled). The routes exist before the service is connected: a handler that needs
    /// the service answers 503 until it is ready.
    pub async fn start_with_routes(
        kind: ServiceKind,
        version: &str,
        config: Config,
        routes: axum::Router,
        shutdown: CancellationToken,
    ) -> Result<Self, RuntimeError> {
        config.validate()?;
        crate::tls::install_crypto_provider();
        // Only a configured CA is set: a service started without one (another one in
        // the same process, a test) leaves what is trusted as it is.
        if let Some(ca) = &config.http.tls_ca_file {
            crate::tls::trust_ca_file(Some(ca))?;
        }
        // Spans are exported as this service (when an OTLP endpoint is set).
        crate::telemetry::start_export(kind.service_name());
        // The service signs the requests it sends to other services with its own seed.
        if let Some(path) = &config.auth.identity_file {
            crate::auth::install_process_signer(crate::auth::Signer::from_file(path)?);
        }
        let metrics = Metrics::new();
        let subjects = config.subjects();
        let client = connect(&config.nats, kind.service_name(), &metrics, &shutdown).await?;
        let js = jetstream::new(client.clone());
        // JetStream may still be electing a leader (a cluster starting up): retry with
        // backoff rather than exit, as the connection itself does.
        let mut attempt = 0;
        // Streams are the admin's (`toronto bootstrap`): a least-privilege user only
        // checks that they exist, and waits until they do.
        while let Err(e) = ensure_streams(&js, &subjects, &config.jetstream).await {
            attempt += 1;
            if attempt >= 5 {
                tracing::warn!(
                    error = %e,
                    attempt,
                    "JetStream streams missing or not ready; waiting (has `toronto bootstrap` run?)"
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(ConnectError::Cancelled.into()),
                _ = tokio::time::sleep(crate::connect::backoff(attempt)) => {}
            }
        }
        let events = Events::new(js.clone(), subjects.clone(), metrics.clone());
        let dead_letters = DeadLetters::new(js.clone(), &subjects, kind.token(), metrics.clone());
        let build = BuildInfo::current(version);
        let spec = ServiceSpec {
            name: kind.service_name().to_owned(),
            version: version.to_owned(),
            description: kind.description().to_owned(),
            metadata: [
                ("subject_prefix".to_owned(), subjects.prefix().to_owned()),
                ("token".to_owned(), kind.token().to_owned()),
                ("git_sha".to_owned(), build.git_sha.clone()),
            ]
            .into(),
            queue_group: kind.service_name().to_owned(),
            source: subjects.source(kind),
        };
        let host = ServiceHost::start(
            client.clone(),
            spec,
            config.endpoints.clone(),
            metrics.clone(),
            Some(dead_letters.clone()),
        )
        .await?;

        let loops = Loops::new(kind.service_name(), &metrics, shutdown.clone());
        // Without its buckets (e.g. NATS permissions that do not grant them) the service
        // still starts: open endpoints answer, protected ones refuse with 503.
        // A NATS user without rights on the buckets gets no answer, hence the bound.
        let opening = crate::auth::Authenticator::start(
            &js,
            &subjects,
            &config.auth,
            config.jetstream.replicas,
            shutdown.clone(),
        );
        let auth = match tokio::time::timeout(Duration::from_secs(2), opening).await {
            Ok(Ok(auth)) => auth,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "identity registry unavailable: protected endpoints answer 503");
                crate::auth::Authenticator::unavailable(config.auth.mode)
            }
            Err(_) => {
                tracing::error!(
                    "identity registry did not open within 2 s: protected endpoints answer 503"
                );
                crate::auth::Authenticator::unavailable(config.auth.mode)
            }
        };
        auth.set_audit(crate::auth::AuditSink::new(
            client.clone(),
            subjects.event("audit", "decision"),
            kind.service_name(),
            subjects.source(kind),
        ));
        host.set_auth(Arc::new(auth));

        let status_client = client.clone();
        let status_loops = loops.clone();
        let instance_id = host.id().to_owned();
        let started = host.started();
        let service_name = kind.service_name().to_owned();
        let version_owned = version.to_owned();
        let auth_mode = config.auth.mode.as_str();
        let lease: Arc<std::sync::OnceLock<crate::lease::LeaseWatch>> = Arc::default();
        let status_lease = lease.clone();
        host.add_endpoint(
            "status",
            subjects.status(kind),
            move |_req: Request<StatusRequest>| {
                let status = Status {
                    service: service_name.clone(),
                    instance_id: instance_id.clone(),
                    version: version_owned.clone(),
                    started_at: started,
                    uptime_seconds: (chrono::Utc::now() - started).num_milliseconds() as f64
                        / 1000.0,
                    nats_connected: status_client.connection_state() == State::Connected,
                    build: build.clone(),
                    loops: status_loops.status(),
                    auth: Some(auth_mode.to_owned()),
                    lease: status_lease.get().map(crate::lease::LeaseWatch::current),
                };
                async move { Ok::<_, ErrorBody>(status) }
            },
        )
        .await?;

        let stopping = Arc::new(AtomicBool::new(false));
        let http_stop = CancellationToken::new();
        let (http_addr, http_task) = match config.http.socket_addr()? {
            Some(addr) => {
                let ready_client = client.clone();
                let ready_stopping = stopping.clone();
                let ready_loops = loops.clone();
                let ready_lease = lease.clone();
                let readiness: Readiness = Arc::new(move || {
                    if ready_stopping.load(Ordering::Relaxed) {
                        return Err("shutting down".into());
                    }
                    match ready_client.connection_state() {
                        State::Connected => {}
                        other => return Err(format!("NATS is {other:?}").to_lowercase()),
                    }
                    let down = ready_loops.down();
                    if down.is_empty() {
                        // A replica of a leased service says which part it plays.
                        Ok(ready_lease.get().map(|l| {
                            let s = l.current();
                            let role = match s.role {
                                toronto_protocol::status::LeaseRole::Owner => "owner",
                                toronto_protocol::status::LeaseRole::Standby => "standby",
                            };
                            match s.token {
                                Some(token) => format!("lease {}: {role} (token {token})", s.name),
                                None => format!("lease {}: {role}", s.name),
                            }
                        }))
                    } else {
                        Err(format!("background loops down: {}", down.join(", ")))
                    }
                });
                let (bound, task) =
                    http::serve_with(addr, metrics.clone(), readiness, routes, http_stop.clone())
                        .await
                        .map_err(|source| RuntimeError::Http {
                            addr: addr.to_string(),
                            source,
                        })?;
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        tracing::info!(
            service = kind.service_name(),
            id = host.id(),
            http = ?http_addr,
            "service started"
        );
        let rt = Self {
            kind,
            config,
            client,
            js,
            subjects,
            metrics,
            events,
            dead_letters,
            host,
            http_addr,
            shutdown,
            http_stop,
            http_task,
            loops,
            lease,
        };
        // Readiness turns false as soon as shutdown begins.
        let token = rt.shutdown.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            stopping.store(true, Ordering::Relaxed);
        });
        Ok(rt)
    }

    /// The `source` attribute of this service's messages.
    pub fn source(&self) -> String {
        self.subjects.source(self.kind)
    }

    /// The shutdown token this service watches.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Adds the command `<prefix>.devops.v1.<service>.<verb>`. Its micro endpoint name is
    /// `verb` with every dot turned into a dash (`plan.get` → `plan-get`): micro v1 names
    /// match `^[a-zA-Z0-9_-]+$`, while the subject keeps its dots.
    pub fn endpoint<'a, Req, Resp, H, Fut>(
        &'a self,
        verb: &'a str,
        handler: H,
    ) -> futures::future::BoxFuture<'a, Result<(), RuntimeError>>
    where
        Req: Message,
        Resp: Message,
        H: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ErrorBody>> + Send + 'static,
    {
        // Boxed: a service registers a dozen endpoints in one function, and in a debug
        // build each registration's future, held by value, made that function's frame
        // about a megabyte (a stack overflow on a 2 MiB thread).
        Box::pin(async move {
            self.host
                .add_endpoint(
                    &verb.replace('.', "-"),
                    self.subjects.command(self.kind, verb),
                    handler,
                )
                .await?;
            Ok(())
        })
    }

    /// Runs a required background loop (a consumer, a watcher, a timer) named `what`
    /// beside the endpoints, supervised: `factory()` makes one run, and a run that ends
    /// before shutdown (an error, a panic, or an end nobody asked for) is logged and
    /// started again after a backoff. While it is down `/readyz` is 503 naming it;
    /// `status` lists it. Each run must end once the shutdown token is cancelled;
    /// shutdown waits for it (within the grace period) before the connection is drained.
    pub fn spawn_background<F, Fut, E>(&self, what: &'static str, factory: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.loops.spawn(LoopSpec::new(what), factory);
    }

    /// Like [`ServiceRuntime::spawn_background`], supervised as `spec` says (optional
    /// for readiness, or ended for good by a signal of its own).
    pub fn spawn_loop<F, Fut, E>(&self, spec: LoopSpec, factory: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.loops.spawn(spec, factory);
    }

    /// A live index of the ids under `<prefix>.` in `kv` (see [`crate::work::KeyIndex`]),
    /// followed by a supervised loop named `name`. The loop is optional for readiness:
    /// while it is down, listings fall back to listing the bucket's keys.
    pub fn key_index(
        &self,
        name: &'static str,
        kv: async_nats::jetstream::kv::Store,
        prefix: &'static str,
    ) -> crate::work::KeyIndex {
        let index = crate::work::KeyIndex::new(kv, prefix);
        let (follow, stop) = (index.clone(), self.shutdown_token());
        self.spawn_loop(LoopSpec::new(name).optional(), move || {
            let (index, stop) = (follow.clone(), stop.clone());
            async move { index.run(stop).await }
        });
        index
    }

    /// The supervised background loops of this instance.
    pub fn loops(&self) -> &Loops {
        &self.loops
    }

    /// Opens this service's KV bucket `<prefix>_<name>`, creating it when it does not
    /// exist and this NATS user may (the admin's `toronto bootstrap` creates it).
    pub async fn kv(&self, name: &str, history: i64) -> Result<jetstream::kv::Store, RuntimeError> {
        Ok(ensure_kv(
            &self.js,
            &self.subjects.kv_bucket(name),
            history,
            self.config.jetstream.replicas,
        )
        .await?)
    }

    /// Joins the lease `name` (in the `<prefix>_leases` bucket, as this instance's
    /// service id) and keeps it as a supervised loop until shutdown: the returned
    /// watch says whether this instance owns the single-writer work now, and with
    /// which fencing token. `status`, `/readyz` and the `lease_owner` metric report
    /// it. One lease per service.
    pub async fn lease(&self, name: &str) -> Result<crate::lease::LeaseWatch, RuntimeError> {
        let kv = self
            .kv(crate::lease::BUCKET.0, crate::lease::BUCKET.1)
            .await?;
        let (candidate, watch) =
            crate::lease::Candidate::new(kv, name, self.host.id(), self.config.lease.clone());
        candidate.register_metrics(&self.metrics);
        let _ = self.lease.set(watch.clone());
        let candidate = Arc::new(tokio::sync::Mutex::new(candidate));
        let token = self.shutdown.clone();
        self.spawn_background("lease", move || {
            let (candidate, token) = (candidate.clone(), token.clone());
            async move { candidate.lock_owned().await.run(token).await }
        });
        Ok(watch)
    }

    /// The lease joined with [`ServiceRuntime::lease`], if any.
    pub fn lease_watch(&self) -> Option<crate::lease::LeaseWatch> {
        self.lease.get().cloned()
    }

    /// Waits for shutdown, then stops taking requests, finishes those in flight
    /// (within the grace period), drains the connection and stops HTTP.
    pub async fn run_until_shutdown(mut self) -> Result<(), RuntimeError> {
        self.shutdown.cancelled().await;
        tracing::info!(service = self.kind.service_name(), "shutting down");
        self.loops.tracker().close();
        let (_, background_done) = tokio::join!(
            self.host.stop(self.config.shutdown_grace()),
            tokio::time::timeout(self.config.shutdown_grace(), self.loops.tracker().wait()),
        );
        if background_done.is_err() {
            tracing::warn!("background work still running at the end of the grace period");
        }
        // `drain` only queues the request and returns: flush first so that the last
        // replies have reached the server before the process may exit.
        let bound = Duration::from_secs(5);
        if tokio::time::timeout(bound, self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS flush did not complete; replies may be lost");
        }
        if let Err(e) = self.client.drain().await {
            tracing::warn!(error = %e, "cannot drain the NATS connection");
        }
        self.http_stop.cancel();
        if let Some(task) = self.http_task.take() {
            let _ = task.await;
        }
        tracing::info!(service = self.kind.service_name(), "stopped");
        Ok(())
    }
}

/// The body of every service binary: config from the environment, JSON logs,
/// shutdown on SIGTERM/ctrl-c, exit 0 after a clean shutdown and 1 on error.
pub async fn service_main<F, Fut>(run: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), RuntimeError>>,
{
    crate::tls::install_crypto_provider();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&config.log);
    let shutdown = crate::shutdown::on_signal();
    let code = match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(RuntimeError::Connect(ConnectError::Cancelled)) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "service failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    // The last spans are sent before the process ends.
    crate::telemetry::shutdown().await;
    code
}
