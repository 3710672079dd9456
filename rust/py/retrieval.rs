//! Binding of the retrieval toolbox's stateful pieces: the streaming frequency estimator (`rust/freq.rs`).
//! Each object keeps its state behind a mutex, so Python threads may share it: calls run one at a time, in
//! some order, each as a whole.

use super::{check_aligned, err, to_vec};
use crate::freq::{self, FreqState};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArray1, PyArrayDyn, PyReadonlyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::{Mutex, MutexGuard};

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FrequencyEstimator>()?;
    m.add_function(wrap_pyfunction!(_restore_frequency_estimator, m)?)?;
    m.add("FREQ_MAX_BUCKETS", freq::MAX_BUCKETS)?;
    m.add("FREQ_MAX_HASHES", freq::MAX_HASHES)?;
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
        check_aligned(ids.is_aligned(), "ids")?;
        let v = to_vec(&ids);
        py.detach(|| self.lock().update(&v)).map_err(err)
    }

    /// The estimated P(id appears in a batch), float64, the shape of `ids`.
    fn probability<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        check_aligned(ids.is_aligned(), "ids")?;
        let shape = ids.shape().to_vec();
        let v = to_vec(&ids);
        let p = py.detach(|| self.lock().probability(&v)).map_err(err)?;
        let a = ArrayD::from_shape_vec(IxDyn(&shape), p).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(a.into_pyarray(py))
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
