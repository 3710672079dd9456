"""Entries: the TensorFlow drop-ins (docs/API.md: TensorFlow-style samplers)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

try:  # hypothesis is only needed where strategies are drawn (the parent), not in the worker
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

from .checks import check_dropin, check_hits, check_threads
from .recipes import Arr, SamplerRecipe
from .registry import Entry, register
from .strategies import (
    INT_DTYPES,
    RANGE_EDGES,
    _valid_range,
    flags,
    hostile_flag,
    hostile_float,
    hostile_ids,
    hostile_int,
    hostile_seed,
    layouts,
    seeds,
)


def _dropin_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    return getattr(zn, kind)(**args)


@st.composite if st is not None else (lambda f: f)
def _dropin_valid(draw):
    fn = draw(
        st.sampled_from(
            [
                "log_uniform_candidate_sampler",
                "uniform_candidate_sampler",
                "fixed_unigram_candidate_sampler",
                "all_candidate_sampler",
            ]
        )
    )
    unique = draw(flags())
    nt = draw(st.integers(1, 3))
    args: Dict[str, Any] = {}
    if fn == "fixed_unigram_candidate_sampler":
        w = draw(st.lists(st.floats(0.5, 50.0), min_size=1, max_size=30))
        ns = draw(st.integers(1, 2))
        sh = draw(st.integers(0, ns - 1))
        res = draw(st.integers(0, 2))

        def sampler(sh):
            return SamplerRecipe(
                "unigram",
                (
                    ("unigrams", Arr(tuple(w), "float64", (len(w),))),
                    ("num_shards", ns),
                    ("shard", sh),
                    ("num_reserved_ids", res),
                ),
            )

        s = sampler(sh)
        if _valid_range(s) == 0:
            # Shard `sh` holds no class (one unigram, at most one reserved id, shard 1 of 2): no range_max is
            # valid (0 is refused as range_max, any other as an empty sampler, "unigrams"), so this is no
            # valid call. Shard 0 always holds id 0.
            sh = 0
            s = sampler(sh)
        r = _valid_range(s)
        args.update(
            unigrams=Arr(tuple(w), "float64", (len(w),), draw(layouts())),
            distortion=draw(st.sampled_from([1.0, 0.75, 0.5])),
            num_reserved_ids=res,
            num_shards=ns,
            shard=sh,
            range_max=r,
        )
        support = r - sum(1 for i in range(res) if i % ns == sh)
    elif fn == "all_candidate_sampler":
        r = support = draw(st.integers(1, 200))
    else:
        r = support = draw(st.sampled_from(RANGE_EDGES[1:]) | st.integers(1, 10**6))
        args["range_max"] = r
    b = draw(st.integers(0, 5))
    tc = Arr(
        tuple(draw(st.lists(st.integers(0, max(r, 1) - 1), min_size=b * nt, max_size=b * nt))),
        "int64",
        (b, nt),
        draw(layouts()),
    )
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


register(
    Entry(
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
            # A hostile range_max may be valid yet below a true class, which is then out of range.
            "range_max": frozenset({"true_classes"}),
            # all_candidate_sampler: ids must be below num_sampled.
            "num_sampled": frozenset({"true_classes"}),
        },
        names=frozenset(
            {
                "true_classes",
                "num_true",
                "num_sampled",
                "unique",
                "range_max",
                "seed",
                "unigrams",
                "distortion",
                "num_reserved_ids",
                "num_shards",
                "shard",
                "vocab_file",
            }
        ),
    )
)


@st.composite if st is not None else (lambda f: f)
def _hits_valid(draw):
    nt = draw(st.integers(1, 3))
    b = draw(st.integers(0, 6))
    vals = st.integers(0, 12)
    tc = Arr(
        tuple(draw(st.lists(vals, min_size=b * nt, max_size=b * nt))),
        draw(st.sampled_from(INT_DTYPES)),
        (b, nt),
        draw(layouts()),
    )
    s = draw(st.integers(0, 20))
    cands = Arr(
        tuple(draw(st.lists(vals, min_size=s, max_size=s))),
        draw(st.sampled_from(INT_DTYPES)),
        (s,),
        draw(layouts()),
    )
    return "compute_accidental_hits", {
        "true_classes": tc,
        "sampled_candidates": cands,
        "num_true": nt,
        "seed": draw(seeds()),
    }


register(
    Entry(
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
    )
)


def _threads_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    return zn.set_num_threads(**args)


register(
    Entry(
        name="set_num_threads",
        call=_threads_call,
        valid=lambda: st.integers(1, 8).map(lambda n: ("set_num_threads", {"n": n})),
        hostile=lambda: {"n": st.one_of(hostile_int(), st.sampled_from([0, 4097, -1]))},
        check=check_threads,
        names=frozenset({"n"}),
    )
)
