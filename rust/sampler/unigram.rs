//! Classes drawn in proportion to given weights: P(k) = w_k / Σ w, sampled in O(1) per draw with Walker's alias
//! method as built by Vose (1991). Built either from per-id weights or with TensorFlow's
//! `FixedUnigramSampler` rules (counts raised to `distortion`, reserved ids, shards): see [`Unigram::tf`].

use super::Distribution;
use crate::error::{Error, Result};
use crate::rng::Stream;

/// Classes drawn in proportion to weights, by an alias table.
#[derive(Clone, Debug)]
pub struct Unigram {
    /// Weight of each id (0 for ids that are never drawn).
    weights: Vec<f64>,
    total: f64,
    support: u64,
    /// Alias table: keep column i when the coin is below `keep[i]` (as a fraction of 2^64), else take alias[i].
    keep: Vec<u64>,
    alias: Vec<u32>,
    /// TensorFlow's float32 running total, when P is to be computed its way (see [`Unigram::tf`]).
    total_f32: Option<f32>,
}

/// The largest number of classes a unigram table may hold (alias indices are 32-bit).
pub const MAX_UNIGRAM: usize = u32::MAX as usize;

impl Unigram {
    /// A table over ids `0..weights.len()` with P(k) ∝ weights[k]. Weights must be finite and >= 0, with a
    /// positive sum.
    pub fn from_weights(weights: Vec<f64>, arg: &'static str) -> Result<Self> {
        let n = weights.len();
        if n == 0 {
            return Err(Error::value(arg, "is empty: the sampler needs at least one class"));
        }
        if n > MAX_UNIGRAM {
            return Err(Error::too_large(arg, format!("has {n} entries, more than {MAX_UNIGRAM}")));
        }
        let mut total = 0.0;
        let mut support = 0u64;
        for (i, &w) in weights.iter().enumerate() {
            if !w.is_finite() || w < 0.0 {
                return Err(Error::value(arg, format!("weight {i} is {w}: weights must be finite and >= 0")));
            }
            total += w;
            support += (w > 0.0) as u64;
        }
        if !total.is_finite() || total <= 0.0 {
            return Err(Error::value(arg, format!("weights sum to {total}: need a positive, finite total")));
        }
        // Vose's construction: scale weights to mean 1, pair each column below 1 with one above.
        let scale = n as f64 / total;
        let mut q: Vec<f64> = weights.iter().map(|&w| w * scale).collect();
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let mut keep = vec![u64::MAX; n];
        let mut small: Vec<u32> = Vec::new();
        let mut large: Vec<u32> = Vec::new();
        for (i, &x) in q.iter().enumerate() {
            if x < 1.0 {
                small.push(i as u32)
            } else {
                large.push(i as u32)
            }
        }
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            let (si, li) = (s as usize, l as usize);
            keep[si] = to_fraction(q[si]);
            alias[si] = l;
            q[li] = (q[li] + q[si]) - 1.0;
            if q[li] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is 1 up to rounding: keep it always.
        for &i in small.iter().chain(&large) {
            keep[i as usize] = u64::MAX;
            alias[i as usize] = i;
        }
        Ok(Unigram { weights, total, support, keep, alias, total_f32: None })
    }

    /// TensorFlow's `FixedUnigramSampler` rules: the ids are `0..num_reserved_ids` (reserved, weight 0) followed
    /// by one id per entry of `unigrams`, with weight `unigrams[i]^distortion`. With `num_shards > 1` this
    /// sampler keeps only the ids `i` with `i % num_shards == shard` and numbers them `0, 1, 2, ...` in order;
    /// like TensorFlow, the unigrams are numbered from the count of reserved ids the shard kept (so that
    /// with both shards and reserved ids, entry j is kept when `(reserved_in_shard + j) % num_shards == shard`).
    ///
    /// With `float32`, P(k) is computed as TensorFlow's kernel does: `powf` in float32, a float32 running
    /// total and a float32 division (the TF drop-in uses this for parity); otherwise in float64.
    pub fn tf(
        unigrams: &[f64],
        distortion: f64,
        num_reserved_ids: i64,
        num_shards: i64,
        shard: i64,
        float32: bool,
    ) -> Result<Self> {
        if !distortion.is_finite() {
            return Err(Error::value("distortion", format!("must be finite, got {distortion}")));
        }
        if num_reserved_ids < 0 {
            return Err(Error::value("num_reserved_ids", format!("must be >= 0, got {num_reserved_ids}")));
        }
        if num_shards < 1 {
            return Err(Error::value("num_shards", format!("must be >= 1, got {num_shards}")));
        }
        if shard < 0 || shard >= num_shards {
            return Err(Error::value("shard", format!("must be in [0, {num_shards}), got {shard}")));
        }
        let total = (num_reserved_ids as u128) + unigrams.len() as u128;
        if total > MAX_UNIGRAM as u128 {
            return Err(Error::too_large("num_reserved_ids", "reserved ids plus unigrams exceed 2^32 - 1"));
        }
        for (i, &w) in unigrams.iter().enumerate() {
            if !w.is_finite() || w < 0.0 {
                return Err(Error::value(
                    "unigrams",
                    format!("entry {i} is {w}: counts must be finite and >= 0"),
                ));
            }
        }
        let (ns, sh) = (num_shards as u64, shard as u64);
        let mut weights = Vec::new();
        let reserved = (0..num_reserved_ids as u64).filter(|id| id % ns == sh).count();
        weights.resize(reserved, 0.0);
        // TensorFlow numbers the unigrams from the count of reserved ids this shard kept.
        let first = reserved as u64;
        let mut total_f32 = 0f32;
        for (i, &w) in unigrams.iter().enumerate() {
            if (first + i as u64) % ns == sh {
                let w = if float32 {
                    let w32 = (w as f32).powf(distortion as f32);
                    total_f32 += w32;
                    w32 as f64
                } else {
                    w.powf(distortion)
                };
                weights.push(w);
            }
        }
        let mut u = Self::from_weights(weights, "unigrams")?;
        if float32 {
            u.total_f32 = Some(total_f32);
        }
        Ok(u)
    }

    /// The weight of each id (after distortion, reserved ids and sharding).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// TensorFlow's float32 total, when P is computed its way (see [`Unigram::tf`]).
    pub fn total_f32(&self) -> Option<f32> {
        self.total_f32
    }

    /// The table that `weights()` and `total_f32()` describe: the same P and the same draws as the one
    /// they came from (the alias table is built by the same deterministic steps). Used to unpickle.
    pub fn from_parts(weights: Vec<f64>, total_f32: Option<f32>) -> Result<Self> {
        let mut u = Self::from_weights(weights, "unigrams")?;
        u.total_f32 = total_f32;
        Ok(u)
    }
}

/// `x` in [0, 1] as a fraction of 2^64 (1 maps to u64::MAX).
fn to_fraction(x: f64) -> u64 {
    if x >= 1.0 {
        u64::MAX
    } else if x <= 0.0 {
        0
    } else {
        (x * 18_446_744_073_709_551_616.0) as u64
    }
}

impl Distribution for Unigram {
    fn range_max(&self) -> u64 {
        self.weights.len() as u64
    }

    fn support_size(&self) -> u64 {
        self.support
    }

    fn prob(&self, k: u64) -> f64 {
        let w = self.weights.get(k as usize).copied().unwrap_or(0.0);
        match self.total_f32 {
            Some(t) => ((w as f32) / t) as f64,
            None => w / self.total,
        }
    }

    fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
        let n = self.weights.len() as u128;
        for o in out.iter_mut() {
            // One word picks the column (its high part) and tosses the coin (its low part, uniform over the
            // words that map to that column, up to a granularity of n / 2^64).
            let m = stream.next_u64() as u128 * n;
            let col = (m >> 64) as usize;
            let coin = m as u64;
            *o = if coin < self.keep[col] { col as u64 } else { self.alias[col] as u64 };
        }
    }
}

/// Parse a TensorFlow vocabulary file: one class per line, comma-separated, its count in the last field.
/// Empty lines are skipped (they take no id); any other line without a number in its last field is an error.
pub fn read_vocab_counts(text: &str) -> Result<Vec<f64>> {
    let mut counts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let field = line.rsplit(',').next().unwrap_or("").trim();
        let w: f64 = field.parse().map_err(|_| {
            Error::value("vocab_file", format!("line {}: last field {field:?} is not a number", i + 1))
        })?;
        counts.push(w);
    }
    if counts.is_empty() {
        return Err(Error::value("vocab_file", "has no entries"));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn goodness_of_fit_with_zero_weights() {
        let w = vec![0.0, 5.0, 1.0, 0.0, 3.0, 0.5, 10.0, 0.25, 0.0, 2.0];
        let d = Unigram::from_weights(w, "unigrams").unwrap();
        assert_eq!(d.support_size(), 7);
        let (chi, df) = chi_square(&d, 3, 300_000, 10);
        assert!(chi < chi_square_bound(df), "chi2 {chi} df {df}");
    }

    #[test]
    fn goodness_of_fit_skewed() {
        let w: Vec<f64> = (0..5000).map(|k| 1.0 / (k as f64 + 1.0).powf(1.1)).collect();
        let d = Unigram::from_weights(w, "unigrams").unwrap();
        let (chi, df) = chi_square(&d, 4, 500_000, 500);
        assert!(chi < chi_square_bound(df), "chi2 {chi} df {df}");
    }

    #[test]
    fn tf_rules_reserved_and_shards() {
        let d = Unigram::tf(&[1.0, 4.0, 9.0], 0.5, 2, 1, 0, false).unwrap();
        assert_eq!(d.weights(), &[0.0, 0.0, 1.0, 2.0, 3.0]);
        assert!((d.prob(4) - 0.5).abs() < 1e-15);
        // Shard 1 of 2 keeps reserved id 1, then numbers the unigrams from 1: entries 0 and 2 land on odd ids.
        let d = Unigram::tf(&[1.0, 4.0, 9.0], 1.0, 2, 2, 1, false).unwrap();
        assert_eq!(d.weights(), &[0.0, 1.0, 9.0]);
        // TensorFlow's own example: 2 reserved ids, 3 shards, shard 1 keeps entries 0, 3, 6, 9.
        let uni = [10.0, 3.0, 7.0, 1.0, 0.5, 20.0, 4.0, 2.0, 9.0, 6.0];
        let d = Unigram::tf(&uni, 0.75, 2, 3, 1, true).unwrap();
        let expect = [0.0f32, 5.623413, 1.0, 2.828427, 3.8336587];
        for (k, e) in expect.iter().enumerate() {
            assert!((d.weights()[k] as f32 - e).abs() <= 1e-6 * e, "{k}");
        }
        // P as TensorFlow computes it: float32 weight / float32 running total 13.2855.
        assert!((d.prob(1) as f32 * 8.0 - 3.386196).abs() < 1e-6);
    }

    #[test]
    fn rejects_bad_weights() {
        assert!(Unigram::from_weights(vec![], "u").is_err());
        assert!(Unigram::from_weights(vec![1.0, f64::NAN], "u").is_err());
        assert!(Unigram::from_weights(vec![1.0, -1.0], "u").is_err());
        assert!(Unigram::from_weights(vec![0.0, 0.0], "u").is_err());
        assert!(Unigram::tf(&[1.0], 1.0, 0, 2, 2, false).is_err());
        assert!(Unigram::tf(&[1.0], 1.0, -1, 1, 0, false).is_err());
    }

    #[test]
    fn vocab_file_parsing() {
        let c = read_vocab_counts("the,100\nof, 50\n\nzebra,1.5\r\n").unwrap();
        assert_eq!(c, vec![100.0, 50.0, 1.5]);
        assert!(read_vocab_counts("a,1\n \nb,2\n").is_err());
        assert!(read_vocab_counts("a,x\n").is_err());
        assert!(read_vocab_counts("\n\n").is_err());
    }
}
