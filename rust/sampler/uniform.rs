//! Uniform classes: P(k) = 1 / range_max, exact integer draws (Lemire's multiply-and-reject).

use super::{check_range, Distribution};
use crate::error::Result;
use crate::rng::Stream;

/// The uniform law P(k) = 1 / range_max over `0..range_max`.
#[derive(Clone, Debug)]
pub struct Uniform {
    range_max: u64,
}

impl Uniform {
    /// The law over `0..range_max` (1 <= range_max <= 2^62).
    pub fn new(range_max: i64) -> Result<Self> {
        Ok(Uniform { range_max: check_range(range_max)? })
    }
}

impl Distribution for Uniform {
    fn range_max(&self) -> u64 {
        self.range_max
    }

    fn prob(&self, _k: u64) -> f64 {
        1.0 / self.range_max as f64
    }

    fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
        for o in out.iter_mut() {
            *o = stream.below(self.range_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn goodness_of_fit() {
        for range in [1i64, 7, 1000] {
            let d = Uniform::new(range).unwrap();
            let (chi, df) = chi_square(&d, 5, 200_000, 1000);
            assert!(chi < chi_square_bound(df), "range {range}: chi2 {chi}");
        }
    }

    #[test]
    fn huge_range_halves_are_balanced() {
        let d = Uniform::new(1 << 62).unwrap();
        let mut s = Stream::new(9);
        let mut buf = vec![0u64; 100_000];
        d.draw(&mut s, &mut buf);
        let upper = buf.iter().filter(|&&k| k >= 1 << 61).count() as f64;
        // Binomial(1e5, 1/2): 5 standard deviations is 791.
        assert!((upper - 50_000.0).abs() < 791.0, "{upper}");
        assert!(buf.iter().all(|&k| k < 1 << 62));
    }
}
