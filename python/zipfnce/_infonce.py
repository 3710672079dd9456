"""InfoNCE with in-batch and extra negatives (API.md section 4): the contrastive loss of CPC, SimCLR, CLIP and
two-tower retrieval, as one fused, tiled, multithreaded native kernel.

The native kernel never builds the ``B x (B + N)`` logits matrix unless it fits in ``max_logits_bytes``
(256 MiB by default). Above that it keeps only each row's log-sum-exp and recomputes the logits tile by tile
in the backward pass, so memory stays ``O((B + N) * d)`` whatever the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from . import _core
from ._validate import as_flag, as_float, as_ids, as_int

__all__ = ["InfoNCEGrad", "info_nce_loss", "info_nce_loss_and_grad"]

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
    a = np.asarray(x)
    if a.dtype.kind != "f" or (dtype is None and a.dtype not in (np.float32, np.float64)):
        want = "float32 or float64" if dtype is None else "floating-point"
        raise TypeError(f"{name}: expected a {want} array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: must be two-dimensional [rows, dim], got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=a.dtype if dtype is None else dtype)


def _per_item(x: Any, name: str, n: int, what: str, dtype: np.dtype) -> Optional[np.ndarray]:
    if x is None:
        return None
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
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


def _call(
    query: Any,
    keys: Any,
    negatives: Any,
    temperature: Any,
    key_log_q: Any,
    negative_log_q: Any,
    key_ids: Any,
    negative_ids: Any,
    symmetric: Any,
    focal_gamma: Any,
    max_logits_bytes: Any,
    want_grad: bool,
    grad_loss: Any = None,
) -> Any:
    q = _embeddings(query, "query", None)
    dt = q.dtype
    k = _embeddings(keys, "keys", dt)
    if k.shape != q.shape:
        raise ValueError(f"keys: must have the shape of query {q.shape}, got {k.shape}")
    b = q.shape[0]
    n = None if negatives is None else _embeddings(negatives, "negatives", dt)
    if n is not None and n.shape[1] != q.shape[1]:
        raise ValueError(f"negatives: must have {q.shape[1]} columns like query, got shape {n.shape}")
    nn = 0 if n is None else n.shape[0]
    if n is None and negative_log_q is not None:
        raise ValueError("negative_log_q: given without negatives")
    if n is None and negative_ids is not None:
        raise ValueError("negative_ids: given without negatives")
    t = as_float(temperature, "temperature")
    if not t > 0:
        raise ValueError(f"temperature: must be > 0, got {t}")
    g = as_float(focal_gamma, "focal_gamma")
    if g < 0:
        raise ValueError(f"focal_gamma: must be >= 0, got {g}")
    kq = _per_item(key_log_q, "key_log_q", b, "one per key", dt)
    nq = _per_item(negative_log_q, "negative_log_q", nn, "one per negative", dt)
    kid = _ids(key_ids, "key_ids", b, "one per key")
    nid = _ids(negative_ids, "negative_ids", nn, "one per negative")
    if nid is not None and kid is None:
        raise ValueError("negative_ids: needs key_ids (a negative is masked where its id equals the row's key id)")
    sym = as_flag(symmetric, "symmetric")
    budget = (
        DEFAULT_MAX_LOGITS_BYTES if max_logits_bytes is None else as_int(max_logits_bytes, "max_logits_bytes", lo=0)
    )
    budget = min(budget, 2**63 - 1)
    gl = None
    if want_grad and grad_loss is not None:
        a = np.asarray(grad_loss)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"grad_loss: expected real numbers, got dtype {a.dtype}")
        if a.ndim == 0:
            a = np.full(b, a, dtype=dt)
        elif a.shape != (b,):
            raise ValueError(f"grad_loss: must be a scalar or have shape ({b},), got {a.shape}")
        gl = np.ascontiguousarray(a, dtype=dt)
    return _core.info_nce(q, k, n, t, kq, nq, kid, nid, sym, g, gl, want_grad, budget)


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
    converted to it. ``max_logits_bytes`` (default 256 MiB) bounds the logits kept in memory; it changes
    speed and memory, never the result beyond rounding. Returns ``[B]``.
    """
    return _call(
        query,
        keys,
        negatives,
        temperature,
        key_log_q,
        negative_log_q,
        key_ids,
        negative_ids,
        symmetric,
        focal_gamma,
        max_logits_bytes,
        False,
    )


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
    loss, gq, gk, gn = _call(
        query,
        keys,
        negatives,
        temperature,
        key_log_q,
        negative_log_q,
        key_ids,
        negative_ids,
        symmetric,
        focal_gamma,
        max_logits_bytes,
        True,
        grad_loss,
    )
    return InfoNCEGrad(loss, gq, gk, gn)
