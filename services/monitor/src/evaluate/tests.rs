//! Tests of SLO evaluation: burn rates, alerts with hysteresis, rounds over many SLOs.

use super::*;
use crate::slo::parse;
use crate::store::{Labels, StoreLimits};

pub(super) fn settings(scale: f64) -> EvalSettings {
    EvalSettings {
        time_scale: scale,
        interval: Duration::from_millis(100),
        resolve_evaluations: 2,
        default_environment: "production".into(),
        retention: Duration::from_secs(900),
    }
}

/// The availability SLO of `cart` on bus metrics.
pub(crate) fn bus_slo() -> String {
    toronto_testkit::slo::bus_availability("availability", "cart", r#"service="cart""#, 0.99)
}

#[tokio::test]
async fn a_round_evaluates_every_slo_once_across_batches() {
    let store = Arc::new(Store::new(StoreLimits::default()));
    let engine = SloEngine::new(store.clone(), None, settings(1.0), "test".into());
    let n = 2 * BUS_BATCH + 3;
    let now = now_ms();
    for i in 0..n {
        let service = format!("svc-{i:04}");
        engine.put(parse(&bus_slo().replace("cart", &service)).unwrap());
        let labels: Labels = [("service".to_owned(), service)].into();
        store.insert("http_requests", &labels, now - 2_000, 100.0);
        store.insert("http_errors", &labels, now - 2_000, (i % 2) as f64);
    }
    // A Prometheus SLO without a Prometheus is skipped.
    let prometheus = bus_slo()
        .replace("cart", "zz")
        .replace("type: Bus", "type: Prometheus")
        .replace(
            "'http_errors{service=\"zz\"}'",
            "'sum(rate(errors[{{.window}}]))'",
        )
        .replace(
            "'http_requests{service=\"zz\"}'",
            "'sum(rate(requests[{{.window}}]))'",
        );
    assert!(parse(&prometheus).unwrap().bus.is_none());
    engine.put(parse(&prometheus).unwrap());
    for _ in 0..2 {
        let round = engine.evaluate_all().await;
        let services: std::collections::BTreeSet<_> =
            round.iter().map(|e| e.status.service.clone()).collect();
        assert_eq!(round.len(), n);
        assert_eq!(services.len(), n, "each SLO once");
        // What the store holds counts: every other service has 1% errors.
        let odd = round
            .iter()
            .find(|e| e.status.service == "svc-0001")
            .unwrap();
        assert!(odd.status.burn_rates["5m"] > 0.0, "{odd:?}");
    }
}

#[tokio::test]
async fn a_fast_burn_pages_and_resolves_with_hysteresis() {
    let store = Arc::new(Store::new(StoreLimits::default()));
    // Scale 3600: 1h lasts a second, 5m 83 ms.
    let engine = SloEngine::new(store.clone(), None, settings(3600.0), "test".into());
    engine.put(parse(&bus_slo()).unwrap());
    let labels: Labels = [("service".to_owned(), "cart".to_owned())].into();
    let feed = |errors: f64| {
        let t = now_ms();
        store.insert("http_requests", &labels, t, 100.0);
        store.insert("http_errors", &labels, t, errors);
    };
    // 50% errors: 50x the budget.
    let mut fired = None;
    for _ in 0..100 {
        feed(50.0);
        tokio::time::sleep(Duration::from_millis(40)).await;
        for e in engine.evaluate_all().await {
            fired = fired.or(e
                .transitions
                .into_iter()
                .find(|a| a.labels["severity"] == "page"));
        }
        if fired.is_some() {
            break;
        }
    }
    let fired = fired.expect("the page alert fires");
    assert_eq!(fired.status, AlertStatus::Firing);
    assert_eq!(fired.labels["slo"], "availability");
    assert_eq!(fired.labels["environment"], "production");
    assert!(fired.burn_rates["5m"] > 14.4, "{fired:?}");
    assert!(
        fired.annotations["summary"].ends_with("[compressed 3600x]"),
        "the alert says SLO time is compressed: {fired:?}"
    );
    assert!(fired.annotations["description"].contains("30 SLO days last 720 s"));
    let listed = engine.list(Some("cart"));
    assert!(listed[0].firing.contains(&"page".to_owned()));
    assert!(listed[0].status.as_ref().unwrap().exhausted);
    // Errors stop: the short window clears, the alert resolves after two clear
    // evaluations, with the same fingerprint.
    let mut resolved = None;
    for _ in 0..100 {
        feed(0.0);
        tokio::time::sleep(Duration::from_millis(40)).await;
        for e in engine.evaluate_all().await {
            resolved = resolved.or(e
                .transitions
                .into_iter()
                .find(|a| a.labels["severity"] == "page"));
        }
        if resolved.is_some() {
            break;
        }
    }
    let resolved = resolved.expect("the page alert resolves");
    assert_eq!(resolved.status, AlertStatus::Resolved);
    assert_eq!(resolved.fingerprint, fired.fingerprint);
    assert!(resolved.ends_at.is_some());
}
