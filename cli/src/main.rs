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

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use toronto_cli::ops::{DlqAction, connect, dlq, ping, request, status};
use toronto_cli::out::Output;
use toronto_runtime::Config;

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
        /// For listings (plans, incidents): follow this many pages (at most 1000).
        #[arg(long, default_value_t = 1)]
        pages: u32,
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
    /// Canary analysis: replay past rollouts under new rules (what-if).
    Analysis {
        #[command(subcommand)]
        action: toronto_cli::analysis::AnalysisAction,
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
            // Every service runs in this process: its spans are exported as `toronto`.
            toronto_runtime::telemetry::start_export("toronto");
            let options = toronto_cli::up::UpOptions {
                nats_port,
                data_dir,
                http_port_base,
                start_nats: std::env::var_os("TORONTO_NATS_URL").is_none(),
                demo,
                secure,
            };
            let shutdown = toronto_runtime::shutdown::on_signal();
            let ended = toronto_cli::up::run(config, options, shutdown).await;
            toronto_runtime::telemetry::shutdown().await;
            ended
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
            pages,
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
                    pages,
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
        Command::Analysis { action } => {
            let config = Config::from_env()?;
            let client = connect(&config).await?;
            toronto_cli::analysis::run(&client, &config.subjects(), &action, output).await
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
