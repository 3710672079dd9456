"""Reference values, computed with NumPy independently of the library's code."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .recipes import SamplerRecipe, build


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
    """Expected counts by docs/API.md's rule, from P (rounded to float32 first, as TensorFlow does).
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
