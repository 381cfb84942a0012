//! Statistics of canary analysis: medians, means, the Mann-Whitney U test, and a
//! sequential test of an error ratio ([`SequentialTest`]).
//!
//! The test follows SciPy's `scipy.stats.mannwhitneyu` (method `auto`, continuity
//! correction on): the exact distribution of U when one sample has at most
//! [`EXACT_MAX`] values and there are no ties, otherwise the normal approximation with
//! the tie correction of the variance. `U` is the statistic of the first sample (the
//! canary): the number of (canary, baseline) pairs where the canary is larger, ties
//! counting one half. The unit tests compare with values SciPy 1.x computed.

/// Which alternative hypothesis the test takes, about the first sample against the
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alternative {
    /// The distributions differ.
    TwoSided,
    /// The first sample tends to be larger.
    Greater,
    /// The first sample tends to be smaller.
    Less,
}

/// The outcome of a Mann-Whitney U test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of the first sample.
    pub u: f64,
    /// The p-value under the chosen alternative.
    pub p_value: f64,
    /// Whether the exact distribution was used (else the normal approximation).
    pub exact: bool,
}

/// Largest size of the smaller sample for which the exact distribution is used (when
/// there are no ties), as SciPy does.
pub const EXACT_MAX: usize = 8;

/// The median, or `None` without values. NaNs must have been removed.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The arithmetic mean, or `None` without values.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

/// The survival function of the standard normal distribution, `P(Z > z)` (statrs).
pub fn normal_sf(z: f64) -> f64 {
    use statrs::distribution::ContinuousCDF;
    statrs::distribution::Normal::standard().sf(z)
}

/// Ranks (1-based, ties get the average rank) of `x` followed by `y`; returns the sum
/// of the ranks of `x` and the tie term `sum(t^3 - t)` over groups of ties.
fn rank_sum(x: &[f64], y: &[f64]) -> (f64, f64) {
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut r1, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i + 1;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        // Positions i..j (0-based) share the ranks i+1..=j: their average.
        let rank = (i + 1 + j) as f64 / 2.0;
        let from_x = all[i..j].iter().filter(|e| e.1).count();
        r1 += rank * from_x as f64;
        let t = (j - i) as f64;
        ties += t * t * t - t;
        i = j;
    }
    (r1, ties)
}

/// `P(U >= u)` under the null hypothesis, from the exact distribution of U for sample
/// sizes `m` and `n` without ties. The counts are the coefficients of the Gaussian
/// binomial coefficient `[m+n choose m]_q`, built by polynomial products.
fn exact_sf(u: f64, m: usize, n: usize) -> f64 {
    let (m, n) = if m <= n { (m, n) } else { (n, m) };
    let max = m * n;
    // prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i)
    let mut c = vec![0.0f64; max + 1];
    c[0] = 1.0;
    for i in 1..=m {
        // Multiply by (1 - q^(n+i)): backwards so each term uses the old coefficients.
        let s = n + i;
        for k in (s..=max).rev() {
            c[k] -= c[k - s];
        }
        // Divide by (1 - q^i): c[k] += c[k - i], forwards.
        for k in i..=max {
            c[k] += c[k - i];
        }
    }
    let total: f64 = c.iter().sum();
    // U is an integer without ties; round up a half-way value (cannot happen) to be safe.
    let from = u.ceil().max(0.0) as usize;
    if from > max {
        return 0.0;
    }
    c[from..].iter().sum::<f64>() / total
}

/// The Mann-Whitney U test of `x` (canary) against `y` (baseline); `None` when a
/// sample is empty. When every value of both samples is the same the p-value is 1
/// (nothing differs).
pub fn mann_whitney_u(x: &[f64], y: &[f64], alternative: Alternative) -> Option<MannWhitney> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (r1, tie_term) = rank_sum(x, y);
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let u1 = r1 - n1f * (n1f + 1.0) / 2.0;
    let u2 = n1f * n2f - u1;
    let (u, factor) = match alternative {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let exact = tie_term == 0.0 && n1.min(n2) <= EXACT_MAX;
    let p = if exact {
        exact_sf(u, n1, n2)
    } else {
        let n = n1f + n2f;
        let sigma = (n1f * n2f / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
        if sigma <= 0.0 || !sigma.is_finite() {
            // Every value is the same: no evidence of any difference.
            return Some(MannWhitney {
                u: u1,
                p_value: 1.0,
                exact: false,
            });
        }
        let z = (u - n1f * n2f / 2.0 - 0.5) / sigma;
        normal_sf(z)
    };
    Some(MannWhitney {
        u: u1,
        p_value: (p * factor).clamp(0.0, 1.0),
        exact,
    })
}

/// Requests and errors counted on one side (canary or baseline) since a sequential
/// test began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests.
    pub trials: u64,
    /// Failed requests among them.
    pub errors: u64,
}

/// The mixture likelihood ratio of the mixture sequential probability ratio test
/// (mSPRT; Johari, Pekelis and Walsh, "Always valid inference", 2017) that the
/// canary's error ratio exceeds the baseline's by more than `allowed`, from the counts
/// since the test began. The difference of the error ratios is taken as normal with
/// the variance of two binomial proportions (each ratio smoothed by one error in two
/// requests, so that a side without errors still has a variance), and the effect is
/// mixed over a normal prior of scale `tau` centred on `allowed`:
/// `sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))` with `d` the observed
/// difference less `allowed`. One-sided: 0 when the canary is not worse than allowed.
/// `None` when a side has no requests.
pub fn msprt_ratio(canary: Counts, baseline: Counts, allowed: f64, tau: f64) -> Option<f64> {
    if canary.trials == 0 || baseline.trials == 0 {
        return None;
    }
    let smoothed = |c: Counts| (c.errors as f64 + 1.0) / (c.trials as f64 + 2.0);
    let (pc, pb) = (smoothed(canary), smoothed(baseline));
    let raw = |c: Counts| c.errors as f64 / c.trials as f64;
    let d = raw(canary) - raw(baseline) - allowed;
    if d <= 0.0 {
        return Some(0.0);
    }
    let v = pc * (1.0 - pc) / canary.trials as f64 + pb * (1.0 - pb) / baseline.trials as f64;
    let t2 = tau * tau;
    Some((v / (v + t2)).sqrt() * (t2 * d * d / (2.0 * v * (v + t2))).exp())
}

/// An always-valid test of "the canary fails more than the baseline by more than
/// `allowed`", looked at as often as wanted: after every look its p-value is the
/// smallest `1 / ratio` seen ([`msprt_ratio`]), so stopping at the first look where it
/// falls below `alpha` keeps the chance of a false alarm at most `alpha` however many
/// looks are taken (the guarantee the windowed Mann-Whitney test, repeated every
/// interval, does not have). The counts are cumulative from the start of the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequentialTest {
    allowed: f64,
    tau: f64,
    p_value: f64,
}

impl SequentialTest {
    /// A test allowing the canary's error ratio `allowed` above the baseline's, with
    /// the mixing scale `tau` (the size of effect it is quickest to find, e.g. 0.1).
    pub fn new(allowed: f64, tau: f64) -> Self {
        Self {
            allowed,
            tau,
            p_value: 1.0,
        }
    }

    /// Looks at the counts so far; returns the always-valid p-value.
    pub fn look(&mut self, canary: Counts, baseline: Counts) -> f64 {
        if let Some(ratio) = msprt_ratio(canary, baseline, self.allowed, self.tau)
            && ratio > 0.0
        {
            self.p_value = self.p_value.min(1.0 / ratio);
        }
        self.p_value
    }

    /// The always-valid p-value after the last look.
    pub fn p_value(&self) -> f64 {
        self.p_value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} is not {b} (±{tol})");
    }

    #[test]
    fn medians_and_means() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean(&[]), None);
    }

    // statrs's erfc agrees with SciPy's to about 1e-11 (relative): far below any
    // confidence a canary is judged at, so the p-values below are checked to 1e-10.
    #[test]
    fn normal_tail() {
        close(normal_sf(0.0), 0.5, 1e-15);
        close(normal_sf(1.959963984540054), 0.025, 1e-10);
        close(normal_sf(-1.0), 0.8413447460685429, 1e-10);
        close(normal_sf(5.0), 2.866515718791933e-07, 1e-16);
    }

    // Values below are from SciPy 1.x: scipy.stats.mannwhitneyu(x, y, alternative=...)
    // with the default method ("auto") and use_continuity=True.

    #[test]
    fn exact_small_samples_without_ties() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [6.0, 7.0, 8.0, 9.0, 10.0];
        // mannwhitneyu(x, y): U=0, p=0.007936507936507936 (2/252)
        let two = mann_whitney_u(&x, &y, Alternative::TwoSided).unwrap();
        assert!(two.exact);
        assert_eq!(two.u, 0.0);
        close(two.p_value, 2.0 / 252.0, 1e-15);
        // alternative="less": p = 1/252; "greater": p = 1.0
        close(
            mann_whitney_u(&x, &y, Alternative::Less).unwrap().p_value,
            1.0 / 252.0,
            1e-15,
        );
        close(
            mann_whitney_u(&x, &y, Alternative::Greater)
                .unwrap()
                .p_value,
            1.0,
            1e-15,
        );
        // Interleaved: x=[1,3,5,7], y=[2,4,6,8,10]: U=6, two-sided p=0.4126984126984127
        let r = mann_whitney_u(
            &[1.0, 3.0, 5.0, 7.0],
            &[2.0, 4.0, 6.0, 8.0, 10.0],
            Alternative::TwoSided,
        )
        .unwrap();
        assert_eq!(r.u, 6.0);
        close(r.p_value, SCIPY_INTERLEAVED, 1e-12);
    }

    const SCIPY_INTERLEAVED: f64 = 0.4126984126984127;

    #[test]
    fn asymptotic_with_ties() {
        // x = [0.1,0.2,0.2,0.3,0.4,0.5,0.5,0.6,0.7,0.9]
        // y = [0.3,0.4,0.4,0.5,0.6,0.7,0.8,0.8,0.9,1.0]
        let x = [0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.9];
        let y = [0.3, 0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.9, 1.0];
        let two = mann_whitney_u(&x, &y, Alternative::TwoSided).unwrap();
        assert!(!two.exact);
        assert_eq!(two.u, SCIPY_TIES_U);
        close(two.p_value, SCIPY_TIES_TWO_SIDED, 1e-10);
        let less = mann_whitney_u(&x, &y, Alternative::Less).unwrap();
        close(less.p_value, SCIPY_TIES_LESS, 1e-10);
        let greater = mann_whitney_u(&x, &y, Alternative::Greater).unwrap();
        close(greater.p_value, SCIPY_TIES_GREATER, 1e-10);
    }

    const SCIPY_TIES_U: f64 = 28.0;
    const SCIPY_TIES_TWO_SIDED: f64 = 0.10228629809594054;
    const SCIPY_TIES_LESS: f64 = 0.05114314904797027;
    const SCIPY_TIES_GREATER: f64 = 0.9563544151049967;

    #[test]
    fn large_samples_shifted() {
        // x = [i % 17 + 3 for i in range(60)], y = [i % 13 for i in range(50)]
        let x: Vec<f64> = (0..60).map(|i| (i % 17 + 3) as f64).collect();
        let y: Vec<f64> = (0..50).map(|i| (i % 13) as f64).collect();
        let g = mann_whitney_u(&x, &y, Alternative::Greater).unwrap();
        assert_eq!(g.u, SCIPY_LARGE_U);
        close(g.p_value, SCIPY_LARGE_GREATER, 1e-12);
        let t = mann_whitney_u(&x, &y, Alternative::TwoSided).unwrap();
        close(t.p_value, SCIPY_LARGE_TWO_SIDED, 1e-12);
    }

    const SCIPY_LARGE_U: f64 = 2273.5;
    const SCIPY_LARGE_GREATER: f64 = 1.6682891107562868e-06;
    const SCIPY_LARGE_TWO_SIDED: f64 = 3.3365782215125736e-06;

    #[test]
    fn all_equal_samples_show_no_difference() {
        let r = mann_whitney_u(&[0.0; 20], &[0.0; 30], Alternative::Greater).unwrap();
        assert_eq!(r.p_value, 1.0);
        assert_eq!(r.u, 300.0);
        // Constant but different samples are a clear difference.
        // SciPy: p = 2.341341179371028e-10
        let r = mann_whitney_u(&[1.0; 20], &[0.0; 20], Alternative::Greater).unwrap();
        close(r.p_value, 2.341341179371028e-10, 1e-20);
        assert_eq!(r.u, 400.0);
    }

    #[test]
    fn empty_samples_give_nothing() {
        assert!(mann_whitney_u(&[], &[1.0], Alternative::TwoSided).is_none());
        assert!(mann_whitney_u(&[1.0], &[], Alternative::TwoSided).is_none());
    }

    #[test]
    fn exact_distribution_is_a_distribution() {
        // P(U >= 0) = 1 and the tail is symmetric: P(U >= k) = P(U <= mn - k).
        close(exact_sf(0.0, 4, 6), 1.0, 1e-15);
        for k in 0..=24 {
            let upper = exact_sf(k as f64, 4, 6);
            let lower = 1.0 - exact_sf((24 - k + 1) as f64, 4, 6);
            close(upper, lower, 1e-12);
        }
    }

    #[test]
    fn the_sequential_test_finds_a_bad_canary_and_not_a_healthy_one() {
        let c = |trials, errors| Counts { trials, errors };
        // 20% errors against 1%, 100 requests each side: far beyond 0.02 allowed.
        let r = msprt_ratio(c(100, 20), c(100, 1), 0.02, 0.1).unwrap();
        assert!(r > 100.0, "{r}");
        // No worse than allowed: no evidence at all.
        assert_eq!(msprt_ratio(c(100, 2), c(100, 1), 0.02, 0.1), Some(0.0));
        assert_eq!(msprt_ratio(c(0, 0), c(100, 1), 0.02, 0.1), None);
        // The p-value only goes down, look after look.
        let mut t = SequentialTest::new(0.02, 0.1);
        assert_eq!(t.look(c(10, 0), c(10, 0)), 1.0);
        let p = t.look(c(200, 40), c(600, 6));
        assert!(p < 0.01, "{p}");
        assert_eq!(t.look(c(400, 4), c(1200, 12)), p);
        assert_eq!(t.p_value(), p);
    }
}
