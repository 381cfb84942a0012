//! The bucketed history of a bus SLO: fine buckets over the burn-rate windows, coarse
//! ones over the SLO window, so memory is bounded whatever the sample rate.

use std::collections::VecDeque;

use super::EvalSettings;
use crate::slo::BusSli;
use crate::store::Store;

/// How late a bus sample may arrive after its timestamp and still be counted.
const INGEST_LAG_MS: i64 = 250;

/// Most fine buckets kept per SLO (wider buckets beyond).
const MAX_FINE_BUCKETS: i64 = 5_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: i64,
    bad: f64,
    total: f64,
}

/// Bucketed bad and total counts of one bus SLO.
#[derive(Debug, Clone)]
pub(super) struct History {
    fine_width: i64,
    fine_span: i64,
    fine: VecDeque<Bucket>,
    coarse_width: i64,
    coarse_span: i64,
    coarse: VecDeque<Bucket>,
    last: Option<i64>,
}

fn push(buckets: &mut VecDeque<Bucket>, width: i64, span: i64, at: i64, bad: f64, total: f64) {
    let start = at - at.rem_euclid(width);
    match buckets.back_mut() {
        Some(b) if b.start == start => {
            b.bad += bad;
            b.total += total;
        }
        _ => buckets.push_back(Bucket { start, bad, total }),
    }
    while buckets
        .front()
        .is_some_and(|b| b.start + width <= at - span)
    {
        buckets.pop_front();
    }
}

impl History {
    pub(super) fn new(settings: &EvalSettings, window_days: u32) -> Self {
        let scaled = |secs: f64| ((secs * 1000.0) / settings.time_scale).max(1.0) as i64;
        let fine_span = scaled(259_200.0);
        let fine_width = scaled(60.0)
            .max(settings.interval.as_millis() as i64)
            .max(fine_span / MAX_FINE_BUCKETS)
            .max(1);
        let coarse_span = scaled(window_days as f64 * 86_400.0);
        let coarse_width = scaled(3600.0).max(fine_width);
        Self {
            fine_width,
            fine_span,
            fine: VecDeque::new(),
            coarse_width,
            coarse_span,
            coarse: VecDeque::new(),
            last: None,
        }
    }

    pub(super) fn add(&mut self, at: i64, bad: f64, total: f64) {
        push(
            &mut self.fine,
            self.fine_width,
            self.fine_span,
            at,
            bad,
            total,
        );
        push(
            &mut self.coarse,
            self.coarse_width,
            self.coarse_span,
            at,
            bad,
            total,
        );
    }

    /// Bad and total over the last `span` ms before what was last ingested.
    pub(super) fn window(&self, span: i64) -> (f64, f64) {
        let Some(now) = self.last else {
            return (0.0, 0.0);
        };
        let (buckets, width) = if span <= self.fine_span {
            (&self.fine, self.fine_width)
        } else {
            (&self.coarse, self.coarse_width)
        };
        // Buckets that start within the window; with at least one bucket per window.
        let from = now - span.max(width);
        buckets
            .iter()
            .rev()
            .take_while(|b| b.start >= from)
            .fold((0.0, 0.0), |(bad, total), b| (bad + b.bad, total + b.total))
    }

    /// Reads what the store got since the last evaluation (on the first one, as far
    /// back as the store goes, bucket by bucket).
    pub(super) fn ingest(&mut self, store: &Store, sli: &BusSli, now: i64, retention_ms: i64) {
        let upto = now - INGEST_LAG_MS;
        let mut from = match self.last {
            Some(last) => last,
            None => upto - retention_ms.min(self.coarse_span),
        };
        while from < upto {
            let to = (from - from.rem_euclid(self.fine_width) + self.fine_width).min(upto);
            let (events, _) = store.sum(&sli.events.name, &sli.events.labels, from, to);
            let (total, _) = store.sum(&sli.total.name, &sli.total.labels, from, to);
            if total > 0.0 || events > 0.0 {
                let bad = if sli.counts_bad {
                    events
                } else {
                    (total - events).max(0.0)
                };
                self.add(to, bad, total);
            }
            from = to;
        }
        self.last = Some(upto.max(self.last.unwrap_or(i64::MIN)));
    }

    pub(super) fn bytes(&self) -> usize {
        (self.fine.capacity() + self.coarse.capacity()) * std::mem::size_of::<Bucket>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::tests::settings;

    #[test]
    fn history_windows_sum_their_buckets() {
        let mut h = History::new(&settings(1.0), 30);
        assert_eq!(h.fine_width, 60_000);
        let now = 1_000_000_000;
        for i in (0..120).rev() {
            // One bucket a minute for two hours: 1 bad of 100 in each.
            h.add(now - i * 60_000, 1.0, 100.0);
        }
        h.last = Some(now);
        let (bad, total) = h.window(300_000);
        assert!((bad / total - 0.01).abs() < 1e-12);
        assert!((5.0..=6.0).contains(&bad), "{bad}");
        let (bad, _) = h.window(3_600_000);
        assert!((60.0..=61.0).contains(&bad), "{bad}");
    }
}
