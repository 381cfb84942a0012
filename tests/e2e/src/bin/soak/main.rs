//! The soak (not a product binary; `scripts/soak` builds and runs it): a steady load
//! of `alert.firing` events and deploy tasks for a bounded time, with the figures a
//! leak or a slowdown would show.
//!
//! By default it starts the stack itself, as `toronto up --demo` does but with every
//! service in its own process (`--bin-dir`, where `toronto-planner` and the others
//! are built), and prints the resident memory (RSS) of each service and of the
//! nats-server at the start, every `--sample-seconds` through the run, after the
//! warm-up, at the end of the load and once the last plans finished, with the growth
//! and the trend after the warm-up (to tell a plateau from a leak); then per service
//! the redeliveries, request errors, dead letters and slow-consumer drops.
//!
//! With `--url` it only drives a stack that is already running (`toronto up`,
//! signing with `--identity`) and prints the load's figures.
//!
//! `soak [--bin-dir target/debug] [--nats-server PATH] [--minutes 10]
//! [--events-per-second 1000] [--tasks-per-minute 100] [--services 20]
//! [--warmup-seconds 60] [--sample-seconds 60]`, or
//! `soak --url nats://127.0.0.1:4222 --identity <seed file> [--minutes 10] ...`
#![forbid(unsafe_code)]

mod load;
mod report;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use toronto_runtime::auth::Signer;
use toronto_testkit::Requester;

struct Args {
    url: Option<String>,
    identity: PathBuf,
    bin_dir: PathBuf,
    nats_server: Option<PathBuf>,
    warmup: Duration,
    sample_every: Duration,
    load: load::Load,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: None,
        identity: PathBuf::new(),
        bin_dir: PathBuf::from("target/debug"),
        nats_server: None,
        warmup: Duration::from_secs(60),
        sample_every: Duration::from_secs(60),
        load: load::Load {
            duration: Duration::from_secs(600),
            events_per_second: 1000,
            tasks_per_minute: 100,
            services: 20,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = Some(value),
            "--identity" => a.identity = value.into(),
            "--bin-dir" => a.bin_dir = value.into(),
            "--nats-server" => a.nats_server = Some(value.into()),
            "--minutes" => a.load.duration = Duration::from_secs_f64(value.parse::<f64>()? * 60.0),
            "--events-per-second" => a.load.events_per_second = value.parse()?,
            "--tasks-per-minute" => a.load.tasks_per_minute = value.parse()?,
            "--services" => a.load.services = value.parse()?,
            "--warmup-seconds" => a.warmup = Duration::from_secs(value.parse()?),
            "--sample-seconds" => {
                a.sample_every = Duration::from_secs(value.parse::<u64>()?.max(1))
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// How long the last plans may take once the load ends.
const SETTLE: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    toronto_runtime::tls::install_crypto_provider();
    let args = args()?;
    match &args.url {
        Some(url) => drive_only(url, &args).await,
        None => per_service(&args).await,
    }
}

/// The load against a running stack.
async fn drive_only(url: &str, args: &Args) -> anyhow::Result<std::process::ExitCode> {
    let signer = Signer::from_file(&args.identity)?;
    let client = async_nats::connect(url).await?;
    let planner = Requester::service(client.clone(), "planner")
        .signed_by(signer)
        .with_timeout(Duration::from_secs(10));
    let driven = load::drive(&client, &planner, &args.load).await;
    load::settle(&client, &planner, driven, SETTLE).await;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The stack started here, one process per service, measured per service.
async fn per_service(args: &Args) -> anyhow::Result<std::process::ExitCode> {
    let nats_bin = match &args.nats_server {
        Some(p) => p.clone(),
        None => toronto_cli::nats_server::find_binary()?,
    };
    let work = tempdir()?;
    println!(
        "soak: {:.0} min, {} events/s, {} tasks/min; every service its own process ({}); logs in {}",
        args.load.duration.as_secs_f64() / 60.0,
        args.load.events_per_second,
        args.load.tasks_per_minute,
        args.bin_dir.display(),
        work.display()
    );
    let mut stack = stack::Stack::start(&nats_bin, &args.bin_dir, &work).await?;
    let code = match measure(&mut stack, args).await {
        Ok(healthy) if healthy => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    stack.stop().await;
    Ok(code)
}

/// Runs the load on `stack` with the memory sampled; whether every service lived
/// through it.
async fn measure(stack: &mut stack::Stack, args: &Args) -> anyhow::Result<bool> {
    let client = async_nats::connect(&stack.url).await?;
    let planner = Requester::service(client.clone(), "planner")
        .signed_by(stack.identities.operator.clone())
        .with_timeout(Duration::from_secs(10));
    // Idle a moment once everything is up: the start figure is a quiet stack's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut sampler = report::Sampler::new(stack);
    sampler.mark(report::Mark::Start).await;
    let sampling = sampler.every(args.sample_every, args.warmup);
    let driven = load::drive(&client, &planner, &args.load).await;
    let load_errors = driven.errors();
    let mut sampler = sampling.stop().await;
    sampler.mark(report::Mark::EndOfLoad).await;
    let sampling = sampler.every(args.sample_every, args.warmup);
    let settled = load::settle(&client, &planner, driven, SETTLE).await;
    let mut sampler = sampling.stop().await;
    sampler.mark(report::Mark::Settled).await;
    sampler.print(args.warmup);
    report::counters(stack).await;
    let exited = stack.exited();
    if !exited.is_empty() {
        eprintln!("services that died during the soak: {}", exited.join(", "));
    }
    println!(
        "errors: {load_errors} (submits refused or timed out, events not published); plans not completed: {}",
        settled.not_completed
    );
    Ok(exited.is_empty())
}

/// A fresh directory under the system's temporary directory, kept after the run (the
/// services' logs are there).
fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("toronto-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
