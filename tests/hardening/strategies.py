"""Hypothesis strategies of valid and hostile arguments."""

from __future__ import annotations

import math

import numpy as np

try:  # hypothesis is only needed where strategies are drawn (the parent), not in the worker
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

from .recipes import LAYOUT_ORDER, RAW, Arr, Raw, SamplerRecipe

INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
FLOAT_DTYPES = ["float16", "float32", "float64"]

INT_EDGES = [-1, -(2**63), -(2**100), 2**35, 2**36, 2**36 + 1, 2**62 + 1, 2**63 - 1, 2**63, 2**64, 2**100]
NP_INT_EDGES = [np.int8(-1), np.int64(-(2**63)), np.uint64(2**64 - 1), np.uint64(2**63), np.int16(-5)]
NOT_INTS = [
    True,
    False,
    2.0,
    float("nan"),
    float("inf"),
    "3",
    b"3",
    None,
    [3],
    1 + 0j,
    np.float32(2.0),
    np.bool_(True),
    np.array([3]),
    np.array(3.0),
]
FLOAT_EDGES = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -1.0,
    -0.0,
    0.0,
    5e-324,
    1e-300,
    1e300,
    1.7976931348623157e308,
    10**400,
    -(10**400),
    np.float32("nan"),
    np.float16(1.0),
    np.float64(-2.0),
]
NOT_FLOATS = [True, "1", None, 1 + 1j, [1.0], b"1"]
FLAG_HOSTILE = [2, -1, "yes", "", None, 1.0, 0.5, [True], np.int64(2), np.float64(1.0)]
SEED_HOSTILE = [
    -1,
    2**64,
    2**64 + 5,
    -(2**200),
    2**200,
    np.uint64(2**64 - 1),
    np.int64(-5),
    1.5,
    "1",
    True,
    float("nan"),
    b"1",
    [1],
]


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
        edges = [
            v
            for v in (range_max, range_max - 1, -1, 2**62, 2**63 - 1, int(info.min), int(info.max))
            if int(info.min) <= v <= int(info.max)
        ]
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
    return st.one_of(
        st.sampled_from(INT_EDGES + NP_INT_EDGES + NOT_INTS),
        st.integers(-(2**70), -1),
        st.integers(2**36 + 1, 2**70),
    )


def hostile_float():
    return st.sampled_from(FLOAT_EDGES + NOT_FLOATS)


def hostile_flag():
    return st.sampled_from(FLAG_HOSTILE)


def hostile_seed():
    return st.sampled_from(SEED_HOSTILE)


def seeds():
    return st.one_of(
        st.none(),
        st.integers(0, 2**64 - 1),
        st.sampled_from([np.uint64(2**64 - 1), np.int64(7), np.uint8(3)]),
    )


def flags():
    return st.sampled_from([True, False, 0, 1, np.bool_(True), np.bool_(False), np.int8(1)])


RANGE_EDGES = [1, 2, 3, 10, 1000, 2**20, 2**31 + 11, 2**62]


def sampler_recipes(kinds=("log_uniform", "uniform", "zipf", "unigram"), small=False):
    """Valid samplers of every kind; `small` keeps range_max <= 1000 (exhaustive checks)."""
    rng = (
        st.sampled_from([r for r in RANGE_EDGES if r <= 1000])
        if small
        else st.one_of(st.sampled_from(RANGE_EDGES), st.integers(1, 10**6))
    )
    seed = st.integers(0, 2**64 - 1)

    def simple(kind):
        return st.tuples(rng, seed).map(lambda t: SamplerRecipe(kind, (("range_max", t[0]), ("seed", t[1]))))

    zipf = st.tuples(rng, st.one_of(st.floats(0.05, 4.0), st.sampled_from([1.0, 0.5, 2.0, 4.0])), seed).map(
        lambda t: SamplerRecipe("zipf", (("range_max", t[0]), ("exponent", t[1]), ("seed", t[2])))
    )

    @st.composite
    def unigram(draw):
        # Weights of 0 or at least 1e-2: classes of vanishing probability make unique sampling take up to
        # the library's bound of 2^31 draws, which is a test of patience, not of correctness.
        w = draw(
            st.lists(
                st.one_of(st.floats(1e-2, 100.0), st.sampled_from([0.0, 1.0, 1e-2])), min_size=1, max_size=40
            )
        )
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

    table = {
        "log_uniform": simple("log_uniform"),
        "uniform": simple("uniform"),
        "zipf": zipf,
        "unigram": unigram(),
    }
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
