//! Log-uniform (Zipfian) classes: P(k) = ln((k + 2) / (k + 1)) / ln(range_max + 1), TensorFlow's
//! `LogUniformSampler`. A draw is floor(e^(u ln(range_max + 1))) - 1 for u uniform in [0, 1): the discretised
//! continuous log-uniform law on [1, range_max + 1), whose mass on [k + 1, k + 2) is exactly P(k).

use super::{check_range, refine, Distribution};
use crate::error::Result;
use crate::rng::Stream;
use crate::vmath::{self, simd};
use std::sync::OnceLock;

#[derive(Clone, Debug)]
pub struct LogUniform {
    range_max: u64,
    log_range: f64,
    /// Compute P(k) with TensorFlow's expression `log((k + 2.0) / (k + 1.0)) / log1p(range_max)`, whose
    /// quotient rounds before the logarithm (a relative error near 1e-16 * k), for bit parity with it.
    tf_formula: bool,
    /// e^(a L / POW) for a in 0..POW (L = ln(range_max + 1)): the powers that the draws' table-driven
    /// exponential starts from.
    pow: Box<[f64; POW]>,
}

/// Size of the table of powers: a draw's uniform u = a / POW + f splits into its top bits a and a rest
/// f < 1 / POW, and e^(u L) = pow[a] · e^(f L), where a short series gives e^(f L) to full precision.
const POW_BITS: u32 = 11;
const POW: usize = 1 << POW_BITS;

impl LogUniform {
    pub fn new(range_max: i64) -> Result<Self> {
        let range_max = check_range(range_max)?;
        let log_range = (range_max as f64).ln_1p();
        let mut pow = Box::new([0.0; POW]);
        pow_table(&mut pow, log_range);
        Ok(LogUniform { range_max, log_range, tf_formula: false, pow })
    }

    /// The same distribution, with P(k) computed exactly as TensorFlow's kernel does.
    pub fn tf(range_max: i64) -> Result<Self> {
        Ok(LogUniform { tf_formula: true, ..Self::new(range_max)? })
    }

    fn tf_prob(&self, k: u64) -> f64 {
        ((k as f64 + 2.0) / (k as f64 + 1.0)).ln() / self.log_range
    }

    #[cfg(test)]
    fn tf_prob_fast(&self, k: u64) -> f64 {
        let mut o = [0.0];
        tf_prob_kernel(&[k], &mut o, 1.0 / self.log_range);
        o[0]
    }
}

simd! {
    /// The table of powers e^(a L / POW): vectorised, since the TensorFlow drop-ins build a sampler per call.
    fn pow_table(pow: &mut [f64; POW], log_range: f64) {
        for (a, p) in pow.iter_mut().enumerate() {
            *p = vmath::exp(a as f64 * (1.0 / POW as f64) * log_range);
        }
    }
}

/// ln(1 + 1/(k+1)) for the most frequent ids, where the series below would need many terms.
const HEAD: usize = 1 << 11;

fn head_table() -> &'static [f64; HEAD] {
    static TABLE: OnceLock<Box<[f64; HEAD]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0.0; HEAD]);
        for (k, v) in t.iter_mut().enumerate() {
            *v = (1.0 / (k as f64 + 1.0)).ln_1p();
        }
        t
    })
}

/// `k` as a double (correctly rounded), in operations that vectorise without AVX-512.
#[inline(always)]
fn u64_to_f64(k: u64) -> f64 {
    const TWO52: f64 = 4_503_599_627_370_496.0;
    let hi = f64::from_bits((k >> 32) | 0x4330_0000_0000_0000) - TWO52;
    let lo = f64::from_bits((k & 0xffff_ffff) | 0x4330_0000_0000_0000) - TWO52;
    hi * 4_294_967_296.0 + lo
}

simd! {
    /// P(k) = ln(1 + x) / ln(range_max + 1) with x = 1/(k+1): a table for k < 2^11 (16 KiB, stays in the
    /// first-level cache), beyond it the series x - x²/2 + ... + x⁵/5 (x < 2^-11, so the first omitted term
    /// is below 1e-17 relative).
    fn prob_kernel(ids: &[u64], out: &mut [f64], inv_log_range: f64, head: &[f64; HEAD]) {
        for (o, &k) in out.iter_mut().zip(ids) {
            let x = 1.0 / (u64_to_f64(k) + 1.0);
            let mut c: f64 = 0.2;
            for k in [0.25, 1.0 / 3.0, 0.5, 1.0] {
                c = c.mul_add(-x, k);
            }
            let series = x * c;
            let table = head[k.min(HEAD as u64 - 1) as usize];
            *o = if k < HEAD as u64 { table } else { series } * inv_log_range;
        }
    }
}

/// Ranges below this draw through 32-bit conversions, which vectorise.
const SMALL_RANGE: u64 = 1 << 30;

simd! {
    /// P(k) with TensorFlow's expression ln((k + 2) / (k + 1)) / ln(range_max + 1) (see `tf_formula`).
    fn tf_prob_kernel(ids: &[u64], out: &mut [f64], inv_log_range: f64) {
        for (o, &k) in out.iter_mut().zip(ids) {
            let kf = u64_to_f64(k);
            *o = vmath::ln((kf + 2.0) / (kf + 1.0)) * inv_log_range;
        }
    }
}

/// e^(u L) for the 52-bit uniform u of the word `w` (the value `unit_f64(w)`): u = a / POW + f with a the top
/// POW_BITS bits, so e^(u L) = pow[a] · e^(f L), f L < L / 2^11 <= 0.022, and the series of e^(f L) to the
/// degree 7 is exact to 1e-18. Relative error a few 1e-16, as the direct exponential.
#[inline(always)]
fn pow_exp(w: u64, pow: &[f64; POW], log_range: f64) -> f64 {
    const REST: u64 = (1 << (52 - POW_BITS)) - 1;
    let head = pow[(w >> (64 - POW_BITS)) as usize];
    let f = f64::from_bits(((w >> 12) & REST) | 0x3ff0_0000_0000_0000) - 1.0;
    let x = f * log_range;
    // Estrin's scheme with fused multiply-adds (exact in every kernel: without hardware FMA, `mul_add` is
    // the correctly rounded software fma, so all kernels still agree to the bit).
    let x2 = x * x;
    let x4 = x2 * x2;
    let lo = x2.mul_add(x.mul_add(1.0 / 6.0, 0.5), x + 1.0);
    let hi = x2.mul_add(x.mul_add(1.0 / 5040.0, 1.0 / 720.0), x.mul_add(1.0 / 120.0, 1.0 / 24.0));
    let e = x4.mul_add(hi, lo);
    head * e
}

simd! {
    /// Draws for ranges below 2^30: id = trunc(e^(u L)) - 1, clamped to the last id.
    fn draw_small_kernel(words: &[u64], out: &mut [u64], pow: &[f64; POW], log_range: f64, last: i64) {
        for (o, &w) in out.iter_mut().zip(words) {
            // e^(u L) < 2^30 + 1 (up to rounding), so the clamp keeps v finite and in [1, 2e9].
            let v = pow_exp(w, pow, log_range).clamp(1.0, 2_000_000_000.0);
            // SAFETY: v is finite and within [1, 2e9], inside i32's range, so the unchecked conversion
            // (a single truncating instruction, unlike the saturating `as`) is defined.
            let t = unsafe { v.to_int_unchecked::<i32>() };
            *o = (t as i64 - 1).min(last) as u64;
        }
    }
}

simd! {
    /// The continuous log-uniform value e^(u L) in [1, range_max + 1), for huge ranges.
    fn draw_kernel(words: &[u64], out: &mut [f64], pow: &[f64; POW], log_range: f64) {
        for (o, &w) in out.iter_mut().zip(words) {
            *o = pow_exp(w, pow, log_range);
        }
    }
}

impl Distribution for LogUniform {
    fn range_max(&self) -> u64 {
        self.range_max
    }

    fn prob(&self, k: u64) -> f64 {
        if self.tf_formula {
            return self.tf_prob(k);
        }
        (1.0 / (k as f64 + 1.0)).ln_1p() / self.log_range
    }

    fn prob_into(&self, ids: &[u64], out: &mut [f64]) {
        if self.tf_formula {
            tf_prob_kernel(ids, out, 1.0 / self.log_range)
        } else {
            prob_kernel(ids, out, 1.0 / self.log_range, head_table())
        }
    }

    fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
        const BLOCK: usize = 512;
        let mut words = [0u64; BLOCK];
        let last = self.range_max - 1;
        if self.range_max < SMALL_RANGE {
            for piece in out.chunks_mut(BLOCK) {
                let n = piece.len();
                stream.fill_u64(&mut words[..n]);
                draw_small_kernel(&words[..n], piece, &self.pow, self.log_range, last as i64);
            }
            return;
        }
        let mut vals = [0f64; BLOCK];
        for piece in out.chunks_mut(BLOCK) {
            let n = piece.len();
            stream.fill_u64(&mut words[..n]);
            draw_kernel(&words[..n], &mut vals[..n], &self.pow, self.log_range);
            for (o, &v) in piece.iter_mut().zip(&vals[..n]) {
                // u has 52 bits, so v = e^(u L) stands for the cell [v, v e^(L 2^-52)).
                let width = v * self.log_range * f64::EPSILON / 2.0;
                // v >= 1, so the id is >= 0; rounding at the very top may reach range_max: clamp it.
                *o = (refine(v, width, stream).max(1) - 1).min(last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn probabilities_sum_to_one() {
        let d = LogUniform::new(1000).unwrap();
        let total: f64 = (0..1000).map(|k| d.prob(k)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        // The vectorised path (table, then series) agrees with the direct formula everywhere.
        let d = LogUniform::new(1 << 62).unwrap();
        let mut ids: Vec<u64> = (0..70_000).collect();
        ids.extend([1 << 20, (1 << 32) + 7, 1 << 52, (1 << 53) + 1, (1 << 62) - 1]);
        let mut fast = vec![0.0; ids.len()];
        d.prob_into(&ids, &mut fast);
        for (&k, &f) in ids.iter().zip(&fast) {
            assert!((f - d.prob(k)).abs() <= 1e-15 * d.prob(k), "k={k}");
        }
    }

    #[test]
    fn goodness_of_fit_small_and_large_ranges() {
        for (range, bins) in [(10i64, 10u64), (1000, 1000), (100_000_000, 2000), (1 << 62, 2000)] {
            let d = LogUniform::new(range).unwrap();
            let (chi, df) = chi_square(&d, 11, 400_000, bins);
            assert!(chi < chi_square_bound(df), "range {range}: chi2 {chi} df {df}");
        }
    }

    #[test]
    fn tensorflow_expression_in_float32() {
        let d = LogUniform::tf(1 << 40).unwrap();
        for k in (0..2000u64).chain((0..2000).map(|i| i * 549_755_813 + 12_345)) {
            assert_eq!(d.tf_prob_fast(k) as f32, d.tf_prob(k) as f32, "k={k}");
        }
    }

    #[test]
    fn goodness_of_fit_over_octaves() {
        for range in [1u64 << 62, 1 << 40, 100_000_000, (1 << 30) - 1, 1 << 30] {
            let d = LogUniform::new(range as i64).unwrap();
            let mut edges: Vec<u64> = (0..63).map(|j| (1u64 << j) - 1).take_while(|&e| e < range).collect();
            edges.push(range);
            let l = (range as f64).ln_1p();
            let mass = |lo: u64, hi: u64| ((hi as f64 + 1.0) / (lo as f64 + 1.0)).ln() / l;
            let (chi, df) = chi_square_edges(&d, 29, 300_000, &edges, mass);
            assert!(chi < chi_square_bound(df), "range {range}: chi2 {chi} df {df}");
        }
    }

    #[test]
    fn the_top_of_a_huge_range_is_reached_and_never_exceeded() {
        let d = LogUniform::new(1 << 62).unwrap();
        let mut s = Stream::new(3);
        let mut buf = vec![0u64; 100_000];
        d.draw(&mut s, &mut buf);
        assert!(buf.iter().all(|&k| k < 1 << 62));
        // P(k >= 2^61) = ln((2^62+1)/(2^61+1)) / ln(2^62+1) ≈ 1/62.
        let top = buf.iter().filter(|&&k| k >= 1 << 61).count();
        assert!((1000..2300).contains(&top), "{top}");
        // Low bits of huge draws are not stuck at zero.
        assert!(buf.iter().filter(|&&k| k >= 1 << 61).any(|&k| k & 1 == 1));
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(LogUniform::new(0).is_err());
        assert!(LogUniform::new(-5).is_err());
        assert!(LogUniform::new(i64::MAX).is_err());
        assert!(LogUniform::new(1).is_ok());
    }
}
