//! Candidate distributions over class ids `0..range_max`, one file each, and the sampling machinery
//! shared by all of them, a job per file:
//! - `candidates.rs`: the entry points, [`sample`] (one set for the batch) and [`sample_per_row`];
//! - `draw.rs`: the draw loop (chunked streams, with or without replacement, avoided classes, `num_tries`);
//! - `dedup.rs`: the membership sets that make draws unique, and [`ByteScan`];
//! - `counts.rs`: expected counts ([`expected_counts`]);
//! - `keys.rs`: how seeds become the keys of the streams ([`Keys`]);
//! - `negbin.rs`: the negative binomial counts of the draws a unique sample skips.

mod candidates;
mod counts;
mod dedup;
mod draw;
pub mod keys;
pub mod learned;
pub mod log_uniform;
mod negbin;
pub mod uniform;
pub mod unigram;
pub mod zipf;

pub use candidates::{sample, sample_per_row, PerRowSample, Sample};
pub use counts::{expected_counts, expected_counts_for};
pub use dedup::ByteScan;
pub use draw::MAX_TRIES;
pub use keys::{stateless_key, KeyState, Keys};
pub use learned::Learned;
pub use log_uniform::LogUniform;
pub use uniform::Uniform;
pub use unigram::Unigram;
pub use zipf::Zipf;

use crate::error::{Error, Result};
use crate::rng::Stream;

/// The largest `range_max` the samplers accept: ids must fit an int64 with room to spare.
pub const MAX_RANGE: u64 = 1 << 62;
/// The most candidates one call may ask for.
pub const MAX_SAMPLED: u64 = 1 << 36;

/// A distribution over the class ids `0..range_max()`.
pub trait Distribution: Send + Sync {
    /// The number of classes: ids lie in `0..range_max()`.
    fn range_max(&self) -> u64;

    /// The number of ids with non-zero probability (all of them unless the distribution says otherwise).
    fn support_size(&self) -> u64 {
        self.range_max()
    }

    /// P(k) for `k < range_max()`.
    fn prob(&self, k: u64) -> f64;

    /// P(k) for each id in `ids` (all `< range_max()`), into `out`. Override to vectorise.
    fn prob_into(&self, ids: &[u64], out: &mut [f64]) {
        for (o, &k) in out.iter_mut().zip(ids) {
            *o = self.prob(k);
        }
    }

    /// Fill `out` with independent draws, consuming words of `stream`.
    fn draw(&self, stream: &mut Stream, out: &mut [u64]);

    /// P(k < h), for a distribution that can draw from the ids at or above `h` alone (`draw_above`); None
    /// (the default) otherwise. A unique draw that has collected every id below h uses it to skip the draws
    /// that would land there (each would be rejected) and count them instead (see `draw.rs`).
    fn head_mass(&self, h: u64) -> Option<f64> {
        let _ = h;
        None
    }

    /// Fill `out` with independent draws of the law conditioned on k >= `from` (P(k) / (1 - P(k < from)) for
    /// k >= from), for `from < range_max()` where `head_mass` is Some; `from = 0` is `draw`. The default, for
    /// distributions without `head_mass`, serves only `from = 0`.
    fn draw_above(&self, stream: &mut Stream, out: &mut [u64], from: u64) {
        debug_assert_eq!(from, 0, "draw_above needs head_mass");
        self.draw(stream, out)
    }

    /// Draw `len` ids from `stream` as `draw_above(.., from)` would and de-duplicate them as they come: the
    /// same result as `scan.scan(&ids)` of those draws, in one pass (it saves a trip through memory, and the
    /// draws' arithmetic overlaps the scan's loads and stores; [`ByteScan`] says what a kernel may do with
    /// the scan). Returns (new ids, draws used), or None, having drawn nothing, when the distribution has no
    /// such kernel for these arguments. Where the scan stops early, the stream is left at an unspecified
    /// position.
    fn draw_scan(
        &self,
        stream: &mut Stream,
        len: usize,
        from: u64,
        scan: &mut ByteScan<'_>,
    ) -> Option<(usize, usize)> {
        let _ = (stream, len, from, scan);
        None
    }
}

/// Check that `range_max` is a usable number of classes.
pub fn check_range(range_max: i64) -> Result<u64> {
    if range_max <= 0 {
        return Err(Error::value("range_max", format!("must be positive, got {range_max}")));
    }
    if range_max as u64 > MAX_RANGE {
        return Err(Error::value("range_max", format!("must be at most 2^62, got {range_max}")));
    }
    Ok(range_max as u64)
}

/// Check that every id lies in `0..range_max` and return them as unsigned (the same memory, reinterpreted).
pub fn check_ids<'a>(arg: &'static str, ids: &'a [i64], range_max: u64) -> Result<&'a [u64]> {
    // A negative id is a huge unsigned one, so one comparison catches both; the fold vectorises.
    let bad = ids.iter().fold(false, |bad, &id| bad | (id as u64 >= range_max));
    if bad {
        let &id = ids.iter().find(|&&id| id as u64 >= range_max).unwrap_or(&-1);
        return Err(Error::IdOutOfRange { arg, id, range_max });
    }
    // SAFETY: i64 and u64 have the same size and alignment and every bit pattern is valid for both; the
    // ids are non-negative (checked above), so each has the same value in both types.
    Ok(unsafe { std::slice::from_raw_parts(ids.as_ptr() as *const u64, ids.len()) })
}

/// Check that `num_sampled` is a usable number of candidates (at most `MAX_SAMPLED`).
fn check_num_sampled(num_sampled: i64) -> Result<usize> {
    if num_sampled < 0 {
        return Err(Error::value("num_sampled", format!("must be >= 0, got {num_sampled}")));
    }
    if num_sampled as u64 > MAX_SAMPLED {
        return Err(Error::too_large("num_sampled", format!("{num_sampled} is more than 2^36")));
    }
    Ok(num_sampled as usize)
}

/// P(k) for each id of `ids`, validated against the distribution's range.
pub fn probability(dist: &dyn Distribution, ids: &[i64]) -> Result<Vec<f64>> {
    let ids = check_ids("ids", ids, dist.range_max())?;
    let mut out = vec![0.0; ids.len()];
    dist.prob_into(ids, &mut out);
    Ok(out)
}

/// `floor(y)` for a point `y` uniform in `[x, x + width)`, exact in integers even where doubles are sparse.
///
/// Draws computed in floating point from a 52-bit uniform sit on a grid: the continuous value they stand for
/// lies somewhere in `[x, x + width)`, where `width` is the grid's spacing there. Where that spacing reaches
/// whole ids (far tails of huge ranges) flooring `x` would leave ids unreachable; placing the point uniformly
/// in its cell (over which the densities here are flat to ~1e-14) reaches them all with the right mass.
/// Cells narrower than 2^-10 of an id are floored directly.
#[inline]
pub(crate) fn refine(x: f64, width: f64, stream: &mut Stream) -> u64 {
    if width < 1.0 / 1024.0 {
        return x as u64;
    }
    let base = x.floor();
    let offset = (x - base) + width * stream.next_f64();
    (base as u64).saturating_add(offset as u64)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::Distribution;
    use crate::rng::Stream;

    /// Pearson's chi-square statistic of `n` draws against P over the first `bins` ids, with the rest of the
    /// range lumped into one more bin. Returns (statistic, degrees of freedom).
    pub fn chi_square(dist: &dyn Distribution, seed: u64, n: usize, bins: u64) -> (f64, usize) {
        let bins = bins.min(dist.range_max());
        let mut edges: Vec<u64> = (0..=bins).collect();
        if bins < dist.range_max() {
            edges.push(dist.range_max());
        }
        let head: f64 = (0..bins).map(|k| dist.prob(k)).sum();
        let mass = |lo: u64, hi: u64| {
            if lo >= bins {
                (1.0 - head).max(0.0)
            } else {
                (lo..hi).map(|k| dist.prob(k)).sum()
            }
        };
        chi_square_edges(dist, seed, n, &edges, mass)
    }

    /// Pearson's chi-square of `n` draws over the bins `[edges[i], edges[i+1])` (edges from 0 to range_max),
    /// with `mass(lo, hi)` the probability of a bin. Adjacent bins are merged until each expects at least 5
    /// draws, as the test requires. Returns (statistic, degrees of freedom).
    pub fn chi_square_edges(
        dist: &dyn Distribution,
        seed: u64,
        n: usize,
        edges: &[u64],
        mass: impl Fn(u64, u64) -> f64,
    ) -> (f64, usize) {
        let mut buf = vec![0u64; n];
        dist.draw(&mut Stream::new(seed), &mut buf);
        buf.sort_unstable();
        assert!(buf.last().is_none_or(|&k| k < dist.range_max()), "draw out of range");
        let count =
            |lo: u64, hi: u64| (buf.partition_point(|&k| k < hi) - buf.partition_point(|&k| k < lo)) as f64;
        let (mut stat, mut cells) = (0.0, 0usize);
        let (mut lo, mut acc_e) = (edges[0], 0.0);
        for w in edges.windows(2) {
            let e = mass(w[0], w[1]) * n as f64;
            if e == 0.0 {
                assert_eq!(count(w[0], w[1]), 0.0, "drew from [{}, {}) of probability 0", w[0], w[1]);
            }
            acc_e += e;
            let last = w[1] == *edges.last().unwrap_or(&0);
            if acc_e >= 5.0 || last {
                let o = count(lo, w[1]);
                if acc_e > 0.0 {
                    stat += (o - acc_e).powi(2) / acc_e;
                    cells += 1;
                }
                lo = w[1];
                acc_e = 0.0;
            }
        }
        (stat, cells.max(2) - 1)
    }

    /// A generous upper quantile of chi-square with `df` degrees of freedom (Wilson–Hilferty, z = 4.75,
    /// p ≈ 1e-6): a correct sampler fails it about once in a million runs.
    pub fn chi_square_bound(df: usize) -> f64 {
        let k = df as f64;
        let z = 4.75;
        k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    /// The law of `inner` conditioned on ids from `from` on, drawn by `draw_above`.
    struct Above<'a> {
        inner: &'a dyn Distribution,
        from: u64,
        tail: f64,
    }

    impl Distribution for Above<'_> {
        fn range_max(&self) -> u64 {
            self.inner.range_max()
        }

        fn prob(&self, k: u64) -> f64 {
            if k < self.from {
                0.0
            } else {
                self.inner.prob(k) / self.tail
            }
        }

        fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
            self.inner.draw_above(stream, out, self.from)
        }
    }

    #[test]
    fn draws_above_a_head_follow_the_conditional_law() {
        let dists: Vec<Box<dyn Distribution>> = vec![
            Box::new(LogUniform::new(1000).unwrap()),
            Box::new(LogUniform::new(1_000_000).unwrap()),
            Box::new(LogUniform::new(1 << 40).unwrap()),
            Box::new(LogUniform::new(1 << 62).unwrap()),
            Box::new(Zipf::new(1000, 1.0).unwrap()),
            Box::new(Zipf::new(1_000_000, 1.1).unwrap()),
            Box::new(Zipf::new(1 << 62, 0.8).unwrap()),
            Box::new(Zipf::new(400, 3.0).unwrap()),
        ];
        for (i, d) in dists.iter().enumerate() {
            let d = d.as_ref();
            for from in [1u64, 17, 300] {
                // head_mass is P(k < from), the sum of the probabilities.
                let head = d.head_mass(from).unwrap();
                let sum: f64 = (0..from).map(|k| d.prob(k)).sum();
                assert!((head - sum).abs() <= 1e-12 * sum, "distribution {i} from {from}: {head} vs {sum}");
                let above = Above { inner: d, from, tail: 1.0 - head };
                // Cells of one id each from 0 to from + 2000 (none may be drawn below `from`), the rest lumped.
                let (chi, df) = chi_square(&above, 31 + from, 200_000, from + 2000);
                assert!(chi < chi_square_bound(df), "distribution {i} from {from}: chi2 {chi} df {df}");
            }
        }
    }
}
