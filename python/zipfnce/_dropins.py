"""Drop-ins for TensorFlow's candidate samplers (docs/API.md: TensorFlow-style samplers): same argument names, order and defaults as
``tf.random.*_candidate_sampler`` and ``tf.nn.compute_accidental_hits``, NumPy arrays in and out.

Probabilities and expected counts follow TensorFlow's kernels (``range_sampler.cc``): the log-uniform P(k)
is computed with TensorFlow's expression ``log((k+2)/(k+1)) / log1p(range_max)`` (whose rounding the
``LogUniformSampler`` class avoids) and rounded to float32; expected counts are ``P * num_sampled`` when no draw was rejected, else
``-expm1(num_tries * log1p(-P))``; the fixed unigram sampler raises counts to ``distortion`` in float32 and
normalises by a float32 running total, with its rules for reserved ids and shards. The random draws
themselves differ from TensorFlow's (another generator), and ``seed`` means: None, fresh randomness each
call; an int, the same candidates every call with that seed.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _core
from ._samplers import _unigram_source
from ._validate import (
    MAX_RANGE,
    MAX_SAMPLED,
    as_flag,
    as_float,
    as_int,
    as_seed,
    as_true_classes,
    ensure_memory,
)

__all__ = [
    "log_uniform_candidate_sampler",
    "uniform_candidate_sampler",
    "fixed_unigram_candidate_sampler",
    "all_candidate_sampler",
    "compute_accidental_hits",
]

Triple = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _run(sampler: Any, true_classes: Any, num_true: Any, num_sampled: Any, unique: Any, seed: Any) -> Triple:
    nt = as_int(num_true, "num_true", lo=1)
    tc = as_true_classes(true_classes, nt)
    n = as_int(num_sampled, "num_sampled", lo=1, hi=MAX_SAMPLED)
    ids, true_ec, sampled_ec, _ = sampler.sample(n, as_flag(unique, "unique"), tc, False, as_seed(seed))
    return ids, true_ec, sampled_ec


def log_uniform_candidate_sampler(
    true_classes: Any,
    num_true: int,
    num_sampled: int,
    unique: bool,
    range_max: int,
    seed: Optional[int] = None,
) -> Triple:
    """Candidates from ``P(k) = log((k+2)/(k+1)) / log(range_max+1)``, as ``tf.random.log_uniform_candidate_sampler``.

    Returns ``(sampled_candidates int64[S], true_expected_count float32[B, num_true],
    sampled_expected_count float32[S])``.
    """
    r = as_int(range_max, "range_max", lo=1, hi=MAX_RANGE)
    return _run(_core.Sampler.log_uniform(r, None, True), true_classes, num_true, num_sampled, unique, seed)


def uniform_candidate_sampler(
    true_classes: Any,
    num_true: int,
    num_sampled: int,
    unique: bool,
    range_max: int,
    seed: Optional[int] = None,
) -> Triple:
    """Candidates from ``P(k) = 1 / range_max``, as ``tf.random.uniform_candidate_sampler``."""
    r = as_int(range_max, "range_max", lo=1, hi=MAX_RANGE)
    return _run(_core.Sampler.uniform(r, None), true_classes, num_true, num_sampled, unique, seed)


def fixed_unigram_candidate_sampler(
    true_classes: Any,
    num_true: int,
    num_sampled: int,
    unique: bool,
    range_max: int,
    vocab_file: Union[str, "os.PathLike[str]"] = "",
    distortion: float = 1.0,
    num_reserved_ids: int = 0,
    num_shards: int = 1,
    shard: int = 0,
    unigrams: Any = (),
    seed: Optional[int] = None,
) -> Triple:
    """Candidates in proportion to ``unigrams ** distortion`` (or a vocab file's counts), as
    ``tf.random.fixed_unigram_candidate_sampler``.

    Ids ``0..num_reserved_ids-1`` are reserved (probability 0). With shards, the sampler covers the ids of
    ``shard`` only, numbered from 0, and ``range_max`` must equal their number (TensorFlow's rule).
    """
    r = as_int(range_max, "range_max", lo=1, hi=MAX_RANGE)
    w = _unigram_source(unigrams, vocab_file)
    s = _core.Sampler.unigram_tf(
        w,
        as_float(distortion, "distortion"),
        as_int(num_reserved_ids, "num_reserved_ids", lo=0, hi=2**32),
        as_int(num_shards, "num_shards", lo=1, hi=2**32),
        as_int(shard, "shard", lo=0, hi=2**32),
        True,
        None,
    )
    if s.range_max != r:
        raise ValueError(
            f"range_max: is {r} but the sampler has {s.range_max} classes "
            "(num_reserved_ids and unigrams in this shard); they must be equal"
        )
    return _run(s, true_classes, num_true, num_sampled, unique, seed)


def all_candidate_sampler(
    true_classes: Any, num_true: int, num_sampled: int, unique: bool, seed: Optional[int] = None
) -> Triple:
    """All classes ``0..num_sampled-1`` as candidates, every expected count 1, as ``tf.random.all_candidate_sampler``."""
    nt = as_int(num_true, "num_true", lo=1)
    tc = as_true_classes(true_classes, nt)
    n = as_int(num_sampled, "num_sampled", lo=1, hi=MAX_SAMPLED)
    as_flag(unique, "unique")
    as_seed(seed)
    if tc.size and (int(tc.min()) < 0 or int(tc.max()) >= n):
        bad = int(tc.min()) if int(tc.min()) < 0 else int(tc.max())
        raise ValueError(f"true_classes: class id {bad} is out of range [0, {n})")
    ensure_memory("num_sampled", 12 * n + 4 * tc.size)
    return (
        np.arange(n, dtype=np.int64),
        np.ones(tc.shape, dtype=np.float32),
        np.ones(n, dtype=np.float32),
    )


def compute_accidental_hits(
    true_classes: Any, sampled_candidates: Any, num_true: int, seed: Optional[int] = None
) -> Triple:
    """Where sampled candidates equal a row's true classes, as ``tf.nn.compute_accidental_hits``.

    Returns ``(indices int32[H], ids int64[H], weights float32[H])``: the row, the *position* in
    ``sampled_candidates`` and ``-FLT_MAX``, row by row and, within a row, in the order of its true classes.
    Identical to TensorFlow for distinct candidates; with repeated candidates every matching position is
    reported (TensorFlow reports only the last).
    """
    nt = as_int(num_true, "num_true", lo=1)
    tc = as_true_classes(true_classes, nt)
    from ._validate import as_ids

    sc = as_ids(sampled_candidates, "sampled_candidates")
    if sc.ndim != 1:
        raise ValueError(f"sampled_candidates: must be one-dimensional, got shape {sc.shape}")
    as_seed(seed)
    return _core.compute_accidental_hits(tc, sc, nt)
