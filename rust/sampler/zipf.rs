//! Exact Zipf classes: P(k) ∝ (k + 1)^-s over k in 0..range_max, for any exponent s > 0 and any range up to
//! 2^62, with no table. Draws use rejection-inversion (Hörmann & Derflinger 1996): invert the integral of a
//! continuous hat function that dominates the mass of every rank, accept or reject against the exact
//! mass; acceptance is above 90% for every s. The normalising constant H(N, s) = Σ_{n=1}^{N} n^-s is an exact
//! sum of the first terms plus Euler–Maclaurin for the tail, good to ~1e-15 relative.
//!
//! Each rank k >= 2 owns the stretch [H(k - 1/2), H(k + 1/2)] of the hat's integral H, inside which its
//! acceptance region lies; so uniforms taken from [H(m + 1/2), H(N + 1/2)] alone give the law conditioned
//! on ranks above m, with the same acceptance test (`draw_above`).

use super::{check_range, refine, Distribution};
use crate::error::{Error, Result};
use crate::rng::Stream;
use crate::simd::dispatch as simd;
use crate::vmath::{self, u64_to_f64};

/// The Zipf law P(k) = (k + 1)^-s / H(range_max, s) over `0..range_max`, drawn by rejection-inversion.
#[derive(Clone, Debug)]
pub struct Zipf {
    range_max: u64,
    n: f64,
    s: f64,
    /// ln of the normalising constant H(N, s).
    ln_norm: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    /// A draw x whose rank k satisfies k - x <= this is accepted without computing the exact test.
    quick_accept: f64,
    /// Below this x, the cell a 52-bit uniform stands for is narrower than 2^-10 of a rank whatever the
    /// span drawn from (see `draw_rank`), so `refine` needs no cell width.
    narrow_below: f64,
}

/// log1p(x) / x, continuous at 0.
fn log1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// expm1(x) / x, continuous at 0.
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

impl Zipf {
    /// The law over `0..range_max` (1 <= range_max <= 2^62) with exponent s = `exponent` > 0.
    pub fn new(range_max: i64, exponent: f64) -> Result<Self> {
        let range_max = check_range(range_max)?;
        if !exponent.is_finite() || exponent <= 0.0 {
            return Err(Error::value("exponent", format!("must be positive and finite, got {exponent}")));
        }
        let mut z = Zipf {
            range_max,
            n: range_max as f64,
            s: exponent,
            ln_norm: 0.0,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            quick_accept: 0.0,
            narrow_below: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(z.n + 0.5);
        z.quick_accept = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z.ln_norm = harmonic(range_max, exponent).ln();
        // The cell is du / h(x) = du x^s with du at most that of the whole span: below 2^-10 while
        // x < (2^-10 / du)^(1/s); half that bound leaves room for rounding.
        let du = z.span_cell(z.h_integral_x1);
        z.narrow_below = if du > 0.0 { 0.5 * (1.0 / (1024.0 * du)).powf(1.0 / z.s) } else { f64::INFINITY };
        Ok(z)
    }

    /// The width in u of the cell a 52-bit uniform stands for, drawing u between H(N + 1/2) and `top`.
    fn span_cell(&self, top: f64) -> f64 {
        (top - self.h_integral_n).abs() * f64::EPSILON / 2.0
    }

    /// The end of the span of u for ranks above `m`: H(m + 1/2), or H(3/2) - 1 for the whole range.
    fn span_top(&self, m: u64) -> f64 {
        if m == 0 {
            self.h_integral_x1
        } else {
            self.h_integral(m as f64 + 0.5)
        }
    }

    /// The hat density at x: x^-s.
    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// (x^(1-s) - 1) / (1 - s), an antiderivative of h, stable at s = 1.
    fn h_integral(&self, x: f64) -> f64 {
        let lx = x.ln();
        expm1_over_x((1.0 - self.s) * lx) * lx
    }

    fn h_integral_inverse(&self, y: f64) -> f64 {
        let t = (y * (1.0 - self.s)).max(-1.0);
        (log1p_over_x(t) * y).exp()
    }

    /// ∫_x^(x+d) t^-s dt for d >= 0, without the cancellation of H(x + d) - H(x) when x is large.
    fn h_integral_span(&self, x: f64, d: f64) -> f64 {
        let l = (d / x).ln_1p();
        (x.ln() * (1.0 - self.s)).exp() * l * expm1_over_x((1.0 - self.s) * l)
    }

    /// One rank in first..=N, drawing u between H(N + 1/2) and `top = span_top(first - 1)`.
    fn draw_rank(&self, stream: &mut Stream, top: f64, first: u64) -> u64 {
        let du = self.span_cell(top);
        loop {
            let u = self.h_integral_n + stream.next_f64() * (top - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(first as f64, self.n);
            // Accept when the hat's mass between x and k + 1/2 is at most the rank's own mass h(k),
            // i.e. u >= H(k + 1/2) - h(k), evaluated without cancellation.
            let d = (k + 0.5) - x;
            if k - x <= self.quick_accept || d <= 0.0 || self.h_integral_span(x, d) <= self.h(k) {
                // u has 52 bits: x stands for a cell of width du / h(x) (see `refine`), which covers
                // several ranks in the far tail of huge ranges; below `narrow_below` it is known to be
                // narrow, which spares computing h(x).
                let cell = if x < self.narrow_below { 0.0 } else { du / self.h(x) };
                return refine(x + 0.5, cell, stream).clamp(first, self.range_max);
            }
        }
    }
}

/// P(k) = e^(-s ln(k + 1) - ln H(N, s)), in code that vectorises (the same bits in every kernel). Exponents
/// below -708, where `vmath::exp` clamps, are raised by 708 and the result scaled back by e^-708, so that
/// probabilities fade into subnormals and 0 as the library's exponential does.
#[inline(always)]
fn prob_of(k: u64, s: f64, ln_norm: f64) -> f64 {
    const E_MINUS_708: f64 = 3.307_553_003_638_408_4e-308;
    let y = -s * vmath::ln(u64_to_f64(k) + 1.0) - ln_norm;
    let tiny = y < -708.0;
    let e = vmath::exp(if tiny { y + 708.0 } else { y });
    if tiny {
        e * E_MINUS_708
    } else {
        e
    }
}

simd! {
    /// P(k) of each id.
    fn prob_kernel(ids: &[u64], out: &mut [f64], s: f64, ln_norm: f64) {
        for (o, &k) in out.iter_mut().zip(ids) {
            *o = prob_of(k, s, ln_norm);
        }
    }
}

/// H(N, s) = Σ_{n=1}^{N} n^-s.
pub fn harmonic(n: u64, s: f64) -> f64 {
    const HEAD: u64 = 1000;
    let m = n.min(HEAD);
    // Smallest terms first.
    let mut sum: f64 = (1..=m).rev().map(|k| (-s * (k as f64).ln()).exp()).sum();
    if n > HEAD {
        // Euler–Maclaurin for Σ_{n=a}^{b} f(n), f(x) = x^-s, a = HEAD + 1, b = N:
        // ∫_a^b f + (f(a) + f(b)) / 2 + Σ_j B_2j / (2j)! (f^(2j-1)(b) - f^(2j-1)(a)).
        let a = (HEAD + 1) as f64;
        let b = n as f64;
        let lab = (b / a).ln();
        let integral = (-s * a.ln()).exp() * a * lab * expm1_over_x((1.0 - s) * lab);
        let f = |x: f64| (-s * x.ln()).exp();
        // Odd derivatives: f'(x) = -s x^(-s-1), f'''(x) = -s(s+1)(s+2) x^(-s-3), f^(5) likewise.
        let d1 = |x: f64| -s * f(x) / x;
        let d3 = |x: f64| -s * (s + 1.0) * (s + 2.0) * f(x) / (x * x * x);
        let d5 = |x: f64| -s * (s + 1.0) * (s + 2.0) * (s + 3.0) * (s + 4.0) * f(x) / x.powi(5);
        let tail = integral + 0.5 * (f(a) + f(b)) + (d1(b) - d1(a)) / 12.0 - (d3(b) - d3(a)) / 720.0
            + (d5(b) - d5(a)) / 30240.0;
        sum += tail;
    }
    sum
}

impl Distribution for Zipf {
    fn range_max(&self) -> u64 {
        self.range_max
    }

    fn prob(&self, k: u64) -> f64 {
        prob_of(k, self.s, self.ln_norm)
    }

    fn prob_into(&self, ids: &[u64], out: &mut [f64]) {
        prob_kernel(ids, out, self.s, self.ln_norm)
    }

    fn head_mass(&self, h: u64) -> Option<f64> {
        let h = h.min(self.range_max);
        Some(if h == 0 { 0.0 } else { (harmonic(h, self.s).ln() - self.ln_norm).exp().min(1.0) })
    }

    fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
        self.draw_above(stream, out, 0)
    }

    fn draw_above(&self, stream: &mut Stream, out: &mut [u64], from: u64) {
        // Ids from `from` on are ranks from from + 1 on.
        let from = from.min(self.range_max - 1);
        let top = self.span_top(from);
        for o in out.iter_mut() {
            *o = self.draw_rank(stream, top, from + 1) - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn harmonic_numbers() {
        // H(N, 1) = ln N + γ + 1/(2N) - 1/(12 N^2) + ...
        let n = 10_000_000u64;
        let nf = n as f64;
        let expect = nf.ln() + 0.577_215_664_901_532_9 + 0.5 / nf - 1.0 / (12.0 * nf * nf);
        assert!((harmonic(n, 1.0) / expect - 1.0).abs() < 1e-14);
        // ζ(2) = π²/6, and H(N, 2) = ζ(2) - 1/N + 1/(2N²) - ...
        let expect = std::f64::consts::PI.powi(2) / 6.0 - 1.0 / nf + 0.5 / (nf * nf);
        assert!((harmonic(n, 2.0) / expect - 1.0).abs() < 1e-14);
        // Direct sums agree with Euler–Maclaurin across the switch-over, for several exponents.
        for s in [0.3, 0.999_999, 1.0, 1.000_001, 1.7, 4.0] {
            let direct: f64 = (1..=5000u64).rev().map(|k| (k as f64).powf(-s)).sum();
            assert!((harmonic(5000, s) / direct - 1.0).abs() < 1e-13, "s={s}");
        }
    }

    #[test]
    fn probabilities_sum_to_one() {
        for s in [0.5, 1.0, 2.5] {
            let d = Zipf::new(20_000, s).unwrap();
            let total: f64 = (0..20_000).rev().map(|k| d.prob(k)).sum();
            assert!((total - 1.0).abs() < 1e-12, "s={s}: {total}");
        }
    }

    #[test]
    fn goodness_of_fit() {
        for (range, s) in
            [(10i64, 1.0), (1000, 0.5), (1000, 1.0), (100_000_000, 1.1), (1 << 62, 0.8), (50, 7.0)]
        {
            let d = Zipf::new(range, s).unwrap();
            let (chi, df) = chi_square(&d, 17, 300_000, 1000);
            assert!(chi < chi_square_bound(df), "range {range} s {s}: chi2 {chi} df {df}");
        }
    }

    #[test]
    fn probabilities_agree_with_the_library_exponential() {
        // The vectorised P(k) against exp/ln of the standard library: within the rounding of the exponent,
        // and the same underflow into subnormals and 0 for steep laws.
        let ids: Vec<u64> = (0..5000u64).chain([1 << 20, 1 << 40, (1 << 62) - 1]).collect();
        for (range, s) in
            [(1i64 << 62, 0.8), (1_000_000_000, 1.1), (1000, 0.5), (1_000_000_000, 50.0), (10, 1e300)]
        {
            let d = Zipf::new(range, s).unwrap();
            let valid: Vec<u64> = ids.iter().copied().filter(|&k| k < range as u64).collect();
            let mut fast = vec![0.0; valid.len()];
            d.prob_into(&valid, &mut fast);
            for (&k, &p) in valid.iter().zip(&fast) {
                let want = (-s * (k as f64 + 1.0).ln() - d.ln_norm).exp();
                assert_eq!(p, d.prob(k), "range {range} s {s} k {k}");
                if want >= f64::MIN_POSITIVE {
                    // An ulp or two of the exponent y = ln P (|y| up to ~1000 for steep laws) scales into P.
                    let tol = (2.0 + want.ln().abs()) * 4e-16;
                    assert!((p - want).abs() <= tol * want, "range {range} s {s} k {k}: {p} vs {want}");
                } else {
                    // Subnormal or zero: within a few of the smallest steps.
                    assert!(
                        (p - want).abs() <= 1e-13 * f64::MIN_POSITIVE,
                        "range {range} s {s} k {k}: {p} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_bad_exponents() {
        assert!(Zipf::new(10, 0.0).is_err());
        assert!(Zipf::new(10, -1.0).is_err());
        assert!(Zipf::new(10, f64::NAN).is_err());
        assert!(Zipf::new(10, f64::INFINITY).is_err());
    }
}
