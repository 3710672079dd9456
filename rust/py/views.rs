//! Reading NumPy arguments of the loss bindings: typed borrows whose errors name the argument, and the
//! elements in C order, borrowed in place when the layout allows.

use numpy::{Element, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use std::borrow::Cow;

pub(super) fn as2<'py, T: Element>(
    a: &Bound<'py, PyAny>,
    arg: &'static str,
) -> PyResult<PyReadonlyArray2<'py, T>> {
    a.extract::<PyReadonlyArray2<'py, T>>().map_err(|_| {
        PyTypeError::new_err(format!("{arg}: expected a 2-D {} array", std::any::type_name::<T>()))
    })
}

pub(super) fn as1<'py, T: Element>(
    a: Option<&Bound<'py, PyAny>>,
    arg: &'static str,
) -> PyResult<Option<PyReadonlyArray1<'py, T>>> {
    a.map(|a| {
        a.extract::<PyReadonlyArray1<'py, T>>().map_err(|_| {
            PyTypeError::new_err(format!("{arg}: expected a 1-D {} array", std::any::type_name::<T>()))
        })
    })
    .transpose()
}

/// The elements in C order, borrowed in place when the array is C-contiguous (`as_slice` also accepts
/// Fortran order, whose memory is column-major).
pub(super) fn view2<'a, T: Element + Copy>(a: &'a PyReadonlyArray2<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Ok(s) if a.is_c_contiguous() => Cow::Borrowed(s),
        _ => Cow::Owned(a.as_array().iter().copied().collect()),
    }
}

pub(super) fn view1<'a, T: Element + Copy>(a: &'a Option<PyReadonlyArray1<'_, T>>) -> Option<Cow<'a, [T]>> {
    a.as_ref().map(|a| match a.as_slice() {
        Ok(s) if a.is_c_contiguous() => Cow::Borrowed(s),
        _ => Cow::Owned(a.as_array().iter().copied().collect()),
    })
}
