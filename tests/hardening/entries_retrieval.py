"""Entries: the retrieval toolbox's stateful classes, LearnedUnigramSampler (docs/API.md: Samplers) and
FrequencyEstimator (docs/API.md: Streaming frequency estimates). Each call builds a fresh object, so a
seeded call is reproducible; the checks look at what the call learned as well as what it returned."""

from __future__ import annotations

import copy
import pickle
from typing import Any, Dict

import numpy as np

try:  # hypothesis is only needed where strategies are drawn (the parent), not in the worker
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

from .checks import _as_int, _same, _truth_2d
from .reference import _ids_array
from .registry import Entry, register
from .strategies import (
    flags,
    hostile_flag,
    hostile_float,
    hostile_ids,
    hostile_int,
    hostile_seed,
    seeds,
    valid_ids,
)

# ---------------------------------------------------------------------------------------------------------
# LearnedUnigramSampler: construct, then one sample (kind "sample") or sample_per_row call.
# ---------------------------------------------------------------------------------------------------------


def _learned_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    a = dict(args)
    s = zn.LearnedUnigramSampler(a.pop("range_max"), seed=a.pop("seed"))
    before = copy.copy(s)
    if kind == "sample":
        out = s.sample(**a)
    else:
        out = s.sample_per_row(a.pop("true_classes"), **a)
    return out, before, s


@st.composite if st is not None else (lambda f: f)
def _learned_valid(draw):
    r = draw(st.sampled_from([1, 2, 3, 10, 1000, 2**20]))
    kind = draw(st.sampled_from(["sample", "sample_per_row"]))
    unique = draw(flags())
    tc = draw(valid_ids(r, ndims=(1, 2), max_side=5, min_side=1))
    if kind == "sample" and draw(st.booleans()):
        tc = None
    remove = draw(flags()) if tc is not None else False
    n = draw(st.integers(0, min(r, 30) if unique else 200))
    args = {"range_max": r, "seed": draw(seeds()), "num_sampled": n, "unique": unique, "remove_true": remove}
    args["true_classes"] = tc
    return kind, args


def _learned_check(recipe, args, out, again):
    cs, before, s = out
    r = _as_int(args["range_max"])
    n = _as_int(args["num_sampled"])
    unique, remove = bool(args["unique"]), bool(args["remove_true"])
    tc = None if args.get("true_classes") is None else _truth_2d(args["true_classes"])
    ids = np.asarray(cs.ids)
    assert ids.dtype == np.int64 and np.all((ids >= 0) & (ids < r))
    tries = cs.num_tries
    if recipe.kind == "sample":
        assert ids.shape == (n,)
        rows = [ids]
        if tc is None:
            assert cs.true_expected_count is None
        else:
            _same(cs.true_expected_count, before.expected_count(tc, n, tries))
        if not remove:  # (with remove_true the candidates' P is renormalised over the other classes)
            _same(cs.sampled_expected_count, before.expected_count(ids, n, tries))
    else:
        assert ids.shape == (tc.shape[0], n)
        rows = list(ids)
        for i in range(tc.shape[0]):
            _same(cs.true_expected_count[i], before.expected_count(tc[i], n, int(tries[i])))
    for i, row in enumerate(rows):
        if unique:
            assert len(set(row.tolist())) == len(row)
        if remove:
            truth = set(tc.ravel().tolist()) if recipe.kind == "sample" else set(tc[i].tolist())
            assert not set(row.tolist()) & truth
    # The call learned its true classes, each occurrence once, after drawing.
    learned = 0 if tc is None else tc.size
    assert s.total_count == r + learned and before.total_count == r
    if tc is not None:
        u, c = np.unique(tc, return_counts=True)
        np.testing.assert_array_equal(s.counts(u), 1 + c)
    if args["seed"] is not None:
        _same(tuple(again(True)[0]), tuple(cs))


register(
    Entry(
        name="LearnedUnigramSampler",
        call=_learned_call,
        valid=_learned_valid,
        hostile=lambda: {
            "range_max": st.one_of(hostile_int(), st.sampled_from([0, -5, 2**62, 2**62 + 1])),
            "seed": hostile_seed(),
            "num_sampled": hostile_int(),
            "true_classes": hostile_ids(1000, ndims=(0, 1, 2, 3)),
            "unique": hostile_flag(),
            "remove_true": hostile_flag(),
        },
        check=_learned_check,
        blame={
            "true_classes": frozenset({"num_sampled"}),
            "remove_true": frozenset({"num_sampled"}),
            "range_max": frozenset({"num_sampled", "true_classes"}),
        },
        names=frozenset({"range_max", "seed", "num_sampled", "true_classes", "unique", "remove_true"}),
    )
)

# ---------------------------------------------------------------------------------------------------------
# FrequencyEstimator: construct, update once with `ids`, then probability and log_q of `query`.
# ---------------------------------------------------------------------------------------------------------


def _freq_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    a = dict(args)
    est = zn.FrequencyEstimator(
        a.pop("num_buckets"), num_hashes=a.pop("num_hashes"), alpha=a.pop("alpha"), seed=a.pop("seed")
    )
    est.update(a.pop("ids"))
    q = a.pop("query")
    return est.probability(q), est.log_q(q), est


@st.composite if st is not None else (lambda f: f)
def _freq_valid(draw):
    hi = draw(st.sampled_from([5, 1000, 2**62]))
    args = {
        "num_buckets": draw(st.sampled_from([1, 2, 7, 1024, 2**16])),
        "num_hashes": draw(st.integers(1, 4)),
        "alpha": draw(st.sampled_from([1e-6, 0.01, 0.5, 1.0, np.float32(0.1), 1])),
        "seed": draw(seeds()),
        "ids": draw(valid_ids(hi, ndims=(0, 1, 2), max_side=5)),
        "query": draw(valid_ids(hi, ndims=(0, 1, 2), max_side=5)),
    }
    return "update", args


def _freq_check(recipe, args, out, again):
    p, lq, est = out
    ids, q = _ids_array(args["ids"]), _ids_array(args["query"])
    assert isinstance(p, np.ndarray) and p.dtype == np.float64 and p.shape == q.shape
    assert lq.dtype == np.float32 and lq.shape == q.shape
    np.testing.assert_array_equal(lq, np.log(p).astype(np.float32))
    # One step: every cell the update reached has gap 1; a cell never reached estimates 1 / (1 + 1).
    assert np.all((p == 1.0) | (p == 0.5))
    assert np.all(p[np.isin(q, ids)] == 1.0)
    assert est.step == 1
    _same(pickle.loads(pickle.dumps(est)).probability(q), p)
    _same(again(True)[0], p)


register(
    Entry(
        name="FrequencyEstimator",
        call=_freq_call,
        valid=_freq_valid,
        hostile=lambda: {
            "num_buckets": st.one_of(hostile_int(), st.sampled_from([0, -3, 2**32 + 1])),
            "num_hashes": st.one_of(hostile_int(), st.sampled_from([0, 17])),
            "alpha": st.one_of(hostile_float(), st.sampled_from([0.0, -0.5, 1.5, 2])),
            "seed": hostile_seed(),
            "ids": hostile_ids(1000, ndims=(0, 1, 2, 3)),
            "query": hostile_ids(1000, ndims=(0, 1, 2, 3)),
        },
        check=_freq_check,
        blame={"query": frozenset({"ids"})},
        names=frozenset({"num_buckets", "num_hashes", "alpha", "seed", "ids"}),
    )
)
