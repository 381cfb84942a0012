//! `toronto up`: every service in one process, against a local nats-server that it
//! starts (or against `TORONTO_NATS_URL`, starting none), until SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use toronto_protocol::ServiceKind;
use toronto_runtime::{Config, RuntimeError, ServiceRuntime};

use crate::nats_server::{LocalNats, find_binary};

/// Options of `toronto up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Port of the local nats-server (when `TORONTO_NATS_URL` is not set).
    pub nats_port: u16,
    /// Where the local nats-server keeps JetStream data.
    pub data_dir: PathBuf,
    /// HTTP ports are `base + 1` (planner) to `base + 5` (chat bridge); 0 picks free ports.
    pub http_port_base: u16,
    /// Start a local nats-server; false when `TORONTO_NATS_URL` is set.
    pub start_nats: bool,
    /// Add the demo: demo security and QA peers, and the service `shop` with its SLOs
    /// on the simulated cluster (all labelled as demo).
    pub demo: bool,
}

/// Starts one service by kind.
pub async fn start_service(
    kind: ServiceKind,
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    match kind {
        ServiceKind::Planner => toronto_planner::start(config, shutdown).await,
        ServiceKind::Deployer => toronto_deployer::start(config, shutdown).await,
        ServiceKind::Monitor => toronto_monitor::start(config, shutdown).await,
        ServiceKind::IncidentCommander => toronto_incident_commander::start(config, shutdown).await,
        ServiceKind::ChatBridge => toronto_chat_bridge::start(config, shutdown).await,
    }
}

/// The running services of one stack.
#[derive(Debug)]
pub struct Stack {
    /// Each service with its HTTP address.
    pub services: Vec<(ServiceKind, Option<SocketAddr>)>,
    tasks: JoinSet<Result<(), RuntimeError>>,
}

impl Stack {
    /// Starts every service against `config.nats`; HTTP on `http_port_base + 1..=5`
    /// of the configured HTTP host (free ports when the base is 0).
    pub async fn start(
        config: &Config,
        http_port_base: u16,
        shutdown: CancellationToken,
    ) -> Result<Self, RuntimeError> {
        let host = config
            .http
            .socket_addr()?
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let mut services = Vec::new();
        let mut tasks = JoinSet::new();
        for (i, kind) in ServiceKind::ALL.into_iter().enumerate() {
            let mut config = config.clone();
            let port = if http_port_base == 0 {
                0
            } else {
                http_port_base + 1 + i as u16
            };
            config.http.addr = format!("{host}:{port}");
            let rt = start_service(kind, config, shutdown.clone()).await?;
            services.push((kind, rt.http_addr));
            tasks.spawn(rt.run_until_shutdown());
        }
        Ok(Self { services, tasks })
    }

    /// Waits until every service has shut down; the first error is returned.
    pub async fn wait(mut self) -> Result<(), RuntimeError> {
        let mut first = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Err(e)) if first.is_ok() => first = Err(e),
                Err(e) => tracing::error!(error = %e, "service task failed"),
                _ => {}
            }
        }
        first
    }
}

/// Runs `toronto up` until `shutdown`.
pub async fn run(
    mut config: Config,
    options: UpOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let nats = if options.start_nats {
        let binary = find_binary()?;
        let server = LocalNats::start(&binary, options.nats_port, &options.data_dir.join("nats"))
            .await
            .context("starting the local nats-server")?;
        eprintln!(
            "toronto up: nats-server {} with JetStream at {} (data in {})",
            binary.display(),
            server.url,
            options.data_dir.display()
        );
        config.nats.urls = vec![server.url.clone()];
        Some(server)
    } else {
        eprintln!("toronto up: using NATS at {}", config.nats.urls.join(","));
        None
    };
    let result = async {
        let stack = Stack::start(&config, options.http_port_base, shutdown.clone()).await?;
        let demo = if options.demo {
            let demo = crate::demo::Demo::start(&config)
                .await
                .map_err(|e| RuntimeError::Config(toronto_runtime::config::ConfigError::Invalid(format!("{e:#}"))))?;
            eprintln!(
                "toronto up: DEMO on: demo security and QA agents answer every gate (they check nothing); \
                 `{}` {} runs in {} on the simulated cluster (a simulation) with an availability SLO",
                crate::demo::SERVICE,
                crate::demo::FIRST_VERSION,
                crate::demo::ENVIRONMENTS.join(" and ")
            );
            Some(demo)
        } else {
            None
        };
        eprintln!("toronto up: all five services are running; ctrl-c or SIGTERM stops them");
        for (kind, http) in &stack.services {
            eprintln!(
                "  {:<28} status: {:<40} http: {}",
                kind.service_name(),
                config.subjects().status(*kind),
                http.map(|a| format!("http://{a}/readyz"))
                    .unwrap_or_else(|| "off".into())
            );
        }
        let result = stack.wait().await;
        if let Some(demo) = demo {
            demo.stop().await;
        }
        result
    }
    .await;
    if let Some(server) = nats {
        server.stop().await;
    }
    match result {
        Ok(()) | Err(RuntimeError::Connect(toronto_runtime::connect::ConnectError::Cancelled)) => {
            eprintln!("toronto up: stopped");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
