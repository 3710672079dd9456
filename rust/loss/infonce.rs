//! InfoNCE (CPC / SimCLR / CLIP / two-tower retrieval) with in-batch and extra negatives, fused and tiled.
//!
//! # The loss
//! Queries `q` [B, d], keys `k` [B, d], optional extra negatives `n` [N, d], temperature `T`. Row i has
//! `W = B + N` logits
//!
//! ```text
//! z[i, j]     = q_i·k_j / T − key_log_q[j]          (j < B)
//! z[i, B + m] = q_i·n_m / T − negative_log_q[m]
//! ```
//!
//! and target column i. A column is *masked* (probability exactly zero) when it is an accidental hit: key
//! column `j ≠ i` with `key_ids[j] == key_ids[i]`, negative column `m` with `negative_ids[m] == key_ids[i]`.
//! With `p = softmax` over the unmasked columns and focal exponent γ, the row loss is
//! `f(p_ii) = −(1 − p_ii)^γ · log p_ii` (γ = 0: plain cross-entropy).
//!
//! `symmetric` (CLIP) adds the key→query direction: key i's logits are column i of the B×B key block,
//! `z[·, i]`, corrections and masks included, target row i. Since `key_log_q[i]` is the same for the whole
//! column it cancels in that softmax, and the masks are symmetric (`key_ids[j] == key_ids[i]`), so the
//! direction is "key i against all queries, skipping queries whose own key has key i's id". The extra
//! negatives take no part in it. The loss of row i is then `(f(p_ii) + f(pᶜ_ii)) / 2`.
//!
//! # Gradients
//! With `grad_loss` w_i, `∂L/∂z[i, j] = a_i (p_ij − δ_ij)` where `a_i = w_i · c(p_ii)` and
//! `c(p) = −p f'(p) = u^γ + γ p (−log p) u^(γ−1)`, `u = 1 − p`. The symmetric direction adds
//! `aᶜ_j (pᶜ_ij − δ_ij)` to the key block. Call that matrix G; then
//! `∂q = G [k; n] / T`, `∂k = G_kᵀ q / T`, `∂n = G_nᵀ q / T`.
//!
//! # Memory and the two paths
//! Nothing of size B×W exists unless it fits the caller's budget (`max_logits_bytes`). Work is split into
//! blocks of TI rows (forward pass, ∂q) and of TJ columns (column statistics, ∂k, ∂n), each owned by one
//! task and summed in a fixed order, so results do not depend on the thread count.
//! - *Kept* (B·W elements fit): the forward pass writes each TI×TJ tile of logits into one B×W block, tile
//!   after tile (so every later product reads a contiguous, cache-sized tile); the backward pass turns the
//!   tiles into G in place. Three matrix products in all. Without `symmetric` the forward pass leaves
//!   e^(z − M) in the tiles (M: the row's running maximum) and the backward pass only rescales them. The
//!   block is handed to the next call (see `take_spare`): a training loop repeats the same sizes.
//! - *Recomputed* (above the budget): the forward pass keeps only the per-row log-sum-exp (and per-column for
//!   `symmetric`); the backward pass recomputes each tile from it (as flash attention does), once for ∂q
//!   (over row blocks) and once for ∂k, ∂n (over column blocks), so that every output still has one writer.
//!   Five products (six with `symmetric`), memory O((B + N)·d) plus a tile per thread.
//!
//! Both paths compute every logit tile with the same product call and the same online log-sum-exp over the
//! same column chunks, so the losses agree bit for bit; so do the gradients with `symmetric`, and without it
//! they agree to rounding (e^(z − M)·e^(M − lse) against e^(z − lse)).

use super::tile::fold;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::loss::tile::{matmul, Mat, MatMut, Op};
use crate::threads;
use rayon::prelude::*;
use std::sync::{MutexGuard, TryLockError};

/// Rows of a logit tile (and of a parallel task over rows).
const TI: usize = 256;
/// Columns of a logit tile (and of a parallel task over columns); the online log-sum-exp of a row advances
/// one such chunk at a time.
const TJ: usize = 256;

/// The default budget for keeping the B×(B+N) logits between the passes: 256 MiB
/// (B = 8192 in float32 without extra negatives).
pub const DEFAULT_MAX_LOGITS_BYTES: usize = 256 << 20;

/// The largest batch or number of negatives accepted (far beyond what fits in memory as embeddings).
const MAX_ROWS: usize = 1 << 40;

/// The float types the kernel runs in: [`Float`] itself (it carries the vectorising `exp_fast`); this name
/// is kept for the binding.
pub use crate::float::Float as Kernel;

/// A row-major matrix handed in by the caller: `rows × cols` elements, contiguous.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
}

impl<'a, T> Matrix<'a, T> {
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Matrix { data, rows, cols }
    }
}

/// Everything but the embeddings (API.md §4); [`Options::default`] gives the documented defaults.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a, T> {
    pub temperature: f64,
    /// log of each key's sampling probability, `[B]`, subtracted from its logit.
    pub key_log_q: Option<&'a [T]>,
    /// log of each extra negative's sampling probability, `[N]`.
    pub negative_log_q: Option<&'a [T]>,
    /// Id of each row's positive, `[B]`: other columns with the same id are masked.
    pub key_ids: Option<&'a [i64]>,
    /// Id of each extra negative, `[N]`: masked in row i when equal to `key_ids[i]`.
    pub negative_ids: Option<&'a [i64]>,
    pub symmetric: bool,
    pub focal_gamma: f64,
    /// Keep the B×(B+N) logits between the passes when they take at most this many bytes.
    pub max_logits_bytes: usize,
}

impl<T> Default for Options<'_, T> {
    fn default() -> Self {
        Options {
            temperature: 0.1,
            key_log_q: None,
            negative_log_q: None,
            key_ids: None,
            negative_ids: None,
            symmetric: false,
            focal_gamma: 0.0,
            max_logits_bytes: DEFAULT_MAX_LOGITS_BYTES,
        }
    }
}

/// Loss and gradients, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct InfoNceGrad<T> {
    /// `[B]`
    pub loss: Vec<T>,
    /// `[B, d]`
    pub grad_query: Vec<T>,
    /// `[B, d]`
    pub grad_keys: Vec<T>,
    /// `[N, d]`; `None` when no negatives were given.
    pub grad_negatives: Option<Vec<T>>,
}

/// The per-row loss, `[B]`.
pub fn info_nce_loss<T: Kernel>(
    query: Matrix<'_, T>,
    keys: Matrix<'_, T>,
    negatives: Option<Matrix<'_, T>>,
    opts: &Options<'_, T>,
) -> Result<Vec<T>> {
    let p = Problem::new(query, keys, negatives, opts, None)?;
    // Without gradients the logits are kept only when that saves a product (the column pass of `symmetric`).
    let keep = p.sym && p.fits(opts.max_logits_bytes);
    let budget = opts.max_logits_bytes;
    threads::install(|| p.run(keep, budget, None, false))?.map(|r| r.loss)
}

/// The per-row loss and the gradients of `Σ_i grad_loss[i] · loss[i]` (`grad_loss` None: all ones).
pub fn info_nce_loss_and_grad<T: Kernel>(
    query: Matrix<'_, T>,
    keys: Matrix<'_, T>,
    negatives: Option<Matrix<'_, T>>,
    opts: &Options<'_, T>,
    grad_loss: Option<&[T]>,
) -> Result<InfoNceGrad<T>> {
    let p = Problem::new(query, keys, negatives, opts, grad_loss)?;
    let keep = p.fits(opts.max_logits_bytes);
    let budget = opts.max_logits_bytes;
    let mut r = threads::install(|| p.run(keep, budget, grad_loss, true))??;
    if !p.has_neg {
        r.grad_negatives = None;
    }
    Ok(r)
}

/// Whether a call with these sizes keeps its logits between the passes (exposed for tests and benchmarks).
pub fn keeps_logits<T>(batch: usize, num_negatives: usize, max_logits_bytes: usize) -> bool {
    batch
        .checked_mul(batch.saturating_add(num_negatives))
        .and_then(|e| e.checked_mul(std::mem::size_of::<T>()))
        .is_some_and(|bytes| bytes <= max_logits_bytes)
}

/// The spare block, unless another call holds it right now. Never waits: a process forked while another
/// thread held the lock would otherwise wait forever in the child.
fn lock_spare<T: Kernel>() -> Option<MutexGuard<'static, Vec<T>>> {
    match T::spare_block().try_lock() {
        Ok(g) => Some(g),
        // The guarded value is a plain buffer that a panic cannot leave half-updated: take it regardless.
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// A block of `n` elements for the kept logits. A training loop calls with the same sizes again and again,
/// and a fresh block of tens of MiB costs a page fault per 4 KiB on first touch (a fifth of the whole call
/// at B = 4096), so the block of the previous call is reused when it is large enough. Its contents are
/// stale: every element is written before it is read.
fn take_spare<T: Kernel>(n: usize) -> Vec<T> {
    let mut v = lock_spare::<T>().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default();
    if v.capacity() < n {
        v = Vec::new(); // free the old block before the new one is allocated
    }
    v.resize(n, T::ZERO);
    v
}

/// Keep `v` for the next call if it fits `budget` bytes; drop the spare block if it does not.
fn give_back<T: Kernel>(v: Option<Vec<T>>, budget: usize) {
    let Some(mut spare) = lock_spare::<T>() else {
        return;
    };
    let fits = |x: &Vec<T>| x.capacity().saturating_mul(std::mem::size_of::<T>()) <= budget;
    match v {
        Some(v) if fits(&v) && v.capacity() >= spare.capacity() => *spare = v,
        _ if !fits(&spare) => *spare = Vec::new(),
        _ => {}
    }
}

/// A validated call.
struct Problem<'a, T> {
    q: &'a [T],
    k: &'a [T],
    n: &'a [T],
    has_neg: bool,
    b: usize,
    nn: usize,
    d: usize,
    /// Columns of a logit row: B + N.
    w: usize,
    scale: T,
    kq: Option<&'a [T]>,
    nq: Option<&'a [T]>,
    kid: Option<&'a [i64]>,
    nid: Option<&'a [i64]>,
    sym: bool,
    gamma: T,
}

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

fn check_finite<T: Float>(x: &[T], arg: &'static str) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(p) => Err(Error::value(arg, format!("must be finite, found {:?} at flat index {p}", x[p]))),
    }
}

fn check_len<U>(x: &[U], want: usize, arg: &'static str, what: &str) -> Result<()> {
    if x.len() != want {
        return Err(Error::shape(arg, format!("must have length {want} ({what}), got {}", x.len())));
    }
    Ok(())
}

impl<'a, T: Kernel> Problem<'a, T> {
    fn new(
        query: Matrix<'a, T>,
        keys: Matrix<'a, T>,
        negatives: Option<Matrix<'a, T>>,
        o: &Options<'a, T>,
        grad_loss: Option<&[T]>,
    ) -> Result<Self> {
        let (b, d) = (query.rows, query.cols);
        if b == 0 || d == 0 {
            return Err(Error::value(
                "query",
                format!("must be a non-empty [batch, dim] array, got shape [{b}, {d}]"),
            ));
        }
        if b > MAX_ROWS || d > MAX_ROWS {
            return Err(Error::too_large("query", format!("shape [{b}, {d}]")));
        }
        let elems = b.checked_mul(d).ok_or_else(|| Error::too_large("query", "too many elements"))?;
        if query.data.len() != elems {
            return Err(Error::shape("query", format!("holds {} elements, not {b}×{d}", query.data.len())));
        }
        if keys.rows != b || keys.cols != d || keys.data.len() != elems {
            return Err(Error::shape(
                "keys",
                format!("must have the shape of query [{b}, {d}], got [{}, {}]", keys.rows, keys.cols),
            ));
        }
        let (n, nn) = match negatives {
            None => (&[][..], 0),
            Some(m) => {
                if m.cols != d {
                    return Err(Error::shape(
                        "negatives",
                        format!("must have {d} columns like query, got shape [{}, {}]", m.rows, m.cols),
                    ));
                }
                if m.rows > MAX_ROWS || m.rows.checked_mul(d) != Some(m.data.len()) {
                    return Err(Error::shape(
                        "negatives",
                        format!("holds {} elements, not {}×{d}", m.data.len(), m.rows),
                    ));
                }
                (m.data, m.rows)
            }
        };
        let has_neg = negatives.is_some();
        let w = b + nn;
        // Tiles index up to B·W elements when the logits are kept; make sure that count is representable.
        if b.checked_mul(w).and_then(|e| e.checked_mul(16)).is_none() {
            return Err(Error::too_large("negatives", format!("batch {b} with {nn} negatives")));
        }
        let t = o.temperature;
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::value("temperature", format!("must be finite and > 0, got {t}")));
        }
        let scale = T::from_f64(1.0 / t);
        if !scale.is_finite() || scale == T::ZERO {
            return Err(Error::value(
                "temperature",
                format!("1/temperature is not representable in {}: {t}", T::NAME),
            ));
        }
        let g = o.focal_gamma;
        if !(g.is_finite() && g >= 0.0) {
            return Err(Error::value("focal_gamma", format!("must be finite and >= 0, got {g}")));
        }
        if let Some(x) = o.key_log_q {
            check_len(x, b, "key_log_q", "one per key")?;
            check_finite(x, "key_log_q")?;
        }
        if let Some(x) = o.negative_log_q {
            if !has_neg {
                return Err(Error::value("negative_log_q", "given without negatives"));
            }
            check_len(x, nn, "negative_log_q", "one per negative")?;
            check_finite(x, "negative_log_q")?;
        }
        if let Some(x) = o.key_ids {
            check_len(x, b, "key_ids", "one per key")?;
        }
        if let Some(x) = o.negative_ids {
            if !has_neg {
                return Err(Error::value("negative_ids", "given without negatives"));
            }
            if o.key_ids.is_none() {
                return Err(Error::value(
                    "negative_ids",
                    "needs key_ids: a negative is masked where its id equals the row's key id",
                ));
            }
            check_len(x, nn, "negative_ids", "one per negative")?;
        }
        if let Some(x) = grad_loss {
            check_len(x, b, "grad_loss", "one per row")?;
            check_finite(x, "grad_loss")?;
        }
        check_finite(query.data, "query")?;
        check_finite(keys.data, "keys")?;
        check_finite(n, "negatives")?;
        Ok(Problem {
            q: query.data,
            k: keys.data,
            n,
            has_neg,
            b,
            nn,
            d,
            w,
            scale,
            kq: o.key_log_q,
            nq: o.negative_log_q,
            kid: o.key_ids,
            nid: o.negative_ids,
            sym: o.symmetric,
            gamma: T::from_f64(g),
        })
    }

    fn fits(&self, budget: usize) -> bool {
        keeps_logits::<T>(self.b, self.nn, budget)
    }

    /// The column blocks of a logit row, (first column, width): keys in TJ chunks, then negatives.
    fn col_blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let keys = (0..self.b).step_by(TJ).map(|c| (c, TJ.min(self.b - c)));
        let negs = (0..self.nn).step_by(TJ).map(|m| (self.b + m, TJ.min(self.nn - m)));
        keys.chain(negs)
    }

    /// The embeddings behind columns c0..c0+nc (keys or negatives; blocks never straddle), as a view.
    fn cols(&self, c0: usize, nc: usize) -> Mat<'a, T> {
        let (x, r0) = if c0 < self.b { (self.k, c0) } else { (self.n, c0 - self.b) };
        Mat::new(&x[r0 * self.d..(r0 + nc) * self.d], nc, self.d)
    }

    fn rows(&self, i0: usize, ni: usize) -> Mat<'a, T> {
        Mat::new(&self.q[i0 * self.d..(i0 + ni) * self.d], ni, self.d)
    }

    /// The logits of rows i0..i0+ni, columns c0..c0+nc, written to `out` (ni×nc at `stride`):
    /// the scaled product, minus the log-q corrections, masked columns set to −∞.
    fn logits(&self, i0: usize, ni: usize, c0: usize, nc: usize, out: &mut [T], stride: usize) {
        matmul(
            self.scale,
            self.rows(i0, ni),
            Op::N,
            self.cols(c0, nc),
            Op::T,
            T::ZERO,
            MatMut { data: out, rows: ni, cols: nc, stride },
        );
        let is_key = c0 < self.b;
        let (corr, ids) = if is_key {
            (self.kq.map(|x| &x[c0..c0 + nc]), self.kid.map(|x| &x[c0..c0 + nc]))
        } else {
            let m0 = c0 - self.b;
            (self.nq.map(|x| &x[m0..m0 + nc]), self.nid.map(|x| &x[m0..m0 + nc]))
        };
        for r in 0..ni {
            let row = &mut out[r * stride..r * stride + nc];
            if let Some(corr) = corr {
                for (z, &c) in row.iter_mut().zip(corr) {
                    *z -= c;
                }
            }
            if let (Some(ids), Some(kid)) = (ids, self.kid) {
                let i = i0 + r;
                let id = kid[i];
                for (c, (z, &x)) in row.iter_mut().zip(ids).enumerate() {
                    if x == id && !(is_key && c0 + c == i) {
                        *z = T::NEG_INFINITY;
                    }
                }
            }
        }
    }

    fn overflow(&self) -> Error {
        Error::value(
            "query",
            format!(
                "the logits or the loss overflow {}: embeddings too large for temperature {}, or log-q \
                 corrections too large",
                T::NAME,
                1.0 / self.scale.to_f64()
            ),
        )
    }

    /// The whole call: loss, and with `grad` the gradients, keeping the logits (`keep`) or not.
    fn run(&self, keep: bool, budget: usize, grad_loss: Option<&[T]>, grad: bool) -> Result<InfoNceGrad<T>> {
        let mut store = keep.then(|| take_spare::<T>(self.b * self.w));
        let r = self.run_with(store.as_deref_mut(), grad_loss, grad);
        give_back(store, budget);
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

/// (f, c, u) for the target's log-probability `logp`: the focal loss `f = u^γ (−log p)`, the factor
/// `c = −p f'(p)` that scales the row's gradient, and `u = 1 − p`. γ = 0 gives exactly `−log p`, 1, u.
fn focal<T: Float>(logp: T, gamma: T) -> (T, T, T) {
    // Rounding can leave the target's logit a hair above the log-sum-exp: p is at most 1.
    let logp = logp.min(T::ZERO);
    let nll = -logp;
    let u = -logp.exp_m1();
    if gamma == T::ZERO {
        return (nll, T::ONE, u);
    }
    if u == T::ZERO {
        // p = 1: the loss and its derivative vanish (the limit of u^γ (1 + γ p (−log p) / u) u → 0).
        return (T::ZERO, T::ZERO, u);
    }
    let ug = u.powf(gamma);
    let p = T::ONE - u;
    (ug * nll, ug * (T::ONE + gamma * p * nll / u), u)
}

/// One step of a row's online log-sum-exp over the chunk `z` (−∞ = masked): running max `m`, and `s` the
/// sum of e^(z − m) so far.
#[inline]
fn row_lse_update<T: Kernel>(z: &[T], m: &mut T, s: &mut T) {
    let mc = max_of(z);
    if mc == T::NEG_INFINITY {
        return; // the whole chunk is masked
    }
    let mn = if mc > *m { mc } else { *m };
    // m = −∞ (nothing seen yet) scales the empty sum by e^(−∞) = 0.
    *s = *s * Float::exp_fast(*m - mn) + sum_exp(z, mn);
    *m = mn;
}

/// [`row_lse_update`] that also overwrites the chunk with e^(z − M), M the running maximum after it, and
/// returns M (−∞ and a zeroed chunk when everything so far is masked). Same sums, to the bit.
#[inline]
fn row_lse_update_exp<T: Kernel>(z: &mut [T], m: &mut T, s: &mut T) -> T {
    let mc = max_of(z);
    if mc == T::NEG_INFINITY {
        // Masked entries hold −∞; their probability is exactly 0 (and e^(M − lse) = e^(−∞) = 0 if M is).
        z.fill(T::ZERO);
        return *m;
    }
    let mn = if mc > *m { mc } else { *m };
    *s = *s * Float::exp_fast(*m - mn) + sum_exp_write(z, mn);
    *m = mn;
    mn
}

/// Accumulators of the hand-split reductions. The compiler keeps float sums in program order, so a plain
/// loop would add one element at a time; LANES independent sums vectorise, and their fixed combination order
/// keeps the result independent of the vector width the CPU offers.
const LANES: usize = 16;

#[inline(always)]
fn max_body<T: Kernel>(z: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let mut it = z.chunks_exact(LANES);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = T::NEG_INFINITY;
    for &x in it.remainder().iter().chain(acc.iter()) {
        m = if x > m { x } else { m };
    }
    m
}

#[inline(always)]
fn sum_exp_body<T: Kernel>(z: &[T], m: T) -> T {
    // Exponentials of a block into a buffer first (a plain map loop, which vectorises well), then add the
    // buffer into the lanes; the buffer's unused tail stays zero and adds nothing.
    const BLOCK: usize = 4 * LANES;
    let mut acc = [T::ZERO; LANES];
    for c in z.chunks(BLOCK) {
        let mut buf = [T::ZERO; BLOCK];
        for (e, &x) in buf.iter_mut().zip(c) {
            *e = Float::exp_fast(x - m);
        }
        for g in buf.chunks_exact(LANES) {
            for (a, &e) in acc.iter_mut().zip(g) {
                *a += e;
            }
        }
    }
    fold(acc)
}

/// [`sum_exp_body`] that also leaves each e^(z − m) in place of z: the same operations in the same order.
#[inline(always)]
fn sum_exp_write_body<T: Kernel>(z: &mut [T], m: T) -> T {
    const BLOCK: usize = 4 * LANES;
    let mut acc = [T::ZERO; LANES];
    for c in z.chunks_mut(BLOCK) {
        let mut buf = [T::ZERO; BLOCK];
        for (e, &x) in buf.iter_mut().zip(c.iter()) {
            *e = Float::exp_fast(x - m);
        }
        for g in buf.chunks_exact(LANES) {
            for (a, &e) in acc.iter_mut().zip(g) {
                *a += e;
            }
        }
        let n = c.len();
        c.copy_from_slice(&buf[..n]);
    }
    fold(acc)
}

#[inline(always)]
fn scale_body<T: Kernel>(z: &mut [T], f: T) {
    for x in z.iter_mut() {
        *x *= f;
    }
}

#[inline(always)]
fn grad_row_body<T: Kernel>(z: &mut [T], lse: T, a: T) {
    for x in z.iter_mut() {
        *x = a * Float::exp_fast(*x - lse);
    }
}

#[inline(always)]
fn grad_row_sym_body<T: Kernel>(z: &mut [T], lse: T, a: T, lse_col: &[T], a_col: &[T]) {
    for ((x, &lc), &ac) in z.iter_mut().zip(lse_col).zip(a_col) {
        let v = *x;
        *x = a * Float::exp_fast(v - lse) + ac * Float::exp_fast(v - lc);
    }
}

/// One step of the online log-sum-exp of `nc` columns over the `ni` rows of the tile `z` (at `stride`):
/// running maxima `cm`, sums of e^(z − cm) `cs`.
#[inline(always)]
fn col_lse_body<T: Kernel>(z: &[T], ni: usize, nc: usize, stride: usize, cm: &mut [T], cs: &mut [T]) {
    let mut mx = [T::NEG_INFINITY; TJ];
    let mx = &mut mx[..nc];
    for r in 0..ni {
        for (a, &x) in mx.iter_mut().zip(&z[r * stride..r * stride + nc]) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut base = [T::ZERO; TJ];
    let base = &mut base[..nc];
    for c in 0..nc {
        let mn = if mx[c] > cm[c] { mx[c] } else { cm[c] };
        if mn != T::NEG_INFINITY {
            // cm = −∞ (nothing unmasked seen yet) scales the empty sum by e^(−∞) = 0.
            cs[c] *= Float::exp_fast(cm[c] - mn);
            cm[c] = mn;
            base[c] = mn;
        }
        // A column with nothing unmasked yet keeps base 0: its −∞ entries still give e^(−∞) = 0.
    }
    for r in 0..ni {
        let row = &z[r * stride..r * stride + nc];
        for ((s, &x), &m) in cs.iter_mut().zip(row).zip(base.iter()) {
            *s += Float::exp_fast(x - m);
        }
    }
}

crate::simd::dispatch! {
    /// The maximum of `z` (−∞ for an empty or fully masked slice).
    #[inline]
    fn max_of<T>(z: &[T]) -> T {
        max_body(z)
    }
}
crate::simd::dispatch! {
    /// Σ e^(z − m).
    #[inline]
    fn sum_exp<T>(z: &[T], m: T) -> T {
        sum_exp_body(z, m)
    }
}
crate::simd::dispatch! {
    /// Σ e^(z − m), leaving each e^(z − m) in z.
    #[inline]
    fn sum_exp_write<T>(z: &mut [T], m: T) -> T {
        sum_exp_write_body(z, m)
    }
}
crate::simd::dispatch! {
    /// z ← f z.
    #[inline]
    fn scale_row<T>(z: &mut [T], f: T) {
        scale_body(z, f)
    }
}
crate::simd::dispatch! {
    /// z ← a e^(z − lse).
    #[inline]
    fn grad_row<T>(z: &mut [T], lse: T, a: T) {
        grad_row_body(z, lse, a)
    }
}
crate::simd::dispatch! {
    /// z ← a e^(z − lse) + a_col e^(z − lse_col), column by column.
    #[inline]
    fn grad_row_sym<T>(z: &mut [T], lse: T, a: T, lse_col: &[T], a_col: &[T]) {
        grad_row_sym_body(z, lse, a, lse_col, a_col)
    }
}
crate::simd::dispatch! {
    #[inline]
    fn col_lse_update<T>(z: &[T], ni: usize, nc: usize, stride: usize, cm: &mut [T], cs: &mut [T]) {
        col_lse_body(z, ni, nc, stride, cm, cs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straightforward f64 reference of the whole formula, B×W matrices and all.
    struct Reference {
        loss: Vec<f64>,
        gq: Vec<f64>,
        gk: Vec<f64>,
        gn: Vec<f64>,
    }

    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f64],
        k: &[f64],
        n: &[f64],
        b: usize,
        nn: usize,
        d: usize,
        o: &Options<'_, f64>,
        gl: &[f64],
    ) -> Reference {
        let w = b + nn;
        let t = o.temperature;
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
        let mut z = vec![f64::NEG_INFINITY; b * w];
        for i in 0..b {
            for j in 0..w {
                let (x, corr, id) = if j < b {
                    (&k[j * d..(j + 1) * d], o.key_log_q.map_or(0.0, |v| v[j]), o.key_ids.map(|v| v[j]))
                } else {
                    let m = j - b;
                    (
                        &n[m * d..(m + 1) * d],
                        o.negative_log_q.map_or(0.0, |v| v[m]),
                        o.negative_ids.map(|v| v[m]),
                    )
                };
                let masked = j != i && o.key_ids.is_some() && id == o.key_ids.map(|v| v[i]);
                if !masked {
                    z[i * w + j] = dot(&q[i * d..(i + 1) * d], x) / t - corr;
                }
            }
        }
        let g = o.focal_gamma;
        // dL/dz for a softmax over `v` with target `tgt`, weight `wt`; returns (loss, grads).
        let soft = |v: &[f64], tgt: usize, wt: f64| -> (f64, Vec<f64>) {
            let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = v.iter().map(|x| (x - m).exp() / s).collect();
            let pt = p[tgt];
            let loss = -(1.0 - pt).powf(g) * pt.ln();
            let c =
                if g == 0.0 { 1.0 } else { (1.0 - pt).powf(g) - g * pt * (1.0 - pt).powf(g - 1.0) * pt.ln() };
            let grads = p
                .iter()
                .enumerate()
                .map(|(j, &pj)| wt * c * (pj - if j == tgt { 1.0 } else { 0.0 }))
                .collect();
            (loss, grads)
        };
        let half = if o.symmetric { 0.5 } else { 1.0 };
        let mut loss = vec![0.0; b];
        let mut gz = vec![0.0; b * w];
        for i in 0..b {
            let (l, gr) = soft(&z[i * w..(i + 1) * w], i, half * gl[i]);
            loss[i] = half * l;
            for j in 0..w {
                gz[i * w + j] += gr[j];
            }
        }
        if o.symmetric {
            for j in 0..b {
                let col: Vec<f64> = (0..b).map(|i| z[i * w + j]).collect();
                let (l, gr) = soft(&col, j, half * gl[j]);
                loss[j] += half * l;
                for i in 0..b {
                    gz[i * w + j] += gr[i];
                }
            }
        }
        let mut gq = vec![0.0; b * d];
        let mut gk = vec![0.0; b * d];
        let mut gn = vec![0.0; nn * d];
        for i in 0..b {
            for j in 0..w {
                let gij = gz[i * w + j] / t;
                if gij == 0.0 {
                    continue;
                }
                let (x, gx) = if j < b {
                    (&k[j * d..(j + 1) * d], &mut gk[j * d..(j + 1) * d])
                } else {
                    (&n[(j - b) * d..(j - b + 1) * d], &mut gn[(j - b) * d..(j - b + 1) * d])
                };
                for p in 0..d {
                    gq[i * d + p] += gij * x[p];
                    gx[p] += gij * q[i * d + p];
                }
            }
        }
        Reference { loss, gq, gk, gn }
    }

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

    fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn matches_the_reference_on_both_paths_with_every_option() {
        // Sizes that leave partial tiles on both axes.
        let (b, nn, d) = (TI + 37, TJ + 5, 19);
        let q = data(b * d, 1);
        let k = data(b * d, 2);
        let n = data(nn * d, 3);
        let kq: Vec<f64> = data(b, 4).iter().map(|x| x * 2.0 - 5.0).collect();
        let nq: Vec<f64> = data(nn, 5).iter().map(|x| x - 4.0).collect();
        let kid: Vec<i64> = (0..b as i64).map(|i| i % 50).collect();
        let nid: Vec<i64> = (0..nn as i64).map(|i| i % 70).collect();
        let gl: Vec<f64> = data(b, 6).iter().map(|x| x + 0.5).collect();
        for sym in [false, true] {
            for gamma in [0.0, 0.5, 2.0] {
                for with_neg in [false, true] {
                    for budget in [0, DEFAULT_MAX_LOGITS_BYTES] {
                        let o = Options {
                            temperature: 0.3,
                            key_log_q: Some(&kq[..]),
                            negative_log_q: if with_neg { Some(&nq[..]) } else { None },
                            key_ids: Some(&kid[..]),
                            negative_ids: if with_neg { Some(&nid[..]) } else { None },
                            symmetric: sym,
                            focal_gamma: gamma,
                            max_logits_bytes: budget,
                        };
                        let negs = with_neg.then(|| Matrix::new(&n[..], nn, d));
                        let r = reference(
                            &q,
                            &k,
                            if with_neg { &n } else { &[] },
                            b,
                            if with_neg { nn } else { 0 },
                            d,
                            &o,
                            &gl,
                        );
                        let got = info_nce_loss_and_grad(
                            Matrix::new(&q, b, d),
                            Matrix::new(&k, b, d),
                            negs,
                            &o,
                            Some(&gl),
                        )
                        .unwrap();
                        let what = format!("sym={sym} gamma={gamma} neg={with_neg} budget={budget}");
                        close(&got.loss, &r.loss, 1e-10, &format!("loss {what}"));
                        close(&got.grad_query, &r.gq, 1e-10, &format!("gq {what}"));
                        close(&got.grad_keys, &r.gk, 1e-10, &format!("gk {what}"));
                        if with_neg {
                            close(got.grad_negatives.as_ref().unwrap(), &r.gn, 1e-10, &format!("gn {what}"));
                        } else {
                            assert!(got.grad_negatives.is_none());
                        }
                        let loss =
                            info_nce_loss(Matrix::new(&q, b, d), Matrix::new(&k, b, d), negs, &o).unwrap();
                        assert_eq!(loss, got.loss, "{what}: loss alone");
                    }
                }
            }
        }
    }

    #[test]
    fn kept_and_recomputed_logits_agree_in_f32() {
        let (b, nn, d) = (300, 70, 32);
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let q = f(data(b * d, 11));
        let k = f(data(b * d, 12));
        let n = f(data(nn * d, 13));
        let kid: Vec<i64> = (0..b as i64).map(|i| i % 97).collect();
        for sym in [false, true] {
            let mk = |budget| Options {
                temperature: 0.05,
                key_ids: Some(&kid[..]),
                symmetric: sym,
                max_logits_bytes: budget,
                ..Options::default()
            };
            let run = |budget| {
                info_nce_loss_and_grad(
                    Matrix::new(&q, b, d),
                    Matrix::new(&k, b, d),
                    Some(Matrix::new(&n, nn, d)),
                    &mk(budget),
                    None,
                )
                .unwrap()
            };
            assert!(keeps_logits::<f32>(b, nn, DEFAULT_MAX_LOGITS_BYTES));
            let (kept, recomputed) = (run(DEFAULT_MAX_LOGITS_BYTES), run(0));
            assert_eq!(kept.loss, recomputed.loss);
            let c = |a: &[f32], b: &[f32]| {
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
                }
            };
            c(&kept.grad_query, &recomputed.grad_query);
            c(&kept.grad_keys, &recomputed.grad_keys);
            c(kept.grad_negatives.as_ref().unwrap(), recomputed.grad_negatives.as_ref().unwrap());
        }
    }

    #[test]
    fn thread_count_does_not_change_the_result() {
        let (b, d) = (2 * TI + 3, 16);
        let q: Vec<f32> = data(b * d, 21).into_iter().map(|x| x as f32).collect();
        let k: Vec<f32> = data(b * d, 22).into_iter().map(|x| x as f32).collect();
        let o = Options { symmetric: true, focal_gamma: 1.0, max_logits_bytes: 0, ..Options::default() };
        let run =
            || info_nce_loss_and_grad(Matrix::new(&q, b, d), Matrix::new(&k, b, d), None, &o, None).unwrap();
        let before = threads::num_threads();
        threads::set_num_threads(1).unwrap();
        let one = run();
        threads::set_num_threads(3).unwrap();
        let three = run();
        threads::set_num_threads(before).unwrap();
        assert_eq!(one, three);
    }

    #[test]
    fn a_row_with_every_negative_masked_has_zero_loss_and_gradient() {
        let (b, d) = (4, 3);
        let q = data(b * d, 31);
        let k = data(b * d, 32);
        let ids = [7i64, 7, 7, 7];
        let o = Options { key_ids: Some(&ids[..]), ..Options::default() };
        let g = info_nce_loss_and_grad(Matrix::new(&q, b, d), Matrix::new(&k, b, d), None, &o, None).unwrap();
        assert!(g.loss.iter().all(|&l| l == 0.0), "{:?}", g.loss);
        assert!(g.grad_query.iter().chain(&g.grad_keys).all(|&x| x == 0.0));
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let q = vec![0.5f64; 6];
        let k = vec![0.25f64; 6];
        fn m(x: &[f64], r: usize, c: usize) -> Matrix<'_, f64> {
            Matrix::new(x, r, c)
        }
        let arg = |r: Result<Vec<f64>>| r.unwrap_err().arg();
        let dflt = Options::<f64>::default();
        assert_eq!(arg(info_nce_loss(m(&q, 3, 2), m(&k, 2, 3), None, &dflt)), "keys");
        assert_eq!(arg(info_nce_loss(m(&[], 0, 2), m(&[], 0, 2), None, &dflt)), "query");
        assert_eq!(arg(info_nce_loss(m(&q, 3, 2), m(&k, 3, 2), Some(m(&k, 2, 3)), &dflt)), "negatives");
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let o = Options { temperature: t, ..dflt };
            assert_eq!(arg(info_nce_loss(m(&q, 3, 2), m(&k, 3, 2), None, &o)), "temperature");
        }
        let short = [0.0f64; 2];
        let o = Options { key_log_q: Some(&short[..]), ..dflt };
        assert_eq!(arg(info_nce_loss(m(&q, 3, 2), m(&k, 3, 2), None, &o)), "key_log_q");
        let o = Options { negative_log_q: Some(&short[..]), ..dflt };
        assert_eq!(arg(info_nce_loss(m(&q, 3, 2), m(&k, 3, 2), Some(m(&k, 3, 2)), &o)), "negative_log_q");
        let ids = [1i64, 2];
        let o = Options { key_ids: Some(&ids[..]), ..dflt };
        assert_eq!(arg(info_nce_loss(m(&q, 3, 2), m(&k, 3, 2), None, &o)), "key_ids");
        let ids3 = [1i64, 2, 3];
        let o = Options { key_ids: Some(&ids3[..]), negative_ids: Some(&ids[..]), ..dflt };
        assert_eq!(arg(info_nce_loss(m(&q, 3, 2), m(&k, 3, 2), Some(m(&k, 3, 2)), &o)), "negative_ids");
        let o = Options { focal_gamma: -1.0, ..dflt };
        assert_eq!(arg(info_nce_loss(m(&q, 3, 2), m(&k, 3, 2), None, &o)), "focal_gamma");
        let nan = [0.5, f64::NAN, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(arg(info_nce_loss(m(&nan, 3, 2), m(&k, 3, 2), None, &dflt)), "query");
        let big = [1e300f64; 6];
        let o = Options { temperature: 1e-10, ..dflt };
        assert_eq!(arg(info_nce_loss(m(&big, 3, 2), m(&big, 3, 2), None, &o)), "query");
        let r = info_nce_loss_and_grad(m(&q, 3, 2), m(&k, 3, 2), None, &dflt, Some(&short[..]));
        assert_eq!(r.unwrap_err().arg(), "grad_loss");
    }
}
