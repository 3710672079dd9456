//! The per-row math of the sampled losses, apart from the products: softmax and NCE, plain and focal — the
//! candidate pieces of a row, how they merge with its true columns into the loss, and dL/dz.

use super::args::{Args, Kind};
use crate::float::Float;
use crate::loss::tile::{self, Lse};

/// What a row's loss, its true columns and its candidate gradient need, after the pieces are merged.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowStat<T> {
    pub(super) loss: T,
    /// Softmax: ln Σ e^z over the row. NCE: unused.
    pub(super) lse: T,
    /// Softmax: dL/dz_s = coef · p_s on candidates. NCE: grad_loss of the row.
    pub(super) coef: T,
}

/// Constants of a call in the float type.
#[derive(Clone, Copy)]
pub(super) struct Consts<T> {
    pub(super) kind: Kind,
    /// The label of a true column, 1/num_true.
    pub(super) y: T,
    pub(super) gamma: T,
    pub(super) focal: bool,
}

/// σ(z), 1 − σ(z), softplus(−z) = −ln σ(z), softplus(z) = −ln(1 − σ(z)), without overflow.
#[inline(always)]
pub(super) fn sigmoid_parts<T: Float>(z: T) -> (T, T, T, T) {
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
pub(super) fn nce_neg_loss<T: Float>(z: T, k: &Consts<T>) -> T {
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
pub(super) fn nce_neg_grad<T: Float>(z: T, k: &Consts<T>) -> T {
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
pub(super) fn nce_true<T: Float>(z: T, k: &Consts<T>) -> (T, T) {
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
pub(super) fn combine<T: Float>(
    k: &Consts<T>,
    pieces: &[(T, T)],
    zt: &[T],
    c: T,
    gt: &mut [T],
) -> RowStat<T> {
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
pub(super) fn piece<T: Float>(k: &Consts<T>, z: &[T]) -> (T, T) {
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
    pub(super) fn nce_pieces_sum<T>(z: &[T], k: &Consts<T>) -> T {
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
    pub(super) fn nce_loss_sigmoid<T>(acc: &mut [T], z: &mut [T]) {
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
    pub(super) fn nce_loss_acc<T>(acc: &mut [T], z: &[T], k: &Consts<T>) {
        for (a, &v) in acc.iter_mut().zip(z) {
            *a += nce_neg_loss(v, k);
        }
    }
}

crate::simd::dispatch! {
    /// `z[i] = c[i] · dL/dz` of NCE candidate logits (one coefficient per entry, or `c` of length 1).
    pub(super) fn nce_grad<T>(z: &mut [T], c: &[T], k: &Consts<T>) {
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
pub(super) fn to_grad<T: Float>(k: &Consts<T>, z: &mut [T], st: &RowStat<T>) {
    match k.kind {
        Kind::SampledSoftmax => tile::scale_exp(z, st.lse, st.coef),
        Kind::Nce => nce_grad(z, &[st.coef], k),
    }
}

/// The constants of a call in its float type.
pub(super) fn consts<T: Float, W>(a: &Args<'_, T, W>) -> Consts<T> {
    Consts {
        kind: a.kind,
        y: T::ONE / T::from_f64(a.num_true as f64),
        gamma: T::from_f64(a.focal_gamma),
        focal: a.focal_gamma != 0.0,
    }
}
