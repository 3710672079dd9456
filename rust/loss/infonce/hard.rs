//! InfoNCE with hard-negative mining (TFRS / keras-rs `HardNegativeMining`): each row keeps its positive and
//! the `h` largest of its other logits, and the softmax runs over those `h + 1` columns only.
//!
//! # The loss
//! With the logits `z[i, c]` of [`super`] (scaled product, minus the log-q corrections, accidental hits at
//! −∞), let `H_i` be the `h` columns `c ≠ i` with the largest `z[i, c]` among the unmasked ones (ties: the
//! lower column wins, as `tf.math.top_k`; fewer than `h` when fewer are unmasked). Then
//!
//! ```text
//! lse_i  = log(e^z[i,i] + Σ_{c∈H_i} e^z[i,c])
//! loss_i = f(p_ii),   p_ic = e^(z[i,c] − lse_i)  (c ∈ {i} ∪ H_i),   f(p) = −(1 − p)^γ log p
//! ```
//!
//! The selection is piecewise constant in the embeddings, so the gradient flows through the kept logits
//! only: `∂L/∂z[i, c] = a_i (p_ic − δ_ic)` for `c ∈ {i} ∪ H_i` and 0 elsewhere (`a_i` as in [`super`]).
//!
//! # The kernel
//! One pass over the logit tiles (one matrix product, a TI×TJ scratch tile per task): each row feeds its
//! tile row to a running top-`h` selection ([`TopH`]: a threshold and a buffer of `4h` (value, column)
//! pairs), so nothing of size B×(B+N) exists; the state is B×4h. G then has `h + 1` entries per row:
//! `∂q` is a gather of `h + 1` rows per query, and
//! `∂k`, `∂n` a scatter done column by column (each column's entries in row order), so results do not
//! depend on the thread count. The cost is one product instead of three, plus O(B·h·d).

use super::kernels::focal;
use super::problem::Problem;
use super::{InfoNceGrad, Options, TI};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::loss::tile::{axpy, Mat};
use crate::threads;
use rayon::prelude::*;

/// The `h` best (logit, column) pairs seen so far by one row, kept with a threshold and a buffer of `4h`
/// slots: a logit at or below the threshold (the `h`-th best logit at the last compaction) cannot make the
/// top `h`, since columns arrive in increasing order and ties go to the lower column; a better one is
/// appended, and a full buffer is compacted to its `h` best by a partial selection (`select_nth_unstable`).
/// Per element that is one comparison; the `O(h)` compactions happen about `ln(W / h)` times per row.
/// (A binary heap does the same in `O(log h)` per accepted element, but with branchy sifts that cost
/// more in practice.)
struct TopH<'s, T> {
    buf: &'s mut [(T, usize)],
    len: usize,
    thr: T,
    h: usize,
}

/// Order: the higher logit first, then the lower column.
#[inline]
fn better<T: Float>(a: &(T, usize), b: &(T, usize)) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Greater, Less};
    // (No NaN reaches here: the logits are checked finite or −∞, and −∞ is never kept.)
    if a.0 > b.0 {
        Less
    } else if a.0 < b.0 {
        Greater
    } else {
        a.1.cmp(&b.1)
    }
}

impl<T: Float> TopH<'_, T> {
    /// Keep the `h` best entries of the buffer and raise the threshold to the worst of them.
    fn compact(&mut self) {
        if self.len > self.h {
            self.buf[..self.len].select_nth_unstable_by(self.h - 1, better);
            self.len = self.h;
        }
        if self.len == self.h {
            self.thr = self.buf[..self.h].iter().fold(self.buf[0].0, |m, e| if e.0 < m { e.0 } else { m });
        }
    }

    /// Offer column `c` with logit `v` (columns offered in increasing order; −∞ is never kept).
    #[inline]
    fn offer(&mut self, v: T, c: usize) {
        if v > self.thr {
            if self.len == self.buf.len() {
                self.compact();
                if v <= self.thr {
                    return;
                }
            }
            self.buf[self.len] = (v, c);
            self.len += 1;
        }
    }
}

/// The outcome of the forward pass for one block of rows.
struct Block<T> {
    i0: usize,
    /// Kept (logit, column) pairs of each row (`4h` slots; the first `len[r] <= h` used).
    kept: Vec<(T, usize)>,
    len: Vec<usize>,
    diag: Vec<T>,
    lse: Vec<T>,
}

/// Check `h` against the call (an error names `num_hard_negatives`).
fn check_h<T>(p: &Problem<'_, T>, h: usize) -> Result<()> {
    let negs = p.w - 1;
    if h == 0 {
        return Err(Error::value("num_hard_negatives", "must be >= 1 (None turns hard-negative mining off)"));
    }
    if h > negs {
        return Err(Error::value(
            "num_hard_negatives",
            format!(
                "{h} is larger than the number of negatives of a row ({negs}: batch {} − 1 + {} extra negatives)",
                p.b, p.nn
            ),
        ));
    }
    if p.sym {
        return Err(Error::value("num_hard_negatives", "cannot be combined with symmetric=True"));
    }
    Ok(())
}

impl<T: Float> Problem<'_, T> {
    /// The forward pass of rows i0..i0+ni: their top-h columns, target logits and log-sum-exps.
    fn hard_forward(&self, i0: usize, ni: usize, h: usize) -> Block<T> {
        let slots = 4 * h;
        let mut kept = vec![(T::ZERO, 0usize); ni * slots];
        let mut len = vec![0usize; ni];
        let mut thr = vec![T::NEG_INFINITY; ni];
        let mut diag = vec![T::ZERO; ni];
        let mut scratch = vec![T::ZERO; ni * super::TJ];
        for (c0, nc) in self.col_blocks() {
            let tile = &mut scratch[..ni * nc];
            self.logits(i0, ni, c0, nc, tile, nc);
            for (r, ((row, buf), (l, t))) in tile
                .chunks_exact(nc)
                .zip(kept.chunks_exact_mut(slots))
                .zip(len.iter_mut().zip(thr.iter_mut()))
                .enumerate()
            {
                let i = i0 + r;
                let mut top = TopH { buf, len: *l, thr: *t, h };
                let own = (c0..c0 + nc).contains(&i).then(|| i - c0);
                if let Some(k) = own {
                    diag[r] = row[k];
                }
                for (k, &z) in row.iter().enumerate() {
                    if z > top.thr && Some(k) != own {
                        top.offer(z, c0 + k);
                    }
                }
                (*l, *t) = (top.len, top.thr);
            }
        }
        let mut lse = vec![T::ZERO; ni];
        for r in 0..ni {
            let mut top = TopH { buf: &mut kept[r * slots..(r + 1) * slots], len: len[r], thr: thr[r], h };
            top.compact();
            len[r] = top.len;
            let kept = &top.buf[..top.len];
            let m = kept.iter().fold(diag[r], |m, &(x, _)| if x > m { x } else { m });
            let s = kept.iter().fold((diag[r] - m).exp(), |s, &(x, _)| s + (x - m).exp());
            lse[r] = m + s.ln();
        }
        Block { i0, kept, len, diag, lse }
    }
}

/// InfoNCE with hard-negative mining: the loss `[B]`, and with `want_grad` the gradients of
/// `Σ_i grad_loss[i] · loss[i]` (the module documentation has the formula). `h` is `num_hard_negatives`:
/// at least 1 and at most `B − 1 + N`; `symmetric` is refused.
pub fn info_nce_hard<T: Float>(
    query: Mat<'_, T>,
    keys: Mat<'_, T>,
    negatives: Option<Mat<'_, T>>,
    opts: &Options<'_, T>,
    h: usize,
    grad_loss: Option<&[T]>,
    want_grad: bool,
) -> Result<InfoNceGrad<T>> {
    let p = Problem::new(query, keys, negatives, opts, grad_loss)?;
    check_h(&p, h)?;
    let r = threads::install(|| p.hard_run(h, grad_loss, want_grad))??;
    Ok(r)
}

impl<T: Float> Problem<'_, T> {
    fn hard_run(&self, h: usize, grad_loss: Option<&[T]>, want_grad: bool) -> Result<InfoNceGrad<T>> {
        let (b, d, w) = (self.b, self.d, self.w);
        let blocks: Vec<Block<T>> = (0..b)
            .step_by(TI)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|i0| self.hard_forward(i0, TI.min(b - i0), h))
            .collect();
        if !blocks.iter().all(|bl| bl.lse.iter().chain(&bl.diag).all(|v| v.is_finite())) {
            return Err(self.overflow());
        }
        // Per row: loss, a_i, and G of the diagonal.
        let mut loss = vec![T::ZERO; b];
        let mut a = vec![T::ZERO; b];
        let mut g_diag = vec![T::ZERO; b];
        for bl in &blocks {
            for r in 0..bl.lse.len() {
                let i = bl.i0 + r;
                let (f, c, u) = focal(bl.diag[r] - bl.lse[r], self.gamma);
                let wt = grad_loss.map_or(T::ONE, |g| g[i]);
                loss[i] = f;
                a[i] = wt * c;
                g_diag[i] = -(a[i] * u);
            }
        }
        if !loss.iter().chain(&a).all(|v| v.is_finite()) {
            return Err(self.overflow());
        }
        if !want_grad {
            return Ok(InfoNceGrad {
                loss,
                grad_query: Vec::new(),
                grad_keys: Vec::new(),
                grad_negatives: None,
            });
        }
        // G's entries: per row, (column, value), the diagonal first.
        let mut g_row: Vec<Vec<(usize, T)>> = Vec::with_capacity(b);
        for bl in &blocks {
            for r in 0..bl.lse.len() {
                let i = bl.i0 + r;
                let mut e = Vec::with_capacity(bl.len[r] + 1);
                e.push((i, g_diag[i]));
                for &(z, c) in &bl.kept[r * 4 * h..r * 4 * h + bl.len[r]] {
                    e.push((c, a[i] * (z - bl.lse[r]).exp()));
                }
                g_row.push(e);
            }
        }
        drop(blocks);
        // ∂q_i = scale · Σ_c G[i, c] x_c.
        let mut gq = vec![T::ZERO; b * d];
        gq.par_chunks_mut(d).zip(g_row.par_iter()).for_each(|(out, e)| {
            for &(c, g) in e {
                axpy(self.scale * g, self.cols(c, 1).data, out);
            }
        });
        // ∂x_c = scale · Σ_i G[i, c] q_i, each column's entries in row order (a counting sort by column).
        let mut start = vec![0usize; w + 1];
        for e in &g_row {
            for &(c, _) in e {
                start[c + 1] += 1;
            }
        }
        for c in 0..w {
            start[c + 1] += start[c];
        }
        let mut fill = start.clone();
        let mut by_col = vec![(0usize, T::ZERO); start[w]];
        for (i, e) in g_row.iter().enumerate() {
            for &(c, g) in e {
                by_col[fill[c]] = (i, g);
                fill[c] += 1;
            }
        }
        let mut gx = vec![T::ZERO; w * d];
        gx.par_chunks_mut(d).enumerate().for_each(|(c, out)| {
            for &(i, g) in &by_col[start[c]..start[c + 1]] {
                axpy(self.scale * g, self.rows(i, 1).data, out);
            }
        });
        let gn = gx.split_off(b * d);
        Ok(InfoNceGrad {
            loss,
            grad_query: gq,
            grad_keys: gx,
            grad_negatives: if self.has_neg { Some(gn) } else { None },
        })
    }
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

    /// Straightforward reference: every logit, sort, keep, softmax, gradients by loops.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn reference(
        q: &[f64],
        k: &[f64],
        n: &[f64],
        b: usize,
        nn: usize,
        d: usize,
        o: &Options<'_, f64>,
        h: usize,
        gl: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let w = b + nn;
        let t = o.temperature;
        let x = |j: usize| if j < b { &k[j * d..(j + 1) * d] } else { &n[(j - b) * d..(j - b + 1) * d] };
        let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
        let (mut loss, mut gq, mut gx) = (vec![0.0; b], vec![0.0; b * d], vec![0.0; w * d]);
        for i in 0..b {
            let mut cols: Vec<(f64, usize)> = Vec::new();
            let mut zi = 0.0;
            for j in 0..w {
                let (corr, id) = if j < b {
                    (o.key_log_q.map_or(0.0, |v| v[j]), o.key_ids.map(|v| v[j]))
                } else {
                    (o.negative_log_q.map_or(0.0, |v| v[j - b]), o.negative_ids.map(|v| v[j - b]))
                };
                let z = dot(&q[i * d..(i + 1) * d], x(j)) / t - corr;
                if j == i {
                    zi = z;
                } else if !(o.key_ids.is_some() && id == o.key_ids.map(|v| v[i])) {
                    cols.push((z, j));
                }
            }
            cols.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            cols.truncate(h);
            cols.push((zi, i));
            let m = cols.iter().map(|c| c.0).fold(f64::NEG_INFINITY, f64::max);
            let lse = m + cols.iter().map(|c| (c.0 - m).exp()).sum::<f64>().ln();
            let pt = (zi - lse).exp();
            let g = o.focal_gamma;
            loss[i] = -(1.0 - pt).powf(g) * (zi - lse);
            let c =
                if g == 0.0 { 1.0 } else { (1.0 - pt).powf(g) - g * pt * (1.0 - pt).powf(g - 1.0) * pt.ln() };
            for &(z, j) in &cols {
                let gz = gl[i] * c * ((z - lse).exp() - if j == i { 1.0 } else { 0.0 }) / t;
                for p in 0..d {
                    gq[i * d + p] += gz * x(j)[p];
                    gx[j * d + p] += gz * q[i * d + p];
                }
            }
        }
        let gn = gx.split_off(b * d);
        (loss, gq, gx, gn)
    }

    fn close(a: &[f64], b: &[f64], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-10 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn matches_a_sort_then_softmax_reference() {
        let (b, nn, d) = (TI + 9, 300, 7);
        let q = data(b * d, 1);
        let k = data(b * d, 2);
        let n = data(nn * d, 3);
        let kq: Vec<f64> = data(b, 4).iter().map(|x| x - 3.0).collect();
        let nq: Vec<f64> = data(nn, 5).iter().map(|x| x - 4.0).collect();
        let kid: Vec<i64> = (0..b as i64).map(|i| i % 41).collect();
        let nid: Vec<i64> = (0..nn as i64).map(|i| i % 53).collect();
        let gl: Vec<f64> = data(b, 6).iter().map(|x| x + 0.5).collect();
        for h in [1, 5, 64, b + nn - 1] {
            for gamma in [0.0, 1.5] {
                for with_neg in [false, true] {
                    if !with_neg && h > b - 1 {
                        continue;
                    }
                    let o = Options {
                        temperature: 0.2,
                        key_log_q: Some(&kq[..]),
                        negative_log_q: with_neg.then_some(&nq[..]),
                        key_ids: Some(&kid[..]),
                        negative_ids: with_neg.then_some(&nid[..]),
                        focal_gamma: gamma,
                        ..Options::default()
                    };
                    let nn2 = if with_neg { nn } else { 0 };
                    let negs = with_neg.then(|| Mat::new(&n[..], nn, d));
                    let (l, gq, gk, gn) = reference(&q, &k, &n, b, nn2, d, &o, h, &gl);
                    let got =
                        info_nce_hard(Mat::new(&q, b, d), Mat::new(&k, b, d), negs, &o, h, Some(&gl), true)
                            .unwrap();
                    let what = format!("h={h} gamma={gamma} neg={with_neg}");
                    close(&got.loss, &l, &format!("loss {what}"));
                    close(&got.grad_query, &gq, &format!("gq {what}"));
                    close(&got.grad_keys, &gk, &format!("gk {what}"));
                    if with_neg {
                        close(got.grad_negatives.as_ref().unwrap(), &gn, &format!("gn {what}"));
                    }
                    let alone =
                        info_nce_hard(Mat::new(&q, b, d), Mat::new(&k, b, d), negs, &o, h, None, false)
                            .unwrap();
                    assert_eq!(alone.loss, got.loss);
                }
            }
        }
    }

    #[test]
    fn every_negative_kept_is_the_plain_loss() {
        let (b, nn, d) = (40, 13, 5);
        let q = data(b * d, 7);
        let k = data(b * d, 8);
        let n = data(nn * d, 9);
        let o = Options::default();
        let negs = Some(Mat::new(&n[..], nn, d));
        let plain =
            super::super::info_nce_loss_and_grad(Mat::new(&q, b, d), Mat::new(&k, b, d), negs, &o, None)
                .unwrap();
        let hard =
            info_nce_hard(Mat::new(&q, b, d), Mat::new(&k, b, d), negs, &o, b + nn - 1, None, true).unwrap();
        close(&hard.loss, &plain.loss, "loss");
        close(&hard.grad_query, &plain.grad_query, "gq");
        close(&hard.grad_keys, &plain.grad_keys, "gk");
        close(hard.grad_negatives.as_ref().unwrap(), plain.grad_negatives.as_ref().unwrap(), "gn");
    }

    #[test]
    fn thread_count_does_not_change_the_result() {
        let (b, d) = (2 * TI + 3, 16);
        let q: Vec<f32> = data(b * d, 21).into_iter().map(|x| x as f32).collect();
        let k: Vec<f32> = data(b * d, 22).into_iter().map(|x| x as f32).collect();
        let o = Options::default();
        let run = || info_nce_hard(Mat::new(&q, b, d), Mat::new(&k, b, d), None, &o, 17, None, true).unwrap();
        let before = threads::num_threads();
        threads::set_num_threads(1).unwrap();
        let one = run();
        threads::set_num_threads(3).unwrap();
        let three = run();
        threads::set_num_threads(before).unwrap();
        assert_eq!(one, three);
    }

    #[test]
    fn bad_h_names_num_hard_negatives() {
        let q = vec![0.5f64; 6];
        let o = Options::<f64>::default();
        let m = |x| Mat::new(x, 3, 2);
        for h in [0, 3, 100] {
            let e = info_nce_hard(m(&q), m(&q), None, &o, h, None, false).unwrap_err();
            assert_eq!(e.arg(), "num_hard_negatives", "h={h}");
        }
        let o = Options::<f64> { symmetric: true, ..Options::default() };
        let e = info_nce_hard(m(&q), m(&q), None, &o, 1, None, false).unwrap_err();
        assert_eq!(e.arg(), "num_hard_negatives");
    }
}
