//! Branch-free `exp`, `ln`, `ln_1p` and 1 - e^x in f64 that the compiler can vectorise.
//!
//! The standard library calls libm for every element, which stops loops from vectorising; sampling and
//! expected counts evaluate one or two transcendentals per draw, so those calls would dominate.
//! This version uses the classic range reduction x = n ln2 + r and a degree-12 Taylor series for e^r on
//! |r| <= ln2/2; it is within a few ulp of the correctly rounded result (tested against `std` below).
//!
//! The slice kernels are compiled for every SIMD level by [`crate::simd::dispatch!`], which picks at run
//! time; all levels give bit-identical results.
//!
//! The polynomial constants are written with fdlibm's published digits, more than a double holds; each
//! literal rounds to the double fdlibm uses, so clippy's `excessive_precision` is allowed in this file.
#![allow(clippy::excessive_precision)]

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

/// `k` as a double (correctly rounded), in operations that vectorise without AVX-512.
#[inline(always)]
pub(crate) fn u64_to_f64(k: u64) -> f64 {
    const TWO52: f64 = 4_503_599_627_370_496.0;
    let hi = f64::from_bits((k >> 32) | 0x4330_0000_0000_0000) - TWO52;
    let lo = f64::from_bits((k & 0xffff_ffff) | 0x4330_0000_0000_0000) - TWO52;
    hi * 4_294_967_296.0 + lo
}

/// ln(1 + y) for y > -1 (1 + y normal), accurate also for tiny |y|: the rounding error of 1 + y is put back.
#[inline(always)]
pub fn ln_1p(y: f64) -> f64 {
    let u = 1.0 + y;
    let c = (u - 1.0) - y;
    ln(u) - c / u
}

/// 2^(j/16), j = 0..16, correctly rounded.
pub(crate) const EXP2_16: [f64; 16] = [
    1.0,
    1.0442737824274138,
    1.0905077326652577,
    1.1387886347566916,
    1.189207115002721,
    1.241857812073484,
    1.2968395546510096,
    1.3542555469368927,
    std::f64::consts::SQRT_2,
    1.4768261459394993,
    1.5422108254079407,
    1.6104903319492543,
    1.681792830507429,
    1.7562521603732995,
    1.8340080864093424,
    1.9152065613971474,
];
/// 16 / ln 2, and ln2 / 16 split in a head of 32 significant bits and a tail (head + tail = ln2 / 16 to
/// 1e-27). The short head makes m * LN2_16_HI exact for every |m| < 2^21, so x - m * LN2_16_HI needs no fused
/// multiply-add to be exact (it is also a subtraction of nearby numbers, exact by Sterbenz's lemma): the
/// kernels run the same separately rounded multiplies and adds on every CPU, the SSE2 baseline included,
/// which has no FMA unit (and a software `fma` costs tens of nanoseconds).
pub(crate) const INV_LN2_16: f64 = 23.083120654223414;
pub(crate) const LN2_16_HI: f64 = 0.04332169877307024;
pub(crate) const LN2_16_LO: f64 = 1.1926343307941173e-11;
/// The Taylor coefficients of (e^r - 1)/r to the degree 6 (1, 1/2!, ..., 1/7!): on |r| <= ln2/32 the
/// first omitted term is below 1e-14 relative, far below the float32 rounding of what `one_minus_exp`
/// feeds.
const EXPM1_C: [f64; 7] = [1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];

/// 1 - e^x for x <= 0 (clamped at -708, where the result is 1), rounded to float32, within 2e-14 relative
/// before that rounding (so the float32 is the correctly rounded value but for ties that close). With
/// x = (16 n + j) ln2/16 + r, |r| <= ln2/32: e^x = s e^r with s = 2^n 2^(j/16), and
/// 1 - e^x = (1 - s) - s (e^r - 1), where 1 - s is exact or at least 1/2 (s <= 2^(-1/16) unless n = j = 0,
/// where s = 1 and the result is -(e^r - 1) itself), so nothing cancels.
#[inline(always)]
pub(crate) fn one_minus_exp(x: f64) -> f32 {
    let x = x.max(-708.0);
    let t = x * INV_LN2_16 + ROUND_SHIFT;
    let m = t - ROUND_SHIFT;
    let mi = t.to_bits().wrapping_sub(ROUND_SHIFT.to_bits()) as i64;
    // |m| <= 708 * 16 / ln2 < 2^14: m * LN2_16_HI is exact (see the constant).
    let r = (x - m * LN2_16_HI) - m * LN2_16_LO;
    let r2 = r * r;
    let c0 = r * EXPM1_C[1] + EXPM1_C[0];
    let c1 = r * EXPM1_C[3] + EXPM1_C[2];
    let c2 = r * EXPM1_C[5] + EXPM1_C[4];
    let inner = r2 * c1 + c0;
    let outer = r2 * EXPM1_C[6] + c2;
    let em1 = r * ((r2 * r2) * outer + inner);
    // s = 2^(j/16) with n added to its exponent (mi >> 4 = n, rounding down, as mi & 15 = j >= 0).
    let s =
        f64::from_bits((EXP2_16[(mi & 15) as usize].to_bits() as i64).wrapping_add((mi >> 4) << 52) as u64);
    ((1.0 - s) - s * em1) as f32
}

crate::simd::dispatch! {
    fn one_minus_exp_kernel(x: &[f64], out: &mut [f32]) {
        crate::simd::map_blocks::<8, _, _>(x, out, one_minus_exp)
    }
}

/// `one_minus_exp` of each element of `x` into `out`, by the widest kernel the CPU has (the same bits).
pub(crate) fn one_minus_exp_into(x: &[f64], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        // SAFETY: the CPU has the features `one_minus_exp_avx512` is compiled for (checked).
        return unsafe { one_minus_exp_avx512(x, out) };
    }
    one_minus_exp_kernel(x, out)
}

/// `one_minus_exp_kernel` with AVX-512 intrinsics: the same operations in the same order, eight lanes at a
/// time, the table of 2^(j/16) in two registers (a permute) instead of gathered from memory.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn one_minus_exp_avx512(x: &[f64], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(out.len()) / 8 * 8;
    let c = |v: f64| _mm512_set1_pd(v);
    // SAFETY: the table holds 16 doubles, the 128 bytes read.
    let (t0, t1) = unsafe { (_mm512_loadu_pd(EXP2_16.as_ptr()), _mm512_loadu_pd(EXP2_16.as_ptr().add(8))) };
    let shift = c(ROUND_SHIFT);
    for (o, v) in out[..n].chunks_exact_mut(8).zip(x[..n].chunks_exact(8)) {
        // SAFETY: `v` holds exactly eight doubles, the 64 bytes read.
        let v = unsafe { _mm512_loadu_pd(v.as_ptr()) };
        let v = _mm512_max_pd(v, c(-708.0));
        // a * b + c, rounded twice, as the portable code computes it (no FMA).
        let mad = |a, b, c| _mm512_add_pd(_mm512_mul_pd(a, b), c);
        let t = mad(v, c(INV_LN2_16), shift);
        let m = _mm512_sub_pd(t, shift);
        let mi = _mm512_sub_epi64(_mm512_castpd_si512(t), _mm512_castpd_si512(shift));
        let r =
            _mm512_sub_pd(_mm512_sub_pd(v, _mm512_mul_pd(m, c(LN2_16_HI))), _mm512_mul_pd(m, c(LN2_16_LO)));
        let r2 = _mm512_mul_pd(r, r);
        let c0 = mad(r, c(EXPM1_C[1]), c(EXPM1_C[0]));
        let c1 = mad(r, c(EXPM1_C[3]), c(EXPM1_C[2]));
        let c2 = mad(r, c(EXPM1_C[5]), c(EXPM1_C[4]));
        let inner = mad(r2, c1, c0);
        let outer = mad(r2, c(EXPM1_C[6]), c2);
        let em1 = _mm512_mul_pd(r, mad(_mm512_mul_pd(r2, r2), outer, inner));
        let tj = _mm512_permutex2var_pd(t0, mi, t1);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(
            _mm512_castpd_si512(tj),
            _mm512_slli_epi64::<52>(_mm512_srai_epi64::<4>(mi)),
        ));
        let res = _mm512_sub_pd(_mm512_sub_pd(c(1.0), s), _mm512_mul_pd(s, em1));
        // SAFETY: `o` holds exactly eight floats, the 32 bytes written.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm512_cvtpd_ps(res)) };
    }
    for (o, &v) in out[n..].iter_mut().zip(&x[n..]) {
        *o = one_minus_exp(v);
    }
}

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
    fn one_minus_exp_is_accurate_and_the_same_in_every_kernel() {
        // Exponents from 0 down past the clamp, dense near 0 (tiny counts), and the reduction's edges.
        let mut x: Vec<f64> = vec![0.0, -0.0, -1e-300, -1e-20, -1e-9, -0.0216, -0.02166, -0.0217, -0.5, -1.0];
        x.extend([-36.7, -37.0, -700.0, -708.0, -709.0, -1e6, f64::NEG_INFINITY]);
        let mut z = -1e-12;
        while z > -800.0 {
            x.push(z);
            z *= 1.0173;
        }
        let mut portable = vec![0f32; x.len()];
        one_minus_exp_kernel(&x, &mut portable);
        for (&v, &got) in x.iter().zip(&portable) {
            // The correctly rounded float32, or its neighbour where the value is within 2e-14 of a tie.
            let want = -(v.max(-708.0)).exp_m1();
            let ulps = (got.to_bits() as i64 - (want as f32).to_bits() as i64).abs();
            assert!(
                got == want as f32 || (ulps == 1 && (got as f64 - want).abs() <= want * 3.0e-8),
                "1 - e^{v}: {got} vs {want}"
            );
        }
        assert_eq!(one_minus_exp(-0.0), 0.0);
        let mut dispatched = vec![0f32; x.len()];
        one_minus_exp_into(&x, &mut dispatched);
        assert_eq!(portable, dispatched);
        // The scalar code (what the baseline kernel runs, element by element) gives the same bits too.
        let scalar: Vec<f32> = x.iter().map(|&v| one_minus_exp(v)).collect();
        assert_eq!(scalar, dispatched);
    }
}
