//! Branch-free `exp`, `exp_m1`, `ln` and `ln_1p` in f64 that the compiler can vectorise.
//!
//! The standard library calls libm for every element, which stops loops from vectorising; sampling and
//! expected counts evaluate one or two transcendentals per draw, so those calls would dominate.
//! This version uses the classic range reduction x = n ln2 + r and a degree-12 Taylor series for e^r on
//! |r| <= ln2/2; it is within a few ulp of the correctly rounded result (tested against `std` below).
//!
//! [`simd!`] compiles a kernel for AVX-512, for AVX2 + FMA and for the baseline, and picks at run time. The
//! Rust compiler never contracts `a * b + c` into an FMA on its own, so all versions give bit-identical
//! results.

const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-01;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// 1.5 * 2^52: adding it rounds a double of magnitude < 2^51 to an integer held in the low mantissa bits.
pub(crate) const ROUND_SHIFT: f64 = 6_755_399_441_055_744.0;

/// e^x for x in [-708, 709] (clamped outside: the result stays finite and positive).
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    let x = x.clamp(-708.0, 709.0);
    let t = x * LOG2E + ROUND_SHIFT;
    let n = t - ROUND_SHIFT;
    let ni = t.to_bits().wrapping_sub(ROUND_SHIFT.to_bits());
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series of e^r to degree 12 (error below r^13/13! < 2e-16 for |r| <= 0.347), evaluated with
    // Estrin's scheme: a dependency chain of depth ~8 instead of Horner's 24, so vector units stay busy.
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let q0 = (1.0 + r) + r2 * (0.5 + r * (1.0 / 6.0));
    let q1 = (1.0 / 24.0 + r * (1.0 / 120.0)) + r2 * (1.0 / 720.0 + r * (1.0 / 5_040.0));
    let q2 = (1.0 / 40_320.0 + r * (1.0 / 362_880.0)) + r2 * (1.0 / 3_628_800.0 + r * (1.0 / 39_916_800.0));
    let q3 = 1.0 / 479_001_600.0;
    let p = (q0 + r4 * q1) + r8 * (q2 + r4 * q3);
    f64::from_bits(p.to_bits().wrapping_add(ni << 52))
}

/// ln x for positive, normal, finite x, within an ulp or so (fdlibm's reduction x = 2^k (1 + f) with
/// sqrt(2)/2 <= 1 + f < sqrt(2) and its minimax polynomial for ln(1 + f) = 2 atanh(f / (2 + f))).
#[inline(always)]
pub fn ln(x: f64) -> f64 {
    const LG1: f64 = 6.666_666_666_666_735_130e-01;
    const LG2: f64 = 3.999_999_999_940_941_908e-01;
    const LG3: f64 = 2.857_142_874_366_239_149e-01;
    const LG4: f64 = 2.222_219_843_214_978_396e-01;
    const LG5: f64 = 1.818_357_216_161_805_012e-01;
    const LG6: f64 = 1.531_383_769_920_937_332e-01;
    const LG7: f64 = 1.479_819_860_511_658_591e-01;
    // Shift the bits so that the mantissa lands in [sqrt(2)/2, sqrt(2)) and the exponent absorbs the rest.
    let ix = x.to_bits().wrapping_add(0x3ff0_0000_0000_0000 - 0x3fe6_a09e_0000_0000);
    let k = f64::from_bits((ix >> 52) | 0x4330_0000_0000_0000) - (4_503_599_627_370_496.0 + 1023.0);
    let m = f64::from_bits((ix & 0x000f_ffff_ffff_ffff) + 0x3fe6_a09e_0000_0000);
    let f = m - 1.0;
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = t2 + t1;
    s * (hfsq + r) + k * LN2_LO - hfsq + f + k * LN2_HI
}

/// ln(1 + y) for y > -1 (1 + y normal), accurate also for tiny |y|: the rounding error of 1 + y is put back.
#[inline(always)]
pub fn ln_1p(y: f64) -> f64 {
    let u = 1.0 + y;
    let c = (u - 1.0) - y;
    ln(u) - c / u
}

/// e^z - 1 for z in [-708, 709] (clamped outside), within about 1e-15 relative everywhere, near 0 too: the
/// reduction z = n ln2 + r with |r| <= ln2/2, e^r - 1 from its Taylor series to the degree 12 (error below
/// 6e-16 relative), then e^z - 1 = 2^n (e^r - 1) + (2^n - 1), which does not cancel. Fused multiply-adds
/// (correctly rounded in software where the CPU has none) keep every kernel's result the same.
#[inline(always)]
pub fn exp_m1(z: f64) -> f64 {
    let z = z.clamp(-708.0, 709.0);
    let t = z * LOG2E + ROUND_SHIFT;
    let n = t - ROUND_SHIFT;
    let ni = t.to_bits().wrapping_sub(ROUND_SHIFT.to_bits());
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, z));
    // c = 1 + r/2! + r²/3! + ... + r¹¹/12!, by Estrin's scheme: a dependency chain of depth 5 instead of
    // Horner's 11, so that consecutive elements overlap in the vector units.
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let pair = |a: f64, b: f64| r.mul_add(b, a);
    let q0 = r2.mul_add(pair(1.0 / 6.0, 1.0 / 24.0), pair(1.0, 0.5));
    let q1 = r2.mul_add(pair(1.0 / 5_040.0, 1.0 / 40_320.0), pair(1.0 / 120.0, 1.0 / 720.0));
    let q2 =
        r2.mul_add(pair(1.0 / 39_916_800.0, 1.0 / 479_001_600.0), pair(1.0 / 362_880.0, 1.0 / 3_628_800.0));
    let c = r8.mul_add(q2, r4.mul_add(q1, q0));
    let p = r * c;
    // 2^n, n in [-1022, 1023]. For n = 0 the result is p itself (which keeps the sign of a zero z).
    let s = f64::from_bits(ni.wrapping_add(1023) << 52);
    if n == 0.0 {
        p
    } else {
        s.mul_add(p, s - 1.0)
    }
}

/// The widest kernels the environment variable `ZIPFNCE_SIMD` allows: `baseline` (0), `avx2` (1) or
/// anything else, the default (2: whatever the CPU has). Read once. It lets tests compare the kernels with
/// each other and lets valgrind, which does not know AVX-512, run the baseline kernels too. All kernels give
/// bit-identical results (see the module doc), so this never changes a value, only the speed.
#[cfg(target_arch = "x86_64")]
fn simd_cap() -> u8 {
    static CAP: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("ZIPFNCE_SIMD").as_deref().map(str::trim) {
        Ok("baseline") => 0,
        Ok("avx2") => 1,
        _ => 2,
    })
}

/// AVX-512 (F, DQ, VL) with AVX2 and FMA, as the widest kernels of [`simd!`] need.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx512() -> bool {
    simd_cap() >= 2
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && has_avx2()
}

/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    simd_cap() >= 1
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Compile the body of a function three times (AVX-512, AVX2 + FMA, baseline) and dispatch at run time.
/// Use only on bodies that are plain safe code over their arguments.
macro_rules! simd {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
                unsafe fn wider($($a: $t),*) $(-> $r)? { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($a: $t),*) $(-> $r)? { body($($a),*) }
                if $crate::vmath::has_avx512() {
                    // SAFETY: the CPU supports the features `wider` is compiled for (checked by
                    // `has_avx512`), its only requirement; it runs the same safe code as `body`.
                    return unsafe { wider($($a),*) };
                }
                if $crate::vmath::has_avx2() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked by `has_avx2`), the only requirement
                    // of `wide`, which runs the same safe code as `body`.
                    return unsafe { wide($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}
pub(crate) use simd;

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn exp_matches_std() {
        let mut x = -700.0;
        while x < 700.0 {
            assert!(rel(exp(x), x.exp()) < 1e-15, "exp({x})");
            x += 0.0137;
        }
        for x in [0.0, 1e-300, -1e-17, 0.3465, -0.3466, 43.0, 708.9] {
            assert!(rel(exp(x), x.exp()) < 1e-15, "exp({x})");
        }
    }

    #[test]
    fn ln_matches_std() {
        let mut x = 1e-300;
        while x < 1e300 {
            assert!((ln(x) - x.ln()).abs() <= 4.5e-16 * x.ln().abs().max(1e-300), "ln({x})");
            x *= 1.0137;
        }
        for x in [1.0, 1.0 + 1e-15, 1.0 + 2.3e-10, 0.999_999_999, 2.0, std::f64::consts::SQRT_2, 4.6e18] {
            assert!(rel(ln(x), x.ln()) <= 4.5e-16 || ln(x) == x.ln(), "ln({x})");
        }
    }

    #[test]
    fn ln_1p_matches_std() {
        for y in [1e-20, -1e-20, 1e-12, -1e-9, 3e-6, -0.5, 0.5, 1.0, 1e3, -0.999_999] {
            assert!(rel(ln_1p(y), y.ln_1p()) < 4e-16, "ln_1p({y})");
        }
    }

    #[test]
    fn exp_m1_matches_std() {
        for z in [1e-20, -1e-20, 1e-12, -1e-9, 9.9e-4, -1.1e-3, -0.5, 0.5, -30.0, 20.0, -700.0, 700.0] {
            assert!(rel(exp_m1(z), z.exp_m1()) < 2e-15, "exp_m1({z})");
        }
        assert!(exp_m1(-0.0).is_sign_negative() && exp_m1(0.0).is_sign_positive());
        let mut z = -40.0;
        while z < 40.0 {
            assert!(rel(exp_m1(z), z.exp_m1()) < 2e-15, "exp_m1({z})");
            z += 0.00731;
        }
    }
}
