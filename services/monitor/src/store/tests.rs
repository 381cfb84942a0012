//! The store through its API, and what it holds inside.

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn selects_by_label_subset_and_time() {
    let store = Store::new(StoreLimits::default());
    let now = now_ms();
    let canary = labels(&[("service", "a"), ("track", "canary")]);
    let stable = labels(&[("service", "a"), ("track", "stable")]);
    for i in 0..10 {
        store.insert("m", &canary, now - 1000 + i * 100, i as f64);
        store.insert("m", &stable, now - 1000 + i * 100, 100.0);
    }
    let got = store.values("m", &labels(&[("track", "canary")]), now - 450, now);
    assert_eq!(got, vec![6.0, 7.0, 8.0, 9.0]);
    assert_eq!(
        store
            .values("m", &labels(&[("service", "a")]), 0, now)
            .len(),
        20
    );
    assert!(store.values("other", &Labels::new(), 0, now).is_empty());
    let (sum, n) = store.sum("m", &labels(&[("track", "canary")]), now - 500, now);
    assert_eq!((sum, n), (6.0 + 7.0 + 8.0 + 9.0, 4));
    // Both labels, a pair no series holds, and a pair of another name.
    let both = labels(&[("service", "a"), ("track", "stable")]);
    assert_eq!(store.values("m", &both, 0, now), vec![100.0; 10]);
    assert!(
        store
            .values("m", &labels(&[("service", "b")]), 0, now)
            .is_empty()
    );
    assert!(
        store
            .values("m", &labels(&[("track", "x")]), 0, now)
            .is_empty()
    );
}

#[test]
fn a_batch_stores_like_single_inserts() {
    let store = Store::new(StoreLimits {
        max_series: 2,
        ..Default::default()
    });
    let now = now_ms();
    let (a, b, c) = (
        labels(&[("track", "a")]),
        labels(&[("track", "b")]),
        labels(&[("track", "c")]),
    );
    let kept = store.insert_batch([
        ("m", &a, now, 1.0),
        ("m", &a, now - 5, 0.5),
        ("n", &b, now, 2.0),
        ("m", &a, now, f64::NAN),
        // A third series is beyond the limit.
        ("m", &c, now, 3.0),
    ]);
    assert_eq!(kept, 3);
    assert_eq!(store.values("m", &a, 0, now), vec![0.5, 1.0]);
    assert_eq!(store.values("n", &b, 0, now), vec![2.0]);
    assert_eq!(store.size(), (2, 3));
    assert_eq!(store.counters.refused.load(Ordering::Relaxed), 2);
}

#[test]
fn a_series_pruned_away_is_no_longer_selected() {
    let store = Store::new(StoreLimits {
        retention_ms: 1000,
        ..Default::default()
    });
    let now = now_ms();
    let old = labels(&[("service", "old")]);
    let new = labels(&[("service", "new")]);
    store.insert("m", &old, now - 900, 1.0);
    store.insert("m", &new, now, 2.0);
    std::thread::sleep(std::time::Duration::from_millis(200));
    store.prune();
    assert_eq!(store.size().0, 1);
    assert!(store.select("m", &old, 0, i64::MAX).is_empty());
    assert_eq!(store.select("m", &Labels::new(), 0, i64::MAX).len(), 1);
    // It comes back with a new sample.
    store.insert("m", &old, now_ms(), 3.0);
    assert_eq!(store.values("m", &old, 0, i64::MAX), vec![3.0]);
}

#[test]
fn a_series_labels_are_interned_once_and_let_go_with_it() {
    let store = Store::new(StoreLimits {
        retention_ms: 1000,
        ..Default::default()
    });
    let now = now_ms();
    let v1 = labels(&[("service", "shop"), ("track", "canary"), ("version", "1")]);
    let v2 = labels(&[("service", "shop"), ("track", "canary"), ("version", "2")]);
    store.insert("m", &v1, now - 900, 1.0);
    store.insert("n", &v1, now - 900, 1.0);
    store.insert("m", &v2, now, 2.0);
    {
        let inner = store.inner.read().unwrap();
        // service, shop, track, canary, version, 1, 2: each once for three series.
        assert_eq!(inner.strings.len(), 7);
        assert_eq!(inner.metrics["m"].index.pairs(), 4);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    store.prune();
    let inner = store.inner.read().unwrap();
    // Version 1 is gone from both names, its string and its pair with it.
    assert_eq!(inner.strings.len(), 6);
    assert_eq!(inner.metrics["m"].index.pairs(), 3);
    assert!(!inner.metrics.contains_key("n"));
    assert_eq!(store.size(), (1, 1));
}

#[test]
fn a_stale_series_is_small() {
    let store = Store::new(StoreLimits::default());
    let start = now_ms() - 200_000;
    // 68 one-second ticks of the simulated traffic for 125 versions: request and
    // error counts, their ratio, and a mean latency with every mantissa bit noise.
    let mut x = 0x9e37_79b9_u64;
    for version in 0..125 {
        let l = labels(&[
            ("environment", "staging"),
            ("service", "svc-1"),
            ("track", "canary"),
            ("version", &format!("1.0.{version}")),
        ]);
        for name in [
            "http_requests",
            "http_errors",
            "http_error_ratio",
            "http_latency_seconds",
        ] {
            let samples = (0..68).map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let (requests, errors) = (20 + x % 2, u64::from(x.is_multiple_of(31)));
                let value = match name {
                    "http_requests" => requests as f64,
                    "http_errors" => errors as f64,
                    "http_error_ratio" => errors as f64 / requests as f64,
                    _ => 0.045 * (0.7 + (x % 1_000_003) as f64 / 1_666_671.0),
                };
                (start + i * 1000 + (x % 5) as i64, value)
            });
            store.insert_many(name, &l, samples);
        }
    }
    let before = store.bytes();
    store.prune();
    let after = store.bytes();
    assert_eq!(store.size(), (500, 34_000));
    // Labels, index entries and 68 samples each, sealed; the open buffers are gone.
    assert!(after < before / 4, "{after} of {before}");
    assert!(after / 500 < 500, "{} bytes a series", after / 500);
}

#[test]
fn a_peak_of_series_pruned_away_gives_its_memory_back() {
    let store = Store::new(StoreLimits {
        retention_ms: 1000,
        ..Default::default()
    });
    let now = now_ms();
    store.insert("m", &labels(&[("service", "live")]), now, 1.0);
    let idle = store.bytes();
    for i in 0..1000 {
        store.insert(
            "m",
            &labels(&[("service", &format!("s{i}"))]),
            now - 900,
            1.0,
        );
    }
    let peak = store.bytes();
    std::thread::sleep(std::time::Duration::from_millis(200));
    store.prune();
    assert_eq!(store.size(), (1, 1));
    let after = store.bytes();
    assert!(after < peak / 10, "{after} of {peak} (idle {idle})");
}

#[test]
fn bounds_samples_series_and_age() {
    let store = Store::new(StoreLimits {
        retention_ms: 60_000,
        max_samples_per_series: 5,
        max_series: 2,
    });
    let now = now_ms();
    let l = labels(&[("a", "1")]);
    for i in 0..10 {
        store.insert("m", &l, now - 10 + i, i as f64);
    }
    assert_eq!(
        store.values("m", &l, 0, now + 10),
        vec![5.0, 6.0, 7.0, 8.0, 9.0]
    );
    // Too old, not finite: refused.
    assert!(!store.insert("m", &l, now - 120_000, 1.0));
    assert!(!store.insert("m", &l, now, f64::NAN));
    // A third series is refused.
    assert!(store.insert("m", &labels(&[("a", "2")]), now, 1.0));
    assert!(!store.insert("m", &labels(&[("a", "3")]), now, 1.0));
    assert_eq!(store.size().0, 2);
    // Out-of-order samples stay sorted.
    let store = Store::new(StoreLimits::default());
    store.insert("n", &l, now, 2.0);
    store.insert("n", &l, now - 5, 1.0);
    assert_eq!(store.values("n", &l, 0, now), vec![1.0, 2.0]);
}
