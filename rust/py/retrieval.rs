//! Binding of the retrieval toolbox's stateful pieces: the streaming frequency estimator (`rust/freq.rs`)
//! and the learned unigram sampler (`rust/sampler/learned.rs`). Each object keeps its state behind a mutex, so Python threads may share it: calls run one at a time, in
//! some order, each as a whole.

use super::{check_aligned, err, per_row_tuple, sample_tuple, to_vec, to_vec2};
use crate::freq::{self, FreqState};
use crate::sampler::{self, KeyState, Keys, Learned};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    IntoPyArray, PyArray1, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex, MutexGuard};

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FrequencyEstimator>()?;
    m.add_function(wrap_pyfunction!(_restore_frequency_estimator, m)?)?;
    m.add("FREQ_MAX_BUCKETS", freq::MAX_BUCKETS)?;
    m.add("FREQ_MAX_HASHES", freq::MAX_HASHES)?;
    m.add_class::<LearnedSampler>()?;
    m.add_function(wrap_pyfunction!(_restore_learned_sampler, m)?)?;
    Ok(())
}

/// Yi et al.'s streaming frequency estimator (`crate::freq::FrequencyEstimator`) behind a mutex.
#[pyclass(frozen, module = "zipfnce._core")]
struct FrequencyEstimator {
    inner: Mutex<freq::FrequencyEstimator>,
}

impl FrequencyEstimator {
    fn lock(&self) -> MutexGuard<'_, freq::FrequencyEstimator> {
        // A panic cannot leave the state half-updated (updates validate first), so a poisoned lock is safe
        // to take over.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl FrequencyEstimator {
    #[new]
    fn new(py: Python<'_>, num_buckets: i64, num_hashes: i64, alpha: f64, seed: u64) -> PyResult<Self> {
        let f =
            py.detach(|| freq::FrequencyEstimator::new(num_buckets, num_hashes, alpha, seed)).map_err(err)?;
        Ok(FrequencyEstimator { inner: Mutex::new(f) })
    }

    /// One step with the ids of a batch (int64, any shape; repeats count once).
    fn update(&self, py: Python<'_>, ids: PyReadonlyArrayDyn<'_, i64>) -> PyResult<()> {
        let (v, _) = read_ids(&ids, "ids")?;
        py.detach(|| self.lock().update(&v)).map_err(err)
    }

    /// The estimated P(id appears in a batch), float64, the shape of `ids`.
    fn probability<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let (v, shape) = read_ids(&ids, "ids")?;
        let p = py.detach(|| self.lock().probability(&v)).map_err(err)?;
        shaped(py, p, &shape)
    }

    #[getter]
    fn num_buckets(&self) -> u64 {
        self.lock().num_buckets()
    }

    #[getter]
    fn num_hashes(&self) -> usize {
        self.lock().num_hashes()
    }

    #[getter]
    fn alpha(&self) -> f64 {
        self.lock().alpha()
    }

    #[getter]
    fn seed(&self) -> u64 {
        self.lock().seed()
    }

    #[getter]
    fn step(&self) -> u64 {
        self.lock().step()
    }

    /// (step, last uint64[H*N], gap float32[H*N], seen uint32[H*N]): the whole state, one consistent copy.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
        let s = py.detach(|| self.lock().state());
        let last = PyArray1::from_vec(py, s.last);
        let gap = PyArray1::from_vec(py, s.gap);
        let seen = PyArray1::from_vec(py, s.seen);
        (s.step, last, gap, seen).into_pyobject(py)
    }

    /// Replace the state (arrays as `state` returns them; checked before anything changes).
    fn set_state(
        &self,
        py: Python<'_>,
        step: u64,
        last: PyReadonlyArray1<'_, u64>,
        gap: PyReadonlyArray1<'_, f32>,
        seen: PyReadonlyArray1<'_, u32>,
    ) -> PyResult<()> {
        check_aligned(last.is_aligned(), "last")?;
        check_aligned(gap.is_aligned(), "gap")?;
        check_aligned(seen.is_aligned(), "seen")?;
        let s = FreqState {
            step,
            last: last.as_array().to_vec(),
            gap: gap.as_array().to_vec(),
            seen: seen.as_array().to_vec(),
        };
        py.detach(|| self.lock().set_state(&s)).map_err(err)
    }

    /// An independent copy of the estimator (its state copied under the lock).
    fn __copy__(&self) -> FrequencyEstimator {
        FrequencyEstimator { inner: Mutex::new(self.lock().clone()) }
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> FrequencyEstimator {
        self.__copy__()
    }

    /// Pickle support: `_restore_frequency_estimator(num_buckets, num_hashes, alpha, seed, step, last, gap,
    /// seen)`.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
        let restore = py.import("zipfnce._core")?.getattr("_restore_frequency_estimator")?;
        let (nb, nh, a, seed) = {
            let f = self.lock();
            (f.num_buckets(), f.num_hashes(), f.alpha(), f.seed())
        };
        let st = self.state(py)?;
        let (step, last, gap, seen): (u64, Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>) =
            st.extract()?;
        let args = (nb, nh, a, seed, step, last, gap, seen).into_pyobject(py)?;
        (restore, args).into_pyobject(py)
    }
}

/// Rebuild a pickled estimator (see `FrequencyEstimator::__reduce__`).
#[pyfunction]
#[allow(clippy::too_many_arguments)] // the constructor's arguments and the three state arrays
fn _restore_frequency_estimator(
    py: Python<'_>,
    num_buckets: i64,
    num_hashes: i64,
    alpha: f64,
    seed: u64,
    step: u64,
    last: PyReadonlyArray1<'_, u64>,
    gap: PyReadonlyArray1<'_, f32>,
    seen: PyReadonlyArray1<'_, u32>,
) -> PyResult<FrequencyEstimator> {
    let f = FrequencyEstimator::new(py, num_buckets, num_hashes, alpha, seed)?;
    f.set_state(py, step, last, gap, seen)?;
    Ok(f)
}

/// The ids of an int64 array of any shape (argument `name`), copied out, and its shape for the result.
fn read_ids(ids: &PyReadonlyArrayDyn<'_, i64>, name: &str) -> PyResult<(Vec<i64>, Vec<usize>)> {
    check_aligned(ids.is_aligned(), name)?;
    Ok((to_vec(ids), ids.shape().to_vec()))
}

fn shaped<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// TensorFlow's learned unigram sampler: the counts (`Learned`, behind a mutex, shared with spawned
/// children) and the state of this sampler's random stream. A call draws from the counts as they are, then
/// adds its true classes, all under the lock: concurrent calls run one after the other, each whole.
#[pyclass(frozen, module = "zipfnce._core")]
struct LearnedSampler {
    counts: Arc<Mutex<Learned>>,
    keys: Keys,
}

impl LearnedSampler {
    fn lock(&self) -> MutexGuard<'_, Learned> {
        // Updates validate before they change anything, so a lock poisoned by a panic elsewhere guards a
        // consistent state.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_keys(&self, keys: Keys) -> Self {
        LearnedSampler { counts: self.counts.clone(), keys }
    }
}

#[pymethods]
impl LearnedSampler {
    #[new]
    #[pyo3(signature = (range_max, seed=None))]
    fn new(py: Python<'_>, range_max: i64, seed: Option<u64>) -> PyResult<Self> {
        let l = py.detach(|| Learned::new(range_max)).map_err(err)?;
        Ok(LearnedSampler { counts: Arc::new(Mutex::new(l)), keys: Keys::new(seed) })
    }

    #[getter]
    fn range_max(&self) -> u64 {
        sampler::Distribution::range_max(&*self.lock())
    }

    #[getter]
    fn kind(&self) -> &'static str {
        "learned_unigram"
    }

    #[getter]
    fn seeded(&self) -> bool {
        self.keys.seeded()
    }

    #[getter]
    fn stream_state(&self) -> (u64, u64, u64, bool) {
        let k = self.keys.state();
        (k.base, k.calls, k.spawned, k.seeded)
    }

    /// Σ counts (range_max plus every true class added so far).
    #[getter]
    fn total_count(&self) -> u64 {
        self.lock().total()
    }

    /// Add one to the count of each id (int64, any shape), without drawing.
    fn update(&self, py: Python<'_>, ids: PyReadonlyArrayDyn<'_, i64>) -> PyResult<()> {
        let (v, _) = read_ids(&ids, "true_classes")?;
        py.detach(|| self.lock().update(&v)).map_err(err)
    }

    /// The counts of `ids` (int64, the shape of `ids`).
    fn counts<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        let (v, shape) = read_ids(&ids, "ids")?;
        let c = py
            .detach(|| {
                let l = self.lock();
                let ids = sampler::check_ids("ids", &v, sampler::Distribution::range_max(&*l))?;
                Ok(ids.iter().map(|&k| l.count(k).min(i64::MAX as u64) as i64).collect::<Vec<_>>())
            })
            .map_err(err)?;
        shaped(py, c, &shape)
    }

    fn probability<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let (v, shape) = read_ids(&ids, "ids")?;
        let p = py.detach(|| sampler::probability(&*self.lock(), &v)).map_err(err)?;
        shaped(py, p, &shape)
    }

    fn expected_count<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, i64>,
        num_sampled: i64,
        num_tries: i64,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (v, shape) = read_ids(&ids, "ids")?;
        let e = py
            .detach(|| sampler::expected_counts_for(&*self.lock(), &v, num_sampled, num_tries))
            .map_err(err)?;
        shaped(py, e, &shape)
    }

    /// Shared candidates drawn from the current counts, then the true classes added to them (as
    /// `Sampler::sample` returns them).
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
        let s = py
            .detach(|| {
                let mut l = self.lock();
                let key = self.keys.key(seed);
                let s = sampler::sample(&*l, key, num_sampled, unique, flat.as_deref(), remove_true)?;
                if let Some(t) = &flat {
                    l.update(t)?;
                }
                Ok(s)
            })
            .map_err(err)?;
        sample_tuple(py, s, shape)
    }

    /// Per-row candidates drawn from the current counts, then every row's true classes added.
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
        let s = py
            .detach(|| {
                let mut l = self.lock();
                let key = self.keys.key(seed);
                let s = sampler::sample_per_row(&*l, key, &flat, t, num_sampled, unique, remove_true)?;
                l.update(&flat)?;
                Ok(s)
            })
            .map_err(err)?;
        per_row_tuple(py, s, b, t, num_sampled)
    }

    /// A copy with its own counts (copied under the lock) and `Keys::copy` of the stream.
    fn __copy__(&self) -> LearnedSampler {
        let l = self.lock().clone();
        LearnedSampler { counts: Arc::new(Mutex::new(l)), keys: self.keys.copy() }
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> LearnedSampler {
        self.__copy__()
    }

    /// `n` samplers sharing these counts, with independent streams (`Keys::spawn`).
    fn spawn(&self, n: u64) -> Vec<LearnedSampler> {
        self.keys.spawn(n).into_iter().map(|k| self.with_keys(k)).collect()
    }

    fn for_worker(&self, worker_seed: u64) -> LearnedSampler {
        self.with_keys(self.keys.for_worker(worker_seed))
    }

    fn after_fork(&self) -> Option<LearnedSampler> {
        self.keys.after_fork().map(|k| self.with_keys(k))
    }

    /// Pickle support: `_restore_learned_sampler(range_max, ids, extras, base, calls, spawned, seeded)`;
    /// the counts travel as the ids whose count is above 1 and their counts minus 1.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
        let restore = py.import("zipfnce._core")?.getattr("_restore_learned_sampler")?;
        let (range_max, (ids, extras)) = py.detach(|| {
            let l = self.lock();
            (sampler::Distribution::range_max(&*l), l.extras())
        });
        let k = self.keys.state();
        let args = (
            range_max,
            PyArray1::from_vec(py, ids),
            PyArray1::from_vec(py, extras),
            k.base,
            k.calls,
            k.spawned,
            k.seeded,
        )
            .into_pyobject(py)?;
        (restore, args).into_pyobject(py)
    }
}

/// Rebuild a pickled learned sampler (see `LearnedSampler::__reduce__`); the stream as `_restore_sampler`
/// continues it (a seeded one where it was, an unseeded one from fresh entropy).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn _restore_learned_sampler(
    py: Python<'_>,
    range_max: i64,
    ids: PyReadonlyArray1<'_, i64>,
    extras: PyReadonlyArray1<'_, u64>,
    base: u64,
    calls: u64,
    spawned: u64,
    seeded: bool,
) -> PyResult<LearnedSampler> {
    check_aligned(ids.is_aligned(), "ids")?;
    check_aligned(extras.is_aligned(), "extras")?;
    let (i, e) = (ids.as_array().to_vec(), extras.as_array().to_vec());
    let l = py.detach(|| Learned::from_extras(range_max, &i, &e)).map_err(err)?;
    let keys = Keys::from_state(KeyState { base, calls, spawned, seeded }).copy();
    Ok(LearnedSampler { counts: Arc::new(Mutex::new(l)), keys })
}
