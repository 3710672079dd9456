"""Recipes: arguments as plain, picklable data, built into real arguments only in the process that makes
the call."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Tuple

import numpy as np


def _strided(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def _reversed(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a
    return a[::-1].copy()[::-1]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.view()
    a.flags.writeable = False
    return a


def _bigendian(a: np.ndarray) -> np.ndarray:
    if a.dtype.itemsize == 1 or a.dtype.kind in "OUSV":
        return a
    return a.astype(a.dtype.newbyteorder(">"))


def _unaligned(a: np.ndarray) -> np.ndarray:
    if a.dtype.itemsize == 1 or a.dtype.kind in "OUSV":
        return a
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = buf[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    return u


def _totuple(x: Any) -> Any:
    return tuple(_totuple(v) for v in x) if isinstance(x, list) else x


LAYOUTS: Dict[str, Callable[[np.ndarray], Any]] = {
    "bigendian": _bigendian,
    "F": lambda a: np.asfortranarray(a) if a.ndim >= 2 else a,  # (it turns a 0-d array into 1-d)
    "strided": _strided,
    "reversed": _reversed,
    "unaligned": _unaligned,
    "readonly": _readonly,
    "list": lambda a: a.tolist(),
    "tuple": lambda a: _totuple(a.tolist()),
}
LAYOUT_ORDER = list(LAYOUTS)


@dataclass(frozen=True)
class Arr:
    """An array: its elements in C order, dtype, shape and a sequence of layout transformations."""

    values: tuple
    dtype: str
    shape: tuple
    layout: tuple = ()

    def build(self) -> Any:
        a = np.array(list(self.values), dtype=self.dtype).reshape(self.shape)
        for t in self.layout:
            a = LAYOUTS[t](a)
        return a

    def canonical(self) -> "Arr":
        """The same elements and dtype, C-contiguous, aligned, native byte order. (A nested list cannot
        hold a shape like (0, 3): it stays a list, whose shape is numpy's reading of it.) The dtype is the one
        the call sees: a nested list of floats is read as float64 whatever ``dtype`` rounded its values to, so
        its canonical array is float64 with those rounded values (a float16/float32 array instead could be a
        different call: the float type of a loss's table, 1e300 overflowing to inf)."""
        lists = {"list", "tuple"} & set(self.layout)
        if lists and 0 in self.shape and len(self.shape) > 1:
            return self
        if lists and np.dtype(self.dtype).kind == "f" and np.dtype(self.dtype) != np.float64:
            seen = np.array(list(self.values), dtype=self.dtype).astype(np.float64)
            return Arr(tuple(seen.tolist()), "float64", self.shape)
        return replace(self, layout=())


def _raw_generator() -> Any:
    return (i for i in range(3))


RAW: Dict[str, Callable[[], Any]] = {
    "ragged": lambda: [[1, 2], [3]],
    "ragged_deep": lambda: [[[1]], [2, 3]],
    "mixed_str": lambda: [1, "a"],
    "beyond_int64": lambda: [2**63, -1],
    "beyond_uint64": lambda: [2**64],
    "below_int64": lambda: [-(2**63) - 1],
    "none": lambda: None,
    "dict": lambda: {1: 2},
    "set": lambda: {1, 2},
    "str": lambda: "abc",
    "bytes": lambda: b"ab",
    "nested_empty": lambda: [[]],
    "scalar": lambda: 5,
    "float_scalar": lambda: 1.5,
    "generator": _raw_generator,
    "matrix": lambda: np.matrix([[1, 2]]),
    "masked": lambda: np.ma.array([1, 2], mask=[0, 1]),
    "object_ints": lambda: np.array([1, 2], dtype=object),
    "structured": lambda: np.zeros(2, dtype=[("a", "i8")]),
    "datetime": lambda: np.array([1, 2], dtype="datetime64[s]"),
    "complex": lambda: np.array([1 + 0j, 2]),
    "float_nan": lambda: [1.0, float("nan")],
    "float_ints": lambda: np.array([1.0, 2.0]),
}


@dataclass(frozen=True)
class Raw:
    """An awkward Python object, built from its name."""

    kind: str

    def build(self) -> Any:
        return RAW[self.kind]()


SAMPLER_CLASSES = {
    "log_uniform": "LogUniformSampler",
    "uniform": "UniformSampler",
    "zipf": "ZipfSampler",
    "unigram": "UnigramSampler",
}


@dataclass(frozen=True)
class SamplerRecipe:
    kind: str
    kwargs: Tuple[Tuple[str, Any], ...]

    def build(self) -> Any:
        import zipfnce as zn

        kw = {k: build(v) for k, v in self.kwargs}
        return getattr(zn, SAMPLER_CLASSES[self.kind])(**kw)

    @property
    def args(self) -> Dict[str, Any]:
        return dict(self.kwargs)


@dataclass(frozen=True)
class Triple:
    """TensorFlow's ``sampled_values`` triple (candidates, true_expected_count, sampled_expected_count), its
    parts recipes (or None); ``as_list`` gives a list instead of a tuple."""

    ids: Any
    te: Any
    se: Any
    as_list: bool = False

    def build(self) -> Any:
        t = (build(self.ids), build(self.te), build(self.se))
        return list(t) if self.as_list else t

    def canonical(self) -> "Triple":
        return Triple(canonical(self.ids), canonical(self.te), canonical(self.se))


@dataclass(frozen=True)
class Drawn:
    """A ``CandidateSample`` drawn by a log-uniform sampler over ``range_max`` classes: shared candidates
    (``sample``, with ``true_classes``) or per-row ones (``sample_per_row``)."""

    range_max: int
    num_sampled: int
    true_classes: Any
    per_row: bool
    unique: bool
    seed: int

    def build(self) -> Any:
        import zipfnce as zn

        s = zn.LogUniformSampler(self.range_max, seed=0)
        tc = build(self.true_classes)
        if self.per_row:
            return s.sample_per_row(tc, self.num_sampled, unique=self.unique, seed=self.seed)
        return s.sample(self.num_sampled, unique=self.unique, true_classes=tc, seed=self.seed)

    def canonical(self) -> "Drawn":
        return replace(self, true_classes=canonical(self.true_classes))


def _mutate(how: str, a: Any) -> Any:
    """A hostile variant of a valid argument ``a`` (already built): see ``MUTATIONS``."""
    if how == "none":
        return None
    if ":" in how or how == "short":  # sampled_values: spoil one part
        if not (isinstance(a, (tuple, list)) and len(a) in (3, 4)):
            return _mutate(how.split(":")[-1] if ":" in how else "flatten", a)
        ids, te, se = a[0], a[1], a[2]
        part = {"ids": 0, "te": 1, "se": 2}
        for name, i in part.items():
            if how.startswith(name + ":"):
                parts = [ids, te, se]
                parts[i] = _mutate(how[len(name) + 1 :], parts[i])
                return tuple(parts)
        if how == "short":
            return (ids, te)
        return a
    if a is None:
        return np.array([np.nan])
    x = np.asarray(a)
    if how == "nan":
        x = x.astype(np.float64 if x.dtype.kind != "f" else x.dtype, copy=True)
        x.flat[0 if x.size else slice(0, 0)] = np.nan
        return x
    if how == "inf":
        x = x.astype(np.float64 if x.dtype.kind != "f" else x.dtype, copy=True)
        x.flat[-1 if x.size else slice(0, 0)] = -np.inf
        return x
    if how == "huge":
        return x.astype(np.float64) * 1e300
    if how == "zero":
        return np.zeros_like(x)
    if how == "negative":
        return -np.abs(x.astype(np.float64)) - 1
    if how == "drop_row":
        return x[:-1]
    if how == "add_row":
        return np.concatenate([x, x[:1]]) if x.ndim else x.reshape(1)
    if how == "drop_col":
        return x[..., :-1] if x.ndim else x
    if how == "add_dim":
        return x[None]
    if how == "flatten":
        return x.ravel()
    if how == "transpose":
        return x.T
    if how == "empty":
        return x[:0]
    if how == "scalar":
        return x.ravel()[0] if x.size else x.sum()
    if how in ("int32", "float16", "float32", "float64", "bool", "complex128", "uint64", "object"):
        return x.astype(how)
    if how == "big_id":
        x = x.astype(np.int64, copy=True)
        x.flat[0 if x.size else slice(0, 0)] = 2**40
        return x
    if how == "minus_one":
        x = x.astype(np.int64, copy=True)
        x.flat[-1 if x.size else slice(0, 0)] = -1
        return x
    if how == "int64_max":
        x = x.astype(np.int64, copy=True)
        x.flat[0 if x.size else slice(0, 0)] = 2**63 - 1
        return x
    if how == "broadcast_huge":  # a read-only view far larger than its memory
        one = x.ravel()[:1] if x.size else np.zeros(1, x.dtype)
        return np.broadcast_to(one, (2**20, 2**16)[: max(x.ndim, 1)])
    if how == "ragged":
        return [list(r) for r in np.atleast_2d(x)[:1]] + [[1.0]]
    raise AssertionError(how)


SHAPE_MUTATIONS = [
    "drop_row",
    "add_row",
    "drop_col",
    "add_dim",
    "flatten",
    "transpose",
    "empty",
    "scalar",
    "broadcast_huge",
    "ragged",
    "none",
]
FLOAT_MUTATIONS = [
    "nan",
    "inf",
    "huge",
    "zero",
    "negative",
    "int32",
    "float16",
    "bool",
    "complex128",
    "object",
] + SHAPE_MUTATIONS
ID_MUTATIONS = ["big_id", "minus_one", "int64_max", "float64", "bool", "uint64", "object"] + SHAPE_MUTATIONS


@dataclass(frozen=True)
class Mutate:
    """A hostile argument made from the valid one it replaces: ``base`` (filled in by the test) built, then
    changed by ``how`` (a name in FLOAT_MUTATIONS / ID_MUTATIONS, or "ids:..."/"te:..."/"se:..." for one part
    of a sampled_values triple)."""

    how: str
    base: Any = None

    def build(self) -> Any:
        return _mutate(self.how, build(self.base))

    def canonical(self) -> "Mutate":
        return replace(self, base=canonical(self.base))


def build(v: Any) -> Any:
    """The real argument a recipe stands for (other values stand for themselves)."""
    if isinstance(v, (Arr, Raw, SamplerRecipe, Triple, Drawn, Mutate)):
        return v.build()
    return v


def canonical(v: Any) -> Any:
    return v.canonical() if isinstance(v, (Arr, Triple, Drawn, Mutate)) else v
