//! TensorFlow's learned unigram: every class starts with count 1, and the true classes of each call add 1
//! per occurrence after the call has drawn, so P(k) = count_k / Σ counts follows the classes seen so far.
//!
//! A call must not rebuild a table over all `range_max` classes (10^7 of them at ~10 µs a call), so the
//! counts live in a structure that updates and draws in O(log V):
//! - the count is `1 + extra_k`: a draw takes one integer u uniform in `[0, V + N)` (N = Σ extra): u < V is
//!   the class u itself (the uniform part, O(1)), otherwise `u - V` is located among the extras;
//! - the extras sit in blocks of [`BLOCK`] classes, whose sums form a Fenwick tree: locating descends the
//!   tree to a block (its top levels stay in cache) and scans the block; an update adds 1 to a class and
//!   to O(log(V / BLOCK)) tree nodes.
//!
//! Both parts are exact integer arithmetic, so a draw is exactly count_k / total.

use super::{check_ids, check_range, Distribution};
use crate::error::{Error, Result};
use crate::rng::Stream;

/// Classes per leaf block of the tree.
pub const BLOCK: usize = 32;

/// The learned unigram law: counts `1 + extra_k` over `0..range_max`.
#[derive(Clone, Debug)]
pub struct Learned {
    range_max: u64,
    /// count_k - 1.
    extra: Vec<u64>,
    /// Fenwick tree (1-based, `tree[0]` unused) over the sums of the blocks of `extra`.
    tree: Vec<u64>,
    /// The largest power of two not above the number of blocks (the descent's first step).
    top: usize,
    /// Σ extra.
    total_extra: u64,
}

impl Learned {
    /// Every class of `0..range_max` with count 1.
    pub fn new(range_max: i64) -> Result<Self> {
        let v = check_range(range_max)?;
        // Eight bytes per class for the counts, and a tree node per block.
        crate::buf::ensure_memory("range_max", v as u128 * (8 + 8 / BLOCK as u128 + 1))?;
        let v = usize::try_from(v).map_err(|_| Error::too_large("range_max", "does not fit in memory"))?;
        let blocks = v.div_ceil(BLOCK);
        let top = if blocks == 0 { 0 } else { 1usize << (usize::BITS - 1 - blocks.leading_zeros()) };
        Ok(Learned { range_max: v as u64, extra: vec![0; v], tree: vec![0; blocks + 1], top, total_extra: 0 })
    }

    /// The law with counts `1 + extra[k]` for the classes `ids[i]` given `extras[i]` (others 1).
    pub fn from_extras(range_max: i64, ids: &[i64], extras: &[u64]) -> Result<Self> {
        let mut l = Self::new(range_max)?;
        if ids.len() != extras.len() {
            return Err(Error::shape("extras", "needs one count per id"));
        }
        let ids = check_ids("ids", ids, l.range_max)?;
        for (&k, &e) in ids.iter().zip(extras) {
            l.extra[k as usize] = l.extra[k as usize]
                .checked_add(e)
                .ok_or_else(|| Error::value("extras", "counts overflow 2^64"))?;
        }
        l.total_extra = l
            .extra
            .iter()
            .try_fold(0u64, |s, &e| s.checked_add(e))
            .filter(|&s| s.checked_add(l.range_max).is_some())
            .ok_or_else(|| Error::value("extras", "the total count overflows 2^64"))?;
        l.rebuild();
        Ok(l)
    }

    /// Rebuild the tree from `extra` in O(V).
    fn rebuild(&mut self) {
        let n = self.tree.len() - 1;
        for (b, chunk) in self.extra.chunks(BLOCK).enumerate() {
            self.tree[b + 1] = chunk.iter().sum();
        }
        for i in 1..=n {
            let j = i + (i & i.wrapping_neg());
            if j <= n {
                self.tree[j] += self.tree[i];
            }
        }
    }

    /// Add one to the count of each class of `ids` (validated first: on error nothing changes).
    pub fn update(&mut self, ids: &[i64]) -> Result<()> {
        let ids = check_ids("true_classes", ids, self.range_max)?;
        self.add(ids);
        Ok(())
    }

    /// Add one to the count of each class of `ids` (all `< range_max`).
    pub fn add(&mut self, ids: &[u64]) {
        let n = self.tree.len() - 1;
        for &k in ids {
            self.extra[k as usize] += 1;
            let mut i = k as usize / BLOCK + 1;
            while i <= n {
                self.tree[i] += 1;
                i += i & i.wrapping_neg();
            }
        }
        self.total_extra += ids.len() as u64;
    }

    /// The count of class `k` (`k < range_max`).
    pub fn count(&self, k: u64) -> u64 {
        1 + self.extra[k as usize]
    }

    /// Σ counts: `range_max` plus the number of true classes added.
    pub fn total(&self) -> u64 {
        self.range_max + self.total_extra
    }

    /// The classes whose count is above 1 and their extra counts (count - 1), in id order.
    pub fn extras(&self) -> (Vec<i64>, Vec<u64>) {
        self.extra.iter().enumerate().filter(|(_, &e)| e > 0).map(|(k, &e)| (k as i64, e)).unzip()
    }

    /// The class holding position `r` (`r < total_extra`) of the extras laid end to end in id order.
    #[inline]
    fn locate(&self, mut r: u64) -> u64 {
        let n = self.tree.len() - 1;
        let (mut pos, mut step) = (0usize, self.top);
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next] <= r {
                pos = next;
                r -= self.tree[next];
            }
            step >>= 1;
        }
        // `pos` blocks lie wholly before r: it falls in block `pos`.
        let start = pos * BLOCK;
        let end = (start + BLOCK).min(self.extra.len());
        for (k, &e) in self.extra[start..end].iter().enumerate() {
            if r < e {
                return (start + k) as u64;
            }
            r -= e;
        }
        debug_assert!(false, "position beyond the extras");
        (end - 1) as u64
    }
}

impl Distribution for Learned {
    fn range_max(&self) -> u64 {
        self.range_max
    }

    fn prob(&self, k: u64) -> f64 {
        self.count(k) as f64 / self.total() as f64
    }

    fn prob_into(&self, ids: &[u64], out: &mut [f64]) {
        // Division (not multiplication by 1 / total) keeps P correctly rounded, which float32 P rounds from.
        let total = self.total() as f64;
        for (o, &k) in out.iter_mut().zip(ids) {
            *o = self.count(k) as f64 / total;
        }
    }

    fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
        let total = self.total();
        for o in out.iter_mut() {
            let u = stream.below(total);
            *o = if u < self.range_max { u } else { self.locate(u - self.range_max) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn counts_start_at_one_and_follow_updates() {
        let mut l = Learned::new(10).unwrap();
        assert_eq!(l.total(), 10);
        assert_eq!(l.prob(3), 0.1);
        l.update(&[1, 1, 2]).unwrap();
        assert_eq!((l.count(1), l.count(2), l.total()), (3, 2, 13));
        assert_eq!(l.update(&[4, 10]).unwrap_err().arg(), "true_classes");
        assert_eq!(l.total(), 13, "a rejected update changes nothing");
        let (ids, ex) = l.extras();
        assert_eq!((ids, ex), (vec![1, 2], vec![2, 1]));
        let r = Learned::from_extras(10, &[1, 2], &[2, 1]).unwrap();
        assert_eq!((r.count(1), r.count(2), r.total()), (3, 2, 13));
    }

    #[test]
    fn locate_finds_every_position() {
        // Sizes around the block and tree boundaries; every position of the extras maps to its class.
        for v in [1i64, 31, 32, 33, 95, 1000] {
            let mut l = Learned::new(v).unwrap();
            let ids: Vec<i64> =
                (0..v).filter(|k| k % 3 != 1).flat_map(|k| vec![k; (k % 4) as usize]).collect();
            l.update(&ids).unwrap();
            let mut expect = Vec::new();
            for k in 0..v as u64 {
                expect.extend(std::iter::repeat_n(k, (l.count(k) - 1) as usize));
            }
            let got: Vec<u64> = (0..l.total_extra).map(|r| l.locate(r)).collect();
            assert_eq!(got, expect, "range {v}");
        }
    }

    #[test]
    fn goodness_of_fit_after_updates() {
        let mut l = Learned::new(5000).unwrap();
        let mut s = Stream::new(3);
        // A skewed history: class k added about 2000 / (k + 1) times.
        let ids: Vec<i64> = (0..20_000).map(|_| (5000.0 * s.next_f64().powi(4)) as i64).collect();
        l.update(&ids).unwrap();
        let (chi, df) = chi_square(&l, 4, 400_000, 800);
        assert!(chi < chi_square_bound(df), "chi2 {chi} df {df}");
    }
}
