"""Shared machinery of the hardening tests (test_hardening_*.py, test_value_stability.py, test_big_inputs.py).

- Recipes: arguments as plain, picklable data. ``Arr`` is an array given by its values, dtype, shape and memory
  layout (Fortran order, strided, negative strides, read-only, big-endian, unaligned, nested lists); ``Raw``
  names an awkward Python object (a ragged list, a set, a generator...); ``SamplerRecipe`` a sampler. They
  are built into real arguments only in the process that makes the call.
- ``REGISTRY``: every public function of API.md with a strategy of valid arguments, strategies of hostile
  values per argument, the argument names an error may blame, and a check of the result's properties.
  A function joins with one ``register(Entry(...))``; entries whose function is not in ``zipfnce`` yet (the
  losses, until their branches are merged) are skipped by the tests.
- ``Worker``: a child process that makes the calls one at a time, so that an abort, a segfault or a hang
  fails the example that caused it instead of ending the test run.
"""

from __future__ import annotations

import math
import operator
import os
import pickle
import select
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

import numpy as np

try:  # hypothesis is only needed where strategies are drawn (the parent), not in the worker
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
FLT_MAX = float(np.finfo(np.float32).max)

# --------------------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------------------


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
        hold a shape like (0, 3): it stays a list, whose shape is numpy's reading of it.)"""
        if {"list", "tuple"} & set(self.layout) and 0 in self.shape and len(self.shape) > 1:
            return self
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
                parts[i] = _mutate(how[len(name) + 1:], parts[i])
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


SHAPE_MUTATIONS = ["drop_row", "add_row", "drop_col", "add_dim", "flatten", "transpose", "empty", "scalar",
                   "broadcast_huge", "ragged", "none"]
FLOAT_MUTATIONS = ["nan", "inf", "huge", "zero", "negative", "int32", "float16", "bool", "complex128",
                   "object"] + SHAPE_MUTATIONS
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


# --------------------------------------------------------------------------------------------------------
# Reference values (NumPy, independent of the library's code)
# --------------------------------------------------------------------------------------------------------


def _ids_array(ids: Any) -> np.ndarray:
    return np.asarray(ids).astype(np.int64)


def unigram_reference(unigrams, distortion=1.0, num_reserved_ids=0, num_shards=1, shard=0) -> np.ndarray:
    """TensorFlow's FixedUnigramSampler rules in float64: reserved ids first (weight 0), then the unigrams
    raised to ``distortion``; a shard keeps the ids whose running number is ``shard`` mod ``num_shards``,
    where the unigrams are numbered from the count of reserved ids the shard kept. Returns P over the
    shard's ids."""
    w = np.asarray(unigrams, dtype=np.float64)
    kept_reserved = sum(1 for i in range(num_reserved_ids) if i % num_shards == shard)
    kept = [w[j] ** distortion for j in range(len(w)) if (kept_reserved + j) % num_shards == shard]
    weights = np.concatenate([np.zeros(kept_reserved), np.asarray(kept, dtype=np.float64)])
    return weights / weights.sum()


def reference_probability(recipe: SamplerRecipe, sampler: Any, ids: np.ndarray) -> np.ndarray:
    a = recipe.args
    k = ids.astype(np.float64)
    r = sampler.range_max
    if recipe.kind == "log_uniform":
        return np.log1p(1.0 / (k + 1.0)) / np.log1p(float(r))
    if recipe.kind == "uniform":
        return np.full(ids.shape, 1.0 / r)
    if recipe.kind == "zipf":
        s = float(a.get("exponent", 1.0))
        if r <= 10**6:
            h = np.sort(np.arange(1, r + 1, dtype=np.float64) ** -s).sum()
            return (k + 1.0) ** -s / h
        # Too long to sum here: the shape P(k) / P(0) = (k + 1)^-s, scaled by the library's own P(0).
        return (k + 1.0) ** -s * sampler.probability([0])[0]
    if recipe.kind == "unigram":
        u = build(a.get("unigrams"))
        p = unigram_reference(
            np.asarray(u, dtype=np.float64),
            float(a.get("distortion", 1.0)),
            int(a.get("num_reserved_ids", 0)),
            int(a.get("num_shards", 1)),
            int(a.get("shard", 0)),
        )
        return p[ids]
    raise AssertionError(recipe.kind)


def reference_counts(p: np.ndarray, num_sampled: int, num_tries: Any) -> np.ndarray:
    """Expected counts by API.md's rule, from P (rounded to float32 first, as TensorFlow does).
    Returns float64; exact (P·n in float32) when ``num_tries == num_sampled``."""
    p32 = np.asarray(p, dtype=np.float64).astype(np.float32)
    tries = np.broadcast_to(np.asarray(num_tries, dtype=np.float64), p32.shape)
    plain = (p32 * np.float32(num_sampled)).astype(np.float64)
    q = p32.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        uniq = -np.expm1(tries * np.log1p(-np.minimum(q, 1.0)))
    return np.where(tries == num_sampled, plain, uniq)


def assert_counts(got: np.ndarray, p: np.ndarray, num_sampled: int, num_tries: Any) -> None:
    assert got.dtype == np.float32, got.dtype
    want = reference_counts(p, num_sampled, num_tries)
    tries = np.broadcast_to(np.asarray(num_tries), want.shape)
    plain = tries == num_sampled
    np.testing.assert_array_equal(got[plain], want[plain].astype(np.float32))
    np.testing.assert_allclose(got[~plain], want[~plain], rtol=3e-6, atol=3e-45)


def reference_hits(tc: np.ndarray, cands: np.ndarray) -> Tuple[list, list]:
    rows, pos = [], []
    for r, truth in enumerate(tc):
        for t in truth:
            for p in np.flatnonzero(cands == t):
                rows.append(r)
                pos.append(int(p))
    return rows, pos


# --------------------------------------------------------------------------------------------------------
# Result checks (run where the call ran; `args` are the built arguments, `again(canonical)` repeats the call)
# --------------------------------------------------------------------------------------------------------


def _as_int(x: Any) -> int:
    return operator.index(x)


def _truth_2d(tc: Any) -> np.ndarray:
    a = _ids_array(tc)
    return a.reshape(-1, 1) if a.ndim == 1 else a


def _same(a: Any, b: Any) -> None:
    """Two results are identical (arrays bit for bit, same dtypes)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), (type(a), type(b))
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b or (a is None and b is None), (a, b)


def check_probability(recipe, args, out, again):
    s = args["self"]
    ids = _ids_array(args["ids"])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == ids.shape
    assert np.all(np.isfinite(out)) and np.all(out >= 0) and np.all(out <= 1)
    want = reference_probability(recipe, s, ids)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-300)
    _same(out, again(True))


def check_expected_count(recipe, args, out, again):
    s = args["self"]
    ids = _ids_array(args["ids"])
    n = _as_int(args["num_sampled"])
    t = args.get("num_tries")
    t = n if t is None else _as_int(t)
    assert isinstance(out, np.ndarray) and out.shape == ids.shape
    assert np.all(out >= 0) and np.all(out <= max(n, 1) * (1 + 1e-6))
    assert_counts(out, s.probability(ids), n, t)
    _same(out, again(True))


def _check_sample_common(s, ids, n, unique, remove, tc):
    r = s.range_max
    assert ids.dtype == np.int64
    assert np.all(ids >= 0) and np.all(ids < r), ids
    assert np.all(s.probability(ids) > 0), "drew a class of probability 0"
    if unique:
        assert len(set(ids.tolist())) == ids.size, "repeated candidates with unique=True"
    if remove and tc is not None:
        assert not set(ids.tolist()) & set(tc.ravel().tolist()), "drew a removed true class"


def check_sample(recipe, args, out, again):
    import zipfnce as zn

    s = args["self"]
    n = _as_int(args["num_sampled"])
    unique = bool(args.get("unique", True))
    remove = bool(args.get("remove_true", False))
    tc = None if args.get("true_classes") is None else _truth_2d(args["true_classes"])
    assert isinstance(out, zn.CandidateSample)
    ids, tec, sec, tries = out
    assert isinstance(ids, np.ndarray) and ids.shape == (n,)
    _check_sample_common(s, ids, n, unique, remove, tc)
    assert isinstance(tries, int) and (tries >= n if unique else tries == n), (tries, n)
    p = s.probability(ids)
    assert sec.shape == (n,)
    if remove:  # renormalised P: the removed mass is summed in another order here, so allow an ulp or two
        assert_counts_tf(sec, p / (1.0 - s.probability(np.unique(tc)).sum()), n, tries)
    else:
        assert_counts(sec, p, n, tries)
    if tc is None:
        assert tec is None
    else:
        assert tec.shape == tc.shape
        np.testing.assert_array_equal(tec, s.expected_count(tc, n, tries))
    if args.get("seed") is not None:
        _same(tuple(out), tuple(again(False)))  # a seeded call is a pure function of its arguments
        _same(tuple(out), tuple(again(True)))  # ... whatever the memory layout of the arrays


def check_sample_per_row(recipe, args, out, again):
    import zipfnce as zn

    s = args["self"]
    n = _as_int(args["num_sampled"])
    unique = bool(args.get("unique", True))
    remove = bool(args.get("remove_true", False))
    tc = _truth_2d(args["true_classes"])
    b = tc.shape[0]
    assert isinstance(out, zn.CandidateSample)
    ids, tec, sec, tries = out
    assert ids.shape == (b, n) and sec.shape == (b, n) and tec.shape == tc.shape
    assert tries.shape == (b,) and tries.dtype == np.int64
    for i in range(b):
        _check_sample_common(s, ids[i], n, unique, remove, tc[i : i + 1])
        assert tries[i] >= n if unique else tries[i] == n
        p = s.probability(ids[i])
        if remove:
            assert_counts_tf(sec[i], p / (1.0 - s.probability(np.unique(tc[i])).sum()), n, int(tries[i]))
        else:
            assert_counts(sec[i], p, n, int(tries[i]))
        np.testing.assert_array_equal(tec[i], s.expected_count(tc[i], n, int(tries[i])))
    if args.get("seed") is not None:
        _same(tuple(out), tuple(again(False)))
        _same(tuple(out), tuple(again(True)))


def check_constructor(recipe, args, out, again):
    kind = recipe.kind
    assert type(out).__name__ == SAMPLER_CLASSES[kind]
    r = out.range_max
    assert isinstance(r, int) and r >= 1
    if kind != "unigram":
        assert r == _as_int(args["range_max"])
    ids = np.unique(np.array([0, r // 3, r // 2, r - 1], dtype=np.int64))
    p = out.probability(ids)
    np.testing.assert_allclose(p, reference_probability(SamplerRecipe(kind, tuple(recipe.args.items())), out, ids),
                               rtol=1e-12, atol=1e-300)
    if r <= 4096:
        assert abs(out.probability(np.arange(r)).sum() - 1.0) < 1e-9


def _tf_counts_ok(sec, tec, p_ids, p_truth, n, unique, tries):
    if tries is None:
        return
    assert_counts_tf(sec, p_ids, n, tries)
    assert_counts_tf(tec, p_truth, n, tries)


def assert_counts_tf(got, p, n, tries):
    """As `assert_counts`, with a float32-level tolerance on P (the drop-ins evaluate TF's own expressions)."""
    want = reference_counts(p, n, tries)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=3e-45)


def infer_tries(counts: np.ndarray, p: np.ndarray, n: int) -> Optional[int]:
    """The num_tries that unique-sampling expected counts were computed with (they do not say): n when
    every count is P·n, else solved from the count of the least likely candidate, 1-(1-p)^t ≈ t·p."""
    p32 = p.astype(np.float32)
    if counts.size == 0 or np.allclose(counts, p32 * np.float32(n), rtol=1e-5, atol=0):
        return n
    i = int(np.argmin(p))
    if not 0 < counts[i] < 1 or p[i] <= 0:
        return None
    return int(round(float(np.log1p(-np.float64(counts[i])) / np.log1p(-np.float64(p32[i])))))


def check_dropin(recipe, args, out, again):
    import zipfnce as zn

    fn = recipe.kind  # the drop-in's name
    assert isinstance(out, tuple) and len(out) == 3
    ids, tec, sec = out
    nt = _as_int(args["num_true"])
    tc = _truth_2d(args["true_classes"])
    n = _as_int(args["num_sampled"])
    unique = bool(args["unique"])
    assert ids.dtype == np.int64 and ids.shape == (n,)
    assert tec.dtype == np.float32 and tec.shape == tc.shape == (tc.shape[0], nt)
    assert sec.dtype == np.float32 and sec.shape == (n,)
    if fn == "all_candidate_sampler":
        np.testing.assert_array_equal(ids, np.arange(n))
        assert np.all(tec == 1) and np.all(sec == 1)
        return
    r = _as_int(args["range_max"])
    assert np.all(ids >= 0) and np.all(ids < r)
    if unique:
        assert len(set(ids.tolist())) == n
    if fn == "fixed_unigram_candidate_sampler":
        u = build(args.get("unigrams", ()))
        p_all = unigram_reference(
            np.asarray(u, dtype=np.float64), float(args.get("distortion", 1.0)),
            _as_int(args.get("num_reserved_ids", 0)), _as_int(args.get("num_shards", 1)),
            _as_int(args.get("shard", 0)),
        )
        assert np.all(p_all[ids] > 0)
        tries = n if not unique else infer_tries(sec, p_all[ids], n)
        _tf_counts_ok(sec, tec, p_all[ids], p_all[tc], n, unique, tries)
        return
    # Log-uniform and uniform: the same draws as the sampler class with the same seed, TF's expressions for P.
    cls = zn.LogUniformSampler if fn == "log_uniform_candidate_sampler" else zn.UniformSampler
    s = cls(r)
    tries = n if not unique else infer_tries(sec, s.probability(ids), n)
    if args.get("seed") is not None:
        ref = s.sample(n, unique=unique, true_classes=tc, seed=args["seed"])
        np.testing.assert_array_equal(ids, ref.ids)
        tries = ref.num_tries
        _same(out, again(True))
    _tf_counts_ok(sec, tec, s.probability(ids), s.probability(tc), n, unique, tries)


def check_hits(recipe, args, out, again):
    nt = _as_int(args["num_true"])
    tc = _truth_2d(args["true_classes"])
    cands = _ids_array(args["sampled_candidates"])
    assert tc.shape[1] == nt
    rows, pos, w = out
    assert rows.dtype == np.int32 and pos.dtype == np.int64 and w.dtype == np.float32
    want_rows, want_pos = reference_hits(tc, cands)
    np.testing.assert_array_equal(rows, np.array(want_rows, dtype=np.int32))
    np.testing.assert_array_equal(pos, np.array(want_pos, dtype=np.int64))
    assert w.shape == rows.shape and np.all(w == -FLT_MAX)
    _same(out, again(True))


def check_threads(recipe, args, out, again):
    import zipfnce as zn

    assert out is None
    assert zn.get_num_threads() == _as_int(args["n"])


# --------------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """A public function: how to call it, valid and hostile arguments, and what a result must satisfy.

    ``call(recipe_kind, built_args)`` makes the call; ``valid`` is a strategy of (kind, {arg: recipe}); ``hostile``
    maps an argument to a strategy of bad recipes for it; ``blame`` maps an argument to the names an error may
    give when that argument is the bad one (itself always allowed); ``check(recipe, args, out, again)`` asserts
    the result's properties. ``available()`` says whether the function exists in this build.
    """

    name: str
    call: Callable[[str, Dict[str, Any]], Any]
    valid: Callable[[], Any]
    hostile: Callable[[], Dict[str, Any]]
    check: Callable[..., None]
    blame: Dict[str, FrozenSet[str]] = field(default_factory=dict)
    names: FrozenSet[str] = frozenset()
    available: Callable[[], bool] = lambda: True


REGISTRY: Dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    REGISTRY[entry.name] = entry
    return entry


def _has(name: str) -> Callable[[], bool]:
    def available() -> bool:
        import zipfnce as zn

        return hasattr(zn, name)

    return available


@dataclass(frozen=True)
class Recipe:
    """One call: the entry, a tag for the checks (sampler kind, drop-in name), and the argument recipes."""

    entry: str
    kind: str
    args: Tuple[Tuple[str, Any], ...]
    hostile: Optional[str] = None  # the argument that was made bad, if any

    @property
    def kwargs(self) -> Dict[str, Any]:
        return dict(self.args)


def run_recipe(recipe: Recipe) -> Dict[str, Any]:
    """Make the call and check it. Returns {"status": "ok" | "raised" | "failed", ...}. Never raises."""
    entry = REGISTRY[recipe.entry]
    try:
        args = {k: build(v) for k, v in recipe.args}
    except (ValueError, TypeError) as e:
        if isinstance(dict(recipe.args).get("self"), SamplerRecipe):
            # A random sampler recipe the library refuses (a shard whose weights are all zero, say): the
            # constructor's own tests judge that; this call has nothing to check.
            return {"status": "skipped", "why": repr(e)}
        return {"status": "failed", "why": f"could not build the arguments: {e!r}\n{traceback.format_exc()}"}
    except BaseException as e:  # the recipe itself is broken: a defect of the test
        return {"status": "failed", "why": f"could not build the arguments: {e!r}\n{traceback.format_exc()}"}
    try:
        out = entry.call(recipe.kind, args)
    except BaseException as e:  # PanicException derives from BaseException
        return {"status": "raised", "type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
                "message": str(e)}

    def again(canonical_layout: bool) -> Any:
        rebuilt = {k: build(canonical(v) if canonical_layout else v) for k, v in recipe.args}
        return entry.call(recipe.kind, rebuilt)

    try:
        sampler_recipe = dict(recipe.args).get("self")
        entry.check(sampler_recipe if isinstance(sampler_recipe, SamplerRecipe) else recipe, args, out, again)
    except BaseException as e:
        return {"status": "failed", "why": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    return {"status": "ok"}


def error_names(message: str) -> str:
    """The argument an error message blames: the text before the first colon."""
    return message.split(":", 1)[0].strip()


def judge(recipe: Recipe, outcome: Dict[str, Any]) -> Optional[str]:
    """None when the outcome is acceptable, else a description of what is wrong."""
    entry = REGISTRY[recipe.entry]
    st_ = outcome["status"]
    if st_ in ("ok", "skipped"):
        return None
    if st_ == "failed":
        return "wrong result: " + outcome["why"]
    if st_ != "raised":
        return f"{st_}: {outcome.get('why', '')}"
    if outcome["type"] not in ("ValueError", "TypeError"):
        return f"raised {outcome['type']} (not ValueError/TypeError): {outcome['message']}"
    blamed = error_names(outcome["message"])
    if recipe.hostile is not None:
        allowed = {recipe.hostile} | set(entry.blame.get(recipe.hostile, ()))
    else:
        allowed = set(entry.names)
    if blamed not in allowed:
        return f"{outcome['type']} blames {blamed!r}, expected one of {sorted(allowed)}: {outcome['message']}"
    return None


# --------------------------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------------------------

_CHILD = r"""
import os, pickle, sys
proto_in = os.fdopen(os.dup(0), "rb")
proto_out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # stray prints go to stderr, never into the protocol
sys.path.insert(0, {tests!r})
import _hardening
while True:
    try:
        op, payload = pickle.load(proto_in)
    except EOFError:
        break
    if op == "run":
        reply = _hardening.run_recipe(payload)
    elif op == "exec":
        name, kwargs = payload
        try:
            reply = {{"status": "ok", "value": getattr(_hardening, name)(**kwargs)}}
        except BaseException as e:
            import traceback
            reply = {{"status": "raised", "type": type(e).__name__, "message": str(e),
                      "why": traceback.format_exc()}}
    pickle.dump(reply, proto_out)
    proto_out.flush()
"""


class WorkerDied(AssertionError):
    pass


def _limit_address_space(limit: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


class Worker:
    """A child Python process that runs recipes. A crash or a hang becomes a `WorkerDied` failure that
    names the recipe; the next call starts a fresh child.

    ``address_space`` caps the child's virtual memory (RLIMIT_AS) so that a regression that allocates
    without limit fails inside the child instead of pushing the machine into the OOM killer.
    """

    def __init__(self, env: Optional[Dict[str, str]] = None, address_space: Optional[int] = 8 << 30,
                 timeout: float = 120.0):
        self.env = dict(os.environ, **(env or {}))
        self.address_space = address_space
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen] = None
        self.stderr = None

    def _start(self) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD.format(tests=TESTS_DIR)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=self.env,
            preexec_fn=_limit_address_space(self.address_space) if self.address_space else None,
        )

    def _stderr_tail(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return self.stderr.read()[-3000:].decode(errors="replace")

    def request(self, op: str, payload: Any, timeout: Optional[float] = None) -> Dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        what = f"{op} {payload!r}"[:2000]
        try:
            pickle.dump((op, payload), proc.stdin)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], timeout or self.timeout)
            if not ready:
                self.close()
                raise WorkerDied(f"no answer within {timeout or self.timeout} s (hang or deadlock): {what}")
            return pickle.load(proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            code = proc.wait()
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            tail = self._stderr_tail()
            self.proc = None
            raise WorkerDied(f"the worker died ({how}) on {what}\n--- its stderr ---\n{tail}") from None

    def run(self, recipe: Recipe) -> Dict[str, Any]:
        return self.request("run", recipe)

    def exec(self, name: str, timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """Call ``_hardening.<name>(**kwargs)`` in the worker; its return value (picklable) comes back."""
        reply = self.request("exec", (name, kwargs), timeout)
        if reply["status"] != "ok":
            raise AssertionError(f"{name} raised {reply['type']}: {reply['message']}\n{reply.get('why', '')}")
        return reply["value"]

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


# --------------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------------

INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
FLOAT_DTYPES = ["float16", "float32", "float64"]

INT_EDGES = [-1, -(2**63), -(2**100), 2**35, 2**36, 2**36 + 1, 2**62 + 1, 2**63 - 1, 2**63, 2**64, 2**100]
NP_INT_EDGES = [np.int8(-1), np.int64(-(2**63)), np.uint64(2**64 - 1), np.uint64(2**63), np.int16(-5)]
NOT_INTS = [True, False, 2.0, float("nan"), float("inf"), "3", b"3", None, [3], 1 + 0j, np.float32(2.0),
            np.bool_(True), np.array([3]), np.array(3.0)]
FLOAT_EDGES = [float("nan"), float("inf"), float("-inf"), -1.0, -0.0, 0.0, 5e-324, 1e-300, 1e300,
               1.7976931348623157e308, 10**400, -(10**400), np.float32("nan"), np.float16(1.0), np.float64(-2.0)]
NOT_FLOATS = [True, "1", None, 1 + 1j, [1.0], b"1"]
FLAG_HOSTILE = [2, -1, "yes", "", None, 1.0, 0.5, [True], np.int64(2), np.float64(1.0)]
SEED_HOSTILE = [-1, 2**64, 2**64 + 5, -(2**200), 2**200, np.uint64(2**64 - 1), np.int64(-5), 1.5, "1", True,
                float("nan"), b"1", [1]]


def layouts():
    plain = st.lists(st.sampled_from(LAYOUT_ORDER[:6]), max_size=3, unique=True).map(
        lambda ls: tuple(sorted(ls, key=LAYOUT_ORDER.index))
    )
    return st.one_of(plain, plain.map(lambda t: t + ("list",)), st.just(("tuple",)))


def int_values(dtype: str, lo: int, hi: int):
    info = np.iinfo(dtype)
    lo, hi = max(lo, int(info.min)), min(hi, int(info.max))
    if lo > hi:
        return st.nothing()
    edges = [v for v in (lo, hi, 0, 1, -1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


@st.composite if st is not None else (lambda f: f)
def arrays(draw, values_for, dtypes, ndims=(1,), max_side=6, layout=None, min_side=0):
    dtype = draw(st.sampled_from(dtypes))
    ndim = draw(st.sampled_from(ndims))
    shape = tuple(draw(st.lists(st.integers(min_side, max_side), min_size=ndim, max_size=ndim)))
    n = math.prod(shape)
    values = tuple(draw(st.lists(values_for(dtype), min_size=n, max_size=n)))
    lay = draw(layout if layout is not None else layouts())
    return Arr(values, dtype, shape, lay)


def valid_ids(range_max: int, ndims=(1,), max_side=6, min_side=0):
    """Integer arrays of any integer dtype holding ids in [0, range_max), in any layout."""

    def values(dtype):
        return int_values(dtype, 0, range_max - 1)

    dtypes = [d for d in INT_DTYPES if np.iinfo(d).max >= range_max - 1] or ["int64"]
    return arrays(values, dtypes, ndims, max_side, min_side=min_side)


def _hostile_values(dtype: str, range_max: int):
    if dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        edges = [v for v in (range_max, range_max - 1, -1, 2**62, 2**63 - 1, int(info.min), int(info.max))
                 if int(info.min) <= v <= int(info.max)]
        return st.one_of(st.sampled_from(edges), int_values(dtype, int(info.min), int(info.max)))
    if dtype in FLOAT_DTYPES:
        return st.floats(width=int(np.dtype(dtype).itemsize * 8))
    if dtype == "bool":
        return st.booleans()
    if dtype == "complex128":
        return st.complex_numbers(allow_nan=True, allow_infinity=True)
    if dtype == "<U3":
        return st.text(max_size=3)
    if dtype == "object":
        return st.one_of(st.none(), st.integers(-(2**70), 2**70), st.text(max_size=2))
    raise AssertionError(dtype)


def hostile_ids(range_max: int, ndims=(0, 1, 2, 3)):
    """Arrays that are wrong somehow (ids out of range, non-integer dtypes, odd shapes) or awkward objects."""
    dtypes = INT_DTYPES + FLOAT_DTYPES + ["bool", "complex128", "<U3", "object"]
    arr = arrays(lambda d: _hostile_values(d, range_max), dtypes, ndims, max_side=4)
    return st.one_of(arr, st.sampled_from(sorted(RAW)).map(Raw))


def hostile_int():
    return st.one_of(st.sampled_from(INT_EDGES + NP_INT_EDGES + NOT_INTS),
                     st.integers(-(2**70), -1), st.integers(2**36 + 1, 2**70))


def hostile_float():
    return st.sampled_from(FLOAT_EDGES + NOT_FLOATS)


def hostile_flag():
    return st.sampled_from(FLAG_HOSTILE)


def hostile_seed():
    return st.sampled_from(SEED_HOSTILE)


def seeds():
    return st.one_of(st.none(), st.integers(0, 2**64 - 1), st.sampled_from([np.uint64(2**64 - 1), np.int64(7), np.uint8(3)]))


def flags():
    return st.sampled_from([True, False, 0, 1, np.bool_(True), np.bool_(False), np.int8(1)])


RANGE_EDGES = [1, 2, 3, 10, 1000, 2**20, 2**31 + 11, 2**62]


def sampler_recipes(kinds=("log_uniform", "uniform", "zipf", "unigram"), small=False):
    """Valid samplers of every kind; `small` keeps range_max <= 1000 (exhaustive checks)."""
    rng = st.sampled_from([r for r in RANGE_EDGES if r <= 1000]) if small else st.one_of(
        st.sampled_from(RANGE_EDGES), st.integers(1, 10**6))
    seed = st.integers(0, 2**64 - 1)

    def simple(kind):
        return st.tuples(rng, seed).map(lambda t: SamplerRecipe(kind, (("range_max", t[0]), ("seed", t[1]))))

    zipf = st.tuples(rng, st.one_of(st.floats(0.05, 4.0), st.sampled_from([1.0, 0.5, 2.0, 4.0])), seed).map(
        lambda t: SamplerRecipe("zipf", (("range_max", t[0]), ("exponent", t[1]), ("seed", t[2]))))

    @st.composite
    def unigram(draw):
        # Weights of 0 or at least 1e-2: classes of vanishing probability make unique sampling take up to
        # the library's bound of 2^31 draws, which is a test of patience, not of correctness.
        w = draw(st.lists(st.one_of(st.floats(1e-2, 100.0), st.sampled_from([0.0, 1.0, 1e-2])), min_size=1,
                          max_size=40))
        shards = draw(st.integers(1, 3))
        kw = (
            ("unigrams", Arr(tuple(w), "float64", (len(w),), draw(layouts()))),
            ("distortion", draw(st.sampled_from([1.0, 0.75, 0.5, 0.0]))),
            ("num_reserved_ids", draw(st.integers(0, 3))),
            ("num_shards", shards),
            ("shard", draw(st.integers(0, shards - 1))),
            ("seed", draw(seed)),
        )
        return SamplerRecipe("unigram", kw)

    table = {"log_uniform": simple("log_uniform"), "uniform": simple("uniform"), "zipf": zipf,
             "unigram": unigram()}
    return st.one_of(*[table[k] for k in kinds])


def _valid_range(recipe: SamplerRecipe) -> int:
    """The range_max a valid sampler recipe will have (unigram: computed by TF's rules)."""
    a = recipe.args
    if recipe.kind != "unigram":
        return a["range_max"]
    ns, sh, res = a["num_shards"], a["shard"], a["num_reserved_ids"]
    kept_reserved = sum(1 for i in range(res) if i % ns == sh)
    n = len(a["unigrams"].values)
    return kept_reserved + sum(1 for j in range(n) if (kept_reserved + j) % ns == sh)


# --------------------------------------------------------------------------------------------------------
# Entries: samplers (API.md section 1)
# --------------------------------------------------------------------------------------------------------


def _method(name: str) -> Callable[[str, Dict[str, Any]], Any]:
    def call(kind: str, args: Dict[str, Any]) -> Any:
        a = dict(args)
        s = a.pop("self")
        return getattr(s, name)(**a)

    return call


def _with_sampler(body):
    """A strategy of (kind, args) from a strategy-building function of a valid sampler recipe."""

    @st.composite
    def strat(draw):
        s = draw(sampler_recipes())
        r = _valid_range(s)
        return s.kind, dict(self=s, **draw(body(s, max(r, 1))))

    return strat()


def _fixed(**kw):
    return st.fixed_dictionaries(kw)


def _sample_valid(s, r):
    @st.composite
    def args(draw):
        unique = draw(flags())
        remove = draw(flags()) if draw(st.booleans()) else False
        # (A [B, 0] array is not valid: every row needs a true class. Empty inputs come with the hostile ones.)
        tc = draw(st.one_of(st.none(), valid_ids(r, ndims=(1, 2), max_side=5, min_side=1))) if not remove \
            else draw(valid_ids(r, ndims=(1, 2), max_side=4, min_side=1))
        # 9000 draws take the parallel paths; Zipf tails need few unique draws to stay quick (see above).
        cap = 9000 if not unique else min(r, 30) if s.kind == "zipf" else min(r, 9000)
        n = draw(st.one_of(st.integers(0, min(cap, 40)), st.just(cap)))
        out = {"num_sampled": n, "unique": unique, "true_classes": tc, "remove_true": remove,
               "seed": draw(seeds())}
        return out

    return args()


def _per_row_valid(s, r):
    @st.composite
    def args(draw):
        unique = draw(flags())
        cap = 3000 if not unique else min(r, 30)
        return {
            "true_classes": draw(valid_ids(r, ndims=(1, 2), max_side=5, min_side=1)),
            "num_sampled": draw(st.integers(0, min(cap, 30))),
            "unique": unique,
            "remove_true": draw(flags()),
            "seed": draw(seeds()),
        }

    return args()


def _sampler_hostile(extra):
    def hostile():
        d = {"self": None}
        d.update(extra())
        return d

    return hostile


register(Entry(
    name="Sampler.probability",
    call=_method("probability"),
    valid=lambda: _with_sampler(lambda s, r: _fixed(ids=valid_ids(r, ndims=(0, 1, 2, 3), max_side=5))),
    hostile=lambda: {"ids": hostile_ids(1000)},
    check=check_probability,
    names=frozenset({"ids"}),
))

register(Entry(
    name="Sampler.expected_count",
    call=_method("expected_count"),
    valid=lambda: _with_sampler(lambda s, r: st.integers(0, 50).flatmap(lambda n: _fixed(
        ids=valid_ids(r, ndims=(0, 1, 2), max_side=5),
        num_sampled=st.just(n),
        num_tries=st.one_of(st.none(), st.just(n), st.integers(n, n + 10**6), st.just(2**63 - 1)),
    ))),
    hostile=lambda: {"ids": hostile_ids(1000), "num_sampled": hostile_int(), "num_tries": hostile_int()},
    check=check_expected_count,
    blame={"num_sampled": frozenset({"num_tries"})},
    names=frozenset({"ids", "num_sampled", "num_tries"}),
))

register(Entry(
    name="Sampler.sample",
    call=_method("sample"),
    valid=lambda: _with_sampler(_sample_valid),
    hostile=lambda: {
        "num_sampled": hostile_int(),
        "true_classes": hostile_ids(1000, ndims=(0, 1, 2, 3)),
        "unique": hostile_flag(),
        "remove_true": hostile_flag(),
        "seed": hostile_seed(),
    },
    check=check_sample,
    blame={"true_classes": frozenset({"num_sampled"}), "remove_true": frozenset({"num_sampled"})},
    names=frozenset({"num_sampled", "true_classes", "unique", "remove_true", "seed"}),
))

register(Entry(
    name="Sampler.sample_per_row",
    call=_method("sample_per_row"),
    valid=lambda: _with_sampler(_per_row_valid),
    hostile=lambda: {
        "true_classes": hostile_ids(1000, ndims=(0, 1, 2, 3)),
        "num_sampled": hostile_int(),
        "unique": hostile_flag(),
        "remove_true": hostile_flag(),
        "seed": hostile_seed(),
    },
    check=check_sample_per_row,
    blame={"true_classes": frozenset({"num_sampled"}), "remove_true": frozenset({"num_sampled"})},
    names=frozenset({"num_sampled", "true_classes", "unique", "remove_true", "seed"}),
))


def _constructor_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    return getattr(zn, SAMPLER_CLASSES[kind])(**args)


def _constructor_valid():
    return sampler_recipes().map(lambda r: (r.kind, dict(r.kwargs)))


def _constructor_check(recipe, args, out, again):
    check_constructor(SamplerRecipe(recipe.kind, recipe.args), args, out, again)


register(Entry(
    name="Sampler.__init__",
    call=_constructor_call,
    valid=_constructor_valid,
    hostile=lambda: {
        "range_max": st.one_of(hostile_int(), st.sampled_from([0, -5, 2**62 + 1])),
        "exponent": hostile_float(),
        "seed": hostile_seed(),
        "unigrams": hostile_ids(10, ndims=(0, 1, 2)),
        "distortion": hostile_float(),
        "num_reserved_ids": hostile_int(),
        "num_shards": hostile_int(),
        "shard": hostile_int(),
    },
    check=_constructor_check,
    blame={
        "distortion": frozenset({"unigrams"}),
        "num_reserved_ids": frozenset({"unigrams"}),
        "num_shards": frozenset({"shard", "unigrams"}),
        "shard": frozenset({"unigrams"}),
    },
    names=frozenset({"range_max", "exponent", "seed", "unigrams", "distortion", "num_reserved_ids",
                     "num_shards", "shard", "vocab_file"}),
))

# --------------------------------------------------------------------------------------------------------
# Entries: TensorFlow drop-ins (API.md section 2)
# --------------------------------------------------------------------------------------------------------


def _dropin_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    return getattr(zn, kind)(**args)


@st.composite if st is not None else (lambda f: f)
def _dropin_valid(draw):
    fn = draw(st.sampled_from(["log_uniform_candidate_sampler", "uniform_candidate_sampler",
                               "fixed_unigram_candidate_sampler", "all_candidate_sampler"]))
    unique = draw(flags())
    nt = draw(st.integers(1, 3))
    args: Dict[str, Any] = {}
    if fn == "fixed_unigram_candidate_sampler":
        w = draw(st.lists(st.floats(0.5, 50.0), min_size=1, max_size=30))
        ns = draw(st.integers(1, 2))
        sh = draw(st.integers(0, ns - 1))
        res = draw(st.integers(0, 2))
        s = SamplerRecipe("unigram", (("unigrams", Arr(tuple(w), "float64", (len(w),))), ("num_shards", ns),
                                      ("shard", sh), ("num_reserved_ids", res)))
        r = _valid_range(s)
        args.update(unigrams=Arr(tuple(w), "float64", (len(w),), draw(layouts())),
                    distortion=draw(st.sampled_from([1.0, 0.75, 0.5])), num_reserved_ids=res,
                    num_shards=ns, shard=sh, range_max=r)
        support = r - sum(1 for i in range(res) if i % ns == sh)
    elif fn == "all_candidate_sampler":
        r = support = draw(st.integers(1, 200))
    else:
        r = support = draw(st.sampled_from(RANGE_EDGES[1:]) | st.integers(1, 10**6))
        args["range_max"] = r
    b = draw(st.integers(0, 5))
    tc = Arr(tuple(draw(st.lists(st.integers(0, max(r, 1) - 1), min_size=b * nt, max_size=b * nt))), "int64", (b, nt),
             draw(layouts()))
    n = draw(st.integers(1, max(1, min(support if unique else 500, 64))))
    if fn == "all_candidate_sampler":
        n = r
    args.update(true_classes=tc, num_true=nt, num_sampled=n, unique=unique, seed=draw(seeds()))
    return fn, args


def _dropin_hostile():
    return {
        "true_classes": hostile_ids(100, ndims=(0, 1, 2, 3)),
        "num_true": hostile_int(),
        "num_sampled": hostile_int(),
        "unique": hostile_flag(),
        "range_max": st.one_of(hostile_int(), st.sampled_from([0, -5, 2**62 + 1])),
        "seed": hostile_seed(),
        "unigrams": hostile_ids(10, ndims=(0, 1, 2)),
        "distortion": hostile_float(),
        "num_reserved_ids": hostile_int(),
        "num_shards": hostile_int(),
        "shard": hostile_int(),
        "vocab_file": st.sampled_from([3, b"\x00", "no/such\x00file", np.array([1, 2]), [1], 1.5]),
    }


register(Entry(
    name="dropins",
    call=_dropin_call,
    valid=_dropin_valid,
    hostile=_dropin_hostile,
    check=lambda recipe, args, out, again: check_dropin(recipe, args, out, again),
    blame={
        "true_classes": frozenset({"num_true"}),
        "num_true": frozenset({"true_classes"}),
        "unigrams": frozenset({"range_max"}),
        "vocab_file": frozenset({"unigrams"}),
        "distortion": frozenset({"unigrams"}),
        "num_reserved_ids": frozenset({"range_max", "unigrams"}),
        "num_shards": frozenset({"shard", "range_max", "unigrams"}),
        "shard": frozenset({"range_max", "unigrams"}),
        "range_max": frozenset(),
        "num_sampled": frozenset({"true_classes"}),  # all_candidate_sampler: ids must be below num_sampled
    },
    names=frozenset({"true_classes", "num_true", "num_sampled", "unique", "range_max", "seed", "unigrams",
                     "distortion", "num_reserved_ids", "num_shards", "shard", "vocab_file"}),
))


@st.composite if st is not None else (lambda f: f)
def _hits_valid(draw):
    nt = draw(st.integers(1, 3))
    b = draw(st.integers(0, 6))
    vals = st.integers(0, 12)
    tc = Arr(tuple(draw(st.lists(vals, min_size=b * nt, max_size=b * nt))), draw(st.sampled_from(INT_DTYPES)),
             (b, nt), draw(layouts()))
    s = draw(st.integers(0, 20))
    cands = Arr(tuple(draw(st.lists(vals, min_size=s, max_size=s))), draw(st.sampled_from(INT_DTYPES)), (s,),
                draw(layouts()))
    return "compute_accidental_hits", {"true_classes": tc, "sampled_candidates": cands, "num_true": nt,
                                       "seed": draw(seeds())}


register(Entry(
    name="compute_accidental_hits",
    call=_dropin_call,
    valid=lambda: _hits_valid(),
    hostile=lambda: {
        "true_classes": hostile_ids(100, ndims=(0, 1, 2, 3)),
        "sampled_candidates": hostile_ids(100, ndims=(0, 1, 2, 3)),
        "num_true": hostile_int(),
        "seed": hostile_seed(),
    },
    check=check_hits,
    blame={"num_true": frozenset({"true_classes"}), "true_classes": frozenset({"num_true"})},
    names=frozenset({"true_classes", "sampled_candidates", "num_true", "seed"}),
))


def _threads_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    return zn.set_num_threads(**args)


register(Entry(
    name="set_num_threads",
    call=_threads_call,
    valid=lambda: st.integers(1, 8).map(lambda n: ("set_num_threads", {"n": n})),
    hostile=lambda: {"n": st.one_of(hostile_int(), st.sampled_from([0, 4097, -1]))},
    check=check_threads,
    names=frozenset({"n"}),
))

# --------------------------------------------------------------------------------------------------------
# Entries: sampled softmax and NCE losses and their gradients (API.md sections 2-3)
# --------------------------------------------------------------------------------------------------------

LOSS_FUNCTIONS = ["sampled_softmax_loss", "nce_loss", "sampled_softmax_loss_and_grad", "nce_loss_and_grad"]
LOSS_ARGS = ("weights", "biases", "labels", "inputs", "num_sampled", "num_classes", "num_true",
             "sampled_values", "remove_accidental_hits", "seed", "subtract_log_q", "focal_gamma", "grad_loss")


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def loss_reference(nce: bool, w, bias, labels, x, ids, te, se, hits: bool, log_q: bool,
                   gamma: float) -> np.ndarray:
    """API.md's formula, row by row in float64 (all arguments float64 / int64 NumPy arrays, labels [B, T])."""
    bsz, nt = labels.shape
    y = 1.0 / nt
    out = np.zeros(bsz)
    for r in range(bsz):
        cand = ids if ids.ndim == 1 else ids[r]
        q = se if se.ndim == 1 else se[r]
        t = labels[r]
        zt = w[t] @ x[r] + (0.0 if bias is None else bias[t]) - (np.log(te[r]) if log_q else 0.0)
        zs = w[cand] @ x[r] + (0.0 if bias is None else bias[cand]) - (np.log(q) if log_q else 0.0)
        if hits:
            zs = zs[~np.isin(cand, t)]
        if not nce:
            z = np.concatenate([zt, zs])
            m = z.max()
            logp = zt - (m + np.log(np.exp(z - m).sum()))
            out[r] = -(y * (-np.expm1(logp)) ** gamma * logp).sum()
        else:
            # -[y (1-s)^g ln s + (1-y) s^g ln(1-s)], s = sigmoid(z), ln s = -softplus(-z),
            # ln(1-s) = -softplus(z)
            def ce(z, yy):
                s = np.exp(-_softplus(-z))
                return yy * (1.0 - s) ** gamma * _softplus(-z) + (1.0 - yy) * s**gamma * _softplus(z)

            out[r] = ce(zt, y).sum() + ce(zs, 0.0).sum()
    return out


def _loss_problem(args: Dict[str, Any], dt: Any) -> Optional[Dict[str, Any]]:
    """The call's data in float64, candidates included (drawn again for the default sampler, which needs a
    seed); None when the candidates cannot be known (an unseeded default draw)."""
    nt = _as_int(args.get("num_true", 1))
    lab = _ids_array(args["labels"]).reshape(-1, nt)
    ns = _as_int(args["num_sampled"])
    sv = args.get("sampled_values")
    if sv is None:
        if args.get("seed") is None:
            return None
        import zipfnce as zn

        ids, te, se = zn.log_uniform_candidate_sampler(lab, nt, ns, True, _as_int(args["num_classes"]),
                                                       seed=args["seed"])
    else:
        ids, te, se = sv[0], sv[1], sv[2]
    ids = _ids_array(ids)
    te = np.ones(lab.shape) if te is None else np.asarray(te, dtype=np.float64).reshape(lab.shape)
    b = args.get("biases")

    def f64(a):  # rounded to the call's float type first, as the library does
        with np.errstate(over="ignore"):
            return np.asarray(a, dtype=dt).astype(np.float64)

    return {
        "w": f64(args["weights"]),
        "bias": None if b is None else f64(b),
        "labels": lab,
        "x": f64(args["inputs"]),
        "ids": ids,
        "te": te,
        "se": np.asarray(se, dtype=np.float64),
        "hits": bool(args["remove_accidental_hits"]),
        "log_q": bool(args.get("subtract_log_q", True)),
        "gamma": float(args.get("focal_gamma", 0.0)),
    }


def _call_f64(fn: str, args: Dict[str, Any], dt: Any, **over: Any) -> Any:
    """``fn`` on the call's arguments with every float array rounded to the call's dtype ``dt`` (as the
    library does), then widened to float64 (C order), some of them replaced."""
    import zipfnce as zn

    a = dict(args)
    for k in ("weights", "biases", "inputs"):
        if a.get(k) is not None:
            with np.errstate(over="ignore"):
                a[k] = np.array(a[k], dtype=dt).astype(np.float64)
    a.update(over)
    return getattr(zn, fn)(**a)


def check_loss(recipe, args, out, again):
    import zipfnce as zn

    fn = recipe.kind
    nce = fn.startswith("nce")
    grad = fn.endswith("_and_grad")
    w = np.asarray(args["weights"])
    dt = np.dtype(w.dtype.newbyteorder("="))
    nt = _as_int(args.get("num_true", 1))
    lab = _ids_array(args["labels"]).reshape(-1, nt)
    bsz, d = lab.shape[0], w.shape[1]
    loss = out.loss if grad else out
    assert isinstance(loss, np.ndarray), type(loss)
    assert loss.shape == (bsz,) and loss.dtype == dt, (loss.shape, loss.dtype)
    assert np.all(np.isfinite(loss)), loss
    assert np.all(loss >= 0), loss  # every term is a cross-entropy with labels in [0, 1]
    if grad:
        assert isinstance(out, zn.LossAndGrad)
        gx, gw, gb = out.grad_inputs, out.grad_weights, out.grad_biases
        assert isinstance(gw, zn.SparseGrad)
        assert gx.shape == (bsz, d) and gx.dtype == dt and np.all(np.isfinite(gx))
        idx = gw.indices
        assert idx.dtype == np.int64 and idx.ndim == 1 and np.all(np.diff(idx) > 0), idx  # sorted, unique
        assert gw.values.shape == (idx.size, d) and gw.values.dtype == dt and np.all(np.isfinite(gw.values))
        if args.get("biases") is None:
            assert gb is None
        else:
            assert isinstance(gb, zn.SparseGrad)
            np.testing.assert_array_equal(gb.indices, idx)
            assert gb.values.shape == (idx.size,) and gb.values.dtype == dt
        # The loss of the fused pass is the forward-only loss.
        fwd = getattr(zn, fn[: -len("_and_grad")])(**{k: v for k, v in args.items() if k != "grad_loss"}) \
            if args.get("sampled_values") is not None or args.get("seed") is not None else None
        if fwd is not None:
            np.testing.assert_allclose(fwd, loss, rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-6)
    prob = _loss_problem(args, dt)
    if prob is None:  # an unseeded default draw: only the properties above can be checked
        return
    used = np.unique(np.concatenate([prob["labels"].ravel(), prob["ids"].ravel()]))
    if grad:
        assert set(idx.tolist()) <= set(used.tolist()), "a gradient row of a class the call did not use"
    ref = loss_reference(nce, prob["w"], prob["bias"], prob["labels"], prob["x"], prob["ids"], prob["te"],
                         prob["se"], prob["hits"], prob["log_q"], prob["gamma"])
    tol = 1e-9 if dt == np.float64 else 2e-4
    np.testing.assert_allclose(loss, ref, rtol=tol, atol=tol * (1 + np.abs(ref).max()))
    # Layout does not matter: the same call on C-ordered, aligned, native copies gives the same bits.
    canon = again(True)
    if np.asarray(canon.loss if grad else canon).dtype == dt:
        _same(tuple(out) if grad else out, tuple(canon) if grad else canon)
    if not grad:
        return
    # Finite differences of sum_b c_b loss_b, in float64, on a few coordinates of inputs, weights, biases.
    c = args.get("grad_loss")
    c = np.ones(bsz) if c is None else np.broadcast_to(np.asarray(c, dtype=np.float64), (bsz,))
    base = _call_f64(fn, args, dt)
    if dt == np.float64:
        np.testing.assert_allclose(base.grad_inputs, gx, rtol=1e-12, atol=1e-12)
    else:  # the float32 gradients are the float64 ones to float32 accuracy
        scale = 1 + np.abs(base.grad_inputs).max()
        np.testing.assert_allclose(gx, base.grad_inputs, rtol=1e-3, atol=1e-3 * scale)
        np.testing.assert_array_equal(gw.indices, base.grad_weights.indices)
        scale = 1 + np.abs(base.grad_weights.values).max(initial=0)
        np.testing.assert_allclose(gw.values, base.grad_weights.values, rtol=1e-3, atol=1e-3 * scale)
    big = max(np.abs(np.asarray(args[k], dtype=np.float64)).max(initial=0)
              for k in ("weights", "inputs", "biases") if args.get(k) is not None)
    if big > 1e3:  # (hostile magnitudes: a difference step of 1e-6 would vanish, or leave the smooth regime)
        return
    fwd_fn = fn[: -len("_and_grad")]
    fargs = {k: v for k, v in args.items() if k != "grad_loss"}
    h = 1e-6

    def objective(**over):
        return float(np.dot(c, _call_f64(fwd_fn, fargs, dt, **over)))

    def fd(name, index):
        arr = np.array(args[name], dtype=dt).astype(np.float64)
        hi, lo = arr.copy(), arr.copy()
        hi[index] += h
        lo[index] -= h
        return (objective(**{name: hi}) - objective(**{name: lo})) / (2 * h)

    def near(got, want, what):
        assert abs(got - want) <= 1e-5 * (1 + abs(want)), f"{what}: gradient {got}, finite difference {want}"

    j = d - 1
    near(base.grad_inputs[0, j], fd("inputs", (0, j)), f"inputs[0, {j}]")
    gwi = dict(zip(base.grad_weights.indices.tolist(), range(base.grad_weights.indices.size)))
    for cls in sorted({int(prob["labels"][0, 0]), int(prob["ids"].ravel()[0])}):
        want = fd("weights", (cls, 0))
        got = base.grad_weights.values[gwi[cls], 0] if cls in gwi else 0.0
        near(got, want, f"weights[{cls}, 0]")
        if args.get("biases") is not None:
            got = base.grad_biases.values[gwi[cls]] if cls in gwi else 0.0
            near(got, fd("biases", cls), f"biases[{cls}]")


def _float_arr(shape, dtypes=("float32", "float64"), lo=-2.0, hi=2.0, lay=None):
    n = math.prod(shape)
    return st.tuples(st.sampled_from(dtypes),
                     st.lists(st.floats(lo, hi, width=32), min_size=n, max_size=n),
                     lay if lay is not None else layouts()).map(
        lambda t: Arr(tuple(t[1]), t[0], shape, t[2]))


def _loss_valid(fn: str):
    grad = fn.endswith("_and_grad")

    @st.composite
    def strat(draw):
        v = draw(st.integers(1, 40))
        d = draw(st.integers(1, 6))
        bsz = draw(st.integers(1, 5))
        nt = draw(st.integers(1, 3))
        wdt = draw(st.sampled_from(["float32", "float64"]))
        weights = draw(_float_arr((v, d), dtypes=(wdt,)))
        biases = draw(st.one_of(st.none(), _float_arr((v,), dtypes=("float16", "float32", "float64"))))
        lab_shape = (bsz,) if nt == 1 and draw(st.booleans()) else (bsz, nt)
        lab_vals = tuple(draw(st.lists(st.integers(0, v - 1), min_size=bsz * nt, max_size=bsz * nt)))
        labels = Arr(lab_vals, draw(st.sampled_from(["int64", "int32", "uint8", "uint64"])) if v <= 255
                     else "int64", lab_shape, draw(layouts()))
        inputs = draw(_float_arr((bsz, d), dtypes=("float16", "float32", "float64")))
        log_q = draw(flags())
        how = draw(st.sampled_from(["default", "triple", "shared", "per_row"]))
        seed = draw(st.one_of(st.integers(0, 2**64 - 1),
                              st.just(None) if how != "default" else st.integers(0, 9)))
        nc = v
        if how == "default":
            nc = draw(st.integers(max(lab_vals) + 1, v))  # the default sampler's range holds the labels
            ns = draw(st.integers(1, nc))
            sv = None
            if draw(st.integers(0, 9)) == 0:
                seed = None  # unseeded: only the properties are checked
        elif how == "triple":
            per_row = draw(st.booleans())
            ns = draw(st.integers(1, 8))
            shape = (bsz, ns) if per_row else (ns,)
            n = math.prod(shape)
            ids = Arr(tuple(draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n))),
                      draw(st.sampled_from(["int64", "int32"])), shape, draw(layouts()))
            pos = st.floats(float(np.float32(1e-3)), 4.0, width=32)
            te = None if not log_q and draw(st.booleans()) else Arr(
                tuple(draw(st.lists(pos, min_size=bsz * nt, max_size=bsz * nt))), "float32", (bsz, nt),
                draw(layouts()))
            se = Arr(tuple(draw(st.lists(pos, min_size=n, max_size=n))),
                     draw(st.sampled_from(["float32", "float64"])), shape, draw(layouts()))
            sv = Triple(ids, te, se, as_list=draw(st.integers(0, 5)) == 0)
        else:
            unique = draw(flags()) if v > 1 else False
            ns = draw(st.integers(1, min(v, 8) if unique else 12))
            tc = Arr(lab_vals, "int64", (bsz, nt))
            sv = Drawn(v, ns, tc, how == "per_row", bool(unique), draw(st.integers(0, 2**32)))
        args = {
            "weights": weights, "biases": biases, "labels": labels, "inputs": inputs, "num_sampled": ns,
            "num_classes": nc, "num_true": nt, "sampled_values": sv,
            "remove_accidental_hits": draw(flags()), "seed": seed, "subtract_log_q": log_q,
            "focal_gamma": draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 0])),
        }
        if grad:
            args["grad_loss"] = draw(st.one_of(
                st.none(), st.sampled_from([2.0, -1.0, 0, 3]),
                _float_arr((bsz,))))
        return fn, args

    return strat()


def _loss_hostile(grad: bool):
    def floats(extra=()):
        return st.one_of(st.sampled_from(FLOAT_MUTATIONS + list(extra)).map(Mutate),
                         st.sampled_from(sorted(RAW)).map(Raw))

    d = {
        "weights": floats(),
        "biases": floats(),
        "labels": st.one_of(st.sampled_from(ID_MUTATIONS).map(Mutate), hostile_ids(1000)),
        "inputs": floats(),
        "num_sampled": st.one_of(hostile_int(), st.sampled_from([0, 2**36, 2**36 + 1, 10**6])),
        "num_classes": st.one_of(hostile_int(), st.sampled_from([0, 10**6, 2**62])),
        "num_true": st.one_of(hostile_int(), st.sampled_from([0, 4, 100])),
        "sampled_values": st.one_of(
            st.sampled_from(["ids:" + m for m in ID_MUTATIONS] + ["te:" + m for m in FLOAT_MUTATIONS]
                            + ["se:" + m for m in FLOAT_MUTATIONS] + ["short"]).map(Mutate),
            st.sampled_from(sorted(RAW)).map(Raw)),
        "remove_accidental_hits": hostile_flag(),
        "subtract_log_q": hostile_flag(),
        "seed": hostile_seed(),
        "focal_gamma": st.one_of(hostile_float(), st.sampled_from([-0.5, 1e-300, 50.0])),
    }
    if grad:
        d["grad_loss"] = floats()
    return d


_LOSS_BLAME = {
    "weights": frozenset({"inputs", "biases", "labels", "sampled_values", "num_classes"}),
    "biases": frozenset({"weights"}),
    "labels": frozenset({"num_true", "inputs", "sampled_values", "grad_loss"}),
    "inputs": frozenset({"weights", "labels"}),
    "num_sampled": frozenset({"sampled_values", "num_classes"}),
    "num_classes": frozenset({"num_sampled", "weights"}),
    "num_true": frozenset({"labels", "sampled_values"}),
    "sampled_values": frozenset({"num_sampled", "labels"}),
}


def _loss_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    return getattr(zn, kind)(**args)


for _fn in LOSS_FUNCTIONS:
    register(Entry(
        name=_fn,
        call=_loss_call,
        valid=(lambda f: lambda: _loss_valid(f))(_fn),
        hostile=(lambda g: lambda: _loss_hostile(g))(_fn.endswith("_and_grad")),
        check=check_loss,
        blame=_LOSS_BLAME,
        names=frozenset(LOSS_ARGS if _fn.endswith("_and_grad") else LOSS_ARGS[:-1]),
        available=_has(_fn),
    ))
del _fn


# InfoNCE (API.md section 4): info_nce_loss and info_nce_loss_and_grad share one entry (the kind says which).


def _infonce_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    a = dict(args)
    return getattr(zn, kind)(a.pop("query"), a.pop("keys"), **a)


def _small_floats(dtype: str, lo: float = -3.0, hi: float = 3.0):
    return st.floats(lo, hi, width=int(np.dtype(dtype).itemsize * 8))


@st.composite if st is not None else (lambda f: f)
def _infonce_valid(draw):
    kind = draw(st.sampled_from(["info_nce_loss", "info_nce_loss_and_grad"]))
    b, d = draw(st.integers(1, 5)), draw(st.integers(1, 4))

    def mat(rows, dtype):
        vals = tuple(draw(st.lists(_small_floats(dtype), min_size=rows * d, max_size=rows * d)))
        # An empty nested list has no second dimension: keep empty matrices as arrays.
        lay = draw(layouts()) if rows else ()
        return Arr(vals, dtype, (rows, d), lay)

    def vec(n, values, dtype):
        return Arr(tuple(draw(st.lists(values, min_size=n, max_size=n))), dtype, (n,), draw(layouts()) if n else ())

    args: Dict[str, Any] = {"query": mat(b, draw(st.sampled_from(["float32", "float64"]))),
                            "keys": mat(b, draw(st.sampled_from(FLOAT_DTYPES)))}
    n = draw(st.one_of(st.none(), st.integers(0, 3)))
    if n is not None:
        args["negatives"] = mat(n, draw(st.sampled_from(FLOAT_DTYPES)))
    args["temperature"] = draw(st.floats(0.05, 5.0))
    if draw(st.booleans()):
        args["key_log_q"] = vec(b, st.floats(-8, 0), "float64")
    if n is not None and draw(st.booleans()):
        args["negative_log_q"] = vec(n, st.floats(-8, 0), "float32")
    if draw(st.booleans()):
        dt = draw(st.sampled_from(INT_DTYPES))
        args["key_ids"] = vec(b, int_values(dt, 0, 3), dt)
        if n is not None and draw(st.booleans()):
            args["negative_ids"] = vec(n, int_values(dt, 0, 3), dt)
    args["symmetric"] = draw(st.booleans())
    args["focal_gamma"] = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    if kind == "info_nce_loss_and_grad":
        g = draw(st.sampled_from(["none", "scalar", "rows"]))
        if g == "scalar":
            args["grad_loss"] = draw(st.floats(-2, 2))
        elif g == "rows":
            args["grad_loss"] = vec(b, st.floats(-2, 2), "float64")
    return kind, args


def infonce_reference(args: Dict[str, Any]) -> np.ndarray:
    """API.md section 4's loss in float64 NumPy (the gradients are checked against autograd in
    test_infonce.py)."""
    f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    q, k = f(args["query"]), f(args["keys"])
    b = q.shape[0]
    z = q @ k.T / args["temperature"]
    if args.get("key_log_q") is not None:
        z = z - f(args["key_log_q"])[None, :]
    mask = np.zeros(z.shape, dtype=bool)
    kid = None if args.get("key_ids") is None else np.asarray(args["key_ids"]).astype(np.int64)
    if kid is not None:
        mask = (kid[None, :] == kid[:, None]) & ~np.eye(b, dtype=bool)
    if args.get("negatives") is not None:
        n = f(args["negatives"]).reshape(-1, q.shape[1])
        zn_ = q @ n.T / args["temperature"]
        if args.get("negative_log_q") is not None:
            zn_ = zn_ - f(args["negative_log_q"])[None, :]
        nmask = np.zeros(zn_.shape, dtype=bool)
        if args.get("negative_ids") is not None:
            nmask = np.asarray(args["negative_ids"]).astype(np.int64)[None, :] == kid[:, None]
        z, mask = np.concatenate([z, zn_], axis=1), np.concatenate([mask, nmask], axis=1)
    z = np.where(mask, -np.inf, z)
    g = args.get("focal_gamma", 0.0)

    def focal(logits):
        m = logits.max(axis=1, keepdims=True)
        logp = np.diag(logits)[:, None] - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        logp = np.minimum(logp[:, 0], 0.0)
        return -logp if g == 0 else -((-np.expm1(logp)) ** g) * logp

    loss = focal(z)
    if args.get("symmetric"):
        loss = (loss + focal(z[:, :b].T)) / 2
    return loss


def check_infonce(recipe, args, out, again):
    dtype = np.float32 if np.asarray(args["query"]).dtype.itemsize == 4 else np.float64
    q = np.asarray(args["query"])
    b, d = q.shape
    loss = out if recipe.kind == "info_nce_loss" else out.loss
    assert loss.dtype == dtype and loss.shape == (b,)
    assert np.isfinite(loss).all() and (loss >= 0).all()
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(loss, infonce_reference(args), rtol=tol, atol=tol)
    if recipe.kind == "info_nce_loss_and_grad":
        assert out.grad_query.shape == (b, d) and out.grad_keys.shape == (b, d)
        if args.get("negatives") is None:
            assert out.grad_negatives is None
        else:
            assert out.grad_negatives.shape == (np.asarray(args["negatives"]).reshape(-1, d).shape[0], d)
        for a in out[1:]:
            assert a is None or (a.dtype == dtype and np.isfinite(a).all())
    # A query given as a nested list is float64 while its canonical array may be float32: the dtype of query
    # decides, so compare with the canonical layout only when that keeps the dtype.
    qr = dict(recipe.args)["query"]
    _same(out, again(not (isinstance(qr, Arr) and {"list", "tuple"} & set(qr.layout))))


_INFONCE_SIZED = frozenset({"keys", "negatives", "key_log_q", "negative_log_q", "key_ids", "negative_ids",
                            "grad_loss", "query"})

register(Entry(
    name="info_nce_loss",
    call=_infonce_call,
    valid=lambda: _infonce_valid(),
    hostile=lambda: {
        "query": hostile_ids(100, ndims=(0, 1, 2, 3)),
        "keys": hostile_ids(100, ndims=(0, 1, 2, 3)),
        "negatives": hostile_ids(100, ndims=(0, 1, 2, 3)),
        "temperature": hostile_float(),
        "key_log_q": hostile_ids(100, ndims=(0, 1, 2)),
        "negative_log_q": hostile_ids(100, ndims=(0, 1, 2)),
        "key_ids": hostile_ids(100, ndims=(0, 1, 2)),
        "negative_ids": hostile_ids(100, ndims=(0, 1, 2)),
        "symmetric": hostile_flag(),
        "focal_gamma": hostile_float(),
    },
    check=check_infonce,
    # Sizes are checked against each other, and finite embeddings can still overflow the logits (reported
    # on query): an error may name the argument that disagrees with the bad one.
    blame={a: _INFONCE_SIZED for a in _INFONCE_SIZED},
    names=frozenset({"query", "keys", "negatives", "temperature", "key_log_q", "negative_log_q", "key_ids",
                     "negative_ids", "symmetric", "focal_gamma", "grad_loss", "max_logits_bytes"}),
    available=_has("info_nce_loss"),
))


def assemble(kind_args: Tuple[str, Dict[str, Any]], entry: str, hostile: Optional[str] = None) -> Recipe:
    kind, args = kind_args
    return Recipe(entry, kind, tuple(args.items()), hostile)


# --------------------------------------------------------------------------------------------------------
# Helpers that tests run inside a worker (by name, through Worker.exec)
# --------------------------------------------------------------------------------------------------------


def _hopeless_cases():
    import zipfnce as zn

    return [
        (lambda: zn.UnigramSampler([1e300, 1e-300, 5e-324, 0.0]), 3, {}),
        (lambda: zn.ZipfSampler(10**9, 50.0), 20, {}),
        (lambda: zn.ZipfSampler(10, 1e300), 1, {"unique": False, "true_classes": [0], "remove_true": True}),
    ]


HOPELESS_CASES = 3


def hopeless_sample(case: int) -> Tuple[str, str]:
    """Run hopeless request `case`; returns (exception type, message)."""
    make, n, kw = _hopeless_cases()[case]
    try:
        make().sample(n, seed=1, **kw)
    except Exception as e:
        return type(e).__name__, str(e)
    return "no error", ""
