//! Binding of the sampled softmax and NCE losses (`crate::loss::sampled`). The Python layer
//! (`python/zipfnce/_losses.py`) has already checked shapes and converted every float argument to the dtype
//! of `weights`; this file borrows the arrays, releases the GIL and returns NumPy arrays.
//! Half-precision tables (`storage` "bfloat16" / "float16") arrive as `uint16` views: the weights and biases
//! are read in place (rows widened to f32 as they are gathered), `inputs` is float32 or the same half type
//! (widened as it is copied), the other float arguments float32; the loss is float32 and the gradients are
//! narrowed back to the storage of their argument.

use super::half::{self, Half, Store};
use super::{check_aligned, err, to_vec, to_vec2};
use crate::buf::ensure_memory;
use crate::error::Error;
use crate::float::Float;
use crate::loss::sampled::{self, Args, Kind};
use crate::loss::tile::Mat;
use numpy::ndarray::{Array1, Array2};
use numpy::{
    IntoPyArray, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::borrow::Cow;

/// `a` as an aligned array of element `T` (named `name` in the error), or the error naming `arg`.
fn typed_as<'a, 'py, T: numpy::Element>(
    a: &'a Bound<'py, PyAny>,
    arg: &'static str,
    name: &str,
) -> PyResult<&'a Bound<'py, PyArrayDyn<T>>> {
    let a = a.cast::<PyArrayDyn<T>>().map_err(|_| err(Error::ty(arg, format!("expected a {name} array"))))?;
    check_aligned(a.is_aligned(), arg)?;
    Ok(a)
}

/// `a` as an aligned array of the call's float type, or the error naming `arg`.
fn typed<'a, 'py, T: numpy::Element + crate::float::Float>(
    a: &'a Bound<'py, PyAny>,
    arg: &'static str,
) -> PyResult<&'a Bound<'py, PyArrayDyn<T>>> {
    let a = a
        .cast::<PyArrayDyn<T>>()
        .map_err(|_| err(Error::ty(arg, format!("expected a {} array", T::NAME))))?;
    check_aligned(a.is_aligned(), arg)?;
    Ok(a)
}

/// The elements of an array of the call's float type, in C order (a copy; used for the small arrays).
fn small<T: numpy::Element + crate::float::Float>(
    a: &Bound<'_, PyAny>,
    arg: &'static str,
) -> PyResult<Vec<T>> {
    let a = typed::<T>(a, arg)?;
    // The copy below is infallible: a view that is far larger than its memory (np.broadcast_to) must be
    // refused here rather than abort or be OOM-killed while being copied.
    ensure_memory(arg, a.len() as u128 * std::mem::size_of::<T>() as u128).map_err(err)?;
    Ok(to_vec(&a.readonly()))
}

/// The arguments of a call other than `weights`, as the binding received them.
struct Call<'a, 'py> {
    kind: Kind,
    biases: Option<&'a Bound<'py, PyAny>>,
    labels: &'a PyReadonlyArray2<'py, i64>,
    inputs: &'a Bound<'py, PyAny>,
    sampled: &'a PyReadonlyArrayDyn<'py, i64>,
    true_expected: &'a Bound<'py, PyAny>,
    sampled_expected: &'a Bound<'py, PyAny>,
    /// remove_accidental_hits, subtract_log_q, focal_gamma.
    flags: (bool, bool, f64),
    /// None: loss only; Some(grad_loss): loss and gradients.
    grad: Option<Option<&'a Bound<'py, PyAny>>>,
    /// `num_hard_negatives` (sampled softmax only; `crate::loss::sampled::hard_loss`).
    hard: Option<usize>,
}

/// `inputs` in the compute type: float `T` as given, or (for a half-precision table) the table's half type,
/// widened as it is copied. Also says whether it was half, so that its gradient goes back narrowed.
fn inputs_of<T: Float + numpy::Element, W: Store<T>>(
    inputs: &Bound<'_, PyAny>,
    half: bool,
) -> PyResult<(Vec<T>, bool)> {
    if half && inputs.cast::<PyArrayDyn<W::Np>>().is_ok() {
        let a = typed_as::<W::Np>(inputs, "inputs", W::STORAGE)?;
        ensure_memory("inputs", a.len() as u128 * 4).map_err(err)?;
        let ro = a.readonly();
        let v: Vec<W::Np> = to_vec(&ro);
        return Ok((W::widen_vec(&v), true));
    }
    Ok((small::<T>(inputs, "inputs")?, false))
}

fn run<'py, T: Float + numpy::Element, W: Store<T>>(
    py: Python<'py>,
    weights: &Bound<'py, PyArray2<W::Np>>,
    call: &Call<'_, 'py>,
    half: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let Call { kind, biases, labels, inputs, sampled, true_expected, sampled_expected, flags, grad, hard } =
        *call;
    check_aligned(weights.is_aligned(), "weights")?;
    check_aligned(labels.is_aligned(), "labels")?;
    check_aligned(sampled.is_aligned(), "sampled_values")?;
    ensure_memory("labels", labels.len() as u128 * 8).map_err(err)?;
    ensure_memory("sampled_values", sampled.len() as u128 * 8).map_err(err)?;
    let w = weights.readonly();
    let (rows, cols) = (w.shape()[0], w.shape()[1]);
    let item = std::mem::size_of::<W::Np>() as isize;
    let st = w.strides();
    if st.iter().any(|&s| s < 0 || s % item != 0) {
        return Err(err(Error::value("weights", "needs non-negative strides that are whole elements")));
    }
    let (rs, cs) = ((st[0] / item) as usize, (st[1] / item) as usize);
    let span = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
    let data: &[W::Np] = if span == 0 {
        &[]
    } else {
        // SAFETY: `w` is a read-only borrow of an aligned array whose strides are non-negative whole
        // elements (checked above), so every element (i, j) lies at `ptr + i*rs + j*cs`, and the `span`
        // elements from `ptr` lie inside the array's buffer. The borrow outlives every use of `data`.
        unsafe { std::slice::from_raw_parts(w.as_array().as_ptr(), span) }
    };
    let weights = Mat { data: W::from_np(data), rows, cols, row_stride: rs, col_stride: cs };
    // Biases ([V], as large as a column of the weights) are read in place like the weights, unless they
    // are strided (then copied).
    let biases_ro =
        biases.map(|b| typed_as::<W::Np>(b, "biases", W::STORAGE).map(|a| a.readonly())).transpose()?;
    let biases: Option<Cow<'_, [W::Np]>> = match &biases_ro {
        Some(r) => Some(match r.as_slice() {
            Ok(s) if r.is_c_contiguous() => Cow::Borrowed(s),
            _ => {
                ensure_memory("biases", r.len() as u128 * std::mem::size_of::<W::Np>() as u128)
                    .map_err(err)?;
                Cow::Owned(to_vec(r))
            }
        }),
        None => None,
    };
    let biases: Option<&[W]> = biases.as_deref().map(W::from_np);
    let (inputs, inputs_half) = inputs_of::<T, W>(inputs, half)?;
    let te = small::<T>(true_expected, "sampled_values")?;
    let se = small::<T>(sampled_expected, "sampled_values")?;
    let num_true = labels.shape()[1];
    let labels_v = to_vec2(labels);
    let per_row = sampled.ndim() == 2;
    let sampled_v = to_vec(sampled);
    let grad_loss = match grad {
        Some(Some(g)) => Some(small::<T>(g, "grad_loss")?),
        _ => None,
    };
    let (hits, log_q, gamma) = flags;
    let args = Args {
        kind,
        weights,
        biases,
        labels: &labels_v,
        num_true,
        inputs: &inputs,
        sampled: &sampled_v,
        per_row,
        true_expected: &te,
        sampled_expected: &se,
        remove_accidental_hits: hits,
        subtract_log_q: log_q,
        focal_gamma: gamma,
    };
    let b = labels.shape()[0];
    if grad.is_none() {
        let loss = match hard {
            Some(h) => py.detach(|| sampled::hard_loss(&args, h)),
            None => py.detach(|| sampled::loss(&args)),
        }
        .map_err(err)?;
        return (Array1::from_vec(loss).into_pyarray(py),).into_pyobject(py);
    }
    let out = match hard {
        Some(h) => py.detach(|| sampled::hard_loss_and_grad(&args, h, grad_loss.as_deref())),
        None => py.detach(|| sampled::loss_and_grad(&args, grad_loss.as_deref())),
    }
    .map_err(err)?;
    let u = out.grad_weights.indices.len();
    let shape_err = |e: numpy::ndarray::ShapeError| PyTypeError::new_err(e.to_string());
    let loss = Array1::from_vec(out.loss).into_pyarray(py);
    let gx = if inputs_half {
        let v = W::to_np(out.grad_inputs);
        Array2::from_shape_vec((b, cols), v).map_err(shape_err)?.into_pyarray(py).into_any()
    } else {
        Array2::from_shape_vec((b, cols), out.grad_inputs).map_err(shape_err)?.into_pyarray(py).into_any()
    };
    let gw_idx = Array1::from_vec(out.grad_weights.indices).into_pyarray(py);
    let gw_val = Array2::from_shape_vec((u, cols), W::to_np(out.grad_weights.values))
        .map_err(shape_err)?
        .into_pyarray(py);
    let (gb_idx, gb_val) = match out.grad_biases {
        Some(g) => (
            Array1::from_vec(g.indices).into_pyarray(py).into_any(),
            Array1::from_vec(W::to_np(g.values)).into_pyarray(py).into_any(),
        ),
        None => (py.None().into_bound(py), py.None().into_bound(py)),
    };
    (loss, gx, gw_idx, gw_val, gb_idx, gb_val).into_pyobject(py)
}

/// The sampled softmax (`nce=False`) or NCE loss. Returns `(loss,)`, or with `want_grad`
/// `(loss, grad_inputs, grad_weight_ids, grad_weight_rows, grad_bias_ids | None, grad_bias_values | None)`.
/// `storage` "bfloat16" / "float16": `weights` and `biases` are `uint16` views of that type (read in place),
/// `inputs` float32 or the same view, the other floats float32; gradients come back in their argument's type.
/// `num_hard_negatives`: keep each row's true classes and its that many largest candidate logits.
#[pyfunction]
#[pyo3(signature = (nce, weights, biases, labels, inputs, sampled, true_expected, sampled_expected,
    remove_accidental_hits, subtract_log_q, focal_gamma, want_grad, grad_loss=None, storage=None,
    num_hard_negatives=None))]
#[allow(clippy::too_many_arguments)]
fn sampled_loss<'py>(
    py: Python<'py>,
    nce: bool,
    weights: &Bound<'py, PyAny>,
    biases: Option<&Bound<'py, PyAny>>,
    labels: PyReadonlyArray2<'py, i64>,
    inputs: &Bound<'py, PyAny>,
    sampled: PyReadonlyArrayDyn<'py, i64>,
    true_expected: &Bound<'py, PyAny>,
    sampled_expected: &Bound<'py, PyAny>,
    remove_accidental_hits: bool,
    subtract_log_q: bool,
    focal_gamma: f64,
    want_grad: bool,
    grad_loss: Option<&Bound<'py, PyAny>>,
    storage: Option<&str>,
    num_hard_negatives: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let storage = half::parse(storage)?;
    let call = Call {
        kind: if nce { Kind::Nce } else { Kind::SampledSoftmax },
        biases,
        labels: &labels,
        inputs,
        sampled: &sampled,
        true_expected,
        sampled_expected,
        flags: (remove_accidental_hits, subtract_log_q, focal_gamma),
        grad: want_grad.then_some(grad_loss),
        hard: num_hard_negatives,
    };
    if let Some(h) = storage {
        let w = weights.cast::<PyArray2<u16>>().map_err(|_| {
            err(Error::ty("weights", "a half-precision table must arrive as a 2-D uint16 view"))
        })?;
        return match h {
            Half::Bf16 => run::<f32, crate::float::Bf16>(py, w, &call, true),
            Half::F16 => run::<f32, crate::float::F16>(py, w, &call, true),
        };
    }
    if let Ok(w) = weights.cast::<PyArray2<f32>>() {
        run::<f32, f32>(py, w, &call, false)
    } else if let Ok(w) = weights.cast::<PyArray2<f64>>() {
        run::<f64, f64>(py, w, &call, false)
    } else {
        Err(err(Error::ty("weights", "expected a 2-D float32 or float64 array")))
    }
}

/// Add this file's functions to the native module.
pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sampled_loss, m)?)?;
    Ok(())
}
