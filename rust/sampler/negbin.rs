//! The negative binomial law, for the draws a unique sample skips: once every id below h is collected, a
//! draw landing there (probability p = P(k < h)) is rejected for certain, so the sampler draws only from the
//! ids at or above h and counts the skipped draws instead. Before each of r such draws come a geometric
//! number of skipped ones; their sum over the r draws is negative binomial: P(m) = C(m + r - 1, m) p^m
//! (1 - p)^r, mean r p / (1 - p).
//!
//! It is drawn exactly in O(1), as a Poisson count whose mean is Gamma(r) p / (1 - p) (the gamma–Poisson
//! mixture), with Marsaglia and Tsang's gamma sampler (2000) and Hörmann's transformed rejection with squeeze
//! for Poisson means of 10 and more (PTRS, 1993); smaller means invert the distribution function.

use crate::rng::Stream;
use std::f64::consts::PI;

/// The number of skipped draws (each with probability `p`) before `r` kept ones: negative binomial.
pub(crate) fn failures(stream: &mut Stream, r: u64, p: f64) -> u64 {
    if r == 0 || p <= 0.0 {
        return 0;
    }
    debug_assert!(p < 1.0, "p = {p}");
    let mean = gamma(stream, r as f64) * (p / (1.0 - p));
    poisson(stream, mean)
}

/// A uniform in (0, 1]: never 0, so its logarithm is finite.
#[inline]
fn open_unit(stream: &mut Stream) -> f64 {
    1.0 - stream.next_f64()
}

/// A standard normal (Box–Muller, one of the pair).
fn normal(stream: &mut Stream) -> f64 {
    let radius = (-2.0 * open_unit(stream).ln()).sqrt();
    radius * (2.0 * PI * stream.next_f64()).cos()
}

/// Gamma(shape, 1) for shape >= 1 (Marsaglia–Tsang): with d = shape - 1/3 and c = 1/sqrt(9d), d (1 + c x)^3
/// for a normal x, accepted with probability proportional to the ratio of densities.
fn gamma(stream: &mut Stream, shape: f64) -> f64 {
    debug_assert!(shape >= 1.0);
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(stream);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = stream.next_f64();
        let x2 = x * x;
        // The squeeze accepts ~98 % of proposals without a logarithm.
        if u < 1.0 - 0.0331 * x2 * x2 || u.ln() < 0.5 * x2 + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// Poisson(mean), for any mean >= 0 (counts beyond 2^63 saturate).
fn poisson(stream: &mut Stream, mean: f64) -> u64 {
    if mean < 10.0 {
        // Inversion: walk the distribution function until it passes a uniform. Rounding may leave the sum
        // of the terms a hair below 1; a uniform above it ends where the terms vanish.
        let u = stream.next_f64();
        let (mut k, mut term) = (0u64, (-mean).exp());
        let mut cdf = term;
        while u >= cdf && term > 0.0 {
            k += 1;
            term *= mean / k as f64;
            cdf += term;
        }
        return k;
    }
    // PTRS: k = floor((2a / us + b) U + mean + 0.43) for U uniform in [-1/2, 1/2), us = 1/2 - |U|, accepted
    // outright in the region where the hat is below the density, else by the density ratio.
    let root = mean.sqrt();
    let log_mean = mean.ln();
    let b = 0.931 + 2.53 * root;
    let a = -0.059 + 0.02483 * b;
    let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
    let v_r = 0.9277 - 3.6224 / (b - 2.0);
    loop {
        let u = stream.next_f64() - 0.5;
        let v = stream.next_f64();
        let us = 0.5 - u.abs();
        if us <= 0.0 {
            continue;
        }
        let k = ((2.0 * a / us + b) * u + mean + 0.43).floor();
        if us >= 0.07 && v <= v_r {
            return k as u64;
        }
        if k < 0.0 || (us < 0.013 && v > us) {
            continue;
        }
        let log_hat = v.ln() + inv_alpha.ln() - (a / (us * us) + b).ln();
        if log_hat <= -mean + k * log_mean - ln_factorial(k) {
            return k as u64;
        }
    }
}

/// ln(k!) for a whole number k >= 0: summed for k < 16, Stirling's series beyond (error below 1e-16 k).
fn ln_factorial(k: f64) -> f64 {
    if k < 16.0 {
        return (2..=k as u64).map(|i| (i as f64).ln()).sum();
    }
    // ln Γ(x) for x = k + 1 >= 17: (x - 1/2) ln x - x + ln(2π)/2 + 1/(12x) - 1/(360x³) + 1/(1260x⁵) -
    // 1/(1680x⁷); the next term, 1/(1188 x⁹), is below 1e-14 / 1188.
    let x = k + 1.0;
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series = inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)));
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * PI).ln() + series
}

#[cfg(test)]
mod tests {
    use super::super::testutil::chi_square_bound;
    use super::*;

    /// Pearson's chi-square of `n` draws of `draw` against the law `pmf` over 0, 1, 2, ...: cells merged
    /// from the left until each expects at least 5 draws, the upper tail lumped into the last. Returns
    /// (statistic, degrees of freedom).
    fn chi_square(n: usize, mut draw: impl FnMut() -> u64, pmf: impl Fn(u64) -> f64) -> (f64, usize) {
        let mut counts = std::collections::BTreeMap::<u64, f64>::new();
        for _ in 0..n {
            *counts.entry(draw()).or_default() += 1.0;
        }
        let n = n as f64;
        let (mut stat, mut cells, mut closed) = (0.0, 0usize, 0.0);
        let (mut e, mut o, mut k) = (0.0, 0.0, 0u64);
        loop {
            e += pmf(k) * n;
            o += counts.get(&k).copied().unwrap_or(0.0);
            k += 1;
            // What the cells so far leave for the ids from k on.
            let rest = (1.0 - closed) * n - e;
            if rest < 5.0 {
                break;
            }
            if e >= 5.0 {
                stat += (o - e) * (o - e) / e;
                cells += 1;
                closed += e / n;
                (e, o) = (0.0, 0.0);
            }
        }
        let last_o = o + counts.range(k..).map(|(_, c)| c).sum::<f64>();
        let last_e = (1.0 - closed) * n;
        stat += (last_o - last_e) * (last_o - last_e) / last_e;
        (stat, cells)
    }

    #[test]
    fn ln_factorial_matches_known_values() {
        // 20! = 2432902008176640000 exactly; ln(170!) = 706.5730622457874 (to 16 digits).
        let direct20: f64 = (2..=20).map(|i| (i as f64).ln()).sum();
        assert!((ln_factorial(20.0) - direct20).abs() < 1e-13, "{}", ln_factorial(20.0));
        assert!((ln_factorial(20.0) - 2_432_902_008_176_640_000f64.ln()).abs() < 1e-13);
        assert!((ln_factorial(170.0) - 706.5730622457874).abs() < 1e-12);
        assert_eq!(ln_factorial(0.0), 0.0);
        assert_eq!(ln_factorial(1.0), 0.0);
        // The two branches meet: 16! from the series equals the sum.
        let sum16: f64 = (2..=16).map(|i| (i as f64).ln()).sum();
        assert!((ln_factorial(16.0) - sum16).abs() < 1e-13);
    }

    #[test]
    fn poisson_fits_its_law_for_small_and_large_means() {
        for (seed, mean) in
            [(1u64, 0.3f64), (2, 4.0), (3, 9.99), (4, 10.0), (5, 47.5), (6, 3000.0), (7, 2.5e6)]
        {
            let mut s = Stream::new(seed);
            let pmf = |k: u64| (-mean + k as f64 * mean.ln() - ln_factorial(k as f64)).exp();
            let (chi, df) = chi_square(100_000, || poisson(&mut s, mean), pmf);
            assert!(chi < chi_square_bound(df), "mean {mean}: chi2 {chi} df {df}");
        }
        let mut s = Stream::new(8);
        assert_eq!(poisson(&mut s, 0.0), 0);
    }

    #[test]
    fn gamma_has_its_mean_and_variance() {
        // Gamma(a) has mean a and variance a; the sample mean of n draws is within 5 standard errors.
        for (seed, a) in [(1u64, 1.0f64), (2, 3.0), (3, 4096.0)] {
            let mut s = Stream::new(seed);
            let n = 100_000;
            let xs: Vec<f64> = (0..n).map(|_| gamma(&mut s, a)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
            assert!((mean - a).abs() < 5.0 * (a / n as f64).sqrt(), "shape {a}: mean {mean}");
            // The variance's standard error is about sqrt((m4 - a^2) / n), m4 = 3a^2 + 6a for gamma.
            let se = ((2.0 * a * a + 6.0 * a) / n as f64).sqrt();
            assert!((var - a).abs() < 5.0 * se, "shape {a}: variance {var}");
        }
    }

    #[test]
    fn negative_binomial_fits_its_law() {
        for (seed, r, p) in [(1u64, 1u64, 0.3f64), (2, 7, 0.05), (3, 40, 0.35), (4, 4096, 0.3), (5, 300, 0.9)]
        {
            let mut s = Stream::new(seed);
            let ln_pmf = |m: u64| {
                let (m, r) = (m as f64, r as f64);
                ln_factorial(m + r - 1.0) - ln_factorial(r - 1.0) - ln_factorial(m)
                    + m * p.ln()
                    + r * (-p).ln_1p()
            };
            let (chi, df) = chi_square(200_000, || failures(&mut s, r, p), |m| ln_pmf(m).exp());
            assert!(chi < chi_square_bound(df), "r {r} p {p}: chi2 {chi} df {df}");
        }
        let mut s = Stream::new(9);
        assert_eq!(failures(&mut s, 0, 0.5), 0);
        assert_eq!(failures(&mut s, 100, 0.0), 0);
    }
}
