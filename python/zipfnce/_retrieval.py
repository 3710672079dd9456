"""Mixed negative sampling for two-tower retrieval (Yang et al. 2020): in-batch keys plus negatives drawn from a
zipfnce sampler over the corpus, each column corrected by the expected count of its item under the mixture of
the two sources.

The estimator. Row ``i`` of a batch holds a query ``q_i`` and its positive item ``t_i``; its negatives are the
other ``B - 1`` keys of the batch (items drawn, in effect, from the data's item frequency) and ``S`` items drawn
by a sampler over the corpus. With the score ``s(q, y) = q . emb(y) / temperature``, the full softmax over the
corpus ``V`` has the loss ``-s(q_i, t_i) + log Z_i``, ``Z_i = sum_{y in V} exp(s(q_i, y))``. Both sources put item
``y`` among the negatives some random number of times; their union is one draw whose expected count of ``y`` is

    m(y) = E_B(y) + E_S(y)

where ``E_B(y)`` is the expected number of times ``y`` is among a batch's keys and ``E_S(y)`` its expected count in
the sampler's draw of ``S``. Every column ``c`` (item ``y_c``), in-batch or sampled, and the positive get the
logit ``z_ic = s(q_i, y_c) - log m(y_c)``, and the loss is the softmax cross-entropy of the positive over those
columns (``zipfnce.info_nce_loss`` with ``key_log_q = log m(key_ids)``, ``negative_log_q = log m(negative_ids)``).
Since ``E[sum_c exp(s(q_i, y_c)) / m(y_c)] = sum_y m(y) exp(s(q_i, y)) / m(y) = Z_i`` over items with ``m > 0``, the
corrected columns estimate the full partition function without bias, whatever the mix, and the loss's gradient
approaches the full softmax's as ``B + S`` grows (the self-normalised importance-sampling estimate; its bias is
``O(1 / (B + S))``). This is the balance heuristic of multiple importance sampling (Veach & Guibas 1995).

Correcting each column by its own source only (``log E_B`` on the keys, ``log E_S`` on the samples) is not the
same: each source alone is an unbiased estimate of ``Z_i``, so together they estimate about ``2 Z_i`` (items both
sources reach are counted twice) and the positive is under-weighted; no correction at all lets popular items,
which fill the batch, dominate. ``correction="per_source"`` and ``"none"`` give those two for comparison.

``E_B`` comes from the probability that an id appears among a batch's keys, ``P_B(y)`` (what
``zipfnce.FrequencyEstimator.probability`` estimates): with Poisson arrivals ``P_B = 1 - exp(-E_B)``, so
``E_B = -log(1 - P_B)`` (``~ P_B`` for rare items). ``E_S`` is the sampler's own expected count (the
``true_expected_count`` of the keys and the ``sampled_expected_count`` of the candidates of one draw).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from ._validate import as_array, as_flag, as_ids, as_int

__all__ = ["MixedNegatives", "mixed_negatives"]

_CORRECTIONS = ("mixture", "per_source", "none")
#: Smallest expected count used in a log (an id the frequency estimate has not seen and the sampler cannot
#: draw would otherwise give log 0).
MIN_EXPECTED_COUNT = 1e-12


class MixedNegatives(NamedTuple):
    """One batch's mixed negatives (:func:`mixed_negatives`): the sampled ids, and the log-corrections of the key
    and sampled columns. Pass ``**m.kwargs()`` to ``zipfnce.info_nce_loss`` (or an adapter) with ``negatives=``
    the embeddings of ``m.negative_ids``."""

    key_ids: np.ndarray
    """int64 ``[B]``, the batch's key ids as given."""
    negative_ids: np.ndarray
    """int64 ``[S]``, the sampled items (embed them with the item tower)."""
    key_log_q: Optional[np.ndarray]
    """float64 ``[B]``: ``log m(key_ids)`` (None with ``correction="none"``)."""
    negative_log_q: Optional[np.ndarray]
    """float64 ``[S]``: ``log m(negative_ids)`` (None with ``correction="none"``)."""

    def kwargs(self) -> Dict[str, Any]:
        """``key_ids``, ``negative_ids``, ``key_log_q``, ``negative_log_q`` as keyword arguments of the InfoNCE
        loss (the ids mask accidental hits: a sampled item equal to a row's positive drops out of that row)."""
        return {
            "key_ids": self.key_ids,
            "negative_ids": self.negative_ids,
            "key_log_q": self.key_log_q,
            "negative_log_q": self.negative_log_q,
        }


def _batch_probability(source: Any, ids: np.ndarray) -> np.ndarray:
    """``P_B(ids)`` from a frequency estimate (``.probability``), a callable or a ``[V]`` array."""
    if hasattr(source, "probability") and callable(source.probability):
        p = source.probability(ids)
    elif callable(source):
        p = source(ids)
    else:
        table = as_array(source, "batch_probability")  # (a ragged list was numpy's unnamed ValueError)
        if table.ndim != 1 or table.dtype.kind not in "fiu":
            raise TypeError(
                "batch_probability: expected an object with .probability(ids), a callable, or a 1-D array [V] of "
                f"probabilities, got {type(source).__name__}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise ValueError(f"batch_probability: an id is outside the table's [0, {table.shape[0]})")
        p = table[ids]
    raw = as_array(p, "batch_probability")
    # Strings, complex numbers, objects: numpy's unnamed errors, or imaginary parts silently dropped.
    if raw.dtype.kind not in "fiu":
        raise TypeError(f"batch_probability: expected real probabilities, got values of dtype {raw.dtype}")
    p = raw.astype(np.float64)
    if p.shape != ids.shape:
        raise ValueError(f"batch_probability: returned shape {p.shape} for ids of shape {ids.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("batch_probability: probabilities must be finite and in [0, 1]")
    return p


def _batch_count(p: np.ndarray) -> np.ndarray:
    """``E_B = -log(1 - P_B)`` (Poisson arrivals), finite for ``P_B = 1``."""
    return -np.log1p(-np.minimum(p, 1.0 - 1e-12))


def mixed_negatives(
    sampler: Any,
    num_sampled: int,
    key_ids: Any,
    batch_probability: Any,
    *,
    correction: str = "mixture",
    unique: bool = False,
    seed: Optional[int] = None,
) -> MixedNegatives:
    """Draw ``num_sampled`` corpus negatives for one batch and correct every column for the mixture of the
    in-batch and sampled sources (the module's documentation has the derivation).

    ``sampler``: a zipfnce sampler over the corpus ids ``[0, V)`` (``UniformSampler``, ``LogUniformSampler``,
    ``UnigramSampler``, ...). ``key_ids``: int ``[B]``, the item id of each row's positive. ``batch_probability``:
    ``P_B(y)``, the probability that item ``y`` appears among a batch's keys: a ``zipfnce.FrequencyEstimator`` (or
    any object with ``.probability(ids)``), a callable ``ids -> P_B``, or a ``[V]`` array. With
    ``E_B = -log(1 - P_B)`` and ``E_S`` the sampler's expected count in this draw, every column gets::

        mixture     (default)  log_q(y) = log(E_B(y) + E_S(y))       for keys and sampled items alike
        per_source             log_q(key) = log E_B(key),  log_q(sampled) = log E_S(sampled)
        none                   no correction (key_log_q = negative_log_q = None)

    (expected counts below ``MIN_EXPECTED_COUNT`` are raised to it). The loss is then::

        z[i, c] = q_i . emb(y_c) / temperature - log_q(y_c)
        loss[i] = -log softmax_c(z[i, :])[i]      over the B keys and the S sampled items, accidental hits masked

    which with ``mixture`` estimates the full softmax over the corpus. ``unique`` and ``seed`` go to
    ``sampler.sample``. Returns :class:`MixedNegatives`.
    """
    if not isinstance(correction, str) or correction not in _CORRECTIONS:  # (an array's `in` was ambiguous)
        raise ValueError(f"correction: must be one of {_CORRECTIONS}, got {correction!r}")
    if isinstance(sampler, type) or not (hasattr(sampler, "sample") and hasattr(sampler, "range_max")):
        raise TypeError(f"sampler: expected a zipfnce sampler, got {type(sampler).__name__}")
    n = as_int(num_sampled, "num_sampled", lo=1)
    kid = as_ids(key_ids, "key_ids")
    if kid.ndim != 1 or kid.size == 0:
        raise ValueError(f"key_ids: must be a non-empty 1-D array [B], got shape {kid.shape}")
    v = int(sampler.range_max)
    if kid.min() < 0 or kid.max() >= v:
        raise ValueError(f"key_ids: ids must lie in the sampler's [0, {v}), got [{kid.min()}, {kid.max()}]")
    cs = sampler.sample(n, unique=as_flag(unique, "unique"), true_classes=kid, seed=seed)
    neg = np.asarray(cs.ids, dtype=np.int64)
    if correction == "none":
        return MixedNegatives(kid, neg, None, None)
    es_key = np.asarray(cs.true_expected_count, dtype=np.float64).reshape(-1)
    es_neg = np.asarray(cs.sampled_expected_count, dtype=np.float64)
    eb_key = _batch_count(_batch_probability(batch_probability, kid))
    if correction == "per_source":
        kq, nq = eb_key, es_neg
    else:
        eb_neg = _batch_count(_batch_probability(batch_probability, neg))
        kq, nq = eb_key + es_key, eb_neg + es_neg
    kq = np.log(np.maximum(kq, MIN_EXPECTED_COUNT))
    nq = np.log(np.maximum(nq, MIN_EXPECTED_COUNT))
    return MixedNegatives(kid, neg, kq, nq)
