//! The one trait over which float code is generic (f32 and f64): write a kernel once, instantiate it twice.
//!
//! Besides the standard library's math (libm, one call per element), [`Float`] carries the fast math the
//! kernels need in a form the compiler vectorises ([`Float::exp_fast`], [`Float::ln_1p_fast`]) and the
//! per-type caches of work buffers kept between calls ([`crate::buf::Caches`]).
//!
//! Half precision (bfloat16, float16) is a storage type, not a float type of the kernels: [`Stored`] is what
//! a kernel of type `T` can read (`T` itself, or a half type widened to f32 as it is gathered).

use std::fmt::Debug;

mod half;
pub use half::{
    bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, narrow_bf16, narrow_f16, widen_bf16, widen_f16,
    widen_f16_portable, Bf16, Stored, F16,
};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A float type the kernels run in: f32 or f64.
pub trait Float:
    crate::buf::Zeroable
    + Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + Stored<Self>
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// The largest finite value (TensorFlow masks accidental hits with its negative, -FLT_MAX for f32).
    const MAX: Self;
    /// Negative infinity.
    const NEG_INFINITY: Self;
    /// "float32" or "float64".
    const NAME: &'static str;

    /// The nearest value of this type to `x`.
    fn from_f64(x: f64) -> Self;
    /// The value as an f64 (exact).
    fn to_f64(self) -> f64;
    /// e^x (libm).
    fn exp(self) -> Self;
    /// ln x (libm).
    fn ln(self) -> Self;
    /// ln(1 + x) (libm).
    fn ln_1p(self) -> Self;
    /// e^x - 1 (libm).
    fn exp_m1(self) -> Self;
    /// |x|.
    fn abs(self) -> Self;
    /// The larger of the two (the other when one is NaN).
    fn max(self, other: Self) -> Self;
    /// The smaller of the two (the other when one is NaN).
    fn min(self, other: Self) -> Self;
    /// x^e (libm).
    fn powf(self, e: Self) -> Self;
    /// Neither infinite nor NaN.
    fn is_finite(self) -> bool;
    /// NaN.
    fn is_nan(self) -> bool;

    /// e^x, branch-free so that loops over it vectorise: within about 1 ulp (f32) or 1e-15 relative (f64)
    /// for x ≤ 0, and exactly 0 for −∞ and for x so negative that the result would be subnormal (below
    /// −86 in f32, −708 in f64). Arguments above the overflow threshold are clamped (the kernels call it
    /// with x ≤ 0: logits minus their maximum or log-sum-exp). NaN gives NaN.
    fn exp_fast(self) -> Self;
    /// ln(1 + y) for y in [0, 1], branch-free.
    fn ln_1p_fast(self) -> Self;
    /// The process-wide caches of work buffers of this type (see [`crate::buf::Scratch`]).
    #[doc(hidden)]
    fn caches() -> &'static crate::buf::Caches<Self>;
}

/// `exp_fast` in f32: range reduction x = n ln2 + r, |r| ≤ ln2/2, then e^r = 1 + r + r² P(r) with the
/// degree-5 minimax polynomial of Cephes' expf (about 1 ulp).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 355/512, exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer kept in the low bits
    let xc = x.clamp(-86.0, 88.0);
    let t = xc * LOG2E + SHIFT;
    let n = t - SHIFT;
    let ni = t.to_bits().wrapping_sub(SHIFT.to_bits());
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
    let v = f32::from_bits(p.to_bits().wrapping_add(ni << 23));
    if x < -86.0 {
        0.0
    } else {
        v
    }
}

/// `exp_fast` in f64: [`crate::vmath::exp`], zero below −708.
#[inline(always)]
fn exp_f64(x: f64) -> f64 {
    let v = crate::vmath::exp(x);
    if x < -708.0 {
        0.0
    } else {
        v
    }
}

/// `ln_1p_fast` in f32: ln u for u = 1 + y in [1, 2], as fdlibm's logf: u = 2^k (1 + f) with 1 + f in
/// [√2/2, √2), ln(1 + f) = 2 atanh(f / (2 + f)) by a minimax polynomial; then the rounding error of 1 + y is
/// put back (− c / u).
#[inline(always)]
fn ln_1p_f32(y: f32) -> f32 {
    const LG1: f32 = 0.666_666_6;
    const LG2: f32 = 0.400_009_72;
    const LG3: f32 = 0.284_987_87;
    const LG4: f32 = 0.242_790_79;
    const LN2: f32 = std::f32::consts::LN_2;
    let u = 1.0 + y;
    let c = (u - 1.0) - y;
    let big = u > std::f32::consts::SQRT_2;
    let m = if big { u * 0.5 } else { u };
    let k = if big { LN2 } else { 0.0 };
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let r = z * (LG1 + w * LG3) + w * (LG2 + w * LG4);
    let hfsq = 0.5 * f * f;
    (k + (f - (hfsq - s * (hfsq + r)))) - c / u
}

macro_rules! impl_float {
    ($t:ty, $name:literal, $exp:path, $ln_1p:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const MAX: Self = <$t>::MAX;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const NAME: &'static str = $name;

            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln_1p_fast(self) -> Self {
                $ln_1p(self)
            }
            fn caches() -> &'static crate::buf::Caches<Self> {
                static CACHES: crate::buf::Caches<$t> = crate::buf::Caches::new();
                &CACHES
            }
        }
    };
}

impl_float!(f32, "float32", exp_f32, ln_1p_f32);
impl_float!(f64, "float64", exp_f64, crate::vmath::ln_1p);

#[cfg(test)]
mod tests {
    use super::Float;

    #[test]
    fn exp_fast_is_accurate_and_exact_at_the_ends() {
        for i in 0..20_000 {
            let x = -(i as f64) * 0.0043;
            let e32 = (x as f32).exp_fast() as f64;
            let want = (x as f32 as f64).exp();
            if x > -85.0 {
                assert!((e32 - want).abs() <= 3e-7 * want, "f32 exp({x}) = {e32}, want {want}");
            }
            let e64 = x.exp_fast();
            assert!((e64 - x.exp()).abs() <= 1e-15 * x.exp());
        }
        let mut x = -90.0f64;
        while x < 80.0 {
            let a = (x as f32).exp_fast() as f64;
            let b = (x as f32 as f64).exp();
            if x < -86.0 {
                assert_eq!(a, 0.0);
            } else {
                assert!(((a - b) / b).abs() < 3e-7, "f32 exp({x}) = {a}, want {b}");
            }
            if x >= -700.0 {
                assert!(((x.exp_fast() - x.exp()) / x.exp()).abs() < 1e-14);
            }
            x += 0.0137;
        }
        assert_eq!(0.0f32.exp_fast(), 1.0);
        assert_eq!(f32::NEG_INFINITY.exp_fast(), 0.0);
        assert_eq!(f64::NEG_INFINITY.exp_fast(), 0.0);
        assert_eq!((-200.0f32).exp_fast(), 0.0);
        assert_eq!((-709.0f64).exp_fast(), 0.0);
    }

    #[test]
    fn ln_1p_fast_is_accurate() {
        let mut y = 0.0f32;
        while y <= 1.0 {
            let (a, b) = (y.ln_1p_fast() as f64, (y as f64).ln_1p());
            assert!((a - b).abs() <= 2.5e-7 * b.max(1e-30), "ln_1p({y}) = {a}, want {b}");
            y = if y < 1e-6 { y + 1e-8 } else { y * 1.01 + 1e-4 };
        }
        assert_eq!(0.0f32.ln_1p_fast(), 0.0);
    }
}
