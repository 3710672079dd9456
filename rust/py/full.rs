//! Binding of the exact full softmax (`rust/loss/full.rs`). `python/zipfnce/_full.py` has already converted
//! every float argument to the dtype of `weights` (float32 or float64), the labels to a C-ordered int64
//! `[B, num_true]` array and the arrays to C order, so this file only borrows them, releases the GIL and
//! hands them to the core.

use super::views::{as1, as2, view1, view2};
use super::{array2, check_aligned, err};
use crate::float::Float;
use crate::loss::full::{self, Options};
use crate::loss::tile::Mat;
use numpy::ndarray::Array1;
use numpy::{Element, IntoPyArray, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(full_softmax, m)?)?;
    m.add("FULL_SOFTMAX_MAX_LOGITS_BYTES", full::DEFAULT_MAX_LOGITS_BYTES)?;
    Ok(())
}

/// The arguments after dtype dispatch (floats still untyped).
struct Args<'a, 'py> {
    weights: &'a Bound<'py, PyAny>,
    biases: Option<&'a Bound<'py, PyAny>>,
    labels: PyReadonlyArray2<'py, i64>,
    inputs: &'a Bound<'py, PyAny>,
    ignore_index: Option<i64>,
    label_smoothing: f64,
    grad_loss: Option<&'a Bound<'py, PyAny>>,
    want_grad: bool,
    max_logits_bytes: usize,
}

fn run<'py, T: Float + Element>(py: Python<'py>, a: Args<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
    let w = as2::<T>(a.weights, "weights")?;
    let x = as2::<T>(a.inputs, "inputs")?;
    let bias = as1::<T>(a.biases, "biases")?;
    let gl = as1::<T>(a.grad_loss, "grad_loss")?;
    // A slice over a misaligned pointer is undefined behaviour (the Python layer copies such views first).
    check_aligned(w.is_aligned(), "weights")?;
    check_aligned(x.is_aligned(), "inputs")?;
    check_aligned(a.labels.is_aligned(), "labels")?;
    check_aligned(bias.as_ref().is_none_or(|t| t.is_aligned()), "biases")?;
    check_aligned(gl.as_ref().is_none_or(|t| t.is_aligned()), "grad_loss")?;
    let (v, d) = (w.shape()[0], w.shape()[1]);
    let (b, dx) = (x.shape()[0], x.shape()[1]);
    let k = a.labels.shape()[1];
    let (wv, xv, lv) = (view2(&w), view2(&x), view2(&a.labels));
    let (bv, glv) = (view1(&bias), view1(&gl));
    let opts = Options {
        biases: bv.as_deref(),
        ignore_index: a.ignore_index,
        label_smoothing: a.label_smoothing,
        max_logits_bytes: a.max_logits_bytes,
    };
    let weights = Mat::new(&wv[..], v, d);
    let inputs = Mat::new(&xv[..], b, dx);
    if !a.want_grad {
        let loss = py.detach(|| full::full_softmax_loss(weights, &lv, k, inputs, &opts)).map_err(err)?;
        return Ok(Array1::from_vec(loss).into_pyarray(py).into_any());
    }
    let g = py
        .detach(|| full::full_softmax_loss_and_grad(weights, &lv, k, inputs, &opts, glv.as_deref()))
        .map_err(err)?;
    let loss = Array1::from_vec(g.loss).into_pyarray(py);
    let gx = array2(py, g.grad_inputs, b, d)?;
    let gw = array2(py, g.grad_weights, v, d)?;
    let gb: Bound<'py, PyAny> = match g.grad_biases {
        Some(t) => Array1::from_vec(t).into_pyarray(py).into_any(),
        None => py.None().into_bound(py),
    };
    let t: Bound<'py, PyTuple> = (loss, gx, gw, gb).into_pyobject(py)?;
    Ok(t.into_any())
}

/// The exact softmax cross-entropy over every class (and its gradients with `want_grad`): float32 or
/// float64 by the dtype of `weights`; every other float argument must already have that dtype, `labels`
/// is int64 `[B, num_true]`. Returns `loss` or `(loss, grad_inputs, grad_weights, grad_biases or None)`.
#[pyfunction]
#[pyo3(signature = (weights, biases, labels, inputs, ignore_index, label_smoothing, grad_loss, want_grad,
                    max_logits_bytes))]
#[allow(clippy::too_many_arguments)]
fn full_softmax<'py>(
    py: Python<'py>,
    weights: &Bound<'py, PyAny>,
    biases: Option<&Bound<'py, PyAny>>,
    labels: PyReadonlyArray2<'py, i64>,
    inputs: &Bound<'py, PyAny>,
    ignore_index: Option<i64>,
    label_smoothing: f64,
    grad_loss: Option<&Bound<'py, PyAny>>,
    want_grad: bool,
    max_logits_bytes: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let args = Args {
        weights,
        biases,
        labels,
        inputs,
        ignore_index,
        label_smoothing,
        grad_loss,
        want_grad,
        max_logits_bytes,
    };
    if weights.cast::<PyArray2<f32>>().is_ok() {
        run::<f32>(py, args)
    } else if weights.cast::<PyArray2<f64>>().is_ok() {
        run::<f64>(py, args)
    } else {
        Err(PyTypeError::new_err("weights: expected a 2-D float32 or float64 array"))
    }
}
