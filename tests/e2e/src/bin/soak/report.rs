//! The soak's memory figures: the RSS of every service process and of the
//! nats-server, sampled at marks (start, end of the load, settled) and every period
//! between them, printed as they are taken and as a table at the end with the growth
//! and the trend after the warm-up; and the services' counters.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::stack::{Stack, metric_sum, metrics_page, rss_kib, slow_consumer_drops};

/// A moment the table reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The stack up and idle, before the load.
    Start,
    /// The first sample at or after the warm-up.
    Warm,
    /// The load just ended.
    EndOfLoad,
    /// The last plans finished (or the wait for them ended).
    Settled,
}

#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the start mark.
    at: f64,
    /// KiB per process (the services, then the nats-server); `None`: not running.
    rss: Vec<Option<u64>>,
    /// The monitor's in-memory store: series, samples.
    store: (f64, f64),
}

/// Takes and keeps the samples.
pub struct Sampler {
    names: Vec<&'static str>,
    pids: Vec<Option<u32>>,
    monitor: Option<std::net::SocketAddr>,
    http: reqwest::Client,
    started: Instant,
    samples: Vec<Sample>,
    marks: Vec<(Mark, usize)>,
}

/// A sampler taking a sample every period, in a task of its own.
pub struct Sampling {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Sampler>,
}

impl Sampling {
    /// Stops the sampling; the sampler with what it took.
    pub async fn stop(self) -> Sampler {
        self.stop.cancel();
        self.task.await.expect("the sampler does not panic")
    }
}

const MIB: f64 = 1024.0;

impl Sampler {
    /// A sampler of `stack`'s processes; the clock starts at [`Mark::Start`].
    pub fn new(stack: &Stack) -> Self {
        let mut names: Vec<&'static str> = stack.procs.iter().map(|p| p.name).collect();
        let mut pids: Vec<Option<u32>> = stack.procs.iter().map(|p| Some(p.pid)).collect();
        names.push("nats-server");
        pids.push(stack.nats_pid);
        Self {
            names,
            pids,
            monitor: stack
                .procs
                .iter()
                .find(|p| p.name == "monitor")
                .map(|p| p.http),
            http: reqwest::Client::new(),
            started: Instant::now(),
            samples: Vec::new(),
            marks: Vec::new(),
        }
    }

    async fn sample(&mut self) -> &Sample {
        let rss = self.pids.iter().map(|p| p.and_then(rss_kib)).collect();
        let mut store = (0.0, 0.0);
        if let Some(addr) = self.monitor {
            let url = format!("http://{addr}/metrics");
            if let Ok(r) = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                let page = r.text().await.unwrap_or_default();
                store = (
                    metric_sum(&page, "toronto_monitor_store_series"),
                    metric_sum(&page, "toronto_monitor_store_samples"),
                );
            }
        }
        self.samples.push(Sample {
            at: self.started.elapsed().as_secs_f64(),
            rss,
            store,
        });
        self.samples.last().expect("just pushed")
    }

    fn line(&self, label: &str, s: &Sample) -> String {
        let each: Vec<String> = self
            .names
            .iter()
            .zip(&s.rss)
            .map(|(n, r)| format!("{n} {}", mib(*r)))
            .collect();
        format!(
            "  {label}: RSS MiB {}; monitor store {:.0} series / {:.0} samples",
            each.join(", "),
            s.store.0,
            s.store.1
        )
    }

    /// Takes a sample for `mark` and prints it.
    pub async fn mark(&mut self, mark: Mark) {
        if mark == Mark::Start {
            self.started = Instant::now();
        }
        let s = self.sample().await.clone();
        self.marks.push((mark, self.samples.len() - 1));
        let label = match mark {
            Mark::Start => "start (idle, before the load)".to_owned(),
            Mark::Warm => format!("warm ({:.0} s)", s.at),
            Mark::EndOfLoad => format!("end of the load ({:.0} s)", s.at),
            Mark::Settled => format!("settled ({:.0} s)", s.at),
        };
        println!("{}", self.line(&label, &s));
    }

    /// Samples every `period` (on multiples of it since the start mark) until
    /// stopped; the first at or after `warmup` is the warm mark.
    pub fn every(mut self, period: Duration, warmup: Duration) -> Sampling {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = (self.started.elapsed().as_secs_f64() / period.as_secs_f64()).floor()
                    as u32
                    + 1;
                let at = self.started + period * next;
                tokio::select! {
                    _ = token.cancelled() => return self,
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
                let s = self.sample().await.clone();
                let warm = !self.marks.iter().any(|(m, _)| *m == Mark::Warm)
                    && s.at >= warmup.as_secs_f64() - 1.0;
                if warm {
                    self.marks.push((Mark::Warm, self.samples.len() - 1));
                }
                println!("{}", self.line(&format!("at {:.0} s", s.at), &s));
            }
        });
        Sampling { stop, task }
    }

    fn at(&self, mark: Mark) -> Option<&Sample> {
        self.marks
            .iter()
            .find(|(m, _)| *m == mark)
            .map(|(_, i)| &self.samples[*i])
    }

    /// Prints the table: RSS per process at each mark, growth, and the trend (least
    /// squares slope) of the samples from the warm-up to the end of the load.
    pub fn print(&self, warmup: Duration) {
        let (start, warm, end, settled) = (
            self.at(Mark::Start),
            self.at(Mark::Warm),
            self.at(Mark::EndOfLoad),
            self.at(Mark::Settled),
        );
        let end_at = end.map_or(f64::INFINITY, |s| s.at);
        println!(
            "RSS per process, MiB (start: idle before the load; warm: after {:.0} s of load; end: end of the load at {:.0} s; settled: last plans finished at {:.0} s)",
            warmup.as_secs_f64(),
            end.map_or(f64::NAN, |s| s.at),
            settled.map_or(f64::NAN, |s| s.at),
        );
        println!(
            "  {:<20} {:>7} {:>7} {:>7} {:>8} {:>10} {:>9} {:>22}",
            "process", "start", "warm", "end", "settled", "start→end", "warm→end", "trend warm→end"
        );
        let services = self.names.len() - 1;
        let rows = (0..self.names.len()).map(|i| (self.names[i], vec![i]));
        let total = std::iter::once(("all services", (0..services).collect::<Vec<_>>()));
        for (name, columns) in rows.chain(total) {
            let kib = |s: Option<&Sample>| -> Option<u64> {
                let s = s?;
                columns.iter().map(|c| s.rss[*c]).sum()
            };
            let trend: Vec<(f64, f64)> = self
                .samples
                .iter()
                .filter(|s| s.at >= warmup.as_secs_f64() - 1.0 && s.at <= end_at + 1.0)
                .filter_map(|s| kib(Some(s)).map(|k| (s.at / 60.0, k as f64 / MIB)))
                .collect();
            println!(
                "  {:<20} {:>7} {:>7} {:>7} {:>8} {:>10} {:>9} {:>22}",
                name,
                mib(kib(start)),
                mib(kib(warm)),
                mib(kib(end)),
                mib(kib(settled)),
                growth(kib(start), kib(end)),
                growth(kib(warm), kib(end)),
                slope(&trend).map_or("n/a".to_owned(), |m| format!("{m:+.2} MiB/min")),
            );
        }
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / MIB))
}

fn growth(from: Option<u64>, to: Option<u64>) -> String {
    match (from, to) {
        (Some(a), Some(b)) if a > 0 => format!("{:+.1}%", (b as f64 - a as f64) * 100.0 / a as f64),
        _ => "n/a".to_owned(),
    }
}

/// The least squares slope of `points` (x, y); `None` with fewer than three.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den > 0.0).then(|| num / den)
}

/// Prints, per service, the redeliveries, request errors and dead letters its
/// `/metrics` counted, and the messages its subscriptions dropped (slow consumers).
pub async fn counters(stack: &Stack) {
    let http = reqwest::Client::new();
    println!(
        "  {:<20} {:>12} {:>14} {:>12} {:>20}",
        "service", "redeliveries", "request errors", "dead letters", "slow-consumer drops"
    );
    let mut totals = [0.0f64; 4];
    for proc in &stack.procs {
        let page = metrics_page(&http, proc).await;
        let row = [
            metric_sum(&page, "toronto_redeliveries_total"),
            metric_sum(&page, "toronto_request_errors_total"),
            metric_sum(&page, "toronto_dead_letters_total"),
            slow_consumer_drops(&proc.log) as f64,
        ];
        for (t, v) in totals.iter_mut().zip(row) {
            *t += v;
        }
        println!(
            "  {:<20} {:>12.0} {:>14.0} {:>12.0} {:>20.0}",
            proc.name, row[0], row[1], row[2], row[3]
        );
    }
    println!(
        "  {:<20} {:>12.0} {:>14.0} {:>12.0} {:>20.0}",
        "all", totals[0], totals[1], totals[2], totals[3]
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_trend_is_the_least_squares_slope() {
        let flat = [(1.0, 100.0), (2.0, 100.0), (3.0, 100.0)];
        assert_eq!(super::slope(&flat), Some(0.0));
        let rising = [(1.0, 100.0), (2.0, 102.0), (3.0, 104.0), (4.0, 106.0)];
        assert!((super::slope(&rising).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(super::slope(&flat[..2]), None);
        assert_eq!(super::growth(Some(100), Some(110)), "+10.0%");
    }
}
