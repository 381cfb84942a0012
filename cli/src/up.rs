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
    /// Run the local nats-server with `deploy/nats/permissions.conf`: one
    /// least-privilege user per service, with passwords generated for this run.
    pub secure: bool,
}

/// The NATS users of `deploy/nats/permissions.conf`, by service.
pub const SERVICE_USERS: [(ServiceKind, &str); 5] = [
    (ServiceKind::Planner, "planner"),
    (ServiceKind::Deployer, "deployer"),
    (ServiceKind::Monitor, "monitor"),
    (ServiceKind::IncidentCommander, "incident"),
    (ServiceKind::ChatBridge, "chat"),
];

/// The web console's NATS user of `deploy/nats/permissions.conf`.
pub const CONSOLE_USER: &str = "console";

/// The peer agents' NATS users of `deploy/nats/permissions.conf` (docs/peers.md).
pub const PEER_USERS: [&str; 3] = ["security", "qa", "architect"];

/// The permissions file, built into the binary.
pub const PERMISSIONS_CONF: &str = include_str!("../../deploy/nats/permissions.conf");

/// Writes `dir/nats-users.conf` (the permissions with fresh passwords) and
/// `dir/admin.env` (the admin's credentials for the CLI); returns the file and the
/// password of each user.
pub fn write_secure_config(
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, std::collections::HashMap<String, String>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut text = PERMISSIONS_CONF.to_owned();
    let mut passwords = std::collections::HashMap::new();
    for user in SERVICE_USERS
        .iter()
        .map(|(_, u)| *u)
        .chain(PEER_USERS)
        .chain([CONSOLE_USER, "admin"])
    {
        let password = uuid::Uuid::new_v4().simple().to_string();
        text = text.replace(
            &format!("$TORONTO_NATS_{}_PASSWORD", user.to_uppercase()),
            &format!("\"{password}\""),
        );
        passwords.insert(user.to_owned(), password);
    }
    let file = dir.join("nats-users.conf");
    write_secret(&file, &text)?;
    write_secret(
        &dir.join("admin.env"),
        &format!(
            "TORONTO_NATS_USER=admin\nTORONTO_NATS_PASSWORD={}\n",
            passwords["admin"]
        ),
    )?;
    let peers: String = PEER_USERS
        .iter()
        .map(|u| {
            format!(
                "TORONTO_NATS_{}_PASSWORD={}\n",
                u.to_uppercase(),
                passwords[*u]
            )
        })
        .collect();
    write_secret(&dir.join("peers.env"), &peers)?;
    Ok((file, passwords))
}

/// Writes a file holding secrets, readable and writable by its owner only (0600),
/// also when it existed before with wider permissions.
pub fn write_secret(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
        }
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Starts one service by kind. Each service's start is boxed: in a debug build the
/// five start futures inlined into one would overflow a test thread's 2 MiB stack.
pub async fn start_service(
    kind: ServiceKind,
    config: Config,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    start_service_with(kind, config, &Overrides::default(), shutdown).await
}

/// Settings given to services instead of the ones their `TORONTO_<SERVICE>_*`
/// variables make (what `toronto up --demo` changes).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The deployer's settings.
    pub deployer: Option<toronto_deployer::Settings>,
    /// The monitor's settings.
    pub monitor: Option<toronto_monitor::Settings>,
    /// The incident commander's settings.
    pub incident: Option<toronto_incident_commander::Settings>,
}

/// [`start_service`] with the settings of `overrides` where it has some.
pub async fn start_service_with(
    kind: ServiceKind,
    config: Config,
    overrides: &Overrides,
    shutdown: CancellationToken,
) -> Result<ServiceRuntime, RuntimeError> {
    match (kind, overrides) {
        (
            ServiceKind::Monitor,
            Overrides {
                monitor: Some(s), ..
            },
        ) => Box::pin(toronto_monitor::start_with(config, s.clone(), shutdown)).await,
        (
            ServiceKind::IncidentCommander,
            Overrides {
                incident: Some(s), ..
            },
        ) => {
            Box::pin(toronto_incident_commander::start_with(
                config,
                s.clone(),
                shutdown,
            ))
            .await
        }
        (
            ServiceKind::Deployer,
            Overrides {
                deployer: Some(s), ..
            },
        ) => {
            let started = Box::pin(toronto_deployer::start_with(
                config,
                s.clone(),
                None,
                shutdown,
            ))
            .await?;
            Ok(started.runtime)
        }
        (ServiceKind::Planner, _) => Box::pin(toronto_planner::start(config, shutdown)).await,
        (ServiceKind::Deployer, _) => Box::pin(toronto_deployer::start(config, shutdown)).await,
        (ServiceKind::Monitor, _) => Box::pin(toronto_monitor::start(config, shutdown)).await,
        (ServiceKind::IncidentCommander, _) => {
            Box::pin(toronto_incident_commander::start(config, shutdown)).await
        }
        (ServiceKind::ChatBridge, _) => {
            Box::pin(toronto_chat_bridge::start(config, shutdown)).await
        }
        (ServiceKind::Console, _) => Box::pin(toronto_console::start(config, shutdown)).await,
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
        Self::start_as(
            config,
            http_port_base,
            &Default::default(),
            &Overrides::default(),
            shutdown,
        )
        .await
    }

    /// [`Stack::start`] with each service connecting as its own NATS user, where
    /// `passwords` has one (keyed by the user names of [`SERVICE_USERS`]), and the
    /// settings of `overrides` where it has some.
    pub async fn start_as(
        config: &Config,
        http_port_base: u16,
        passwords: &std::collections::HashMap<String, String>,
        overrides: &Overrides,
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
            if let Some((_, user)) = SERVICE_USERS.iter().find(|(k, _)| *k == kind)
                && let Some(password) = passwords.get(*user)
            {
                config.nats.user = Some((*user).to_owned());
                config.nats.password = Some(password.clone());
                config.nats.token = None;
            }
            let rt = start_service_with(kind, config, overrides, shutdown.clone()).await?;
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

/// `toronto bootstrap` with `config`'s NATS user (the admin under `--secure`), before
/// the services start under their own users.
async fn bootstrap_as_admin(
    config: &Config,
    identities: Option<&crate::trust::LocalIdentities>,
    shutdown: &CancellationToken,
) -> Result<(), RuntimeError> {
    let metrics = toronto_runtime::Metrics::new();
    let client =
        toronto_runtime::connect::connect(&config.nats, "toronto-bootstrap", &metrics, shutdown)
            .await?;
    let done = crate::bootstrap::bootstrap_with_auth(
        &client,
        &config.subjects(),
        &config.jetstream,
        &config.auth,
    )
    .await?;
    eprintln!(
        "toronto up: bootstrapped {} streams and {} KV buckets",
        done.streams.len(),
        done.buckets.len()
    );
    if let Some(identities) = identities {
        identities.register(&client, config).await.map_err(|e| {
            RuntimeError::Config(toronto_runtime::config::ConfigError::Invalid(format!(
                "{e:#}"
            )))
        })?;
        for line in identities.describe() {
            eprintln!("toronto up: {line}");
        }
    }
    Ok(())
}

/// Starts the web console beside the stack: HTTP on `http_port_base + 6` of the
/// configured host (a free port when the base is 0), as the NATS user `console` when
/// `passwords` has one; returns its task and address.
pub async fn start_console(
    config: &Config,
    http_port_base: u16,
    passwords: &std::collections::HashMap<String, String>,
    shutdown: CancellationToken,
) -> Result<
    (
        tokio::task::JoinHandle<Result<(), RuntimeError>>,
        Option<SocketAddr>,
    ),
    RuntimeError,
> {
    let mut config = config.clone();
    let host = config
        .http
        .socket_addr()?
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = if http_port_base == 0 {
        0
    } else {
        http_port_base + 6
    };
    config.http.addr = format!("{host}:{port}");
    if let Some(password) = passwords.get(CONSOLE_USER) {
        config.nats.user = Some(CONSOLE_USER.to_owned());
        config.nats.password = Some(password.clone());
        config.nats.token = None;
    }
    let rt = start_service(ServiceKind::Console, config, shutdown).await?;
    let addr = rt.http_addr;
    Ok((tokio::spawn(rt.run_until_shutdown()), addr))
}

/// Runs `toronto up` until `shutdown`.
pub async fn run(
    mut config: Config,
    options: UpOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut passwords = std::collections::HashMap::new();
    // The stack's keys: the services sign as the agent, the operator is the first admin.
    let identities = if config.auth.mode == toronto_runtime::auth::AuthMode::Off {
        None
    } else {
        Some(crate::trust::prepare(
            &mut config,
            &options.data_dir,
            options.demo,
        )?)
    };
    let nats = if options.start_nats {
        let binary = find_binary()?;
        let secure_config = if options.secure {
            let (file, generated) = write_secure_config(&options.data_dir)?;
            passwords = generated;
            config.nats.user = Some("admin".into());
            config.nats.password = passwords.get("admin").cloned();
            Some(file)
        } else {
            None
        };
        let server = LocalNats::start_with_config(
            &binary,
            options.nats_port,
            &options.data_dir.join("nats"),
            secure_config.as_deref(),
        )
        .await
        .context("starting the local nats-server")?;
        if secure_config.is_some() {
            eprintln!(
                "toronto up: NATS with one least-privilege user per service (deploy/nats/permissions.conf); \
                 for the CLI: `set -a; . {}; set +a`",
                options.data_dir.join("admin.env").display()
            );
        }
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
        if options.secure && !options.start_nats {
            eprintln!("toronto up: --secure applies to the nats-server toronto up starts; TORONTO_NATS_URL is used as it is");
        }
        bootstrap_as_admin(&config, identities.as_ref(), &shutdown).await?;
        let invalid = |e: anyhow::Error| {
            RuntimeError::Config(toronto_runtime::config::ConfigError::Invalid(format!(
                "{e:#}"
            )))
        };
        let demo_settings = if options.demo {
            Some(crate::demo::DemoSettings::from_env().map_err(invalid)?)
        } else {
            None
        };
        let overrides = demo_settings
            .as_ref()
            .map(crate::demo::DemoSettings::overrides)
            .unwrap_or_default();
        let stack = Stack::start_as(
            &config,
            options.http_port_base,
            &passwords,
            &overrides,
            shutdown.clone(),
        )
        .await?;
        let (console, console_addr) =
            start_console(&config, options.http_port_base, &passwords, shutdown.clone()).await?;
        let demo = match &demo_settings {
            Some(settings) => {
                let demo = crate::demo::Demo::start(&config, settings)
                    .await
                    .map_err(invalid)?;
                for line in settings.describe() {
                    eprintln!("toronto up: {line}");
                }
                Some(demo)
            }
            None => None,
        };
        eprintln!("toronto up: all five services are running; ctrl-c or SIGTERM stops them");
        if let Some(addr) = console_addr {
            eprintln!("toronto up: web console at http://{addr}/ (sign in with a token from `toronto identity token <id>`; docs/console.md)");
        }
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
        if let Ok(Err(e)) = console.await {
            tracing::error!(error = %e, "the console failed");
        }
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

#[cfg(all(test, unix))]
mod secure_files {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secure_config_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        // A leftover from an older run, world-readable.
        let admin = dir.path().join("admin.env");
        std::fs::write(&admin, "old").unwrap();
        std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (users, passwords) = super::write_secure_config(dir.path()).unwrap();
        let text = std::fs::read_to_string(&users).unwrap();
        assert!(
            !text.contains("$TORONTO_NATS_"),
            "every password is filled in"
        );
        for file in [users, admin, dir.path().join("peers.env")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        let env = std::fs::read_to_string(dir.path().join("admin.env")).unwrap();
        assert!(env.contains(&passwords["admin"]));
    }
}
