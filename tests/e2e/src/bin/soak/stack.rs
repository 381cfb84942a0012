//! The stack the soak measures: what `toronto up --demo` starts (a nats-server with
//! JetStream, the bootstrap, the local identities, the demo's peers, service and
//! SLOs), except that every service runs as its own process (its release or debug
//! binary), so that each one's resident memory can be read from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use toronto_cli::demo::{DEMO_VARS, Demo, DemoSettings, INCIDENT_POLICY};
use toronto_cli::nats_server::LocalNats;
use toronto_cli::trust::LocalIdentities;
use toronto_runtime::Config;

/// The processes of the stack: its name in the figures, and its binary.
pub const SERVICES: [(&str, &str); 6] = [
    ("planner", "toronto-planner"),
    ("deployer", "toronto-deployer"),
    ("monitor", "toronto-monitor"),
    ("incident-commander", "toronto-incident-commander"),
    ("chat-bridge", "toronto-chat-bridge"),
    ("console", "toronto-console"),
];

/// One service process.
#[derive(Debug)]
pub struct Proc {
    /// Its name in the figures.
    pub name: &'static str,
    /// Its process id.
    pub pid: u32,
    /// Its `/healthz`, `/readyz`, `/metrics` server.
    pub http: SocketAddr,
    /// Its log (stderr, JSON lines).
    pub log: PathBuf,
    child: Child,
}

/// The running stack.
pub struct Stack {
    /// The NATS URL.
    pub url: String,
    /// The stack's keys.
    pub identities: LocalIdentities,
    /// The service processes.
    pub procs: Vec<Proc>,
    /// The nats-server's process id, when found.
    pub nats_pid: Option<u32>,
    nats: LocalNats,
    demo: Demo,
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The resident set size of `pid`, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The process id of this process's child named `comm` (`/proc/<pid>/stat`).
fn child_named(comm: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after the `)`.
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == me && name == comm).then_some(pid)
    })
}

/// What `toronto up --demo` sets for the services when the environment does not, as
/// variables for their processes, with the demo incident policy in `policy`.
fn demo_env(policy: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = DEMO_VARS
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if std::env::var_os("TORONTO_INCIDENT_POLICY_FILE").is_none() {
        env.push((
            "TORONTO_INCIDENT_POLICY_FILE".into(),
            policy.display().to_string(),
        ));
    }
    env
}

impl Stack {
    /// Starts nats-server (`nats_bin`, JetStream under `work`), bootstraps it, makes
    /// and registers the identities, starts every service from `bin_dir` and waits
    /// until each is ready, then starts the demo (its peers run in this process).
    pub async fn start(nats_bin: &Path, bin_dir: &Path, work: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let nats = LocalNats::start(nats_bin, port, &work.join("nats")).await?;
        let url = nats.url.clone();
        let nats_pid = child_named("nats-server");
        let mut vars = toronto_runtime::config::vars::env_vars();
        vars.insert("TORONTO_NATS_URL".into(), url.clone());
        vars.insert(
            "TORONTO_IDENTITY_FILE".into(),
            work.join("operator.nk").display().to_string(),
        );
        let mut config = Config::from_vars(&vars)?;
        let identities = toronto_cli::trust::prepare(&mut config, work, true)?;
        // The demo's own requests (its seeding) are signed as the stack's agent, as
        // in `toronto up`, where the services install that key in the process.
        toronto_runtime::auth::install_process_signer(identities.agent.clone());
        let metrics = toronto_runtime::Metrics::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let client =
            toronto_runtime::connect::connect(&config.nats, "toronto-soak", &metrics, &stop)
                .await?;
        toronto_cli::bootstrap::bootstrap_with_auth(
            &client,
            &config.subjects(),
            &config.jetstream,
            &config.auth,
        )
        .await?;
        identities.register(&client, &config).await?;
        let policy = work.join("incident-policy.yaml");
        std::fs::write(&policy, INCIDENT_POLICY)?;
        let mut env = demo_env(&policy);
        env.extend([
            ("TORONTO_NATS_URL".to_owned(), url.clone()),
            (
                "TORONTO_AUTH_ADMINS".to_owned(),
                config.auth.admins.join(","),
            ),
            (
                "TORONTO_IDENTITY_FILE".to_owned(),
                identities.agent_file.display().to_string(),
            ),
        ]);
        let mut procs = Vec::new();
        for (name, binary) in SERVICES {
            let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let log = work.join(format!("{name}.log"));
            let stderr = std::fs::File::create(&log)?;
            let child = Command::new(bin_dir.join(binary))
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("TORONTO_HTTP_ADDR", http.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", bin_dir.join(binary).display()))?;
            let pid = child.id().context("a started child has an id")?;
            procs.push(Proc {
                name,
                pid,
                http,
                log,
                child,
            });
        }
        let http = reqwest::Client::new();
        for proc in &mut procs {
            wait_ready(&http, proc).await?;
        }
        let demo = Demo::start(&config, &DemoSettings::from_vars(&vars)?).await?;
        Ok(Self {
            url,
            identities,
            procs,
            nats_pid,
            nats,
            demo,
        })
    }

    /// SIGTERM to every service (SIGKILL after 10 s), then the demo and nats-server.
    pub async fn stop(mut self) {
        for proc in &self.procs {
            let _ = Command::new("kill")
                .args(["-TERM", &proc.pid.to_string()])
                .status()
                .await;
        }
        for proc in &mut self.procs {
            if tokio::time::timeout(Duration::from_secs(10), proc.child.wait())
                .await
                .is_err()
            {
                let _ = proc.child.kill().await;
            }
        }
        self.demo.stop().await;
        self.nats.stop().await;
    }

    /// The services that are no longer running, with their exit status.
    pub fn exited(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} ({status})", p.name)),
                _ => None,
            })
            .collect()
    }
}

/// Waits until `proc` answers `/readyz` with 200 (two minutes at most: a debug build
/// on a busy machine starts slowly).
async fn wait_ready(http: &reqwest::Client, proc: &mut Proc) -> anyhow::Result<()> {
    let started = Instant::now();
    let url = format!("http://{}/readyz", proc.http);
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "{} exited with {status} before it was ready:\n{}",
                proc.name,
                tail(&proc.log, 10)
            );
        }
        let ready = http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "{} was not ready within 2 minutes:\n{}",
                proc.name,
                tail(&proc.log, 10)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The sum of the samples of `metric` (every label set) on one `/metrics` page.
pub fn metric_sum(page: &str, metric: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// One service's `/metrics` page (empty when it does not answer within 2 s).
pub async fn metrics_page(http: &reqwest::Client, proc: &Proc) -> String {
    let url = format!("http://{}/metrics", proc.http);
    match http.get(&url).timeout(Duration::from_secs(2)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Messages a NATS subscription of the service dropped because its reader fell
/// behind, as its log says (a line at most every 10 s, with the count): at least
/// this many.
pub fn slow_consumer_drops(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("slow consumer"))
        .map(|l| {
            l.split_once("\"dropped\":")
                .and_then(|(_, rest)| {
                    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                    digits.parse().ok()
                })
                .unwrap_or(1)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_sums_count_every_label_set_of_that_metric_only() {
        let page = "# HELP toronto_redeliveries Messages delivered again\n\
                    toronto_redeliveries_total{consumer=\"a\"} 3\n\
                    toronto_redeliveries_total{consumer=\"b\"} 4\n\
                    toronto_redeliveries_total_other 100\n\
                    toronto_dead_letters_total 2\n";
        assert_eq!(super::metric_sum(page, "toronto_redeliveries_total"), 7.0);
        assert_eq!(super::metric_sum(page, "toronto_dead_letters_total"), 2.0);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(super::rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
