//! Binding of InfoNCE with hard-negative mining (`crate::loss::infonce::info_nce_hard`; the sampled softmax's
//! option goes through `sampled_loss` in `loss.rs`). As for `infonce.rs`, `python/zipfnce/_infonce.py` has already converted
//! every float argument to the dtype of `query`, the ids to int64 and the arrays to C order.

use super::{array2, check_aligned, err};
use crate::float::Float;
use crate::loss::infonce::{self, Options};
use crate::loss::tile::Mat;
use numpy::ndarray::Array1;
use numpy::{Element, IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(info_nce_hard, m)?)?;
    Ok(())
}

fn as2<'py, T: Element>(a: &Bound<'py, PyAny>, arg: &'static str) -> PyResult<PyReadonlyArray2<'py, T>> {
    let a = a.extract::<PyReadonlyArray2<'py, T>>().map_err(|_| {
        PyTypeError::new_err(format!("{arg}: expected a 2-D {} array", std::any::type_name::<T>()))
    })?;
    check_aligned(a.is_aligned() && a.is_c_contiguous(), arg)?;
    Ok(a)
}

fn as1<'py, T: Element>(
    a: Option<&Bound<'py, PyAny>>,
    arg: &'static str,
) -> PyResult<Option<PyReadonlyArray1<'py, T>>> {
    a.map(|a| {
        let a = a.extract::<PyReadonlyArray1<'py, T>>().map_err(|_| {
            PyTypeError::new_err(format!("{arg}: expected a 1-D {} array", std::any::type_name::<T>()))
        })?;
        check_aligned(a.is_aligned() && a.is_c_contiguous(), arg)?;
        Ok(a)
    })
    .transpose()
}

fn sl<'a, T: Element>(a: &'a Option<PyReadonlyArray1<'_, T>>) -> PyResult<Option<&'a [T]>> {
    a.as_ref().map(|a| a.as_slice().map_err(|e| PyTypeError::new_err(e.to_string()))).transpose()
}

/// The arguments after dtype dispatch (floats still untyped).
struct Args<'a, 'py> {
    query: &'a Bound<'py, PyAny>,
    keys: &'a Bound<'py, PyAny>,
    negatives: Option<&'a Bound<'py, PyAny>>,
    key_log_q: Option<&'a Bound<'py, PyAny>>,
    negative_log_q: Option<&'a Bound<'py, PyAny>>,
    key_ids: Option<&'a Bound<'py, PyAny>>,
    negative_ids: Option<&'a Bound<'py, PyAny>>,
    grad_loss: Option<&'a Bound<'py, PyAny>>,
    temperature: f64,
    focal_gamma: f64,
    h: usize,
    want_grad: bool,
}

fn run<'py, T: Float + Element>(py: Python<'py>, a: Args<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
    let q = as2::<T>(a.query, "query")?;
    let k = as2::<T>(a.keys, "keys")?;
    let n = a.negatives.map(|x| as2::<T>(x, "negatives")).transpose()?;
    let kq = as1::<T>(a.key_log_q, "key_log_q")?;
    let nq = as1::<T>(a.negative_log_q, "negative_log_q")?;
    let gl = as1::<T>(a.grad_loss, "grad_loss")?;
    let kid = as1::<i64>(a.key_ids, "key_ids")?;
    let nid = as1::<i64>(a.negative_ids, "negative_ids")?;
    let (b, d) = (q.shape()[0], q.shape()[1]);
    let kshape = (k.shape()[0], k.shape()[1]);
    let nshape = n.as_ref().map(|n| (n.shape()[0], n.shape()[1]));
    // Every array is borrowed in place (C order and alignment checked above).
    let qs = q.as_slice().map_err(|e| PyTypeError::new_err(e.to_string()))?;
    let ks = k.as_slice().map_err(|e| PyTypeError::new_err(e.to_string()))?;
    let ns = match &n {
        Some(x) => Some(x.as_slice().map_err(|e| PyTypeError::new_err(e.to_string()))?),
        None => None,
    };
    let opts = Options {
        temperature: a.temperature,
        key_log_q: sl(&kq)?,
        negative_log_q: sl(&nq)?,
        key_ids: sl(&kid)?,
        negative_ids: sl(&nid)?,
        focal_gamma: a.focal_gamma,
        ..Options::default()
    };
    let glv = sl(&gl)?;
    let query = Mat::new(qs, b, d);
    let keys = Mat::new(ks, kshape.0, kshape.1);
    let negatives = ns.zip(nshape).map(|(v, (r, c))| Mat::new(v, r, c));
    let (h, want) = (a.h, a.want_grad);
    let g = py.detach(|| infonce::info_nce_hard(query, keys, negatives, &opts, h, glv, want)).map_err(err)?;
    let loss = Array1::from_vec(g.loss).into_pyarray(py);
    if !want {
        return Ok(loss.into_any());
    }
    let gq = array2(py, g.grad_query, b, d)?;
    let gk = array2(py, g.grad_keys, b, d)?;
    let gn: Bound<'py, PyAny> = match (g.grad_negatives, nshape) {
        (Some(v), Some((r, _))) => array2(py, v, r, d)?.into_any(),
        _ => py.None().into_bound(py),
    };
    let t: Bound<'py, PyTuple> = (loss, gq, gk, gn).into_pyobject(py)?;
    Ok(t.into_any())
}

/// InfoNCE with hard-negative mining (`num_hard_negatives`): float32 or float64 by the dtype of `query`;
/// every other float argument must already have that dtype and be C-contiguous. Returns `loss` or `(loss,
/// grad_query, grad_keys, grad_negatives or None)`.
#[pyfunction]
#[pyo3(signature = (query, keys, negatives, temperature, key_log_q, negative_log_q, key_ids, negative_ids,
                    focal_gamma, num_hard_negatives, grad_loss, want_grad))]
#[allow(clippy::too_many_arguments)]
fn info_nce_hard<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    keys: &Bound<'py, PyAny>,
    negatives: Option<&Bound<'py, PyAny>>,
    temperature: f64,
    key_log_q: Option<&Bound<'py, PyAny>>,
    negative_log_q: Option<&Bound<'py, PyAny>>,
    key_ids: Option<&Bound<'py, PyAny>>,
    negative_ids: Option<&Bound<'py, PyAny>>,
    focal_gamma: f64,
    num_hard_negatives: usize,
    grad_loss: Option<&Bound<'py, PyAny>>,
    want_grad: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let args = Args {
        query,
        keys,
        negatives,
        key_log_q,
        negative_log_q,
        key_ids,
        negative_ids,
        grad_loss,
        temperature,
        focal_gamma,
        h: num_hard_negatives,
        want_grad,
    };
    if query.cast::<PyArray2<f32>>().is_ok() {
        run::<f32>(py, args)
    } else if query.cast::<PyArray2<f64>>().is_ok() {
        run::<f64>(py, args)
    } else {
        Err(PyTypeError::new_err("query: expected a 2-D float32 or float64 array"))
    }
}
