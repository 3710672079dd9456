"""Result checks, run where the call ran (``args`` are the built arguments, ``again(canonical)`` repeats
the call)."""

from __future__ import annotations

import operator
from typing import Any, Optional

import numpy as np

from .recipes import SAMPLER_CLASSES, SamplerRecipe, build
from .reference import (
    _ids_array,
    assert_counts,
    reference_counts,
    reference_hits,
    reference_probability,
    unigram_reference,
)

FLT_MAX = float(np.finfo(np.float32).max)


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
    np.testing.assert_allclose(
        p,
        reference_probability(SamplerRecipe(kind, tuple(recipe.args.items())), out, ids),
        rtol=1e-12,
        atol=1e-300,
    )
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
            np.asarray(u, dtype=np.float64),
            float(args.get("distortion", 1.0)),
            _as_int(args.get("num_reserved_ids", 0)),
            _as_int(args.get("num_shards", 1)),
            _as_int(args.get("shard", 0)),
        )
        assert np.all(p_all[ids] > 0)
        tries = n if not unique else infer_tries(sec, p_all[ids], n)
        _tf_counts_ok(sec, tec, p_all[ids], p_all[tc], n, unique, tries)
        return
    # Log-uniform and uniform: the same draws as the sampler class with the same seed, TF's expressions for P.
    cls = zn.LogUniformSampler if fn == "log_uniform_candidate_sampler" else zn.UniformSampler
    s = cls(r)
    if fn == "log_uniform_candidate_sampler":
        # TensorFlow's expression, which the drop-in keeps (it loses digits for huge k, as TF's does).
        def prob(k):
            k = np.asarray(k, dtype=np.float64)
            return np.log((k + 2.0) / (k + 1.0)) / np.log(r + 1.0)
    else:
        prob = s.probability
    tries = n if not unique else infer_tries(sec, prob(ids), n)
    if args.get("seed") is not None:
        ref = s.sample(n, unique=unique, true_classes=tc, seed=args["seed"])
        np.testing.assert_array_equal(ids, ref.ids)
        tries = ref.num_tries
        _same(out, again(True))
    _tf_counts_ok(sec, tec, prob(ids), prob(tc), n, unique, tries)


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
