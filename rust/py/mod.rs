//! The Python binding, and the only code that knows pyo3 or numpy. It converts arrays, releases the GIL
//! around the core's work and maps the core's errors to `ValueError` / `TypeError`. No math lives here.
//! Dtype coercion and argument normalisation happen in `python/zipfnce/`, so every array arriving here
//! already has the element type its signature names.

mod loss;

use crate::error::Error;
use crate::hits;
use crate::sampler::{self, unigram, Distribution, KeyState, Keys, LogUniform, Uniform, Unigram, Zipf};
use crate::threads;
use numpy::ndarray::{Array1, Array2, ArrayD, IxDyn};
use numpy::PyUntypedArrayMethods;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::sync::Arc;

mod full;
mod half;
mod hard;
mod infonce;
mod retrieval;
mod views;

fn err(e: Error) -> PyErr {
    if e.is_type_error() {
        PyTypeError::new_err(e.to_string())
    } else {
        PyValueError::new_err(e.to_string())
    }
}

/// Refuse an array whose data is not aligned for its element type. numpy allows such arrays (views at odd
/// byte offsets), but an ndarray view or a slice over a misaligned pointer is undefined behaviour in Rust.
/// The Python layer copies them first, so this only guards direct calls into `_core`.
fn check_aligned(aligned: bool, arg: &str) -> PyResult<()> {
    if aligned {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{arg}: the array's data is not aligned for its dtype (pass numpy.require(a, requirements='A'))"
        )))
    }
}

/// The elements of an array in C (row-major) order. `as_slice` also succeeds on Fortran-ordered arrays,
/// whose memory is column-major, so the fast path is taken only for C-contiguous ones.
fn to_vec<T: numpy::Element + Copy>(a: &PyReadonlyArrayDyn<'_, T>) -> Vec<T> {
    match a.as_slice() {
        Ok(s) if a.is_c_contiguous() => s.to_vec(),
        _ => a.as_array().iter().copied().collect(),
    }
}

fn to_vec2<T: numpy::Element + Copy>(a: &PyReadonlyArray2<'_, T>) -> Vec<T> {
    match a.as_slice() {
        Ok(s) if a.is_c_contiguous() => s.to_vec(),
        _ => a.as_array().iter().copied().collect(),
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

/// The owner of a sampler output's memory: when the array dies, it hands the buffer back to the core's
/// pool (`buf::OutPool`), so that the next call of that size writes into pages already mapped.
#[pyclass(frozen, name = "OutputBuffer", module = "zipfnce._core")]
struct Kept {
    _held: KeptBuf,
}

enum KeptBuf {
    I64(Vec<i64>),
    F32(Vec<f32>),
}

impl Drop for KeptBuf {
    fn drop(&mut self) {
        match self {
            KeptBuf::I64(v) => crate::buf::recycle(std::mem::take(v)),
            KeptBuf::F32(v) => crate::buf::recycle(std::mem::take(v)),
        }
    }
}

/// Output element types whose buffers go back to the pool.
trait Keepable: crate::buf::Pooled + numpy::Element {
    fn wrap(v: Vec<Self>) -> KeptBuf;
}

impl Keepable for i64 {
    fn wrap(v: Vec<i64>) -> KeptBuf {
        KeptBuf::I64(v)
    }
}

impl Keepable for f32 {
    fn wrap(v: Vec<f32>) -> KeptBuf {
        KeptBuf::F32(v)
    }
}

/// `v` as an array of `shape`, owned by a [`Kept`] when it is large enough for the pool (else as
/// `into_pyarray` makes it).
fn kept_array<T: Keepable, D: numpy::ndarray::Dimension>(
    py: Python<'_>,
    v: Vec<T>,
    shape: D,
) -> PyResult<Bound<'_, numpy::PyArray<T, D>>> {
    let shape_err = |e: numpy::ndarray::ShapeError| PyValueError::new_err(e.to_string());
    if v.capacity().saturating_mul(std::mem::size_of::<T>()) < crate::buf::POOL_MIN_BYTES {
        return Ok(numpy::ndarray::Array::from_shape_vec(shape, v).map_err(shape_err)?.into_pyarray(py));
    }
    if shape.size() != v.len() {
        return Err(PyValueError::new_err("output of the wrong length"));
    }
    // SAFETY: `v` holds shape.size() initialised elements, contiguous in row-major order; moving `v` into
    // the owner below does not move its heap allocation, which the owner keeps (unchanged, never grown)
    // until it is dropped, and the array made from the view holds the owner as its base object.
    let view = unsafe { numpy::ndarray::ArrayView::from_shape_ptr(shape, v.as_ptr()) };
    let owner = Bound::new(py, Kept { _held: T::wrap(v) })?;
    // SAFETY: as above: the owner outlives the array (it is its base) and never reallocates the buffer.
    Ok(unsafe { numpy::PyArray::borrow_from_array(&view, owner.into_any()) })
}

/// A shared draw as Python returns it: (ids int64[S], true_expected float32[B, T] or None, sampled_expected
/// float32[S], num_tries); `shape` is that of the true classes, when given. The large arrays own kept
/// buffers (see [`kept_array`]).
fn sample_tuple(
    py: Python<'_>,
    s: sampler::Sample,
    shape: Option<(usize, usize)>,
) -> PyResult<Bound<'_, pyo3::types::PyTuple>> {
    let n = s.ids.len();
    let ids = kept_array(py, s.ids, numpy::ndarray::Ix1(n))?;
    let sampled = kept_array(py, s.sampled_expected, numpy::ndarray::Ix1(n))?;
    let true_ec = match (s.true_expected, shape) {
        (Some(te), Some((b, t))) => kept_array(py, te, numpy::ndarray::Ix2(b, t))?.into_any(),
        _ => py.None().into_bound(py),
    };
    (ids, true_ec, sampled, s.num_tries).into_pyobject(py)
}

/// Per-row draws as Python returns them: (ids int64[B, S], true_expected float32[B, T], sampled_expected
/// float32[B, S], num_tries int64[B]), for `b` rows of `t` true classes.
fn per_row_tuple(
    py: Python<'_>,
    s: sampler::PerRowSample,
    b: usize,
    t: usize,
    num_sampled: i64,
) -> PyResult<Bound<'_, pyo3::types::PyTuple>> {
    let cols = s.ids.len().checked_div(b).unwrap_or(num_sampled.max(0) as usize);
    let ids = kept_array(py, s.ids, numpy::ndarray::Ix2(b, cols))?;
    let se = kept_array(py, s.sampled_expected, numpy::ndarray::Ix2(b, cols))?;
    let te = kept_array(py, s.true_expected, numpy::ndarray::Ix2(b, t))?;
    let tries = kept_array(py, s.num_tries, numpy::ndarray::Ix1(b))?;
    (ids, te, se, tries).into_pyobject(py)
}

/// The law of a sampler, as its constructor's arguments: what a pickle carries to rebuild it.
enum Law {
    LogUniform {
        range_max: i64,
        tf: bool,
    },
    Uniform {
        range_max: i64,
    },
    Zipf {
        range_max: i64,
        exponent: f64,
    },
    /// The table itself (the same object as the sampler's distribution): its weights travel.
    Unigram(Arc<Unigram>),
}

impl Law {
    fn kind(&self) -> &'static str {
        match self {
            Law::LogUniform { .. } => "log_uniform",
            Law::Uniform { .. } => "uniform",
            Law::Zipf { .. } => "zipf",
            Law::Unigram(_) => "unigram",
        }
    }
}

/// A candidate sampler: a distribution plus the state of its random stream (`sampler::Keys`).
#[pyclass(frozen, module = "zipfnce._core")]
struct Sampler {
    dist: Arc<dyn Distribution>,
    law: Arc<Law>,
    keys: Keys,
}

impl Sampler {
    fn make(dist: Arc<dyn Distribution>, law: Law, seed: Option<u64>) -> Self {
        Sampler { dist, law: Arc::new(law), keys: Keys::new(seed) }
    }

    fn unigram_law(u: Unigram, seed: Option<u64>) -> Self {
        let u = Arc::new(u);
        Sampler { dist: u.clone(), law: Arc::new(Law::Unigram(u)), keys: Keys::new(seed) }
    }

    /// The same law (shared, not copied) with the stream `keys`.
    fn with_keys(&self, keys: Keys) -> Self {
        Sampler { dist: self.dist.clone(), law: self.law.clone(), keys }
    }

    fn key(&self, seed: Option<u64>) -> u64 {
        self.keys.key(seed)
    }
}

#[pymethods]
impl Sampler {
    #[staticmethod]
    #[pyo3(signature = (range_max, seed=None, tf_formula=false))]
    fn log_uniform(range_max: i64, seed: Option<u64>, tf_formula: bool) -> PyResult<Self> {
        let d = if tf_formula { LogUniform::tf(range_max) } else { LogUniform::new(range_max) };
        Ok(Self::make(Arc::new(d.map_err(err)?), Law::LogUniform { range_max, tf: tf_formula }, seed))
    }

    #[staticmethod]
    #[pyo3(signature = (range_max, seed=None))]
    fn uniform(range_max: i64, seed: Option<u64>) -> PyResult<Self> {
        Ok(Self::make(Arc::new(Uniform::new(range_max).map_err(err)?), Law::Uniform { range_max }, seed))
    }

    #[staticmethod]
    #[pyo3(signature = (range_max, exponent, seed=None))]
    fn zipf(py: Python<'_>, range_max: i64, exponent: f64, seed: Option<u64>) -> PyResult<Self> {
        let z = py.detach(|| Zipf::new(range_max, exponent)).map_err(err)?;
        Ok(Self::make(Arc::new(z), Law::Zipf { range_max, exponent }, seed))
    }

    /// P(k) ∝ weights[k] (float64, validated in the core).
    #[staticmethod]
    #[pyo3(signature = (weights, seed=None))]
    fn unigram(py: Python<'_>, weights: PyReadonlyArray1<'_, f64>, seed: Option<u64>) -> PyResult<Self> {
        check_aligned(weights.is_aligned(), "unigrams")?;
        let w = weights.as_array().to_vec();
        let u = py.detach(|| Unigram::from_weights(w, "unigrams")).map_err(err)?;
        Ok(Self::unigram_law(u, seed))
    }

    /// TensorFlow's FixedUnigramSampler rules (see `Unigram::tf`).
    #[staticmethod]
    #[pyo3(signature = (unigrams, distortion, num_reserved_ids, num_shards, shard, float32, seed=None))]
    #[allow(clippy::too_many_arguments)] // TensorFlow's constructor arguments, one for one
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
        check_aligned(unigrams.is_aligned(), "unigrams")?;
        let w = unigrams.as_array().to_vec();
        let u = py
            .detach(|| Unigram::tf(&w, distortion, num_reserved_ids, num_shards, shard, float32))
            .map_err(err)?;
        Ok(Self::unigram_law(u, seed))
    }

    /// Pickle support: `_restore_sampler(kind, range_max, exponent, tf, weights, total_f32, base, calls,
    /// spawned, seeded)`. A unigram's weights travel as one float64 array (the alias table is rebuilt).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
        let restore = py.import("zipfnce._core")?.getattr("_restore_sampler")?;
        let k = self.keys.state();
        let (range_max, exponent, tf, weights, total_f32) = match self.law.as_ref() {
            Law::LogUniform { range_max, tf } => (*range_max, 0.0, *tf, None, None),
            Law::Uniform { range_max } => (*range_max, 0.0, false, None, None),
            Law::Zipf { range_max, exponent } => (*range_max, *exponent, false, None, None),
            Law::Unigram(u) => {
                let w = PyArray1::from_slice(py, u.weights());
                (u.weights().len() as i64, 0.0, false, Some(w), u.total_f32())
            }
        };
        let args = (
            self.law.kind(),
            range_max,
            exponent,
            tf,
            weights,
            total_f32,
            k.base,
            k.calls,
            k.spawned,
            k.seeded,
        )
            .into_pyobject(py)?;
        (restore, args).into_pyobject(py)
    }

    /// A copy: the same law (shared: it never changes) and `Keys::copy` of the stream.
    fn __copy__(&self) -> Sampler {
        self.with_keys(self.keys.copy())
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Sampler {
        self.__copy__()
    }

    /// `n` samplers of the same law (shared, not copied) with independent streams (`Keys::spawn`).
    fn spawn(&self, n: u64) -> Vec<Sampler> {
        self.keys.spawn(n).into_iter().map(|k| self.with_keys(k)).collect()
    }

    /// The same law with the stream a worker process with seed `worker_seed` continues (`Keys::for_worker`).
    fn for_worker(&self, worker_seed: u64) -> Sampler {
        self.with_keys(self.keys.for_worker(worker_seed))
    }

    /// In a forked child: the same law with fresh OS entropy when the stream is unseeded, else None.
    fn after_fork(&self) -> Option<Sampler> {
        self.keys.after_fork().map(|k| self.with_keys(k))
    }

    /// Whether the stream comes from a user's seed.
    #[getter]
    fn seeded(&self) -> bool {
        self.keys.seeded()
    }

    /// (base, calls, spawned, seeded): the stream's state.
    #[getter]
    fn stream_state(&self) -> (u64, u64, u64, bool) {
        let k = self.keys.state();
        (k.base, k.calls, k.spawned, k.seeded)
    }

    #[getter]
    fn range_max(&self) -> u64 {
        self.dist.range_max()
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.law.kind()
    }

    /// P(k) for an int64 array of any shape.
    fn probability<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        check_aligned(ids.is_aligned(), "ids")?;
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
        check_aligned(ids.is_aligned(), "ids")?;
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
        check_aligned(true_classes.as_ref().is_none_or(|t| t.is_aligned()), "true_classes")?;
        let shape = true_classes.as_ref().map(|t| (t.shape()[0], t.shape()[1]));
        let flat = true_classes.as_ref().map(to_vec2);
        let key = self.key(seed);
        let dist = self.dist.clone();
        let s = py
            .detach(move || {
                sampler::sample(dist.as_ref(), key, num_sampled, unique, flat.as_deref(), remove_true)
            })
            .map_err(err)?;
        sample_tuple(py, s, shape)
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
        check_aligned(true_classes.is_aligned(), "true_classes")?;
        let (b, t) = (true_classes.shape()[0], true_classes.shape()[1]);
        let flat = to_vec2(&true_classes);
        let key = self.key(seed);
        let dist = self.dist.clone();
        let s = py
            .detach(move || {
                sampler::sample_per_row(dist.as_ref(), key, &flat, t, num_sampled, unique, remove_true)
            })
            .map_err(err)?;
        per_row_tuple(py, s, b, t, num_sampled)
    }
}

/// Rebuild a pickled sampler (see `Sampler::__reduce__`). An unseeded sampler's copy draws fresh OS entropy:
/// only a seeded stream is reproducible, so only a seeded one is continued by its copies.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (kind, range_max, exponent, tf, weights, total_f32, base, calls, spawned, seeded))]
fn _restore_sampler(
    py: Python<'_>,
    kind: &str,
    range_max: i64,
    exponent: f64,
    tf: bool,
    weights: Option<PyReadonlyArray1<'_, f64>>,
    total_f32: Option<f32>,
    base: u64,
    calls: u64,
    spawned: u64,
    seeded: bool,
) -> PyResult<Sampler> {
    let mut s = match (kind, weights) {
        ("log_uniform", _) => Sampler::log_uniform(range_max, None, tf)?,
        ("uniform", _) => Sampler::uniform(range_max, None)?,
        ("zipf", _) => Sampler::zipf(py, range_max, exponent, None)?,
        ("unigram", Some(w)) => {
            check_aligned(w.is_aligned(), "weights")?;
            let w = w.as_array().to_vec();
            Sampler::unigram_law(py.detach(|| Unigram::from_parts(w, total_f32)).map_err(err)?, None)
        }
        _ => {
            return Err(PyValueError::new_err(format!(
                "kind: not a sampler kind with these arguments: {kind:?}"
            )))
        }
    };
    s.keys = Keys::from_state(KeyState { base, calls, spawned, seeded }).copy();
    Ok(s)
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
    check_aligned(true_classes.is_aligned(), "true_classes")?;
    check_aligned(sampled_candidates.is_aligned(), "sampled_candidates")?;
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

/// The SIMD level the kernels run at in this process: "avx512", "avx2" or "baseline" (see `simd::level`).
#[pyfunction]
fn simd_level() -> &'static str {
    match crate::simd::level() {
        crate::simd::Level::Avx512 => "avx512",
        crate::simd::Level::Avx2 => "avx2",
        crate::simd::Level::Baseline => "baseline",
    }
}

/// The bytes of memory a call may still allocate (see `buf::ensure_memory`), or None when unknown.
#[pyfunction]
fn available_memory() -> Option<u64> {
    crate::buf::available_memory()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Sampler>()?;
    m.add_function(wrap_pyfunction!(parse_vocab, m)?)?;
    m.add_function(wrap_pyfunction!(_restore_sampler, m)?)?;
    m.add_function(wrap_pyfunction!(compute_accidental_hits, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(available_memory, m)?)?;
    // The limits the Python layer checks before a call reaches the core, stated once, here.
    m.add("MAX_RANGE", sampler::MAX_RANGE)?;
    m.add("MAX_SAMPLED", sampler::MAX_SAMPLED)?;
    m.add("MAX_UNIGRAM", unigram::MAX_UNIGRAM)?;
    m.add("MAX_THREADS", threads::MAX_THREADS)?;
    loss::register(m)?;
    infonce::register(m)?;
    full::register(m)?;
    hard::register(m)?;
    retrieval::register(m)?;
    Ok(())
}
