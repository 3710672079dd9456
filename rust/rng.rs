//! Counter-based random streams.
//!
//! Every random number the library uses is a pure function of `(key, counter)`, where `key` is derived from the
//! user's seed and a stream index (the call, the row, the chunk of draws). Work is cut into fixed-size chunks,
//! each with its own stream, so results never depend on how many threads ran them or in which order.
//!
//! The bit generator is SplitMix64 (Steele, Lea & Flood 2014) read as a counter-based generator: output `i` of a
//! stream is the 64-bit finaliser applied to `key + i * GAMMA`. It passes BigCrush, costs a handful of integer
//! operations per draw and vectorises, because no output depends on the one before it.

/// Odd Weyl increment of SplitMix64 (2^64 / golden ratio).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The 64-bit finaliser (Stafford's "mix13"): a bijection with full avalanche.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of sub-stream `index` of the stream with key `key`. Distinct indices give unrelated keys.
#[inline(always)]
pub fn derive(key: u64, index: u64) -> u64 {
    mix64(
        key ^ mix64(
            index
                .wrapping_mul(GAMMA)
                .wrapping_add(0x6a09_e667_f3bc_c909),
        ),
    )
}

/// A stream of random 64-bit words: the pure function `(key, counter) -> bits`, with a cursor.
#[derive(Clone, Debug)]
pub struct Stream {
    key: u64,
    counter: u64,
}

impl Stream {
    pub fn new(key: u64) -> Self {
        Stream { key, counter: 0 }
    }

    /// Word `i` of the stream with key `key`, without a cursor.
    #[inline(always)]
    pub fn at(key: u64, i: u64) -> u64 {
        mix64(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)))
    }

    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        let x = Self::at(self.key, self.counter);
        self.counter = self.counter.wrapping_add(1);
        x
    }

    /// A uniform double in [0, 1) with 53 random bits.
    #[inline(always)]
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// A uniform integer in [0, n), n >= 1, exactly unbiased (Lemire 2019, multiply and reject).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }

    /// Fill `out` with the next `out.len()` words. A plain loop over a pure function: it vectorises.
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        let (key, base) = (self.key, self.counter);
        for (i, o) in out.iter_mut().enumerate() {
            *o = Self::at(key, base.wrapping_add(i as u64));
        }
        self.counter = base.wrapping_add(out.len() as u64);
    }
}

/// The top 53 bits of `x` as a double in [0, 1).
#[inline(always)]
pub fn unit_f64(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A fresh seed from the operating system's entropy (through the standard library's hasher keys),
/// mixed with the time and a process-wide counter so that two calls never return the same value.
pub fn os_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    h.write_u64(t);
    mix64(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_a_pure_function_of_key_and_counter() {
        let mut a = Stream::new(42);
        let words: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let mut b = Stream::new(42);
        let mut buf = [0u64; 10];
        b.fill_u64(&mut buf);
        assert_eq!(words, buf.to_vec());
        for (i, w) in words.iter().enumerate() {
            assert_eq!(*w, Stream::at(42, i as u64));
        }
    }

    #[test]
    fn derived_keys_differ() {
        let keys: std::collections::HashSet<u64> = (0..10_000).map(|i| derive(7, i)).collect();
        assert_eq!(keys.len(), 10_000);
        assert_ne!(derive(7, 0), derive(8, 0));
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut s = Stream::new(1);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[s.below(7) as usize] += 1;
        }
        // chi-square with 6 degrees of freedom; 22.46 is the 0.999 quantile.
        let chi: f64 = counts
            .iter()
            .map(|&c| (c as f64 - 10_000.0).powi(2) / 10_000.0)
            .sum();
        assert!(chi < 22.46, "chi-square {chi}");
        let big = (1u64 << 62) + 12345;
        for _ in 0..1000 {
            assert!(s.below(big) < big);
        }
    }

    #[test]
    fn unit_f64_is_in_unit_interval() {
        assert_eq!(unit_f64(0), 0.0);
        assert!(unit_f64(u64::MAX) < 1.0);
    }

    #[test]
    fn os_seeds_differ() {
        assert_ne!(os_seed(), os_seed());
    }
}
