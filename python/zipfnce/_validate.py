"""Argument checks and coercions shared by the public functions.

Every public entry point funnels its arguments through these helpers so that a bad argument raises
``TypeError`` (wrong kind of value) or ``ValueError`` (wrong value or shape) naming the argument, before
anything reaches the native core.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Optional

import numpy as np

from . import _core

INT64_MAX = 2**63 - 1
# The core's limits, stated in Rust and read from it (never restated here).
MAX_RANGE: int = int(_core.MAX_RANGE)  # the largest range_max of a sampler
MAX_SAMPLED: int = int(_core.MAX_SAMPLED)  # the most candidates one call may draw
MAX_THREADS: int = int(_core.MAX_THREADS)  # the largest thread pool


def as_int(x: Any, name: str, *, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``x`` as a Python int (ints and NumPy integers only; bools and floats are a TypeError)."""
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got a bool")
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(x).__name__} {x!r}") from None
    if lo is not None and v < lo:
        raise ValueError(f"{name}: must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name}: must be <= {hi}, got {v}")
    return v


def as_float(x: Any, name: str) -> float:
    """``x`` as a finite Python float (ints and floats; NaN and infinities are a ValueError)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}")
    try:
        v = float(x)
    except OverflowError:  # an int beyond the float range, e.g. 10**400
        raise ValueError(f"{name}: must be finite, got an integer too large for a float") from None
    if not math.isfinite(v):  # (math's test: numpy's costs a microsecond on a Python float)
        raise ValueError(f"{name}: must be finite, got {v}")
    return v


def as_focal_gamma(x: Any) -> float:
    """``focal_gamma`` as a finite float >= 0 (0 is the plain loss). The core checks it again, as its own
    guard; this check gives the error before any work is done."""
    g = as_float(x, "focal_gamma")
    if g < 0:
        raise ValueError(f"focal_gamma: must be >= 0, got {g}")
    return g


def as_flag(x: Any, name: str) -> bool:
    """``x`` as a bool (bools, and the integers 0 and 1)."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)) and int(x) in (0, 1):
        return bool(x)
    raise TypeError(f"{name}: expected a bool, got {type(x).__name__} {x!r}")


def as_seed(seed: Any) -> Optional[int]:
    """``None``, or an integer in [0, 2^64) (a Python or NumPy integer); anything else is an error."""
    if seed is None:
        return None
    v = as_int(seed, "seed")
    if not 0 <= v < 2**64:
        raise ValueError(f"seed: must be None or an integer in [0, 2**64), got {v}")
    return v


def as_array(x: Any, name: str) -> np.ndarray:
    """``np.asarray(x)`` whose data is aligned for its dtype, with numpy's own complaints (ragged nested
    lists, integers beyond every dtype) turned into errors that name the argument."""
    try:
        a = np.asarray(x)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"{name}: cannot be read as an array: {e}") from None
    except TypeError as e:
        raise TypeError(f"{name}: cannot be read as an array: {e}") from None
    if not a.flags.aligned:
        a = a.copy()  # a view at an odd byte offset: the native code needs aligned elements
    return a


def as_ids(x: Any, name: str) -> np.ndarray:
    """``x`` as an int64 array (any integer dtype; floats, bools and objects are a TypeError)."""
    a = as_array(x, name)
    if a.dtype != np.int64:
        if a.dtype.kind in "iu":
            ensure_memory(name, a.size * 8)  # the int64 copy below (of a broadcast view, say) must fit
        kind = a.dtype.kind
        if kind == "u":
            if a.size and int(a.max()) > INT64_MAX:
                raise ValueError(f"{name}: id {int(a.max())} does not fit in int64")
            a = a.astype(np.int64)
        elif kind == "i":
            a = a.astype(np.int64)
        elif a.size == 0 and kind == "f":
            a = a.astype(np.int64)  # np.asarray([]) is float64: an empty list is fine
        else:
            raise TypeError(f"{name}: expected integer class ids, got an array of dtype {a.dtype}")
    return a


def as_true_classes(x: Any, num_true: Optional[int] = None) -> np.ndarray:
    """``true_classes`` as an int64 [B, num_true] array; [B] means num_true = 1."""
    a = as_ids(x, "true_classes")
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    elif a.ndim != 2:
        raise ValueError(f"true_classes: must be [batch] or [batch, num_true], got shape {a.shape}")
    if num_true is not None and a.shape[1] != num_true:
        raise ValueError(f"true_classes: has {a.shape[1]} columns but num_true is {num_true}")
    if a.shape[1] == 0 and a.shape[0] > 0:
        raise ValueError("true_classes: needs at least one true class per row")
    return a


def as_weights(x: Any, name: str) -> np.ndarray:
    """``x`` as a 1-D float64 array of weights (values are checked by the core)."""
    a = as_array(x, name)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected numeric weights, got an array of dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name}: must be one-dimensional, got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def ensure_memory(name: str, nbytes: int) -> None:
    """A ValueError naming ``name`` when a result of ``nbytes`` cannot fit in the memory the system has left
    (allocating it would end in a MemoryError or, with overcommit, an OOM kill)."""
    if nbytes < 2**28:
        return
    avail = _core.available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(
            f"{name}: the result needs {nbytes >> 20} MiB of memory but only {avail >> 20} MiB is available"
        )


def half_storage(dt: np.dtype) -> Optional[str]:
    """The native storage tag of a half-precision dtype: ``"float16"`` (``numpy.float16``), ``"bfloat16"``
    (``ml_dtypes.bfloat16``, recognised by name so that ml_dtypes is never imported here), else None.

    Half precision is a storage type: such arrays cross into the native core as ``uint16`` views with this
    tag and are widened to float32 as the kernels read them."""
    if dt.itemsize != 2:
        return None
    if dt.kind == "f":
        return "float16"
    if dt.kind == "V" and dt.name == "bfloat16":
        return "bfloat16"
    return None


def compute_dtype(dt: np.dtype) -> np.dtype:
    """The float type the kernels compute in for storage ``dt``: float32 for the half types, else ``dt``."""
    return np.dtype(np.float32) if half_storage(dt) is not None else dt
