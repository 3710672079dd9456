//! Dense building blocks for the fused losses: matrix products over row-major blocks, through the `gemm`
//! crate (runtime-dispatched SIMD microkernels). Single-threaded per call: the losses parallelise over tiles
//! themselves, in the library's pool, so that results never depend on the thread count.

use crate::float::Float;

/// The one matrix view of the crate, for every operand that is read: `rows × cols`, element (i, j) at
/// `data[i * row_stride + j * col_stride]`. The callers' arrays (embeddings, class weights of any strides;
/// all of them this one type) and the blocks the kernels make are all
/// views of this kind; the products read any strides, the gathers any column stride.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, T> {
    /// The elements (at least up to the last one the strides reach).
    pub data: &'a [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Elements from one row to the next.
    pub row_stride: usize,
    /// Elements from one column to the next.
    pub col_stride: usize,
}

/// A mutable row-major matrix view (the output of a product): element (i, j) at `data[i * stride + j]`.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    /// The elements, row-major.
    pub data: &'a mut [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Elements from one row to the next.
    pub stride: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A C-contiguous (row-major) `rows × cols` matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The same as [`Mat::new`] (the name the sampled losses' weights have always used).
    pub fn contiguous(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols)
    }

    /// Rows `row_stride` apart, each contiguous: a block of columns of a wider row-major matrix.
    pub fn with_row_stride(data: &'a [T], rows: usize, cols: usize, row_stride: usize) -> Self {
        Mat { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// Whether the view is C-contiguous: `rows × cols` elements, row after row, and nothing else.
    pub fn is_contiguous(&self) -> bool {
        (self.col_stride == 1 || self.cols <= 1)
            && (self.row_stride == self.cols || self.rows <= 1)
            && self.rows.checked_mul(self.cols) == Some(self.data.len())
    }

    /// The flat index of the last element, if the view is non-empty and that index is representable.
    pub fn last_index(&self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            return None;
        }
        (self.rows - 1)
            .checked_mul(self.row_stride)?
            .checked_add((self.cols - 1).checked_mul(self.col_stride)?)
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            assert!(self.last_index().is_some_and(|l| l < self.data.len()), "Mat: view past its data");
        }
    }
}

impl<'a, T> MatMut<'a, T> {
    /// A C-contiguous `rows × cols` view of `data`.
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
        Op::N => (a.row_stride as isize, a.col_stride as isize),
        Op::T => (a.col_stride as isize, a.row_stride as isize),
    };
    let (b_rs, b_cs) = match op_b {
        Op::N => (b.row_stride as isize, b.col_stride as isize),
        Op::T => (b.col_stride as isize, b.row_stride as isize),
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
// Element-wise kernels for the losses, compiled for every SIMD level by `simd::dispatch!` with a run-time
// choice (all levels give bit-identical results), over `Float::exp_fast`; every reduction below runs in a
// fixed order (a fixed number of partial sums), whatever the machine or the thread count.
// ---------------------------------------------------------------------------------------------------------

/// Bytes of work buffers the sampled losses keep between calls (`Float::caches().tiles`, see
/// [`crate::buf::Scratch`]).
pub const TILES_KEEP: usize = 96 << 20;

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

crate::simd::dispatch! {
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

crate::simd::dispatch! {
    /// `x[i] = (x[i] + b) − q`: a column's bias and log-correction, in TensorFlow's order.
    pub fn add_offsets<T>(x: &mut [T], b: T, q: T) {
        for v in x.iter_mut() {
            *v = (*v + b) - q;
        }
    }
}

crate::simd::dispatch! {
    /// Offsets and row maxima of a candidate-major tile: `m.len()` rows of `b.len()` columns, column j at
    /// `z[j·stride..]` (`stride >= m.len()`). Sets `z[j][i] = (z[j][i] + b[j]) − q[j]` and
    /// `m[i] = max(m[i], z[j][i])`, over the columns in order.
    ///
    /// Four columns go through the rows together, and each row's maximum is stored once per four. Column
    /// by column (`m[i] = if y > m[i] { y } else { m[i] }`), the compiler dropped the store where m[i]
    /// kept its value and made masked stores (`vmaskmovps`) of the rest, which AMD's Zen 2 runs
    /// microcoded (the pass had ~5% of a sampled softmax step's samples in `perf` there). The last
    /// `cols % 4` columns still go one at a time.
    pub fn add_offsets_vmax<T>(z: &mut [T], stride: usize, b: &[T], q: &[T], m: &mut [T]) {
        let rows = m.len();
        let cols = b.len().min(q.len());
        let mut j = 0;
        while j + 4 <= cols {
            let t = &mut z[j * stride..];
            let (c0, t) = t.split_at_mut(stride);
            let (c1, t) = t.split_at_mut(stride);
            let (c2, t) = t.split_at_mut(stride);
            let c3 = &mut t[..rows];
            let (c0, c1, c2) = (&mut c0[..rows], &mut c1[..rows], &mut c2[..rows]);
            let (b0, b1, b2, b3) = (b[j], b[j + 1], b[j + 2], b[j + 3]);
            let (q0, q1, q2, q3) = (q[j], q[j + 1], q[j + 2], q[j + 3]);
            for ((((a, v0), v1), v2), v3) in m.iter_mut().zip(c0).zip(c1).zip(c2).zip(c3) {
                let mut x = *a;
                let y = (*v0 + b0) - q0;
                *v0 = y;
                x = if y > x { y } else { x };
                let y = (*v1 + b1) - q1;
                *v1 = y;
                x = if y > x { y } else { x };
                let y = (*v2 + b2) - q2;
                *v2 = y;
                x = if y > x { y } else { x };
                let y = (*v3 + b3) - q3;
                *v3 = y;
                *a = if y > x { y } else { x };
            }
            j += 4;
        }
        for j in j..cols {
            let col = &mut z[j * stride..j * stride + rows];
            for (a, v) in m.iter_mut().zip(col) {
                let y = (*v + b[j]) - q[j];
                *v = y;
                *a = if y > *a { y } else { *a };
            }
        }
    }
}

crate::simd::dispatch! {
    /// `x[i] *= f[i]`.
    pub fn vmul<T>(x: &mut [T], f: &[T]) {
        for (v, &c) in x.iter_mut().zip(f) {
            *v *= c;
        }
    }
}

crate::simd::dispatch! {
    /// Exponentials and row sums of a candidate-major tile (as in [`add_offsets_vmax`]: `m.len()` rows of
    /// `cols` columns, column j at `z[j·stride..]`, `stride >= m.len()`): `z[j][i] = e^(z[j][i] − m[i])`
    /// (e^(−inf) = 0) and `s[i] += z[j][i]`, over the columns in order. Four columns go through the rows
    /// together, so each row's sum is loaded and stored once per four columns.
    pub fn vexp_sum<T>(s: &mut [T], z: &mut [T], stride: usize, cols: usize, m: &[T]) {
        let rows = m.len().min(s.len());
        let (s, m) = (&mut s[..rows], &m[..rows]);
        let mut j = 0;
        while j + 4 <= cols {
            let t = &mut z[j * stride..];
            let (c0, t) = t.split_at_mut(stride);
            let (c1, t) = t.split_at_mut(stride);
            let (c2, t) = t.split_at_mut(stride);
            let c3 = &mut t[..rows];
            let (c0, c1, c2) = (&mut c0[..rows], &mut c1[..rows], &mut c2[..rows]);
            for (((((a, &mx), v0), v1), v2), v3) in s.iter_mut().zip(m).zip(c0).zip(c1).zip(c2).zip(c3) {
                *v0 = (*v0 - mx).exp_fast();
                *v1 = (*v1 - mx).exp_fast();
                *v2 = (*v2 - mx).exp_fast();
                *v3 = (*v3 - mx).exp_fast();
                *a = (((*a + *v0) + *v1) + *v2) + *v3;
            }
            j += 4;
        }
        for j in j..cols {
            let col = &mut z[j * stride..j * stride + rows];
            for ((a, v), &mx) in s.iter_mut().zip(col).zip(m) {
                *v = (*v - mx).exp_fast();
                *a += *v;
            }
        }
    }
}

crate::simd::dispatch! {
    /// Σ a[i]·b[i] over the shorter length.
    pub fn dot<T>(a: &[T], b: &[T]) -> T {
        dot_body(a, b)
    }
}

crate::simd::dispatch! {
    /// `out[r] = a[r]·x` for the rows of `a` (row-major, `x.len()` columns).
    pub fn gemv<T>(a: &[T], x: &[T], out: &mut [T]) {
        let d = x.len().max(1);
        for (row, o) in a.chunks_exact(d).zip(out.iter_mut()) {
            *o = dot_body(row, x);
        }
    }
}

crate::simd::dispatch! {
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

crate::simd::dispatch! {
    /// `y += c·x`.
    pub fn axpy<T>(c: T, x: &[T], y: &mut [T]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o += c * v;
        }
    }
}

crate::simd::dispatch! {
    /// `y = c·x`.
    pub fn scale_into<T>(c: T, x: &[T], y: &mut [T]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = c * v;
        }
    }
}

crate::simd::dispatch! {
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

crate::simd::dispatch! {
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

crate::simd::dispatch! {
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
    /// The largest element of the piece.
    pub max: T,
    /// Σ e^(x - max) over the piece.
    pub sum: T,
}

impl<T: Float> Lse<T> {
    /// The piece of no element (log-sum-exp -inf).
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
        let av = Mat::with_row_stride(&a, 4, 3, 6);
        matmul(1.0, av, Op::N, Mat::new(&b, 3, 2), Op::N, 0.0, MatMut::new(&mut c, 4, 2));
        for i in 0..4 {
            let r = &a[i * 6..i * 6 + 3];
            assert_eq!(c[i * 2], r[0] + r[2]);
            assert_eq!(c[i * 2 + 1], r[1] + r[2]);
        }
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
    fn offsets_and_row_maxima_of_a_tile_match_a_column_by_column_loop() {
        // 7 columns (one group of four, then three alone) of 19 rows, 23 apart, with −inf entries.
        let (rows, cols, stride) = (19usize, 7usize, 23usize);
        let z0: Vec<f32> = (0..cols * stride)
            .map(|i| if i % 11 == 3 { f32::NEG_INFINITY } else { (i as f32 * 0.37).sin() * 4.0 })
            .collect();
        let b: Vec<f32> = (0..cols).map(|j| j as f32 * 0.3 - 1.0).collect();
        let q: Vec<f32> = (0..cols).map(|j| (j as f32 * 0.9).cos()).collect();
        let m0: Vec<f32> =
            (0..rows).map(|i| if i % 5 == 0 { f32::NEG_INFINITY } else { i as f32 * 0.1 }).collect();
        let (mut z, mut m) = (z0.clone(), m0.clone());
        add_offsets_vmax(&mut z, stride, &b, &q, &mut m);
        let (mut zw, mut mw) = (z0.clone(), m0.clone());
        for j in 0..cols {
            for i in 0..rows {
                let y = (zw[j * stride + i] + b[j]) - q[j];
                zw[j * stride + i] = y;
                mw[i] = if y > mw[i] { y } else { mw[i] };
            }
        }
        assert_eq!(m, mw);
        // Bit for bit (the −inf entries stay −inf), and the gaps between columns untouched.
        assert!(z.iter().zip(&zw).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn exponentials_and_row_sums_of_a_tile_match_a_column_by_column_loop() {
        // 6 columns (one group of four, then two alone) of 13 rows, 17 apart, with −inf entries.
        let (rows, cols, stride) = (13usize, 6usize, 17usize);
        let z0: Vec<f64> = (0..cols * stride)
            .map(|i| if i % 7 == 2 { f64::NEG_INFINITY } else { (i as f64 * 0.53).sin() * 3.0 })
            .collect();
        let m: Vec<f64> = (0..rows).map(|i| (i as f64 * 0.2).cos()).collect();
        let s0: Vec<f64> = (0..rows).map(|i| i as f64 * 0.01).collect();
        let (mut z, mut s) = (z0.clone(), s0.clone());
        vexp_sum(&mut s, &mut z, stride, cols, &m);
        let (mut zw, mut sw) = (z0.clone(), s0.clone());
        for j in 0..cols {
            for i in 0..rows {
                let v = &mut zw[j * stride + i];
                *v = (*v - m[i]).exp_fast();
                sw[i] += *v;
            }
        }
        assert!(s.iter().zip(&sw).all(|(a, b)| a.to_bits() == b.to_bits()), "{s:?} vs {sw:?}");
        assert!(z.iter().zip(&zw).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn column_strides_read_like_a_transpose() {
        // A view with row stride 1 and column stride m reads the k×m block `a` transposed.
        let (m, k, n) = (6, 4, 5);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.29).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.17).cos()).collect();
        let strided = Mat { data: &a, rows: m, cols: k, row_stride: 1, col_stride: m };
        assert!(!strided.is_contiguous() && Mat::new(&a, k, m).is_contiguous());
        let (mut c1, mut c2) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul(1.0, strided, Op::N, Mat::new(&b, k, n), Op::N, 0.0, MatMut::new(&mut c1, m, n));
        matmul(1.0, Mat::new(&a, k, m), Op::T, Mat::new(&b, k, n), Op::N, 0.0, MatMut::new(&mut c2, m, n));
        assert_eq!(c1, c2);
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
