//! Sampled softmax and NCE, fused, with gradients (API.md §2–3).
//!
//! Logits follow TensorFlow's `_compute_sampled_logits`: for row b with true classes t and candidates s,
//! `z_true = x_b·w_t + b_t − ln q_t` and `z_s = x_b·w_s + b_s − ln q_s` (the `− ln q` only with
//! `subtract_log_q`). With `remove_accidental_hits`, a candidate equal to one of the row's true classes is
//! masked: TensorFlow adds −FLT_MAX, which gives it probability exactly 0, loss 0 and gradient 0; here it is
//! set to −∞ and drops out the same way. True columns carry the label 1/num_true.
//!
//! - Sampled softmax: `loss_b = Σ_t y (lse_b − z_t)`, lse over the true and unmasked candidate columns.
//! - NCE: `loss_b = Σ_j [max(z,0) − z·y + ln(1 + e^−|z|)]` over all columns (y = 1/num_true, 0 for candidates).
//! - Focal (γ > 0): softmax `−Σ_t y (1 − p_t)^γ ln p_t`; NCE `−Σ_j [y (1 − σ)^γ ln σ + (1 − y) σ^γ ln(1 − σ)]`.
//!   γ = 0 takes the plain code path, so it is exactly the plain loss.
//!
//! Shared candidates ([S]) are processed in column blocks of the B×S logit matrix (which is kept while it fits
//! a memory budget, else the batch is cut into row chunks): each block gathers its weight rows once, computes
//! its logits with one matrix product, and reduces them to per-row pieces of the log-sum-exp; after the pieces
//! are merged, the same block turns its logits into dL/dz and does both backward products (dL/dx piece and the
//! block's weight-row gradient). Blocks run in parallel on the library's pool; every reduction over blocks or
//! rows happens in a fixed order, so results do not depend on the number of threads.
//! Per-row candidates ([B, S]) are processed row by row: gather, gemv, softmax, gemv back.
//! Weight and bias gradients come back sparse: the sorted unique ids touched, rows summed over duplicates.

use super::tile::{self, FastMath, Lse, Mat, MatMut, Op, Scratch};
use crate::buf::zeroed;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::threads;
use rayon::prelude::*;
use std::collections::HashMap;

/// Which loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SampledSoftmax,
    Nce,
}

/// The class weights `[V, d]` as a strided view: element (i, j) at `data[i * row_stride + j * col_stride]`.
/// Only the rows a call needs are ever read.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T: FastMath> Weights<'a, T> {
    /// A C-contiguous `[rows, cols]` matrix.
    pub fn contiguous(data: &'a [T], rows: usize, cols: usize) -> Self {
        Weights { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    fn check(&self) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return Err(Error::value(
                "weights",
                format!("must be non-empty, got shape [{}, {}]", self.rows, self.cols),
            ));
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|a| (self.cols - 1).checked_mul(self.col_stride).map(|b| (a, b)))
            .and_then(|(a, b)| a.checked_add(b));
        match last {
            Some(l) if l < self.data.len() => Ok(()),
            _ => Err(Error::shape("weights", "the strided view exceeds its buffer")),
        }
    }

    /// Copy row `i` into `out` (`cols` long) and say whether it is all finite.
    #[inline]
    fn row_into(&self, i: usize, out: &mut [T]) -> bool
    where
        T: FastMath,
    {
        let base = i * self.row_stride;
        if self.col_stride == 1 {
            tile::copy_finite(&self.data[base..base + self.cols], out)
        } else {
            for (j, o) in out.iter_mut().enumerate() {
                *o = self.data[base + j * self.col_stride];
            }
            out.iter().all(|v| v.is_finite())
        }
    }

    /// Ask the CPU to start loading row `i` (a hint: gathers of random rows wait on memory otherwise).
    #[inline(always)]
    fn prefetch(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let base = i * self.row_stride;
            let bytes = ((self.cols - 1) * self.col_stride + 1) * std::mem::size_of::<T>();
            if let Some(row) = self.data.get(base..) {
                let p = row.as_ptr() as *const i8;
                for off in (0..bytes).step_by(64) {
                    // SAFETY: a prefetch is only a hint; it never faults or changes memory, whatever the
                    // address (and these addresses lie within the row anyway).
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }
}

/// Everything a loss call needs. Expected counts are already in the weights' float type.
#[derive(Clone, Copy, Debug)]
pub struct Args<'a, T> {
    pub kind: Kind,
    pub weights: Weights<'a, T>,
    /// `[V]` or none.
    pub biases: Option<&'a [T]>,
    /// `[B, num_true]`, row-major.
    pub labels: &'a [i64],
    pub num_true: usize,
    /// `[B, d]`, row-major.
    pub inputs: &'a [T],
    /// `[S]` when `per_row` is false, else `[B, S]` row-major.
    pub sampled: &'a [i64],
    pub per_row: bool,
    /// `[B, num_true]`.
    pub true_expected: &'a [T],
    /// The shape of `sampled`.
    pub sampled_expected: &'a [T],
    pub remove_accidental_hits: bool,
    pub subtract_log_q: bool,
    pub focal_gamma: f64,
}

/// Rows of a gradient over a subset of classes: `indices` sorted and unique, `values` row-major
/// `[indices.len(), width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseGrad<T> {
    pub indices: Vec<i64>,
    pub values: Vec<T>,
}

/// The loss per row and the gradients of `Σ_b grad_loss[b] · loss[b]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LossAndGrad<T> {
    pub loss: Vec<T>,
    /// `[B, d]`.
    pub grad_inputs: Vec<T>,
    /// Values `[U, d]`.
    pub grad_weights: SparseGrad<T>,
    /// Values `[U]` over the same indices; none without biases.
    pub grad_biases: Option<SparseGrad<T>>,
}

/// Bytes the kept logit block (plus the per-block pieces of dL/dx) may use; above it the batch is cut into
/// row chunks that run one after the other.
#[cfg(not(test))]
const LOGIT_BUDGET: usize = 256 << 20;
/// Unit tests use tiny budgets so that every test runs through several row chunks and sub-tiles.
#[cfg(test)]
const LOGIT_BUDGET: usize = 64 << 10;
/// Width in bytes of a column block of candidates (512 float32 or 256 float64 columns).
const BLOCK_BYTES: usize = 2048;
/// Bytes of a block's sub-tile of logits (kept in the per-core L2 cache while it is worked on).
#[cfg(not(test))]
const SUBTILE_BYTES: usize = 512 << 10;
#[cfg(test)]
const SUBTILE_BYTES: usize = 16 << 10;
/// How many rows ahead a gather prefetches.
const PREFETCH: usize = 8;
/// Rows per task in row-parallel passes.
const ROW_TASK: usize = 16;

/// The per-row loss.
pub fn loss<T: FastMath>(a: &Args<'_, T>) -> Result<Vec<T>> {
    let dims = check(a, None)?;
    threads::install(|| run(a, &dims, None))?.map(|o| o.loss)
}

/// The per-row loss and the gradients of `Σ_b c_b · loss_b`, with `c = grad_loss` (all ones when `None`).
pub fn loss_and_grad<T: FastMath>(a: &Args<'_, T>, grad_loss: Option<&[T]>) -> Result<LossAndGrad<T>> {
    let dims = check(a, grad_loss)?;
    let ones;
    let c = match grad_loss {
        Some(c) => c,
        None => {
            ones = vec![T::ONE; dims.b];
            &ones[..]
        }
    };
    let out = threads::install(|| run(a, &dims, Some(c)))??;
    out.grad.ok_or_else(|| Error::value("grad_loss", "internal: no gradient computed"))
}

struct Dims {
    b: usize,
    d: usize,
    /// Candidates per row (shared or not).
    s: usize,
    /// ln of the expected counts (zeros without `subtract_log_q`), true `[B, T]` and sampled.
    lq_true: Vec<f64>,
    lq_sampled: Vec<f64>,
}

fn check<T: FastMath>(a: &Args<'_, T>, grad_loss: Option<&[T]>) -> Result<Dims> {
    a.weights.check()?;
    let (v, d) = (a.weights.rows, a.weights.cols);
    if a.num_true == 0 {
        return Err(Error::value("num_true", "must be >= 1"));
    }
    if a.labels.is_empty() {
        return Err(Error::value("labels", "the batch is empty"));
    }
    if a.labels.len() % a.num_true != 0 {
        return Err(Error::shape(
            "labels",
            format!("length {} is not a multiple of num_true {}", a.labels.len(), a.num_true),
        ));
    }
    let b = a.labels.len() / a.num_true;
    if a.inputs.len() != b.saturating_mul(d) {
        return Err(Error::shape(
            "inputs",
            format!(
                "has {} elements, expected [{b}, {d}] (labels rows × the columns of weights)",
                a.inputs.len()
            ),
        ));
    }
    if let Some(bias) = a.biases {
        if bias.len() != v {
            return Err(Error::shape(
                "biases",
                format!("has length {} but weights has {v} rows", bias.len()),
            ));
        }
    }
    let s = if a.per_row {
        if a.sampled.is_empty() || a.sampled.len() % b != 0 {
            return Err(Error::shape(
                "sampled_values",
                format!("per-row candidates: {} ids for {b} rows", a.sampled.len()),
            ));
        }
        a.sampled.len() / b
    } else {
        if a.sampled.is_empty() {
            return Err(Error::value("sampled_values", "no candidates"));
        }
        a.sampled.len()
    };
    if a.sampled_expected.len() != a.sampled.len() {
        return Err(Error::shape(
            "sampled_values",
            format!(
                "sampled_expected_count has {} elements but there are {} candidates",
                a.sampled_expected.len(),
                a.sampled.len()
            ),
        ));
    }
    if a.true_expected.len() != a.labels.len() {
        return Err(Error::shape(
            "sampled_values",
            format!(
                "true_expected_count has {} elements, expected [{b}, {}]",
                a.true_expected.len(),
                a.num_true
            ),
        ));
    }
    for (arg, ids) in [("labels", a.labels), ("sampled_values", a.sampled)] {
        if let Some(&id) = ids.iter().find(|&&id| id < 0 || id as u64 >= v as u64) {
            return Err(Error::IdOutOfRange { arg, id, range_max: v as u64 });
        }
    }
    if let Some(i) = a.inputs.iter().position(|x| !x.is_finite()) {
        return Err(Error::value("inputs", format!("element [{}, {}] is not finite", i / d, i % d)));
    }
    if !(a.focal_gamma >= 0.0 && a.focal_gamma.is_finite()) {
        return Err(Error::value("focal_gamma", format!("must be finite and >= 0, got {}", a.focal_gamma)));
    }
    if let Some(c) = grad_loss {
        if c.len() != b {
            return Err(Error::shape(
                "grad_loss",
                format!("has {} elements but the batch has {b} rows", c.len()),
            ));
        }
        if c.iter().any(|x| !x.is_finite()) {
            return Err(Error::value("grad_loss", "must be finite"));
        }
    }
    let log_q = |q: &[T]| -> Result<Vec<f64>> {
        if !a.subtract_log_q {
            return Ok(vec![0.0; q.len()]);
        }
        q.iter()
            .map(|&x| {
                if x > T::ZERO && x.is_finite() {
                    Ok(x.ln().to_f64())
                } else {
                    Err(Error::value(
                        "sampled_values",
                        format!("expected counts must be positive and finite to take their log, got {x:?}"),
                    ))
                }
            })
            .collect()
    };
    crate::buf::ensure_memory("num_sampled", work_bytes::<T>(a, b, s, d, grad_loss.is_some()))?;
    Ok(Dims { b, d, s, lq_true: log_q(a.true_expected)?, lq_sampled: log_q(a.sampled_expected)? })
}

/// An upper bound of the bytes a call allocates besides its arguments (checked before anything large is
/// allocated: the buffers come zeroed from the OS, so an impossible size would otherwise be found out
/// only by the OOM killer while they are written).
fn work_bytes<T>(a: &Args<'_, T>, b: usize, s: usize, d: usize, grad: bool) -> u128 {
    let (b, s, d, nt) = (b as u128, s as u128, d as u128, a.num_true as u128);
    let sz = std::mem::size_of::<T>() as u128;
    let cand = if a.per_row { b * s } else { s };
    // ln q of every column (f64), the true logits.
    let mut n = (cand + b * nt) * 8 + b * nt * sz;
    n += if a.per_row {
        // Each worker thread's gathered rows and logits.
        threads::num_threads() as u128 * (s * d + s + d) * sz
    } else {
        // The gathered rows of every block, and the kept logits (at most the budget).
        s * d * sz + LOGIT_BUDGET as u128
    };
    if grad {
        // dL/dx; the shared path's weight-row gradients per block; the per-row path's dL/dz;
        // the sparse gradients: ids, their sort order and at most one row per entry.
        n += b * d * sz + if a.per_row { cand * sz } else { s * d * sz };
        n += (cand + b * nt) * (8 + 16 + d * sz + sz);
    }
    n
}

/// The bias of class `id` (0 without biases), checked finite.
#[inline]
fn bias_of<T: Float>(biases: Option<&[T]>, id: i64) -> Result<T> {
    match biases {
        None => Ok(T::ZERO),
        Some(bs) => {
            let v = bs[id as usize];
            if v.is_finite() {
                Ok(v)
            } else {
                Err(Error::value("biases", format!("the bias of class {id} is not finite")))
            }
        }
    }
}

fn not_finite_row(id: i64) -> Error {
    Error::value("weights", format!("row {id} is not finite"))
}

fn overflow(b: usize) -> Error {
    Error::value(
        "inputs",
        format!("a logit of row {b} overflows the float type (inputs·weights is too large)"),
    )
}

/// First error in order, else the values.
fn first_err<R>(v: Vec<Result<R>>) -> Result<Vec<R>> {
    v.into_iter().collect()
}

/// What a row's loss, its true columns and its candidate gradient need, after the pieces are merged.
#[derive(Clone, Copy, Debug)]
struct RowStat<T> {
    loss: T,
    /// Softmax: ln Σ e^z over the row. NCE: unused.
    lse: T,
    /// Softmax: dL/dz_s = coef · p_s on candidates. NCE: grad_loss of the row.
    coef: T,
}

/// Constants of a call in the float type.
#[derive(Clone, Copy)]
struct Consts<T> {
    kind: Kind,
    /// The label of a true column, 1/num_true.
    y: T,
    gamma: T,
    focal: bool,
}

/// σ(z), 1 − σ(z), softplus(−z) = −ln σ(z), softplus(z) = −ln(1 − σ(z)), without overflow.
#[inline(always)]
fn sigmoid_parts<T: FastMath>(z: T) -> (T, T, T, T) {
    let e = (-z.abs()).exp_fast();
    let l = e.ln_1p_fast();
    let inv = T::ONE / (T::ONE + e);
    let pos = z >= T::ZERO;
    let sig = if pos { inv } else { e * inv };
    let one_m = if pos { e * inv } else { inv };
    let zp = z.max(T::ZERO);
    let zn = (-z).max(T::ZERO);
    (sig, one_m, zn + l, zp + l)
}

/// NCE loss of a candidate column (label 0): softplus(z), or σ^γ softplus(z) with focal.
#[inline(always)]
fn nce_neg_loss<T: FastMath>(z: T, k: &Consts<T>) -> T {
    if z == T::NEG_INFINITY {
        return T::ZERO;
    }
    if !k.focal {
        let e = (-z.abs()).exp_fast();
        z.max(T::ZERO) + e.ln_1p_fast()
    } else {
        let (sig, _, _, sp) = sigmoid_parts(z);
        sig.powf(k.gamma) * sp
    }
}

/// dL/dz of a candidate column of NCE (label 0), before the row's grad_loss.
#[inline(always)]
fn nce_neg_grad<T: FastMath>(z: T, k: &Consts<T>) -> T {
    if z == T::NEG_INFINITY {
        return T::ZERO;
    }
    let (sig, one_m, _, sp) = sigmoid_parts(z);
    if !k.focal {
        sig
    } else {
        sig.powf(k.gamma) * (sig + k.gamma * one_m * sp)
    }
}

/// NCE loss and dL/dz of a true column with label y.
#[inline]
fn nce_true<T: FastMath>(z: T, k: &Consts<T>) -> (T, T) {
    let y = k.y;
    if !k.focal {
        // TensorFlow's order: max(z, 0) − z·y, then + ln(1 + e^−|z|).
        let e = (-z.abs()).exp_fast();
        let (sig, _, _, _) = sigmoid_parts(z);
        ((z.max(T::ZERO) - z * y) + e.ln_1p_fast(), sig - y)
    } else {
        let g = k.gamma;
        let (sig, one_m, sp_neg, sp) = sigmoid_parts(z);
        let (ln_sig, ln_one_m) = (-sp_neg, -sp);
        let loss = -(y * one_m.powf(g) * ln_sig + (T::ONE - y) * sig.powf(g) * ln_one_m);
        let da = one_m.powf(g) * (one_m - g * sig * ln_sig);
        let db = sig.powf(g) * (g * one_m * ln_one_m - sig);
        (loss, -(y * da + (T::ONE - y) * db))
    }
}

/// Merge a row's candidate pieces with its true columns: the loss, the softmax normaliser, and dL/dz of the
/// true columns (scaled by the row's `c`) into `gt`.
fn combine<T: FastMath>(k: &Consts<T>, pieces: &[(T, T)], zt: &[T], c: T, gt: &mut [T]) -> RowStat<T> {
    match k.kind {
        Kind::SampledSoftmax => {
            let mut l = Lse::EMPTY;
            for &(m, s) in pieces {
                l = l.merge(Lse { max: m, sum: s });
            }
            l = l.merge(Lse::of(zt));
            let lse = l.value();
            if !k.focal {
                let mut loss = T::ZERO;
                for (&z, g) in zt.iter().zip(gt.iter_mut()) {
                    loss += k.y * (lse - z);
                    *g = c * ((z - lse).exp_fast() - k.y);
                }
                RowStat { loss, lse, coef: c }
            } else {
                // a_t = y (1 − p)^γ (1 − γ p ln p / (1 − p)); dL/dz_j = −a_j [j true] + p_j Σ a.
                let gamma = k.gamma;
                let mut loss = T::ZERO;
                let mut sum_a = T::ZERO;
                for (&z, g) in zt.iter().zip(gt.iter_mut()) {
                    let lp = z - lse;
                    let p = lp.exp();
                    let q = -lp.exp_m1();
                    let qg = q.powf(gamma);
                    loss -= k.y * qg * lp;
                    let a = if q > T::ZERO { k.y * qg * (T::ONE - gamma * p * lp / q) } else { T::ZERO };
                    *g = -a;
                    sum_a += a;
                }
                for (&z, g) in zt.iter().zip(gt.iter_mut()) {
                    *g = c * (*g + (z - lse).exp() * sum_a);
                }
                RowStat { loss, lse, coef: c * sum_a }
            }
        }
        Kind::Nce => {
            let mut loss = T::ZERO;
            for &(part, _) in pieces {
                loss += part;
            }
            for (&z, g) in zt.iter().zip(gt.iter_mut()) {
                let (l, dz) = nce_true(z, k);
                loss += l;
                *g = c * dz;
            }
            RowStat { loss, lse: T::ZERO, coef: c }
        }
    }
}

/// A row's piece over some of its candidate logits (masked ones are −∞).
fn piece<T: FastMath>(k: &Consts<T>, z: &[T]) -> (T, T) {
    match k.kind {
        Kind::SampledSoftmax => {
            let l = Lse::of(z);
            (l.max, l.sum)
        }
        Kind::Nce => (nce_pieces_sum(z, k), T::ZERO),
    }
}

crate::simd::dispatch! {
    /// Σ of the NCE candidate losses of a row (masked −∞ entries add 0).
    fn nce_pieces_sum<T>(z: &[T], k: &Consts<T>) -> T {
        let mut acc = [T::ZERO; 16];
        let mut c = z.chunks_exact(16);
        for v in &mut c {
            for l in 0..16 {
                acc[l] += nce_neg_loss(v[l], k);
            }
        }
        let mut tail = T::ZERO;
        for &v in c.remainder() {
            tail += nce_neg_loss(v, k);
        }
        tile::sum_body(&acc) + tail
    }
}

crate::simd::dispatch! {
    /// Plain NCE, candidates: `acc[i] += softplus(z[i])` (the loss of label 0) and `z[i] = σ(z[i])`, what
    /// the backward pass needs. A masked −∞ adds 0 and becomes 0.
    fn nce_loss_sigmoid<T>(acc: &mut [T], z: &mut [T]) {
        for (a, v) in acc.iter_mut().zip(z.iter_mut()) {
            let x = *v;
            let e = (-x.abs()).exp_fast();
            *a += x.max(T::ZERO) + e.ln_1p_fast();
            let inv = T::ONE / (T::ONE + e);
            *v = if x >= T::ZERO { inv } else { e * inv };
        }
    }
}

crate::simd::dispatch! {
    /// `acc[i] += ` the NCE candidate loss of `z[i]`: one more candidate for a run of rows.
    fn nce_loss_acc<T>(acc: &mut [T], z: &[T], k: &Consts<T>) {
        for (a, &v) in acc.iter_mut().zip(z) {
            *a += nce_neg_loss(v, k);
        }
    }
}

crate::simd::dispatch! {
    /// `z[i] = c[i] · dL/dz` of NCE candidate logits (one coefficient per entry, or `c` of length 1).
    fn nce_grad<T>(z: &mut [T], c: &[T], k: &Consts<T>) {
        if c.len() == 1 {
            let c0 = c[0];
            for v in z.iter_mut() {
                *v = c0 * nce_neg_grad(*v, k);
            }
        } else {
            for (v, &ci) in z.iter_mut().zip(c) {
                *v = ci * nce_neg_grad(*v, k);
            }
        }
    }
}

/// Turn a row's candidate logits into dL/dz in place.
fn to_grad<T: FastMath>(k: &Consts<T>, z: &mut [T], st: &RowStat<T>) {
    match k.kind {
        Kind::SampledSoftmax => tile::scale_exp(z, st.lse, st.coef),
        Kind::Nce => nce_grad(z, &[st.coef], k),
    }
}

struct Out<T> {
    loss: Vec<T>,
    grad: Option<LossAndGrad<T>>,
}

fn consts<T: FastMath>(a: &Args<'_, T>) -> Consts<T> {
    Consts {
        kind: a.kind,
        y: T::ONE / T::from_f64(a.num_true as f64),
        gamma: T::from_f64(a.focal_gamma),
        focal: a.focal_gamma != 0.0,
    }
}

fn run<T: FastMath>(a: &Args<'_, T>, dims: &Dims, c: Option<&[T]>) -> Result<Out<T>> {
    let zt = true_logits(a, dims)?;
    if a.per_row {
        per_row(a, dims, &zt, c)
    } else {
        shared(a, dims, &zt, c)
    }
}

/// The true logits `[B, T]`: x_b·w_t + b_t − ln q_t.
fn true_logits<T: FastMath>(a: &Args<'_, T>, dims: &Dims) -> Result<Vec<T>> {
    let (nt, d) = (a.num_true, dims.d);
    let mut zt: Vec<T> = zeroed("labels", a.labels.len())?;
    let res: Vec<Result<()>> = zt
        .par_chunks_mut(ROW_TASK * nt)
        .enumerate()
        .map(|(task, out)| {
            let mut w = vec![T::ZERO; d];
            for (i, o) in out.iter_mut().enumerate() {
                let e = task * ROW_TASK * nt + i;
                let (b, id) = (e / nt, a.labels[e]);
                if !a.weights.row_into(id as usize, &mut w) {
                    return Err(not_finite_row(id));
                }
                let z = tile::dot(&a.inputs[b * d..(b + 1) * d], &w) + bias_of(a.biases, id)?;
                let z = z - T::from_f64(dims.lq_true[e]);
                if !z.is_finite() {
                    return Err(overflow(b));
                }
                *o = z;
            }
            Ok(())
        })
        .collect();
    first_err(res)?;
    Ok(zt)
}

/// One column block of shared candidates.
struct Block<T> {
    /// First candidate and number of candidates.
    c0: usize,
    w: usize,
    /// Gathered weight rows `[w, d]`.
    rows: Vec<T>,
    /// Bias of each candidate and ln q.
    off_b: Vec<T>,
    off_q: Vec<T>,
    /// Accidental hits in this block: (row, column within the block), by row.
    hits: Vec<(usize, usize)>,
    /// Logits, then dL/dz, of the current row chunk, candidate-major: `[w, rows]`. Between the passes,
    /// softmax keeps e^(z − m) instead of z, with `m` the block's maximum per row; plain NCE keeps σ(z).
    z: Vec<T>,
    m: Vec<T>,
    /// dL/dW rows of this block's candidates `[w, d]`, accumulated over row chunks; dL/db.
    gw: Vec<T>,
    gb: Vec<T>,
}

fn shared<T: FastMath>(a: &Args<'_, T>, dims: &Dims, zt: &[T], c: Option<&[T]>) -> Result<Out<T>> {
    let (b, d, s, nt) = (dims.b, dims.d, dims.s, a.num_true);
    let k = consts(a);
    let sz = std::mem::size_of::<T>();
    let nb = (BLOCK_BYTES / sz).max(1);
    let nblocks = s.div_ceil(nb);
    // Rows per chunk: the logits [rows, S] and the per-block dL/dx pieces [nblocks, rows, d] within budget.
    let per_row_bytes = (s + nblocks * d) * sz;
    let chunk = (LOGIT_BUDGET / per_row_bytes.max(1)).clamp(1, b);

    // Accidental hits, bucketed by block.
    let mut hits: Vec<Vec<(usize, usize)>> = vec![Vec::new(); nblocks];
    if a.remove_accidental_hits {
        let mut pos: HashMap<i64, Vec<usize>> = HashMap::with_capacity(s);
        for (p, &id) in a.sampled.iter().enumerate() {
            pos.entry(id).or_default().push(p);
        }
        for r in 0..b {
            for &t in &a.labels[r * nt..(r + 1) * nt] {
                if let Some(ps) = pos.get(&t) {
                    for &p in ps {
                        hits[p / nb].push((r, p % nb));
                    }
                }
            }
        }
    }

    // Gather each block's rows, biases and ln q once.
    let gathered: Vec<Result<Block<T>>> = hits
        .into_par_iter()
        .enumerate()
        .map(|(bi, hits)| {
            let c0 = bi * nb;
            let w = nb.min(s - c0);
            let mut rows: Vec<T> = zeroed("num_sampled", w * d)?;
            let mut off_b = vec![T::ZERO; w];
            let mut off_q = vec![T::ZERO; w];
            for j in 0..w {
                if let Some(&ahead) = a.sampled.get(c0 + j + PREFETCH) {
                    a.weights.prefetch(ahead as usize);
                }
                let id = a.sampled[c0 + j];
                if !a.weights.row_into(id as usize, &mut rows[j * d..(j + 1) * d]) {
                    return Err(not_finite_row(id));
                }
                off_b[j] = bias_of(a.biases, id)?;
                off_q[j] = T::from_f64(dims.lq_sampled[c0 + j]);
            }
            let grad = c.is_some();
            Ok(Block {
                c0,
                w,
                rows,
                off_b,
                off_q,
                hits,
                z: Vec::new(),
                m: Vec::new(),
                gw: if grad { zeroed("num_sampled", w * d)? } else { Vec::new() },
                gb: if grad { vec![T::ZERO; w] } else { Vec::new() },
            })
        })
        .collect();
    let mut blocks = first_err(gathered)?;

    let mut loss: Vec<T> = vec![T::ZERO; b];
    let mut gt: Vec<T> = vec![T::ZERO; b * nt];
    let mut gx: Vec<T> = if c.is_some() { zeroed("inputs", b * d)? } else { Vec::new() };

    for r0 in (0..b).step_by(chunk) {
        let n = chunk.min(b - r0);
        let x = Mat::new(&a.inputs[r0 * d..(r0 + n) * d], n, d);
        // Forward: each block's logits and its piece of every row.
        let pieces: Vec<Result<Vec<(T, T)>>> =
            blocks.par_iter_mut().map(|blk| forward_block(blk, x, r0, &k)).collect();
        let pieces = first_err(pieces)?;
        // Merge the pieces of each row, in block order.
        let cs = c.map(|c| &c[r0..r0 + n]);
        let stats: Vec<RowStat<T>> = loss[r0..r0 + n]
            .par_chunks_mut(ROW_TASK)
            .zip(gt[r0 * nt..(r0 + n) * nt].par_chunks_mut(ROW_TASK * nt))
            .enumerate()
            .flat_map_iter(|(task, (l, g))| {
                let mut st = Vec::with_capacity(l.len());
                let mut row_pieces = Vec::with_capacity(pieces.len());
                for (i, (li, gi)) in l.iter_mut().zip(g.chunks_mut(nt)).enumerate() {
                    let r = task * ROW_TASK + i;
                    row_pieces.clear();
                    row_pieces.extend(pieces.iter().map(|p| p[r]));
                    let ci = cs.map_or(T::ONE, |c| c[r]);
                    let z = &zt[(r0 + r) * nt..(r0 + r + 1) * nt];
                    let s = combine(&k, &row_pieces, z, ci, gi);
                    *li = s.loss;
                    st.push(s);
                }
                st
            })
            .collect();
        if c.is_none() {
            continue;
        }
        // Backward: each block turns its logits into dL/dz and does its two products.
        let first = r0 == 0;
        let lse: Vec<T> = stats.iter().map(|s| s.lse).collect();
        let coef: Vec<T> = stats.iter().map(|s| s.coef).collect();
        let parts: Vec<Result<Vec<T>>> =
            blocks.par_iter_mut().map(|blk| backward_block(blk, x, &lse, &coef, &k, first)).collect();
        let mut parts = first_err(parts)?;
        // dL/dx of the chunk: the blocks' pieces (dᵀ-major [d, rows]) summed in block order, transposed,
        // then the true columns.
        if let Some((sum_t, rest)) = parts.split_first_mut() {
            sum_t.par_chunks_mut(n).enumerate().for_each(|(j, out)| {
                for p in rest.iter() {
                    tile::axpy(T::ONE, &p[j * n..(j + 1) * n], out);
                }
            });
            tile::transpose(sum_t, d, n, &mut gx[r0 * d..(r0 + n) * d]);
        }
        parts.into_iter().for_each(Scratch::give);
        gx[r0 * d..(r0 + n) * d].par_chunks_mut(ROW_TASK * d).enumerate().for_each(|(task, out)| {
            let mut w = vec![T::ZERO; d];
            for (i, o) in out.chunks_mut(d).enumerate() {
                for t in 0..nt {
                    let e = (r0 + task * ROW_TASK + i) * nt + t;
                    a.weights.row_into(a.labels[e] as usize, &mut w);
                    tile::axpy(gt[e], &w, o);
                }
            }
        });
    }
    for blk in &mut blocks {
        Scratch::give(std::mem::take(&mut blk.z));
    }
    let Some(_) = c else {
        return Ok(Out { loss, grad: None });
    };

    // Sparse gradients: entries 0..S are the candidates (their block rows), then the true classes.
    let mut ids: Vec<i64> = Vec::with_capacity(s + b * nt);
    ids.extend_from_slice(a.sampled);
    ids.extend_from_slice(a.labels);
    let blocks = &blocks;
    let row_of = |e: usize, out: &mut [T], first: bool| {
        if e < s {
            let blk = &blocks[e / nb];
            let j = e - blk.c0;
            let src = &blk.gw[j * d..(j + 1) * d];
            if first {
                out.copy_from_slice(src);
            } else {
                for (o, &v) in out.iter_mut().zip(src) {
                    *o += v;
                }
            }
        } else {
            let e = e - s;
            let r = e / nt;
            let x = &a.inputs[r * d..(r + 1) * d];
            if first {
                tile::scale_into(gt[e], x, out);
            } else {
                tile::axpy(gt[e], x, out);
            }
        }
    };
    let bias_of_entry = |e: usize| -> T {
        if e < s {
            blocks[e / nb].gb[e % nb]
        } else {
            gt[e - s]
        }
    };
    let (gw, gb) = sparse(&ids, d, row_of, a.biases.is_some(), bias_of_entry)?;
    Ok(Out {
        loss: loss.clone(),
        grad: Some(LossAndGrad { loss, grad_inputs: gx, grad_weights: gw, grad_biases: gb }),
    })
}

/// Batch rows per sub-tile of a block: the block's `w × rows` sub-tile of logits stays in L2 (about
/// 512 KiB) while its passes run.
fn sub_rows<T>(w: usize) -> usize {
    ((SUBTILE_BYTES / std::mem::size_of::<T>()) / w.max(1)).clamp(16, 4096)
}

/// Logits of a block for rows `r0..r0 + x.rows` (with biases, ln q and masks), kept candidate-major
/// (`[w, rows]`), and each row's piece. Works in sub-tiles of rows so that the product and the passes over
/// its output run on data in cache.
fn forward_block<T: FastMath>(
    blk: &mut Block<T>,
    x: Mat<'_, T>,
    r0: usize,
    k: &Consts<T>,
) -> Result<Vec<(T, T)>> {
    let (n, w, d) = (x.rows, blk.w, x.cols);
    if blk.z.len() != n * w {
        Scratch::give(std::mem::take(&mut blk.z));
        blk.z = Scratch::take("num_sampled", n * w)?;
    }
    let mut m = vec![T::NEG_INFINITY; n];
    let mut acc = vec![T::ZERO; n];
    let hits_lo = blk.hits.partition_point(|h| h.0 < r0);
    let nr = sub_rows::<T>(w);
    for i0 in (0..n).step_by(nr) {
        let i1 = (i0 + nr).min(n);
        let xs = Mat::new(&x.data[i0 * d..i1 * d], i1 - i0, d);
        // zᵀ = W_block · Xᵀ into columns i0..i1 of the block: the left operand is row-major, which the
        // product handles best.
        tile::matmul(
            T::ONE,
            Mat::new(&blk.rows, w, d),
            Op::N,
            xs,
            Op::T,
            T::ZERO,
            MatMut { data: &mut blk.z[i0..], rows: w, cols: i1 - i0, stride: n },
        );
        // Masks first: −∞ stays −∞ when the offsets are added.
        for &(r, j) in &blk.hits[hits_lo..] {
            if r >= r0 + i1 {
                break;
            }
            if r >= r0 + i0 {
                blk.z[j * n + (r - r0)] = T::NEG_INFINITY;
            }
        }
        let offsets = blk.off_b.iter().zip(&blk.off_q);
        // Per batch row, reductions over the block's candidates, in candidate order.
        let (ms, accs) = (&mut m[i0..i1], &mut acc[i0..i1]);
        match k.kind {
            Kind::SampledSoftmax => {
                for (col, (&bb, &q)) in blk.z.chunks_mut(n).zip(offsets) {
                    tile::add_offsets_vmax(&mut col[i0..i1], bb, q, ms);
                }
                // A row whose candidates in this block are all accidental hits has maximum −∞, and
                // e^(z − m) would be e^(−∞ + ∞) = NaN: such rows subtract 0 instead (their entries become
                // e^−∞ = 0, and their piece, sum 0, drops out of the merge). `m` itself stays −∞.
                let safe: Vec<T>;
                let ms_exp: &[T] = if ms.contains(&T::NEG_INFINITY) {
                    safe = ms.iter().map(|&v| if v == T::NEG_INFINITY { T::ZERO } else { v }).collect();
                    &safe
                } else {
                    ms
                };
                for col in blk.z.chunks_mut(n) {
                    tile::vexp_sum(accs, &mut col[i0..i1], ms_exp);
                }
            }
            // Plain NCE keeps σ(z) for the backward pass; focal NCE keeps z.
            Kind::Nce => {
                for (col, (&bb, &q)) in blk.z.chunks_mut(n).zip(offsets) {
                    let col = &mut col[i0..i1];
                    tile::add_offsets(col, bb, q);
                    if k.focal {
                        nce_loss_acc(accs, col, k);
                    } else {
                        nce_loss_sigmoid(accs, col);
                    }
                }
            }
        }
    }
    let pieces: Vec<(T, T)> = match k.kind {
        Kind::SampledSoftmax => m.iter().copied().zip(acc).collect(),
        Kind::Nce => acc.into_iter().map(|v| (v, T::ZERO)).collect(),
    };
    blk.m = m;
    // A logit that overflowed (+inf, or NaN from inf − inf) shows in its row's piece; −inf ones are
    // harmless (probability 0, like a masked column).
    if let Some(i) =
        pieces.iter().position(|&(m, s)| m.is_nan() || (m > T::ZERO && !m.is_finite()) || !s.is_finite())
    {
        return Err(overflow(r0 + i));
    }
    Ok(pieces)
}

/// The backward pass of a block: its piece of dL/dx, transposed (`[d, rows]`), returned, and its rows'
/// dL/dW and dL/db added. Sub-tiles of rows as in [`forward_block`], in a fixed order.
///
/// dL/dz is `E ⊙ f` with one factor per batch row: softmax keeps E = e^(z − m) and f = c·e^(m − lse),
/// plain NCE E = σ(z) and f = c. The block is never rewritten: the factor goes onto the small operands,
/// dL/dW = E·(diag(f) X), (dL/dx)ᵀ = (Wᵀ E)·diag(f), dL/db = E f. Focal NCE turns z into dL/dz in place.
fn backward_block<T: FastMath>(
    blk: &mut Block<T>,
    x: Mat<'_, T>,
    lse: &[T],
    coef: &[T],
    k: &Consts<T>,
    first: bool,
) -> Result<Vec<T>> {
    let (n, w, d) = (x.rows, blk.w, x.cols);
    let mut gxt: Vec<T> = Scratch::take("inputs", d * n)?;
    let focal_nce = k.kind == Kind::Nce && k.focal;
    let f: Vec<T> = match k.kind {
        Kind::SampledSoftmax => {
            (blk.m.iter().zip(lse).zip(coef)).map(|((&m, &l), &c)| c * (m - l).exp_fast()).collect()
        }
        Kind::Nce if focal_nce => vec![T::ONE; n],
        Kind::Nce => coef.to_vec(),
    };
    let nr = sub_rows::<T>(w);
    let mut gb = vec![T::ZERO; w];
    let mut fx: Vec<T> = vec![T::ZERO; nr.min(n) * d];
    for i0 in (0..n).step_by(nr) {
        let i1 = (i0 + nr).min(n);
        let fs = &f[i0..i1];
        if focal_nce {
            for col in blk.z.chunks_mut(n) {
                nce_grad(&mut col[i0..i1], &coef[i0..i1], k);
            }
        }
        let e = Mat { data: &blk.z[i0..], rows: w, cols: i1 - i0, stride: n };
        // diag(f) X for the sub-tile.
        let fx = &mut fx[..(i1 - i0) * d];
        for ((o, xr), &c) in fx.chunks_mut(d).zip(x.data[i0 * d..i1 * d].chunks(d)).zip(fs) {
            for (a, &v) in o.iter_mut().zip(xr) {
                *a = c * v;
            }
        }
        // dL/dW_block += E-sub-tile · diag(f) X-sub-tile.
        let beta = if first && i0 == 0 { T::ZERO } else { T::ONE };
        tile::matmul(T::ONE, e, Op::N, Mat::new(fx, i1 - i0, d), Op::N, beta, MatMut::new(&mut blk.gw, w, d));
        // (dL/dx)ᵀ columns i0..i1 = (W_blockᵀ · E-sub-tile) · diag(f).
        tile::matmul(
            T::ONE,
            Mat::new(&blk.rows, w, d),
            Op::T,
            e,
            Op::N,
            T::ZERO,
            MatMut { data: &mut gxt[i0..], rows: d, cols: i1 - i0, stride: n },
        );
        for row in gxt.chunks_mut(n) {
            tile::vmul(&mut row[i0..i1], fs);
        }
        // dL/db += E f.
        for (col, gbj) in blk.z.chunks(n).zip(gb.iter_mut()) {
            *gbj += tile::dot(&col[i0..i1], fs);
        }
    }
    for (o, v) in blk.gb.iter_mut().zip(gb) {
        *o = if first { v } else { *o + v };
    }
    Ok(gxt)
}

/// Per-row candidates: row b has its own `s` candidates.
fn per_row<T: FastMath>(a: &Args<'_, T>, dims: &Dims, zt: &[T], c: Option<&[T]>) -> Result<Out<T>> {
    let (b, d, s, nt) = (dims.b, dims.d, dims.s, a.num_true);
    let k = consts(a);
    let grad = c.is_some();
    let mut loss = vec![T::ZERO; b];
    let mut gt = vec![T::ZERO; b * nt];
    let mut g: Vec<T> = if grad { zeroed("sampled_values", b * s)? } else { Vec::new() };
    let mut gx: Vec<T> = if grad { zeroed("inputs", b * d)? } else { Vec::new() };
    let row_task = 4;
    {
        let mut gx_chunks: Vec<&mut [T]> = if grad {
            gx.chunks_mut(row_task * d).collect()
        } else {
            (0..b.div_ceil(row_task)).map(|_| &mut [][..]).collect()
        };
        let mut g_chunks: Vec<&mut [T]> = if grad {
            g.chunks_mut(row_task * s).collect()
        } else {
            (0..b.div_ceil(row_task)).map(|_| &mut [][..]).collect()
        };
        let res: Vec<Result<()>> = loss
            .par_chunks_mut(row_task)
            .zip(gt.par_chunks_mut(row_task * nt))
            .zip(gx_chunks.par_iter_mut())
            .zip(g_chunks.par_iter_mut())
            .enumerate()
            .map_init(
                || (Vec::new(), vec![T::ZERO; s], vec![T::ZERO; d]),
                |(rows, z, wt), (task, (((l, gtc), gxc), gc))| {
                    if rows.len() != s * d {
                        *rows = zeroed("sampled_values", s * d)?;
                    }
                    for (i, li) in l.iter_mut().enumerate() {
                        let r = task * row_task + i;
                        let ids = &a.sampled[r * s..(r + 1) * s];
                        let labels = &a.labels[r * nt..(r + 1) * nt];
                        let next = &a.sampled[(r * s + PREFETCH).min(a.sampled.len())..];
                        for (j, &id) in ids.iter().enumerate() {
                            if let Some(&ahead) = next.get(j) {
                                a.weights.prefetch(ahead as usize);
                            }
                            if !a.weights.row_into(id as usize, &mut rows[j * d..(j + 1) * d]) {
                                return Err(not_finite_row(id));
                            }
                        }
                        let xr = &a.inputs[r * d..(r + 1) * d];
                        tile::gemv(rows, xr, z);
                        for (j, (zj, &id)) in z.iter_mut().zip(ids).enumerate() {
                            *zj = (*zj + bias_of(a.biases, id)?) - T::from_f64(dims.lq_sampled[r * s + j]);
                            if !zj.is_finite() {
                                return Err(overflow(r));
                            }
                            if a.remove_accidental_hits && labels.contains(&id) {
                                *zj = T::NEG_INFINITY;
                            }
                        }
                        let p = piece(&k, z);
                        let ci = c.map_or(T::ONE, |c| c[r]);
                        let gti = &mut gtc[i * nt..(i + 1) * nt];
                        let st = combine(&k, &[p], &zt[r * nt..(r + 1) * nt], ci, gti);
                        *li = st.loss;
                        if grad {
                            to_grad(&k, z, &st);
                            let o = &mut gxc[i * d..(i + 1) * d];
                            o.fill(T::ZERO);
                            tile::gemv_t_acc(rows, z, o);
                            for (t, &id) in labels.iter().enumerate() {
                                a.weights.row_into(id as usize, wt);
                                tile::axpy(gti[t], wt, o);
                            }
                            gc[i * s..(i + 1) * s].copy_from_slice(z);
                        }
                    }
                    Ok(())
                },
            )
            .collect();
        first_err(res)?;
    }
    if !grad {
        return Ok(Out { loss, grad: None });
    }
    // Entries 0..B·S are the candidates (row e / S), then the true classes.
    let mut ids: Vec<i64> = Vec::with_capacity(b * s + b * nt);
    ids.extend_from_slice(a.sampled);
    ids.extend_from_slice(a.labels);
    let bs = b * s;
    let row_of = |e: usize, out: &mut [T], first: bool| {
        let (coef, r) = if e < bs { (g[e], e / s) } else { (gt[e - bs], (e - bs) / nt) };
        let x = &a.inputs[r * d..(r + 1) * d];
        if first {
            tile::scale_into(coef, x, out);
        } else {
            tile::axpy(coef, x, out);
        }
    };
    let bias_of_entry = |e: usize| if e < bs { g[e] } else { gt[e - bs] };
    let (gw, gb) = sparse(&ids, d, row_of, a.biases.is_some(), bias_of_entry)?;
    Ok(Out {
        loss: loss.clone(),
        grad: Some(LossAndGrad { loss, grad_inputs: gx, grad_weights: gw, grad_biases: gb }),
    })
}

/// Sum per-entry gradient rows by class id: `ids[e]` is the class of entry e, `row_of(e, out, first)` adds
/// its row to `out` (or, for the first entry of an id, writes it there), `bias_of(e)` is its bias gradient.
/// Entries of one id are added in entry order.
///
/// Writing each output row before reading it matters: the values are fresh zeroed memory, whose untouched
/// pages read as the shared zero page, so a read-modify-write would fault twice per page (read, then
/// copy-on-write with a TLB shootdown across the library's threads); a first write faults once.
#[allow(clippy::type_complexity)]
fn sparse<T: Float>(
    ids: &[i64],
    d: usize,
    row_of: impl Fn(usize, &mut [T], bool) + Sync,
    with_bias: bool,
    bias_of: impl Fn(usize) -> T + Sync,
) -> Result<(SparseGrad<T>, Option<SparseGrad<T>>)> {
    let mut order: Vec<(i64, usize)> = ids.iter().copied().zip(0..).collect();
    order.par_sort_unstable();
    let mut starts: Vec<usize> = Vec::new();
    let mut uniq: Vec<i64> = Vec::new();
    for (i, &(id, _)) in order.iter().enumerate() {
        if uniq.last() != Some(&id) {
            uniq.push(id);
            starts.push(i);
        }
    }
    starts.push(order.len());
    let u = uniq.len();
    let mut values: Vec<T> = zeroed("weights", u * d)?;
    const GROUP: usize = 64;
    values.par_chunks_mut(GROUP * d).enumerate().for_each(|(task, out)| {
        for (i, row) in out.chunks_mut(d).enumerate() {
            let q = task * GROUP + i;
            for (k, &(_, e)) in order[starts[q]..starts[q + 1]].iter().enumerate() {
                row_of(e, row, k == 0);
            }
        }
    });
    let biases = with_bias.then(|| {
        let vals: Vec<T> = (0..u)
            .into_par_iter()
            .map(|q| {
                let mut acc = T::ZERO;
                for &(_, e) in &order[starts[q]..starts[q + 1]] {
                    acc += bias_of(e);
                }
                acc
            })
            .collect();
        SparseGrad { indices: uniq.clone(), values: vals }
    });
    Ok((SparseGrad { indices: uniq, values }, biases))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic problem.
    struct P {
        w: Vec<f64>,
        bias: Vec<f64>,
        x: Vec<f64>,
        labels: Vec<i64>,
        sampled: Vec<i64>,
        te: Vec<f64>,
        se: Vec<f64>,
        v: usize,
        d: usize,
        nt: usize,
    }

    fn problem(per_row: bool) -> P {
        let (v, d, b, nt, s) = (11, 5, 4, 2, 6);
        let w = (0..v * d).map(|i| (i as f64 * 0.37).sin()).collect();
        let bias = (0..v).map(|i| (i as f64 * 0.7).cos() * 0.3).collect();
        let x = (0..b * d).map(|i| (i as f64 * 0.13).cos()).collect();
        let labels = vec![1, 2, 3, 3, 0, 7, 9, 4];
        let sampled: Vec<i64> = if per_row {
            (0..b * s).map(|i| ((i * 7 + 3) % v) as i64).collect()
        } else {
            vec![2, 5, 3, 8, 10, 7]
        };
        let te = (0..b * nt).map(|i| 0.1 + 0.05 * i as f64).collect();
        let se = (0..sampled.len()).map(|i| 0.2 + 0.01 * i as f64).collect();
        P { w, bias, x, labels, sampled, te, se, v, d, nt }
    }

    fn args<'a>(p: &'a P, kind: Kind, per_row: bool, gamma: f64) -> Args<'a, f64> {
        Args {
            kind,
            weights: Weights::contiguous(&p.w, p.v, p.d),
            biases: Some(&p.bias),
            labels: &p.labels,
            num_true: p.nt,
            inputs: &p.x,
            sampled: &p.sampled,
            per_row,
            true_expected: &p.te,
            sampled_expected: &p.se,
            remove_accidental_hits: true,
            subtract_log_q: true,
            focal_gamma: gamma,
        }
    }

    /// The loss from its definition, with plain loops, in f64.
    fn naive(a: &Args<'_, f64>) -> Vec<f64> {
        let (d, nt) = (a.weights.cols, a.num_true);
        let b = a.labels.len() / nt;
        let s = if a.per_row { a.sampled.len() / b } else { a.sampled.len() };
        let row = |i: i64| &a.weights.data[i as usize * d..(i as usize + 1) * d];
        let g = a.focal_gamma;
        (0..b)
            .map(|r| {
                let x = &a.inputs[r * d..(r + 1) * d];
                let labels = &a.labels[r * nt..(r + 1) * nt];
                let logit = |id: i64, q: f64| {
                    x.iter().zip(row(id)).map(|(u, v)| u * v).sum::<f64>() + a.biases.unwrap()[id as usize]
                        - q.ln()
                };
                let mut cols: Vec<(f64, f64)> = Vec::new(); // (z, y); masked columns dropped
                for (t, &label) in labels.iter().enumerate() {
                    cols.push((logit(label, a.true_expected[r * nt + t]), 1.0 / nt as f64));
                }
                for j in 0..s {
                    let e = if a.per_row { r * s + j } else { j };
                    let id = a.sampled[e];
                    if a.remove_accidental_hits && labels.contains(&id) {
                        continue;
                    }
                    cols.push((logit(id, a.sampled_expected[e]), 0.0));
                }
                match a.kind {
                    Kind::SampledSoftmax => {
                        let m = cols.iter().map(|c| c.0).fold(f64::NEG_INFINITY, f64::max);
                        let lse = m + cols.iter().map(|c| (c.0 - m).exp()).sum::<f64>().ln();
                        cols.iter()
                            .filter(|c| c.1 > 0.0)
                            .map(|&(z, y)| -y * (1.0 - (z - lse).exp()).powf(g) * (z - lse))
                            .sum()
                    }
                    Kind::Nce => cols
                        .iter()
                        .map(|&(z, y)| {
                            let sg = 1.0 / (1.0 + (-z).exp());
                            // ln σ and ln(1 − σ) without cancellation.
                            let (ln_s, ln_1s) = (-(-z).exp().ln_1p(), -z.exp().ln_1p());
                            -(y * (1.0 - sg).powf(g) * ln_s + (1.0 - y) * sg.powf(g) * ln_1s)
                        })
                        .sum(),
                }
            })
            .collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn losses_match_their_definition() {
        for per_row in [false, true] {
            let p = problem(per_row);
            for kind in [Kind::SampledSoftmax, Kind::Nce] {
                for gamma in [0.0, 0.5, 2.0] {
                    let a = args(&p, kind, per_row, gamma);
                    let got = loss(&a).unwrap();
                    let want = naive(&a);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(close(*g, *w, 1e-12), "{kind:?} per_row={per_row} γ={gamma}: {g} vs {w}");
                    }
                }
            }
        }
    }

    /// Central differences of Σ c_b loss_b against the analytic gradients, for inputs, weights and biases.
    #[test]
    fn gradients_match_finite_differences() {
        let c = [0.5, -1.0, 2.0, 1.5];
        for per_row in [false, true] {
            for kind in [Kind::SampledSoftmax, Kind::Nce] {
                for gamma in [0.0, 1.5] {
                    let p = problem(per_row);
                    let a = args(&p, kind, per_row, gamma);
                    let out = loss_and_grad(&a, Some(&c)).unwrap();
                    let f = |p: &P| -> f64 {
                        let a = args(p, kind, per_row, gamma);
                        naive(&a).iter().zip(&c).map(|(l, c)| l * c).sum()
                    };
                    let h = 1e-6;
                    for i in 0..p.x.len() {
                        let (mut q, mut r) = (problem(per_row), problem(per_row));
                        q.x[i] += h;
                        r.x[i] -= h;
                        let fd = (f(&q) - f(&r)) / (2.0 * h);
                        assert!(
                            close(out.grad_inputs[i], fd, 1e-6),
                            "dx[{i}] {} vs {fd}",
                            out.grad_inputs[i]
                        );
                    }
                    let gw = &out.grad_weights;
                    assert!(gw.indices.windows(2).all(|w| w[0] < w[1]));
                    for id in 0..p.v {
                        let at = gw.indices.iter().position(|&u| u == id as i64);
                        for j in 0..p.d {
                            let (mut q, mut r) = (problem(per_row), problem(per_row));
                            q.w[id * p.d + j] += h;
                            r.w[id * p.d + j] -= h;
                            let fd = (f(&q) - f(&r)) / (2.0 * h);
                            let got = at.map_or(0.0, |u| gw.values[u * p.d + j]);
                            assert!(close(got, fd, 1e-6), "dW[{id},{j}] {got} vs {fd}");
                        }
                        let (mut q, mut r) = (problem(per_row), problem(per_row));
                        q.bias[id] += h;
                        r.bias[id] -= h;
                        let fd = (f(&q) - f(&r)) / (2.0 * h);
                        let gb = out.grad_biases.as_ref().unwrap();
                        let got = at.map_or(0.0, |u| gb.values[u]);
                        assert!(close(got, fd, 1e-6), "db[{id}] {got} vs {fd}");
                    }
                }
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_results() {
        // Big enough for several blocks and row tasks.
        let (v, d, b, s) = (3000, 33, 70, 1100);
        let w: Vec<f32> = (0..v * d).map(|i| ((i as f32) * 0.011).sin()).collect();
        let x: Vec<f32> = (0..b * d).map(|i| ((i as f32) * 0.07).cos()).collect();
        let labels: Vec<i64> = (0..b).map(|i| (i * 37 % v) as i64).collect();
        let sampled: Vec<i64> = (0..s).map(|i| (i * 13 % v) as i64).collect();
        let te = vec![0.01f32; b];
        let se = vec![0.02f32; s];
        let a = Args {
            kind: Kind::SampledSoftmax,
            weights: Weights::contiguous(&w, v, d),
            biases: None,
            labels: &labels,
            num_true: 1,
            inputs: &x,
            sampled: &sampled,
            per_row: false,
            true_expected: &te,
            sampled_expected: &se,
            remove_accidental_hits: true,
            subtract_log_q: true,
            focal_gamma: 0.0,
        };
        let run = |n: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
            pool.install(|| {
                let dims = check(&a, None).unwrap();
                let zt = true_logits(&a, &dims).unwrap();
                shared(&a, &dims, &zt, Some(&vec![1.0; b])).unwrap().grad.unwrap()
            })
        };
        assert_eq!(run(1), run(3));
    }

    /// Shared candidates over many row chunks and sub-tiles (the test budgets are tiny) agree with the
    /// per-row path given the same candidates in every row, and with the definition of the loss.
    #[test]
    fn chunked_shared_path_matches_per_row_path() {
        let (v, d, b, nt, s) = (700, 9, 150, 2, 600);
        let w: Vec<f64> = (0..v * d).map(|i| (i as f64 * 0.013).sin()).collect();
        let bias: Vec<f64> = (0..v).map(|i| (i as f64 * 0.7).cos() * 0.3).collect();
        let x: Vec<f64> = (0..b * d).map(|i| (i as f64 * 0.029).cos() * 2.0).collect();
        let labels: Vec<i64> = (0..b * nt).map(|i| (i * 31 % v) as i64).collect();
        let sampled: Vec<i64> = (0..s).map(|i| (i * 17 % v) as i64).collect();
        let te: Vec<f64> = (0..b * nt).map(|i| 0.01 + 0.001 * (i % 7) as f64).collect();
        let se: Vec<f64> = (0..s).map(|i| 0.02 + 0.001 * (i % 5) as f64).collect();
        let tiled_ids: Vec<i64> = (0..b).flat_map(|_| sampled.iter().copied()).collect();
        let tiled_se: Vec<f64> = (0..b).flat_map(|_| se.iter().copied()).collect();
        let c: Vec<f64> = (0..b).map(|i| 0.5 + (i % 3) as f64).collect();
        for kind in [Kind::SampledSoftmax, Kind::Nce] {
            let a = Args {
                kind,
                weights: Weights::contiguous(&w, v, d),
                biases: Some(&bias),
                labels: &labels,
                num_true: nt,
                inputs: &x,
                sampled: &sampled,
                per_row: false,
                true_expected: &te,
                sampled_expected: &se,
                remove_accidental_hits: true,
                subtract_log_q: true,
                focal_gamma: 0.0,
            };
            let dims = check(&a, None).unwrap();
            let per_row_bytes = (dims.s + 3 * d) * 8;
            assert!(LOGIT_BUDGET / per_row_bytes < b / 3, "the test should use several chunks");
            let shared = loss_and_grad(&a, Some(&c)).unwrap();
            let pr = Args { sampled: &tiled_ids, sampled_expected: &tiled_se, per_row: true, ..a };
            let rowwise = loss_and_grad(&pr, Some(&c)).unwrap();
            for (p, q) in shared.loss.iter().zip(naive(&a).iter()) {
                assert!(close(*p, *q, 1e-12), "{kind:?} loss {p} vs naive {q}");
            }
            for (p, q) in [
                (&shared.loss, &rowwise.loss),
                (&shared.grad_inputs, &rowwise.grad_inputs),
                (&shared.grad_weights.values, &rowwise.grad_weights.values),
                (&shared.grad_biases.as_ref().unwrap().values, &rowwise.grad_biases.as_ref().unwrap().values),
            ] {
                assert_eq!(p.len(), q.len());
                for (u, v) in p.iter().zip(q.iter()) {
                    assert!(close(*u, *v, 1e-11), "{kind:?}: {u} vs {v}");
                }
            }
            assert_eq!(shared.grad_weights.indices, rowwise.grad_weights.indices);
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_the_argument() {
        let p = problem(false);
        let a = args(&p, Kind::SampledSoftmax, false, 0.0);
        let mut bad = p.labels.clone();
        bad[3] = 11;
        let e = loss(&Args { labels: &bad, ..a }).unwrap_err();
        assert_eq!(e.arg(), "labels");
        let e = loss(&Args { inputs: &p.x[1..], ..a }).unwrap_err();
        assert_eq!(e.arg(), "inputs");
        let e = loss(&Args { biases: Some(&p.bias[1..]), ..a }).unwrap_err();
        assert_eq!(e.arg(), "biases");
        let mut nan = p.x.clone();
        nan[2] = f64::NAN;
        assert_eq!(loss(&Args { inputs: &nan, ..a }).unwrap_err().arg(), "inputs");
        let mut w = p.w.clone();
        w[8 * p.d] = f64::INFINITY; // row 8 is a candidate
        let e = loss(&Args { weights: Weights::contiguous(&w, p.v, p.d), ..a }).unwrap_err();
        assert_eq!(e.arg(), "weights");
        let e = loss(&Args { sampled_expected: &p.se[1..], ..a }).unwrap_err();
        assert_eq!(e.arg(), "sampled_values");
        let zero = vec![0.0; p.se.len()];
        assert_eq!(loss(&Args { sampled_expected: &zero, ..a }).unwrap_err().arg(), "sampled_values");
        // x·w overflows: five terms of 1e308 each.
        let (big, ones) = (vec![1e308; p.x.len()], vec![1.0; p.w.len()]);
        let e = loss(&Args { inputs: &big, weights: Weights::contiguous(&ones, p.v, p.d), ..a }).unwrap_err();
        assert_eq!(e.arg(), "inputs");
        assert!(loss_and_grad(&a, Some(&[1.0])).is_err());
    }

    #[test]
    fn a_block_whose_candidates_are_all_masked_drops_out() {
        // One candidate, equal to every row's label: softmax over the true column alone (loss 0, gradient
        // 0). Its block's maximum is −∞ for every row, which used to give NaN and an "overflow" error.
        let (v, d, b) = (3usize, 2usize, 4usize);
        let w: Vec<f64> = (0..v * d).map(|i| i as f64 * 0.25 - 0.5).collect();
        let x: Vec<f64> = (0..b * d).map(|i| 1.0 - i as f64 * 0.3).collect();
        let labels = vec![1i64; b];
        let (sampled, te, se) = (vec![1i64], vec![0.5f64; b], vec![0.5f64]);
        for kind in [Kind::SampledSoftmax, Kind::Nce] {
            let a = Args {
                kind,
                weights: Weights::contiguous(&w, v, d),
                biases: None,
                labels: &labels,
                num_true: 1,
                inputs: &x,
                sampled: &sampled,
                per_row: false,
                true_expected: &te,
                sampled_expected: &se,
                remove_accidental_hits: true,
                subtract_log_q: true,
                focal_gamma: 0.0,
            };
            let g = loss_and_grad(&a, None).unwrap();
            assert!(g.loss.iter().all(|l| l.is_finite()), "{kind:?}: {:?}", g.loss);
            assert!(g.grad_inputs.iter().all(|l| l.is_finite()), "{kind:?}: {:?}", g.grad_inputs);
            if kind == Kind::SampledSoftmax {
                assert!(g.loss.iter().all(|&l| l == 0.0), "{:?}", g.loss);
                assert!(g.grad_weights.values.iter().all(|&l| l == 0.0));
            }
        }
    }

    #[test]
    fn huge_logits_stay_finite_and_masks_are_exact() {
        let p = problem(false);
        let x: Vec<f64> = p.x.iter().map(|v| v * 1e4).collect();
        for kind in [Kind::SampledSoftmax, Kind::Nce] {
            let a = Args { inputs: &x, ..args(&p, kind, false, 0.0) };
            let out = loss_and_grad(&a, None).unwrap();
            assert!(out.loss.iter().all(|v| v.is_finite()));
            assert!(out.grad_inputs.iter().all(|v| v.is_finite()));
            assert!(out.grad_weights.values.iter().all(|v| v.is_finite()));
        }
        // Row 0 has labels 1 and 2; class 2 is also candidate 0, masked in that row. With grad_loss on row 0
        // only, class 2's bias gradient is its true column's p − 1/2 alone: a leak from the masked column
        // would add its own p (the same size, as it has almost the same logit).
        let a = args(&p, Kind::SampledSoftmax, false, 0.0);
        let out = loss_and_grad(&a, Some(&[1.0, 0.0, 0.0, 0.0])).unwrap();
        let gb = out.grad_biases.unwrap();
        let u = gb.indices.iter().position(|&i| i == 2).unwrap();
        let dims = check(&a, None).unwrap();
        let zt = true_logits(&a, &dims).unwrap();
        let lse = out.loss[0] + 0.5 * (zt[0] + zt[1]); // loss = lse − Σ_t z_t / 2
        let want = (zt[1] - lse).exp() - 0.5;
        assert!(close(gb.values[u], want, 1e-12), "{} vs {want}", gb.values[u]);
    }
}
