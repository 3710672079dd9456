"""Entries: the sampler classes and their methods (docs/API.md: Samplers)."""

from __future__ import annotations

from typing import Any, Callable, Dict

try:  # hypothesis is only needed where strategies are drawn (the parent), not in the worker
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

from .checks import (
    check_constructor,
    check_expected_count,
    check_probability,
    check_sample,
    check_sample_per_row,
)
from .recipes import SAMPLER_CLASSES, SamplerRecipe
from .registry import Entry, register
from .strategies import (
    _valid_range,
    flags,
    hostile_flag,
    hostile_float,
    hostile_ids,
    hostile_int,
    hostile_seed,
    sampler_recipes,
    seeds,
    valid_ids,
)


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
        tc = (
            draw(st.one_of(st.none(), valid_ids(r, ndims=(1, 2), max_side=5, min_side=1)))
            if not remove
            else draw(valid_ids(r, ndims=(1, 2), max_side=4, min_side=1))
        )
        # 9000 draws take the parallel paths; Zipf tails need few unique draws to stay quick (see above).
        cap = 9000 if not unique else min(r, 30) if s.kind == "zipf" else min(r, 9000)
        n = draw(st.one_of(st.integers(0, min(cap, 40)), st.just(cap)))
        out = {
            "num_sampled": n,
            "unique": unique,
            "true_classes": tc,
            "remove_true": remove,
            "seed": draw(seeds()),
        }
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


register(
    Entry(
        name="Sampler.probability",
        call=_method("probability"),
        valid=lambda: _with_sampler(lambda s, r: _fixed(ids=valid_ids(r, ndims=(0, 1, 2, 3), max_side=5))),
        hostile=lambda: {"ids": hostile_ids(1000)},
        check=check_probability,
        names=frozenset({"ids"}),
    )
)

register(
    Entry(
        name="Sampler.expected_count",
        call=_method("expected_count"),
        valid=lambda: _with_sampler(
            lambda s, r: st.integers(0, 50).flatmap(
                lambda n: _fixed(
                    ids=valid_ids(r, ndims=(0, 1, 2), max_side=5),
                    num_sampled=st.just(n),
                    num_tries=st.one_of(st.none(), st.just(n), st.integers(n, n + 10**6), st.just(2**63 - 1)),
                )
            )
        ),
        hostile=lambda: {"ids": hostile_ids(1000), "num_sampled": hostile_int(), "num_tries": hostile_int()},
        check=check_expected_count,
        blame={"num_sampled": frozenset({"num_tries"})},
        names=frozenset({"ids", "num_sampled", "num_tries"}),
    )
)

register(
    Entry(
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
        blame={
            # Without true_classes, remove_true=True is the argument that has nothing to act on.
            "true_classes": frozenset({"num_sampled", "remove_true"}),
            "remove_true": frozenset({"num_sampled"}),
        },
        names=frozenset({"num_sampled", "true_classes", "unique", "remove_true", "seed"}),
    )
)

register(
    Entry(
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
        blame={
            # Without true_classes, remove_true=True is the argument that has nothing to act on.
            "true_classes": frozenset({"num_sampled", "remove_true"}),
            "remove_true": frozenset({"num_sampled"}),
        },
        names=frozenset({"num_sampled", "true_classes", "unique", "remove_true", "seed"}),
    )
)


def _constructor_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    return getattr(zn, SAMPLER_CLASSES[kind])(**args)


def _constructor_valid():
    return sampler_recipes().map(lambda r: (r.kind, dict(r.kwargs)))


def _constructor_check(recipe, args, out, again):
    check_constructor(SamplerRecipe(recipe.kind, recipe.args), args, out, again)


register(
    Entry(
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
        names=frozenset(
            {
                "range_max",
                "exponent",
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
