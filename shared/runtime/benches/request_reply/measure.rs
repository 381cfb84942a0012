//! Timing the paths: sequential and concurrent rows, interleaved rounds, and the CPU
//! time of this process and of the nats-server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;

use crate::{Load, Path, one_request, percentile, scale};

/// One measured stretch: sequential latency or concurrent throughput.
#[derive(Clone, Copy)]
pub(crate) enum Row {
    Sequential,
    Ways(usize),
}

/// What one stretch of one path measured.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sample {
    /// p50 in µs (sequential) or requests per second (concurrent).
    pub(crate) value: f64,
    /// p99 in µs (sequential only).
    pub(crate) p99: f64,
    /// CPU time of this process per request, µs.
    pub(crate) cpu_us: f64,
    /// CPU time of the nats-server per request, µs (0 when it cannot be read).
    pub(crate) server_cpu_us: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU ticks of process `pid` (`self` for this one).
pub(crate) fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `)`.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The nats-server this process started (the test kit's child), to read its CPU.
pub(crate) fn nats_server_pid() -> Option<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let comm = &stat[stat.find('(')? + 1..stat.rfind(')')?];
            let ppid = stat[stat.rfind(')')? + 2..].split(' ').nth(1)?;
            (comm == "nats-server" && ppid == me).then_some(pid)
        })
}

pub(crate) async fn sequential(client: &Client, path: Path, n: usize, load: &Load) -> (f64, f64) {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        one_request(client, path, load).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
    )
}

pub(crate) async fn concurrent(
    client: &Client,
    path: Path,
    workers: usize,
    total: usize,
    load: &Arc<Load>,
) -> (f64, usize) {
    let per_worker = total / workers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let client = client.clone();
            let load = load.clone();
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    one_request(&client, path, &load).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let done = per_worker * workers;
    (done as f64 / start.elapsed().as_secs_f64(), done)
}

/// Measures one stretch of `path`, with the CPU this process and the server spent on it.
pub(crate) async fn measure(
    client: &Client,
    path: Path,
    row: Row,
    (n, total): (usize, usize),
    load: &Arc<Load>,
    server: Option<&str>,
) -> Sample {
    for _ in 0..scale(100) {
        one_request(client, path, load).await;
    }
    let cpu = || cpu_ticks("self").unwrap_or(0);
    let server_cpu = || server.and_then(cpu_ticks).unwrap_or(0);
    let (cpu0, server0) = (cpu(), server_cpu());
    let (value, p99, count) = match row {
        Row::Sequential => {
            let (p50, p99) = sequential(client, path, n, load).await;
            (p50, p99, n)
        }
        Row::Ways(workers) => {
            let (rate, done) = concurrent(client, path, workers, total, load).await;
            (rate, 0.0, done)
        }
    };
    let per_request = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / count as f64;
    Sample {
        value,
        p99,
        cpu_us: per_request(cpu() - cpu0),
        server_cpu_us: per_request(server_cpu() - server0),
    }
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Every round measures each row of each path once, the paths in turn (each round
/// starting with the next path), so that load from elsewhere falls on all of them.
/// Returns `[row][path][round]`.
pub(crate) async fn interleaved(
    client: &Client,
    paths: &[Path],
    rows: &[Row],
    sizes: (usize, usize),
    rounds: usize,
    load: &Arc<Load>,
    server: Option<&str>,
) -> Vec<Vec<Vec<Sample>>> {
    let mut results = vec![vec![Vec::with_capacity(rounds); paths.len()]; rows.len()];
    for round in 0..rounds {
        for (r, row) in rows.iter().enumerate() {
            for k in 0..paths.len() {
                let p = (k + round) % paths.len();
                let sample = measure(client, paths[p], *row, sizes, load, server).await;
                results[r][p].push(sample);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    results
}
