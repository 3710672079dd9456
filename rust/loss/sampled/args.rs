//! The arguments of a sampled-loss call and its results: the public types (`Kind`, `Mat`, `Args`,
//! `LossAndGrad`, `SparseGrad`), and the validation that turns `Args` into the call's `Dims`.

use super::Budgets;
use crate::error::{Error, Result};
use crate::float::{Float, Stored};
use crate::loss::tile::Mat;
use crate::threads;

/// Which loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Softmax cross-entropy over the true and sampled columns.
    SampledSoftmax,
    /// Noise-contrastive estimation: sigmoid cross-entropy summed over the columns.
    Nce,
}

impl<W: Copy> Mat<'_, W> {
    /// Check the view of the weights a caller gave: non-empty, and inside its buffer.
    pub(super) fn validate_weights(&self) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return Err(Error::value(
                "weights",
                format!("must be non-empty, got shape [{}, {}]", self.rows, self.cols),
            ));
        }
        match self.last_index() {
            Some(l) if l < self.data.len() => Ok(()),
            _ => Err(Error::shape("weights", "the strided view exceeds its buffer")),
        }
    }

    /// Copy row `i` into `out` (`cols` long), widened to the kernel's float type `T` (the gather: half
    /// precision is widened here, as it is read), and say whether it is all finite.
    #[inline]
    pub(super) fn row_into<T: Float>(&self, i: usize, out: &mut [T]) -> bool
    where
        W: Stored<T>,
    {
        let base = i * self.row_stride;
        if self.col_stride == 1 {
            W::widen_finite(&self.data[base..base + self.cols], out)
        } else {
            for (j, o) in out.iter_mut().enumerate() {
                *o = self.data[base + j * self.col_stride].widen();
            }
            out.iter().all(|v| v.is_finite())
        }
    }

    /// Ask the CPU to start loading row `i` (a hint: gathers of random rows wait on memory otherwise).
    #[inline(always)]
    pub(super) fn prefetch(&self, i: usize) {
        let bytes = ((self.cols - 1) * self.col_stride + 1) * std::mem::size_of::<W>();
        if let Some(row) = self.data.get(i * self.row_stride..) {
            crate::simd::prefetch(row.as_ptr(), bytes);
        }
    }
}

/// Everything a loss call needs. `T` is the float type the kernels compute in (and that of every argument
/// but the class table); `W` the storage type of the weights and biases: `T` itself, or for `T = f32` a
/// half-precision type ([`crate::float::Bf16`], [`crate::float::F16`]) whose rows are widened to f32 as they
/// are gathered, so a half-precision table is never copied. Expected counts are already of type `T`.
#[derive(Clone, Copy, Debug)]
pub struct Args<'a, T, W = T> {
    /// Which loss.
    pub kind: Kind,
    /// The class weights `[V, d]` (any strides); only the rows a call needs are read.
    pub weights: Mat<'a, W>,
    /// `[V]` or none (stored like the weights).
    pub biases: Option<&'a [W]>,
    /// `[B, num_true]`, row-major.
    pub labels: &'a [i64],
    /// True classes per row.
    pub num_true: usize,
    /// `[B, d]`, row-major.
    pub inputs: &'a [T],
    /// `[S]` when `per_row` is false, else `[B, S]` row-major.
    pub sampled: &'a [i64],
    /// Whether each row has its own candidates.
    pub per_row: bool,
    /// `[B, num_true]`.
    pub true_expected: &'a [T],
    /// The shape of `sampled`.
    pub sampled_expected: &'a [T],
    /// Mask the candidates equal to one of the row's true classes.
    pub remove_accidental_hits: bool,
    /// Subtract log(expected count) from every logit.
    pub subtract_log_q: bool,
    /// Focal loss's γ (0: the plain loss).
    pub focal_gamma: f64,
}

/// Rows of a gradient over a subset of classes: `indices` sorted and unique, `values` row-major
/// `[indices.len(), width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseGrad<T> {
    /// The classes, sorted and unique.
    pub indices: Vec<i64>,
    /// Their gradient rows, row-major.
    pub values: Vec<T>,
}

/// The loss per row and the gradients of `Σ_b grad_loss[b] · loss[b]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LossAndGrad<T> {
    /// `[B]`.
    pub loss: Vec<T>,
    /// `[B, d]`.
    pub grad_inputs: Vec<T>,
    /// Values `[U, d]`.
    pub grad_weights: SparseGrad<T>,
    /// Values `[U]` over the same indices; none without biases.
    pub grad_biases: Option<SparseGrad<T>>,
}

/// The sizes of a validated call, and what it derives from its arguments once.
pub(super) struct Dims {
    pub(super) b: usize,
    pub(super) d: usize,
    /// Candidates per row (shared or not).
    pub(super) s: usize,
    /// ln of the expected counts (zeros without `subtract_log_q`), true `[B, T]` and sampled.
    pub(super) lq_true: Vec<f64>,
    pub(super) lq_sampled: Vec<f64>,
    /// The memory budgets of the shared-candidate path.
    pub(super) budgets: Budgets,
}

/// Validate a call (every argument, before anything large is allocated) and derive its [`Dims`].
pub(super) fn check<T: Float, W: Stored<T>>(
    a: &Args<'_, T, W>,
    grad_loss: Option<&[T]>,
    budgets: Budgets,
) -> Result<Dims> {
    a.weights.validate_weights()?;
    let (v, d) = (a.weights.rows, a.weights.cols);
    if a.num_true == 0 {
        return Err(Error::value("num_true", "must be >= 1"));
    }
    if a.labels.is_empty() {
        return Err(Error::value("labels", "the batch is empty"));
    }
    if !a.labels.len().is_multiple_of(a.num_true) {
        return Err(Error::shape(
            "labels",
            format!("length {} is not a multiple of num_true {}", a.labels.len(), a.num_true),
        ));
    }
    let b = a.labels.len() / a.num_true;
    if a.inputs.len() != b.saturating_mul(d) {
        return Err(Error::shape(
            "inputs",
            format!(
                "has {} elements, expected [{b}, {d}] (labels rows × the columns of weights)",
                a.inputs.len()
            ),
        ));
    }
    if let Some(bias) = a.biases {
        if bias.len() != v {
            return Err(Error::shape(
                "biases",
                format!("has length {} but weights has {v} rows", bias.len()),
            ));
        }
    }
    let s = if a.per_row {
        if a.sampled.is_empty() || !a.sampled.len().is_multiple_of(b) {
            return Err(Error::shape(
                "sampled_values",
                format!("per-row candidates: {} ids for {b} rows", a.sampled.len()),
            ));
        }
        a.sampled.len() / b
    } else {
        if a.sampled.is_empty() {
            return Err(Error::value("sampled_values", "no candidates"));
        }
        a.sampled.len()
    };
    if a.sampled_expected.len() != a.sampled.len() {
        return Err(Error::shape(
            "sampled_values",
            format!(
                "sampled_expected_count has {} elements but there are {} candidates",
                a.sampled_expected.len(),
                a.sampled.len()
            ),
        ));
    }
    if a.true_expected.len() != a.labels.len() {
        return Err(Error::shape(
            "sampled_values",
            format!(
                "true_expected_count has {} elements, expected [{b}, {}]",
                a.true_expected.len(),
                a.num_true
            ),
        ));
    }
    for (arg, ids) in [("labels", a.labels), ("sampled_values", a.sampled)] {
        if let Some(&id) = ids.iter().find(|&&id| id < 0 || id as u64 >= v as u64) {
            return Err(Error::IdOutOfRange { arg, id, range_max: v as u64 });
        }
    }
    if let Some(i) = a.inputs.iter().position(|x| !x.is_finite()) {
        return Err(Error::value("inputs", format!("element [{}, {}] is not finite", i / d, i % d)));
    }
    if !(a.focal_gamma >= 0.0 && a.focal_gamma.is_finite()) {
        return Err(Error::value("focal_gamma", format!("must be finite and >= 0, got {}", a.focal_gamma)));
    }
    if let Some(c) = grad_loss {
        if c.len() != b {
            return Err(Error::shape(
                "grad_loss",
                format!("has {} elements but the batch has {b} rows", c.len()),
            ));
        }
        if c.iter().any(|x| !x.is_finite()) {
            return Err(Error::value("grad_loss", "must be finite"));
        }
    }
    let log_q = |q: &[T]| -> Result<Vec<f64>> {
        if !a.subtract_log_q {
            return Ok(vec![0.0; q.len()]);
        }
        q.iter()
            .map(|&x| {
                if x > T::ZERO && x.is_finite() {
                    Ok(x.ln().to_f64())
                } else {
                    Err(Error::value(
                        "sampled_values",
                        format!("expected counts must be positive and finite to take their log, got {x:?}"),
                    ))
                }
            })
            .collect()
    };
    crate::buf::ensure_memory("num_sampled", work_bytes::<T, W>(a, b, s, d, grad_loss.is_some(), &budgets))?;
    Ok(Dims { b, d, s, lq_true: log_q(a.true_expected)?, lq_sampled: log_q(a.sampled_expected)?, budgets })
}

/// An upper bound of the bytes a call allocates besides its arguments (checked before anything large is
/// allocated: the buffers come zeroed from the OS, so an impossible size would otherwise be found out
/// only by the OOM killer while they are written).
fn work_bytes<T, W>(a: &Args<'_, T, W>, b: usize, s: usize, d: usize, grad: bool, budgets: &Budgets) -> u128 {
    let (b, s, d, nt) = (b as u128, s as u128, d as u128, a.num_true as u128);
    let sz = std::mem::size_of::<T>() as u128;
    let cand = if a.per_row { b * s } else { s };
    // ln q of every column (f64), the true logits.
    let mut n = (cand + b * nt) * 8 + b * nt * sz;
    n += if a.per_row {
        // Each worker thread's gathered rows and logits.
        threads::num_threads() as u128 * (s * d + s + d) * sz
    } else {
        // The gathered rows of every block, and the kept logits with the blocks' pieces of dL/dx: the
        // rows of one chunk (`shared`: as many rows as fit the budget, at least one, at most the batch).
        // Counting the whole budget instead made every call, however small, read the system's memory
        // limits from /proc (`ensure_memory`), about 0.1 ms.
        let nblocks = s.div_ceil((super::BLOCK_BYTES as u128 / sz).max(1));
        let per_row = (s + nblocks * d) * sz;
        s * d * sz + (b * per_row).min((budgets.logit_bytes as u128).max(per_row))
    };
    if grad {
        // dL/dx; the shared path's weight-row gradients per block; the per-row path's dL/dz;
        // the sparse gradients: ids, their sort order and at most one row per entry.
        n += b * d * sz + if a.per_row { cand * sz } else { s * d * sz };
        n += (cand + b * nt) * (8 + 16 + d * sz + sz);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::tests::{args, problem};
    use super::super::{loss, loss_and_grad};
    use super::*;

    #[test]
    fn work_bytes_counts_the_logits_a_call_keeps_not_the_whole_budget() {
        // Shared candidates, B = S = 1024, d = 128, float32: a few MiB of work, far below the size at which
        // `ensure_memory` reads the system's limits (it used to count the whole 256 MiB logit budget).
        let (b, s, d) = (1024usize, 1024usize, 128usize);
        let w = vec![0f32; 4 * d];
        let (labels, x, sampled) = (vec![0i64; b], vec![0f32; b * d], vec![0i64; s]);
        let (te, se) = (vec![1f32; b], vec![1f32; s]);
        let a = Args {
            kind: Kind::SampledSoftmax,
            weights: Mat::contiguous(&w, 4, d),
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
        let small = work_bytes(&a, b, s, d, true, &Budgets::DEFAULT);
        assert!(small < 16 << 20, "{small}");
        // A batch whose logits exceed the budget is cut into chunks: at most the budget (plus one row) is
        // counted for them, and at least the gathered candidate rows.
        let (bb, ss) = (1usize << 20, 1usize << 16);
        let big = work_bytes(&a, bb, ss, d, false, &Budgets::DEFAULT);
        let budget = Budgets::DEFAULT.logit_bytes as u128;
        let rows = (ss * d * 4) as u128;
        assert!(big > rows + budget / 2 && big < rows + budget + (16 << 20), "{big}");
    }

    #[test]
    fn bad_input_is_an_error_naming_the_argument() {
        let p = problem(false);
        let a = args(&p, Kind::SampledSoftmax, false, 0.0);
        let mut bad = p.labels.clone();
        bad[3] = 11;
        let e = loss(&Args { labels: &bad, ..a }).unwrap_err();
        assert_eq!(e.arg(), "labels");
        let e = loss(&Args { inputs: &p.x[1..], ..a }).unwrap_err();
        assert_eq!(e.arg(), "inputs");
        let e = loss(&Args { biases: Some(&p.bias[1..]), ..a }).unwrap_err();
        assert_eq!(e.arg(), "biases");
        let mut nan = p.x.clone();
        nan[2] = f64::NAN;
        assert_eq!(loss(&Args { inputs: &nan, ..a }).unwrap_err().arg(), "inputs");
        let mut w = p.w.clone();
        w[8 * p.d] = f64::INFINITY; // row 8 is a candidate
        let e = loss(&Args { weights: Mat::contiguous(&w, p.v, p.d), ..a }).unwrap_err();
        assert_eq!(e.arg(), "weights");
        let e = loss(&Args { sampled_expected: &p.se[1..], ..a }).unwrap_err();
        assert_eq!(e.arg(), "sampled_values");
        let zero = vec![0.0; p.se.len()];
        assert_eq!(loss(&Args { sampled_expected: &zero, ..a }).unwrap_err().arg(), "sampled_values");
        // x·w overflows: five terms of 1e308 each.
        let (big, ones) = (vec![1e308; p.x.len()], vec![1.0; p.w.len()]);
        let e = loss(&Args { inputs: &big, weights: Mat::contiguous(&ones, p.v, p.d), ..a }).unwrap_err();
        assert_eq!(e.arg(), "inputs");
        assert!(loss_and_grad(&a, Some(&[1.0])).is_err());
    }
}
