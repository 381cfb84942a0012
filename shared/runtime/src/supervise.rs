//! Supervised background loops: a loop is a named factory of futures. When a run
//! ends (an error, a panic, or an end nobody asked for, such as a consumer whose
//! stream vanished with the server) the factory is called again after a backoff.
//! `/readyz` is 503 naming the required loops that are down, and the service's
//! `status` reply lists every loop with its state and restarts.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toronto_protocol::status::{LoopState, LoopStatus};

use crate::metrics::Metrics;

/// A run that lasted this long counts as healthy: the next failure starts the
/// backoff from the beginning again.
pub const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Longest wait between two runs of a failing loop.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long to wait before run number `failures + 1` of a loop that failed
/// `failures` times in a row: 200 ms doubling up to [`MAX_BACKOFF`], plus a random
/// jitter of up to as much again (backon), so that the loops of many instances do not
/// restart in step.
pub fn backoff(failures: u32) -> Duration {
    crate::connect::exponential_backoff(Duration::from_millis(100), MAX_BACKOFF, failures as usize)
}

/// How a loop is supervised: its name, whether readiness depends on it, and an
/// optional signal of its own that ends it for good.
#[derive(Debug, Clone)]
pub struct LoopSpec {
    name: String,
    required: bool,
    until: Option<CancellationToken>,
}

impl LoopSpec {
    /// A required loop named `name`, ended for good only by the service's shutdown.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            required: true,
            until: None,
        }
    }

    /// The service stays ready while this loop is down (for loops that only add
    /// something, such as a metrics refresher).
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Also ends the loop for good (no restart) once `token` is cancelled.
    pub fn until(mut self, token: CancellationToken) -> Self {
        self.until = Some(token);
        self
    }
}

#[derive(Debug, Clone)]
struct Entry {
    required: bool,
    state: LoopState,
    restarts: u64,
    last_error: Option<String>,
}

/// The loops of one service instance and their states.
#[derive(Debug, Clone)]
pub struct Loops {
    service: &'static str,
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    restarts: Family<Vec<(String, String)>, Counter>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Loops {
    /// An empty set of loops for `service`, ending at `shutdown`; registers the
    /// `toronto_background_loop_restarts` counter in `metrics`.
    pub fn new(service: &'static str, metrics: &Metrics, shutdown: CancellationToken) -> Self {
        let restarts = Family::<Vec<(String, String)>, Counter>::default();
        metrics.register(
            "background_loop_restarts",
            "Restarts of supervised background loops, by loop",
            restarts.clone(),
        );
        Self {
            service,
            entries: Arc::default(),
            restarts,
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    /// The tracker every loop runs in (shutdown waits for it).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Every loop with its state, by name.
    pub fn status(&self) -> Vec<LoopStatus> {
        let entries = self.entries.lock().expect("loops lock");
        entries
            .iter()
            .map(|(name, e)| LoopStatus {
                name: name.clone(),
                required: e.required,
                state: e.state,
                restarts: e.restarts,
                last_error: e.last_error.clone(),
            })
            .collect()
    }

    /// The names of the required loops that are down now (empty when all run).
    pub fn down(&self) -> Vec<String> {
        let entries = self.entries.lock().expect("loops lock");
        entries
            .iter()
            .filter(|(_, e)| e.required && e.state == LoopState::Restarting)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn register(&self, name: String, required: bool) -> String {
        let mut entries = self.entries.lock().expect("loops lock");
        let mut unique = name.clone();
        let mut n = 1;
        while entries.contains_key(&unique) {
            n += 1;
            unique = format!("{name} {n}");
        }
        entries.insert(
            unique.clone(),
            Entry {
                required,
                state: LoopState::Running,
                restarts: 0,
                last_error: None,
            },
        );
        // The loop's series exists (at 0) before its first restart.
        self.restarts
            .get_or_create(&vec![("loop".to_owned(), unique.clone())])
            .inc_by(0);
        unique
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.entries.lock().expect("loops lock").get_mut(name) {
            f(entry);
        }
    }

    /// Runs `factory()` beside the endpoints and runs it again, after a backoff,
    /// whenever the run ends before shutdown (or before the spec's own `until`).
    /// Each run must end once the shutdown token is cancelled.
    pub fn spawn<F, Fut, E>(&self, spec: LoopSpec, mut factory: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let name = self.register(spec.name, spec.required);
        let loops = self.clone();
        let until = spec.until.unwrap_or_default();
        self.tracker.spawn(async move {
            let service = loops.service;
            let mut failures: u32 = 0;
            loop {
                loops.update(&name, |e| e.state = LoopState::Running);
                let started = Instant::now();
                let outcome = tokio::spawn(factory()).await;
                if loops.shutdown.is_cancelled() || until.is_cancelled() {
                    loops.update(&name, |e| e.state = LoopState::Stopped);
                    return;
                }
                let why = match outcome {
                    Ok(Ok(())) => "ended".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(join) if join.is_panic() => "panicked".to_owned(),
                    Err(join) => join.to_string(),
                };
                if started.elapsed() >= HEALTHY_RUN {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                let delay = backoff(failures);
                loops.update(&name, |e| {
                    e.state = LoopState::Restarting;
                    e.restarts += 1;
                    e.last_error = Some(why.clone());
                });
                loops
                    .restarts
                    .get_or_create(&vec![("loop".to_owned(), name.clone())])
                    .inc();
                tracing::error!(
                    service,
                    task = %name,
                    error = %why,
                    restart_in_ms = delay.as_millis() as u64,
                    "background loop ended; restarting"
                );
                tokio::select! {
                    _ = loops.shutdown.cancelled() => {}
                    _ = until.cancelled() => {}
                    _ = tokio::time::sleep(delay) => continue,
                }
                loops.update(&name, |e| e.state = LoopState::Stopped);
                return;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= Duration::from_millis(200));
        assert!(backoff(1) <= Duration::from_millis(400));
        assert!(backoff(3) >= Duration::from_millis(800));
        assert!(backoff(30) <= MAX_BACKOFF * 2);
    }

    #[tokio::test]
    async fn a_failing_loop_is_down_then_restarted_and_a_stopped_one_is_not() {
        let shutdown = CancellationToken::new();
        let loops = Loops::new("test", &Metrics::new(), shutdown.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let token = shutdown.clone();
        loops.spawn(LoopSpec::new("flaky"), move || {
            let (runs, token) = (counted.clone(), token.clone());
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("first run fails");
                }
                token.cancelled().await;
                Ok(())
            }
        });
        let until = CancellationToken::new();
        let stop = until.clone();
        loops.spawn(LoopSpec::new("once").optional().until(until), move || {
            let stop = stop.clone();
            async move {
                stop.cancel();
                Ok::<(), String>(())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(loops.down(), vec!["flaky".to_owned()]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(loops.down().is_empty());
        let status = loops.status();
        assert_eq!(status[0].name, "flaky");
        assert_eq!(status[0].restarts, 1);
        assert_eq!(status[0].last_error.as_deref(), Some("first run fails"));
        assert_eq!(status[1].name, "once");
        assert_eq!(status[1].state, LoopState::Stopped);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        loops.tracker().close();
        loops.tracker().wait().await;
        assert!(loops.status().iter().all(|l| l.state == LoopState::Stopped));
    }
}
