//! Per-row candidates (`[B, S]`): each row gathers its own candidate rows, takes its logits with a gemv, its
//! softmax or NCE, and its gradient with a gemv back; rows run in parallel tasks of a few rows.

use super::args::{Args, Dims, LossAndGrad};
use super::math::{combine, consts, piece, to_grad};
use super::sparse::sparse;
use super::{bias_of, first_err, not_finite_row, overflow, Out, PREFETCH};
use crate::buf::zeroed;
use crate::error::Result;
use crate::float::{Float, Stored};
use crate::loss::tile;
use rayon::prelude::*;

/// Per-row candidates: row b has its own `s` candidates.
pub(super) fn per_row<T: Float, W: Stored<T>>(
    a: &Args<'_, T, W>,
    dims: &Dims,
    zt: &[T],
    c: Option<&[T]>,
) -> Result<Out<T>> {
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
