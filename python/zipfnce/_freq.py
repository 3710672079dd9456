"""Streaming frequency estimates for the logQ correction of in-batch negatives (docs/API.md: Retrieval)."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

from . import _core
from ._validate import as_array, as_float, as_ids, as_int, as_seed

__all__ = ["FrequencyEstimator"]


class FrequencyEstimator:
    """Streaming estimate of how likely an id is to appear in a batch (Yi et al., RecSys 2019).

    In-batch negatives are the other rows' items, so an item turns up as a negative about as often as it
    turns up in a batch; the sampled softmax over them needs ``log Q(id)`` with
    ``Q(id) = P(id appears in a batch)`` (pass :meth:`log_q` as ``key_log_q``). Nobody knows Q in
    advance and it drifts, so it is estimated from the stream: each of ``num_hashes`` hash functions maps
    an id to one of ``num_buckets`` cells, and a cell keeps the step ``A`` at which its ids were last seen
    and the average ``B`` of the gaps between those steps. At step ``t`` (the t-th :meth:`update`,
    counted from 1) each cell hit by the batch's ids is updated once, however often its ids repeat::

        n <- n + 1;   w = max(alpha, 1 / n);   B <- (1 - w) * B + w * (t - A);   A <- t   (A = 0 before)

    An id that appears in a batch with probability q has gaps of mean ``1 / q`` (the first one counted
    from step 0), so ``1 / B`` estimates q: the plain mean of the gaps until there are ``1 / alpha`` of
    them, then a moving average with a memory of about ``1 / alpha`` sightings (it follows a drifting
    stream). Ids sharing a cell shorten its gaps, so each hash can only overstate q; the estimate is the
    smallest over the hashes, ``Q(id) = 1 / max_h B_h(id)``, as in the paper. An id never seen (no cell
    of its hashes seen) gets ``1 / (t + 1)``.

    Accuracy (tests/test_frequency_estimator.py): on a Zipf(1.1) stream over 20 000 ids with batches
    of 256, after 3000 updates the median relative error of Q is 3.4 % over the 200 most frequent ids
    (the target is 10 %); BENCHMARKS.md gives it down the tail.

    Several ranks. :meth:`update` is deterministic, and ``seed`` (None means 0, not fresh entropy)
    only picks the hash functions, so estimators built alike and fed the same ids hold bit-identical
    state. With data parallelism feed every rank the ids of the global batch: all-gather them (B int64
    per rank, small next to the embeddings in-batch negatives gather anyway) and call :meth:`update`
    with all of them on every rank. The state cannot instead be all-reduced from per-rank updates: a
    moving average of gaps is not additive. To (re)synchronise a rank, broadcast :meth:`state_dict`
    from one rank and :meth:`load_state_dict` it on the others.

    Threads may share an estimator: calls take a lock, so each runs whole, in some order. It pickles
    and copies (the state travels). Memory: ``16 * num_hashes * num_buckets`` bytes.

    Args:
        num_buckets: cells per hash, in ``[1, 2**32]``. Make it several times the number of distinct ids
            that matter, so that they rarely share all their cells.
        num_hashes: hash functions, in ``[1, 16]`` (default 2).
        alpha: the moving average's weight, in ``(0, 1]`` (default 0.01).
        seed: None or an integer in ``[0, 2**64)``: picks the hash functions.
    """

    __slots__ = ("_f",)
    _f: Any

    def __init__(
        self,
        num_buckets: int = 2**20,
        *,
        num_hashes: int = 2,
        alpha: float = 0.01,
        seed: Optional[int] = None,
    ) -> None:
        nb = as_int(num_buckets, "num_buckets", lo=1, hi=_core.FREQ_MAX_BUCKETS)
        nh = as_int(num_hashes, "num_hashes", lo=1, hi=_core.FREQ_MAX_HASHES)
        a = as_float(alpha, "alpha")
        if not (math.isfinite(a) and 0.0 < a <= 1.0):
            raise ValueError(f"alpha: must be in (0, 1], got {a}")
        s = as_seed(seed)
        self._f = _core.FrequencyEstimator(nb, nh, a, 0 if s is None else s)

    @property
    def num_buckets(self) -> int:
        """Cells per hash."""
        return int(self._f.num_buckets)

    @property
    def num_hashes(self) -> int:
        """The number of hash functions."""
        return int(self._f.num_hashes)

    @property
    def alpha(self) -> float:
        """The moving average's weight."""
        return float(self._f.alpha)

    @property
    def seed(self) -> int:
        """The seed of the hash functions."""
        return int(self._f.seed)

    @property
    def step(self) -> int:
        """The number of :meth:`update` calls so far."""
        return int(self._f.step)

    def __repr__(self) -> str:
        return (
            f"FrequencyEstimator(num_buckets={self.num_buckets}, num_hashes={self.num_hashes}, "
            f"alpha={self.alpha}, seed={self.seed}, step={self.step})"
        )

    def update(self, ids: Any) -> None:
        """Record one batch: ``ids`` (integers >= 0, any shape; repeats count once). Call it once per
        training step, with every id the batch holds (the global batch with several ranks)."""
        self._f.update(as_ids(ids, "ids"))

    def probability(self, ids: Any) -> np.ndarray:
        """The estimated ``P(id appears in a batch) = 1 / max_h B_h(id)`` (float64, the shape of ``ids``)."""
        return self._f.probability(as_ids(ids, "ids"))

    def log_q(self, ids: Any, dtype: Any = np.float32) -> np.ndarray:
        """``log(probability(ids))`` in ``dtype`` (float32 or float64), ready for ``key_log_q``.

        Update with the batch first, then ask for its ids' log_q: each has been seen at least once."""
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype: must be float32 or float64, got {dt}")
        return np.log(self.probability(ids)).astype(dt, copy=False)

    def state_dict(self) -> Dict[str, Any]:
        """The whole state, one consistent copy: the constructor's arguments and the arrays ``last``
        (uint64), ``gap`` (float32) and ``seen`` (uint32), each ``[num_hashes, num_buckets]``."""
        step, last, gap, seen = self._f.state()
        shape = (self.num_hashes, self.num_buckets)
        return {
            "num_buckets": self.num_buckets,
            "num_hashes": self.num_hashes,
            "alpha": self.alpha,
            "seed": self.seed,
            "step": int(step),
            "last": last.reshape(shape),
            "gap": gap.reshape(shape),
            "seen": seen.reshape(shape),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Replace the state with ``state`` (from :meth:`state_dict` of an estimator built with the same
        arguments). Everything is checked before anything changes."""
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict, got {type(state).__name__}")
        for key in ("num_buckets", "num_hashes", "alpha", "seed"):
            if key not in state:
                raise ValueError(f"state: missing {key!r}")
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"state: {key} is {state[key]!r}, this estimator's is {getattr(self, key)!r}"
                )
        arrays = []
        for key, dt in (("last", np.uint64), ("gap", np.float32), ("seen", np.uint32)):
            if key not in state:
                raise ValueError(f"state: missing {key!r}")
            a = as_array(state[key], key)
            if a.dtype != dt:
                raise TypeError(f"{key}: expected dtype {np.dtype(dt)}, got {a.dtype}")
            arrays.append(np.ascontiguousarray(a).reshape(-1))
        step = as_int(state.get("step"), "step", lo=0, hi=2**64 - 1)
        self._f.set_state(step, *arrays)

    def __reduce__(self) -> Any:
        return (_restore, (self._f,))

    def __copy__(self) -> "FrequencyEstimator":
        return _restore(self._f.__copy__())

    def __deepcopy__(self, memo: Any) -> "FrequencyEstimator":
        return self.__copy__()


def _restore(core: Any) -> FrequencyEstimator:
    obj = object.__new__(FrequencyEstimator)
    obj._f = core
    return obj
