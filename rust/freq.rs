//! Streaming estimates of how likely an id is to appear in a batch, for the logQ correction of in-batch
//! negatives (Yi et al., "Sampling-bias-corrected neural modeling for large corpus item recommendations",
//! RecSys 2019).
//!
//! The estimator keeps, for each of `num_hashes` hash functions, an array of `num_buckets` cells; a cell
//! holds the step `A` at which one of its ids was last seen, the moving average `B` of the gaps between the
//! steps at which its ids were seen, and how many gaps `n` went into `B`. At step `t` (the t-th `update`,
//! from 1) every cell that an id of the batch hashes to is updated once, however often its ids occur:
//!
//! ```text
//! n <- n + 1;   w = max(alpha, 1 / n);   B <- (1 - w) B + w (t - A);   A <- t        (A = 0 before)
//! ```
//!
//! An id that appears in a batch with probability q has gaps with mean 1 / q (the first one counted from
//! step 0), so `1 / B` estimates q. The weight `max(alpha, 1/n)` makes `B` the plain mean of the gaps until
//! there are `1 / alpha` of them, and an exponential moving average after: no bias from a start value, and
//! the estimate follows a drifting stream with a memory of about `1 / alpha` sightings. Ids that share a cell
//! shorten its gaps, so each hash can only overstate q; the estimate takes the longest gap over the hashes
//! (the smallest q), as the paper does: `P(id) = 1 / max_h B_h(id)`. A cell never seen estimates
//! `1 / (t + 1)` (nothing in `t` steps).
//!
//! The update is deterministic: estimators built with the same arguments and fed the same ids hold the
//! same state bit for bit, which is what keeps several ranks in step (each feeds the ids of the global
//! batch, gathered from all ranks).

use crate::error::{Error, Result};
use crate::rng::{derive, mix64};

/// The most buckets per hash.
pub const MAX_BUCKETS: u64 = 1 << 32;
/// The most hash functions.
pub const MAX_HASHES: u64 = 16;

const SALT_TAG: u64 = 0x5851_f42d_4c95_7f2d;

/// One cell (16 bytes): the step its ids were last seen at, the averaged gap, the number of gaps averaged.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
struct Cell {
    last: u64,
    gap: f32,
    n: u32,
}

/// Yi et al.'s streaming frequency estimator (see the module documentation for the rule).
#[derive(Clone, Debug)]
pub struct FrequencyEstimator {
    num_buckets: u64,
    num_hashes: usize,
    alpha: f64,
    seed: u64,
    salts: Vec<u64>,
    step: u64,
    cells: Vec<Cell>,
}

/// The estimator's state as plain arrays (hash-major, `num_hashes * num_buckets` each): what a pickle or a
/// broadcast carries.
#[derive(Clone, Debug, PartialEq)]
pub struct FreqState {
    /// The number of updates so far.
    pub step: u64,
    /// The step at which each cell was last seen (0: never).
    pub last: Vec<u64>,
    /// Each cell's averaged gap.
    pub gap: Vec<f32>,
    /// How many gaps each cell has averaged (saturating at 2^32 - 1).
    pub seen: Vec<u32>,
}

impl FrequencyEstimator {
    /// An empty estimator: `num_buckets` cells per hash (1..=2^32), `num_hashes` hashes (1..=16), moving
    /// average weight `alpha` in (0, 1], and `seed` choosing the hash functions.
    pub fn new(num_buckets: i64, num_hashes: i64, alpha: f64, seed: u64) -> Result<Self> {
        if num_buckets < 1 || num_buckets as u64 > MAX_BUCKETS {
            return Err(Error::value("num_buckets", format!("must be in [1, 2^32], got {num_buckets}")));
        }
        if num_hashes < 1 || num_hashes as u64 > MAX_HASHES {
            return Err(Error::value(
                "num_hashes",
                format!("must be in [1, {MAX_HASHES}], got {num_hashes}"),
            ));
        }
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(Error::value("alpha", format!("must be in (0, 1], got {alpha}")));
        }
        let cells = num_buckets as u128 * num_hashes as u128;
        crate::buf::ensure_memory("num_buckets", cells * std::mem::size_of::<Cell>() as u128)?;
        let base = mix64(seed ^ SALT_TAG);
        let salts = (0..num_hashes as u64).map(|h| derive(base, h)).collect();
        Ok(FrequencyEstimator {
            num_buckets: num_buckets as u64,
            num_hashes: num_hashes as usize,
            alpha,
            seed,
            salts,
            step: 0,
            cells: vec![Cell::default(); cells as usize],
        })
    }

    /// Buckets per hash.
    pub fn num_buckets(&self) -> u64 {
        self.num_buckets
    }

    /// The number of hash functions.
    pub fn num_hashes(&self) -> usize {
        self.num_hashes
    }

    /// The moving average's weight.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The seed of the hash functions.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The number of updates so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    #[inline]
    fn cell_index(&self, h: usize, id: u64) -> usize {
        let x = mix64(id ^ self.salts[h]);
        let b = ((x as u128 * self.num_buckets as u128) >> 64) as usize;
        h * self.num_buckets as usize + b
    }

    fn check(ids: &[i64]) -> Result<()> {
        if let Some(&id) = ids.iter().find(|&&id| id < 0) {
            return Err(Error::value("ids", format!("ids must be >= 0, got {id}")));
        }
        Ok(())
    }

    /// One step: the ids of a batch (in any order, repeats counted once).
    pub fn update(&mut self, ids: &[i64]) -> Result<()> {
        Self::check(ids)?;
        let t = self.step + 1;
        for &id in ids {
            for h in 0..self.num_hashes {
                let i = self.cell_index(h, id as u64);
                let alpha = self.alpha;
                let c = &mut self.cells[i];
                if c.last == t {
                    continue;
                }
                let n = c.n.saturating_add(1);
                let w = alpha.max(1.0 / n as f64);
                let gap = c.gap as f64;
                c.gap = (gap + w * ((t - c.last) as f64 - gap)) as f32;
                c.n = n;
                c.last = t;
            }
        }
        self.step = t;
        Ok(())
    }

    /// The estimated average gap of `id` (the largest over the hashes).
    #[inline]
    fn gap(&self, id: u64) -> f64 {
        let unseen = (self.step + 1) as f64;
        (0..self.num_hashes)
            .map(|h| {
                let c = &self.cells[self.cell_index(h, id)];
                if c.n == 0 {
                    unseen
                } else {
                    c.gap as f64
                }
            })
            .fold(0.0, f64::max)
    }

    /// The estimated probability that each id appears in a batch, `1 / max_h B_h(id)`, into `out`.
    pub fn probability_into(&self, ids: &[i64], out: &mut [f64]) -> Result<()> {
        Self::check(ids)?;
        for (o, &id) in out.iter_mut().zip(ids) {
            *o = 1.0 / self.gap(id as u64);
        }
        Ok(())
    }

    /// The estimated probabilities of `ids`.
    pub fn probability(&self, ids: &[i64]) -> Result<Vec<f64>> {
        let mut out = vec![0.0; ids.len()];
        self.probability_into(ids, &mut out)?;
        Ok(out)
    }

    /// The state as arrays (see [`FreqState`]).
    pub fn state(&self) -> FreqState {
        FreqState {
            step: self.step,
            last: self.cells.iter().map(|c| c.last).collect(),
            gap: self.cells.iter().map(|c| c.gap).collect(),
            seen: self.cells.iter().map(|c| c.n).collect(),
        }
    }

    /// Replace the state with `s` (arrays of `num_hashes * num_buckets` cells), checking that it is one an
    /// estimator could reach: no cell seen after the step, gaps finite and >= 1 where seen.
    pub fn set_state(&mut self, s: &FreqState) -> Result<()> {
        let len = self.cells.len();
        for (arg, l) in [("last", s.last.len()), ("gap", s.gap.len()), ("seen", s.seen.len())] {
            if l != len {
                return Err(Error::shape(arg, format!("has {l} cells, expected {len}")));
            }
        }
        for i in 0..len {
            let (last, gap, n) = (s.last[i], s.gap[i], s.seen[i]);
            if last > s.step || (n == 0) != (last == 0) {
                return Err(Error::value("last", format!("cell {i}: last step {last} with step {}", s.step)));
            }
            if n > 0 && !(gap.is_finite() && gap >= 1.0) {
                return Err(Error::value("gap", format!("cell {i}: must be finite and >= 1, got {gap}")));
            }
        }
        self.step = s.step;
        for (i, c) in self.cells.iter_mut().enumerate() {
            *c = Cell { last: s.last[i], gap: if s.seen[i] == 0 { 0.0 } else { s.gap[i] }, n: s.seen[i] };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_gap_is_learned_exactly() {
        let mut f = FrequencyEstimator::new(1024, 2, 0.05, 1).unwrap();
        // id 7 every step, id 8 every third step (steps 3, 6, ...), repeats within a batch count once.
        for t in 1..=300 {
            let mut ids = vec![7, 7, 7];
            if t % 3 == 0 {
                ids.push(8);
            }
            f.update(&ids).unwrap();
        }
        let p = f.probability(&[7, 8, 9]).unwrap();
        assert_eq!(p[0], 1.0);
        assert!((p[1] - 1.0 / 3.0).abs() < 1e-12, "{}", p[1]);
        assert_eq!(p[2], 1.0 / 301.0);
    }

    #[test]
    fn bad_arguments_name_themselves() {
        assert_eq!(FrequencyEstimator::new(0, 1, 0.1, 0).unwrap_err().arg(), "num_buckets");
        assert_eq!(FrequencyEstimator::new(8, 0, 0.1, 0).unwrap_err().arg(), "num_hashes");
        assert_eq!(FrequencyEstimator::new(8, 1, f64::NAN, 0).unwrap_err().arg(), "alpha");
        assert_eq!(FrequencyEstimator::new(8, 1, 1.5, 0).unwrap_err().arg(), "alpha");
        let mut f = FrequencyEstimator::new(8, 1, 0.1, 0).unwrap();
        assert_eq!(f.update(&[1, -2]).unwrap_err().arg(), "ids");
        assert_eq!(f.step(), 0, "a rejected update changes nothing");
    }

    #[test]
    fn state_round_trips() {
        let mut f = FrequencyEstimator::new(64, 3, 0.1, 5).unwrap();
        for t in 0..50i64 {
            f.update(&[t % 7, t % 11, 100 + t % 3]).unwrap();
        }
        let mut g = FrequencyEstimator::new(64, 3, 0.1, 5).unwrap();
        g.set_state(&f.state()).unwrap();
        let ids: Vec<i64> = (0..200).collect();
        assert_eq!(f.probability(&ids).unwrap(), g.probability(&ids).unwrap());
        let mut bad = f.state();
        bad.gap[0] = f32::NAN;
        bad.seen[0] = 1;
        bad.last[0] = 1;
        assert_eq!(g.set_state(&bad).unwrap_err().arg(), "gap");
    }
}
