"""InfoNCE with in-batch and extra negatives (docs/API.md: InfoNCE): the contrastive loss of CPC, SimCLR, CLIP and
two-tower retrieval, as one fused, tiled, multithreaded native kernel.

The native kernel never builds the ``B x (B + N)`` logits matrix unless it fits in ``max_logits_bytes``
(256 MiB by default). Above that it keeps only each row's log-sum-exp and recomputes the logits tile by tile
in the backward pass, so memory stays ``O((B + N) * d)`` whatever the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from . import _core
from ._validate import (
    as_array,
    as_flag,
    as_float,
    as_focal_gamma,
    as_ids,
    as_int,
    compute_dtype,
    half_storage,
)

__all__ = ["InfoNCEGrad", "info_nce_loss", "info_nce_loss_and_grad"]
# Also used by the adapters, not public: InfoNCEOptions, options, InfoNCEArgs, prepare, check_hard.

#: Default of ``max_logits_bytes``: the largest logits block kept between the forward and backward passes.
DEFAULT_MAX_LOGITS_BYTES: int = int(_core.INFO_NCE_MAX_LOGITS_BYTES)


class InfoNCEGrad(NamedTuple):
    """Result of :func:`info_nce_loss_and_grad`."""

    loss: np.ndarray
    """Per-row loss, ``[B]``."""
    grad_query: np.ndarray
    """``[B, d]``."""
    grad_keys: np.ndarray
    """``[B, d]``."""
    grad_negatives: Optional[np.ndarray]
    """``[N, d]``, or None when ``negatives`` is None."""


def _embeddings(x: Any, name: str, dtype: Optional[np.dtype]) -> np.ndarray:
    """A C-ordered, aligned, native-byte-order float array of ``dtype`` (None: float32, float64, float16 or
    bfloat16 as given). A half-precision ``dtype`` (that of ``query``) is not converted to: the array must
    already have it."""
    a = as_array(x, name)
    half = half_storage(a.dtype) is not None
    if (a.dtype.kind != "f" and not half) or (dtype is None and a.dtype.itemsize not in (2, 4, 8)):
        want = "float32, float64, float16 or bfloat16" if dtype is None else "floating-point"
        raise TypeError(f"{name}: expected a {want} array, got dtype {a.dtype}")
    if dtype is not None and half_storage(dtype) is not None and a.dtype != dtype:
        raise TypeError(f"{name}: expected {dtype} like query (half precision is not mixed), got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: must be two-dimensional [rows, dim], got shape {a.shape}")
    if dtype is None:
        dtype = a.dtype if half else np.dtype(np.float32 if a.dtype.itemsize <= 4 else np.float64)
    return np.ascontiguousarray(a, dtype=dtype)


def _per_item(x: Any, name: str, n: int, what: str, dtype: np.dtype) -> Optional[np.ndarray]:
    if x is None:
        return None
    a = as_array(x, name)
    if a.dtype.kind not in "fiu" and half_storage(a.dtype) is None:
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"{name}: must have shape ({n},) ({what}), got {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


def _ids(x: Any, name: str, n: int, what: str) -> Optional[np.ndarray]:
    if x is None:
        return None
    a = as_ids(x, name)
    if a.shape != (n,):
        raise ValueError(f"{name}: must have shape ({n},) ({what}), got {a.shape}")
    return np.ascontiguousarray(a)


class InfoNCEOptions(NamedTuple):
    """The non-array arguments of one InfoNCE call, checked once by :func:`options` (``max_logits_bytes``
    resolved: None is the default). Immutable and hashable: JAX holds it as a static argument."""

    temperature: float
    symmetric: bool
    focal_gamma: float
    max_logits_bytes: int
    num_hard_negatives: Optional[int] = None

    def bind(
        self,
        query: Any,
        keys: Any,
        negatives: Any = None,
        key_log_q: Any = None,
        negative_log_q: Any = None,
        key_ids: Any = None,
        negative_ids: Any = None,
    ) -> "InfoNCEArgs":
        """The arrays of one call checked and converted (to the dtype of ``query``) under these options."""
        q, k, n = _tables(query, keys, negatives, negative_log_q, negative_ids)
        return _bind(self, q, k, n, key_log_q, negative_log_q, key_ids, negative_ids)


def options(
    temperature: Any, symmetric: Any, focal_gamma: Any, max_logits_bytes: Any, num_hard_negatives: Any = None
) -> InfoNCEOptions:
    """The checked :class:`InfoNCEOptions` of a call."""
    t = as_float(temperature, "temperature")
    if not t > 0:
        raise ValueError(f"temperature: must be > 0, got {t}")
    g = as_focal_gamma(focal_gamma)
    sym = as_flag(symmetric, "symmetric")
    budget = (
        DEFAULT_MAX_LOGITS_BYTES
        if max_logits_bytes is None
        else as_int(max_logits_bytes, "max_logits_bytes", lo=0)
    )
    h = None if num_hard_negatives is None else as_int(num_hard_negatives, "num_hard_negatives", lo=1)
    if h is not None and sym:
        raise ValueError("num_hard_negatives: cannot be combined with symmetric=True")
    return InfoNCEOptions(t, sym, g, min(budget, 2**63 - 1), h)


class InfoNCEArgs(NamedTuple):
    """An InfoNCE call with every argument checked and converted (built by :func:`prepare` or
    :meth:`InfoNCEOptions.bind`); :meth:`loss` and :meth:`loss_and_grad` run it, as often as needed."""

    options: InfoNCEOptions
    query: np.ndarray
    keys: np.ndarray
    negatives: Optional[np.ndarray]
    key_log_q: Optional[np.ndarray]
    negative_log_q: Optional[np.ndarray]
    key_ids: Optional[np.ndarray]
    negative_ids: Optional[np.ndarray]

    def loss(self) -> np.ndarray:
        """The loss ``[B]``."""
        return self._run(None, False)

    def loss_and_grad(self, grad_loss: Any = None) -> InfoNCEGrad:
        """The loss and the gradients of ``sum_i grad_loss[i] * loss[i]`` (None: all ones)."""
        gl = None
        if grad_loss is not None:
            b, dt = self.query.shape[0], compute_dtype(self.query.dtype)
            a = as_array(grad_loss, "grad_loss")
            if a.dtype.kind not in "fiu" and half_storage(a.dtype) is None:
                raise TypeError(f"grad_loss: expected real numbers, got dtype {a.dtype}")
            if a.ndim == 0:
                a = np.full(b, a, dtype=dt)
            elif a.shape != (b,):
                raise ValueError(f"grad_loss: must be a scalar or have shape ({b},), got {a.shape}")
            gl = np.ascontiguousarray(a, dtype=dt)
        loss, gq, gk, gn = self._run(gl, True)
        dt = self.query.dtype
        if gq.dtype != dt:  # half precision: the gradients come back as uint16 views
            gq, gk = gq.view(dt), gk.view(dt)
            gn = None if gn is None else gn.view(dt)
        return InfoNCEGrad(loss, gq, gk, gn)

    def _run(self, grad_loss: Optional[np.ndarray], want_grad: bool) -> Any:
        o = self.options
        q, k, n = self.query, self.keys, self.negatives
        tag = half_storage(q.dtype)
        if o.num_hard_negatives is not None:
            if tag is not None:  # the hard-negative kernel is float32/float64: widen the batch-sized operands
                f32 = np.float32
                q, k = q.astype(f32), k.astype(f32)
                n = None if n is None else n.astype(f32)
            out = _core.info_nce_hard(
                q, k, n, o.temperature, self.key_log_q, self.negative_log_q,
                self.key_ids, self.negative_ids, o.focal_gamma, o.num_hard_negatives, grad_loss, want_grad,
            )  # fmt: skip
            if tag is not None and want_grad:  # gradients in the embeddings' dtype, rounded once
                dt = self.query.dtype
                out = (out[0], *(None if g is None else g.astype(dt) for g in out[1:]))
            return out
        if tag is not None:  # half precision crosses as uint16 views with a storage tag
            q, k = q.view(np.uint16), k.view(np.uint16)
            n = None if n is None else n.view(np.uint16)
        return _core.info_nce(
            q, k, n, o.temperature, self.key_log_q, self.negative_log_q,
            self.key_ids, self.negative_ids, o.symmetric, o.focal_gamma, grad_loss, want_grad, o.max_logits_bytes,
            tag,
        )  # fmt: skip


def prepare(
    query: Any,
    keys: Any,
    negatives: Any = None,
    temperature: Any = 0.1,
    key_log_q: Any = None,
    negative_log_q: Any = None,
    key_ids: Any = None,
    negative_ids: Any = None,
    symmetric: Any = False,
    focal_gamma: Any = 0.0,
    max_logits_bytes: Any = None,
    num_hard_negatives: Any = None,
) -> InfoNCEArgs:
    """Every argument of an InfoNCE call checked once (the embeddings first): the :class:`InfoNCEArgs` to
    run."""
    q, k, n = _tables(query, keys, negatives, negative_log_q, negative_ids)
    opts = options(temperature, symmetric, focal_gamma, max_logits_bytes, num_hard_negatives)
    return _bind(opts, q, k, n, key_log_q, negative_log_q, key_ids, negative_ids)


def _tables(query: Any, keys: Any, negatives: Any, negative_log_q: Any, negative_ids: Any) -> Any:
    q = _embeddings(query, "query", None)
    dt = q.dtype
    k = _embeddings(keys, "keys", dt)
    if k.shape != q.shape:
        raise ValueError(f"keys: must have the shape of query {q.shape}, got {k.shape}")
    n = None if negatives is None else _embeddings(negatives, "negatives", dt)
    if n is not None and n.shape[1] != q.shape[1]:
        raise ValueError(f"negatives: must have {q.shape[1]} columns like query, got shape {n.shape}")
    if n is None and negative_log_q is not None:
        raise ValueError("negative_log_q: given without negatives")
    if n is None and negative_ids is not None:
        raise ValueError("negative_ids: given without negatives")
    return q, k, n


def _bind(
    o: InfoNCEOptions,
    q: np.ndarray,
    k: np.ndarray,
    n: Optional[np.ndarray],
    key_log_q: Any,
    negative_log_q: Any,
    key_ids: Any,
    negative_ids: Any,
) -> InfoNCEArgs:
    b, dt = q.shape[0], compute_dtype(q.dtype)
    nn = 0 if n is None else n.shape[0]
    kq = _per_item(key_log_q, "key_log_q", b, "one per key", dt)
    nq = _per_item(negative_log_q, "negative_log_q", nn, "one per negative", dt)
    kid = _ids(key_ids, "key_ids", b, "one per key")
    nid = _ids(negative_ids, "negative_ids", nn, "one per negative")
    if nid is not None and kid is None:
        raise ValueError(
            "negative_ids: needs key_ids (a negative is masked where its id equals the row's key id)"
        )
    check_hard(o, b, nn)
    return InfoNCEArgs(o, q, k, n, kq, nq, kid, nid)


def check_hard(o: InfoNCEOptions, batch: int, num_negatives: int) -> None:
    """``num_hard_negatives`` against the call's sizes: at most the ``B - 1 + N`` negatives of a row (the
    adapters call it with the static shapes, before any work)."""
    h = o.num_hard_negatives
    if h is not None and h > batch - 1 + num_negatives:
        raise ValueError(
            f"num_hard_negatives: {h} is larger than the number of negatives of a row "
            f"({batch - 1 + num_negatives}: batch {batch} - 1 + {num_negatives} extra negatives)"
        )


def info_nce_loss(
    query: Any,
    keys: Any,
    *,
    negatives: Any = None,
    temperature: float = 0.1,
    key_log_q: Any = None,
    negative_log_q: Any = None,
    key_ids: Any = None,
    negative_ids: Any = None,
    symmetric: bool = False,
    focal_gamma: float = 0.0,
    max_logits_bytes: Optional[int] = None,
    num_hard_negatives: Optional[int] = None,
) -> np.ndarray:
    """InfoNCE loss of each row: in-batch negatives, optional extra negatives, logQ correction, masks.

    ``query`` and ``keys`` are ``[B, d]``, ``negatives`` ``[N, d]``. Row ``i`` has ``B + N`` logits::

        z[i, j]     = query[i] . keys[j] / temperature - key_log_q[j]              (j < B)
        z[i, B + m] = query[i] . negatives[m] / temperature - negative_log_q[m]

    (a missing ``*_log_q`` is zero) and its target is column ``i``. Masks: with ``key_ids`` (int ``[B]``, the id
    of each row's positive), a key column ``j != i`` with ``key_ids[j] == key_ids[i]`` is an accidental hit and
    gets probability exactly 0, and so does a negative ``m`` with ``negative_ids[m] == key_ids[i]``
    (``negative_ids`` needs ``key_ids``). With ``p`` the softmax over the unmasked columns::

        loss[i] = -(1 - p[i, i]) ** focal_gamma * log p[i, i]

    which for ``focal_gamma = 0`` is the cross-entropy ``-log p[i, i]``. A row whose negatives are all masked
    has ``p[i, i] = 1`` and loss 0.

    ``symmetric=True`` (CLIP) averages that with the key-to-query loss of key ``i``: the softmax down column
    ``i`` of the ``B x B`` key block of ``z``, target row ``i``, with the same corrections and masks.
    In that direction ``key_log_q[i]`` is the same for the whole column and cancels (only the query-to-key
    direction is corrected); the masks are symmetric, so key ``i`` is not contrasted with the queries whose
    own key has its id; the extra negatives take no part::

        loss[i] = (f(softmax_j z[i, j])[i] + f(softmax_j z[j, i])[i]) / 2,   f(p) = -(1 - p)**gamma log p

    The dtype of ``query`` (float32 or float64) decides the precision; every other float argument is
    converted to it. Half precision: a ``numpy.float16`` or ``ml_dtypes.bfloat16`` ``query`` needs ``keys``
    and ``negatives`` of the same dtype (else ``TypeError`` naming the argument); they are widened to float32
    as they are read, the math runs in float32, the loss is float32 and the gradients come back in that dtype
    (rounded to nearest even).

    ``max_logits_bytes`` (default 256 MiB) bounds the logits kept in memory between the passes; it changes
    speed and memory, never the loss (the gradients only by rounding). A kept block is reused by the next
    call rather than allocated afresh; a call with a smaller budget (``max_logits_bytes=0``, say) frees it.

    ``num_hard_negatives=h`` mines hard negatives (the semantics of TFRS / keras-rs ``HardNegativeMining``):
    row ``i`` keeps its positive and the ``h`` largest of its other unmasked logits (after the log-q
    corrections and the masks; ties go to the lower column, as ``tf.math.top_k``), ``H_i``, and the softmax
    runs over those columns only::

        loss[i] = f(p[i, i]),   p[i, c] = exp(z[i, c]) / (exp(z[i, i]) + sum_{c' in H_i} exp(z[i, c']))

    Gradients flow through the kept logits only. The kernel keeps a running top-``h`` selection per row (a
    threshold and a buffer of ``4h`` candidates) while it walks the logit tiles, so memory is ``O(B * h)``
    beyond the embeddings and the cost is one matrix product plus the selection. ``h`` must be between 1 and ``B - 1 + N`` (else ``ValueError``); not with ``symmetric``.
    Returns ``[B]``.
    """
    return prepare(
        query, keys, negatives, temperature, key_log_q, negative_log_q, key_ids, negative_ids, symmetric,
        focal_gamma, max_logits_bytes, num_hard_negatives,
    ).loss()  # fmt: skip


def info_nce_loss_and_grad(
    query: Any,
    keys: Any,
    *,
    negatives: Any = None,
    temperature: float = 0.1,
    key_log_q: Any = None,
    negative_log_q: Any = None,
    key_ids: Any = None,
    negative_ids: Any = None,
    symmetric: bool = False,
    focal_gamma: float = 0.0,
    grad_loss: Any = None,
    max_logits_bytes: Optional[int] = None,
    num_hard_negatives: Optional[int] = None,
) -> InfoNCEGrad:
    """:func:`info_nce_loss` and its gradients with respect to ``query``, ``keys`` and ``negatives``.

    The gradients are those of ``sum_i grad_loss[i] * loss[i]``; ``grad_loss`` None means all ones (the
    gradient of ``loss.sum()``), a scalar weights every row alike, a ``[B]`` array each row. With
    ``G[i, c] = d(sum_i grad_loss[i] loss[i]) / d z[i, c]``::

        grad_query = G @ [keys; negatives] / temperature
        grad_keys = G[:, :B].T @ query / temperature
        grad_negatives = G[:, B:].T @ query / temperature

    Masked columns get exactly zero gradient. When the logits do not fit in ``max_logits_bytes`` the
    backward pass recomputes them tile by tile from each row's saved log-sum-exp (flash-attention style).
    Returns ``InfoNCEGrad(loss [B], grad_query [B, d], grad_keys [B, d], grad_negatives [N, d] or None)``.
    """
    return prepare(
        query, keys, negatives, temperature, key_log_q, negative_log_q, key_ids, negative_ids, symmetric,
        focal_gamma, max_logits_bytes, num_hard_negatives,
    ).loss_and_grad(grad_loss)  # fmt: skip
