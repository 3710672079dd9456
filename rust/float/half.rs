//! Half precision as a storage type: bfloat16 and IEEE float16 elements that the kernels widen to f32 as they
//! read them (the gathers of the sampled losses), never as a type they compute in.
//!
//! - [`Bf16`] and [`F16`]: 16-bit storage elements (`#[repr(transparent)]` over `u16`, so a NumPy `uint16`
//!   buffer is read in place).
//! - [`Stored`]: an element type a kernel of float type `T` can read: `T` itself (f32, f64), or a half type
//!   for `T = f32`. Its [`Stored::widen_finite`] is the gather's copy: it widens a contiguous run and says
//!   whether every element is finite.
//! - Conversions: widening is exact (every bf16 and f16 value, subnormals included, is an f32); narrowing
//!   ([`f32_to_bf16`], [`f32_to_f16`]) rounds to nearest, ties to even, overflows to ±∞, and keeps NaN a
//!   (quiet) NaN of the same sign.
//!
//! The slice kernels are compiled for every SIMD level by [`crate::simd::dispatch!`] (bf16 widening is a
//! 16-bit shift, which the compiler vectorises); f16 widening uses the F16C instruction `vcvtph2ps` where the
//! CPU has it, else a branch-free portable conversion that gives the same bits (tested on all 65 536 inputs).

use std::fmt::Debug;

/// A bfloat16 element: the upper 16 bits of an f32 (1 sign, 8 exponent, 7 fraction bits).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bf16(pub u16);

/// An IEEE 754 binary16 element (1 sign, 5 exponent, 10 fraction bits).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct F16(pub u16);

/// An element type that kernels of float type `T` read, widening it to `T` as they go.
/// Every [`super::Float`] is one (of itself), so code generic over `T: Float` may pass `Args<'_, T>` on.
pub trait Stored<T>: Copy + Debug + Send + Sync + 'static {
    /// The NumPy name of the storage type ("float32", "bfloat16", ...).
    const STORAGE: &'static str;
    /// The value as `T` (exact).
    fn widen(self) -> T;
    /// `dst[i] = src[i]` widened (over the shorter length), and whether every element is finite.
    fn widen_finite(src: &[Self], dst: &mut [T]) -> bool;
}

impl Stored<f32> for f32 {
    const STORAGE: &'static str = "float32";
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline]
    fn widen_finite(src: &[Self], dst: &mut [f32]) -> bool {
        let n = src.len().min(dst.len());
        crate::loss::tile::copy_finite(&src[..n], &mut dst[..n])
    }
}

impl Stored<f64> for f64 {
    const STORAGE: &'static str = "float64";
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
    #[inline]
    fn widen_finite(src: &[Self], dst: &mut [f64]) -> bool {
        let n = src.len().min(dst.len());
        crate::loss::tile::copy_finite(&src[..n], &mut dst[..n])
    }
}

impl Stored<f32> for Bf16 {
    const STORAGE: &'static str = "bfloat16";
    #[inline(always)]
    fn widen(self) -> f32 {
        bf16_to_f32(self.0)
    }
    #[inline]
    fn widen_finite(src: &[Self], dst: &mut [f32]) -> bool {
        widen_bf16(src, dst)
    }
}

impl Stored<f32> for F16 {
    const STORAGE: &'static str = "float16";
    #[inline(always)]
    fn widen(self) -> f32 {
        f16_to_f32(self.0)
    }
    #[inline]
    fn widen_finite(src: &[Self], dst: &mut [f32]) -> bool {
        widen_f16(src, dst)
    }
}

/// The f32 whose upper half is `h` (exact).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The bfloat16 nearest to `x`, ties to even; ±∞ beyond the range; NaN stays a quiet NaN of the same sign.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    // Adding 0x7fff plus the lowest kept bit rounds to nearest with ties to even; a carry into the exponent
    // is the right result (up to the next binade, or to infinity past the largest finite value).
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The f32 value of the binary16 `h` (exact for every input; NaNs come out quiet, as `vcvtph2ps` gives
/// them). Branch-free: the exponent and fraction shifted into place are the f32 2^−112 · |x| (for
/// subnormals too), so one exact multiplication by 2^112 finishes the finite case.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let finite = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000); // × 2^112
    let special = 0x7f80_0000 | (em & 0x03ff) << 13 | if em > 0x7c00 { 0x0040_0000 } else { 0 };
    let mag = if em >= 0x7c00 { special } else { finite.to_bits() };
    f32::from_bits(sign | mag)
}

/// The binary16 nearest to `x`, ties to even, with subnormal results rounded correctly; ±∞ beyond the
/// largest finite value (65504, after rounding); NaN stays a quiet NaN of the same sign.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let a = b & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7e00 | ((a >> 13) & 0x03ff) as u16;
    }
    if a >= 0x4780_0000 {
        // |x| ≥ 65536 (or ∞): infinity.
        return sign | 0x7c00;
    }
    if a >= 0x3880_0000 {
        // Normal result (|x| ≥ 2^−14): rebias the exponent and round off 13 bits; a carry is right.
        let r = a - ((127 - 15) << 23);
        let lsb = (r >> 13) & 1;
        return sign | ((r + 0x0fff + lsb) >> 13) as u16;
    }
    if a < 0x3300_0000 {
        // |x| < 2^−25: rounds to ±0 (2^−25 itself is a tie with 0, which is even).
        return sign;
    }
    // Subnormal result: the significand with its implicit bit, shifted right by 126 − e (14..=24 bits), with
    // round to nearest, ties to even. A carry into bit 10 gives the smallest normal, as it should.
    let e = a >> 23;
    let m = (a & 0x007f_ffff) | 0x0080_0000;
    let shift = 126 - e;
    let q = m >> shift;
    let rem = m & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let up = rem > half || (rem == half && q & 1 == 1);
    sign | (q + up as u32) as u16
}

crate::simd::dispatch! {
    /// Widen bfloat16 `src` into `dst` (over the shorter length) and say whether every element is finite.
    pub fn widen_bf16(src: &[Bf16], dst: &mut [f32]) -> bool {
        let n = src.len().min(dst.len());
        let mut bad = 0u16;
        for (o, h) in dst[..n].iter_mut().zip(&src[..n]) {
            *o = f32::from_bits((h.0 as u32) << 16);
            // All-ones exponent (∞ or NaN) carries into the top bit.
            bad |= ((h.0 & 0x7f80) + 0x0080) & 0x8000;
        }
        bad == 0
    }
}

crate::simd::dispatch! {
    /// Narrow `src` to bfloat16 (round to nearest, ties to even) into `dst`, over the shorter length.
    pub fn narrow_bf16(src: &[f32], dst: &mut [Bf16]) {
        for (o, &x) in dst.iter_mut().zip(src) {
            *o = Bf16(f32_to_bf16(x));
        }
    }
}

/// Widen float16 `src` into `dst` (over the shorter length) and say whether every element is finite.
pub fn widen_f16(src: &[F16], dst: &mut [f32]) -> bool {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (`simd::has_f16c` checked them), the only requirement of
        // `widen_f16_f16c`, and both slices have length `n`.
        return unsafe { widen_f16_f16c(src, dst) };
    }
    widen_f16_portable(src, dst)
}

/// The portable [`widen_f16`] (compiled for every SIMD level; the same bits as the F16C one).
pub fn widen_f16_portable(src: &[F16], dst: &mut [f32]) -> bool {
    widen_f16_body(src, dst)
}

crate::simd::dispatch! {
    /// The portable body of [`widen_f16`], for every SIMD level.
    fn widen_f16_body(src: &[F16], dst: &mut [f32]) -> bool {
        let mut bad = 0u16;
        for (o, h) in dst.iter_mut().zip(src) {
            *o = f16_to_f32(h.0);
            bad |= ((h.0 & 0x7c00) + 0x0400) & 0x8000;
        }
        bad == 0
    }
}

/// [`widen_f16`] with `vcvtph2ps`, eight elements at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_f16_f16c(src: &[F16], dst: &mut [f32]) -> bool {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut bad = _mm256_setzero_si256();
    let exp = _mm256_set1_epi32(0x7f80_0000);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: elements i..i + 8 lie inside both slices (i + 8 ≤ n); `F16` is a transparent `u16`, and the
        // unaligned load and store have no alignment requirement.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            let f = _mm256_cvtph_ps(h);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), f);
            // An all-ones f32 exponent marks ∞ and NaN.
            let e = _mm256_and_si256(_mm256_castps_si256(f), exp);
            bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(e, exp));
        }
        i += 8;
    }
    let tail = widen_f16_body(&src[i..n], &mut dst[i..n]);
    _mm256_testz_si256(bad, bad) == 1 && tail
}

/// Narrow `src` to float16 (round to nearest, ties to even) into `dst`, over the shorter length.
pub fn narrow_f16(src: &[f32], dst: &mut [F16]) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = F16(f32_to_f16(x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact value of a binary16 from its definition, in f64.
    fn f16_value(h: u16) -> f64 {
        let s = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = ((h >> 10) & 0x1f) as i32;
        let m = (h & 0x3ff) as f64;
        match e {
            0 => s * m * 2f64.powi(-24),
            31 if m == 0.0 => s * f64::INFINITY,
            31 => f64::NAN,
            _ => s * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        }
    }

    #[test]
    fn f16_widening_is_exact_for_every_input_and_matches_f16c() {
        let all: Vec<F16> = (0..=u16::MAX).map(F16).collect();
        let mut fast = vec![0f32; all.len()];
        let mut port = vec![0f32; all.len()];
        // Odd lengths and offsets exercise the tails.
        for (lo, hi) in [(0, all.len()), (3, all.len() - 5), (0x7bf0, 0x7c10)] {
            widen_f16(&all[lo..hi], &mut fast[lo..hi]);
            widen_f16_portable(&all[lo..hi], &mut port[lo..hi]);
        }
        for h in 0..=u16::MAX {
            let (f, p) = (fast[h as usize], port[h as usize]);
            assert_eq!(f.to_bits(), p.to_bits(), "{h:#06x}: F16C {f:e} vs portable {p:e}");
            assert_eq!(p.to_bits(), f16_to_f32(h).to_bits());
            let want = f16_value(h);
            if want.is_nan() {
                assert!(p.is_nan() && (p.to_bits() >> 31) as u16 == h >> 15);
            } else {
                assert_eq!(p as f64, want, "{h:#06x}");
                // Narrowing the widened value gives it back (±0 included).
                assert_eq!(f32_to_f16(p), h);
            }
        }
        // Finiteness flags.
        assert!(widen_f16(&[F16(0x3c00); 20], &mut [0.0; 20]));
        for bad in [0x7c00u16, 0xfc00, 0x7e00, 0x7c01] {
            let mut v = vec![F16(0x3c00); 19];
            for at in [0, 8, 18] {
                v[at] = F16(bad);
                assert!(!widen_f16(&v, &mut [0.0; 19]), "{bad:#x} at {at}");
                assert!(!widen_f16_portable(&v, &mut [0.0; 19]));
                v[at] = F16(0x3c00);
            }
        }
    }

    #[test]
    fn f16_narrowing_rounds_to_nearest_even() {
        // Every gap between neighbouring f16 values (positive and negative, subnormals included): the
        // midpoint goes to the even neighbour, a hair either side to the nearer one.
        for h in 0u16..0x7c00 {
            for s in [0u16, 0x8000] {
                let (lo, hi) = (h | s, (h + 1) | s);
                let (a, b) = (f16_value(lo), f16_value(hi));
                if b.is_infinite() {
                    continue;
                }
                let mid = (a + b) / 2.0; // exact in f64, and in f32 (at most 12 significant bits)
                let even = if lo & 1 == 0 { lo } else { hi };
                assert_eq!(f32_to_f16(mid as f32), even, "midpoint of {lo:#06x} and {hi:#06x}");
                let below = f32::from_bits((mid as f32).to_bits() - 1);
                let above = f32::from_bits((mid as f32).to_bits() + 1);
                let (near_a, near_b) = if a.abs() < b.abs() { (below, above) } else { (above, below) };
                assert_eq!(f32_to_f16(near_a), lo);
                assert_eq!(f32_to_f16(near_b), hi);
            }
        }
        // Overflow: 65504 is the largest; half-way to 65536 and beyond round to ∞.
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65519.99), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(-1e10), 0xfc00);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        assert_eq!(f32_to_f16(-f32::NAN) & 0x8000, 0x8000);
        // Below half the smallest subnormal: ±0; just above: the smallest subnormal.
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0);
        assert_eq!(f32_to_f16(2f32.powi(-25) * 1.0001), 1);
        assert_eq!(f32_to_f16(-1e-30), 0x8000);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_narrowing_matches_f16c_on_random_floats() {
        if !crate::simd::has_f16c() {
            return;
        }
        #[target_feature(enable = "f16c")]
        unsafe fn hw(x: f32) -> u16 {
            use std::arch::x86_64::*;
            let v = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set1_ps(x));
            _mm_extract_epi16::<0>(v) as u16
        }
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..2_000_000u32 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Mostly values near the f16 range, some anywhere.
            let bits = if i % 4 == 0 { s as u32 } else { (s as u32 & 0x8fff_ffff) | 0x3000_0000 };
            let x = f32::from_bits(bits);
            // SAFETY: the CPU has F16C (checked above).
            let want = unsafe { hw(x) };
            let got = f32_to_f16(x);
            if x.is_nan() {
                assert!(f16_to_f32(got).is_nan());
            } else {
                assert_eq!(got, want, "{x:e} ({bits:#010x})");
            }
        }
    }

    #[test]
    fn bf16_conversions_round_to_nearest_even_and_widen_exactly() {
        for h in 0..=u16::MAX {
            let f = bf16_to_f32(h);
            if f.is_nan() {
                assert!(bf16_to_f32(f32_to_bf16(f)).is_nan());
                continue;
            }
            assert_eq!(f32_to_bf16(f), h);
            if h & 0x7fff < 0x7f7f {
                // The midpoint with the next value up in magnitude, and its neighbours.
                let mid = f.to_bits() + 0x8000;
                let even = if h & 1 == 0 { h } else { h + 1 };
                assert_eq!(f32_to_bf16(f32::from_bits(mid)), even);
                assert_eq!(f32_to_bf16(f32::from_bits(mid - 1)), h);
                assert_eq!(f32_to_bf16(f32::from_bits(mid + 1)), h + 1);
            }
        }
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80); // rounds up to ∞
        assert_eq!(f32_to_bf16(f32::NAN) & 0x7fc0, 0x7fc0);
        let src: Vec<Bf16> = (0..37).map(|i| Bf16(0x3f80 + i)).collect();
        let mut dst = vec![0f32; 37];
        assert!(widen_bf16(&src, &mut dst));
        assert!(dst.iter().zip(&src).all(|(d, s)| d.to_bits() == (s.0 as u32) << 16));
        let mut back = vec![Bf16(0); 37];
        narrow_bf16(&dst, &mut back);
        assert_eq!(back, src);
        for bad in [0x7f80u16, 0xff80, 0x7fc1] {
            let mut v = src.clone();
            v[35] = Bf16(bad);
            assert!(!widen_bf16(&v, &mut dst));
        }
    }
}
