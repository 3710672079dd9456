//! Dense building blocks for the fused losses: matrix products over row-major blocks, through the `gemm`
//! crate (runtime-dispatched SIMD microkernels). Single-threaded per call: the losses parallelise over tiles
//! themselves, in the library's pool, so that results never depend on the thread count.

use crate::float::Float;

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
}
