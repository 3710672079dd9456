//! Sampled softmax with hard-negative mining (`num_hard_negatives`): each row keeps its true columns and the
//! `h` largest of its candidate logits (after the bias, the `− ln q` correction and the accidental-hit mask;
//! ties to the lower candidate position), and the softmax runs over those columns only:
//!
//! ```text
//! loss_b = Σ_t y (lse_b − z_t),   lse_b = ln(Σ_t e^z_t + Σ_{s∈H_b} e^z_s),   y = 1/num_true
//! ```
//!
//! (the focal variant as in [`super`]). The selection is piecewise constant, so dL/dz is zero outside the
//! kept columns: the candidates not in `H_b` act exactly like masked ones, and the row's math is the
//! per-row path's. Row by row: the row's candidate logits with a gemv (shared candidates are gathered once
//! for the call), a partial selection (`select_nth_unstable`, O(S)) of the `h` best, the softmax, and
//! dL/dx from the `h + num_true` kept rows only. The weight gradient has `h + num_true` entries per row.

use super::args::{Args, Dims, Kind, LossAndGrad};
use super::math::{combine, consts, piece, to_grad};
use super::sparse::sparse;
use super::{bias_of, check, first_err, not_finite_row, overflow, true_logits, Budgets};
use crate::buf::zeroed;
use crate::error::{Error, Result};
use crate::float::{Float, Stored};
use crate::loss::tile;
use crate::threads;
use rayon::prelude::*;

/// Rows per parallel task.
const ROW_TASK: usize = 4;

fn check_h<T, W>(a: &Args<'_, T, W>, dims: &Dims, h: usize) -> Result<()> {
    if a.kind != Kind::SampledSoftmax {
        return Err(Error::value("num_hard_negatives", "applies to the sampled softmax only (not NCE)"));
    }
    if h == 0 {
        return Err(Error::value("num_hard_negatives", "must be >= 1 (None turns hard-negative mining off)"));
    }
    if h > dims.s {
        return Err(Error::value(
            "num_hard_negatives",
            format!("{h} is larger than the number of sampled candidates of a row ({})", dims.s),
        ));
    }
    Ok(())
}

/// The per-row loss of the sampled softmax with hard-negative mining.
pub fn hard_loss<T: Float, W: Stored<T>>(a: &Args<'_, T, W>, h: usize) -> Result<Vec<T>> {
    let dims = check(a, None, Budgets::DEFAULT)?;
    check_h(a, &dims, h)?;
    threads::install(|| run(a, &dims, h, None))?.map(|o| o.0)
}

/// The per-row loss and the gradients of `Σ_b c_b · loss_b` (`grad_loss` None: all ones), with hard-negative
/// mining.
pub fn hard_loss_and_grad<T: Float, W: Stored<T>>(
    a: &Args<'_, T, W>,
    h: usize,
    grad_loss: Option<&[T]>,
) -> Result<LossAndGrad<T>> {
    let dims = check(a, grad_loss, Budgets::DEFAULT)?;
    check_h(a, &dims, h)?;
    let ones;
    let c = match grad_loss {
        Some(c) => c,
        None => {
            ones = vec![T::ONE; dims.b];
            &ones[..]
        }
    };
    let (_, g) = threads::install(|| run(a, &dims, h, Some(c)))??;
    g.ok_or_else(|| Error::value("grad_loss", "internal: no gradient computed"))
}

/// `v` in chunks of `w` for the row tasks, or `n` empty chunks without gradients.
fn split<U>(v: &mut [U], w: usize, grad: bool, n: usize) -> Vec<&mut [U]> {
    if grad {
        v.chunks_mut(w).collect()
    } else {
        (0..n).map(|_| &mut [][..]).collect()
    }
}

#[allow(clippy::type_complexity)]
fn run<T: Float, W: Stored<T>>(
    a: &Args<'_, T, W>,
    dims: &Dims,
    h: usize,
    c: Option<&[T]>,
) -> Result<(Vec<T>, Option<LossAndGrad<T>>)> {
    let (b, d, s, nt) = (dims.b, dims.d, dims.s, a.num_true);
    let zt = true_logits(a, dims)?;
    let k = consts(a);
    let grad = c.is_some();
    // Shared candidates: their rows gathered once for every row.
    let mut shared: Vec<T> = Vec::new();
    if !a.per_row {
        shared = zeroed("sampled_values", s * d)?;
        for (j, &id) in a.sampled.iter().enumerate() {
            if !a.weights.row_into(id as usize, &mut shared[j * d..(j + 1) * d]) {
                return Err(not_finite_row(id));
            }
        }
    }
    let mut loss = vec![T::ZERO; b];
    let mut gt = vec![T::ZERO; b * nt];
    // Per row, the kept candidates: their entry in `a.sampled` and dL/dz (rows with fewer than h unmasked
    // candidates pad with a zero gradient).
    let kept_len = if grad { b * h } else { 0 };
    let mut kept_e = vec![0usize; kept_len];
    let mut kept_g = vec![T::ZERO; kept_len];
    let mut gx: Vec<T> = if grad { zeroed("inputs", b * d)? } else { Vec::new() };
    {
        let chunks = b.div_ceil(ROW_TASK);
        let mut gx_chunks = split(&mut gx, ROW_TASK * d, grad, chunks);
        let mut kg_chunks = split(&mut kept_g, ROW_TASK * h, grad, chunks);
        let mut ke_chunks = split(&mut kept_e, ROW_TASK * h, grad, chunks);
        let shared = &shared[..];
        let zt = &zt[..];
        let res: Vec<Result<()>> = loss
            .par_chunks_mut(ROW_TASK)
            .zip(gt.par_chunks_mut(ROW_TASK * nt))
            .zip(gx_chunks.par_iter_mut())
            .zip(kg_chunks.par_iter_mut().zip(ke_chunks.par_iter_mut()))
            .enumerate()
            .map_init(
                || (Vec::new(), vec![T::ZERO; s], vec![T::ZERO; d], Vec::<usize>::new(), vec![false; s]),
                |(rows, z, wt, order, keep), (task, (((l, gtc), gxc), (kgc, kec)))| {
                    for (i, li) in l.iter_mut().enumerate() {
                        let r = task * ROW_TASK + i;
                        let base = if a.per_row { r * s } else { 0 };
                        let ids = &a.sampled[base..base + s];
                        let labels = &a.labels[r * nt..(r + 1) * nt];
                        let cand: &[T] = if a.per_row {
                            if rows.len() != s * d {
                                *rows = zeroed("sampled_values", s * d)?;
                            }
                            for (j, &id) in ids.iter().enumerate() {
                                if !a.weights.row_into(id as usize, &mut rows[j * d..(j + 1) * d]) {
                                    return Err(not_finite_row(id));
                                }
                            }
                            &rows[..]
                        } else {
                            shared
                        };
                        let xr = &a.inputs[r * d..(r + 1) * d];
                        tile::gemv(cand, xr, z);
                        for (j, (zj, &id)) in z.iter_mut().zip(ids).enumerate() {
                            *zj = (*zj + bias_of(a.biases, id)?) - T::from_f64(dims.lq_sampled[base + j]);
                            if !zj.is_finite() {
                                return Err(overflow(r));
                            }
                            if a.remove_accidental_hits && labels.contains(&id) {
                                *zj = T::NEG_INFINITY;
                            }
                        }
                        // The h best unmasked candidates (ties: the lower position); the rest drop out.
                        order.clear();
                        order.extend((0..s).filter(|&j| z[j] != T::NEG_INFINITY));
                        if order.len() > h {
                            let zz = &*z;
                            order.select_nth_unstable_by(h - 1, |&x, &y| {
                                zz[y].partial_cmp(&zz[x]).unwrap_or(std::cmp::Ordering::Equal).then(x.cmp(&y))
                            });
                            order.truncate(h);
                        }
                        keep.fill(false);
                        for &j in order.iter() {
                            keep[j] = true;
                        }
                        for (zj, &kj) in z.iter_mut().zip(keep.iter()) {
                            if !kj {
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
                            order.sort_unstable();
                            let (kg, ke) = (&mut kgc[i * h..(i + 1) * h], &mut kec[i * h..(i + 1) * h]);
                            for (slot, &j) in order.iter().enumerate() {
                                tile::axpy(z[j], &cand[j * d..(j + 1) * d], o);
                                kg[slot] = z[j];
                                ke[slot] = base + j;
                            }
                            for slot in order.len()..h {
                                kg[slot] = T::ZERO;
                                ke[slot] = base;
                            }
                            for (t, &id) in labels.iter().enumerate() {
                                a.weights.row_into(id as usize, wt);
                                tile::axpy(gti[t], wt, o);
                            }
                        }
                    }
                    Ok(())
                },
            )
            .collect();
        first_err(res)?;
    }
    if !grad {
        return Ok((loss, None));
    }
    // Entries 0..B·h are the kept candidates (row e / h), then the true classes.
    let bh = b * h;
    let mut ids: Vec<i64> = Vec::with_capacity(bh + b * nt);
    ids.extend(kept_e.iter().map(|&e| a.sampled[e]));
    ids.extend_from_slice(a.labels);
    let row_of = |e: usize, out: &mut [T], first: bool| {
        let (coef, r) = if e < bh { (kept_g[e], e / h) } else { (gt[e - bh], (e - bh) / nt) };
        let x = &a.inputs[r * d..(r + 1) * d];
        if first {
            tile::scale_into(coef, x, out);
        } else {
            tile::axpy(coef, x, out);
        }
    };
    let bias_of_entry = |e: usize| if e < bh { kept_g[e] } else { gt[e - bh] };
    let (gw, gb) = sparse(&ids, d, row_of, a.biases.is_some(), bias_of_entry)?;
    Ok((loss.clone(), Some(LossAndGrad { loss, grad_inputs: gx, grad_weights: gw, grad_biases: gb })))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{args, close, problem};
    use super::*;

    /// Loss from the definition: keep the true columns and the h best unmasked candidates, softmax.
    fn naive(a: &Args<'_, f64>, h: usize) -> Vec<f64> {
        let (d, nt) = (a.weights.cols, a.num_true);
        let b = a.labels.len() / nt;
        let s = if a.per_row { a.sampled.len() / b } else { a.sampled.len() };
        let row = |i: i64| &a.weights.data[i as usize * d..(i as usize + 1) * d];
        (0..b)
            .map(|r| {
                let x = &a.inputs[r * d..(r + 1) * d];
                let labels = &a.labels[r * nt..(r + 1) * nt];
                let logit = |id: i64, q: f64| {
                    x.iter().zip(row(id)).map(|(u, v)| u * v).sum::<f64>() + a.biases.unwrap()[id as usize]
                        - q.ln()
                };
                let mut cand: Vec<(f64, usize)> = (0..s)
                    .filter_map(|j| {
                        let e = if a.per_row { r * s + j } else { j };
                        let id = a.sampled[e];
                        (!labels.contains(&id)).then(|| (logit(id, a.sampled_expected[e]), j))
                    })
                    .collect();
                cand.sort_by(|p, q| q.0.partial_cmp(&p.0).unwrap().then(p.1.cmp(&q.1)));
                cand.truncate(h);
                let zt: Vec<f64> = (0..nt).map(|t| logit(labels[t], a.true_expected[r * nt + t])).collect();
                let all: Vec<f64> = zt.iter().copied().chain(cand.iter().map(|c| c.0)).collect();
                let m = all.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + all.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
                let g = a.focal_gamma;
                zt.iter().map(|&z| -(1.0 - (z - lse).exp()).powf(g) * (z - lse) / nt as f64).sum()
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_and_finite_differences() {
        let c = [0.5, -1.0, 2.0, 1.5];
        for per_row in [false, true] {
            for gamma in [0.0, 1.5] {
                for h in [1, 2, 4, 6] {
                    let p = problem(per_row);
                    let a = args(&p, Kind::SampledSoftmax, per_row, gamma);
                    let got = hard_loss(&a, h).unwrap();
                    let want = naive(&a, h);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(close(*g, *w, 1e-12), "per_row={per_row} γ={gamma} h={h}: {g} vs {w}");
                    }
                    let out = hard_loss_and_grad(&a, h, Some(&c)).unwrap();
                    assert_eq!(out.loss, got);
                    let f = |p: &super::super::tests::P| -> f64 {
                        let a = args(p, Kind::SampledSoftmax, per_row, gamma);
                        naive(&a, h).iter().zip(&c).map(|(l, c)| l * c).sum()
                    };
                    let eps = 1e-6;
                    for i in 0..p.x.len() {
                        let (mut q, mut r) = (problem(per_row), problem(per_row));
                        q.x[i] += eps;
                        r.x[i] -= eps;
                        let fd = (f(&q) - f(&r)) / (2.0 * eps);
                        assert!(
                            close(out.grad_inputs[i], fd, 1e-6),
                            "dx[{i}] {} vs {fd}",
                            out.grad_inputs[i]
                        );
                    }
                    let gw = &out.grad_weights;
                    for id in 0..p.v {
                        let at = gw.indices.iter().position(|&u| u == id as i64);
                        for j in 0..p.d {
                            let (mut q, mut r) = (problem(per_row), problem(per_row));
                            q.w[id * p.d + j] += eps;
                            r.w[id * p.d + j] -= eps;
                            let fd = (f(&q) - f(&r)) / (2.0 * eps);
                            let got = at.map_or(0.0, |u| gw.values[u * p.d + j]);
                            assert!(close(got, fd, 1e-6), "dW[{id},{j}] {got} vs {fd}");
                        }
                        let (mut q, mut r) = (problem(per_row), problem(per_row));
                        q.bias[id] += eps;
                        r.bias[id] -= eps;
                        let fd = (f(&q) - f(&r)) / (2.0 * eps);
                        let got = at.map_or(0.0, |u| out.grad_biases.as_ref().unwrap().values[u]);
                        assert!(close(got, fd, 1e-6), "db[{id}] {got} vs {fd}");
                    }
                }
            }
        }
    }

    #[test]
    fn all_candidates_kept_is_the_plain_loss() {
        for per_row in [false, true] {
            let p = problem(per_row);
            let a = args(&p, Kind::SampledSoftmax, per_row, 0.0);
            let plain = super::super::loss(&a).unwrap();
            let hard = hard_loss(&a, 6).unwrap();
            for (x, y) in hard.iter().zip(&plain) {
                assert!(close(*x, *y, 1e-12));
            }
        }
    }

    #[test]
    fn bad_h_and_nce_name_num_hard_negatives() {
        let p = problem(false);
        let a = args(&p, Kind::SampledSoftmax, false, 0.0);
        for h in [0, 7] {
            assert_eq!(hard_loss(&a, h).unwrap_err().arg(), "num_hard_negatives");
        }
        let n = args(&p, Kind::Nce, false, 0.0);
        assert_eq!(hard_loss(&n, 2).unwrap_err().arg(), "num_hard_negatives");
    }
}
