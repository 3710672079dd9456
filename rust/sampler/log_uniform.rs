//! Log-uniform (Zipfian) classes: P(k) = ln((k + 2) / (k + 1)) / ln(range_max + 1), TensorFlow's
//! `LogUniformSampler`. A draw is floor(e^(u ln(range_max + 1))) - 1 for u uniform in [0, 1): the discretised
//! continuous log-uniform law on [1, range_max + 1), whose mass on [k + 1, k + 2) is exactly P(k).
//! Draws conditioned on k >= h take u L from [ln(h + 1), L) instead: the same law restricted to the ids from
//! h on, whose head below h carries P(k < h) = ln(h + 1) / L.

use super::{check_range, refine, ByteScan, Distribution};
use crate::error::Result;
use crate::rng::Stream;
use crate::simd::dispatch as simd;
use crate::vmath::{self, u64_to_f64, EXP2_16, INV_LN2_16, LN2_16_HI, LN2_16_LO, ROUND_SHIFT};

/// The log-uniform law P(k) = ln((k + 2) / (k + 1)) / ln(range_max + 1) over `0..range_max`.
#[derive(Clone, Debug)]
pub struct LogUniform {
    range_max: u64,
    log_range: f64,
    /// Compute P(k) with TensorFlow's expression `log((k + 2.0) / (k + 1.0)) / log1p(range_max)`, whose
    /// quotient rounds before the logarithm (a relative error near 1e-16 * k), for bit parity with it.
    tf_formula: bool,
}

/// Where draws land: x = u width + lo for u uniform in [0, 1), ids clamped to [first, last]. The whole range
/// is lo = 0, width = L, first = 0 (and u width + 0 is u L exactly, so those draws have the same bits as
/// before draws above a head existed).
#[derive(Clone, Copy, Debug)]
struct Span {
    lo: f64,
    width: f64,
    first: u64,
    last: u64,
}

impl LogUniform {
    /// The law over `0..range_max` (1 <= range_max <= 2^62).
    pub fn new(range_max: i64) -> Result<Self> {
        let range_max = check_range(range_max)?;
        Ok(LogUniform { range_max, log_range: (range_max as f64).ln_1p(), tf_formula: false })
    }

    /// The same distribution, with P(k) computed exactly as TensorFlow's kernel does.
    pub fn tf(range_max: i64) -> Result<Self> {
        Ok(LogUniform { tf_formula: true, ..Self::new(range_max)? })
    }

    /// The draws of ids from `first` on (`first` below range_max).
    fn span(&self, first: u64) -> Span {
        let lo = if first == 0 { 0.0 } else { (first as f64).ln_1p() };
        Span { lo, width: self.log_range - lo, first, last: self.range_max - 1 }
    }

    fn tf_prob(&self, k: u64) -> f64 {
        ((k as f64 + 2.0) / (k as f64 + 1.0)).ln() / self.log_range
    }
}

// The draws and probabilities below are computed by a portable kernel and, on CPUs with AVX-512, by the same
// operations written with intrinsics (`avx512`), whose 16-entry tables live in registers instead of being
// gathered from memory. Neither uses fused multiply-adds (the SSE2 baseline has none, and a software `fma`
// costs tens of nanoseconds): the same separately rounded operations in the same order, so every machine
// gives the same bits.

/// The Taylor coefficients of e^r to the degree 7, highest first: |r| <= ln2/32, so the first omitted term
/// is below 2e-18.
const EXP_TAYLOR: [f64; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

/// e^x for x = u width + lo, u the 52-bit uniform of the word `w` (the value `unit_f64(w)`): x = (16 n + j)
/// ln2/16 + r with |r| <= ln2/32, so e^x = 2^n 2^(j/16) e^r. Relative error a few 1e-16 (and |x| 1e-16 from
/// rounding x, as any evaluation of the formula).
#[inline(always)]
fn exp_ul(w: u64, span: Span) -> f64 {
    let x = crate::rng::unit_f64(w) * span.width + span.lo;
    let t = x * INV_LN2_16 + ROUND_SHIFT;
    let m = t - ROUND_SHIFT;
    let mi = t.to_bits().wrapping_sub(ROUND_SHIFT.to_bits());
    // m * LN2_16_HI is exact (see the constant), so r needs no fused multiply-add.
    let r = (x - m * LN2_16_HI) - m * LN2_16_LO;
    let mut p = EXP_TAYLOR[0];
    for &c in &EXP_TAYLOR[1..] {
        p = p * r + c;
    }
    let v = EXP2_16[(mi & 15) as usize] * p;
    // x >= 0, so mi >= 0 and mi >> 4 = n.
    f64::from_bits(v.to_bits().wrapping_add((mi >> 4) << 52))
}

/// ln(1 + 1/(k+1)) for k = 0..16, correctly rounded.
const HEAD16: [f64; 16] = [
    std::f64::consts::LN_2,
    0.4054651081081644,
    0.2876820724517809,
    0.22314355131420976,
    0.18232155679395462,
    0.1541506798272583,
    0.13353139262452263,
    0.11778303565638346,
    0.1053605156578263,
    0.09531017980432487,
    0.08701137698962977,
    0.08004270767353643,
    0.07410797215372188,
    0.06899287148695145,
    0.06453852113757118,
    0.06062462181643484,
];
/// The series of atanh(s)/s in t = s², highest first: 1 + t/3 + t²/5 + ... + t⁶/13. For k >= 16,
/// s = 1/(2k+3) <= 1/35, so the first omitted term is below 3e-21.
const ATANH_SERIES: [f64; 7] = [1.0 / 13.0, 1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 0.2, 1.0 / 3.0, 1.0];

/// ln(1 + 1/(k+1)) = 2 atanh(1/(2k+3)): the table for k < 16, the series beyond.
#[inline(always)]
fn ln_ratio(k: u64) -> f64 {
    let s = 1.0 / (u64_to_f64(k) * 2.0 + 3.0);
    let t = s * s;
    let mut c = ATANH_SERIES[0];
    for &a in &ATANH_SERIES[1..] {
        c = c * t + a;
    }
    let series = (s * 2.0) * c;
    let table = HEAD16[k.min(15) as usize];
    if k < 16 {
        table
    } else {
        series
    }
}

simd! {
    /// P(k) = ln(1 + 1/(k+1)) / ln(range_max + 1).
    fn prob_kernel(ids: &[u64], out: &mut [f64], inv_log_range: f64) {
        crate::simd::map_blocks::<8, _, _>(ids, out, |k| ln_ratio(k) * inv_log_range)
    }
}

/// Ranges below this draw through 32-bit conversions, which vectorise.
const SMALL_RANGE: u64 = 1 << 30;

simd! {
    /// P(k) with TensorFlow's expression ln((k + 2) / (k + 1)) / ln(range_max + 1) (see `tf_formula`).
    fn tf_prob_kernel(ids: &[u64], out: &mut [f64], inv_log_range: f64) {
        for (o, &k) in out.iter_mut().zip(ids) {
            let kf = u64_to_f64(k);
            *o = vmath::ln((kf + 2.0) / (kf + 1.0)) * inv_log_range;
        }
    }
}

/// The id of a draw of a range below 2^30 from v = e^x: trunc(v) - 1, clamped to [first, last] (rounding
/// at either end of the span may step one id outside it).
#[inline(always)]
fn small_id(v: f64, span: Span) -> u64 {
    // Clamped in floating point before the truncation, which is monotone: first + 1 and last + 1 are whole
    // numbers (at most 2^30, exact in a double), so trunc(clamped v) - 1 is trunc(v) - 1 clamped to
    // [first, last], with no 64-bit integer compare (SSE2 has none, and it would stop the loop vectorising).
    // (Compares rather than f64::max/min, whose NaN rules cost four more instructions per vector; v is
    // never NaN.)
    let (lo, hi) = (span.first as f64 + 1.0, span.last as f64 + 1.0);
    let v = if v > lo { v } else { lo };
    let v = if v < hi { v } else { hi };
    // SAFETY: v is within [1, 2^30], inside i32's range, so the unchecked conversion (a single truncating
    // instruction, unlike the saturating `as`) is defined.
    let t = unsafe { v.to_int_unchecked::<i32>() };
    (t - 1) as u32 as u64
}

simd! {
    /// Draws for ranges below 2^30.
    fn draw_small_kernel(words: &[u64], out: &mut [u64], span: Span) {
        crate::simd::map_blocks::<8, _, _>(words, out, |w| small_id(exp_ul(w, span), span))
    }
}

simd! {
    /// The continuous log-uniform value e^x in [e^lo, range_max + 1), for huge ranges.
    fn draw_kernel(words: &[u64], out: &mut [f64], span: Span) {
        for (o, &w) in out.iter_mut().zip(words) {
            *o = exp_ul(w, span);
        }
    }
}

/// Draws for ranges below 2^30, by the widest kernel the CPU has.
fn draw_small(words: &[u64], out: &mut [u64], span: Span) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        // SAFETY: the CPU has the features `avx512::draw_small` is compiled for (checked).
        return unsafe { avx512::draw_small(words, out, span) };
    }
    draw_small_kernel(words, out, span)
}

/// e^x of each word, by the widest kernel the CPU has.
fn draw_values(words: &[u64], out: &mut [f64], span: Span) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        // SAFETY: the CPU has the features `avx512::draw` is compiled for (checked).
        return unsafe { avx512::draw(words, out, span) };
    }
    draw_kernel(words, out, span)
}

/// `draw_scan` without the AVX-512 kernel: the draws of `draw_above` made piece by piece by `draw_small`
/// (each draw is a function of its own word, and the stream gives the same words however they are asked
/// for, so the ids are those of drawing the whole chunk), each piece's map bytes asked for as soon as it is
/// drawn, and the scan running a piece behind. Against drawing the chunk into a buffer and scanning it
/// (which prefetches too), the chunk makes no trip through memory: a few per cent faster warm, the same
/// after other work, where the scan waits on the map's cache misses either way (without any prefetch that
/// call takes 190 instead of 147 µs for a unique S=8192 over 10^6 classes). Returns (new ids, draws used),
/// like `ByteScan::scan`.
fn draw_scan_pieces(stream: &mut Stream, len: usize, span: Span, scan: &mut ByteScan<'_>) -> (usize, usize) {
    // One piece ahead is enough: measured from 1 to 32 pieces ahead, the call after other work took the
    // same time (its misses are bounded by how many the core keeps in flight, not by the distance), and
    // the warm call was fastest with one (92–94 against 98–106 µs for the draws of a unique S=8192).
    const PIECE: usize = 64;
    const AHEAD: usize = 1;
    const SLOTS: usize = AHEAD + 1;
    debug_assert!(scan.fits(span.last + 1));
    let mut words = [0u64; PIECE];
    let mut ring = [[0u64; PIECE]; SLOTS];
    let pieces = len.div_ceil(PIECE);
    let piece_len = |p: usize| (len - p * PIECE).min(PIECE);
    let hint = scan.prefetcher();
    let mut taker = scan.taker();
    let mut drawn = 0;
    for p in 0..pieces {
        while drawn < pieces.min(p + SLOTS) {
            let (n, slot) = (piece_len(drawn), &mut ring[drawn % SLOTS]);
            stream.fill_u64(&mut words[..n]);
            draw_small(&words[..n], &mut slot[..n], span);
            for &id in &slot[..n] {
                hint.fetch(id);
            }
            drawn += 1;
        }
        for (i, &id) in ring[p % SLOTS][..piece_len(p)].iter().enumerate() {
            // SAFETY: draws are clamped to [first, last] (`small_id`), and last is below the map's length
            // (`fits`, the caller's check); the loop ends as soon as `take` says the scan is over.
            if unsafe { taker.take(id) } {
                return (taker.new_ids(), p * PIECE + i + 1);
            }
        }
    }
    (taker.new_ids(), len)
}

/// The kernels above with AVX-512 intrinsics: eight lanes at a time, the same operations in the same order,
/// the 16-entry tables picked by a two-register permute; the last few elements go to the portable code.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::rng::Lanes8;
    use std::arch::x86_64::*;

    /// A 16-entry table in two registers, for `_mm512_permutex2var_pd`.
    #[inline(always)]
    fn table16(t: &[f64; 16]) -> (__m512d, __m512d) {
        // SAFETY: the table holds 16 doubles, the 128 bytes read (unaligned loads); AVX-512F is enabled in
        // every function this is inlined into.
        unsafe { (_mm512_loadu_pd(t.as_ptr()), _mm512_loadu_pd(t.as_ptr().add(8))) }
    }

    /// A span's constants in registers.
    #[derive(Clone, Copy)]
    struct Span8 {
        lo: __m512d,
        width: __m512d,
        first: __m512i,
        last: __m512i,
    }

    impl Span8 {
        #[inline(always)]
        fn new(s: Span) -> Self {
            // SAFETY: register broadcasts; AVX-512F is enabled in every function this is inlined into.
            unsafe {
                Span8 {
                    lo: _mm512_set1_pd(s.lo),
                    width: _mm512_set1_pd(s.width),
                    first: _mm512_set1_epi64(s.first as i64),
                    last: _mm512_set1_epi64(s.last as i64),
                }
            }
        }
    }

    /// e^x of eight words (see `exp_ul`). Without TAIL the span is the whole range (lo = 0, first = 0), whose
    /// add and clamp are skipped: the same bits (u L + 0 = u L), ~5 % fewer cycles for plain draws.
    #[inline(always)]
    unsafe fn exp_ul8<const TAIL: bool>(w: __m512i, span: Span8, exp2: (__m512d, __m512d)) -> __m512d {
        let one = _mm512_set1_epi64(0x3ff0_0000_0000_0000);
        let u = _mm512_sub_pd(
            _mm512_castsi512_pd(_mm512_or_si512(_mm512_srli_epi64::<12>(w), one)),
            _mm512_set1_pd(1.0),
        );
        let x = _mm512_mul_pd(u, span.width);
        let x = if TAIL { _mm512_add_pd(x, span.lo) } else { x };
        let shift = _mm512_set1_pd(ROUND_SHIFT);
        let t = _mm512_add_pd(_mm512_mul_pd(x, _mm512_set1_pd(INV_LN2_16)), shift);
        let m = _mm512_sub_pd(t, shift);
        let mi = _mm512_sub_epi64(_mm512_castpd_si512(t), _mm512_castpd_si512(shift));
        let r = _mm512_sub_pd(x, _mm512_mul_pd(m, _mm512_set1_pd(LN2_16_HI)));
        let r = _mm512_sub_pd(r, _mm512_mul_pd(m, _mm512_set1_pd(LN2_16_LO)));
        let mut p = _mm512_set1_pd(EXP_TAYLOR[0]);
        for &c in &EXP_TAYLOR[1..] {
            p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(c));
        }
        let v = _mm512_mul_pd(_mm512_permutex2var_pd(exp2.0, mi, exp2.1), p);
        _mm512_castsi512_pd(_mm512_add_epi64(
            _mm512_castpd_si512(v),
            _mm512_slli_epi64::<52>(_mm512_srli_epi64::<4>(mi)),
        ))
    }

    /// The ids of eight words for a range below 2^30 (see `small_id`): each in `first..=last`.
    #[inline(always)]
    unsafe fn small_ids8<const TAIL: bool>(w: __m512i, span: Span8, exp2: (__m512d, __m512d)) -> __m512i {
        // SAFETY: only arithmetic on registers (the caller's features include AVX-512F/DQ and FMA).
        unsafe {
            let v = exp_ul8::<TAIL>(w, span, exp2);
            let v = _mm512_min_pd(_mm512_max_pd(v, _mm512_set1_pd(1.0)), _mm512_set1_pd(2_000_000_000.0));
            let id = _mm512_sub_epi64(_mm512_cvtepi32_epi64(_mm512_cvttpd_epi32(v)), _mm512_set1_epi64(1));
            let id = if TAIL { _mm512_max_epi64(id, span.first) } else { id };
            _mm512_min_epi64(id, span.last)
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    pub fn draw_small(words: &[u64], out: &mut [u64], span: Span) {
        if span.first == 0 {
            draw_small_g::<false>(words, out, span)
        } else {
            draw_small_g::<true>(words, out, span)
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    fn draw_small_g<const TAIL: bool>(words: &[u64], out: &mut [u64], span: Span) {
        let exp2 = table16(&EXP2_16);
        let s8 = Span8::new(span);
        let n = words.len().min(out.len()) / 8 * 8;
        for (o, w) in out[..n].chunks_exact_mut(8).zip(words[..n].chunks_exact(8)) {
            // SAFETY: `w` and `o` hold exactly eight u64: the 64 bytes read and written (unaligned); the rest
            // is register arithmetic (the function's features are enabled).
            unsafe {
                let id = small_ids8::<TAIL>(_mm512_loadu_si512(w.as_ptr() as *const __m512i), s8, exp2);
                _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, id);
            }
        }
        for (o, &w) in out[n..].iter_mut().zip(&words[n..]) {
            *o = small_id(exp_ul(w, span), span);
        }
    }

    /// `draw_small` of `len` words of the lanes (len a multiple of 8), de-duplicated as they come by
    /// `scan.take`: the same result as drawing them all into a buffer and scanning it, in one loop in which
    /// the draws run RUN_AHEAD ids ahead of the scan. Interleaved so, the vector arithmetic of the draws
    /// fills the cycles the scan's loads and stores leave idle (about 40 % faster than drawing, then
    /// scanning, on Zen 4). Returns (new ids, draws used), like `ByteScan::scan`.
    ///
    /// # Safety
    /// `scan.fits(span.last + 1)` (every id drawn is at most `span.last`: what `Taker::take` needs) and
    /// `len % 8 == 0`.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    pub unsafe fn draw_scan(
        lanes: &mut [[u64; 4]; 4],
        len: usize,
        span: Span,
        scan: &mut ByteScan<'_>,
    ) -> (usize, usize) {
        // SAFETY: the caller's promises, passed on.
        unsafe {
            if span.first == 0 {
                draw_scan_g::<false>(lanes, len, span, scan)
            } else {
                draw_scan_g::<true>(lanes, len, span, scan)
            }
        }
    }

    /// `draw_scan`, for spans from the first id (without TAIL) or above a head (with it).
    ///
    /// # Safety
    /// As `draw_scan`.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    unsafe fn draw_scan_g<const TAIL: bool>(
        lanes: &mut [[u64; 4]; 4],
        len: usize,
        span: Span,
        scan: &mut ByteScan<'_>,
    ) -> (usize, usize) {
        const RING: usize = 128;
        const RUN_AHEAD: usize = 64;
        debug_assert!(len.is_multiple_of(8) && scan.fits(span.last + 1));
        let exp2 = table16(&EXP2_16);
        let s8 = Span8::new(span);
        // SAFETY: the CPU has the features (this function's own).
        let mut gen = unsafe { Lanes8::load(lanes) };
        let mut ring = [0u64; RING];
        let hint = scan.prefetcher();
        let put = |gen: &mut Lanes8, ring: &mut [u64; RING], at: usize| {
            // SAFETY: register arithmetic, then a 64-byte store at ring[at % RING..][..8], inside the ring
            // (at and RING are multiples of 8).
            unsafe {
                let id = small_ids8::<TAIL>(gen.next8(), s8, exp2);
                _mm512_storeu_si512(ring.as_mut_ptr().add(at % RING) as *mut __m512i, id);
            }
            // Ask for each id's map byte now, RUN_AHEAD draws before the scan reads it: where the map is
            // not in cache (the first call after other work), this is what keeps the scan from waiting.
            for j in 0..8 {
                hint.fetch(ring[(at + j) % RING]);
            }
        };
        let mut drawn = 0;
        while drawn < RUN_AHEAD.min(len) {
            put(&mut gen, &mut ring, drawn);
            drawn += 8;
        }
        let mut taker = scan.taker();
        let mut i = 0;
        while i < len {
            if drawn < len {
                put(&mut gen, &mut ring, drawn);
                drawn += 8;
            }
            for j in 0..8 {
                // SAFETY: ids are at most `last` (clamped by `small_ids8`), below the map's length, and
                // `taker` stops at `want`, within `free` (the caller's promises).
                if unsafe { taker.take(ring[(i + j) % RING]) } {
                    // SAFETY: as above.
                    unsafe { gen.store(lanes) };
                    return (taker.new_ids(), i + j + 1);
                }
            }
            i += 8;
        }
        // SAFETY: as above.
        unsafe { gen.store(lanes) };
        (taker.new_ids(), len)
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    pub fn draw(words: &[u64], out: &mut [f64], span: Span) {
        if span.first == 0 {
            draw_g::<false>(words, out, span)
        } else {
            draw_g::<true>(words, out, span)
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    fn draw_g<const TAIL: bool>(words: &[u64], out: &mut [f64], span: Span) {
        let exp2 = table16(&EXP2_16);
        let s8 = Span8::new(span);
        let n = words.len().min(out.len()) / 8 * 8;
        for (o, w) in out[..n].chunks_exact_mut(8).zip(words[..n].chunks_exact(8)) {
            // SAFETY: `w` and `o` hold exactly eight elements of 8 bytes: the 64 bytes read and written.
            unsafe {
                let v = exp_ul8::<TAIL>(_mm512_loadu_si512(w.as_ptr() as *const __m512i), s8, exp2);
                _mm512_storeu_pd(o.as_mut_ptr(), v);
            }
        }
        for (o, &w) in out[n..].iter_mut().zip(&words[n..]) {
            *o = exp_ul(w, span);
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    pub fn prob(ids: &[u64], out: &mut [f64], inv_log_range: f64) {
        let head = table16(&HEAD16);
        let n = ids.len().min(out.len()) / 8 * 8;
        for (o, kk) in out[..n].chunks_exact_mut(8).zip(ids[..n].chunks_exact(8)) {
            // SAFETY: `kk` and `o` hold exactly eight elements of 8 bytes: the 64 bytes read and written.
            let k = unsafe { _mm512_loadu_si512(kk.as_ptr() as *const __m512i) };
            let d =
                _mm512_add_pd(_mm512_mul_pd(_mm512_cvtepu64_pd(k), _mm512_set1_pd(2.0)), _mm512_set1_pd(3.0));
            let s = _mm512_div_pd(_mm512_set1_pd(1.0), d);
            let t = _mm512_mul_pd(s, s);
            let mut c = _mm512_set1_pd(ATANH_SERIES[0]);
            for &a in &ATANH_SERIES[1..] {
                c = _mm512_add_pd(_mm512_mul_pd(c, t), _mm512_set1_pd(a));
            }
            let series = _mm512_mul_pd(_mm512_mul_pd(s, _mm512_set1_pd(2.0)), c);
            let table = _mm512_permutex2var_pd(head.0, _mm512_min_epu64(k, _mm512_set1_epi64(15)), head.1);
            let small = _mm512_cmplt_epu64_mask(k, _mm512_set1_epi64(16));
            let p = _mm512_mul_pd(_mm512_mask_blend_pd(small, series, table), _mm512_set1_pd(inv_log_range));
            // SAFETY: as above.
            unsafe { _mm512_storeu_pd(o.as_mut_ptr(), p) };
        }
        for (o, &k) in out[n..].iter_mut().zip(&ids[n..]) {
            *o = ln_ratio(k) * inv_log_range;
        }
    }
}

impl Distribution for LogUniform {
    fn range_max(&self) -> u64 {
        self.range_max
    }

    fn prob(&self, k: u64) -> f64 {
        if self.tf_formula {
            return self.tf_prob(k);
        }
        (1.0 / (k as f64 + 1.0)).ln_1p() / self.log_range
    }

    fn prob_into(&self, ids: &[u64], out: &mut [f64]) {
        if self.tf_formula {
            tf_prob_kernel(ids, out, 1.0 / self.log_range)
        } else {
            #[cfg(target_arch = "x86_64")]
            if crate::simd::has_avx512() {
                // SAFETY: the CPU has the features `avx512::prob` is compiled for (checked).
                return unsafe { avx512::prob(ids, out, 1.0 / self.log_range) };
            }
            prob_kernel(ids, out, 1.0 / self.log_range)
        }
    }

    fn head_mass(&self, h: u64) -> Option<f64> {
        // P(k < h) = sum of ln((k + 2) / (k + 1)) over k < h, which telescopes.
        Some((h.min(self.range_max) as f64).ln_1p() / self.log_range)
    }

    fn draw_scan(
        &self,
        stream: &mut Stream,
        len: usize,
        from: u64,
        scan: &mut ByteScan<'_>,
    ) -> Option<(usize, usize)> {
        #[cfg(target_arch = "x86_64")]
        if self.range_max < SMALL_RANGE
            && from < self.range_max
            && len.is_multiple_of(8)
            && scan.fits(self.range_max)
            && crate::simd::has_avx512()
        {
            let lanes = stream.lanes()?;
            // SAFETY: the CPU has the kernel's features (checked); ids are at most range_max - 1, inside the
            // map, and `free` has room for `want` ids (`fits`); len is a multiple of 8.
            return Some(unsafe { avx512::draw_scan(lanes, len, self.span(from), scan) });
        }
        if self.range_max < SMALL_RANGE && from < self.range_max && scan.fits(self.range_max) {
            return Some(draw_scan_pieces(stream, len, self.span(from), scan));
        }
        None
    }

    fn draw(&self, stream: &mut Stream, out: &mut [u64]) {
        self.draw_above(stream, out, 0)
    }

    fn draw_above(&self, stream: &mut Stream, out: &mut [u64], from: u64) {
        const BLOCK: usize = 512;
        let mut words = [0u64; BLOCK];
        let span = self.span(from.min(self.range_max - 1));
        if self.range_max < SMALL_RANGE {
            for piece in out.chunks_mut(BLOCK) {
                let n = piece.len();
                stream.fill_u64(&mut words[..n]);
                draw_small(&words[..n], piece, span);
            }
            return;
        }
        let mut vals = [0f64; BLOCK];
        for piece in out.chunks_mut(BLOCK) {
            let n = piece.len();
            stream.fill_u64(&mut words[..n]);
            draw_values(&words[..n], &mut vals[..n], span);
            for (o, &v) in piece.iter_mut().zip(&vals[..n]) {
                // u has 52 bits, so v = e^(u width + lo) stands for the cell [v, v e^(width 2^-52)).
                let width = v * span.width * f64::EPSILON / 2.0;
                // v >= 1, so the id is >= 0; rounding at either end may step outside the span: clamp it.
                *o = (refine(v, width, stream).max(1) - 1).clamp(span.first, span.last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn probabilities_sum_to_one() {
        let d = LogUniform::new(1000).unwrap();
        let total: f64 = (0..1000).map(|k| d.prob(k)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        // The vectorised path (table, then series) agrees with the direct formula everywhere.
        let d = LogUniform::new(1 << 62).unwrap();
        let mut ids: Vec<u64> = (0..70_000).collect();
        ids.extend([1 << 20, (1 << 32) + 7, 1 << 52, (1 << 53) + 1, (1 << 62) - 1]);
        let mut fast = vec![0.0; ids.len()];
        d.prob_into(&ids, &mut fast);
        for (&k, &f) in ids.iter().zip(&fast) {
            assert!((f - d.prob(k)).abs() <= 1e-15 * d.prob(k), "k={k}");
        }
    }

    #[test]
    fn every_kernel_gives_the_same_bits() {
        let mut s = Stream::new(5);
        let mut words = vec![0u64; 4099];
        s.fill_u64(&mut words);
        words.extend([0, 1, u64::MAX, 1 << 63, (1 << 63) - 1]);
        let mut ids: Vec<u64> = (0..40).collect();
        ids.extend(words.iter().map(|w| w >> (w % 64)));
        ids.extend([1 << 52, (1 << 53) + 1, (1 << 62) - 1]);
        for range in [1i64, 2, 17, 1000, 1_000_000, (1 << 30) - 1, 1 << 40, 1 << 62] {
            let d = LogUniform::new(range).unwrap();
            // Draws above a head (ids from `from` on) go through the same kernels.
            for from in [0, 1, 77, 5000].map(|f: u64| f.min(range as u64 - 1)) {
                let span = d.span(from);
                let ids: Vec<u64> = words.iter().map(|&w| small_id(exp_ul(w, span), span)).collect();
                let vals: Vec<f64> = words.iter().map(|&w| exp_ul(w, span)).collect();
                let (mut a, mut v) = (vec![0u64; words.len()], vec![0f64; words.len()]);
                draw_small(&words, &mut a, span);
                draw_values(&words, &mut v, span);
                if range < SMALL_RANGE as i64 {
                    assert_eq!(a, ids, "range {range} from {from}");
                    assert!(a.iter().all(|&k| k >= from && k < range as u64), "range {range} from {from}");
                }
                assert!(v.iter().zip(&vals).all(|(x, y)| x.to_bits() == y.to_bits()), "range {range}");
            }
            let span = d.span(0);
            let portable_ids: Vec<u64> = words.iter().map(|&w| small_id(exp_ul(w, span), span)).collect();
            let portable_vals: Vec<f64> = words.iter().map(|&w| exp_ul(w, span)).collect();
            let valid: Vec<u64> = ids.iter().map(|&k| k % range as u64).collect();
            let inv = 1.0 / d.log_range;
            let portable_p: Vec<f64> = valid.iter().map(|&k| ln_ratio(k) * inv).collect();
            let (mut a, mut v, mut p) =
                (vec![0u64; words.len()], vec![0f64; words.len()], vec![0f64; valid.len()]);
            draw_small(&words, &mut a, span);
            draw_values(&words, &mut v, span);
            d.prob_into(&valid, &mut p);
            if range < SMALL_RANGE as i64 {
                assert_eq!(a, portable_ids, "range {range}");
            }
            assert!(v.iter().zip(&portable_vals).all(|(x, y)| x.to_bits() == y.to_bits()), "range {range}");
            assert!(p.iter().zip(&portable_p).all(|(x, y)| x.to_bits() == y.to_bits()), "range {range}");
            // And against the direct formulas: the same law to a few ulp.
            for (&k, &q) in valid.iter().zip(&p) {
                assert!((q - d.prob(k)).abs() <= 1e-15 * d.prob(k), "range {range} k {k}");
            }
            for (&w, &x) in words.iter().zip(&v) {
                let want = (crate::rng::unit_f64(w) * d.log_range).exp();
                assert!((x - want).abs() <= 1e-15 * want, "range {range} w {w}");
            }
        }
    }

    #[test]
    fn goodness_of_fit_small_and_large_ranges() {
        for (range, bins) in [(10i64, 10u64), (1000, 1000), (100_000_000, 2000), (1 << 62, 2000)] {
            let d = LogUniform::new(range).unwrap();
            let (chi, df) = chi_square(&d, 11, 400_000, bins);
            assert!(chi < chi_square_bound(df), "range {range}: chi2 {chi} df {df}");
        }
    }

    #[test]
    fn tensorflow_expression_in_float32() {
        // The vectorised kernel of TensorFlow's expression against the scalar one.
        let d = LogUniform::tf(1 << 40).unwrap();
        let fast = |k: u64| {
            let mut o = [0.0];
            tf_prob_kernel(&[k], &mut o, 1.0 / d.log_range);
            o[0]
        };
        for k in (0..2000u64).chain((0..2000).map(|i| i * 549_755_813 + 12_345)) {
            assert_eq!(fast(k) as f32, d.tf_prob(k) as f32, "k={k}");
        }
    }

    #[test]
    fn goodness_of_fit_over_octaves() {
        for range in [1u64 << 62, 1 << 40, 100_000_000, (1 << 30) - 1, 1 << 30] {
            let d = LogUniform::new(range as i64).unwrap();
            let mut edges: Vec<u64> = (0..63).map(|j| (1u64 << j) - 1).take_while(|&e| e < range).collect();
            edges.push(range);
            let l = (range as f64).ln_1p();
            let mass = |lo: u64, hi: u64| ((hi as f64 + 1.0) / (lo as f64 + 1.0)).ln() / l;
            let (chi, df) = chi_square_edges(&d, 29, 300_000, &edges, mass);
            assert!(chi < chi_square_bound(df), "range {range}: chi2 {chi} df {df}");
        }
    }

    #[test]
    fn the_top_of_a_huge_range_is_reached_and_never_exceeded() {
        let d = LogUniform::new(1 << 62).unwrap();
        let mut s = Stream::new(3);
        let mut buf = vec![0u64; 100_000];
        d.draw(&mut s, &mut buf);
        assert!(buf.iter().all(|&k| k < 1 << 62));
        // P(k >= 2^61) = ln((2^62+1)/(2^61+1)) / ln(2^62+1) ≈ 1/62.
        let top = buf.iter().filter(|&&k| k >= 1 << 61).count();
        assert!((1000..2300).contains(&top), "{top}");
        // Low bits of huge draws are not stuck at zero.
        assert!(buf.iter().filter(|&&k| k >= 1 << 61).any(|&k| k & 1 == 1));
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(LogUniform::new(0).is_err());
        assert!(LogUniform::new(-5).is_err());
        assert!(LogUniform::new(i64::MAX).is_err());
        assert!(LogUniform::new(1).is_ok());
    }
}
