"""Sampled softmax and NCE losses with gradients (docs/API.md: Sampled softmax and NCE).

The logits are TensorFlow's (``nn_impl._compute_sampled_logits``). For row ``b`` with input ``x_b``, true
classes ``t`` and candidates ``s``::

    z_t = x_b . w_t + bias_t - log(true_expected_count[b, t])
    z_s = x_b . w_s + bias_s - log(sampled_expected_count[s])      # or [b, s] for per-row candidates

(``- log(...)`` only with ``subtract_log_q``). With ``remove_accidental_hits`` a candidate equal to one of
the row's true classes is masked: it gets probability exactly 0 and contributes nothing to the loss or the
gradients (TensorFlow adds ``-FLT_MAX``, which has the same effect). True columns have label
``y = 1/num_true``, candidates label 0.

- sampled softmax: ``loss_b = -sum_t y log p_t``, ``p = softmax(z)`` over the true and unmasked columns;
- NCE: ``loss_b = sum_j [max(z_j, 0) - z_j y_j + log(1 + exp(-|z_j|))]`` (sigmoid cross-entropy, summed);
- focal (``focal_gamma = g > 0``, Lin et al. 2017): softmax ``-sum_t y (1 - p_t)^g log p_t``; NCE
  ``-sum_j [y_j (1 - s_j)^g log s_j + (1 - y_j) s_j^g log(1 - s_j)]`` with ``s = sigmoid(z)``.
  ``g = 0`` is exactly the plain loss.

Float math runs in the dtype of ``weights`` (float32 or float64); the other float arguments are converted to
it. Half precision: ``weights`` may be ``numpy.float16`` or ``ml_dtypes.bfloat16`` (a storage type: the rows
a call uses are widened to float32 as they are gathered, the math runs in float32, the table is never
copied); then ``biases`` must have the same dtype, ``inputs`` that dtype or float32 (any other mix is a
``TypeError`` naming the argument), the loss is float32 and every gradient has the dtype of its argument
(rounded to nearest even). With a float32/float64 table, half-precision ``inputs`` (and biases) are converted
to its dtype like any other float argument, and every result has the table's dtype, as before. ``weights`` is
read in place (only the rows used are touched); a weights array with negative strides or
misaligned data, or in non-native byte order, is copied first. Non-finite values in ``inputs``,
``grad_loss``, the rows of ``weights`` and
entries of ``biases`` that the call uses, non-positive expected counts (with ``subtract_log_q``) and logits
that overflow the float type raise ``ValueError`` rather than return NaN.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from . import _core
from ._dropins import log_uniform_candidate_sampler
from ._validate import (
    MAX_SAMPLED,
    as_array,
    as_flag,
    as_focal_gamma,
    as_ids,
    as_int,
    as_seed,
    compute_dtype,
    ensure_memory,
    half_storage,
)

__all__ = [
    "SparseGrad",
    "LossAndGrad",
    "sampled_softmax_loss",
    "nce_loss",
    "sampled_softmax_loss_and_grad",
    "nce_loss_and_grad",
]
# Also used by the adapters (torch/, jax.py, tf.py), not public: SampledOptions, options, SampledArgs,
# prepare, split_sampled_values.


class SparseGrad(NamedTuple):
    """Gradient rows over a subset of classes: ``indices`` int64 ``[U]`` sorted and unique, ``values``
    ``[U, d]`` (weights) or ``[U]`` (biases), summed over every use of a class in the call."""

    indices: np.ndarray
    values: np.ndarray


class LossAndGrad(NamedTuple):
    """The loss ``[B]`` and the gradients of ``sum_b grad_loss[b] * loss[b]``."""

    loss: np.ndarray
    grad_inputs: np.ndarray
    grad_weights: SparseGrad
    grad_biases: Optional[SparseGrad]


def _weights(w: Any) -> np.ndarray:
    a = as_array(w, "weights")  # (copies an unaligned array)
    if (a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8)) and half_storage(a.dtype) is None:
        raise TypeError(
            f"weights: expected a float32, float64, float16 or bfloat16 array, got dtype {a.dtype}"
        )
    if not a.dtype.isnative:
        # Byte-swapped floats (read from a big-endian file, say): the kernels need native ones.
        ensure_memory("weights", a.nbytes)
        a = a.astype(a.dtype.newbyteorder("="))
    if a.ndim != 2:
        raise ValueError(f"weights: must be [num_classes, dim], got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"weights: must be non-empty, got shape {a.shape}")
    if not a.flags.aligned or any(s < 0 or s % a.itemsize for s in a.strides):
        a = np.ascontiguousarray(a)  # exotic layouts only; the usual views are read in place
    return a


def _floats(x: Any, name: str, dtype: np.dtype) -> np.ndarray:
    """``x`` as a C-contiguous array of ``dtype`` (float, or for ``grad_loss`` also integer, input)."""
    a = as_array(x, name)  # (names the argument in numpy's complaints; copies an unaligned array)
    ok = "f" if name != "grad_loss" else "fiu"
    if a.dtype.kind not in ok and half_storage(a.dtype) is None:  # (bfloat16 is numpy kind "V")
        raise TypeError(f"{name}: expected floats, got dtype {a.dtype}")
    if a.dtype == dtype and a.flags.c_contiguous:
        return a  # read in place (the usual case, and the cheap one: no errstate context)
    # A copy: refuse one that cannot fit (a broadcast view can be far larger than its memory).
    ensure_memory(name, a.size * np.dtype(dtype).itemsize)
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which the core reports
        return np.asarray(a, dtype=dtype, order="C")


def _inputs(x: Any, wdt: np.dtype, tag: Optional[str]) -> np.ndarray:
    """``inputs`` for a table of dtype ``wdt``: a float32/float64 table converts any float input to its dtype
    (half ones too); a half table (``tag``) takes its own dtype or float32, nothing else."""
    a = as_array(x, "inputs")
    if tag is None:
        return _floats(a, "inputs", wdt)
    if a.dtype != wdt and a.dtype != np.float32:
        raise TypeError(
            f"inputs: with a {wdt} weights table, inputs must be {wdt} or float32, got dtype {a.dtype}"
        )
    return np.ascontiguousarray(a)


def _half_biases(b: Any, wdt: np.dtype) -> np.ndarray:
    """``biases`` of a half-precision table: the table's own dtype (read in place, like the table)."""
    a = as_array(b, "biases")
    if a.dtype != wdt:
        raise TypeError(f"biases: with a {wdt} weights table, biases must be {wdt} too, got dtype {a.dtype}")
    return a


def split_sampled_values(sampled_values: Any) -> Tuple[Any, Any, Any]:
    """``(candidates, true_expected_count, sampled_expected_count)`` of a ``sampled_values`` that is not None:
    a :class:`CandidateSample` (four fields, TensorFlow's three first) or TensorFlow's 3-tuple. Every front end
    reads its ``sampled_values`` through this."""
    if isinstance(sampled_values, (tuple, list)) and len(sampled_values) in (3, 4):
        return sampled_values[0], sampled_values[1], sampled_values[2]
    raise TypeError(
        "sampled_values: expected None, a CandidateSample or a tuple (sampled_candidates, "
        f"true_expected_count, sampled_expected_count), got {type(sampled_values).__name__}"
    )


class SampledOptions(NamedTuple):
    """The non-array arguments of one sampled softmax or NCE call, checked once by :func:`options`.

    Every front end (the NumPy functions, and the torch, JAX and TensorFlow adapters) builds one per call and
    passes it down; it is immutable and hashable, so JAX holds it as a static argument. (A NamedTuple rather
    than a frozen dataclass: it is built on every call, and a tuple is several times cheaper to build.)"""

    nce: bool
    num_sampled: int
    num_classes: int
    num_true: int
    remove_accidental_hits: bool
    subtract_log_q: bool
    focal_gamma: float
    seed: Optional[int]
    num_hard_negatives: Optional[int] = None

    def check_num_classes(self, rows: int, table: str = "weights") -> None:
        """The default sampler draws from ``[0, num_classes)``: ``table`` (the front end's name of the
        weights) needs that many rows."""
        if self.num_classes > rows:
            raise ValueError(f"num_classes: is {self.num_classes} but {table} has only {rows} rows")

    def check_no_true_expected(self) -> None:
        """Candidates given without true expected counts: fine unless ``subtract_log_q`` needs them."""
        if self.subtract_log_q:
            raise ValueError(
                "sampled_values: true_expected_count is None (sample with true_classes=labels), "
                "but subtract_log_q needs it"
            )

    def draw(self, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The default candidates for ``labels`` (``[B, num_true]``): ``num_sampled`` unique log-uniform draws
        over ``num_classes``, reproducible with ``seed``. The one place where the default sampler is called."""
        return log_uniform_candidate_sampler(
            labels, self.num_true, self.num_sampled, True, self.num_classes, seed=self.seed
        )

    def bind(self, weights: Any, biases: Any, labels: Any, inputs: Any, sampled_values: Any) -> "SampledArgs":
        """The arrays of one call checked against these options (and drawn, for ``sampled_values=None``)."""
        return _bind(self, _weights(weights), biases, labels, inputs, sampled_values)


def options(
    nce: bool,
    num_sampled: Any,
    num_classes: Any,
    num_true: Any,
    remove_accidental_hits: Any,
    seed: Any,
    subtract_log_q: Any,
    focal_gamma: Any,
    num_hard_negatives: Any = None,
) -> SampledOptions:
    """The checked :class:`SampledOptions` of a call (``TypeError``/``ValueError`` naming the argument)."""
    nt = as_int(num_true, "num_true", lo=1)
    ns = as_int(num_sampled, "num_sampled", lo=1, hi=MAX_SAMPLED)
    nc = as_int(num_classes, "num_classes", lo=1)
    hits = as_flag(remove_accidental_hits, "remove_accidental_hits")
    log_q = as_flag(subtract_log_q, "subtract_log_q")
    gamma = as_focal_gamma(focal_gamma)
    h = None if num_hard_negatives is None else as_int(num_hard_negatives, "num_hard_negatives", lo=1)
    if h is not None and nce:
        raise ValueError("num_hard_negatives: applies to the sampled softmax only (not NCE)")
    if h is not None and h > ns:
        raise ValueError(f"num_hard_negatives: {h} is larger than the number of sampled candidates ({ns})")
    return SampledOptions(bool(nce), ns, nc, nt, hits, log_q, gamma, as_seed(seed), h)


class SampledArgs(NamedTuple):
    """A sampled softmax or NCE call with every argument checked and converted (built by :func:`prepare` or
    :meth:`SampledOptions.bind`): the float arrays in the dtype of ``weights``, the ids int64, the default
    candidates drawn. :meth:`loss` and :meth:`loss_and_grad` run it; a backward pass that recomputes runs the
    same object again, so it sees the same candidates."""

    options: SampledOptions
    weights: np.ndarray
    biases: Optional[np.ndarray]
    labels: np.ndarray
    inputs: np.ndarray
    candidates: np.ndarray
    true_expected_count: np.ndarray
    sampled_expected_count: np.ndarray

    def loss(self) -> np.ndarray:
        """The loss ``[B]``."""
        return self._run(False, None)[0]

    def loss_and_grad(self, grad_loss: Any = None) -> LossAndGrad:
        """The loss and the gradients of ``sum_b grad_loss[b] * loss[b]`` (None: all ones)."""
        gl = None
        if grad_loss is not None:
            bsz = self.labels.shape[0]
            cdt = compute_dtype(self.weights.dtype)
            gl = _floats(grad_loss, "grad_loss", cdt)
            if gl.ndim == 0:
                gl = np.full(bsz, gl, dtype=cdt)
            if gl.shape != (bsz,):
                raise ValueError(f"grad_loss: must be a scalar or [batch={bsz}], got shape {gl.shape}")
        loss, gx, gw_i, gw_v, gb_i, gb_v = self._run(True, gl)
        wdt, xdt = self.weights.dtype, self.inputs.dtype
        if gw_v.dtype != wdt:  # a half-precision table: its gradients come back as uint16
            gw_v = gw_v.view(wdt)
            gb_v = None if gb_v is None else gb_v.view(wdt)
        if gx.dtype != xdt:  # half inputs of a half table: a uint16 view
            gx = gx.view(xdt)
        gb = None if gb_i is None else SparseGrad(gb_i, gb_v)
        return LossAndGrad(loss, gx, SparseGrad(gw_i, gw_v), gb)

    def _run(self, want_grad: bool, grad_loss: Optional[np.ndarray]) -> Any:
        # The one call of the native sampled loss. Half precision crosses as uint16 views with a storage tag.
        o, w, b, lab, x, ids, te, se = self
        # num_hard_negatives goes by keyword, only when set (the plain call keeps its arguments).
        hard = {} if o.num_hard_negatives is None else {"num_hard_negatives": o.num_hard_negatives}
        tag = half_storage(w.dtype)
        if tag is None:
            return _core.sampled_loss(
                o.nce, w, b, lab, x, ids, te, se, o.remove_accidental_hits, o.subtract_log_q, o.focal_gamma,
                want_grad, grad_loss, **hard,
            )  # fmt: skip
        w = w.view(np.uint16)
        b = None if b is None else b.view(np.uint16)
        if x.dtype == self.weights.dtype:
            x = x.view(np.uint16)
        return _core.sampled_loss(
            o.nce, w, b, lab, x, ids, te, se, o.remove_accidental_hits, o.subtract_log_q, o.focal_gamma,
            want_grad, grad_loss, storage=tag, **hard,
        )  # fmt: skip


def prepare(
    nce: bool,
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    num_sampled: Any,
    num_classes: Any,
    num_true: Any,
    sampled_values: Any,
    remove_accidental_hits: Any,
    seed: Any,
    subtract_log_q: Any,
    focal_gamma: Any,
    num_hard_negatives: Any = None,
) -> SampledArgs:
    """Every argument of a sampled softmax (``nce=False``) or NCE call checked once, in the order the errors
    are reported (``weights`` first), and the default candidates drawn: the :class:`SampledArgs` to run."""
    w = _weights(weights)
    opts = options(
        nce, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma,
        num_hard_negatives,
    )  # fmt: skip
    return _bind(opts, w, biases, labels, inputs, sampled_values)


def _bind(
    o: SampledOptions, w: np.ndarray, biases: Any, labels: Any, inputs: Any, sampled_values: Any
) -> SampledArgs:
    wdt, (v, d) = w.dtype, w.shape
    tag = half_storage(wdt)
    dt = compute_dtype(wdt)  # expected counts (and grad_loss) in the compute type
    nt, ns = o.num_true, o.num_sampled
    lab = as_ids(labels, "labels")
    if lab.ndim == 1 and nt == 1:
        lab = lab.reshape(-1, 1)
    if lab.ndim != 2 or lab.shape[1] != nt:
        raise ValueError(f"labels: must be [batch, num_true={nt}], got shape {lab.shape}")
    bsz = lab.shape[0]
    if bsz == 0:
        raise ValueError("labels: the batch is empty")
    x = _inputs(inputs, wdt, tag)
    if x.ndim != 2:
        raise ValueError(f"inputs: must be [batch, dim], got shape {x.shape}")
    if x.shape[1] != d:
        raise ValueError(f"inputs: has {x.shape[1]} columns but weights has {d}")
    if x.shape[0] != bsz:
        raise ValueError(f"inputs: has {x.shape[0]} rows but labels has {bsz}")
    b = None
    if biases is not None:
        b = _floats(biases, "biases", dt) if tag is None else _half_biases(biases, wdt)
        if b.shape != (v,):
            raise ValueError(f"biases: must have shape ({v},) like the rows of weights, got {b.shape}")

    if sampled_values is None:
        o.check_num_classes(v)
        nc = o.num_classes
        # One pass: read as unsigned, a negative id is at least 2**63, so beyond any num_classes.
        if lab.size and int(lab.view(np.uint64).max()) >= nc:
            bad = lab.max() if lab.max() >= nc else lab.min()
            raise ValueError(
                f"labels: class id {bad} is outside the default sampler's range [0, num_classes={nc})"
            )
        ids, te, se = o.draw(lab)
    else:
        ids, te, se = split_sampled_values(sampled_values)
    ids = as_ids(ids, "sampled_values")
    if ids.ndim == 1:
        if ids.shape[0] != ns:
            raise ValueError(f"sampled_values: has {ids.shape[0]} candidates but num_sampled is {ns}")
    elif ids.ndim == 2:
        if ids.shape != (bsz, ns):
            raise ValueError(
                f"sampled_values: per-row candidates must be [batch={bsz}, num_sampled={ns}], got {ids.shape}"
            )
    else:
        raise ValueError(f"sampled_values: candidates must be [S] or [batch, S], got shape {ids.shape}")
    if te is None:
        o.check_no_true_expected()
        te = np.ones(lab.shape, dtype=dt)
    te = _floats(te, "sampled_values", dt)
    if te.shape != lab.shape and not (nt == 1 and te.shape == (bsz,)):
        raise ValueError(f"sampled_values: true_expected_count must be {lab.shape}, got {te.shape}")
    se = _floats(se, "sampled_values", dt)
    if se.shape != ids.shape:
        raise ValueError(
            f"sampled_values: sampled_expected_count has shape {se.shape}, the candidates {ids.shape}"
        )
    return SampledArgs(o, w, b, lab, x, ids, te, se)


_ARGS = """
    Arguments (as ``tf.nn.{tf}``): ``weights`` float ``[V, d]`` (float32, float64, or half precision:
    ``numpy.float16`` / ``ml_dtypes.bfloat16``, read in place and computed in float32, see the module
    docstring); ``biases`` ``[V]`` or None; ``labels`` int
    ``[B, num_true]`` (``[B]`` when ``num_true == 1``); ``inputs`` ``[B, d]``; ``num_sampled`` S;
    ``num_classes``, the range of the default sampler. ``sampled_values``: None draws S unique candidates
    from the log-uniform distribution over ``num_classes`` (``seed`` makes it reproducible), else TensorFlow's
    triple ``(candidates, true_expected_count, sampled_expected_count)`` or a :class:`CandidateSample` from
    ``sample`` (candidates ``[S]``, shared by the batch) or ``sample_per_row`` (``[B, S]``: each row its own
    candidates). Keyword-only: ``subtract_log_q`` (default True), ``focal_gamma`` (default 0)."""


def sampled_softmax_loss(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Any = None,
    remove_accidental_hits: bool = True,
    seed: Optional[int] = None,
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
    num_hard_negatives: Optional[int] = None,
) -> np.ndarray:
    """Sampled softmax loss per row, ``[B]``, as ``tf.nn.sampled_softmax_loss``.

    ``loss_b = sum_t (1/num_true) (lse_b - z_t)``, where ``lse_b`` is the log-sum-exp of the row's true and
    unmasked candidate logits (see the module docstring for the logits and the focal variant).

    ``num_hard_negatives=h`` (keyword-only, default None) mines hard negatives: row ``b`` keeps its true
    columns and the ``h`` largest of its unmasked candidate logits ``H_b`` (after the bias, the log-q
    correction and the accidental-hit mask; ties to the lower candidate position), and ``lse_b`` runs over
    those only: ``lse_b = log(sum_t exp(z_t) + sum_{s in H_b} exp(z_s))``. The other candidates get zero
    gradient. ``1 <= h <= num_sampled`` (else ``ValueError``); not for NCE.
    """
    return prepare(
        False, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
        sampled_values, remove_accidental_hits, seed, subtract_log_q, focal_gamma, num_hard_negatives,
    ).loss()  # fmt: skip


def nce_loss(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Any = None,
    remove_accidental_hits: bool = False,
    seed: Optional[int] = None,
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
) -> np.ndarray:
    """NCE loss per row, ``[B]``, as ``tf.nn.nce_loss``: sigmoid cross-entropy summed over the row's columns,

    ``loss_b = sum_j [max(z_j, 0) - z_j y_j + log(1 + exp(-|z_j|))]``, ``y = 1/num_true`` on the true
    columns (TensorFlow's choice, also for num_true > 1) and 0 on the candidates. Unlike TensorFlow's
    ``nce_loss`` this one takes a ``seed`` for the default sampler.
    """
    return prepare(
        True, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
        sampled_values, remove_accidental_hits, seed, subtract_log_q, focal_gamma,
    ).loss()  # fmt: skip


def sampled_softmax_loss_and_grad(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Any = None,
    remove_accidental_hits: bool = True,
    seed: Optional[int] = None,
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
    grad_loss: Any = None,
    num_hard_negatives: Optional[int] = None,
) -> LossAndGrad:
    """:func:`sampled_softmax_loss` and the gradients of ``sum_b c_b loss_b`` in one fused pass.

    ``c = grad_loss``: None means all ones (the gradient of ``loss.sum()``), a scalar or a ``[B]`` array
    weights the rows. With ``p`` the row's softmax, ``dL/dz_j = c_b (p_j - y_j)`` (focal: see the module
    docstring), and ``grad_inputs[b] = sum_j dL/dz_j w_j``; ``grad_weights`` holds ``sum_b dL/dz_bj x_b``
    for every class used (true or sampled), ``grad_biases`` ``sum_b dL/dz_bj``, both sparse.
    """
    return prepare(
        False, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
        sampled_values, remove_accidental_hits, seed, subtract_log_q, focal_gamma, num_hard_negatives,
    ).loss_and_grad(grad_loss)  # fmt: skip


def nce_loss_and_grad(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Any = None,
    remove_accidental_hits: bool = False,
    seed: Optional[int] = None,
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
    grad_loss: Any = None,
) -> LossAndGrad:
    """:func:`nce_loss` and the gradients of ``sum_b c_b loss_b`` in one fused pass
    (``dL/dz_j = c_b (sigmoid(z_j) - y_j)`` without focal); see :func:`sampled_softmax_loss_and_grad`."""
    return prepare(
        True, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
        sampled_values, remove_accidental_hits, seed, subtract_log_q, focal_gamma,
    ).loss_and_grad(grad_loss)  # fmt: skip


for _f, _tf in (
    (sampled_softmax_loss, "sampled_softmax_loss"),
    (nce_loss, "nce_loss"),
    (sampled_softmax_loss_and_grad, "sampled_softmax_loss"),
    (nce_loss_and_grad, "nce_loss"),
):
    _f.__doc__ = (_f.__doc__ or "") + _ARGS.format(tf=_tf)
del _f, _tf
