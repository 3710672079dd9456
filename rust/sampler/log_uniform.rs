//! Log-uniform (Zipfian) classes: P(k) = ln((k + 2) / (k + 1)) / ln(range_max + 1), TensorFlow's
//! `LogUniformSampler`. A draw is floor(e^(u ln(range_max + 1))) - 1 for u uniform in [0, 1): the discretised
//! continuous log-uniform law on [1, range_max + 1), whose mass on [k + 1, k + 2) is exactly P(k).

use super::{check_range, spread_large, Distribution};
use crate::error::Result;
use crate::rng::{unit_f64, Stream};
use crate::vmath::{self, simd};

#[derive(Clone, Debug)]
pub struct LogUniform {
    range_max: u64,
    log_range: f64,
}

impl LogUniform {
    pub fn new(range_max: i64) -> Result<Self> {
        let range_max = check_range(range_max)?;
        Ok(LogUniform {
            range_max,
            log_range: (range_max as f64).ln_1p(),
        })
    }
}

simd! {
    /// P(k) for each id: ln(1 + 1/(k+1)) / ln(range_max + 1).
    fn prob_kernel(ids: &[u64], out: &mut [f64], inv_log_range: f64) {
        for (o, &k) in out.iter_mut().zip(ids) {
            *o = vmath::ln_1p(1.0 / (k as f64 + 1.0)) * inv_log_range;
        }
    }
}

simd! {
    /// Turn raw words into the continuous log-uniform value e^(u L) in [1, range_max + 1).
    fn draw_kernel(words: &[u64], out: &mut [f64], log_range: f64) {
        for (o, &w) in out.iter_mut().zip(words) {
            *o = vmath::exp(unit_f64(w) * log_range);
        }
    }
}

impl Distribution for LogUniform {
    fn range_max(&self) -> u64 {
        self.range_max
    }

    fn prob(&self, k: u64) -> f64 {
        (1.0 / (k as f64 + 1.0)).ln_1p() / self.log_range
    }

    fn prob_into(&self, ids: &[u64], out: &mut [f64]) {
        prob_kernel(ids, out, 1.0 / self.log_range)
    }

    fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
        const BLOCK: usize = 512;
        let mut words = [0u64; BLOCK];
        let mut vals = [0f64; BLOCK];
        let last = self.range_max - 1;
        for piece in out.chunks_mut(BLOCK) {
            let n = piece.len();
            stream.fill_u64(&mut words[..n]);
            draw_kernel(&words[..n], &mut vals[..n], self.log_range);
            for (o, &v) in piece.iter_mut().zip(&vals[..n]) {
                // v >= 1, so the id is >= 0; rounding at the very top may reach range_max: clamp it.
                *o = (spread_large(v, stream) - 1).min(last);
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
        let ids: Vec<u64> = (0..1000).collect();
        let mut fast = vec![0.0; 1000];
        d.prob_into(&ids, &mut fast);
        for k in 0..1000 {
            assert!((fast[k] - d.prob(k as u64)).abs() <= 1e-15 * d.prob(k as u64));
        }
    }

    #[test]
    fn goodness_of_fit_small_and_large_ranges() {
        for (range, bins) in [
            (10i64, 10u64),
            (1000, 1000),
            (100_000_000, 2000),
            (1 << 62, 2000),
        ] {
            let d = LogUniform::new(range).unwrap();
            let (chi, df) = chi_square(&d, 11, 400_000, bins);
            assert!(
                chi < chi_square_bound(df),
                "range {range}: chi2 {chi} df {df}"
            );
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
