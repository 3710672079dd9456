//! The exact softmax cross-entropy over all V classes, fused with the output layer and tiled: the B×V
//! logits never exist at once.
//!
//! # The loss
//! Inputs `x` [B, d], class weights `W` [V, d], optional biases `b` [V], labels `y` [B, k] (k = num_true,
//! each row's labels weighted 1/k) and label smoothing ε. With `z = x Wᵀ + b` and
//! `lse_i = ln Σ_c e^(z_ic)`, the target distribution of row i is `t_ic = (1 − ε) n_ic / k + ε / V`
//! (`n_ic`: how often c appears among the row's labels), and
//!
//! ```text
//! loss_i = −Σ_c t_ic (z_ic − lse_i) = lse_i − (1 − ε)/k · Σ_j z_{i, y_ij} − ε/V · Σ_c z_ic
//! ```
//!
//! which is `torch.nn.functional.cross_entropy` with `label_smoothing = ε` (class-index targets for k = 1,
//! probability targets `n_ic / k` otherwise). A row whose labels all equal `ignore_index` has loss 0 and
//! no gradient. `Σ_c z_ic = x_i · Σ_c W_c + Σ_c b_c`, so the smoothing term costs one pass over `W`.
//!
//! # Gradients
//! With `grad_loss` w_i (0 for an ignored row), `G_ic = ∂(Σ_i w_i loss_i)/∂z_ic = w_i (p_ic − t_ic)`, and
//! `∂x = G W`, `∂W = Gᵀ x` (dense, [V, d]), `∂b = Σ_i G_i·`.
//!
//! # Tiles, passes and threads
//! The classes are split into *groups* of whole TC-column chunks (their number depends on V alone, at most
//! [`MAX_GROUPS`]), and the batch into *row blocks* (multiples of TR rows). For each row block:
//! 1. forward, one task per group: each TR×TC tile of logits (one product), each row's online
//!    log-sum-exp advanced chunk by chunk; the groups' pieces then merged in group order;
//! 2. backward, one task per group: each tile again (kept from step 1 when the row block's logits fit
//!    the budget `max_logits_bytes`, else recomputed), turned into G in place, then `∂W[group] += Gᵀ x`
//!    and the group's own partial `∂x += G W[group]` (two products); the partials summed in group order.
//!
//! Every product is called on the same tile at the same place whatever the path, the row-block size or the
//! thread count, and every sum runs in a fixed order: kept and recomputed logits give identical numbers,
//! and so does any number of threads. Extra memory: the kept logits (at most the budget), the groups'
//! partial `∂x` (counted in the budget; at most 64 MiB or one TR-row block when recomputing) and a tile
//! per thread; nothing of size B×V.

use crate::buf;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::loss::tile::{self, matmul, Lse, Mat, MatMut, Op, LANES};
use crate::threads;
use rayon::prelude::*;

/// Rows of a logit tile.
pub const TR: usize = 128;
/// Columns of a logit tile (and the step of a row's online log-sum-exp).
pub const TC: usize = 256;
/// The smallest number of classes of a group, when there are enough classes.
const GROUP_MIN_COLS: usize = 2048;
/// The largest number of groups (parallel tasks over the classes).
pub const MAX_GROUPS: usize = 64;
/// Below this many rows per block (and fewer than the batch), keeping the logits costs more than
/// recomputing them: the weights would be streamed from memory too often.
const KEEP_MIN_ROWS: usize = 256;
/// Rows of a block when the logits are recomputed or no gradient is wanted.
const BLOCK_ROWS: usize = 1024;
/// The most bytes of the groups' partial ∂x when the logits are recomputed (beyond one TR-row block).
const PARTS_BYTES: usize = 64 << 20;
/// The default budget for the logits kept between the passes (and the groups' partial ∂x): 256 MiB.
pub const DEFAULT_MAX_LOGITS_BYTES: usize = 256 << 20;
/// The largest batch, number of classes or dimension accepted.
const MAX_DIM: usize = 1 << 40;

/// Everything but the weights, inputs and labels (docs/API.md: full softmax).
#[derive(Clone, Copy, Debug)]
pub struct Options<'a, T> {
    /// Per-class biases `[V]`, added to the logits.
    pub biases: Option<&'a [T]>,
    /// Rows whose labels all equal this contribute no loss and no gradient.
    pub ignore_index: Option<i64>,
    /// ε in [0, 1]: the target mixes the labels (1 − ε) with the uniform distribution (ε).
    pub label_smoothing: f64,
    /// Keep a row block's logits between the passes when they (with the groups' partial ∂x) take at most
    /// this many bytes.
    pub max_logits_bytes: usize,
}

impl<T> Default for Options<'_, T> {
    fn default() -> Self {
        Options {
            biases: None,
            ignore_index: None,
            label_smoothing: 0.0,
            max_logits_bytes: DEFAULT_MAX_LOGITS_BYTES,
        }
    }
}

/// Loss and gradients, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct FullGrad<T> {
    /// `[B]`
    pub loss: Vec<T>,
    /// `[B, d]`
    pub grad_inputs: Vec<T>,
    /// `[V, d]`, dense.
    pub grad_weights: Vec<T>,
    /// `[V]`; `None` without biases.
    pub grad_biases: Option<Vec<T>>,
}

/// The per-row loss `[B]`. `labels` holds `num_true` labels per row, row-major.
pub fn full_softmax_loss<T: Float>(
    weights: Mat<'_, T>,
    labels: &[i64],
    num_true: usize,
    inputs: Mat<'_, T>,
    opts: &Options<'_, T>,
) -> Result<Vec<T>> {
    let p = Problem::new(weights, labels, num_true, inputs, opts, None)?;
    threads::install(|| p.run(None, false))?.map(|r| r.loss)
}

/// The per-row loss and the gradients of `Σ_i grad_loss[i] · loss[i]` (`grad_loss` None: all ones).
pub fn full_softmax_loss_and_grad<T: Float>(
    weights: Mat<'_, T>,
    labels: &[i64],
    num_true: usize,
    inputs: Mat<'_, T>,
    opts: &Options<'_, T>,
    grad_loss: Option<&[T]>,
) -> Result<FullGrad<T>> {
    let p = Problem::new(weights, labels, num_true, inputs, opts, grad_loss)?;
    threads::install(|| p.run(grad_loss, true))?
}

/// The rows of a block that keeps its logits under `max_logits_bytes`, or `None` when the logits are
/// recomputed (exposed for tests and benchmarks).
pub fn kept_rows<T>(batch: usize, num_classes: usize, dim: usize, max_logits_bytes: usize) -> Option<usize> {
    let ng = groups(num_classes).len() as u128;
    let per_row = (num_classes as u128 + ng * dim as u128) * std::mem::size_of::<T>() as u128;
    let fit = (max_logits_bytes as u128 / per_row.max(1)) as usize / TR * TR;
    let whole = batch.div_ceil(TR) * TR;
    let rows = fit.min(whole);
    (rows > 0 && (rows >= KEEP_MIN_ROWS || rows == whole)).then_some(rows)
}

/// The groups of classes, (first class, number of classes): whole TC chunks, a function of V alone.
fn groups(v: usize) -> Vec<(usize, usize)> {
    let ng = v.div_ceil(GROUP_MIN_COLS).clamp(1, MAX_GROUPS);
    let width = v.div_ceil(ng).div_ceil(TC).max(1) * TC;
    (0..v).step_by(width).map(|c0| (c0, width.min(v - c0))).collect()
}

crate::simd::dispatch! {
    /// Whether every element is finite (no branch per element: a NaN or an infinity makes `x · 0` NaN).
    fn all_finite<T>(x: &[T]) -> bool {
        let mut acc = [T::ZERO; LANES];
        let mut c = x.chunks_exact(LANES);
        for v in &mut c {
            for l in 0..LANES {
                acc[l] += v[l] * T::ZERO;
            }
        }
        let mut tail = T::ZERO;
        for &v in c.remainder() {
            tail += v * T::ZERO;
        }
        tile::fold(acc) + tail == T::ZERO
    }
}

crate::simd::dispatch! {
    /// `z ← a · e^(z − lse) + off`: a row of logits turned into its part of G.
    fn grad_exp<T>(z: &mut [T], lse: T, a: T, off: T) {
        for v in z.iter_mut() {
            *v = a * (*v - lse).exp_fast() + off;
        }
    }
}

fn check_finite<T: Float>(x: &[T], arg: &'static str) -> Result<()> {
    // The fast kernel over large pieces first; the position only when something is wrong.
    if x.chunks(1 << 16).all(all_finite) {
        return Ok(());
    }
    let p = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(Error::value(arg, format!("must be finite, found {:?} at flat index {p}", x[p])))
}

/// One row's loss terms and weight in G.
#[derive(Clone, Copy, Default)]
struct RowCoef<T> {
    lse: T,
    /// w_i (0 for an ignored row): G_ic = a (p_ic − ε/V) − a (1 − ε) n_ic / k.
    a: T,
}

/// A validated call.
struct Problem<'a, T> {
    w: &'a [T],
    x: &'a [T],
    bias: Option<&'a [T]>,
    labels: &'a [i64],
    k: usize,
    b: usize,
    v: usize,
    d: usize,
    ignore: Option<i64>,
    eps: T,
    budget: usize,
    groups: Vec<(usize, usize)>,
}

impl<'a, T: Float> Problem<'a, T> {
    fn new(
        weights: Mat<'a, T>,
        labels: &'a [i64],
        k: usize,
        inputs: Mat<'a, T>,
        o: &Options<'a, T>,
        grad_loss: Option<&[T]>,
    ) -> Result<Self> {
        for (arg, m) in [("weights", weights), ("inputs", inputs)] {
            let strided = (m.col_stride != 1 && m.cols > 1) || (m.row_stride != m.cols && m.rows > 1);
            if strided {
                return Err(Error::shape(arg, "must be a C-contiguous [rows, dim] array"));
            }
            if m.rows > MAX_DIM || m.cols > MAX_DIM {
                return Err(Error::too_large(arg, format!("shape [{}, {}]", m.rows, m.cols)));
            }
            if m.rows.checked_mul(m.cols) != Some(m.data.len()) {
                return Err(Error::shape(
                    arg,
                    format!("holds {} elements, not {}×{}", m.data.len(), m.rows, m.cols),
                ));
            }
        }
        let (v, d) = (weights.rows, weights.cols);
        let b = inputs.rows;
        if v == 0 || d == 0 {
            return Err(Error::value("weights", format!("must be a non-empty [V, d] array, got [{v}, {d}]")));
        }
        if b == 0 {
            return Err(Error::value("inputs", "must have at least one row"));
        }
        if inputs.cols != d {
            return Err(Error::shape(
                "inputs",
                format!("must have {d} columns like weights, got shape [{b}, {}]", inputs.cols),
            ));
        }
        if k == 0 || b.checked_mul(k) != Some(labels.len()) {
            return Err(Error::shape(
                "labels",
                format!(
                    "must hold {b}×num_true labels (num_true ≥ 1), got {} for num_true {k}",
                    labels.len()
                ),
            ));
        }
        let eps = o.label_smoothing;
        if !(0.0..=1.0).contains(&eps) {
            return Err(Error::value("label_smoothing", format!("must be in [0, 1], got {eps}")));
        }
        if let Some(bias) = o.biases {
            if bias.len() != v {
                return Err(Error::shape(
                    "biases",
                    format!("must have length {v} (one per class), got {}", bias.len()),
                ));
            }
        }
        if let Some(g) = grad_loss {
            if g.len() != b {
                return Err(Error::shape(
                    "grad_loss",
                    format!("must have length {b} (one per row), got {}", g.len()),
                ));
            }
            check_finite(g, "grad_loss")?;
        }
        for row in labels.chunks_exact(k) {
            let ignored = o.ignore_index.is_some_and(|ig| row.iter().all(|&y| y == ig));
            if ignored {
                continue;
            }
            for &y in row {
                if y < 0 || y as u64 >= v as u64 {
                    if o.ignore_index == Some(y) {
                        return Err(Error::value(
                            "labels",
                            "a row mixes ignore_index with real labels (a row is ignored when all its labels are)",
                        ));
                    }
                    return Err(Error::IdOutOfRange { arg: "labels", id: y, range_max: v as u64 });
                }
            }
        }
        check_finite(inputs.data, "inputs")?;
        check_finite(weights.data, "weights")?;
        if let Some(bias) = o.biases {
            check_finite(bias, "biases")?;
        }
        Ok(Problem {
            w: weights.data,
            x: inputs.data,
            bias: o.biases,
            labels,
            k,
            b,
            v,
            d,
            ignore: o.ignore_index,
            eps: T::from_f64(eps),
            budget: o.max_logits_bytes,
            groups: groups(v),
        })
    }

    fn ignored(&self, i: usize) -> bool {
        self.ignore.is_some_and(|ig| self.labels[i * self.k..(i + 1) * self.k].iter().all(|&y| y == ig))
    }

    fn overflow(&self) -> Error {
        Error::value(
            "inputs",
            format!("the logits or the loss overflow {}: inputs, weights or biases too large", T::NAME),
        )
    }

    /// The logits of rows i0..i0+ni, classes c0..c0+nc, into `out` (ni×nc, row-major).
    fn logits(&self, i0: usize, ni: usize, c0: usize, nc: usize, out: &mut [T]) {
        let d = self.d;
        matmul(
            T::ONE,
            Mat::new(&self.x[i0 * d..(i0 + ni) * d], ni, d),
            Op::N,
            Mat::new(&self.w[c0 * d..(c0 + nc) * d], nc, d),
            Op::T,
            T::ZERO,
            MatMut::new(&mut out[..ni * nc], ni, nc),
        );
        if let Some(bias) = self.bias {
            let bc = &bias[c0..c0 + nc];
            for row in out[..ni * nc].chunks_exact_mut(nc) {
                tile::axpy(T::ONE, bc, row);
            }
        }
    }

    /// The whole call.
    fn run(&self, grad_loss: Option<&[T]>, grad: bool) -> Result<FullGrad<T>> {
        let (b, v, d, k) = (self.b, self.v, self.d, self.k);
        let ng = self.groups.len();
        let keep = if grad { kept_rows::<T>(b, v, d, self.budget) } else { None };
        let rows = keep.unwrap_or_else(|| {
            // Without kept logits the groups' partial ∂x (ng × rows × d) is the largest work buffer: at most
            // PARTS_BYTES unless a block of TR rows needs more (the row-block size changes no number).
            let per_row = if grad { ng * d * std::mem::size_of::<T>() } else { 0 };
            let cap = (PARTS_BYTES / per_row.max(1)) / TR * TR;
            BLOCK_ROWS.min(b.div_ceil(TR) * TR).min(cap.max(TR))
        });
        // The smoothing term: Σ_c z_ic = x_i · Σ_c W_c + Σ_c b_c (classes in order).
        let (wsum, bsum) = if self.eps != T::ZERO {
            let mut s = vec![T::ZERO; d];
            for wr in self.w.chunks_exact(d) {
                tile::axpy(T::ONE, wr, &mut s);
            }
            let bs = self.bias.map_or(T::ZERO, |bias| bias.iter().fold(T::ZERO, |a, &c| a + c));
            (s, bs)
        } else {
            (Vec::new(), T::ZERO)
        };
        let kf = T::from_f64(k as f64);
        let eps_v = self.eps / T::from_f64(v as f64);
        let mut loss = vec![T::ZERO; b];
        let mut gx = if grad { buf::zeroed("inputs", b * d)? } else { Vec::new() };
        let (mut gw, mut gb) = if grad {
            buf::ensure_memory("weights", (v as u128) * (d as u128) * std::mem::size_of::<T>() as u128)?;
            (buf::zeroed("weights", v * d)?, self.bias.map(|_| vec![T::ZERO; v]))
        } else {
            (Vec::new(), None)
        };
        let cache = &T::caches().logits;
        let mut store = match keep {
            Some(r) => Some(cache.take("inputs", r * v)?),
            None => None,
        };
        let mut parts = if grad { vec![T::ZERO; ng * rows * d] } else { Vec::new() };
        let mut pieces = vec![Lse::<T>::EMPTY; ng * rows];
        let mut coef = vec![RowCoef::<T>::default(); rows];
        let mut result = Ok(());
        for r0 in (0..b).step_by(rows) {
            let nr = rows.min(b - r0);
            // 1. Forward: each group's piece of every row's log-sum-exp.
            {
                let mut st_parts: Vec<Option<&mut [T]>> = match store.as_deref_mut() {
                    Some(s) => {
                        split_groups(&mut s[..nr * v], &self.groups, nr).into_iter().map(Some).collect()
                    }
                    None => (0..ng).map(|_| None).collect(),
                };
                pieces
                    .par_chunks_mut(rows)
                    .zip(st_parts.par_iter_mut())
                    .zip(self.groups.par_iter())
                    .for_each(|((out, st), &(c0, gwid))| {
                        self.forward_group(r0, nr, c0, gwid, st.as_deref_mut(), &mut out[..nr])
                    });
            }
            for r in 0..nr {
                let i = r0 + r;
                let l = (0..ng).fold(Lse::EMPTY, |acc, g| acc.merge(pieces[g * rows + r])).value();
                if !l.is_finite() {
                    result = Err(self.overflow());
                    break;
                }
                if self.ignored(i) {
                    coef[r] = RowCoef { lse: l, a: T::ZERO };
                    continue;
                }
                let xi = &self.x[i * d..(i + 1) * d];
                let mut zl = T::ZERO;
                for &y in &self.labels[i * k..(i + 1) * k] {
                    let y = y as usize;
                    zl += tile::dot(xi, &self.w[y * d..(y + 1) * d])
                        + self.bias.map_or(T::ZERO, |bias| bias[y]);
                }
                let mut li = l - (T::ONE - self.eps) * (zl / kf);
                if self.eps != T::ZERO {
                    li -= eps_v * (tile::dot(xi, &wsum) + bsum);
                }
                if !li.is_finite() {
                    result = Err(self.overflow());
                    break;
                }
                // p ≤ 1 and the target's entropy is ≥ 0: only rounding takes the loss below 0.
                loss[i] = li.max(T::ZERO);
                coef[r] = RowCoef { lse: l, a: grad_loss.map_or(T::ONE, |g| g[i]) };
            }
            if result.is_err() {
                break;
            }
            if !grad {
                continue;
            }
            // 2. Backward: G tile by tile, ∂W and ∂b of each group's classes, each group's partial ∂x.
            {
                let mut st_parts: Vec<Option<&mut [T]>> = match store.as_deref_mut() {
                    Some(s) => {
                        split_groups(&mut s[..nr * v], &self.groups, nr).into_iter().map(Some).collect()
                    }
                    None => (0..ng).map(|_| None).collect(),
                };
                let gw_parts = split_groups(&mut gw, &self.groups, d);
                let mut gb_parts: Vec<Option<&mut [T]>> = match gb.as_deref_mut() {
                    Some(s) => split_groups(s, &self.groups, 1).into_iter().map(Some).collect(),
                    None => (0..ng).map(|_| None).collect(),
                };
                let coef = &coef[..nr];
                parts
                    .par_chunks_mut(rows * d)
                    .zip(st_parts.par_iter_mut())
                    .zip(gw_parts.into_par_iter())
                    .zip(gb_parts.par_iter_mut())
                    .zip(self.groups.par_iter())
                    .for_each(|((((part, st), gwg), gbg), &(c0, gwid))| {
                        let job = BackJob { r0, nr, c0, width: gwid, coef, eps_v, kf };
                        self.backward_group(
                            &job,
                            st.as_deref_mut(),
                            gwg,
                            gbg.as_deref_mut(),
                            &mut part[..nr * d],
                        )
                    });
            }
            // The groups' partial ∂x, summed in group order.
            let parts = &parts;
            gx[r0 * d..(r0 + nr) * d].par_chunks_mut(TR * d).enumerate().for_each(|(t, out)| {
                let off = t * TR * d;
                for g in 0..ng {
                    let src = &parts[g * rows * d + off..g * rows * d + off + out.len()];
                    if g == 0 {
                        out.copy_from_slice(src);
                    } else {
                        tile::axpy(T::ONE, src, out);
                    }
                }
            });
        }
        cache.give(store, self.budget);
        result?;
        Ok(FullGrad { loss, grad_inputs: gx, grad_weights: gw, grad_biases: gb })
    }

    /// One group's forward pass over a row block: each tile of logits (into the kept block or a scratch
    /// tile) and each row's online log-sum-exp over the group's chunks, in order.
    fn forward_group(
        &self,
        r0: usize,
        nr: usize,
        c0: usize,
        width: usize,
        mut st: Option<&mut [T]>,
        out: &mut [Lse<T>],
    ) {
        let mut scratch = if st.is_some() { Vec::new() } else { vec![T::ZERO; TR * TC] };
        out.fill(Lse::EMPTY);
        for cc in (c0..c0 + width).step_by(TC) {
            let nc = TC.min(c0 + width - cc);
            for t0 in (0..nr).step_by(TR) {
                let nt = TR.min(nr - t0);
                let tile = match st.as_deref_mut() {
                    Some(s) => &mut s[nr * (cc - c0) + t0 * nc..nr * (cc - c0) + (t0 + nt) * nc],
                    None => &mut scratch[..nt * nc],
                };
                self.logits(r0 + t0, nt, cc, nc, tile);
                for (r, row) in tile.chunks_exact(nc).enumerate() {
                    out[t0 + r] = out[t0 + r].merge(Lse::of(row));
                }
            }
        }
    }

    /// One group's backward pass over a row block: each tile (kept, or recomputed) turned into G, then
    /// `∂W[group] += Gᵀ x`, `∂b[group] += Σ rows of G` and the group's partial `∂x = Σ_chunks G W[chunk]`.
    fn backward_group(
        &self,
        j: &BackJob<'_, T>,
        mut st: Option<&mut [T]>,
        gw: &mut [T],
        mut gb: Option<&mut [T]>,
        part: &mut [T],
    ) {
        let (d, k) = (self.d, self.k);
        let (r0, nr, c0) = (j.r0, j.nr, j.c0);
        let mut scratch = if st.is_some() { Vec::new() } else { vec![T::ZERO; TR * TC] };
        let lab_w = (T::ONE - self.eps) / j.kf;
        for cc in (c0..c0 + j.width).step_by(TC) {
            let nc = TC.min(c0 + j.width - cc);
            for t0 in (0..nr).step_by(TR) {
                let nt = TR.min(nr - t0);
                let tile: &mut [T] = match st.as_deref_mut() {
                    Some(s) => &mut s[nr * (cc - c0) + t0 * nc..nr * (cc - c0) + (t0 + nt) * nc],
                    None => {
                        self.logits(r0 + t0, nt, cc, nc, &mut scratch);
                        &mut scratch[..nt * nc]
                    }
                };
                for (r, row) in tile.chunks_exact_mut(nc).enumerate() {
                    let c = j.coef[t0 + r];
                    if c.a == T::ZERO {
                        row.fill(T::ZERO);
                        continue;
                    }
                    grad_exp(row, c.lse, c.a, -(c.a * j.eps_v));
                    let i = r0 + t0 + r;
                    for &y in &self.labels[i * k..(i + 1) * k] {
                        let y = y as usize;
                        if (cc..cc + nc).contains(&y) {
                            row[y - cc] -= c.a * lab_w;
                        }
                    }
                }
                let g = Mat::new(&tile[..], nt, nc);
                let xs = Mat::new(&self.x[(r0 + t0) * d..(r0 + t0 + nt) * d], nt, d);
                let gwc = &mut gw[(cc - c0) * d..(cc - c0 + nc) * d];
                matmul(T::ONE, g, Op::T, xs, Op::N, T::ONE, MatMut::new(gwc, nc, d));
                if let Some(gbg) = gb.as_deref_mut() {
                    let gbc = &mut gbg[cc - c0..cc - c0 + nc];
                    for row in tile.chunks_exact(nc) {
                        tile::axpy(T::ONE, row, gbc);
                    }
                }
                let beta = if cc == c0 { T::ZERO } else { T::ONE };
                let wc = Mat::new(&self.w[cc * d..(cc + nc) * d], nc, d);
                matmul(
                    T::ONE,
                    g,
                    Op::N,
                    wc,
                    Op::N,
                    beta,
                    MatMut::new(&mut part[t0 * d..(t0 + nt) * d], nt, d),
                );
            }
        }
    }
}

/// What a group's backward task needs besides its outputs.
struct BackJob<'c, T> {
    r0: usize,
    nr: usize,
    c0: usize,
    width: usize,
    coef: &'c [RowCoef<T>],
    eps_v: T,
    kf: T,
}

/// `s` cut into one piece per group, `per` elements per class (groups are contiguous and in order).
fn split_groups<'s, T>(mut s: &'s mut [T], groups: &[(usize, usize)], per: usize) -> Vec<&'s mut [T]> {
    let mut out = Vec::with_capacity(groups.len());
    for &(_, w) in groups {
        let (a, rest) = std::mem::take(&mut s).split_at_mut(w * per);
        out.push(a);
        s = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// The whole formula with the B×V matrices, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        w: &[f64],
        bias: Option<&[f64]>,
        labels: &[i64],
        k: usize,
        x: &[f64],
        b: usize,
        v: usize,
        d: usize,
        ignore: Option<i64>,
        eps: f64,
        gl: &[f64],
    ) -> FullGrad<f64> {
        let mut loss = vec![0.0; b];
        let mut gx = vec![0.0; b * d];
        let mut gw = vec![0.0; v * d];
        let mut gb = vec![0.0; v];
        for i in 0..b {
            let row = &labels[i * k..(i + 1) * k];
            if ignore.is_some_and(|ig| row.iter().all(|&y| y == ig)) {
                continue;
            }
            let z: Vec<f64> = (0..v)
                .map(|c| {
                    (0..d).map(|p| x[i * d + p] * w[c * d + p]).sum::<f64>() + bias.map_or(0.0, |bb| bb[c])
                })
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|t| (t - m).exp()).sum::<f64>().ln();
            let mut t = vec![eps / v as f64; v];
            for &y in row {
                t[y as usize] += (1.0 - eps) / k as f64;
            }
            loss[i] = -(0..v).map(|c| t[c] * (z[c] - lse)).sum::<f64>();
            for c in 0..v {
                let g = gl[i] * ((z[c] - lse).exp() - t[c]);
                gb[c] += g;
                for p in 0..d {
                    gx[i * d + p] += g * w[c * d + p];
                    gw[c * d + p] += g * x[i * d + p];
                }
            }
        }
        FullGrad { loss, grad_inputs: gx, grad_weights: gw, grad_biases: bias.map(|_| gb) }
    }

    fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn matches_the_reference_with_every_option_on_both_paths() {
        // Partial tiles on both axes, several groups, more than one row block on the kept path.
        let (b, v, d) = (TR + 45, 2 * GROUP_MIN_COLS + 300, 11);
        let w = data(v * d, 1);
        let x: Vec<f64> = data(b * d, 2).iter().map(|t| t * 3.0).collect();
        let bias = data(v, 3);
        let gl: Vec<f64> = data(b, 4).iter().map(|t| t + 0.5).collect();
        for k in [1usize, 3] {
            let mut labels: Vec<i64> = (0..b * k).map(|i| ((i * 7919) % v) as i64).collect();
            for i in (0..b).step_by(5) {
                labels[i * k..(i + 1) * k].fill(-100);
            }
            for with_bias in [false, true] {
                for eps in [0.0, 0.2] {
                    let bias_o = with_bias.then_some(&bias[..]);
                    let r = reference(&w, bias_o, &labels, k, &x, b, v, d, Some(-100), eps, &gl);
                    for budget in [0, 40 * TR * v * 8, DEFAULT_MAX_LOGITS_BYTES] {
                        let o = Options {
                            biases: bias_o,
                            ignore_index: Some(-100),
                            label_smoothing: eps,
                            max_logits_bytes: budget,
                        };
                        let what = format!("k={k} bias={with_bias} eps={eps} budget={budget}");
                        let (wm, xm) = (Mat::new(&w, v, d), Mat::new(&x, b, d));
                        let g = full_softmax_loss_and_grad(wm, &labels, k, xm, &o, Some(&gl)).unwrap();
                        close(&g.loss, &r.loss, 1e-10, &format!("loss {what}"));
                        close(&g.grad_inputs, &r.grad_inputs, 1e-10, &format!("gx {what}"));
                        close(&g.grad_weights, &r.grad_weights, 1e-10, &format!("gw {what}"));
                        assert_eq!(g.grad_biases.is_some(), with_bias);
                        if let (Some(a), Some(bb)) = (&g.grad_biases, &r.grad_biases) {
                            close(a, bb, 1e-10, &format!("gb {what}"));
                        }
                        let l = full_softmax_loss(wm, &labels, k, xm, &o).unwrap();
                        assert_eq!(l, g.loss, "{what}: loss alone");
                    }
                }
            }
        }
    }

    #[test]
    fn kept_and_recomputed_logits_and_thread_counts_give_identical_results() {
        let (b, v, d) = (3 * TR + 7, 3 * GROUP_MIN_COLS + 17, 24);
        let f = |s: Vec<f64>| s.into_iter().map(|t| t as f32).collect::<Vec<f32>>();
        let w = f(data(v * d, 11));
        let x = f(data(b * d, 12));
        let bias = f(data(v, 13));
        let labels: Vec<i64> = (0..b).map(|i| ((i * 31) % v) as i64).collect();
        let run = |budget: usize| {
            let o = Options {
                biases: Some(&bias[..]),
                label_smoothing: 0.1,
                max_logits_bytes: budget,
                ..Options::default()
            };
            full_softmax_loss_and_grad(Mat::new(&w, v, d), &labels, 1, Mat::new(&x, b, d), &o, None).unwrap()
        };
        assert!(kept_rows::<f32>(b, v, d, DEFAULT_MAX_LOGITS_BYTES) == Some(4 * TR));
        assert!(kept_rows::<f32>(b, v, d, 0).is_none());
        let kept = run(DEFAULT_MAX_LOGITS_BYTES);
        // Two row blocks of 2·TR rows, kept (KEEP_MIN_ROWS allows it).
        let two_blocks = (2 * TR) * (v + groups(v).len() * d) * 4;
        assert_eq!(kept_rows::<f32>(b, v, d, two_blocks), Some(2 * TR));
        assert_eq!(run(two_blocks), kept);
        assert_eq!(run(0), kept);
        let before = threads::num_threads();
        threads::set_num_threads(1).unwrap();
        let one = run(0);
        threads::set_num_threads(3).unwrap();
        let three = run(DEFAULT_MAX_LOGITS_BYTES);
        threads::set_num_threads(before).unwrap();
        assert_eq!(one, kept);
        assert_eq!(three, kept);
    }

    #[test]
    fn groups_cover_the_classes_in_whole_chunks() {
        for v in [1, 255, 256, 257, 2048, 5000, 100_000, 10_000_000] {
            let g = groups(v);
            assert!(g.len() <= MAX_GROUPS);
            let mut next = 0;
            for &(c0, w) in &g {
                assert_eq!(c0, next);
                assert!(w > 0 && (w % TC == 0 || c0 + w == v));
                next = c0 + w;
            }
            assert_eq!(next, v);
        }
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let w = vec![0.5f64; 12]; // V = 4, d = 3
        let x = vec![0.25f64; 6]; // B = 2
        let o = Options::<f64>::default();
        fn m(s: &[f64], r: usize, c: usize) -> Mat<'_, f64> {
            Mat::new(s, r, c)
        }
        let arg = |r: Result<Vec<f64>>| r.unwrap_err().arg();
        assert_eq!(arg(full_softmax_loss(m(&w, 4, 3), &[0, 4], 1, m(&x, 2, 3), &o)), "labels");
        assert_eq!(arg(full_softmax_loss(m(&w, 4, 3), &[0, -1], 1, m(&x, 2, 3), &o)), "labels");
        assert_eq!(arg(full_softmax_loss(m(&w, 4, 3), &[0], 1, m(&x, 2, 3), &o)), "labels");
        assert_eq!(arg(full_softmax_loss(m(&w, 4, 3), &[0, 1], 1, m(&x, 3, 2), &o)), "inputs");
        assert_eq!(arg(full_softmax_loss(m(&w, 0, 3), &[0, 1], 1, m(&x, 2, 3), &o)), "weights");
        let ig = Options { ignore_index: Some(-1), ..o };
        assert!(full_softmax_loss(m(&w, 4, 3), &[0, -1], 1, m(&x, 2, 3), &ig).is_ok());
        assert_eq!(arg(full_softmax_loss(m(&w, 4, 3), &[0, -1, 1, 1], 2, m(&x, 2, 3), &ig)), "labels");
        for eps in [-0.1, 1.5, f64::NAN] {
            let oe = Options { label_smoothing: eps, ..o };
            assert_eq!(arg(full_softmax_loss(m(&w, 4, 3), &[0, 1], 1, m(&x, 2, 3), &oe)), "label_smoothing");
        }
        let short = [0.0f64; 3];
        let ob = Options { biases: Some(&short[..]), ..o };
        assert_eq!(arg(full_softmax_loss(m(&w, 4, 3), &[0, 1], 1, m(&x, 2, 3), &ob)), "biases");
        let mut xn = x.clone();
        xn[4] = f64::NAN;
        assert_eq!(arg(full_softmax_loss(m(&w, 4, 3), &[0, 1], 1, m(&xn, 2, 3), &o)), "inputs");
        let mut wn = w.clone();
        wn[11] = f64::INFINITY;
        assert_eq!(arg(full_softmax_loss(m(&wn, 4, 3), &[0, 1], 1, m(&x, 2, 3), &o)), "weights");
        let big = vec![1e200f64; 12];
        assert_eq!(arg(full_softmax_loss(m(&big, 4, 3), &[0, 1], 1, m(&big[..6], 2, 3), &o)), "inputs");
        let r = full_softmax_loss_and_grad(m(&w, 4, 3), &[0, 1], 1, m(&x, 2, 3), &o, Some(&short[..1]));
        assert_eq!(r.unwrap_err().arg(), "grad_loss");
        // An ignored row has zero loss and gradient.
        let g = full_softmax_loss_and_grad(m(&w, 4, 3), &[-1, -1], 1, m(&x, 2, 3), &ig, None).unwrap();
        assert!(g.loss.iter().chain(&g.grad_inputs).chain(&g.grad_weights).all(|&t| t == 0.0));
    }
}
