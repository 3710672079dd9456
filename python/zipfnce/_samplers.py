"""The candidate samplers (docs/API.md: Samplers): thin wrappers over the native core."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, List, NamedTuple, Optional, Type, TypeVar, Union

import numpy as np

from . import _core
from ._validate import (
    MAX_RANGE,
    MAX_SAMPLED,
    as_flag,
    as_float,
    as_ids,
    as_int,
    as_seed,
    as_true_classes,
    as_weights,
)

__all__ = [
    "CandidateSample",
    "LearnedUnigramSampler",
    "LogUniformSampler",
    "UniformSampler",
    "UnigramSampler",
    "ZipfSampler",
]


class CandidateSample(NamedTuple):
    """Sampled candidates and their expected counts; the first three fields are in TensorFlow's order.

    - ``ids``: int64 ``[S]`` (shared) or ``[B, S]`` (per row).
    - ``true_expected_count``: float32 ``[B, num_true]``, or None when no true classes were given.
    - ``sampled_expected_count``: float32, the shape of ``ids``.
    - ``num_tries``: how many draws it took (int, or int64 ``[B]`` per row).
    """

    ids: np.ndarray
    true_expected_count: Optional[np.ndarray]
    sampled_expected_count: np.ndarray
    num_tries: Union[int, np.ndarray]

    def to(self, device: Any) -> "CandidateSample":
        """The sample as torch tensors on ``device`` (needs torch): ``ids`` int64, the expected counts float32,
        ``num_tries`` as it is. One copy per field; for a CUDA device the host side is pinned and the copy is
        ``non_blocking``, so a training loop can draw and move the next batch's candidates while the device
        is still busy with this one. Fields that are already tensors on ``device`` are kept."""
        import torch

        dev = torch.device(device)
        pin = dev.type == "cuda" and torch.cuda.is_available()

        def move(a: Any, dtype: Any) -> Any:
            if a is None:
                return None
            t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            if t.device != dev:
                t = t.pin_memory().to(dev, non_blocking=True) if pin and t.device.type == "cpu" else t.to(dev)
            return t if t.dtype == dtype else t.to(dtype)

        return CandidateSample(
            move(self.ids, torch.int64),
            move(self.true_expected_count, torch.float32),
            move(self.sampled_expected_count, torch.float32),
            self.num_tries,
        )


_SEEDS_DOC = """
    Seeds and streams. ``seed`` is None or an integer in [0, 2**64). A sampler owns a random stream:
    each call without a ``seed=`` argument draws from it and advances it; with ``seed=s`` it is
    reproducible from the seed: ``LogUniformSampler(V, seed=11).sample(64)`` draws the same ids in every
    run. Without one it starts from fresh OS entropy. A call given ``seed=`` is stateless and leaves
    the stream alone.

    Copies and processes. A sampler pickles and deep-copies: a seeded sampler's copy continues its stream
    from where it was (it draws what the original would draw next); an unseeded sampler's copy, and an
    unseeded sampler in a forked child process, draws fresh OS entropy, so no two processes ever share
    an unseeded stream. :meth:`spawn` makes independent, reproducible streams for workers or ranks.

    PyTorch ``DataLoader`` workers (``num_workers > 0``; fork, spawn or forkserver): in a worker, the
    stream continues from the sampler's state mixed with the worker's seed
    (``torch.utils.data.get_worker_info().seed``, from which torch also seeds its own generator there).
    So every worker draws different candidates, every epoch new ones, and a run is repeated exactly
    when ``torch.manual_seed`` (or the loader's ``generator``) is set before the loader is built and the
    sampler is seeded. Without torch imported nothing of this happens.
"""


_S = TypeVar("_S", bound="_Sampler")


_INT64 = np.dtype(np.int64)
_tuple_new = tuple.__new__


def _plain_true_classes(tc: Any) -> bool:
    """Whether ``true_classes`` is already what ``as_true_classes`` returns unchanged: None, or an aligned
    int64 [B, num_true >= 1] ndarray (the fast path of ``sample``)."""
    return tc is None or (
        type(tc) is np.ndarray
        and tc.dtype is _INT64
        and tc.ndim == 2
        and tc.shape[1] > 0
        and tc.flags.aligned
    )


class _Process:
    """The process a sampler's stream was last checked in: a new token after every fork. ``lock``
    serialises the (rare) re-binding of streams, so that two threads' first calls cannot both re-bind."""

    token = object()
    lock = threading.Lock()


def _after_fork_in_child() -> None:
    _Process.token = object()
    _Process.lock = threading.Lock()  # another thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _worker_seed() -> Optional[int]:
    """The seed of the PyTorch DataLoader worker this runs in, or None (outside one, or torch not loaded)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return None if info is None else int(info.seed) % 2**64


def _restore(cls: Type[_S], core: Any, bound: bool = False) -> _S:
    """A sampler of class ``cls`` over the native sampler ``core`` (unpickled, or spawned: ``bound``, its
    stream already made for this process and worker)."""
    obj = object.__new__(cls)
    obj._own(core)
    if bound:
        obj._ctx = _Process.token
    return obj


class _Sampler:
    """Shared behaviour of every sampler. Subclasses set ``self._s`` through :meth:`_own`.

    ``_home`` is the process token under which ``_s``'s stream was made; ``_ctx`` the token under which
    the stream was last checked (None: not yet). A draw from the stream checks first (one comparison)."""

    __slots__ = ("_s", "_home", "_ctx")
    _s: Any

    def _own(self, core: Any) -> None:
        self._s, self._home, self._ctx = core, _Process.token, None

    def _stream(self) -> Any:
        """The native sampler whose stream the next call draws from (see _SEEDS_DOC)."""
        if self._ctx is not _Process.token:
            self._bind()
        return self._s

    def _bind(self) -> None:
        """Make the stream this process's: fresh entropy for an unseeded stream made before a fork, then the
        worker's stream in a DataLoader worker. Runs once per sampler and process."""
        with _Process.lock:
            token, s = _Process.token, self._s
            if self._ctx is token:  # another thread did it
                return
            if self._home is not token:  # forked since the stream was made
                s = s.after_fork() or s
            ws = _worker_seed()
            if ws is not None:
                s = s.for_worker(ws)
            self._s, self._home, self._ctx = s, token, token

    def __reduce__(self) -> Any:
        return (_restore, (type(self), self._s))

    def __copy__(self: _S) -> _S:
        """A copy of the same law (its tables shared, they never change); see "Copies and processes"."""
        return _restore(type(self), self._s.__copy__())

    def __deepcopy__(self: _S, memo: Any) -> _S:
        return self.__copy__()

    def spawn(self: _S, n: int) -> List[_S]:
        """``n`` samplers of the same law with independent streams (the model is NumPy's
        ``SeedSequence.spawn``): child j of a sampler seeded with s draws the same in every run, children
        never share a stream with each other or with the parent, and a second ``spawn`` continues the child
        numbering (``spawn(2)`` then ``spawn(1)`` gives the children 0, 1, then 2). The law's tables are
        shared, not copied. Children of an unseeded sampler are unseeded."""
        k = as_int(n, "n", lo=0, hi=2**32)
        return [_restore(type(self), c, bound=True) for c in self._stream().spawn(k)]

    @property
    def range_max(self) -> int:
        """The number of classes; ids lie in ``[0, range_max)``."""
        return int(self._s.range_max)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(range_max={self.range_max})"

    def probability(self, ids: Any) -> np.ndarray:
        """P(k) for each id (float64, same shape as ``ids``). Ids outside ``[0, range_max)`` raise ValueError."""
        return self._s.probability(as_ids(ids, "ids"))

    def expected_count(self, ids: Any, num_sampled: int, num_tries: Optional[int] = None) -> np.ndarray:
        """Expected counts (float32, shape of ``ids``) of classes after a draw of ``num_sampled`` candidates
        that took ``num_tries`` draws: ``P(k) * num_sampled`` when ``num_tries`` is None or equals
        ``num_sampled`` (draws with replacement), else ``-expm1(num_tries * log1p(-P(k)))``.
        """
        n = as_int(num_sampled, "num_sampled", lo=0, hi=MAX_SAMPLED)
        t = n if num_tries is None else as_int(num_tries, "num_tries", lo=n, hi=2**63 - 1)
        return self._s.expected_count(as_ids(ids, "ids"), n, t)

    def sample(
        self,
        num_sampled: int,
        *,
        unique: bool = True,
        true_classes: Any = None,
        remove_true: bool = False,
        seed: Optional[int] = None,
    ) -> CandidateSample:
        """Draw one set of ``num_sampled`` candidates shared by the whole batch.

        Expected counts: with ``unique=False``, ``P(k) * num_sampled``; with ``unique=True``,
        ``-expm1(num_tries * log1p(-P(k)))``, where ``num_tries`` is the number of draws it took to collect
        ``num_sampled`` distinct ids (TensorFlow's rule: exactly ``P(k) * num_sampled`` when no draw was
        rejected). P(k) is rounded to float32 first, as TensorFlow does.

        ``true_classes`` (int [B] or [B, num_true]) get expected counts under the unrestricted P. With
        ``remove_true=True`` no candidate equals any of them; the candidates' P is then renormalised over
        the remaining classes. ``seed`` makes the call stateless and reproducible; without it the call
        advances the sampler's own stream.
        """
        # A training loop's call (a Python int, bools, no seed, true classes already int64 [B, T]) needs
        # none of the conversions below: skipping them saves tens of microseconds on a call that follows
        # other work, when every line of Python run is a cache miss (BENCHMARKS.md, issue 18's section).
        if (
            type(num_sampled) is int
            and 0 <= num_sampled <= MAX_SAMPLED
            and (unique is True or unique is False)
            and remove_true is False
            and seed is None
            and self._ctx is _Process.token
            and _plain_true_classes(true_classes)
        ):
            return _tuple_new(CandidateSample, self._s.sample(num_sampled, unique, true_classes, False, None))
        n = as_int(num_sampled, "num_sampled", lo=0, hi=MAX_SAMPLED)
        tc = None if true_classes is None else as_true_classes(true_classes)
        remove = as_flag(remove_true, "remove_true")
        if remove and tc is None:
            raise ValueError("remove_true: needs true_classes")
        return CandidateSample(
            *self._stream().sample(n, as_flag(unique, "unique"), tc, remove, as_seed(seed))
        )

    def sample_per_row(
        self,
        true_classes: Any,
        num_sampled: int,
        *,
        unique: bool = True,
        remove_true: bool = False,
        seed: Optional[int] = None,
    ) -> CandidateSample:
        """Draw a separate set of ``num_sampled`` candidates for every row of ``true_classes``.

        Returns ids int64 ``[B, S]``, true expected counts float32 ``[B, num_true]``, sampled expected counts
        float32 ``[B, S]`` and ``num_tries`` int64 ``[B]``; each row follows the rules of :meth:`sample`,
        with ``remove_true`` excluding that row's own true classes. Rows run in parallel; the result does
        not depend on the number of threads.
        """
        tc = as_true_classes(true_classes)
        n = as_int(num_sampled, "num_sampled", lo=0, hi=MAX_SAMPLED)
        return CandidateSample(
            *self._stream().sample_per_row(
                tc, n, as_flag(unique, "unique"), as_flag(remove_true, "remove_true"), as_seed(seed)
            )
        )


class LogUniformSampler(_Sampler):
    """Log-uniform (Zipfian) classes: ``P(k) = log((k + 2) / (k + 1)) / log(range_max + 1)``.

    The law of TensorFlow's ``log_uniform_candidate_sampler``: suits class ids sorted by decreasing
    frequency. ``range_max`` may be as large as 2^62.
    """

    __slots__ = ()

    def __init__(self, range_max: int, *, seed: Optional[int] = None) -> None:
        self._own(
            _core.Sampler.log_uniform(as_int(range_max, "range_max", lo=1, hi=MAX_RANGE), as_seed(seed))
        )


class UniformSampler(_Sampler):
    """Uniform classes: ``P(k) = 1 / range_max`` (``range_max`` up to 2^62)."""

    __slots__ = ()

    def __init__(self, range_max: int, *, seed: Optional[int] = None) -> None:
        self._own(_core.Sampler.uniform(as_int(range_max, "range_max", lo=1, hi=MAX_RANGE), as_seed(seed)))


class ZipfSampler(_Sampler):
    """Exact Zipf classes: ``P(k) = (k + 1)^-exponent / H(range_max, exponent)``.

    ``H(N, s) = sum_{n=1..N} n^-s``. Any exponent > 0 and any ``range_max`` up to 2^62, with no table:
    draws use rejection-inversion (Hörmann & Derflinger 1996); ``H`` is an exact head sum plus an
    Euler-Maclaurin tail, so ``probability`` is exact to about 1e-14 relative.
    """

    __slots__ = ()

    def __init__(self, range_max: int, exponent: float = 1.0, *, seed: Optional[int] = None) -> None:
        r = as_int(range_max, "range_max", lo=1, hi=MAX_RANGE)
        s = as_float(exponent, "exponent")
        if s <= 0:
            raise ValueError(f"exponent: must be > 0, got {s}")
        self._own(_core.Sampler.zipf(r, s, as_seed(seed)))


def _read_vocab(vocab_file: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    if not isinstance(vocab_file, (str, os.PathLike)):
        raise TypeError(f"vocab_file: expected a path, got {type(vocab_file).__name__}")
    try:
        with open(vocab_file, encoding="utf-8") as f:
            text = f.read()
    except ValueError as e:  # undecodable bytes, or a NUL in the path
        raise ValueError(f"vocab_file: cannot be read: {e}") from None
    return _core.parse_vocab(text)


def _unigram_source(unigrams: Any, vocab_file: Any) -> np.ndarray:
    has_file = vocab_file is not None and not (isinstance(vocab_file, str) and vocab_file == "")
    has_uni = unigrams is not None and not (isinstance(unigrams, (tuple, list)) and len(unigrams) == 0)
    if has_file and has_uni:
        raise ValueError("unigrams: give either unigrams or vocab_file, not both")
    if not has_file and not has_uni:
        raise ValueError("unigrams: give either unigrams or vocab_file")
    return _read_vocab(vocab_file) if has_file else as_weights(unigrams, "unigrams")


class UnigramSampler(_Sampler):
    """Classes drawn in proportion to weights: ``P(k) ∝ weight(k) ** distortion`` (Walker/Vose alias table).

    The weights come from ``unigrams`` or from a TensorFlow-style ``vocab_file`` (one class per line,
    comma-separated, the count in the last field). As in TensorFlow's ``fixed_unigram_candidate_sampler``,
    ids ``0..num_reserved_ids-1`` are reserved (weight 0, never drawn) and the unigrams follow; with
    ``num_shards > 1`` the sampler covers only the ids of ``shard``, renumbered ``0, 1, 2, ...``.
    Weights must be finite and >= 0 with a positive total. Math is in float64.
    """

    __slots__ = ()

    def __init__(
        self,
        unigrams: Any = None,
        *,
        vocab_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        distortion: float = 1.0,
        num_reserved_ids: int = 0,
        num_shards: int = 1,
        shard: int = 0,
        seed: Optional[int] = None,
    ) -> None:
        w = _unigram_source(unigrams, vocab_file)
        self._own(
            _core.Sampler.unigram_tf(
                w,
                as_float(distortion, "distortion"),
                as_int(num_reserved_ids, "num_reserved_ids", lo=0, hi=2**32),
                as_int(num_shards, "num_shards", lo=1, hi=2**32),
                as_int(shard, "shard", lo=0, hi=2**32),
                False,
                as_seed(seed),
            )
        )


for _cls in (LogUniformSampler, UniformSampler, ZipfSampler, UnigramSampler):
    _cls.__doc__ = (_cls.__doc__ or "") + _SEEDS_DOC


class LearnedUnigramSampler(_Sampler):
    """TensorFlow's learned unigram: classes drawn in proportion to counts learned from the true classes.

    Every class starts with count 1. Each :meth:`sample` (or :meth:`sample_per_row`) call draws from the
    counts as they are, computes the expected counts with them, and then adds the call's
    ``true_classes``, each occurrence +1 (a call without true classes learns nothing)::

        P(k) = count_k / sum_j count_j,    count_k = 1 + (times k was a true class of an earlier call)

    So over a sequence of calls the counts, P and the expected counts evolve as those of
    ``tf.random.learned_unigram_candidate_sampler`` (tested against it), with one difference: TensorFlow
    keeps int32 counts and stops learning once their total reaches 2^31 - 1; here counts are 64-bit and
    never stop. Expected counts follow :meth:`sample`'s rules (P rounded to float32 first, as
    TensorFlow does).

    No call rebuilds a table over all classes: the counts sit in a Fenwick tree of blocks of 32 classes,
    so a draw and an update each cost O(log range_max) (BENCHMARKS.md). Memory is about 8 bytes per
    class. :meth:`update` adds counts without drawing (to warm the sampler up, say).

    State. The sampler mutates, so it serialises its calls: threads may share it, and concurrent calls
    run one after the other, each whole (draw, then update), in some order. Copies and pickles carry the
    counts (a copy learns on its own from then on); :meth:`spawn`'s children share the parent's counts
    (one learned law, several streams: what any of them learns, all draw from). Worker processes get
    copies, so what a DataLoader worker learns stays in that worker. A call with ``seed=`` draws
    reproducibly but still learns its true classes.
    """

    __slots__ = ()

    def __init__(self, range_max: int, *, seed: Optional[int] = None) -> None:
        self._own(_core.LearnedSampler(as_int(range_max, "range_max", lo=1, hi=MAX_RANGE), as_seed(seed)))

    @property
    def total_count(self) -> int:
        """The sum of the counts: ``range_max`` plus every true class learned so far."""
        return int(self._s.total_count)

    def counts(self, ids: Any) -> np.ndarray:
        """The current counts of ``ids`` (int64, the shape of ``ids``)."""
        return self._s.counts(as_ids(ids, "ids"))

    def update(self, true_classes: Any) -> None:
        """Add 1 to the count of each occurrence of ``true_classes`` (ints of any shape), drawing nothing."""
        self._s.update(as_ids(true_classes, "true_classes"))


LearnedUnigramSampler.__doc__ = (LearnedUnigramSampler.__doc__ or "") + _SEEDS_DOC
