//! `toronto`: the DevOps agent from a terminal.
#![forbid(unsafe_code)]

/// mimalloc: the services allocate per message; it measured ~20% more requests/s than
/// glibc malloc in `cargo bench -p toronto-runtime --bench request_reply`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that exits quietly on a closed pipe instead of panicking.
macro_rules! println {
    () => { toronto_cli::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { toronto_cli::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that exits quietly on a closed pipe instead of panicking.
macro_rules! print {
    ($($arg:tt)*) => { toronto_cli::out::write(format_args!($($arg)*)) };
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use futures::StreamExt;
use toronto_cli::out::Output;
use toronto_protocol::status::{Status, StatusRequest};
use toronto_protocol::{Encoding, Envelope, ServiceKind};
use toronto_runtime::Config;
use toronto_runtime::rpc::call;

#[derive(Parser)]
#[command(name = "toronto", version, about = "The Toronto DevOps agent")]
struct Cli {
    /// How every command prints its result: text and tables, or the same document as
    /// JSON or YAML.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// `--version`: the crate version, the commit (`TORONTO_BUILD_GIT_SHA`, or the git
/// HEAD at build time: `build.rs`), the profile and the target.
fn long_version() -> &'static str {
    let build = toronto_protocol::status::BuildInfo::current(env!("CARGO_PKG_VERSION"));
    let commit = option_env!("TORONTO_BUILD_GIT_SHA").unwrap_or("unknown");
    Box::leak(
        format!(
            "{} (commit {commit}, {}, {})",
            build.version, build.profile, build.target
        )
        .into_boxed_str(),
    )
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack in one process: a local nats-server (unless
    /// TORONTO_NATS_URL is set) and every service, until SIGTERM or ctrl-c.
    Up {
        /// Port of the local nats-server.
        #[arg(long, env = "TORONTO_UP_NATS_PORT", default_value_t = 4222)]
        nats_port: u16,
        /// Where the local nats-server keeps its JetStream data.
        #[arg(long, env = "TORONTO_UP_DATA_DIR", default_value = ".toronto")]
        data_dir: PathBuf,
        /// HTTP ports of the services are BASE+1 (planner) .. BASE+5 (chat bridge); 0 picks free ports.
        #[arg(long, env = "TORONTO_UP_HTTP_PORT_BASE", default_value_t = 9100)]
        http_port_base: u16,
        /// Add the demo: demo security and QA agents that pass every gate, and the service
        /// `shop` 1.0.0 in staging and production on the simulated cluster, with SLOs.
        #[arg(long)]
        demo: bool,
        /// Run the local nats-server with one least-privilege user per service
        /// (deploy/nats/permissions.conf, passwords generated for this run; the admin's
        /// are written to DATA_DIR/admin.env for the CLI).
        #[arg(long)]
        secure: bool,
    },
    /// As the NATS admin, create or update every JetStream stream and KV bucket the
    /// services use (their least-privilege users may only use them). `toronto up`
    /// runs it first.
    Bootstrap,
    /// Ask every service (or one) for its status.
    Status {
        /// planner, deployer, monitor, incident or chat; all when omitted.
        service: Option<String>,
        /// The same as `--output json`.
        #[arg(long, hide = true)]
        json: bool,
    },
    /// List running service instances through the NATS service API ($SRV.PING).
    Ping {
        /// How long to collect answers, in milliseconds.
        #[arg(long, default_value_t = 500)]
        wait_ms: u64,
    },
    /// Send any request: an envelope of TYPE with DATA (JSON) to SUBJECT; prints the reply.
    Request {
        /// The subject, e.g. toronto.devops.v1.planner.status.
        subject: String,
        /// The CloudEvents type, e.g. ai.toronto.devops.status.request.v1.
        #[arg(long = "type")]
        ty: String,
        /// The data, as JSON.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Send MessagePack instead of JSON.
        #[arg(long)]
        msgpack: bool,
    },
    /// Run a chat command from the terminal, with the same grammar as `/devops` in chat
    /// (`toronto run help` lists them), e.g. `toronto run deploy shop 1.2.0 to staging
    /// --strategy canary`. The reply is printed as text (`--output table`, default) or as
    /// the reply envelope (`--output json|yaml`, which may also follow the command); an
    /// error or a malformed command exits 1.
    Run {
        /// Who you are on decisions and incident work (default: $USER).
        #[arg(long = "as", env = "USER", default_value = "cli")]
        user: String,
        /// The role sent with approvals and rejections (the planner checks it).
        #[arg(long, default_value = "operator")]
        role: String,
        /// For deploy and rollback: follow the plan (gates, rollout weight and step)
        /// until it ends; exit 1 when it fails.
        #[arg(long)]
        follow: bool,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        words: Vec<String>,
    },
    /// Print events as they happen (`<prefix>.devops.v1.events.>`) until ctrl-c.
    Watch {
        /// Only events about this service.
        #[arg(long)]
        service: Option<String>,
        /// Only events about this environment.
        #[arg(long)]
        environment: Option<String>,
        /// Only events of this flow (correlation id).
        #[arg(long)]
        correlation: Option<String>,
    },
    /// Dead letters: messages the services refused, with the reason.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Service level objectives.
    Slo {
        #[command(subcommand)]
        action: SloAction,
    },
    /// JSON Schemas of the contract.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// Your signing key and the identity registry (docs/trust-model.md).
    Identity {
        #[command(subcommand)]
        action: toronto_cli::identity::IdentityAction,
    },
    /// Print the completion script of SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `toronto completions bash > /etc/bash_completion.d/toronto`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Stories played against a running `toronto up --demo` (a demo).
    Demo {
        #[command(subcommand)]
        story: toronto_cli::demo::DemoCommand,
    },
    /// List authorization decisions (`audit.decision` events), filtered, one page.
    Audit(toronto_cli::audit::AuditArgs),
    /// Print every TORONTO_* variable and what it does.
    Config {
        /// Print the Markdown reference (docs/configuration.md) instead.
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print each letter's payload too.
        #[arg(long)]
        payload: bool,
    },
    /// Send a dead letter back where it was first sent, then remove it from the DLQ.
    Replay {
        /// Its sequence, as `toronto dlq list` shows it.
        sequence: u64,
        /// Keep it in the DLQ after replaying.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand)]
enum SloAction {
    /// Print the Prometheus recording and alerting rules of an OpenSLO file.
    Rules {
        /// The SLO file (OpenSLO v1 YAML).
        file: PathBuf,
    },
    /// Check an OpenSLO file; prints the field and the reason when it is malformed.
    Check {
        /// The SLO file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum SchemasAction {
    /// Write every schema under DIR (default `schemas`).
    Write {
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
    /// Fail when the files under DIR differ from the types.
    Check {
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    toronto_runtime::tls::install_crypto_provider();
    let matches = Cli::command().version(long_version()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output;
    if !matches!(cli.command, Command::Up { .. }) {
        toronto_cli::identity::install_operator_key();
    }
    match cli.command {
        Command::Up {
            nats_port,
            data_dir,
            http_port_base,
            demo,
            secure,
        } => {
            if output != Output::Table {
                bail!("`toronto up` runs the stack and prints logs: --output does not apply");
            }
            let config = Config::from_env()?;
            toronto_runtime::telemetry::init(&config.log);
            let options = toronto_cli::up::UpOptions {
                nats_port,
                data_dir,
                http_port_base,
                start_nats: std::env::var_os("TORONTO_NATS_URL").is_none(),
                demo,
                secure,
            };
            let shutdown = toronto_runtime::shutdown::on_signal();
            toronto_cli::up::run(config, options, shutdown).await
        }
        Command::Status { service, json } => {
            status(service, if json { Output::Json } else { output }).await
        }
        Command::Ping { wait_ms } => ping(wait_ms, output).await,
        Command::Request {
            subject,
            ty,
            data,
            msgpack,
        } => request(subject, ty, data, msgpack, output).await,
        Command::Run {
            user,
            role,
            follow,
            mut words,
        } => {
            let output = toronto_cli::commands::take_output(&mut words)?.unwrap_or(output);
            let role: toronto_commands::Role = role.parse().map_err(anyhow::Error::msg)?;
            let command = toronto_cli::commands::parse(&words)?;
            if let Some(text) = toronto_cli::commands::local_answer(&command) {
                println!(
                    "{}",
                    output.render(&serde_json::json!({ "help": text }), false, || text.clone())
                );
                return Ok(());
            }
            let config = Config::from_env()?;
            let client = connect(&config).await?;
            let actor = toronto_commands::Actor {
                source: format!("toronto://cli/{user}"),
                id: user,
                role,
            };
            let text = toronto_cli::commands::run_following(
                &client,
                &config.subjects(),
                &command,
                &actor,
                output,
                toronto_cli::commands::How {
                    timeout: config.nats.request_timeout(),
                    follow,
                    signer: toronto_runtime::auth::process_signer().as_ref(),
                },
            )
            .await?;
            if !text.is_empty() {
                println!("{text}");
            }
            Ok(())
        }
        Command::Watch {
            service,
            environment,
            correlation,
        } => {
            let config = Config::from_env()?;
            let client = connect(&config).await?;
            let filter = toronto_cli::commands::WatchFilter {
                service,
                environment,
                correlation,
            };
            let stop = toronto_runtime::shutdown::on_signal();
            toronto_cli::commands::watch(&client, &config.subjects(), &filter, output, stop).await
        }
        Command::Dlq { action } => dlq(action, output).await,
        Command::Slo { action } => {
            let (file, rules) = match &action {
                SloAction::Rules { file } => (file, true),
                SloAction::Check { file } => (file, false),
            };
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let slo = toronto_monitor::slo::parse(&text)
                .with_context(|| format!("{} is not a valid SLO", file.display()))?;
            if rules {
                let text = toronto_monitor::slo::prometheus_rules(&slo);
                let doc: serde_json::Value = serde_yaml_ng::from_str(&text)?;
                println!(
                    "{}",
                    output.render(&doc, false, || text.trim_end().to_owned())
                );
            } else {
                let doc = serde_json::json!({
                    "file": file,
                    "name": slo.name,
                    "service": slo.service,
                    "objective": slo.objective,
                    "window_days": slo.window_days,
                });
                println!(
                    "{}",
                    output.render(&doc, false, || format!(
                        "{}: SLO {} of {}, objective {} over {} days",
                        file.display(),
                        slo.name,
                        slo.service,
                        slo.objective,
                        slo.window_days
                    ))
                );
            }
            Ok(())
        }
        Command::Bootstrap => {
            let config = Config::from_env()?;
            let client = connect(&config).await?;
            let done = toronto_cli::bootstrap::bootstrap_with_auth(
                &client,
                &config.subjects(),
                &config.jetstream,
                &config.auth,
            )
            .await?;
            println!(
                "streams: {}\nKV buckets: {}",
                done.streams.join(", "),
                done.buckets.join(", ")
            );
            Ok(())
        }
        Command::Schemas { action } => match action {
            SchemasAction::Write { dir } => {
                let written: Vec<PathBuf> = toronto_protocol::catalogue::write_all(&dir)?
                    .into_iter()
                    .map(|path| dir.join(path))
                    .collect();
                let doc = serde_json::json!({ "written": written });
                println!(
                    "{}",
                    output.render(&doc, false, || written
                        .iter()
                        .map(|p| format!("wrote {}", p.display()))
                        .collect::<Vec<_>>()
                        .join("\n"))
                );
                Ok(())
            }
            SchemasAction::Check { dir } => {
                let problems = toronto_protocol::catalogue::drift(&dir)?;
                if problems.is_empty() {
                    let doc = serde_json::json!({ "dir": dir, "drifted": problems });
                    println!(
                        "{}",
                        output.render(&doc, false, || format!(
                            "schemas in {} match the types",
                            dir.display()
                        ))
                    );
                    Ok(())
                } else {
                    bail!(
                        "schemas drifted (run `toronto schemas write`):\n{}",
                        problems.join("\n")
                    )
                }
            }
        },
        Command::Identity { action } => {
            toronto_cli::identity::run(action, &Config::from_env()?).await
        }
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "toronto", &mut text);
            let text = String::from_utf8(text)?;
            let doc = serde_json::json!({ "shell": shell.to_string(), "script": text });
            print!("{}", output.render(&doc, false, || text.clone()));
            Ok(())
        }
        Command::Demo { story } => {
            let config = Config::from_env()?;
            let client = connect(&config).await?;
            match story {
                toronto_cli::demo::DemoCommand::Incident(args) => {
                    let subjects = config.subjects();
                    let timeout = config.nats.request_timeout();
                    toronto_cli::demo::incident::play(&client, &subjects, timeout, &args).await?;
                }
            }
            Ok(())
        }
        Command::Audit(args) => {
            let config = Config::from_env()?;
            let client = connect(&config).await?;
            toronto_cli::audit::run(&client, &config.subjects(), &args, output).await
        }
        Command::Config { markdown } => {
            if output != Output::Table {
                let doc: Vec<serde_json::Value> = toronto_cli::settings_docs::all()
                    .into_iter()
                    .map(|v| {
                        serde_json::json!({
                            "name": v.name,
                            "description": v.description,
                            "default": (!v.default.is_empty()).then_some(v.default),
                            "replaced_by": v.replaced_by,
                        })
                    })
                    .collect();
                println!("{}", output.render(&doc.into(), false, String::new));
                return Ok(());
            }
            if markdown {
                print!("{}", toronto_cli::settings_docs::markdown());
            } else {
                print!("{}", toronto_cli::settings_docs::text());
            }
            Ok(())
        }
    }
}

async fn connect(config: &Config) -> anyhow::Result<async_nats::Client> {
    let opts = toronto_runtime::connect::options(&config.nats, "toronto-cli").await?;
    let urls = config.nats.urls.join(",");
    tokio::time::timeout(Duration::from_secs(5), async {
        let client = opts
            .connect(toronto_runtime::connect::server_addrs(&config.nats)?)
            .await?;
        while client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(client)
    })
    .await
    .with_context(|| format!("cannot reach NATS at {urls} within 5 s"))?
}

async fn status(service: Option<String>, output: Output) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let client = connect(&config).await?;
    let kinds: Vec<ServiceKind> = match service {
        Some(s) => vec![s.parse().map_err(anyhow::Error::msg)?],
        None => ServiceKind::ALL.to_vec(),
    };
    let mut failed = 0;
    for kind in kinds {
        let envelope = Envelope::builder("toronto://cli", StatusRequest::default()).build();
        let subject = config.subjects().status(kind);
        match call::<_, Status>(
            &client,
            &subject,
            &envelope,
            Encoding::Json,
            Duration::from_secs(3),
        )
        .await
        {
            Ok(reply) if output != Output::Table => println!(
                "{}",
                output.render(&serde_json::to_value(&reply)?, true, String::new)
            ),
            Ok(reply) => {
                let s = reply.data;
                println!(
                    "{:<28} up {:>8.1}s  version {}  nats {}  auth {}  instance {}",
                    s.service,
                    s.uptime_seconds,
                    s.version,
                    if s.nats_connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    match s.auth.as_deref() {
                        Some("off") => "OFF (anyone may ask for changes)",
                        Some(mode) => mode,
                        None => "unknown",
                    },
                    s.instance_id
                );
            }
            Err(e) => {
                failed += 1;
                println!("{:<28} {e}", kind.service_name());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} service(s) did not answer");
    }
    Ok(())
}

async fn dlq(action: DlqAction, output: Output) -> anyhow::Result<()> {
    use toronto_runtime::jetstream::{list_dead_letters, replay_dead_letter};
    let config = Config::from_env()?;
    let client = connect(&config).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = config.subjects();
    match action {
        DlqAction::List { limit, payload } => {
            let letters = list_dead_letters(&js, &subjects, limit).await?;
            if output != Output::Table {
                let doc: Vec<serde_json::Value> = letters
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "sequence": l.sequence,
                            "time": l.time,
                            "subject": l.subject,
                            "origin": l.origin,
                            "original_subject": l.original_subject,
                            "deliveries": l.deliveries,
                            "reason": l.reason,
                            "payload": payload.then(|| String::from_utf8_lossy(&l.payload)),
                        })
                    })
                    .collect();
                println!("{}", output.render(&doc.into(), false, String::new));
                return Ok(());
            }
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in letters {
                println!(
                    "{:>6}  {}  {}  from {} (sent to {}{}): {}",
                    l.sequence,
                    l.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    l.subject,
                    l.origin,
                    l.original_subject,
                    l.deliveries
                        .map(|d| format!(", {d} deliveries"))
                        .unwrap_or_default(),
                    l.reason
                );
                if payload {
                    println!("        {}", String::from_utf8_lossy(&l.payload));
                }
            }
            Ok(())
        }
        DlqAction::Replay { sequence, keep } => {
            let target = replay_dead_letter(&js, &subjects, sequence, keep).await?;
            let doc =
                serde_json::json!({ "replayed": sequence, "to": target.to_string(), "kept": keep });
            println!(
                "{}",
                output.render(&doc, false, || format!(
                    "replayed dead letter {sequence} to {target}{}",
                    if keep { " (kept in the DLQ)" } else { "" }
                ))
            );
            Ok(())
        }
    }
}

async fn ping(wait_ms: u64, output: Output) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let client = connect(&config).await?;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await?;
    let deadline = tokio::time::sleep(Duration::from_millis(wait_ms));
    tokio::pin!(deadline);
    let mut found = 0;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(m) = replies.next() => {
                let v: serde_json::Value = toronto_protocol::codec::from_json_bounded(&m.payload)?;
                println!("{}", output.render(&v, true, || format!("{:<28} {:<10} {}", v["name"].as_str().unwrap_or("?"), v["version"].as_str().unwrap_or("?"), v["id"].as_str().unwrap_or("?"))));
                found += 1;
            }
        }
    }
    if found == 0 {
        bail!("no service answered $SRV.PING");
    }
    Ok(())
}

async fn request(
    subject: String,
    ty: String,
    data: String,
    msgpack: bool,
    output: Output,
) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let client = connect(&config).await?;
    let data: serde_json::Value = serde_json::from_str(&data).context("--data is not JSON")?;
    let id = uuid_v7();
    let envelope = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "toronto://cli",
        "type": ty,
        "time": chrono_now(),
        "correlationid": id,
        "data": data,
    });
    let encoding = if msgpack {
        Encoding::MessagePack
    } else {
        Encoding::Json
    };
    let raw: toronto_protocol::RawEnvelope = serde_json::from_value(envelope)?;
    let bytes = toronto_protocol::encode(&raw, encoding)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", encoding.content_type());
    if let Some(signer) = toronto_runtime::auth::process_signer() {
        signer.apply(&mut headers, &subject, &bytes);
    }
    let reply = tokio::time::timeout(
        config.nats.request_timeout(),
        client.request_with_headers(subject.clone(), headers, bytes.into()),
    )
    .await
    .with_context(|| format!("{subject} did not answer"))??;
    let reply_encoding = Encoding::from_content_type(
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str()),
    )?;
    let envelope = toronto_protocol::decode_raw(&reply.payload, reply_encoding)?;
    // The reply envelope is the document: `table` prints it as pretty JSON too.
    let doc = serde_json::to_value(&envelope)?;
    println!(
        "{}",
        output.render(&doc, false, || serde_json::to_string_pretty(&doc)
            .unwrap_or_default())
    );
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        bail!("the service answered with error {}", code.as_str());
    }
    Ok(())
}

fn uuid_v7() -> String {
    toronto_protocol::envelope::new_id().to_string()
}

fn chrono_now() -> String {
    toronto_protocol::envelope::now_rfc3339()
}
