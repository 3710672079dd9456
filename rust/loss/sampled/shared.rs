//! Shared candidates (`[S]`): the B×S logits in column blocks of candidates, each gathering its weight rows
//! once, with one product per sub-tile forward (logits, per-row pieces of the log-sum-exp) and two backward
//! (dL/dx piece, dL/dW rows), in row chunks within the memory budget.

use super::args::{Args, Dims, Kind, LossAndGrad};
use super::math::{combine, consts, nce_grad, nce_loss_acc, nce_loss_sigmoid, Consts, RowStat};
use super::sparse::sparse;
use super::{bias_of, first_err, not_finite_row, overflow, Out, BLOCK_BYTES, PREFETCH, ROW_TASK};
use crate::buf::zeroed;
use crate::error::Result;
use crate::float::{Float, Stored};
use crate::loss::tile::{self, Mat, MatMut, Op, TILES_KEEP};
use rayon::prelude::*;

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

pub(super) fn shared<T: Float, W: Stored<T>>(
    a: &Args<'_, T, W>,
    dims: &Dims,
    zt: &[T],
    c: Option<&[T]>,
) -> Result<Out<T>> {
    let (b, d, s, nt) = (dims.b, dims.d, dims.s, a.num_true);
    let k = consts(a);
    let sz = std::mem::size_of::<T>();
    let nb = (BLOCK_BYTES / sz).max(1);
    let nblocks = s.div_ceil(nb);
    // Rows per chunk: the logits [rows, S] and the per-block dL/dx pieces [nblocks, rows, d] within budget.
    let per_row_bytes = (s + nblocks * d) * sz;
    let sub = dims.budgets.subtile_bytes;
    let chunk = (dims.budgets.logit_bytes / per_row_bytes.max(1)).clamp(1, b);

    // Accidental hits (`hits::accidental_hits`: by row, each row's true classes in order, positions
    // increasing), bucketed by block.
    let mut hits: Vec<Vec<(usize, usize)>> = vec![Vec::new(); nblocks];
    if a.remove_accidental_hits {
        let found = crate::hits::accidental_hits(a.labels, nt, a.sampled)?;
        for (&r, &p) in found.rows.iter().zip(&found.positions) {
            let p = p as usize;
            hits[p / nb].push((r as usize, p % nb));
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
            blocks.par_iter_mut().map(|blk| forward_block(blk, x, r0, &k, sub)).collect();
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
            blocks.par_iter_mut().map(|blk| backward_block(blk, x, &lse, &coef, &k, first, sub)).collect();
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
        parts.into_iter().for_each(|p| T::caches().tiles.give(Some(p), TILES_KEEP));
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
        T::caches().tiles.give(Some(std::mem::take(&mut blk.z)), TILES_KEEP);
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
fn sub_rows<T>(w: usize, subtile_bytes: usize) -> usize {
    ((subtile_bytes / std::mem::size_of::<T>()) / w.max(1)).clamp(16, 4096)
}

/// Logits of a block for rows `r0..r0 + x.rows` (with biases, ln q and masks), kept candidate-major
/// (`[w, rows]`), and each row's piece. Works in sub-tiles of rows so that the product and the passes over
/// its output run on data in cache.
fn forward_block<T: Float>(
    blk: &mut Block<T>,
    x: Mat<'_, T>,
    r0: usize,
    k: &Consts<T>,
    subtile_bytes: usize,
) -> Result<Vec<(T, T)>> {
    let (n, w, d) = (x.rows, blk.w, x.cols);
    if blk.z.len() != n * w {
        T::caches().tiles.give(Some(std::mem::take(&mut blk.z)), TILES_KEEP);
        blk.z = T::caches().tiles.take("num_sampled", n * w)?;
    }
    let mut m = vec![T::NEG_INFINITY; n];
    let mut acc = vec![T::ZERO; n];
    let hits_lo = blk.hits.partition_point(|h| h.0 < r0);
    let nr = sub_rows::<T>(w, subtile_bytes);
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
                // Columns i0..i1 of the block, `n` apart.
                tile::add_offsets_vmax(&mut blk.z[i0..], n, &blk.off_b, &blk.off_q, ms);
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
                tile::vexp_sum(accs, &mut blk.z[i0..], n, w, ms_exp);
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
fn backward_block<T: Float>(
    blk: &mut Block<T>,
    x: Mat<'_, T>,
    lse: &[T],
    coef: &[T],
    k: &Consts<T>,
    first: bool,
    subtile_bytes: usize,
) -> Result<Vec<T>> {
    let (n, w, d) = (x.rows, blk.w, x.cols);
    let mut gxt: Vec<T> = T::caches().tiles.take("inputs", d * n)?;
    let focal_nce = k.kind == Kind::Nce && k.focal;
    let f: Vec<T> = match k.kind {
        Kind::SampledSoftmax => {
            (blk.m.iter().zip(lse).zip(coef)).map(|((&m, &l), &c)| c * (m - l).exp_fast()).collect()
        }
        Kind::Nce if focal_nce => vec![T::ONE; n],
        Kind::Nce => coef.to_vec(),
    };
    let nr = sub_rows::<T>(w, subtile_bytes);
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
        let e = Mat::with_row_stride(&blk.z[i0..], w, i1 - i0, n);
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

#[cfg(test)]
mod tests {
    use super::super::tests::{close, naive};
    use super::super::{check, loss_and_grad, loss_and_grad_in, true_logits, Budgets, Kind};
    use super::*;
    use crate::loss::tile::Mat;

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
            weights: Mat::contiguous(&w, v, d),
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
                let dims = check(&a, None, Budgets::TINY).unwrap();
                let zt = true_logits(&a, &dims).unwrap();
                shared(&a, &dims, &zt, Some(&vec![1.0; b])).unwrap().grad.unwrap()
            })
        };
        assert_eq!(run(1), run(3));
    }

    /// Shared candidates over many row chunks and sub-tiles (tiny budgets) agree with the
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
                weights: Mat::contiguous(&w, v, d),
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
            let per_row_bytes = (s + 3 * d) * 8;
            let tiny = Budgets::TINY;
            assert!(tiny.logit_bytes / per_row_bytes < b / 3, "the test should use several chunks");
            let shared = loss_and_grad_in(&a, Some(&c), tiny).unwrap();
            let pr = Args { sampled: &tiled_ids, sampled_expected: &tiled_se, per_row: true, ..a };
            let rowwise = loss_and_grad_in(&pr, Some(&c), tiny).unwrap();
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
                weights: Mat::contiguous(&w, v, d),
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
}
