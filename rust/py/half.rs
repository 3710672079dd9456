//! Half precision across the binding. NumPy has no bfloat16 (ml_dtypes adds one) and the numpy crate takes
//! neither half type, so the Python layer passes float16 and bfloat16 arrays as `uint16` views with a storage
//! tag ("float16" or "bfloat16"); this file turns such a buffer into the core's storage elements in place
//! ([`crate::float::Bf16`], [`crate::float::F16`]) and narrows the gradients back to 16 bits.

use super::err;
use crate::error::Error;
use crate::float::{narrow_bf16, narrow_f16, widen_bf16, widen_f16, Bf16, Float, Stored, F16};
use pyo3::prelude::*;

/// A storage type of the binding: how its elements arrive from NumPy (`Np`) and how a gradient of the
/// compute type `T` goes back in it.
pub(super) trait Store<T: Float>: Stored<T> {
    /// The NumPy element the array is passed as (the float itself, or `u16` for the half types).
    type Np: numpy::Element + Copy;
    /// The storage elements of a NumPy buffer, in place.
    fn from_np(s: &[Self::Np]) -> &[Self];
    /// A gradient, narrowed to the storage type (rounded to nearest, ties to even).
    fn to_np(v: Vec<T>) -> Vec<Self::Np>;
    /// Widen a buffer of this storage into the compute type (for the small arrays that are copied anyway).
    fn widen_vec(s: &[Self::Np]) -> Vec<T>;
}

macro_rules! plain {
    ($t:ty) => {
        impl Store<$t> for $t {
            type Np = $t;
            fn from_np(s: &[$t]) -> &[$t] {
                s
            }
            fn to_np(v: Vec<$t>) -> Vec<$t> {
                v
            }
            fn widen_vec(s: &[$t]) -> Vec<$t> {
                s.to_vec()
            }
        }
    };
}
plain!(f32);
plain!(f64);

macro_rules! half {
    ($t:ident, $widen:ident, $narrow:ident) => {
        impl Store<f32> for $t {
            type Np = u16;
            fn from_np(s: &[u16]) -> &[$t] {
                // SAFETY: the storage type is `#[repr(transparent)]` over `u16`, so it has the size, alignment
                // and validity of `u16` (every bit pattern is a value); the new slice covers the same
                // elements and borrows them for the same lifetime.
                unsafe { std::slice::from_raw_parts(s.as_ptr() as *const $t, s.len()) }
            }
            fn to_np(v: Vec<f32>) -> Vec<u16> {
                let mut out = vec![$t(0); v.len()];
                $narrow(&v, &mut out);
                out.into_iter().map(|h| h.0).collect()
            }
            fn widen_vec(s: &[u16]) -> Vec<f32> {
                let mut out = vec![0f32; s.len()];
                $widen(Self::from_np(s), &mut out);
                out
            }
        }
    };
}
half!(Bf16, widen_bf16, narrow_bf16);
half!(F16, widen_f16, narrow_f16);

/// The half-precision storage a tag names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Half {
    /// bfloat16 (ml_dtypes.bfloat16).
    Bf16,
    /// IEEE float16 (numpy.float16).
    F16,
}

/// The storage tag of a call: None for float32/float64 arrays, else "bfloat16" or "float16".
pub(super) fn parse(tag: Option<&str>) -> PyResult<Option<Half>> {
    match tag {
        None => Ok(None),
        Some("bfloat16") => Ok(Some(Half::Bf16)),
        Some("float16") => Ok(Some(Half::F16)),
        Some(other) => {
            Err(err(Error::value("storage", format!("expected 'bfloat16' or 'float16', got {other:?}"))))
        }
    }
}
