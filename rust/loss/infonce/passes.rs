//! The forward and backward passes of an InfoNCE call over blocks of TI rows and TJ columns, each block
//! owned by one task and summed in a fixed order: logits kept between the passes or recomputed, the online
//! log-sum-exp, G, and the three (or five, six) products.

use super::kernels::{
    col_lse_update, focal, grad_row, grad_row_sym, row_lse_update, row_lse_update_exp, scale_row,
};
use super::problem::Problem;
use super::{InfoNceGrad, TI, TJ};
use crate::error::Result;
use crate::float::Float;
use crate::loss::tile::{matmul, Mat, MatMut, Op};
use rayon::prelude::*;

/// One row's loss and weights in G.
struct Coef<T> {
    loss: T,
    /// a_i: grad_loss times the focal factor c(p_ii), halved for `symmetric`.
    a: T,
    /// aᶜ_i, the same for the key→query direction (`symmetric`).
    a_col: T,
    /// G[i, i], computed directly as −a_i u_i (− aᶜ_i uᶜ_i) rather than a_i p_ii − a_i.
    g_diag: T,
}

/// The per-row state of one block of rows, and the outputs it owns.
struct RowJob<'x, T> {
    i0: usize,
    /// log-sum-exp of each row over its unmasked columns.
    lse: &'x mut [T],
    /// z[i, i], the target logit.
    diag: &'x mut [T],
    loss: &'x mut [T],
    a: &'x mut [T],
    g_diag: &'x mut [T],
    /// ∂q of the block's rows (empty without gradients).
    gq: &'x mut [T],
    /// The block's kept logits, tile after tile (TI×TJ each, row-major), when the logits are kept.
    store: Option<&'x mut [T]>,
    /// With `Some`, the forward pass leaves e^(z − M) in the store instead of z, where M is the row's running
    /// maximum after each column chunk, recorded here (row-major, one per row and chunk): the backward pass
    /// then scales instead of exponentiating again. Only without `symmetric`, whose column direction needs z.
    shifts: Option<Vec<T>>,
}

impl<T> RowJob<'_, T> {
    fn rows(&self) -> usize {
        self.lse.len()
    }
}

impl<'a, T: Float> Problem<'a, T> {
    /// The whole call: loss, and with `grad` the gradients, keeping the logits (`keep`) or not.
    pub(super) fn run(
        &self,
        keep: bool,
        budget: usize,
        grad_loss: Option<&[T]>,
        grad: bool,
    ) -> Result<InfoNceGrad<T>> {
        // The kept logits' block, reused from call to call (`Float::caches().logits`, one block of at most
        // `budget` bytes): a training loop calls with the same sizes again and again, and a fresh block of
        // tens of MiB costs a page fault per 4 KiB on first touch (a fifth of the whole call at B = 4096).
        let cache = &T::caches().logits;
        let mut store = if keep { Some(cache.take("query", self.b * self.w)?) } else { None };
        let r = self.run_with(store.as_deref_mut(), grad_loss, grad);
        cache.give(store, budget);
        r
    }

    fn run_with(
        &self,
        store: Option<&mut [T]>,
        grad_loss: Option<&[T]>,
        grad: bool,
    ) -> Result<InfoNceGrad<T>> {
        let (b, d, w) = (self.b, self.d, self.w);
        let zeros = |n: usize| vec![T::ZERO; n];
        let (mut lse, mut diag, mut loss) = (zeros(b), zeros(b), zeros(b));
        let (mut a, mut g_diag) = (zeros(b), zeros(b));
        let mut gq = zeros(if grad { b * d } else { 0 });
        let gq_rows = if grad { TI * d } else { 0 };
        let mut stores =
            store.map(|s| s.chunks_mut(TI * w).map(Some).collect::<Vec<_>>()).unwrap_or_default();
        let mut gq_chunks = gq.chunks_mut(gq_rows.max(1));
        let mut jobs: Vec<RowJob<'_, T>> = lse
            .chunks_mut(TI)
            .zip(diag.chunks_mut(TI))
            .zip(loss.chunks_mut(TI))
            .zip(a.chunks_mut(TI).zip(g_diag.chunks_mut(TI)))
            .enumerate()
            .map(|(blk, (((lse, diag), loss), (a, g_diag)))| RowJob {
                i0: blk * TI,
                lse,
                diag,
                loss,
                a,
                g_diag,
                gq: if grad { gq_chunks.next().unwrap_or_default() } else { Default::default() },
                store: stores.get_mut(blk).and_then(Option::take),
                shifts: None,
            })
            .collect();
        let w_of = |i: usize| grad_loss.map_or(T::ONE, |g| g[i]);
        let finite = |j: &RowJob<'_, T>| j.lse.iter().chain(j.diag.iter()).all(|v| v.is_finite());
        let mut lse_col = Vec::new();
        let mut a_col = Vec::new();
        if !self.sym {
            // Every row's weights are known once its own log-sum-exp is: each block of rows goes logits →
            // statistics → G → ∂q in one task, while its tiles are in cache.
            let nblocks = self.col_blocks().count();
            let ok = jobs
                .par_iter_mut()
                .map(|j| {
                    if grad && j.store.is_some() {
                        j.shifts = Some(vec![T::ZERO; j.rows() * nblocks]);
                    }
                    self.forward_rows(j);
                    if !finite(j) {
                        return false;
                    }
                    for r in 0..j.rows() {
                        let c = self.coef(j.diag[r], j.lse[r], T::ZERO, w_of(j.i0 + r));
                        (j.loss[r], j.a[r], j.g_diag[r]) = (c.loss, c.a, c.g_diag);
                    }
                    // The loss itself can still overflow (z_ii − lse beyond the range: huge log-q).
                    if !j.loss.iter().chain(j.a.iter()).all(|v| v.is_finite()) {
                        return false;
                    }
                    if grad {
                        self.backward_rows(j, None);
                    }
                    true
                })
                .reduce(|| true, |x, y| x && y);
            if !ok {
                return Err(self.overflow());
            }
        } else {
            jobs.par_iter_mut().for_each(|j| self.forward_rows(j));
            if !jobs.iter().all(finite) {
                return Err(self.overflow());
            }
            // The key→query direction needs every row of a column first.
            lse_col = zeros(b);
            {
                let kept: Vec<Option<&[T]>> = jobs.iter().map(|j| j.store.as_deref()).collect();
                lse_col
                    .par_chunks_mut(TJ)
                    .enumerate()
                    .for_each(|(blk, out)| self.cols_lse(blk * TJ, out, &kept));
            }
            if lse_col.iter().any(|v| !v.is_finite()) {
                return Err(self.overflow());
            }
            a_col = zeros(b);
            for j in jobs.iter_mut() {
                for r in 0..j.rows() {
                    let i = j.i0 + r;
                    let c = self.coef(j.diag[r], j.lse[r], lse_col[i], w_of(i));
                    (j.loss[r], j.a[r], j.g_diag[r], a_col[i]) = (c.loss, c.a, c.g_diag, c.a_col);
                }
            }
            let finite_coef = |j: &RowJob<'_, T>| j.loss.iter().chain(j.a.iter()).all(|v| v.is_finite());
            if !jobs.iter().all(finite_coef) || !a_col.iter().all(|v| v.is_finite()) {
                return Err(self.overflow());
            }
            if grad {
                let cols = Some((&lse_col[..], &a_col[..]));
                jobs.par_iter_mut().for_each(|j| self.backward_rows(j, cols));
            }
        }
        let kept: Vec<Option<&[T]>> = jobs.iter().map(|j| j.store.as_deref()).collect();
        let (mut gk, mut gn) = (Vec::new(), Vec::new());
        if grad {
            // The row statistics, now complete, for the column pass.
            let rows = RowStats {
                lse: &jobs.iter().flat_map(|j| j.lse.iter().copied()).collect::<Vec<_>>(),
                a: &jobs.iter().flat_map(|j| j.a.iter().copied()).collect::<Vec<_>>(),
                g_diag: &jobs.iter().flat_map(|j| j.g_diag.iter().copied()).collect::<Vec<_>>(),
            };
            let cols = self.sym.then_some((&lse_col[..], &a_col[..]));
            (gk, gn) = (zeros(b * d), zeros(self.nn * d));
            col_jobs(&mut gk, &mut gn, b, d)
                .into_par_iter()
                .for_each(|(c0, out)| self.backward_cols(c0, out, &rows, cols, &kept));
        }
        drop(kept);
        drop(jobs);
        Ok(InfoNceGrad { loss, grad_query: gq, grad_keys: gk, grad_negatives: Some(gn) })
    }

    /// The forward pass over one block of rows: each tile of logits (kept, or in a scratch tile), the rows'
    /// online log-sum-exp one column chunk at a time, and the target logits.
    fn forward_rows(&self, j: &mut RowJob<'_, T>) {
        let (i0, ni, b) = (j.i0, j.rows(), self.b);
        let mut scratch = if j.store.is_some() { Vec::new() } else { vec![T::ZERO; TI * TJ] };
        let mut m = [T::NEG_INFINITY; TI];
        let mut s = [T::ZERO; TI];
        let nblocks = self.col_blocks().count();
        for (cb, (c0, nc)) in self.col_blocks().enumerate() {
            let tile = match j.store.as_deref_mut() {
                Some(st) => &mut st[ni * c0..ni * (c0 + nc)],
                None => &mut scratch[..ni * nc],
            };
            self.logits(i0, ni, c0, nc, tile, nc);
            for r in 0..ni {
                let row = &mut tile[r * nc..(r + 1) * nc];
                let i = i0 + r;
                if c0 < b && (c0..c0 + nc).contains(&i) {
                    j.diag[r] = row[i - c0];
                }
                match j.shifts.as_deref_mut() {
                    Some(sh) => sh[r * nblocks + cb] = row_lse_update_exp(row, &mut m[r], &mut s[r]),
                    None => row_lse_update(row, &mut m[r], &mut s[r]),
                }
            }
        }
        for r in 0..ni {
            j.lse[r] = m[r] + s[r].ln();
        }
    }

    /// The log-sum-exp down key columns c0.. (`symmetric`), over row chunks of TI, from the kept tiles of
    /// each row block (`kept[block]`) or recomputed.
    fn cols_lse(&self, c0: usize, out: &mut [T], kept: &[Option<&[T]>]) {
        let (b, nc) = (self.b, out.len());
        let mut cm = [T::NEG_INFINITY; TJ];
        let mut cs = [T::ZERO; TJ];
        let mut scratch = Vec::new();
        for (blk, i0) in (0..b).step_by(TI).enumerate() {
            let ni = TI.min(b - i0);
            let tile: &[T] = match kept.get(blk).copied().flatten() {
                Some(st) => &st[ni * c0..ni * (c0 + nc)],
                None => {
                    scratch.resize(TI * TJ, T::ZERO);
                    self.logits(i0, ni, c0, nc, &mut scratch, nc);
                    &scratch[..ni * nc]
                }
            };
            col_lse_update(tile, ni, nc, nc, &mut cm[..nc], &mut cs[..nc]);
        }
        for c in 0..nc {
            out[c] = cm[c] + cs[c].ln();
        }
    }

    /// Row i's loss and weights in G, from its target logit, log-sum-exps and `grad_loss` weight.
    fn coef(&self, diag: T, lse: T, lse_col: T, w: T) -> Coef<T> {
        let (f, c, u) = focal(diag - lse, self.gamma);
        if self.sym {
            let half = T::from_f64(0.5);
            let (fc, cc, uc) = focal(diag - lse_col, self.gamma);
            let (a, a_col) = (half * w * c, half * w * cc);
            Coef { loss: half * (f + fc), a, a_col, g_diag: -(a * u) - a_col * uc }
        } else {
            let a = w * c;
            Coef { loss: f, a, a_col: T::ZERO, g_diag: -(a * u) }
        }
    }

    /// Turn the logit tile of rows i0..i0+ni, columns c0..c0+nc (ni×nc, row-major) into G, in place.
    /// `rows` holds the rows' (lse, a, g_diag) from row i0 on; `cols` the per-column (lse, a) of `symmetric`.
    #[allow(clippy::too_many_arguments)]
    fn grad_tile(
        &self,
        rows: (&[T], &[T], &[T]),
        cols: Option<(&[T], &[T])>,
        i0: usize,
        ni: usize,
        c0: usize,
        nc: usize,
        z: &mut [T],
    ) {
        let (lse, a, g_diag) = rows;
        let is_key = c0 < self.b;
        for r in 0..ni {
            let i = i0 + r;
            let row = &mut z[r * nc..(r + 1) * nc];
            match cols {
                Some((lc, ac)) if is_key => {
                    grad_row_sym(row, lse[r], a[r], &lc[c0..c0 + nc], &ac[c0..c0 + nc])
                }
                _ => grad_row(row, lse[r], a[r]),
            }
            if is_key && (c0..c0 + nc).contains(&i) {
                row[i - c0] = g_diag[r];
            }
        }
    }

    /// ∂q of one block of rows: each tile of G (kept logits turned into G in place, or recomputed) times the
    /// tile's keys or negatives, accumulated in column order.
    fn backward_rows(&self, j: &mut RowJob<'_, T>, cols: Option<(&[T], &[T])>) {
        let (i0, ni, d) = (j.i0, j.rows(), self.d);
        let rows = (&j.lse[..], &j.a[..], &j.g_diag[..]);
        let mut scratch = if j.store.is_some() { Vec::new() } else { vec![T::ZERO; TI * TJ] };
        let nblocks = self.col_blocks().count();
        for (t, (c0, nc)) in self.col_blocks().enumerate() {
            let tile = match j.store.as_deref_mut() {
                Some(st) => &mut st[ni * c0..ni * (c0 + nc)],
                None => {
                    self.logits(i0, ni, c0, nc, &mut scratch, nc);
                    &mut scratch[..ni * nc]
                }
            };
            match j.shifts.as_deref() {
                // The tile holds e^(z − M): G = a e^(z − lse) = (a e^(M − lse)) e^(z − M).
                Some(sh) => {
                    for r in 0..ni {
                        let f = rows.1[r] * Float::exp_fast(sh[r * nblocks + t] - rows.0[r]);
                        let row = &mut tile[r * nc..(r + 1) * nc];
                        scale_row(row, f);
                        let i = i0 + r;
                        if c0 < self.b && (c0..c0 + nc).contains(&i) {
                            row[i - c0] = rows.2[r];
                        }
                    }
                }
                None => self.grad_tile(rows, cols, i0, ni, c0, nc, tile),
            }
            let beta = if t == 0 { T::ZERO } else { T::ONE };
            let g = Mat::new(&tile[..], ni, nc);
            matmul(self.scale, g, Op::N, self.cols(c0, nc), Op::N, beta, MatMut::new(j.gq, ni, d));
        }
    }

    /// ∂k or ∂n of one block of columns (starting at c0 in the B+N row): Gᵀ q over the row blocks, from the
    /// kept G or recomputed.
    fn backward_cols(
        &self,
        c0: usize,
        out: &mut [T],
        rows: &RowStats<'_, T>,
        cols: Option<(&[T], &[T])>,
        kept: &[Option<&[T]>],
    ) {
        let (b, d) = (self.b, self.d);
        let nc = out.len() / d;
        let mut scratch = Vec::new();
        for (blk, i0) in (0..b).step_by(TI).enumerate() {
            let ni = TI.min(b - i0);
            let g: &[T] = match kept.get(blk).copied().flatten() {
                Some(st) => &st[ni * c0..ni * (c0 + nc)],
                None => {
                    scratch.resize(TI * TJ, T::ZERO);
                    let r = i0..i0 + ni;
                    let stats = (&rows.lse[r.clone()], &rows.a[r.clone()], &rows.g_diag[r]);
                    self.logits(i0, ni, c0, nc, &mut scratch, nc);
                    self.grad_tile(stats, cols, i0, ni, c0, nc, &mut scratch[..ni * nc]);
                    &scratch[..ni * nc]
                }
            };
            let beta = if i0 == 0 { T::ZERO } else { T::ONE };
            matmul(
                self.scale,
                Mat::new(g, ni, nc),
                Op::T,
                self.rows(i0, ni),
                Op::N,
                beta,
                MatMut::new(out, nc, d),
            );
        }
    }
}

/// The per-row statistics of the whole batch, for the column pass.
struct RowStats<'s, T> {
    lse: &'s [T],
    a: &'s [T],
    g_diag: &'s [T],
}

/// The outputs of the column-block tasks: (first column in the B+N row, rows of ∂k or ∂n it owns).
fn col_jobs<'g, T>(gk: &'g mut [T], gn: &'g mut [T], b: usize, d: usize) -> Vec<(usize, &'g mut [T])> {
    gk.chunks_mut(TJ * d)
        .enumerate()
        .map(|(j, c)| (j * TJ, c))
        .chain(gn.chunks_mut(TJ * d).enumerate().map(|(j, c)| (b + j * TJ, c)))
        .collect()
}
