//! Expected counts: how many times a sampling procedure is expected to draw each class, the correction
//! (logQ) that sampled losses subtract.
//!
//! As TensorFlow defines them (docs/API.md): with `num_tries == num_sampled` (always so without `unique`) the count
//! is `P(k) * num_sampled`; otherwise `-expm1(num_tries * log1p(-P(k)))`, the probability that k turned up in
//! `num_tries` draws. Like TensorFlow, P(k) is rounded to float32 first. With avoided classes, sampled ids use
//! P renormalised over the rest, P(k) / (1 - Σ_avoided P): the caller passes that factor as `scale`.

use super::Distribution;
use crate::buf::zeroed;
use crate::error::{Error, Result};
use crate::simd::dispatch as simd;
use crate::vmath;

/// Below this scaled P, [`count_exponents`] takes ln(1 - q) from its series to the degree 6
/// (`Counts::Series`); up to LONG_SERIES_MAX to the degree 12 (`Counts::LongSeries`); above, the exact
/// logarithm (`Counts::Mixed`). The middle tier spares the heads of Zipfian laws the logarithm: P(0) of a
/// log-uniform over 10^6 classes is 0.05.
const SERIES_MAX: f64 = 1.0 / 128.0;
const LONG_SERIES_MAX: f64 = 1.0 / 16.0;

/// How `count_exponents` computes, by the largest scaled P of a block.
#[derive(Clone, Copy, PartialEq)]
enum Counts {
    /// Every scaled P below SERIES_MAX.
    Series,
    /// Every scaled P below LONG_SERIES_MAX.
    LongSeries,
    /// Some scaled P at or above LONG_SERIES_MAX: those take the exact logarithm, the others the long series.
    Mixed,
}

simd! {
    /// The exponent of the expected count of each probability (see the module doc): in the unique case
    /// the count is 1 - e^x with x = num_tries ln(1 - q), q = P scale rounded to float32 as TensorFlow
    /// does. -ln(1 - q) = q (1 + q/2 + q²/3 + ...): to q⁶/7 for q < 2^-7 and to q¹²/13 for q < 2^-4 (the
    /// first omitted term below 2^-55 relative in both); larger q (only with `Counts::Mixed`) use the
    /// logarithm of 1 - q, which is exact in float64 there (q is a float32 value).
    fn count_exponents(p: &[f64], x: &mut [f64], scale: f64, num_tries: f64, how: Counts) {
        crate::simd::map_blocks::<8, _, _>(p, x, |q| {
            let q = ((q * scale) as f32) as f64;
            // c = 1 + q/2 + q²/3 + ..., by Estrin's scheme (short dependency chains).
            let q2 = q * q;
            let q4 = q2 * q2;
            // Separate multiplies and adds (no FMA), so that CPUs without one compute the same bits fast.
            let lo = q2 * (q * 0.25 + 1.0 / 3.0) + (q * 0.5 + 1.0);
            let hi = q2 * (1.0 / 7.0) + (q * (1.0 / 6.0) + 0.2);
            let c = if how == Counts::Series {
                q4 * hi + lo
            } else {
                // Terms q⁶/7 .. q¹²/13 as q⁴ (q²/7 + q³/8 + ...) added to the degree-5 part.
                let a = q2 * (q * (1.0 / 10.0) + 1.0 / 9.0) + (q * (1.0 / 8.0) + 1.0 / 7.0);
                let b = q2 * (1.0 / 13.0) + (q * (1.0 / 12.0) + 1.0 / 11.0);
                let up = q4 * b + a;
                let mid = q * (1.0 / 6.0) + 0.2;
                q4 * (q2 * up + mid) + lo
            };
            let mut l = -(q * c);
            if how == Counts::Mixed {
                // q = 1 (all the mass in one class) is certain to be drawn: ln(0) = -inf gives 1 - e^x = 1.
                let exact = if q >= 1.0 { f64::NEG_INFINITY } else { vmath::ln(1.0 - q) };
                l = if q >= LONG_SERIES_MAX { exact } else { l };
            }
            num_tries * l
        })
    }
}

simd! {
    /// Expected counts of draws with replacement (or no rejection): P scale, rounded to float32, times
    /// num_sampled, as TensorFlow computes them.
    fn plain_counts(p: &[f64], out: &mut [f32], scale: f64, num_sampled: f32) {
        for (o, &q) in out.iter_mut().zip(p) {
            *o = ((q * scale) as f32) * num_sampled;
        }
    }
}

simd! {
    /// The largest of non-negative numbers, through their bit patterns (which order them the same way), so
    /// that the loop vectorises.
    fn max_bits(p: &[f64]) -> u64 {
        p.iter().map(|q| q.to_bits()).fold(0, u64::max)
    }
}

/// The expected counts of `ids` (validated) after a draw of `num_sampled` candidates that took `num_tries`
/// draws, with P scaled by `scale`.
pub fn expected_counts(
    dist: &dyn Distribution,
    ids: &[u64],
    num_sampled: u64,
    num_tries: u64,
    scale: f64,
    out: &mut [f32],
) {
    const BLOCK: usize = 256;
    let mut p = [0f64; BLOCK];
    let mut x = [0f64; BLOCK];
    // Below these unscaled P, P * scale is below SERIES_MAX / LONG_SERIES_MAX (with room for rounding).
    let small = SERIES_MAX / scale * (1.0 - 1e-9);
    let medium = LONG_SERIES_MAX / scale * (1.0 - 1e-9);
    for (idc, oc) in ids.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        let p = &mut p[..idc.len()];
        dist.prob_into(idc, p);
        if num_tries == num_sampled {
            plain_counts(p, oc, scale, num_sampled as f32);
            continue;
        }
        let largest = f64::from_bits(max_bits(p));
        let how = if largest < small {
            Counts::Series
        } else if largest < medium {
            Counts::LongSeries
        } else {
            Counts::Mixed
        };
        let x = &mut x[..idc.len()];
        count_exponents(p, x, scale, num_tries as f64, how);
        vmath::one_minus_exp_into(x, oc);
    }
}

/// Expected counts of `ids` for a draw of `num_sampled` candidates that took `num_tries` draws
/// (`num_tries == num_sampled` for draws with replacement, or without but with no rejection).
pub fn expected_counts_for(
    dist: &dyn Distribution,
    ids: &[i64],
    num_sampled: i64,
    num_tries: i64,
) -> Result<Vec<f32>> {
    let n = super::check_num_sampled(num_sampled)?;
    if num_tries < num_sampled {
        return Err(Error::value(
            "num_tries",
            format!("must be >= num_sampled ({num_sampled}), got {num_tries}"),
        ));
    }
    let ids = super::check_ids("ids", ids, dist.range_max())?;
    let mut out: Vec<f32> = zeroed("ids", ids.len())?;
    expected_counts(dist, ids, n as u64, num_tries as u64, 1.0, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{sample, LogUniform};

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i64 - b.to_bits() as i64).abs()
    }

    #[test]
    fn every_tier_of_the_counts_matches_the_formula() {
        // Blocks whose largest P is below 2^-7 (short series), below 2^-4 (long series) or above (exact
        // logarithm for those): each must give -expm1(t log1p(-q)) to the float32 ulp.
        for range in [20i64, 1000, 10_000, 1_000_000, 1 << 40] {
            let d = LogUniform::new(range).unwrap();
            let head: Vec<i64> = (0..300.min(range)).collect();
            let tail: Vec<i64> = (0..300).map(|i| range / 2 + i).filter(|&k| k < range).collect();
            for ids in [&head, &tail] {
                for tries in [301i64, 5000, 1 << 20] {
                    let got = expected_counts_for(&d, ids, 300, tries).unwrap();
                    for (&k, &e) in ids.iter().zip(&got) {
                        let q = (d.prob(k as u64) as f32) as f64;
                        let want = -(tries as f64 * (-q).ln_1p()).exp_m1() as f32;
                        assert!(ulps(e, want) <= 1, "range {range} k={k} tries {tries}: {e} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn expected_counts_follow_the_formulas() {
        let d = LogUniform::new(1000).unwrap();
        let truth = [0i64, 5, 100, 999];
        let s = sample(&d, 4, 64, true, Some(&truth), false).unwrap();
        let n = s.num_tries as f64;
        for (&k, &e) in
            s.ids.iter().zip(&s.sampled_expected).chain(truth.iter().zip(s.true_expected.as_ref().unwrap()))
        {
            let p = (d.prob(k as u64) as f32) as f64;
            let want = -(n * (-p).ln_1p()).exp_m1() as f32;
            assert!(ulps(e, want) <= 1, "k={k}: {e} vs {want}");
        }
        // Without replacement but no rejection, and with replacement: P rounded to float32, times S.
        let s = sample(&d, 4, 2, true, Some(&truth), false).unwrap();
        if s.num_tries == 2 {
            assert_eq!(s.true_expected.as_ref().unwrap()[0], (d.prob(0) as f32) * 2.0);
        }
        let s = sample(&d, 4, 6, false, Some(&truth), false).unwrap();
        for (&k, &e) in truth.iter().zip(s.true_expected.as_ref().unwrap()) {
            assert_eq!(e, (d.prob(k as u64) as f32) * 6.0);
        }
    }
}
