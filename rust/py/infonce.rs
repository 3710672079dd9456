//! Binding of the InfoNCE loss (`rust/loss/infonce.rs`). `python/zipfnce/_infonce.py` has already converted
//! every float argument to the dtype of `query` (float32 or float64), the ids to int64 and the arrays to C
//! order, so this file only borrows them, releases the GIL and hands them to the core.
//! Half precision (`storage` "bfloat16" / "float16"): `query`, `keys` and `negatives` arrive as `uint16` views
//! of that type and are widened to float32 as they are copied in (they are batch-sized operands, not a class
//! table); the loss is float32 and the gradients are narrowed back to the storage type.

use super::half::{self, Half, Store};
use super::views::{as1, as2, view1, view2};
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
    m.add_function(wrap_pyfunction!(info_nce, m)?)?;
    m.add("INFO_NCE_MAX_LOGITS_BYTES", infonce::DEFAULT_MAX_LOGITS_BYTES)?;
    Ok(())
}

/// The arguments after dtype dispatch (floats still untyped).
struct Args<'a, 'py> {
    query: &'a Bound<'py, PyAny>,
    keys: &'a Bound<'py, PyAny>,
    negatives: Option<&'a Bound<'py, PyAny>>,
    key_log_q: Option<&'a Bound<'py, PyAny>>,
    negative_log_q: Option<&'a Bound<'py, PyAny>>,
    key_ids: Option<PyReadonlyArray1<'py, i64>>,
    negative_ids: Option<PyReadonlyArray1<'py, i64>>,
    grad_loss: Option<&'a Bound<'py, PyAny>>,
    temperature: f64,
    symmetric: bool,
    focal_gamma: f64,
    want_grad: bool,
    max_logits_bytes: usize,
}

fn run<'py, T: Float + Element>(py: Python<'py>, a: Args<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
    let q = as2::<T>(a.query, "query")?;
    let k = as2::<T>(a.keys, "keys")?;
    let n = a.negatives.map(|x| as2::<T>(x, "negatives")).transpose()?;
    let kq = as1::<T>(a.key_log_q, "key_log_q")?;
    let nq = as1::<T>(a.negative_log_q, "negative_log_q")?;
    let gl = as1::<T>(a.grad_loss, "grad_loss")?;
    // A slice over a misaligned pointer is undefined behaviour (the Python layer copies such views first).
    check_aligned(q.is_aligned(), "query")?;
    check_aligned(k.is_aligned(), "keys")?;
    check_aligned(n.as_ref().is_none_or(|x| x.is_aligned()), "negatives")?;
    check_aligned(kq.as_ref().is_none_or(|x| x.is_aligned()), "key_log_q")?;
    check_aligned(nq.as_ref().is_none_or(|x| x.is_aligned()), "negative_log_q")?;
    check_aligned(gl.as_ref().is_none_or(|x| x.is_aligned()), "grad_loss")?;
    check_aligned(a.key_ids.as_ref().is_none_or(|x| x.is_aligned()), "key_ids")?;
    check_aligned(a.negative_ids.as_ref().is_none_or(|x| x.is_aligned()), "negative_ids")?;
    let (b, d) = (q.shape()[0], q.shape()[1]);
    let kshape = (k.shape()[0], k.shape()[1]);
    let nshape = n.as_ref().map(|n| (n.shape()[0], n.shape()[1]));
    let (qv, kv) = (view2(&q), view2(&k));
    let nv = n.as_ref().map(view2);
    let (kqv, nqv, glv) = (view1(&kq), view1(&nq), view1(&gl));
    let (kid, nid) = (view1(&a.key_ids), view1(&a.negative_ids));
    let opts = Options {
        temperature: a.temperature,
        key_log_q: kqv.as_deref(),
        negative_log_q: nqv.as_deref(),
        key_ids: kid.as_deref(),
        negative_ids: nid.as_deref(),
        symmetric: a.symmetric,
        focal_gamma: a.focal_gamma,
        max_logits_bytes: a.max_logits_bytes,
    };
    let query = Mat::new(&qv[..], b, d);
    let keys = Mat::new(&kv[..], kshape.0, kshape.1);
    let negatives = nv.as_deref().zip(nshape).map(|(v, (r, c))| Mat::new(v, r, c));
    if !a.want_grad {
        let loss = py.detach(|| infonce::info_nce_loss(query, keys, negatives, &opts)).map_err(err)?;
        return Ok(Array1::from_vec(loss).into_pyarray(py).into_any());
    }
    let g = py
        .detach(|| infonce::info_nce_loss_and_grad(query, keys, negatives, &opts, glv.as_deref()))
        .map_err(err)?;
    let loss = Array1::from_vec(g.loss).into_pyarray(py);
    let gq = array2(py, g.grad_query, b, d)?;
    let gk = array2(py, g.grad_keys, b, d)?;
    let gn: Bound<'py, PyAny> = match (g.grad_negatives, nshape) {
        (Some(v), Some((r, _))) => array2(py, v, r, d)?.into_any(),
        _ => py.None().into_bound(py),
    };
    let t: Bound<'py, PyTuple> = (loss, gq, gk, gn).into_pyobject(py)?;
    Ok(t.into_any())
}

/// A half-precision call: the embeddings widened to float32 arrays, the float32 call, its gradients
/// narrowed back to the storage type `W`.
fn run_half<'py, W: Store<f32, Np = u16>>(py: Python<'py>, a: Args<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
    let wide = |x: &Bound<'py, PyAny>, arg: &'static str| -> PyResult<Bound<'py, PyAny>> {
        let h = as2::<u16>(x, arg)?;
        check_aligned(h.is_aligned(), arg)?;
        let (r, c) = (h.shape()[0], h.shape()[1]);
        Ok(array2(py, W::widen_vec(&view2(&h)), r, c)?.into_any())
    };
    let (q, k) = (wide(a.query, "query")?, wide(a.keys, "keys")?);
    let n = a.negatives.map(|x| wide(x, "negatives")).transpose()?;
    let want_grad = a.want_grad;
    let out = run::<f32>(py, Args { query: &q, keys: &k, negatives: n.as_ref(), ..a })?;
    if !want_grad {
        return Ok(out);
    }
    let narrow = |g: Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
        if g.is_none() {
            return Ok(g);
        }
        let g = g.extract::<PyReadonlyArray2<'py, f32>>()?;
        let (r, c) = (g.shape()[0], g.shape()[1]);
        Ok(array2(py, W::to_np(view2(&g).into_owned()), r, c)?.into_any())
    };
    let (loss, gq, gk, gn): (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>) =
        out.extract()?;
    let t: Bound<'py, PyTuple> = (loss, narrow(gq)?, narrow(gk)?, narrow(gn)?).into_pyobject(py)?;
    Ok(t.into_any())
}

/// InfoNCE loss (and gradients with `want_grad`): float32 or float64 by the dtype of `query`; every other
/// float argument must already have that dtype. Returns `loss` or `(loss, grad_query, grad_keys,
/// grad_negatives or None)`. `storage` "bfloat16" / "float16": the embeddings are `uint16` views of that
/// type, every other float argument float32; the loss is float32, the gradients come back as such views.
#[pyfunction]
#[pyo3(signature = (query, keys, negatives, temperature, key_log_q, negative_log_q, key_ids, negative_ids,
                    symmetric, focal_gamma, grad_loss, want_grad, max_logits_bytes, storage=None))]
#[allow(clippy::too_many_arguments)]
fn info_nce<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    keys: &Bound<'py, PyAny>,
    negatives: Option<&Bound<'py, PyAny>>,
    temperature: f64,
    key_log_q: Option<&Bound<'py, PyAny>>,
    negative_log_q: Option<&Bound<'py, PyAny>>,
    key_ids: Option<PyReadonlyArray1<'py, i64>>,
    negative_ids: Option<PyReadonlyArray1<'py, i64>>,
    symmetric: bool,
    focal_gamma: f64,
    grad_loss: Option<&Bound<'py, PyAny>>,
    want_grad: bool,
    max_logits_bytes: usize,
    storage: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let storage = half::parse(storage)?;
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
        symmetric,
        focal_gamma,
        want_grad,
        max_logits_bytes,
    };
    if let Some(h) = storage {
        return match h {
            Half::Bf16 => run_half::<crate::float::Bf16>(py, args),
            Half::F16 => run_half::<crate::float::F16>(py, args),
        };
    }
    if query.cast::<PyArray2<f32>>().is_ok() {
        run::<f32>(py, args)
    } else if query.cast::<PyArray2<f64>>().is_ok() {
        run::<f64>(py, args)
    } else {
        Err(PyTypeError::new_err("query: expected a 2-D float32 or float64 array"))
    }
}
