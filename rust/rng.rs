//! Random streams keyed by (seed, stream index).
//!
//! Every random number the library uses comes from a [`Stream`] whose key is derived from the user's seed
//! and the indices of the call, the row and the chunk of draws ([`derive`] is a keyed hash). Work is cut into
//! fixed-size chunks, each with its own stream, so results never depend on how many threads ran them or in
//! which order: the randomness is a pure function of (seed, stream indices, position in the stream).
//!
//! Within a stream the bits come from four interleaved xoshiro256++ generators (Blackman & Vigna 2018),
//! seeded from the key with SplitMix64. Four lanes step in lockstep, which the compiler turns into
//! SIMD code: about a third of a nanosecond per 64-bit word.

/// Odd Weyl increment of SplitMix64 (2^64 / golden ratio).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
const LANES: usize = 4;

/// The 64-bit finaliser of SplitMix64 (Stafford's "mix13"): a bijection with full avalanche.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of sub-stream `index` of the stream with key `key`. Distinct indices give unrelated keys.
#[inline(always)]
pub fn derive(key: u64, index: u64) -> u64 {
    mix64(key ^ mix64(index.wrapping_mul(GAMMA).wrapping_add(0x6a09_e667_f3bc_c909)))
}

/// A stream of random 64-bit words determined by its key.
#[derive(Clone, Debug)]
pub struct Stream {
    s: [[u64; LANES]; 4],
    buf: [u64; LANES],
    pos: usize,
}

impl Stream {
    /// The stream of `key`.
    pub fn new(key: u64) -> Self {
        let mut s = [[0u64; LANES]; 4];
        let mut z = key;
        for word in s.iter_mut() {
            for lane in word.iter_mut() {
                z = z.wrapping_add(GAMMA);
                *lane = mix64(z);
            }
        }
        // SplitMix64 outputs are distinct, so no lane starts in xoshiro's all-zero state.
        Stream { s, buf: [0; LANES], pos: LANES }
    }

    /// The next 64 random bits.
    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        if self.pos == LANES {
            self.buf = step(&mut self.s);
            self.pos = 0;
        }
        let x = self.buf[self.pos];
        self.pos += 1;
        x
    }

    /// A uniform double in [0, 1) with 52 random bits.
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

    /// The generator's lanes, when no word is buffered (as after `new`, or after whole steps of four words):
    /// stepping them `k` times is drawing the next `4 k` words. None when words are buffered.
    #[inline]
    pub(crate) fn lanes(&mut self) -> Option<&mut [[u64; LANES]; 4]> {
        (self.pos == LANES).then_some(&mut self.s)
    }

    /// Fill `out` with the next `out.len()` words: the same words as that many calls of `next_u64`.
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        let mut i = 0;
        while self.pos < LANES && i < out.len() {
            out[i] = self.buf[self.pos];
            self.pos += 1;
            i += 1;
        }
        let whole = (out.len() - i) / LANES * LANES;
        fill_kernel(&mut self.s, &mut out[i..i + whole]);
        for o in &mut out[i + whole..] {
            *o = self.next_u64();
        }
    }
}

/// Step the four lanes `out.len() / 4` times, writing their outputs in order. The four lanes live in one
/// 256-bit register each: written out with intrinsics (one kernel per `simd::Level`, not
/// `simd::dispatch!`), because the compiler's own vectorisation of the portable loop shuffles the state
/// between registers and runs at a third of the speed.
fn fill_kernel(s: &mut [[u64; LANES]; 4], out: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    match crate::simd::level() {
        // SAFETY: the CPU has AVX-512F and VL and AVX2 (`simd::level` checked them), all that
        // `fill_avx512` needs.
        crate::simd::Level::Avx512 => return unsafe { fill_avx512(s, out) },
        // SAFETY: the CPU has AVX2 (`simd::level` checked it), all that `fill_avx2` needs.
        crate::simd::Level::Avx2 => return unsafe { fill_avx2(s, out) },
        // SAFETY: SSE2 is part of x86-64, so every CPU this runs on has it.
        crate::simd::Level::Baseline => return unsafe { fill_sse2(s, out) },
    }
    #[allow(unreachable_code)]
    fill_portable(s, out)
}

/// Advance the four lanes of the state once and return their outputs (xoshiro256++).
#[inline(always)]
fn step(s: &mut [[u64; LANES]; 4]) -> [u64; LANES] {
    let [s0, s1, s2, s3] = s;
    let mut out = [0u64; LANES];
    for l in 0..LANES {
        out[l] = s0[l].wrapping_add(s3[l]).rotate_left(23).wrapping_add(s0[l]);
        let t = s1[l] << 17;
        s2[l] ^= s0[l];
        s3[l] ^= s1[l];
        s1[l] ^= s2[l];
        s0[l] ^= s3[l];
        s2[l] ^= t;
        s3[l] = s3[l].rotate_left(45);
    }
    out
}

fn fill_portable(s: &mut [[u64; LANES]; 4], out: &mut [u64]) {
    for b in out.chunks_exact_mut(LANES) {
        b.copy_from_slice(&step(s));
    }
}

/// One step of the four lanes in 256-bit registers `$s0..$s3` (xoshiro256++, as `step`); evaluates to the
/// four outputs. `$rol23` and `$rol45` rotate each lane.
#[cfg(target_arch = "x86_64")]
macro_rules! step_simd {
    ($s0:ident, $s1:ident, $s2:ident, $s3:ident, $rol23:expr, $rol45:expr) => {{
        use std::arch::x86_64::{_mm256_add_epi64, _mm256_slli_epi64, _mm256_xor_si256};
        let r = _mm256_add_epi64($rol23(_mm256_add_epi64($s0, $s3)), $s0);
        let t = _mm256_slli_epi64::<17>($s1);
        $s2 = _mm256_xor_si256($s2, $s0);
        $s3 = _mm256_xor_si256($s3, $s1);
        $s1 = _mm256_xor_si256($s1, $s2);
        $s0 = _mm256_xor_si256($s0, $s3);
        $s2 = _mm256_xor_si256($s2, t);
        $s3 = $rol45($s3);
        r
    }};
}

/// The loop of `fill_portable` on four lanes in 256-bit registers; `$rol23` and `$rol45` rotate each lane.
#[cfg(target_arch = "x86_64")]
macro_rules! fill_simd {
    ($s:ident, $out:ident, $rol23:expr, $rol45:expr) => {{
        use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_storeu_si256};
        // SAFETY: each lane array holds exactly four u64, the 32 bytes read (unaligned load).
        let load = |l: &[u64; LANES]| unsafe { _mm256_loadu_si256(l.as_ptr() as *const __m256i) };
        let (mut s0, mut s1, mut s2, mut s3) = (load(&$s[0]), load(&$s[1]), load(&$s[2]), load(&$s[3]));
        for b in $out.chunks_exact_mut(LANES) {
            let r = step_simd!(s0, s1, s2, s3, $rol23, $rol45);
            // SAFETY: `b` holds exactly four u64, the 32 bytes written (unaligned store).
            unsafe { _mm256_storeu_si256(b.as_mut_ptr() as *mut __m256i, r) };
        }
        for (lane, v) in $s.iter_mut().zip([s0, s1, s2, s3]) {
            // SAFETY: each lane array holds exactly four u64, the 32 bytes written.
            unsafe { _mm256_storeu_si256(lane.as_mut_ptr() as *mut __m256i, v) };
        }
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fill_avx2(s: &mut [[u64; LANES]; 4], out: &mut [u64]) {
    use std::arch::x86_64::*;
    let rol23 = |x| _mm256_or_si256(_mm256_slli_epi64::<23>(x), _mm256_srli_epi64::<41>(x));
    let rol45 = |x| _mm256_or_si256(_mm256_slli_epi64::<45>(x), _mm256_srli_epi64::<19>(x));
    fill_simd!(s, out, rol23, rol45)
}

/// The loop of `fill_portable` with SSE2 (every x86-64 CPU has it): each state word's four lanes in two
/// 128-bit registers, lanes 0-1 and 2-3, stepped side by side. The compiler's own vectorisation of the
/// portable loop keeps less of the state in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn fill_sse2(s: &mut [[u64; LANES]; 4], out: &mut [u64]) {
    use std::arch::x86_64::*;
    let rol = |x: __m128i, l: i32| -> __m128i {
        // Shift counts in a register (`_mm_sll_epi64`) let one closure serve both rotations.
        _mm_or_si128(_mm_sll_epi64(x, _mm_cvtsi32_si128(l)), _mm_srl_epi64(x, _mm_cvtsi32_si128(64 - l)))
    };
    // SAFETY: each lane array holds four u64: the 16 bytes at offset 0 and at offset 2 (unaligned loads).
    let load = |l: &[u64; LANES], h: usize| unsafe { _mm_loadu_si128(l.as_ptr().add(h) as *const __m128i) };
    let mut st = [[_mm_setzero_si128(); 4]; 2];
    for (h, half) in st.iter_mut().enumerate() {
        for (w, reg) in half.iter_mut().enumerate() {
            *reg = load(&s[w], 2 * h);
        }
    }
    for b in out.chunks_exact_mut(LANES) {
        for (h, [s0, s1, s2, s3]) in st.iter_mut().enumerate() {
            let r = _mm_add_epi64(rol(_mm_add_epi64(*s0, *s3), 23), *s0);
            let t = _mm_slli_epi64::<17>(*s1);
            *s2 = _mm_xor_si128(*s2, *s0);
            *s3 = _mm_xor_si128(*s3, *s1);
            *s1 = _mm_xor_si128(*s1, *s2);
            *s0 = _mm_xor_si128(*s0, *s3);
            *s2 = _mm_xor_si128(*s2, t);
            *s3 = rol(*s3, 45);
            // SAFETY: `b` holds four u64; the 16 bytes at offset 2h are inside it (unaligned store).
            unsafe { _mm_storeu_si128(b.as_mut_ptr().add(2 * h) as *mut __m128i, r) };
        }
    }
    for (h, half) in st.iter().enumerate() {
        for (w, reg) in half.iter().enumerate() {
            // SAFETY: the 16 bytes at offset 2h of a four-u64 lane array (unaligned store).
            unsafe { _mm_storeu_si128(s[w].as_mut_ptr().add(2 * h) as *mut __m128i, *reg) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn fill_avx512(s: &mut [[u64; LANES]; 4], out: &mut [u64]) {
    use std::arch::x86_64::_mm256_rol_epi64;
    fill_simd!(s, out, _mm256_rol_epi64::<23>, _mm256_rol_epi64::<45>)
}

/// The four lanes of a stream in registers, for AVX-512 kernels that consume words as they make them
/// (see `Stream::lanes`): [`Lanes8::next8`] gives the next eight words of the stream, in order.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Lanes8 {
    s: [std::arch::x86_64::__m256i; 4],
}

#[cfg(target_arch = "x86_64")]
impl Lanes8 {
    /// # Safety
    /// The CPU must have AVX-512F, AVX-512VL and AVX2 (as for `store` and `next8`).
    #[inline(always)]
    pub(crate) unsafe fn load(s: &[[u64; LANES]; 4]) -> Self {
        use std::arch::x86_64::{__m256i, _mm256_loadu_si256};
        // SAFETY: each lane array holds exactly four u64, the 32 bytes read (unaligned load); the CPU has
        // AVX (the caller's promise).
        let load = |l: &[u64; LANES]| unsafe { _mm256_loadu_si256(l.as_ptr() as *const __m256i) };
        Lanes8 { s: [load(&s[0]), load(&s[1]), load(&s[2]), load(&s[3])] }
    }

    /// # Safety
    /// As for `load`.
    #[inline(always)]
    pub(crate) unsafe fn store(&self, s: &mut [[u64; LANES]; 4]) {
        use std::arch::x86_64::{__m256i, _mm256_storeu_si256};
        for (lane, &v) in s.iter_mut().zip(&self.s) {
            // SAFETY: each lane array holds exactly four u64, the 32 bytes written.
            unsafe { _mm256_storeu_si256(lane.as_mut_ptr() as *mut __m256i, v) };
        }
    }

    /// Two steps: the next eight words (the first step's four, then the second's).
    ///
    /// # Safety
    /// As for `load`.
    #[inline(always)]
    pub(crate) unsafe fn next8(&mut self) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::{_mm256_rol_epi64, _mm512_castsi256_si512, _mm512_inserti64x4};
        let [mut s0, mut s1, mut s2, mut s3] = self.s;
        // SAFETY: register arithmetic only; the CPU has AVX-512F/VL and AVX2 (the caller's promise).
        let (a, b) = unsafe {
            let a = step_simd!(s0, s1, s2, s3, _mm256_rol_epi64::<23>, _mm256_rol_epi64::<45>);
            let b = step_simd!(s0, s1, s2, s3, _mm256_rol_epi64::<23>, _mm256_rol_epi64::<45>);
            (a, b)
        };
        self.s = [s0, s1, s2, s3];
        // SAFETY: as above.
        unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b) }
    }
}

/// The top 52 bits of `x` as a double in [0, 1) (placed in the mantissa of a double in [1, 2), then
/// shifted down: two integer operations and a subtraction, which vectorise everywhere).
#[inline(always)]
pub fn unit_f64(x: u64) -> f64 {
    f64::from_bits((x >> 12) | 0x3ff0_0000_0000_0000) - 1.0
}

/// A fresh seed from the operating system's entropy (through the standard library's hasher keys),
/// mixed with the time, the process id and a process-wide counter so that two calls never return the same
/// value. The hasher keys and the counter are copied into a forked child; the process id is not.
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
    h.write_u32(std::process::id());
    mix64(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_next_whatever_the_split() {
        let mut a = Stream::new(42);
        let words: Vec<u64> = (0..103).map(|_| a.next_u64()).collect();
        for first in [0, 1, 3, 4, 5, 50] {
            let mut b = Stream::new(42);
            let mut buf = vec![0u64; 103];
            let (x, y) = buf.split_at_mut(first);
            b.fill_u64(x);
            b.fill_u64(y);
            assert_eq!(words, buf, "split at {first}");
        }
        assert_ne!(words[..4], Stream::new(43).fill_first4());
    }

    impl Stream {
        fn fill_first4(mut self) -> [u64; 4] {
            let mut o = [0; 4];
            self.fill_u64(&mut o);
            o
        }
    }

    const PINNED: [u64; 3] = [2219875553976118995, 5662599722749637117, 2163073493252918917];

    #[test]
    fn every_fill_kernel_gives_the_same_words() {
        let start = Stream::new(77).s;
        let mut want = vec![0u64; 1000];
        let mut s = start;
        fill_portable(&mut s, &mut want);
        let end = s;
        type Fill<'a> = &'a dyn Fn(&mut [[u64; LANES]; 4], &mut [u64]);
        let check = |name: &str, f: Fill| {
            let (mut s, mut got) = (start, vec![0u64; 1000]);
            f(&mut s, &mut got);
            assert_eq!(got, want, "{name}");
            assert_eq!(s, end, "{name}");
        };
        check("dispatch", &|s, o| fill_kernel(s, o));
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: SSE2 is part of x86-64.
            check("sse2", &|s, o| unsafe { fill_sse2(s, o) });
            if crate::simd::has_avx2() {
                // SAFETY: AVX2 is present (checked).
                check("avx2", &|s, o| unsafe { fill_avx2(s, o) });
            }
            if crate::simd::has_avx512() {
                // SAFETY: AVX-512F/VL and AVX2 are present (checked).
                check("avx512", &|s, o| unsafe { fill_avx512(s, o) });
            }
        }
    }

    #[test]
    fn value_stability() {
        // Pinned so that a change of the generator is deliberate (the values of every seeded call follow).
        let mut s = Stream::new(0);
        let got: Vec<u64> = (0..3).map(|_| s.next_u64()).collect();
        assert_eq!(got, PINNED);
    }

    #[test]
    fn derived_keys_differ() {
        let keys: std::collections::HashSet<u64> = (0..10_000).map(|i| derive(7, i)).collect();
        assert_eq!(keys.len(), 10_000);
        assert_ne!(derive(7, 0), derive(8, 0));
    }

    #[test]
    fn bits_are_balanced() {
        let mut s = Stream::new(5);
        let mut ones = [0u32; 64];
        for _ in 0..20_000 {
            let x = s.next_u64();
            for (b, o) in ones.iter_mut().enumerate() {
                *o += ((x >> b) & 1) as u32;
            }
        }
        // Binomial(20000, 1/2) per bit: 6 standard deviations is 424.
        assert!(ones.iter().all(|&o| (o as i64 - 10_000).abs() < 424), "{ones:?}");
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut s = Stream::new(1);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[s.below(7) as usize] += 1;
        }
        // chi-square with 6 degrees of freedom; 22.46 is the 0.999 quantile.
        let chi: f64 = counts.iter().map(|&c| (c as f64 - 10_000.0).powi(2) / 10_000.0).sum();
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
