//! The element-wise math of InfoNCE, compiled for every SIMD level: the focal factor, a row's and a
//! column's online log-sum-exp, and the turning of logits into G.

use super::TJ;
use crate::float::Float;
use crate::loss::tile::{fold, LANES};

/// (f, c, u) for the target's log-probability `logp`: the focal loss `f = u^γ (−log p)`, the factor
/// `c = −p f'(p)` that scales the row's gradient, and `u = 1 − p`. γ = 0 gives exactly `−log p`, 1, u.
pub(super) fn focal<T: Float>(logp: T, gamma: T) -> (T, T, T) {
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
pub(super) fn row_lse_update<T: Float>(z: &[T], m: &mut T, s: &mut T) {
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
pub(super) fn row_lse_update_exp<T: Float>(z: &mut [T], m: &mut T, s: &mut T) -> T {
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

// The hand-split reductions use `tile::LANES` accumulators: the compiler keeps float sums in program order, so
// a plain loop would add one element at a time; LANES independent sums vectorise, and their fixed
// combination order keeps the result independent of the vector width the CPU offers.

#[inline(always)]
fn max_body<T: Float>(z: &[T]) -> T {
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
fn sum_exp_body<T: Float>(z: &[T], m: T) -> T {
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
fn sum_exp_write_body<T: Float>(z: &mut [T], m: T) -> T {
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
fn scale_body<T: Float>(z: &mut [T], f: T) {
    for x in z.iter_mut() {
        *x *= f;
    }
}

#[inline(always)]
fn grad_row_body<T: Float>(z: &mut [T], lse: T, a: T) {
    for x in z.iter_mut() {
        *x = a * Float::exp_fast(*x - lse);
    }
}

#[inline(always)]
fn grad_row_sym_body<T: Float>(z: &mut [T], lse: T, a: T, lse_col: &[T], a_col: &[T]) {
    for ((x, &lc), &ac) in z.iter_mut().zip(lse_col).zip(a_col) {
        let v = *x;
        *x = a * Float::exp_fast(v - lse) + ac * Float::exp_fast(v - lc);
    }
}

/// One step of the online log-sum-exp of `nc` columns over the `ni` rows of the tile `z` (at `stride`):
/// running maxima `cm`, sums of e^(z − cm) `cs`.
#[inline(always)]
fn col_lse_body<T: Float>(z: &[T], ni: usize, nc: usize, stride: usize, cm: &mut [T], cs: &mut [T]) {
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
    pub(super) fn max_of<T>(z: &[T]) -> T {
        max_body(z)
    }
}
crate::simd::dispatch! {
    /// Σ e^(z − m).
    #[inline]
    pub(super) fn sum_exp<T>(z: &[T], m: T) -> T {
        sum_exp_body(z, m)
    }
}
crate::simd::dispatch! {
    /// Σ e^(z − m), leaving each e^(z − m) in z.
    #[inline]
    pub(super) fn sum_exp_write<T>(z: &mut [T], m: T) -> T {
        sum_exp_write_body(z, m)
    }
}
crate::simd::dispatch! {
    /// z ← f z.
    #[inline]
    pub(super) fn scale_row<T>(z: &mut [T], f: T) {
        scale_body(z, f)
    }
}
crate::simd::dispatch! {
    /// z ← a e^(z − lse).
    #[inline]
    pub(super) fn grad_row<T>(z: &mut [T], lse: T, a: T) {
        grad_row_body(z, lse, a)
    }
}
crate::simd::dispatch! {
    /// z ← a e^(z − lse) + a_col e^(z − lse_col), column by column.
    #[inline]
    pub(super) fn grad_row_sym<T>(z: &mut [T], lse: T, a: T, lse_col: &[T], a_col: &[T]) {
        grad_row_sym_body(z, lse, a, lse_col, a_col)
    }
}
crate::simd::dispatch! {
    #[inline]
    pub(super) fn col_lse_update<T>(z: &[T], ni: usize, nc: usize, stride: usize, cm: &mut [T], cs: &mut [T]) {
        col_lse_body(z, ni, nc, stride, cm, cs)
    }
}
