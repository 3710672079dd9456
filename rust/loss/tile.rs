//! Dense building blocks for the fused losses: matrix products over row-major blocks, through the `gemm`
//! crate (runtime-dispatched SIMD microkernels). Single-threaded per call: the losses parallelise over tiles
//! themselves, in the library's pool, so that results never depend on the thread count.

use crate::float::Float;
use std::sync::Mutex;

/// A row-major matrix view: `rows × cols`, element (i, j) at `data[i * stride + j]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// A mutable row-major matrix view.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a, T> Mat<'a, T> {
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, stride: cols }
    }
    fn check(&self) {
        assert!(self.cols <= self.stride || self.rows <= 1, "Mat: stride smaller than a row");
        if self.rows > 0 && self.cols > 0 {
            assert!((self.rows - 1) * self.stride + self.cols <= self.data.len(), "Mat: view past its data");
        }
    }
}

impl<'a, T> MatMut<'a, T> {
    pub fn new(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut { data, rows, cols, stride: cols }
    }
    fn check(&self) {
        assert!(self.cols <= self.stride || self.rows <= 1, "MatMut: stride smaller than a row");
        if self.rows > 0 && self.cols > 0 {
            assert!(
                (self.rows - 1) * self.stride + self.cols <= self.data.len(),
                "MatMut: view past its data"
            );
        }
    }
}

/// How the right operand is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Use B as stored.
    N,
    /// Use Bᵀ.
    T,
}

/// `C = alpha * op(A) * op(B) + beta * C` for row-major views, where `op` is `N` (as stored) or `T`
/// (transposed). With `beta == 0` the old contents of C are not read (they may be anything, even NaN).
/// Panics only when the views' shapes disagree: a bug in the caller, never a consequence of user input,
/// which the losses validate first.
pub fn matmul<T: Float>(
    alpha: T,
    a: Mat<'_, T>,
    op_a: Op,
    b: Mat<'_, T>,
    op_b: Op,
    beta: T,
    c: MatMut<'_, T>,
) {
    a.check();
    b.check();
    c.check();
    let (m, ka) = match op_a {
        Op::N => (a.rows, a.cols),
        Op::T => (a.cols, a.rows),
    };
    let (kb, n) = match op_b {
        Op::N => (b.rows, b.cols),
        Op::T => (b.cols, b.rows),
    };
    assert_eq!(ka, kb, "matmul: inner dimensions differ");
    assert!(c.rows == m && c.cols == n, "matmul: output shape");
    if m == 0 || n == 0 {
        return;
    }
    if ka == 0 {
        for i in 0..m {
            for x in &mut c.data[i * c.stride..i * c.stride + n] {
                *x = if beta == T::ZERO { T::ZERO } else { *x * beta };
            }
        }
        return;
    }
    // (row stride, column stride) of each operand as the product reads it.
    let (a_rs, a_cs) = match op_a {
        Op::N => (a.stride as isize, 1),
        Op::T => (1, a.stride as isize),
    };
    let (b_rs, b_cs) = match op_b {
        Op::N => (b.stride as isize, 1),
        Op::T => (1, b.stride as isize),
    };
    // SAFETY: the checks above guarantee that every element the product reads (A: m×k, B: k×n, with the
    // strides given) lies inside `a.data` / `b.data`, and every element it writes (C: m×n) inside `c.data`,
    // which we borrow mutably, so nothing else aliases it. `gemm` computes dst = alpha·dst + beta·lhs·rhs
    // (its alpha and beta are swapped relative to BLAS) and does not read dst when `read_dst` is false.
    unsafe {
        gemm::gemm(
            m,
            n,
            ka,
            c.data.as_mut_ptr(),
            1,
            c.stride as isize,
            beta != T::ZERO,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Element-wise math for the losses: an `exp` that vectorises, and slice kernels compiled twice (baseline and
// AVX2 + FMA) with a run-time choice. Rust never fuses `a * b + c` into an FMA by itself, so both versions give
// bit-identical results, and every reduction below runs in a fixed order (a fixed number of partial sums),
// whatever the machine or the thread count.
// ---------------------------------------------------------------------------------------------------------

/// The float math the loss kernels need beyond [`Float`], in a form the compiler can vectorise.
pub trait FastMath: Float {
    /// e^x within 2 ulp for x ≤ 0, exactly 0 below the underflow threshold (so e^(-inf) = 0). Arguments
    /// above the overflow threshold are clamped (the losses call it with x ≤ 0 only).
    fn exp_fast(self) -> Self;
    /// ln(1 + y) for y in [0, 1].
    fn ln_1p_fast(self) -> Self;
    /// Buffers kept between calls (see [`Scratch`]).
    fn scratch() -> &'static Mutex<Vec<Vec<Self>>>;
}

/// Large work buffers reused from call to call: a fresh allocation of tens of MiB costs a page fault and
/// a zeroing per 4 KiB page, which is a noticeable part of a loss step. At most [`Scratch::KEEP`] bytes
/// stay cached. The contents of a taken buffer are stale: callers overwrite every element before reading.
pub struct Scratch;

impl Scratch {
    pub const KEEP: usize = 96 << 20;

    /// A buffer of `len` elements (stale contents), or an error if memory runs out.
    pub fn take<T: FastMath>(arg: &'static str, len: usize) -> crate::Result<Vec<T>> {
        // try_lock: never wait (and never deadlock in a forked child whose parent held the lock).
        let cached = T::scratch().try_lock().ok().and_then(|mut p| {
            let i = p.iter().position(|v| v.capacity() >= len)?;
            Some(p.swap_remove(i))
        });
        match cached {
            Some(mut v) => {
                v.truncate(len);
                v.resize(len, T::ZERO);
                Ok(v)
            }
            None => crate::buf::zeroed(arg, len),
        }
    }

    /// Return a buffer to the cache (dropped if the cache is full).
    pub fn give<T: FastMath>(v: Vec<T>) {
        if let Ok(mut p) = T::scratch().try_lock() {
            let held: usize = p.iter().map(|b| b.capacity()).sum();
            if (held + v.capacity()) * std::mem::size_of::<T>() <= Self::KEEP {
                p.push(v);
            }
        }
    }
}

impl FastMath for f32 {
    fn scratch() -> &'static Mutex<Vec<Vec<f32>>> {
        static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
        &POOL
    }
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        // 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer in the low mantissa bits.
        const SHIFT: f32 = 12_582_912.0;
        let x = self.min(88.0);
        let t = x * std::f32::consts::LOG2_E + SHIFT;
        let n = t - SHIFT;
        let ni = t.to_bits().wrapping_sub(SHIFT.to_bits());
        let r = (x - n * LN2_HI) - n * LN2_LO;
        // Taylor series of e^r to degree 7 on |r| <= 0.347: error < r^8/8! < 6e-9.
        let mut p = 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        let y = f32::from_bits(p.to_bits().wrapping_add(ni << 23));
        // Below -86 the scaling by 2^n would leave the normal range; e^-86 < 5e-38 counts as 0 here.
        if x < -86.0 {
            0.0
        } else {
            y
        }
    }
    #[inline(always)]
    fn ln_1p_fast(self) -> f32 {
        // ln u for u = 1 + y in [1, 2], as fdlibm's logf: u = 2^k (1 + f) with 1 + f in [√2/2, √2),
        // ln(1 + f) = 2 atanh(f / (2 + f)) by a minimax polynomial; then the rounding error of 1 + y is put
        // back (− c / u).
        const LG1: f32 = 0.666_666_6;
        const LG2: f32 = 0.400_009_72;
        const LG3: f32 = 0.284_987_87;
        const LG4: f32 = 0.242_790_79;
        const LN2: f32 = std::f32::consts::LN_2;
        let y = self;
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
}

impl FastMath for f64 {
    fn scratch() -> &'static Mutex<Vec<Vec<f64>>> {
        static POOL: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());
        &POOL
    }
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        let y = crate::vmath::exp(self);
        if self < -700.0 {
            0.0
        } else {
            y
        }
    }
    #[inline(always)]
    fn ln_1p_fast(self) -> f64 {
        crate::vmath::ln_1p(self)
    }
}

/// Define `fn name<T: FastMath>(..)` whose body is compiled three times (baseline, AVX2 + FMA, AVX-512),
/// the widest the CPU has chosen at run time. Bodies must be plain safe code over their arguments.
macro_rules! kernel {
    ($(#[$m:meta])* $vis:vis fn $name:ident<T>($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name<T: $crate::loss::tile::FastMath>($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body<T: $crate::loss::tile::FastMath>($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wider<T: $crate::loss::tile::FastMath>($($a: $t),*) $(-> $r)? { body::<T>($($a),*) }
                if $crate::vmath::has_avx512() {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (`vmath::has_avx512` checks them and more), all
                    // that `wider` requires; it runs the same safe code as `body`.
                    return unsafe { wider::<T>($($a),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide<T: $crate::loss::tile::FastMath>($($a: $t),*) $(-> $r)? { body::<T>($($a),*) }
                if $crate::vmath::has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above), all that `wide` requires; it
                    // runs the same safe code as `body`.
                    return unsafe { wide::<T>($($a),*) };
                }
            }
            body::<T>($($a),*)
        }
    };
}

pub(crate) use kernel;

/// Lanes of the partial sums in the reductions below (a fixed number: results do not depend on the SIMD
/// width of the machine).
pub(crate) const LANES: usize = 16;

#[inline(always)]
fn dot_body<T: Float>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::ZERO; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = T::ZERO;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += *x * *y;
    }
    fold(acc) + tail
}

/// Sum the lanes pairwise, in a fixed order.
#[inline(always)]
pub(crate) fn fold<T: Float>(mut acc: [T; LANES]) -> T {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

/// Σ x in a fixed order (LANES partial sums, folded pairwise).
#[inline(always)]
pub(crate) fn sum_body<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut c = x.chunks_exact(LANES);
    for v in &mut c {
        for l in 0..LANES {
            acc[l] += v[l];
        }
    }
    let mut tail = T::ZERO;
    for &v in c.remainder() {
        tail += v;
    }
    fold(acc) + tail
}

kernel! {
    /// Copy `src` into `dst` and say whether every element is finite (no branch per element: a NaN or an
    /// infinity turns `v · 0` into NaN).
    pub fn copy_finite<T>(src: &[T], dst: &mut [T]) -> bool {
        let mut acc = [T::ZERO; LANES];
        let mut s = src.chunks_exact(LANES);
        let mut o = dst.chunks_exact_mut(LANES);
        for (x, y) in (&mut s).zip(&mut o) {
            y.copy_from_slice(x);
            for l in 0..LANES {
                acc[l] += x[l] * T::ZERO;
            }
        }
        let mut tail = T::ZERO;
        for (x, y) in s.remainder().iter().zip(o.into_remainder()) {
            *y = *x;
            tail += *x * T::ZERO;
        }
        fold(acc) + tail == T::ZERO
    }
}

kernel! {
    /// `x[i] = (x[i] + b) − q`: a column's bias and log-correction, in TensorFlow's order.
    pub fn add_offsets<T>(x: &mut [T], b: T, q: T) {
        for v in x.iter_mut() {
            *v = (*v + b) - q;
        }
    }
}

kernel! {
    /// `x[i] = (x[i] + b) − q` and `m[i] = max(m[i], x[i])` in one pass: offsets and a column-wise maximum.
    pub fn add_offsets_vmax<T>(x: &mut [T], b: T, q: T, m: &mut [T]) {
        for (v, a) in x.iter_mut().zip(m.iter_mut()) {
            let y = (*v + b) - q;
            *v = y;
            *a = if y > *a { y } else { *a };
        }
    }
}

kernel! {
    /// `x[i] *= f[i]`.
    pub fn vmul<T>(x: &mut [T], f: &[T]) {
        for (v, &c) in x.iter_mut().zip(f) {
            *v *= c;
        }
    }
}

kernel! {
    /// `x[i] = e^(x[i] − m[i])` and `s[i] += x[i]` (e^(−inf) = 0): exponentiate one more row in place and
    /// add it to column-wise sums.
    pub fn vexp_sum<T>(s: &mut [T], x: &mut [T], m: &[T]) {
        for ((a, v), &mx) in s.iter_mut().zip(x.iter_mut()).zip(m) {
            *v = (*v - mx).exp_fast();
            *a += *v;
        }
    }
}

kernel! {
    /// Σ a[i]·b[i] over the shorter length.
    pub fn dot<T>(a: &[T], b: &[T]) -> T {
        dot_body(a, b)
    }
}

kernel! {
    /// `out[r] = a[r]·x` for the rows of `a` (row-major, `x.len()` columns).
    pub fn gemv<T>(a: &[T], x: &[T], out: &mut [T]) {
        let d = x.len().max(1);
        for (row, o) in a.chunks_exact(d).zip(out.iter_mut()) {
            *o = dot_body(row, x);
        }
    }
}

kernel! {
    /// `y += Σ_r g[r]·a[r]` for the rows of `a` (row-major, `y.len()` columns), rows in order.
    pub fn gemv_t_acc<T>(a: &[T], g: &[T], y: &mut [T]) {
        let d = y.len().max(1);
        for (row, &c) in a.chunks_exact(d).zip(g) {
            if c != T::ZERO {
                for (o, &v) in y.iter_mut().zip(row) {
                    *o += c * v;
                }
            }
        }
    }
}

kernel! {
    /// `y += c·x`.
    pub fn axpy<T>(c: T, x: &[T], y: &mut [T]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o += c * v;
        }
    }
}

kernel! {
    /// `y = c·x`.
    pub fn scale_into<T>(c: T, x: &[T], y: &mut [T]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = c * v;
        }
    }
}

kernel! {
    /// The largest element (-inf for an empty slice; NaN-free input assumed).
    pub fn max<T>(x: &[T]) -> T {
        let mut acc = [T::NEG_INFINITY; LANES];
        let mut c = x.chunks_exact(LANES);
        for v in &mut c {
            for l in 0..LANES {
                acc[l] = if v[l] > acc[l] { v[l] } else { acc[l] };
            }
        }
        let mut m = T::NEG_INFINITY;
        for &v in c.remainder().iter().chain(acc.iter()) {
            m = if v > m { v } else { m };
        }
        m
    }
}

kernel! {
    /// Σ e^(x[i] - m), with e^(-inf) = 0: one piece of an online log-sum-exp.
    pub fn sum_exp<T>(x: &[T], m: T) -> T {
        let mut acc = [T::ZERO; LANES];
        let mut c = x.chunks_exact(LANES);
        for v in &mut c {
            for l in 0..LANES {
                acc[l] += (v[l] - m).exp_fast();
            }
        }
        let mut tail = T::ZERO;
        for &v in c.remainder() {
            tail += (v - m).exp_fast();
        }
        fold(acc) + tail
    }
}

kernel! {
    /// `x[i] = c · e^(x[i] - lse)`: softmax probabilities scaled by `c` (0 where x is -inf).
    pub fn scale_exp<T>(x: &mut [T], lse: T, c: T) {
        for v in x.iter_mut() {
            *v = c * (*v - lse).exp_fast();
        }
    }
}

/// One piece of the log-sum-exp of a row, kept as (max, Σ e^(x - max)), merged in a fixed order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lse<T> {
    pub max: T,
    pub sum: T,
}

impl<T: FastMath> Lse<T> {
    pub const EMPTY: Lse<T> = Lse { max: T::NEG_INFINITY, sum: T::ZERO };
    /// The piece of the slice `x` (-inf entries count as absent).
    pub fn of(x: &[T]) -> Self {
        let m = max(x);
        if m == T::NEG_INFINITY {
            return Self::EMPTY;
        }
        Lse { max: m, sum: sum_exp(x, m) }
    }
    /// The piece of both.
    pub fn merge(self, o: Self) -> Self {
        if o.sum == T::ZERO {
            return self;
        }
        if self.sum == T::ZERO {
            return o;
        }
        let m = if o.max > self.max { o.max } else { self.max };
        Lse { max: m, sum: self.sum * (self.max - m).exp_fast() + o.sum * (o.max - m).exp_fast() }
    }
    /// ln Σ e^x.
    pub fn value(self) -> T {
        self.max + self.sum.ln()
    }
}

/// Transpose the row-major `rows × cols` block `a` into `out` (`cols × rows`), in 8 × 8 tiles.
pub fn transpose<T: Copy>(a: &[T], rows: usize, cols: usize, out: &mut [T]) {
    const TB: usize = 8;
    assert!(a.len() >= rows * cols && out.len() >= rows * cols, "transpose: sizes");
    for i0 in (0..rows).step_by(TB) {
        let i1 = (i0 + TB).min(rows);
        for j0 in (0..cols).step_by(TB) {
            let j1 = (j0 + TB).min(cols);
            for i in i0..i1 {
                let src = &a[i * cols + j0..i * cols + j1];
                for (j, &v) in (j0..j1).zip(src) {
                    out[j * rows + i] = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += x * y;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn all_transpositions_match_a_naive_product() {
        let (m, k, n) = (7, 5, 9);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let av = if ta { Mat::new(&a, k, m) } else { Mat::new(&a, m, k) };
            let bv = if tb { Mat::new(&b, n, k) } else { Mat::new(&b, k, n) };
            let mut c = vec![f64::NAN; m * n];
            let (oa, ob) = (if ta { Op::T } else { Op::N }, if tb { Op::T } else { Op::N });
            matmul(2.0, av, oa, bv, ob, 0.0, MatMut::new(&mut c, m, n));
            let want = naive(&a, &b, m, k, n, ta, tb);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 2.0 * y).abs() < 1e-12);
            }
            // beta = 1 accumulates.
            matmul(1.0, av, oa, bv, ob, 1.0, MatMut::new(&mut c, m, n));
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 3.0 * y).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn strided_views_and_f32() {
        // A is the left 3 columns of a 4×6 block.
        let a: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let b: Vec<f32> = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = vec![0f32; 8];
        let av = Mat { data: &a, rows: 4, cols: 3, stride: 6 };
        matmul(1.0, av, Op::N, Mat::new(&b, 3, 2), Op::N, 0.0, MatMut::new(&mut c, 4, 2));
        for i in 0..4 {
            let r = &a[i * 6..i * 6 + 3];
            assert_eq!(c[i * 2], r[0] + r[2]);
            assert_eq!(c[i * 2 + 1], r[1] + r[2]);
        }
    }

    #[test]
    fn exp_fast_is_accurate_and_underflows_to_zero() {
        let mut x = -90.0f64;
        while x < 80.0 {
            let a = (x as f32).exp_fast() as f64;
            let b = (x as f32 as f64).exp();
            if x < -86.0 {
                assert_eq!(a, 0.0);
            } else {
                assert!(((a - b) / b).abs() < 3e-7, "f32 exp({x}) = {a}, want {b}");
            }
            let c = x.exp_fast();
            if x >= -700.0 {
                assert!(((c - x.exp()) / x.exp()).abs() < 1e-14);
            }
            x += 0.0137;
        }
        assert_eq!(f32::NEG_INFINITY.exp_fast(), 0.0);
        assert_eq!(f64::NEG_INFINITY.exp_fast(), 0.0);
        assert_eq!(0.0f32.exp_fast(), 1.0);
        let mut y = 0.0f32;
        while y <= 1.0 {
            let (a, b) = (y.ln_1p_fast() as f64, (y as f64).ln_1p());
            assert!((a - b).abs() <= 2.5e-7 * b.max(1e-30), "ln_1p({y}) = {a}, want {b}");
            y = if y < 1e-6 { y + 1e-8 } else { y * 1.01 + 1e-4 };
        }
        assert_eq!(0.0f32.ln_1p_fast(), 0.0);
    }

    #[test]
    fn reductions_match_naive_sums() {
        let x: Vec<f64> = (0..103).map(|i| (i as f64 * 0.77).sin() * 5.0).collect();
        let y: Vec<f64> = (0..103).map(|i| (i as f64 * 0.31).cos()).collect();
        let want: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!((dot(&x, &y) - want).abs() < 1e-12);
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(max(&x), m);
        let se: f64 = x.iter().map(|v| (v - m).exp()).sum();
        assert!((sum_exp(&x, m) - se).abs() < 1e-12);
        // Online log-sum-exp over pieces equals the whole.
        let whole = Lse::of(&x).value();
        let pieces = Lse::of(&x[..40]).merge(Lse::of(&x[40..])).merge(Lse::<f64>::EMPTY);
        assert!((pieces.value() - whole).abs() < 1e-12);
        assert!((whole - (m + se.ln())).abs() < 1e-12);
        let mut z = vec![f64::NEG_INFINITY, 0.0];
        scale_exp(&mut z, 0.0, 2.0);
        assert_eq!(z, vec![0.0, 2.0]);
        let mut out = vec![0.0; 3];
        gemv(&x[..6], &y[..2], &mut out);
        assert!((out[1] - (x[2] * y[0] + x[3] * y[1])).abs() < 1e-15);
        let mut acc = vec![1.0; 2];
        gemv_t_acc(&x[..6], &[1.0, 0.0, 2.0], &mut acc);
        assert!((acc[0] - (1.0 + x[0] + 2.0 * x[4])).abs() < 1e-15);
    }

    #[test]
    fn transpose_blocks() {
        let a: Vec<u32> = (0..13 * 9).collect();
        let mut t = vec![0; 13 * 9];
        transpose(&a, 13, 9, &mut t);
        for i in 0..13 {
            for j in 0..9 {
                assert_eq!(t[j * 13 + i], a[i * 9 + j]);
            }
        }
    }
}
