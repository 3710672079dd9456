//! A validated InfoNCE call: its arguments checked (each error names its argument), and its logit tiles (the
//! scaled product minus the log-q corrections, masked columns at −∞).

use super::{keeps_logits, Options, MAX_ROWS, TJ};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::loss::tile::{matmul, Mat, MatMut, Op};

/// A validated call.
pub(super) struct Problem<'a, T> {
    pub(super) q: &'a [T],
    pub(super) k: &'a [T],
    pub(super) n: &'a [T],
    pub(super) has_neg: bool,
    pub(super) b: usize,
    pub(super) nn: usize,
    pub(super) d: usize,
    /// Columns of a logit row: B + N.
    pub(super) w: usize,
    pub(super) scale: T,
    pub(super) kq: Option<&'a [T]>,
    pub(super) nq: Option<&'a [T]>,
    pub(super) kid: Option<&'a [i64]>,
    pub(super) nid: Option<&'a [i64]>,
    pub(super) sym: bool,
    pub(super) gamma: T,
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

impl<'a, T: Float> Problem<'a, T> {
    pub(super) fn new(
        query: Mat<'a, T>,
        keys: Mat<'a, T>,
        negatives: Option<Mat<'a, T>>,
        o: &Options<'a, T>,
        grad_loss: Option<&[T]>,
    ) -> Result<Self> {
        for (arg, m) in [("query", Some(query)), ("keys", Some(keys)), ("negatives", negatives)] {
            // Strides only: the element counts are checked below, each with its own message.
            let strided =
                |m: Mat<'a, T>| (m.col_stride != 1 && m.cols > 1) || (m.row_stride != m.cols && m.rows > 1);
            if m.is_some_and(strided) {
                return Err(Error::shape(arg, "must be a C-contiguous [rows, dim] array"));
            }
        }
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

    pub(super) fn fits(&self, budget: usize) -> bool {
        keeps_logits::<T>(self.b, self.nn, budget)
    }

    /// The column blocks of a logit row, (first column, width): keys in TJ chunks, then negatives.
    pub(super) fn col_blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let keys = (0..self.b).step_by(TJ).map(|c| (c, TJ.min(self.b - c)));
        let negs = (0..self.nn).step_by(TJ).map(|m| (self.b + m, TJ.min(self.nn - m)));
        keys.chain(negs)
    }

    /// The embeddings behind columns c0..c0+nc (keys or negatives; blocks never straddle), as a view.
    pub(super) fn cols(&self, c0: usize, nc: usize) -> Mat<'a, T> {
        let (x, r0) = if c0 < self.b { (self.k, c0) } else { (self.n, c0 - self.b) };
        Mat::new(&x[r0 * self.d..(r0 + nc) * self.d], nc, self.d)
    }

    pub(super) fn rows(&self, i0: usize, ni: usize) -> Mat<'a, T> {
        Mat::new(&self.q[i0 * self.d..(i0 + ni) * self.d], ni, self.d)
    }

    /// The logits of rows i0..i0+ni, columns c0..c0+nc, written to `out` (ni×nc at `stride`):
    /// the scaled product, minus the log-q corrections, masked columns set to −∞.
    pub(super) fn logits(&self, i0: usize, ni: usize, c0: usize, nc: usize, out: &mut [T], stride: usize) {
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

    pub(super) fn overflow(&self) -> Error {
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
}

#[cfg(test)]
mod tests {
    use super::super::{info_nce_loss, info_nce_loss_and_grad};
    use super::*;

    #[test]
    fn bad_arguments_name_themselves() {
        let q = vec![0.5f64; 6];
        let k = vec![0.25f64; 6];
        fn m(x: &[f64], r: usize, c: usize) -> Mat<'_, f64> {
            Mat::new(x, r, c)
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
