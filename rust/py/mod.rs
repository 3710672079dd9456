//! The Python binding, and the only code that knows pyo3 or numpy. It converts arrays, releases the GIL
//! around the core's work and maps the core's errors to `ValueError` / `TypeError`. No math lives here.
//! Dtype coercion and argument normalisation happen in `python/zipfnce/`, so every array arriving here
//! already has the element type its signature names.

mod loss;

use crate::error::Error;
use crate::hits;
use crate::rng::{derive, mix64, os_seed};
use crate::sampler::{self, unigram, Distribution, LogUniform, Uniform, Unigram, Zipf};
use crate::threads;
use numpy::ndarray::{Array1, Array2, ArrayD, IxDyn};
use numpy::PyUntypedArrayMethods;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod infonce;

fn err(e: Error) -> PyErr {
    if e.is_type_error() {
        PyTypeError::new_err(e.to_string())
    } else {
        PyValueError::new_err(e.to_string())
    }
}

/// The elements of an array in C order: borrowed when contiguous, copied otherwise.
fn to_vec<T: numpy::Element + Copy>(a: &PyReadonlyArrayDyn<'_, T>) -> Vec<T> {
    match a.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => a.as_array().iter().copied().collect(),
    }
}

fn to_vec2<T: numpy::Element + Copy>(a: &PyReadonlyArray2<'_, T>) -> Vec<T> {
    match a.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => a.as_array().iter().copied().collect(),
    }
}

fn array2<T: numpy::Element>(
    py: Python<'_>,
    v: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'_, PyArray2<T>>> {
    let a = Array2::from_shape_vec((rows, cols), v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// The key of a stateless call with an explicit seed.
fn seed_key(seed: u64) -> u64 {
    derive(mix64(seed ^ 0x243f_6a88_85a3_08d3), 0)
}

/// A candidate sampler: a distribution plus the state of its random stream.
#[pyclass(frozen, module = "zipfnce._core")]
struct Sampler {
    dist: Arc<dyn Distribution>,
    kind: &'static str,
    /// Key of the sampler's own stream; call i without a seed uses `derive(base, i)`.
    base: u64,
    calls: AtomicU64,
}

impl Sampler {
    fn make(dist: Arc<dyn Distribution>, kind: &'static str, seed: Option<u64>) -> Self {
        let base = mix64(seed.unwrap_or_else(os_seed) ^ 0x1319_8a2e_0370_7344);
        Sampler { dist, kind, base, calls: AtomicU64::new(0) }
    }

    fn key(&self, seed: Option<u64>) -> u64 {
        match seed {
            Some(s) => seed_key(s),
            None => derive(self.base, self.calls.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

#[pymethods]
impl Sampler {
    #[staticmethod]
    #[pyo3(signature = (range_max, seed=None, tf_formula=false))]
    fn log_uniform(range_max: i64, seed: Option<u64>, tf_formula: bool) -> PyResult<Self> {
        let d = if tf_formula { LogUniform::tf(range_max) } else { LogUniform::new(range_max) };
        Ok(Self::make(Arc::new(d.map_err(err)?), "log_uniform", seed))
    }

    #[staticmethod]
    #[pyo3(signature = (range_max, seed=None))]
    fn uniform(range_max: i64, seed: Option<u64>) -> PyResult<Self> {
        Ok(Self::make(Arc::new(Uniform::new(range_max).map_err(err)?), "uniform", seed))
    }

    #[staticmethod]
    #[pyo3(signature = (range_max, exponent, seed=None))]
    fn zipf(py: Python<'_>, range_max: i64, exponent: f64, seed: Option<u64>) -> PyResult<Self> {
        let z = py.detach(|| Zipf::new(range_max, exponent)).map_err(err)?;
        Ok(Self::make(Arc::new(z), "zipf", seed))
    }

    /// P(k) ∝ weights[k] (float64, validated in the core).
    #[staticmethod]
    #[pyo3(signature = (weights, seed=None))]
    fn unigram(py: Python<'_>, weights: PyReadonlyArray1<'_, f64>, seed: Option<u64>) -> PyResult<Self> {
        let w = weights.as_array().to_vec();
        let u = py.detach(|| Unigram::from_weights(w, "unigrams")).map_err(err)?;
        Ok(Self::make(Arc::new(u), "unigram", seed))
    }

    /// TensorFlow's FixedUnigramSampler rules (see `Unigram::tf`).
    #[staticmethod]
    #[pyo3(signature = (unigrams, distortion, num_reserved_ids, num_shards, shard, float32, seed=None))]
    fn unigram_tf(
        py: Python<'_>,
        unigrams: PyReadonlyArray1<'_, f64>,
        distortion: f64,
        num_reserved_ids: i64,
        num_shards: i64,
        shard: i64,
        float32: bool,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let w = unigrams.as_array().to_vec();
        let u = py
            .detach(|| Unigram::tf(&w, distortion, num_reserved_ids, num_shards, shard, float32))
            .map_err(err)?;
        Ok(Self::make(Arc::new(u), "unigram", seed))
    }

    #[getter]
    fn range_max(&self) -> u64 {
        self.dist.range_max()
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// P(k) for an int64 array of any shape.
    fn probability<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let shape = ids.shape().to_vec();
        let v = to_vec(&ids);
        let dist = self.dist.clone();
        let p = py.detach(move || sampler::probability(dist.as_ref(), &v)).map_err(err)?;
        let a = ArrayD::from_shape_vec(IxDyn(&shape), p).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// Expected counts (float32, same shape as `ids`) after `num_sampled` candidates took `num_tries` draws.
    fn expected_count<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, i64>,
        num_sampled: i64,
        num_tries: i64,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let shape = ids.shape().to_vec();
        let v = to_vec(&ids);
        let dist = self.dist.clone();
        let e = py
            .detach(move || sampler::expected_counts_for(dist.as_ref(), &v, num_sampled, num_tries))
            .map_err(err)?;
        let a = ArrayD::from_shape_vec(IxDyn(&shape), e).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// Shared candidates: (ids int64[S], true_expected float32[B, T] or None, sampled_expected float32[S],
    /// num_tries).
    #[pyo3(signature = (num_sampled, unique, true_classes, remove_true, seed))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        num_sampled: i64,
        unique: bool,
        true_classes: Option<PyReadonlyArray2<'py, i64>>,
        remove_true: bool,
        seed: Option<u64>,
    ) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
        let shape = true_classes.as_ref().map(|t| (t.shape()[0], t.shape()[1]));
        let flat = true_classes.as_ref().map(to_vec2);
        let key = self.key(seed);
        let dist = self.dist.clone();
        let s = py
            .detach(move || {
                sampler::sample(dist.as_ref(), key, num_sampled, unique, flat.as_deref(), remove_true)
            })
            .map_err(err)?;
        let ids = Array1::from_vec(s.ids).into_pyarray(py);
        let sampled = Array1::from_vec(s.sampled_expected).into_pyarray(py);
        let true_ec = match (s.true_expected, shape) {
            (Some(te), Some((b, t))) => array2(py, te, b, t)?.into_any(),
            _ => py.None().into_bound(py),
        };
        (ids, true_ec, sampled, s.num_tries).into_pyobject(py)
    }

    /// Per-row candidates: (ids int64[B, S], true_expected float32[B, T], sampled_expected float32[B, S],
    /// num_tries int64[B]).
    #[pyo3(signature = (true_classes, num_sampled, unique, remove_true, seed))]
    fn sample_per_row<'py>(
        &self,
        py: Python<'py>,
        true_classes: PyReadonlyArray2<'py, i64>,
        num_sampled: i64,
        unique: bool,
        remove_true: bool,
        seed: Option<u64>,
    ) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
        let (b, t) = (true_classes.shape()[0], true_classes.shape()[1]);
        let flat = to_vec2(&true_classes);
        let key = self.key(seed);
        let dist = self.dist.clone();
        let s = py
            .detach(move || {
                sampler::sample_per_row(dist.as_ref(), key, &flat, t, num_sampled, unique, remove_true)
            })
            .map_err(err)?;
        let cols = if b == 0 { num_sampled.max(0) as usize } else { s.ids.len() / b };
        let ids = array2(py, s.ids, b, cols)?;
        let se = array2(py, s.sampled_expected, b, cols)?;
        let te = array2(py, s.true_expected, b, t)?;
        let tries = Array1::from_vec(s.num_tries).into_pyarray(py);
        (ids, te, se, tries).into_pyobject(py)
    }
}

/// Parse the text of a TensorFlow vocabulary file into its counts (float64).
#[pyfunction]
fn parse_vocab<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let owned = text.to_owned();
    let c = py.detach(move || unigram::read_vocab_counts(&owned)).map_err(err)?;
    Ok(Array1::from_vec(c).into_pyarray(py))
}

/// (rows int32[H], positions int64[H], weights float32[H] = -FLT_MAX).
#[pyfunction]
fn compute_accidental_hits<'py>(
    py: Python<'py>,
    true_classes: PyReadonlyArray2<'py, i64>,
    sampled_candidates: PyReadonlyArray1<'py, i64>,
    num_true: usize,
) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
    let truth = to_vec2(&true_classes);
    let cands = sampled_candidates.as_array().to_vec();
    let h = py.detach(move || hits::accidental_hits(&truth, num_true, &cands)).map_err(err)?;
    let n = h.rows.len();
    let rows = Array1::from_vec(h.rows).into_pyarray(py);
    let pos = Array1::from_vec(h.positions).into_pyarray(py);
    let w = Array1::from_elem(n, -f32::MAX).into_pyarray(py);
    (rows, pos, w).into_pyobject(py)
}

#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    if n < 1 {
        return Err(PyValueError::new_err(format!(
            "n: must be between 1 and {}, got {n}",
            threads::MAX_THREADS
        )));
    }
    threads::set_num_threads(n as usize).map_err(err)
}

#[pyfunction]
fn get_num_threads() -> usize {
    threads::num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Sampler>()?;
    m.add_function(wrap_pyfunction!(parse_vocab, m)?)?;
    m.add_function(wrap_pyfunction!(compute_accidental_hits, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("MAX_RANGE", sampler::MAX_RANGE)?;
    loss::register(m)?;
    infonce::register(m)?;
    Ok(())
}
