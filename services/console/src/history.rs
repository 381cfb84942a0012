//! Budget history of every SLO, gathered by watching the monitor's `slo_status` KV
//! bucket: what the SLO page draws its burn-down from. Bounded in SLOs and in points.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use toronto_protocol::tasks::SloStatus;

/// Points kept per SLO.
pub const POINTS_PER_SLO: usize = 720;
/// SLOs kept.
pub const MAX_SLOS: usize = 2000;

/// Points of one SLO: when, and the budget left then.
type Points = VecDeque<(DateTime<Utc>, f64)>;

/// Budget remaining over time, per `service.slo`.
#[derive(Debug, Clone, Default)]
pub struct SloHistory {
    inner: Arc<Mutex<HashMap<String, Points>>>,
}

impl SloHistory {
    /// Records a status (an older or repeated evaluation is ignored).
    pub fn record(&self, s: &SloStatus) {
        let key = format!("{}.{}", s.service, s.slo);
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&key) && map.len() >= MAX_SLOS {
            return;
        }
        let points = map.entry(key).or_default();
        if points.back().is_some_and(|(t, _)| *t >= s.evaluated_at) {
            return;
        }
        if points.len() == POINTS_PER_SLO {
            points.pop_front();
        }
        points.push_back((s.evaluated_at, s.budget_remaining));
    }

    /// The points of one SLO, oldest first.
    pub fn points(&self, service: &str, slo: &str) -> Vec<(DateTime<Utc>, f64)> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&format!("{service}.{slo}"))
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Watches the bucket until `shutdown` (the caller restarts it on error).
pub async fn watch(
    kv: async_nats::jetstream::kv::Store,
    history: SloHistory,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    use futures::StreamExt;
    let mut entries = kv
        .watch_all_from_revision(1)
        .await
        .map_err(|e| format!("cannot watch the SLO status bucket: {e}"))?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = entries.next() => match next {
                Some(Ok(entry)) => {
                    // Bounded: an SLO status is a few hundred bytes.
                    if entry.value.len() <= 64 * 1024
                        && let Ok(s) = serde_json::from_slice::<SloStatus>(&entry.value)
                    {
                        history.record(&s);
                    }
                }
                Some(Err(e)) => return Err(format!("SLO status watch failed: {e}")),
                None => return Err("SLO status watch ended".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_points_in_order() {
        let h = SloHistory::default();
        let t = Utc::now();
        for i in 0..(POINTS_PER_SLO + 5) {
            h.record(&SloStatus {
                service: "shop".into(),
                slo: "avail".into(),
                objective: 0.99,
                budget_remaining: 1.0 - i as f64 / 1000.0,
                exhausted: false,
                burn_rates: Default::default(),
                evaluated_at: t + chrono::Duration::seconds(i as i64),
            });
        }
        let p = h.points("shop", "avail");
        assert_eq!(p.len(), POINTS_PER_SLO);
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
