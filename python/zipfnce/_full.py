"""The exact softmax cross-entropy over every class (docs/API.md: Full softmax), fused with the output layer.

``F.cross_entropy(inputs @ weights.T + biases, labels)`` without the ``[B, V]`` logits: one native kernel
computes the logits tile by tile, keeps each row's online log-sum-exp, and in a second pass turns the tiles
(kept under ``max_logits_bytes``, else recomputed) into the gradients. Memory beyond the outputs stays
``O(B * d)`` plus the budget; the work runs on the library's threads with the GIL released, and the result
never depends on the number of threads.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from . import _core
from ._validate import as_array, as_float, as_ids, as_int, ensure_memory

__all__ = ["FullSoftmaxGrad", "full_softmax_loss", "full_softmax_loss_and_grad"]
# Also used by the adapters, not public: FullArgs, prepare.

#: Default of ``max_logits_bytes``: the most bytes of logits kept between the forward and backward passes.
DEFAULT_MAX_LOGITS_BYTES: int = int(_core.FULL_SOFTMAX_MAX_LOGITS_BYTES)


class FullSoftmaxGrad(NamedTuple):
    """Result of :func:`full_softmax_loss_and_grad`."""

    loss: np.ndarray
    """Per-row loss, ``[B]``."""
    grad_inputs: np.ndarray
    """``[B, d]``."""
    grad_weights: np.ndarray
    """``[V, d]``, dense."""
    grad_biases: Optional[np.ndarray]
    """``[V]``, or None when ``biases`` is None."""


def _table(x: Any, name: str, dtype: Optional[np.dtype]) -> np.ndarray:
    """A C-ordered, aligned, native float array of ``dtype`` (None: float32 or float64 as given)."""
    a = as_array(x, name)
    if a.dtype.kind != "f" or (dtype is None and a.dtype.itemsize not in (4, 8)):
        want = "float32 or float64" if dtype is None else "floating-point"
        raise TypeError(f"{name}: expected a {want} array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: must be two-dimensional, got shape {a.shape}")
    if dtype is None:
        dtype = np.dtype(np.float32 if a.dtype.itemsize == 4 else np.float64)
    if a.dtype != dtype or not a.flags.c_contiguous:
        ensure_memory(name, a.size * dtype.itemsize)  # the copy below must fit
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which the core reports
            a = np.ascontiguousarray(a, dtype=dtype)
    return a


def _vector(x: Any, name: str, n: int, what: str, dtype: np.dtype, numbers: str = "f") -> np.ndarray:
    a = as_array(x, name)
    if a.dtype.kind not in numbers:
        raise TypeError(
            f"{name}: expected {'floats' if numbers == 'f' else 'real numbers'}, got dtype {a.dtype}"
        )
    if a.shape != (n,):
        raise ValueError(f"{name}: must have shape ({n},) ({what}), got {a.shape}")
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(a, dtype=dtype)


class FullArgs(NamedTuple):
    """A full-softmax call with every argument checked and converted (built by :func:`prepare`);
    :meth:`loss` and :meth:`loss_and_grad` run it."""

    weights: np.ndarray
    biases: Optional[np.ndarray]
    labels: np.ndarray
    inputs: np.ndarray
    ignore_index: Optional[int]
    label_smoothing: float
    max_logits_bytes: int

    def loss(self) -> np.ndarray:
        """The loss ``[B]``."""
        return self._run(None, False)

    def loss_and_grad(self, grad_loss: Any = None) -> FullSoftmaxGrad:
        """The loss and the gradients of ``sum_i grad_loss[i] * loss[i]`` (None: all ones)."""
        gl = None
        if grad_loss is not None:
            b, dt = self.inputs.shape[0], self.inputs.dtype
            a = as_array(grad_loss, "grad_loss")
            if a.dtype.kind not in "fiu":
                raise TypeError(f"grad_loss: expected real numbers, got dtype {a.dtype}")
            gl = (
                np.full(b, a, dtype=dt)
                if a.ndim == 0
                else _vector(a, "grad_loss", b, "one per row", dt, "fiu")
            )
        loss, gx, gw, gb = self._run(gl, True)
        return FullSoftmaxGrad(loss, gx, gw, gb)

    def _run(self, grad_loss: Optional[np.ndarray], want_grad: bool) -> Any:
        return _core.full_softmax(
            self.weights, self.biases, self.labels, self.inputs, self.ignore_index, self.label_smoothing,
            grad_loss, want_grad, self.max_logits_bytes,
        )  # fmt: skip


def prepare(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    ignore_index: Any = None,
    label_smoothing: Any = 0.0,
    max_logits_bytes: Any = None,
) -> FullArgs:
    """Every argument of a full-softmax call checked once: the :class:`FullArgs` to run."""
    w = _table(weights, "weights", None)
    if w.size == 0:
        raise ValueError(f"weights: must be a non-empty [num_classes, dim] array, got shape {w.shape}")
    dt = w.dtype
    x = _table(inputs, "inputs", dt)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"inputs: must have {w.shape[1]} columns like weights, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("inputs: must have at least one row")
    b = x.shape[0]
    y = as_ids(labels, "labels")
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[0] != b or y.shape[1] == 0:
        raise ValueError(
            f"labels: must have shape ({b},) or ({b}, num_true) with num_true >= 1, got {y.shape}"
        )
    y = np.ascontiguousarray(y)
    bias = None if biases is None else _vector(biases, "biases", w.shape[0], "one per class", dt)
    ig = None if ignore_index is None else as_int(ignore_index, "ignore_index", lo=-(2**63), hi=2**63 - 1)
    eps = as_float(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing: must be in [0, 1], got {eps}")
    budget = (
        DEFAULT_MAX_LOGITS_BYTES
        if max_logits_bytes is None
        else as_int(max_logits_bytes, "max_logits_bytes", lo=0)
    )
    return FullArgs(w, bias, y, x, ig, eps, min(budget, 2**63 - 1))


def full_softmax_loss(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    *,
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    max_logits_bytes: Optional[int] = None,
) -> np.ndarray:
    """The exact softmax cross-entropy of each row over all ``V`` classes, without the ``[B, V]`` logits.

    ``weights`` is ``[V, d]``, ``biases`` ``[V]`` or None, ``inputs`` ``[B, d]``, ``labels`` int ``[B]`` or
    ``[B, num_true]`` (each of a row's labels weighted ``1 / num_true``, as in ``sampled_softmax_loss``).
    With ``z = inputs @ weights.T + biases``, ``lse_i = log sum_c exp(z[i, c])``, ``eps = label_smoothing``
    and the target ``t[i, c] = (1 - eps) * n[i, c] / num_true + eps / V`` (``n[i, c]``: how often ``c`` is
    among row ``i``'s labels)::

        loss[i] = -sum_c t[i, c] * (z[i, c] - lse_i)
                = lse_i - (1 - eps) / num_true * sum_j z[i, labels[i, j]] - eps / V * sum_c z[i, c]

    which is ``torch.nn.functional.cross_entropy(z, labels, reduction="none", label_smoothing=eps)`` (with
    probability targets ``n / num_true`` when ``num_true > 1``). A row whose labels all equal
    ``ignore_index`` has loss 0 (and no gradient); a row that mixes it with real labels is an error.

    The dtype of ``weights`` (float32 or float64) decides the precision; the other float arrays are
    converted to it. Labels outside ``[0, V)``, non-finite values and logits that overflow raise
    ``ValueError``. ``max_logits_bytes`` (default 256 MiB) bounds the logits kept between the passes of
    :func:`full_softmax_loss_and_grad`; it changes speed and memory, never a number. Returns ``[B]``.
    """
    return prepare(weights, biases, labels, inputs, ignore_index, label_smoothing, max_logits_bytes).loss()


def full_softmax_loss_and_grad(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    *,
    grad_loss: Any = None,
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    max_logits_bytes: Optional[int] = None,
) -> FullSoftmaxGrad:
    """:func:`full_softmax_loss` and its gradients, dense over all classes.

    The gradients are those of ``sum_i grad_loss[i] * loss[i]``; ``grad_loss`` None means all ones, a scalar
    weights every row alike, a ``[B]`` array each row. With ``p = softmax(z)`` and the target ``t`` above,
    ``G[i, c] = grad_loss[i] * (p[i, c] - t[i, c])`` (zero for ignored rows) and::

        grad_inputs = G @ weights           # [B, d]
        grad_weights = G.T @ inputs         # [V, d], dense
        grad_biases = G.sum(axis=0)         # [V], or None without biases

    The logits are computed tile by tile; a block of rows whose logits fit in ``max_logits_bytes`` keeps
    them between the passes, otherwise the backward pass recomputes them (the same numbers either way).
    Returns ``FullSoftmaxGrad(loss, grad_inputs, grad_weights, grad_biases)``.
    """
    args = prepare(weights, biases, labels, inputs, ignore_index, label_smoothing, max_logits_bytes)
    return args.loss_and_grad(grad_loss)
