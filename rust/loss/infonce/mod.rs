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
//!   block is handed to the next call (`Float::caches().logits`): a training loop repeats the same sizes.
//! - *Recomputed* (above the budget): the forward pass keeps only the per-row log-sum-exp (and per-column for
//!   `symmetric`); the backward pass recomputes each tile from it (as flash attention does), once for ∂q
//!   (over row blocks) and once for ∂k, ∂n (over column blocks), so that every output still has one writer.
//!   Five products (six with `symmetric`), memory O((B + N)·d) plus a tile per thread.
//!
//! Both paths compute every logit tile with the same product call and the same online log-sum-exp over the
//! same column chunks, so the losses agree bit for bit; so do the gradients with `symmetric`, and without it
//! they agree to rounding (e^(z − M)·e^(M − lse) against e^(z − lse)).

//!
//! The files: `problem` (validation, the logit tiles), `passes` (the forward and backward passes over row
//! and column blocks), `kernels` (focal factor, online log-sum-exp and G, SIMD-dispatched).

mod hard;
mod kernels;
mod passes;
mod problem;

use crate::error::Result;
use crate::float::Float;
use crate::loss::tile::Mat;
use crate::threads;
use problem::Problem;

pub use hard::info_nce_hard;

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

/// Everything but the embeddings (docs/API.md: InfoNCE); [`Options::default`] gives the documented defaults.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a, T> {
    /// T: the logits are `q·k / T`.
    pub temperature: f64,
    /// log of each key's sampling probability, `[B]`, subtracted from its logit.
    pub key_log_q: Option<&'a [T]>,
    /// log of each extra negative's sampling probability, `[N]`.
    pub negative_log_q: Option<&'a [T]>,
    /// Id of each row's positive, `[B]`: other columns with the same id are masked.
    pub key_ids: Option<&'a [i64]>,
    /// Id of each extra negative, `[N]`: masked in row i when equal to `key_ids[i]`.
    pub negative_ids: Option<&'a [i64]>,
    /// Average the query→key loss with the key→query loss (CLIP).
    pub symmetric: bool,
    /// Focal loss's γ (0: the plain loss).
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
pub fn info_nce_loss<T: Float>(
    query: Mat<'_, T>,
    keys: Mat<'_, T>,
    negatives: Option<Mat<'_, T>>,
    opts: &Options<'_, T>,
) -> Result<Vec<T>> {
    let p = Problem::new(query, keys, negatives, opts, None)?;
    // Without gradients the logits are kept only when that saves a product (the column pass of `symmetric`).
    let keep = p.sym && p.fits(opts.max_logits_bytes);
    let budget = opts.max_logits_bytes;
    threads::install(|| p.run(keep, budget, None, false))?.map(|r| r.loss)
}

/// The per-row loss and the gradients of `Σ_i grad_loss[i] · loss[i]` (`grad_loss` None: all ones).
pub fn info_nce_loss_and_grad<T: Float>(
    query: Mat<'_, T>,
    keys: Mat<'_, T>,
    negatives: Option<Mat<'_, T>>,
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
                        let negs = with_neg.then(|| Mat::new(&n[..], nn, d));
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
                            Mat::new(&q, b, d),
                            Mat::new(&k, b, d),
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
                        let loss = info_nce_loss(Mat::new(&q, b, d), Mat::new(&k, b, d), negs, &o).unwrap();
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
                    Mat::new(&q, b, d),
                    Mat::new(&k, b, d),
                    Some(Mat::new(&n, nn, d)),
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
        let run = || info_nce_loss_and_grad(Mat::new(&q, b, d), Mat::new(&k, b, d), None, &o, None).unwrap();
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
        let g = info_nce_loss_and_grad(Mat::new(&q, b, d), Mat::new(&k, b, d), None, &o, None).unwrap();
        assert!(g.loss.iter().all(|&l| l == 0.0), "{:?}", g.loss);
        assert!(g.grad_query.iter().chain(&g.grad_keys).all(|&x| x == 0.0));
    }
}
