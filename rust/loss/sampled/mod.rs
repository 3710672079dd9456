//! Sampled softmax and NCE, fused, with gradients (docs/API.md: Sampled softmax and NCE): the public entry points, the memory
//! budgets, and the true logits both candidate layouts share.
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

mod args;
mod hard;
mod math;
mod per_row;
mod shared;
mod sparse;

pub use args::{Args, Kind, LossAndGrad, SparseGrad};
pub use hard::{hard_loss, hard_loss_and_grad};

use crate::buf::zeroed;
use crate::error::{Error, Result};
use crate::float::{Float, Stored};
use crate::loss::tile;
use crate::threads;
use args::{check, Dims};
use rayon::prelude::*;

/// The memory budgets of the shared-candidate path, passed down explicitly (in [`Dims`]) rather than fixed
/// by `#[cfg(test)]` constants: calls use [`Budgets::DEFAULT`]; unit tests that must cross several row
/// chunks and sub-tiles with small problems pass [`Budgets::TINY`] to [`loss_and_grad_in`], running the
/// same code as every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budgets {
    /// Bytes the kept logit block (plus the per-block pieces of dL/dx) may use; above it the batch is cut
    /// into row chunks that run one after the other.
    pub(crate) logit_bytes: usize,
    /// Bytes of a block's sub-tile of logits (kept in the per-core L2 cache while it is worked on).
    pub(crate) subtile_bytes: usize,
}

impl Budgets {
    /// What every call uses.
    pub(crate) const DEFAULT: Budgets = Budgets { logit_bytes: 256 << 20, subtile_bytes: 512 << 10 };
    /// Small enough that the unit tests' problems run through several row chunks and sub-tiles.
    #[cfg(test)]
    pub(crate) const TINY: Budgets = Budgets { logit_bytes: 64 << 10, subtile_bytes: 16 << 10 };
}

/// Width in bytes of a column block of candidates (512 float32 or 256 float64 columns).
const BLOCK_BYTES: usize = 2048;
/// How many rows ahead a gather prefetches.
const PREFETCH: usize = 8;
/// Rows per task in row-parallel passes.
const ROW_TASK: usize = 16;

/// The per-row loss.
pub fn loss<T: Float, W: Stored<T>>(a: &Args<'_, T, W>) -> Result<Vec<T>> {
    let dims = check(a, None, Budgets::DEFAULT)?;
    threads::install(|| run(a, &dims, None))?.map(|o| o.loss)
}

/// The per-row loss and the gradients of `Σ_b c_b · loss_b`, with `c = grad_loss` (all ones when `None`).
pub fn loss_and_grad<T: Float, W: Stored<T>>(
    a: &Args<'_, T, W>,
    grad_loss: Option<&[T]>,
) -> Result<LossAndGrad<T>> {
    loss_and_grad_in(a, grad_loss, Budgets::DEFAULT)
}

/// [`loss_and_grad`] within the given memory budgets.
pub(crate) fn loss_and_grad_in<T: Float, W: Stored<T>>(
    a: &Args<'_, T, W>,
    grad_loss: Option<&[T]>,
    budgets: Budgets,
) -> Result<LossAndGrad<T>> {
    let dims = check(a, grad_loss, budgets)?;
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

/// The bias of class `id` (0 without biases), checked finite.
#[inline]
fn bias_of<T: Float, W: Stored<T>>(biases: Option<&[W]>, id: i64) -> Result<T> {
    match biases {
        None => Ok(T::ZERO),
        Some(bs) => {
            let v = bs[id as usize].widen();
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

/// What a path returns: the loss, and the gradients when asked for.
struct Out<T> {
    loss: Vec<T>,
    grad: Option<LossAndGrad<T>>,
}

/// Both paths, after validation.
fn run<T: Float, W: Stored<T>>(a: &Args<'_, T, W>, dims: &Dims, c: Option<&[T]>) -> Result<Out<T>> {
    let zt = true_logits(a, dims)?;
    if a.per_row {
        per_row::per_row(a, dims, &zt, c)
    } else {
        shared::shared(a, dims, &zt, c)
    }
}

/// The true logits `[B, T]`: x_b·w_t + b_t − ln q_t.
fn true_logits<T: Float, W: Stored<T>>(a: &Args<'_, T, W>, dims: &Dims) -> Result<Vec<T>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::tile::Mat;

    /// A tiny deterministic problem.
    pub(super) struct P {
        pub(super) w: Vec<f64>,
        pub(super) bias: Vec<f64>,
        pub(super) x: Vec<f64>,
        pub(super) labels: Vec<i64>,
        pub(super) sampled: Vec<i64>,
        pub(super) te: Vec<f64>,
        pub(super) se: Vec<f64>,
        pub(super) v: usize,
        pub(super) d: usize,
        pub(super) nt: usize,
    }

    pub(super) fn problem(per_row: bool) -> P {
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

    pub(super) fn args<'a>(p: &'a P, kind: Kind, per_row: bool, gamma: f64) -> Args<'a, f64> {
        Args {
            kind,
            weights: Mat::contiguous(&p.w, p.v, p.d),
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
    pub(super) fn naive(a: &Args<'_, f64>) -> Vec<f64> {
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

    pub(super) fn close(a: f64, b: f64, tol: f64) -> bool {
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

    /// A half-precision table (bf16 and f16, contiguous and strided) gives bit for bit the results of the
    /// f32 table holding the same (widened) values: widening is exact and the compute path is the f32 one.
    #[test]
    fn half_precision_tables_match_their_f32_values_exactly() {
        use crate::float::{f32_to_bf16, f32_to_f16, Bf16, F16};
        for per_row in [false, true] {
            let p = problem(per_row);
            let (v, d) = (p.v, p.d);
            let wbf: Vec<Bf16> = p.w.iter().map(|&x| Bf16(f32_to_bf16(x as f32))).collect();
            let whf: Vec<F16> = p.w.iter().map(|&x| F16(f32_to_f16(x as f32))).collect();
            let bbf: Vec<Bf16> = p.bias.iter().map(|&x| Bf16(f32_to_bf16(x as f32))).collect();
            let bhf: Vec<F16> = p.bias.iter().map(|&x| F16(f32_to_f16(x as f32))).collect();
            let x: Vec<f32> = p.x.iter().map(|&v| v as f32).collect();
            let te: Vec<f32> = p.te.iter().map(|&v| v as f32).collect();
            let se: Vec<f32> = p.se.iter().map(|&v| v as f32).collect();
            // A strided view: the table transposed in memory ([d, V] buffer read with col_stride V).
            let transpose = |w: &[f32]| -> Vec<f32> { (0..d * v).map(|i| w[(i % v) * d + i / v]).collect() };
            for kind in [Kind::SampledSoftmax, Kind::Nce] {
                for gamma in [0.0, 1.5] {
                    let base = |w: Mat<'_, f32>, b: &'_ [f32]| {
                        let a: Args<'_, f32> = Args {
                            kind,
                            weights: w,
                            biases: Some(b),
                            labels: &p.labels,
                            num_true: p.nt,
                            inputs: &x,
                            sampled: &p.sampled,
                            per_row,
                            true_expected: &te,
                            sampled_expected: &se,
                            remove_accidental_hits: true,
                            subtract_log_q: true,
                            focal_gamma: gamma,
                        };
                        loss_and_grad(&a, Some(&[0.5, -1.0, 2.0, 1.5])).unwrap()
                    };
                    let wide_bf: Vec<f32> = wbf.iter().map(|h| crate::float::bf16_to_f32(h.0)).collect();
                    let wide_hf: Vec<f32> = whf.iter().map(|h| crate::float::f16_to_f32(h.0)).collect();
                    let bias_bf: Vec<f32> = bbf.iter().map(|h| crate::float::bf16_to_f32(h.0)).collect();
                    let bias_hf: Vec<f32> = bhf.iter().map(|h| crate::float::f16_to_f32(h.0)).collect();
                    let want_bf = base(Mat::contiguous(&wide_bf, v, d), &bias_bf);
                    let want_hf = base(Mat::contiguous(&wide_hf, v, d), &bias_hf);
                    macro_rules! half_args {
                        ($w:expr, $b:expr) => {
                            Args {
                                kind,
                                weights: $w,
                                biases: Some($b),
                                labels: &p.labels,
                                num_true: p.nt,
                                inputs: &x,
                                sampled: &p.sampled,
                                per_row,
                                true_expected: &te,
                                sampled_expected: &se,
                                remove_accidental_hits: true,
                                subtract_log_q: true,
                                focal_gamma: gamma,
                            }
                        };
                    }
                    let c = [0.5, -1.0, 2.0, 1.5];
                    let got =
                        loss_and_grad(&half_args!(Mat::contiguous(&wbf, v, d), &bbf), Some(&c)).unwrap();
                    assert_eq!(got, want_bf, "bf16 {kind:?} per_row={per_row} γ={gamma}");
                    let got =
                        loss_and_grad(&half_args!(Mat::contiguous(&whf, v, d), &bhf), Some(&c)).unwrap();
                    assert_eq!(got, want_hf, "f16 {kind:?} per_row={per_row} γ={gamma}");
                    assert_eq!(loss(&half_args!(Mat::contiguous(&wbf, v, d), &bbf)).unwrap(), want_bf.loss);
                    // Strided (column stride V): the same values read through another layout.
                    let tb: Vec<Bf16> = transpose(&wide_bf).iter().map(|&x| Bf16(f32_to_bf16(x))).collect();
                    let strided = Mat { data: &tb[..], rows: v, cols: d, row_stride: 1, col_stride: v };
                    let got = loss_and_grad(&half_args!(strided, &bbf), Some(&c)).unwrap();
                    assert_eq!(got, want_bf, "strided bf16 {kind:?} per_row={per_row}");
                }
            }
            // A non-finite half row or bias the call uses is reported like an f32 one.
            let mut bad = wbf.clone();
            bad[8 * d + 1] = Bf16(0x7f80);
            let hb = Args {
                kind: Kind::SampledSoftmax,
                weights: Mat::contiguous(&bad, v, d),
                biases: Some(&bbf[..]),
                labels: &p.labels,
                num_true: p.nt,
                inputs: &x,
                sampled: &p.sampled,
                per_row,
                true_expected: &te,
                sampled_expected: &se,
                remove_accidental_hits: true,
                subtract_log_q: true,
                focal_gamma: 0.0,
            };
            let used = p.sampled.contains(&8) || p.labels.contains(&8);
            assert_eq!(loss(&hb).is_err(), used);
            let mut nanb = bhf.clone();
            nanb[p.labels[0] as usize] = F16(0x7e00);
            let hf = half_args_f16(&hb, Mat::contiguous(&whf, v, d), &nanb);
            assert_eq!(loss(&hf).unwrap_err().arg(), "biases");
        }
    }

    /// `a` with an f16 table and biases.
    fn half_args_f16<'a>(
        a: &Args<'a, f32, crate::float::Bf16>,
        w: Mat<'a, crate::float::F16>,
        b: &'a [crate::float::F16],
    ) -> Args<'a, f32, crate::float::F16> {
        Args {
            kind: a.kind,
            weights: w,
            biases: Some(b),
            labels: a.labels,
            num_true: a.num_true,
            inputs: a.inputs,
            sampled: a.sampled,
            per_row: a.per_row,
            true_expected: a.true_expected,
            sampled_expected: a.sampled_expected,
            remove_accidental_hits: a.remove_accidental_hits,
            subtract_log_q: a.subtract_log_q,
            focal_gamma: a.focal_gamma,
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
        let dims = check(&a, None, Budgets::DEFAULT).unwrap();
        let zt = true_logits(&a, &dims).unwrap();
        let lse = out.loss[0] + 0.5 * (zt[0] + zt[1]); // loss = lse − Σ_t z_t / 2
        let want = (zt[1] - lse).exp() - 0.5;
        assert!(close(gb.values[u], want, 1e-12), "{} vs {want}", gb.values[u]);
    }
}
