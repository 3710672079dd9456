"""Entry: mixed negative sampling for two-tower retrieval, mixed_negatives (docs/API.md: Mixed negatives).

``batch_probability`` comes in every documented form: a ``[V]`` table (any real dtype and layout, or a list), a
callable ``ids -> P_B``, an object with ``.probability(ids)``, and a ``zipfnce.FrequencyEstimator``. Those are
given as a ``BatchProb`` recipe, which the call builds against the sampler's ``range_max`` (the generic
``recipes.build`` leaves it as it is). The check draws the negatives again with a fresh copy of the sampler and
recomputes every log-correction by the documented formula, ``log max(E_B + E_S, MIN_EXPECTED_COUNT)`` with
``E_B = -log(1 - P_B)`` and ``E_S`` the expected count of the draw by docs/API.md's rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

try:  # hypothesis is only needed where strategies are drawn (the parent), not in the worker
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

from .checks import _as_int, _same
from .recipes import ID_MUTATIONS, Arr, Mutate, Raw, SamplerRecipe, build
from .reference import _ids_array, reference_counts, reference_probability, unigram_reference
from .registry import Entry, register
from .strategies import (
    _valid_range,
    flags,
    hostile_flag,
    hostile_ids,
    hostile_int,
    hostile_seed,
    layouts,
    sampler_recipes,
    seeds,
    valid_ids,
)

#: The floor of an expected count in a log (zipfnce._retrieval.MIN_EXPECTED_COUNT, documented in docs/API.md).
MIN_EXPECTED_COUNT = 1e-12
#: P_B = 1 means E_B = -log(0) = inf; the function clamps P_B to 1 - 1e-12 (E_B ~ 27.6), which keeps the
#: correction finite. (The clamp is the module's, not docs/API.md's; a P_B of exactly 1 is the only place
#: it matters.)
P_B_CLAMP = 1.0 - 1e-12

# ---------------------------------------------------------------------------------------------------------
# batch_probability recipes
# ---------------------------------------------------------------------------------------------------------


class _Duck:
    """Any object with ``.probability(ids)`` (the docstring's "or any object with .probability")."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def probability(self, ids: np.ndarray) -> Any:
        return self.table[ids].tolist()


@dataclass(frozen=True)
class BatchProb:
    """``P_B`` as one of the documented forms, built against the sampler's range ``v``.

    ``form``: "table" (the ``[V]`` array itself, in ``dtype`` and ``layout``), "callable" (``ids -> table[ids]``,
    returned as ``ret``), "duck" (an object with ``.probability``) or "estimator" (a FrequencyEstimator updated
    with the batches in ``values``, ids taken mod ``v``). ``values`` are tiled to the table's ``v + extra``
    entries. ``ret`` is how a callable returns: "array", "list", "float32" (valid), or "str", "complex",
    "scalar", "none", "2d", "object" (hostile)."""

    form: str
    values: tuple
    dtype: str = "float64"
    layout: tuple = ()
    ret: str = "array"
    extra: int = 0

    def table(self, v: int) -> Any:
        n = max(v + self.extra, 0)
        vals = np.resize(np.array(self.values, dtype=self.dtype), n)
        return Arr(tuple(vals.tolist()), self.dtype, (n,), self.layout).build()

    def build_for(self, v: int) -> Any:
        if self.form == "estimator":
            import zipfnce as zn

            est = zn.FrequencyEstimator(64, num_hashes=2, seed=5)
            for batch in self.values:
                est.update(np.array(batch, dtype=np.int64) % max(v, 1))
            return est
        t = self.table(v)
        if self.form == "table":
            return t
        arr = np.asarray(t)
        if self.form == "duck":
            return _Duck(arr)
        assert self.form == "callable", self.form
        ret = self.ret

        def p_b(ids: np.ndarray) -> Any:
            p = arr[ids]
            if ret == "list":
                return p.tolist()
            if ret == "float32":
                return p.astype(np.float32)
            if ret == "str":
                return p.astype(str)
            if ret == "complex":
                return p.astype(np.complex128)
            if ret == "scalar":
                return float(p.ravel()[0]) if p.size else 0.5
            if ret == "none":
                return None
            if ret == "2d":
                return p[:, None]
            if ret == "object":
                return p.astype(object)
            return p

        return p_b


def _build_bp(spec: Any, v: int) -> Any:
    return spec.build_for(v) if isinstance(spec, BatchProb) else spec


@dataclass(frozen=True)
class SamplerClass:
    """A sampler class itself rather than an instance (a plausible slip)."""

    name: str


def _mixed_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    a = dict(args)
    s = a.pop("sampler")
    if isinstance(s, SamplerClass):
        s = getattr(zn, s.name)
    r = getattr(s, "range_max", None)
    v = r if isinstance(r, int) else 1
    bp = _build_bp(a.pop("batch_probability"), v)
    return zn.mixed_negatives(s, a.pop("num_sampled"), a.pop("key_ids"), bp, **a)


# ---------------------------------------------------------------------------------------------------------
# Valid arguments
# ---------------------------------------------------------------------------------------------------------


@st.composite if st is not None else (lambda f: f)
def _unigram_recipe(draw):
    """A unigram sampler with at least one positive weight (a refused constructor would fail the build)."""
    w = draw(
        st.lists(
            st.one_of(st.floats(1e-2, 100.0), st.sampled_from([0.0, 1.0, 1e-2])), min_size=1, max_size=20
        )
    )
    if not any(x > 0 for x in w):
        w[0] = 1.0
    kw = (
        ("unigrams", Arr(tuple(w), "float64", (len(w),), draw(layouts()))),
        ("distortion", draw(st.sampled_from([1.0, 0.75, 0.5]))),
        ("num_reserved_ids", draw(st.integers(0, 2))),
        ("num_shards", 1),
        ("shard", 0),
        ("seed", draw(st.integers(0, 2**64 - 1))),
    )
    return SamplerRecipe("unigram", kw)


def _positive_classes(s: SamplerRecipe) -> int:
    if s.kind != "unigram":
        return _valid_range(s)
    a = s.args
    p = unigram_reference(
        np.asarray(build(a["unigrams"]), dtype=np.float64), a["distortion"], a["num_reserved_ids"]
    )
    return int(np.count_nonzero(p > 0))


def _probabilities():
    return st.one_of(
        st.floats(0.0, 1.0),
        st.sampled_from([0.0, 1.0, 0.5, 1e-300, 5e-324, 1e-9, 0.999999, np.nextafter(1.0, 0.0)]),
    )


@st.composite if st is not None else (lambda f: f)
def _batch_prob(draw):
    form = draw(st.sampled_from(["table", "table", "callable", "duck", "estimator"]))
    if form == "estimator":
        batches = draw(
            st.lists(st.lists(st.integers(0, 999), min_size=1, max_size=6), min_size=1, max_size=4)
        )
        return BatchProb("estimator", tuple(tuple(b) for b in batches))
    dtype = (
        draw(st.sampled_from(["float64", "float32", "float16", "uint8", "int64"]))
        if form == "table"
        else "float64"
    )
    vals = _probabilities() if dtype.startswith("float") else st.sampled_from([0, 1])
    values = tuple(draw(st.lists(vals, min_size=1, max_size=8)))
    if form == "table":
        return BatchProb("table", values, dtype, draw(layouts()))
    ret = draw(st.sampled_from(["array", "list", "float32"])) if form == "callable" else "array"
    return BatchProb(form, values, dtype, (), ret)


@st.composite if st is not None else (lambda f: f)
def _mixed_valid(draw):
    s = draw(
        st.one_of(sampler_recipes(kinds=("log_uniform", "uniform", "zipf"), small=True), _unigram_recipe())
    )
    v = _valid_range(s)
    unique = draw(flags())
    if unique:
        # (Zipf tails take many draws to find distinct classes; unigram classes of weight 0 are never drawn.)
        cap = min(v, 10) if s.kind == "zipf" else _positive_classes(s)
    else:
        cap = 2000
    n = draw(st.one_of(st.integers(1, min(cap, 40)), st.just(cap)))
    args: Dict[str, Any] = {
        "sampler": s,
        "num_sampled": n,
        "key_ids": draw(valid_ids(v, ndims=(1,), max_side=6, min_side=1)),
        "batch_probability": draw(_batch_prob()),
    }
    if draw(st.integers(0, 4)):  # (else the default, "mixture")
        args["correction"] = draw(st.sampled_from(["mixture", "per_source", "none"]))
    args["unique"] = unique
    args["seed"] = draw(seeds())
    return s.kind, args


# ---------------------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------------------


def _p_b(source: Any, ids: np.ndarray) -> np.ndarray:
    """P_B(ids) as the source gives it (docs/API.md: an object with .probability, a callable, or a [V] table)."""
    if hasattr(source, "probability") and callable(source.probability):
        p = source.probability(ids)
    elif callable(source):
        p = source(ids)
    else:
        p = np.asarray(source)[ids]
    return np.asarray(p).astype(np.float64)


def _log_q(m: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(m, MIN_EXPECTED_COUNT))


def _mixed_check(recipe, args, out, again):
    import zipfnce as zn

    rargs = recipe.kwargs
    assert isinstance(out, zn.MixedNegatives), type(out)
    sr = rargs["sampler"]
    assert isinstance(sr, SamplerRecipe), sr
    s = build(sr)  # a fresh copy: the state the call started from
    v = s.range_max
    n = _as_int(args["num_sampled"])
    unique = bool(args.get("unique", False))
    seed = args.get("seed")
    correction = args.get("correction", "mixture")
    kid = _ids_array(args["key_ids"])
    b = kid.shape[0]

    assert isinstance(out.key_ids, np.ndarray) and out.key_ids.dtype == np.int64 and out.key_ids.shape == (b,)
    np.testing.assert_array_equal(out.key_ids, kid)
    neg = out.negative_ids
    assert isinstance(neg, np.ndarray) and neg.dtype == np.int64 and neg.shape == (n,), (neg.dtype, neg.shape)
    assert np.all((neg >= 0) & (neg < v)), neg
    p_neg = reference_probability(sr, s, neg)
    assert np.all(p_neg > 0), "drew a class of probability 0"
    if unique:
        assert len(set(neg.tolist())) == n, "repeated negatives with unique=True"
    # The negatives are the sampler's draw with the keys as true classes ("unique and seed go to sampler.sample").
    ref = s.sample(n, unique=unique, true_classes=kid, seed=seed)
    np.testing.assert_array_equal(neg, ref.ids)

    if correction == "none":
        assert out.key_log_q is None and out.negative_log_q is None
    else:
        tries = ref.num_tries
        assert unique or tries == n
        p_b = _build_bp(rargs["batch_probability"], v)
        if not isinstance(rargs["batch_probability"], BatchProb):
            p_b = args["batch_probability"]  # a hostile value the call accepted: the built argument itself

        def e_b(ids):
            return -np.log1p(-np.minimum(_p_b(p_b, ids), P_B_CLAMP))

        def e_s(ids):
            return reference_counts(reference_probability(sr, s, ids), n, tries)

        if correction == "per_source":
            want_k, want_n = _log_q(e_b(kid)), _log_q(e_s(neg))
        else:
            assert correction == "mixture", correction
            want_k, want_n = _log_q(e_b(kid) + e_s(kid)), _log_q(e_b(neg) + e_s(neg))
        for got, want in ((out.key_log_q, want_k), (out.negative_log_q, want_n)):
            assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == want.shape
            assert np.all(np.isfinite(got)) and np.all(got >= np.log(MIN_EXPECTED_COUNT))
            # E_S is float32 (P rounded to float32): a few ulps of it, relative, are a few 1e-7 in the log.
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 if unique else 1e-6)
    # A pure function of its arguments (the sampler rebuilt from its seed), whatever the arrays' layout.
    _same(tuple(out), tuple(again(True)))


# ---------------------------------------------------------------------------------------------------------
# Hostile arguments
# ---------------------------------------------------------------------------------------------------------


def _hostile_batch_prob():
    bad_values = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.5, -1e-300, 1.5, 2.0, 1e300])
    mixed = bad_values.map(lambda x: (x,))
    return st.one_of(
        # Every entry bad (so the keys' and the negatives' look-ups meet one).
        st.tuples(st.sampled_from(["table", "callable", "duck"]), mixed).map(lambda t: BatchProb(t[0], t[1])),
        st.sampled_from([(2,), (-1,), (255,)]).map(lambda t: BatchProb("table", t, "int64")),
        # A table too short for the sampler's ids, or empty.
        st.sampled_from([-1, -5, -(2**20)]).map(lambda e: BatchProb("table", (0.5,), extra=e)),
        # Tables of other dtypes.
        st.sampled_from(["bool", "complex128", "object", "<U3"]).map(lambda d: BatchProb("table", (1,), d)),
        # Callables that return the wrong thing.
        st.sampled_from(["str", "complex", "scalar", "none", "2d", "object"]).map(
            lambda r: BatchProb("callable", (0.5,), ret=r)
        ),
        hostile_ids(1000, ndims=(0, 1, 2)),
        st.sampled_from(
            ["ragged", "none", "dict", "set", "str", "bytes", "generator", "matrix", "structured"]
        ).map(Raw),
    )


def _hostile_correction():
    return st.sampled_from(
        [
            "",
            "Mixture",
            "mixture ",
            "mix",
            "None",
            "per-source",
            None,
            0,
            1.0,
            b"mixture",
            ["mixture"],
            ("none",),
            Arr(("mixture", "none"), "<U10", (2,)),
            Arr(("none",), "<U4", ()),
        ]
    )


def _hostile_sampler():
    return st.one_of(
        st.sampled_from([None, 3, 1.5, "log_uniform", b"x", [1, 2], SamplerClass("LogUniformSampler")]),
        st.sampled_from(["UniformSampler", "ZipfSampler"]).map(SamplerClass),
        st.sampled_from(["ragged", "dict", "str", "generator", "object_ints"]).map(Raw),
        # A real sampler over a range too small for the keys (or for unique draws).
        st.just(SamplerRecipe("uniform", (("range_max", 1), ("seed", 0)))),
    )


register(
    Entry(
        name="mixed_negatives",
        call=_mixed_call,
        valid=_mixed_valid,
        hostile=lambda: {
            "sampler": _hostile_sampler(),
            "num_sampled": st.one_of(hostile_int(), st.sampled_from([0, -1, 2**36 + 1])),
            "key_ids": st.one_of(
                hostile_ids(1000, ndims=(0, 1, 2, 3)), st.sampled_from(ID_MUTATIONS).map(Mutate)
            ),
            "batch_probability": _hostile_batch_prob(),
            "correction": _hostile_correction(),
            "unique": hostile_flag(),
            "seed": hostile_seed(),
        },
        check=_mixed_check,
        # A sampler over too few classes is found out by the keys it cannot hold or the unique draws it cannot
        # make.
        blame={"sampler": frozenset({"key_ids", "num_sampled"})},
        names=frozenset(
            {"sampler", "num_sampled", "key_ids", "batch_probability", "correction", "unique", "seed"}
        ),
    )
)
