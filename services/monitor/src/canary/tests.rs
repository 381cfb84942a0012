use super::*;

fn metric(name: &str) -> AnalysisMetric {
    AnalysisMetric {
        name: name.into(),
        query: None,
        direction: Direction::Increase,
        max_relative_effect: None,
        max_absolute_effect: None,
        critical: false,
        must_have_data: false,
        max_value: None,
        min_value: None,
    }
}

pub(super) fn request() -> CanaryAnalyze {
    CanaryAnalyze {
        service: "shop-api".into(),
        environment: "production".into(),
        canary: [("track".to_owned(), "canary".to_owned())].into(),
        baseline: [("track".to_owned(), "stable".to_owned())].into(),
        metrics: vec![metric("http_error_ratio")],
        window_seconds: 60.0,
        confidence: None,
        rollout_id: None,
        sequential: None,
    }
}

fn ramp(base: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| base + (i % 7) as f64 * 0.001).collect()
}

#[test]
fn a_clear_increase_fails_and_an_equal_canary_passes() {
    let m = metric("http_error_ratio");
    let bad = evaluate_metric(&m, &ramp(0.30, 50), &ramp(0.01, 50), 0.95, 3);
    assert_eq!(bad.outcome, AnalysisOutcome::Fail, "{bad:?}");
    assert!(bad.p_value.unwrap() < 1e-6);
    assert!(bad.effect.unwrap() > 10.0);
    let same = evaluate_metric(&m, &ramp(0.01, 50), &ramp(0.01, 50), 0.95, 3);
    assert_eq!(same.outcome, AnalysisOutcome::Pass, "{same:?}");
    // A decrease of an "increase is bad" metric passes.
    let better = evaluate_metric(&m, &ramp(0.0, 50), &ramp(0.2, 50), 0.95, 3);
    assert_eq!(better.outcome, AnalysisOutcome::Pass, "{better:?}");
    // ... but fails when lower is worse.
    let mut throughput = metric("throughput");
    throughput.direction = Direction::Decrease;
    let lower = evaluate_metric(&throughput, &ramp(0.0, 50), &ramp(0.2, 50), 0.95, 3);
    assert_eq!(lower.outcome, AnalysisOutcome::Fail, "{lower:?}");
}

#[test]
fn a_significant_difference_within_the_allowed_effect_passes() {
    let mut m = metric("http_latency_seconds");
    m.max_relative_effect = Some(0.10);
    // +5% latency, clearly significant but within 10%.
    let small = evaluate_metric(&m, &ramp(0.105, 100), &ramp(0.100, 100), 0.95, 3);
    assert!(small.p_value.unwrap() < 0.05);
    assert_eq!(small.outcome, AnalysisOutcome::Pass, "{small:?}");
    // +50%: beyond.
    let big = evaluate_metric(&m, &ramp(0.150, 100), &ramp(0.100, 100), 0.95, 3);
    assert_eq!(big.outcome, AnalysisOutcome::Fail, "{big:?}");
    assert!(big.reason.contains("beyond"), "{}", big.reason);
    // Absolute allowance on a zero baseline.
    let mut errors = metric("http_error_ratio");
    errors.max_absolute_effect = Some(0.02);
    let tiny = evaluate_metric(&errors, &[0.01; 20], &[0.0; 20], 0.95, 3);
    assert_eq!(tiny.outcome, AnalysisOutcome::Pass, "{tiny:?}");
    assert_eq!(tiny.effect, Some(0.01));
    let large = evaluate_metric(&errors, &[0.05; 20], &[0.0; 20], 0.95, 3);
    assert_eq!(large.outcome, AnalysisOutcome::Fail, "{large:?}");
}

#[test]
fn missing_data_is_inconclusive_unless_it_must_be_there() {
    let m = metric("m");
    let none = evaluate_metric(&m, &[], &[1.0, 2.0, 3.0], 0.95, 3);
    assert_eq!(none.outcome, AnalysisOutcome::Inconclusive);
    assert!(none.reason.contains("no data"));
    let few = evaluate_metric(&m, &[1.0, 2.0], &[1.0, 2.0, 3.0], 0.95, 3);
    assert_eq!(few.outcome, AnalysisOutcome::Inconclusive);
    let mut must = metric("m");
    must.must_have_data = true;
    let missing = evaluate_metric(&must, &[], &[1.0, 2.0, 3.0], 0.95, 3);
    assert_eq!(missing.outcome, AnalysisOutcome::Fail);
}

#[test]
fn thresholds_judge_the_canary_alone() {
    let mut m = metric("http_error_ratio");
    m.max_value = Some(0.05);
    let ok = evaluate_metric(&m, &[0.01; 5], &[], 0.95, 3);
    assert_eq!(ok.outcome, AnalysisOutcome::Pass, "{ok:?}");
    let bad = evaluate_metric(&m, &[0.2; 5], &[], 0.95, 3);
    assert_eq!(bad.outcome, AnalysisOutcome::Fail, "{bad:?}");
    assert!(
        bad.reason.contains("above the maximum 0.05"),
        "{}",
        bad.reason
    );
    let mut rps = metric("rps");
    rps.min_value = Some(1.0);
    let low = evaluate_metric(&rps, &[0.5; 5], &[], 0.95, 3);
    assert_eq!(low.outcome, AnalysisOutcome::Fail, "{low:?}");
    let none = evaluate_metric(&rps, &[], &[], 0.95, 3);
    assert_eq!(none.outcome, AnalysisOutcome::Inconclusive, "{none:?}");
    assert!(none.reason.starts_with("no data"), "{}", none.reason);
}

fn ev(name: &str, outcome: AnalysisOutcome, critical: bool) -> MetricEvidence {
    MetricEvidence {
        name: name.into(),
        outcome,
        critical,
        canary: summary(&[]),
        baseline: summary(&[]),
        u: None,
        p_value: None,
        effect: None,
        reason: "r".into(),
    }
}

#[test]
fn scoring() {
    use AnalysisOutcome::*;
    let s = |v: Vec<MetricEvidence>| score(&v).0;
    assert_eq!(s(vec![ev("a", Pass, false), ev("b", Pass, false)]), Pass);
    assert_eq!(
        s(vec![
            ev("a", Fail, true),
            ev("b", Pass, false),
            ev("c", Pass, false)
        ]),
        Fail
    );
    // One non-critical failure of three: the majority passes.
    assert_eq!(
        s(vec![
            ev("a", Fail, false),
            ev("b", Pass, false),
            ev("c", Pass, false)
        ]),
        Pass
    );
    assert_eq!(
        s(vec![
            ev("a", Fail, false),
            ev("b", Fail, false),
            ev("c", Pass, false)
        ]),
        Fail
    );
    assert_eq!(s(vec![ev("a", Inconclusive, false)]), Inconclusive);
    assert_eq!(
        s(vec![
            ev("a", Inconclusive, false),
            ev("b", Inconclusive, false),
            ev("c", Pass, false)
        ]),
        Inconclusive
    );
    let (_, reason) = score(&[
        ev("a", Fail, false),
        ev("b", Pass, false),
        ev("c", Pass, false),
    ]);
    assert!(reason.contains("score 67%"), "{reason}");
}
