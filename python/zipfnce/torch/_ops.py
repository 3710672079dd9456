"""The torch-operations path of the losses (``backend="torch"``): the same numbers as the native kernels,
written with torch operations on the tensors' own device and differentiated by autograd.

Nothing here checks arguments (``zipfnce.torch`` does that before calling) and nothing leaves the device:
these functions take tensors that already live where the model lives, so they run on any device (cpu,
cuda, mps, xpu) and under ``torch.compile``. Unlike the native kernels they do not look at the values: a
non-finite input or an id outside the table (on an accelerator) is not reported as a ``ValueError``, since
checking would synchronise the device every step; NaN propagates as in any torch expression.

Precision. Half-precision tensors (float16, bfloat16) are read in place and the gathered rows are widened to
float32 before any product, so the logits, the loss and every reduction are float32 (the native kernels'
rule: half storage, float32 arithmetic); autograd narrows the gradients back to the input dtype. float32
and float64 compute in their own dtype. Autocast is switched off inside (it would run the products in the
lower precision again).

The definitions are those of ``docs/API.md`` (and ``rust/loss/sampled/math.rs``,
``rust/loss/infonce/mod.rs``):

- sampled logits ``z_t = x.w_t + b_t - log(true_expected_count)``, ``z_s = x.w_s + b_s -
  log(sampled_expected_count)`` (the logs only with ``subtract_log_q``); an accidental hit (a candidate
  equal to one of the row's true classes, with ``remove_accidental_hits``) is masked: probability 0, loss
  0, gradient 0. True columns carry ``y = 1/num_true``.
- softmax ``loss_b = -sum_t y (1 - p_t)^g log p_t`` with ``p`` the softmax over the true and unmasked
  columns (``g = 0``: ``sum_t y (lse - z_t)``);
- NCE ``loss_b = sum_j l(z_j, y_j)``, ``l(z, y) = max(z, 0) - z y + log(1 + exp(-|z|))``; focal
  ``-[y (1 - s)^g log s + (1 - y) s^g log(1 - s)]``, ``s = sigmoid(z)``;
- InfoNCE ``z[i, j] = q_i.k_j / T - key_log_q[j]``, ``z[i, B + m] = q_i.n_m / T - negative_log_q[m]``,
  duplicates (``key_ids[j] == key_ids[i]``, ``j != i``; ``negative_ids[m] == key_ids[i]``) masked,
  ``loss_i = -(1 - p_ii)^g log p_ii``; ``symmetric`` averages it with the column direction of the key block.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["compute_dtype", "to_device", "sampled_rows_loss", "info_nce_rows_loss", "reduce"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the loss is computed in: float64 for float64, float32 for everything narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def to_device(a: Any, device: torch.device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A host array (or tensor) on ``device``, converted to ``dtype``: one copy. For a CUDA target the host
    side is pinned first and the copy is ``non_blocking`` (it overlaps with work already queued)."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if t.device != device:
        if device.type == "cuda" and t.device.type == "cpu" and torch.cuda.is_available():
            t = t.pin_memory().to(device, non_blocking=True)
        else:
            t = t.to(device)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t


def _no_autocast(device: torch.device) -> Any:
    """A context that switches autocast off on ``device`` while the loss is computed (when it is on)."""
    try:
        on = torch.is_autocast_enabled(device.type)
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know
        on = False
    return torch.autocast(device_type=device.type, enabled=False) if on else contextlib.nullcontext()


class _Gather(torch.autograd.Function):
    """``table[idx]`` widened to ``ct``, with a backward that sums the rows' gradients in ``ct`` and rounds
    once to the table's dtype (a half-precision table is not accumulated in half precision). ``sparse``: the
    gradient is a coalesced sparse COO tensor holding only the rows used (as ``F.embedding(sparse=True)``),
    else a dense tensor of the table's shape."""

    @staticmethod
    def forward(ctx, table, idx, ct, sparse):  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dtype, ctx.ct, ctx.sparse = table.shape, table.dtype, ct, sparse
        return table[idx].to(ct)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        g = grad.to(ctx.ct)
        if ctx.sparse:
            out = torch.sparse_coo_tensor(idx.reshape(1, -1), g, ctx.shape, check_invariants=False).coalesce()
            if out.dtype != ctx.dtype:
                out = torch.sparse_coo_tensor(
                    out.indices(),
                    out.values().to(ctx.dtype),
                    ctx.shape,
                    is_coalesced=True,
                    check_invariants=False,
                )
            return out, None, None, None
        # index_put_ with accumulate (not index_add_, several times slower on CPU).
        dense = torch.zeros(ctx.shape, dtype=ctx.ct, device=g.device).index_put_((idx,), g, accumulate=True)
        return dense.to(ctx.dtype), None, None, None


def _gather(table: torch.Tensor, idx: torch.Tensor, ct: torch.dtype, sparse: bool) -> torch.Tensor:
    """Rows ``table[idx]`` (``idx`` one-dimensional) in ``ct``, differentiable (see :class:`_Gather`)."""
    if not (table.requires_grad and torch.is_grad_enabled()):
        return table.detach()[idx].to(ct)
    return _Gather.apply(table, idx, ct, sparse)


def _nce_plain(z: torch.Tensor, y: float) -> torch.Tensor:
    """Sigmoid cross-entropy with label ``y``, in TensorFlow's order: ``max(z, 0) - z y + log1p(e^-|z|)``."""
    t = z.clamp_min(0)
    if y != 0.0:
        t = t - z * y
    return t + torch.log1p(torch.exp(-z.abs()))


def _nce_focal(z: torch.Tensor, y: float, g: float) -> torch.Tensor:
    """Focal sigmoid cross-entropy: ``-[y (1 - s)^g log s + (1 - y) s^g log(1 - s)]``, ``s = sigmoid(z)``."""
    ln_s = F.logsigmoid(z)
    ln_1s = F.logsigmoid(-z)
    out = -(1.0 - y) * torch.exp(g * ln_s) * ln_1s
    if y != 0.0:
        out = out - y * torch.exp(g * ln_1s) * ln_s
    return out


def _focal_softmax(lp: torch.Tensor, g: float) -> torch.Tensor:
    """``-(1 - p)^g log p`` from ``lp = log p``; ``1 - p`` is kept away from 0 (where ``p == 1`` the loss is
    0 and so is its gradient, as in the native kernels) so that autograd never forms ``0 * inf``."""
    q = (-torch.expm1(lp)).clamp_min(torch.finfo(lp.dtype).tiny)
    return -q.pow(g) * lp


def sampled_rows_loss(
    nce: bool,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    inputs: torch.Tensor,
    ids: torch.Tensor,
    true_expected_count: Optional[torch.Tensor],
    sampled_expected_count: torch.Tensor,
    remove_accidental_hits: bool,
    subtract_log_q: bool,
    focal_gamma: float,
    sparse: bool = False,
) -> torch.Tensor:
    """The per-row sampled softmax (``nce=False``) or NCE loss ``[B]`` (float32, or float64 for float64).

    ``weight`` ``[V, d]``, ``bias`` ``[V]`` or None, ``labels`` int64 ``[B, num_true]``, ``inputs`` ``[B, d]``,
    ``ids`` int64 ``[S]`` (shared) or ``[B, S]`` (per row), the expected counts ``[B, num_true]`` and the
    shape of ``ids``, all on one device. The true and candidate rows are gathered once; their gradients are
    summed in the compute dtype and rounded once to the table's dtype. ``sparse``: those gradients are
    coalesced sparse COO tensors holding only the rows used (as ``F.embedding(sparse=True)`` gives).
    """
    ct = compute_dtype(weight.dtype)
    with _no_autocast(inputs.device):
        nt = labels.shape[1]
        y = 1.0 / nt
        x = inputs.to(ct)
        bsz, d = x.shape
        # One gather for the true and the candidate rows: one gradient of the table, summed in ct.
        nl = labels.numel()
        every = torch.cat([labels.reshape(-1), ids.reshape(-1)])
        rows = _gather(weight, every, ct, sparse)
        tw = rows[:nl].view(bsz, nt, d)
        zt = torch.bmm(tw, x.unsqueeze(2)).squeeze(2)  # [B, nt]
        per_row = ids.dim() == 2
        sw = rows[nl:].view(*ids.shape, d)  # [S, d] or [B, S, d]
        if per_row:
            zs = torch.bmm(sw, x.unsqueeze(2)).squeeze(2)  # [B, S]
        else:
            zs = x @ sw.T  # [B, S]: one matrix product
        if bias is not None:
            br = _gather(bias, every, ct, sparse)
            zt = zt + br[:nl].view(zt.shape)
            zs = zs + br[nl:].view(ids.shape)
        if subtract_log_q:
            assert true_expected_count is not None
            zt = zt - torch.log(true_expected_count.to(ct).reshape(zt.shape))
            zs = zs - torch.log(sampled_expected_count.to(ct))
        hit = None
        if remove_accidental_hits:
            if nt == 1:
                hit = labels == (ids if per_row else ids.view(1, -1))  # [B, S]
            else:
                cand = ids.unsqueeze(1) if per_row else ids.view(1, 1, -1)
                hit = (labels.unsqueeze(2) == cand).any(1)
        g = float(focal_gamma)
        if not nce:
            if hit is not None:
                zs = zs.masked_fill(hit, float("-inf"))
            lse = torch.logsumexp(torch.cat([zt, zs], 1), 1, keepdim=True)
            if g == 0.0:
                return (lse - zt).sum(1) * y
            return (y * _focal_softmax(zt - lse, g)).sum(1)
        if hit is not None:
            zs = zs.masked_fill(hit, 0.0)  # a finite stand-in; its loss is dropped below
        lt = _nce_plain(zt, y) if g == 0.0 else _nce_focal(zt, y, g)
        ls = _nce_plain(zs, 0.0) if g == 0.0 else _nce_focal(zs, 0.0, g)
        if hit is not None:
            ls = ls.masked_fill(hit, 0.0)
        return lt.sum(1) + ls.sum(1)


def info_nce_rows_loss(
    query: torch.Tensor,
    keys: torch.Tensor,
    negatives: Optional[torch.Tensor],
    temperature: float,
    key_log_q: Optional[torch.Tensor],
    negative_log_q: Optional[torch.Tensor],
    key_ids: Optional[torch.Tensor],
    negative_ids: Optional[torch.Tensor],
    symmetric: bool,
    focal_gamma: float,
    num_hard_negatives: Optional[int] = None,
) -> torch.Tensor:
    """The per-row InfoNCE loss ``[B]`` (float32, or float64 for float64): ``query`` and ``keys`` ``[B, d]``,
    ``negatives`` ``[N, d]`` or None, the ``*_log_q`` and ``*_ids`` per key / per negative, on one device.
    The ``B x (B + N)`` logits are built whole (``max_logits_bytes`` is the native path's concern)."""
    ct = compute_dtype(query.dtype)
    with _no_autocast(query.device):
        b = query.shape[0]
        q = query.to(ct)
        k = keys.to(ct)
        kk = (q @ k.T) / temperature  # [B, B]
        z = kk if key_log_q is None else kk - key_log_q.to(ct).unsqueeze(0)
        same = None
        if key_ids is not None:
            eye = torch.eye(b, dtype=torch.bool, device=query.device)
            same = (key_ids.unsqueeze(1) == key_ids.unsqueeze(0)) & ~eye
            z = z.masked_fill(same, float("-inf"))
        if negatives is not None:
            zn = (q @ negatives.to(ct).T) / temperature  # [B, N]
            if negative_log_q is not None:
                zn = zn - negative_log_q.to(ct).unsqueeze(0)
            if negative_ids is not None:
                assert key_ids is not None
                zn = zn.masked_fill(key_ids.unsqueeze(1) == negative_ids.unsqueeze(0), float("-inf"))
            full = torch.cat([z, zn], 1)
        else:
            full = z
        if num_hard_negatives is not None:
            # Hard negatives: each row keeps its positive and its h largest other logits (after logQ and the
            # masks); the rest leave the softmax. The selection carries no gradient.
            pos = torch.eye(b, full.shape[1], dtype=torch.bool, device=query.device)
            others = full.detach().masked_fill(pos, float("-inf"))
            top = torch.topk(others, int(num_hard_negatives), dim=1).indices
            keep = pos.scatter(1, top, True)
            full = full.masked_fill(~keep, float("-inf"))
        lp = torch.diagonal(z) - torch.logsumexp(full, 1)
        g = float(focal_gamma)
        loss = -lp if g == 0.0 else _focal_softmax(lp, g)
        if not symmetric:
            return loss
        # Key i against every query: column i of the key block (key_log_q[i] is constant down the column
        # and cancels), the same masks, no extra negatives.
        zc = kk if same is None else kk.masked_fill(same, float("-inf"))
        lpc = torch.diagonal(zc) - torch.logsumexp(zc, 0)
        lc = -lpc if g == 0.0 else _focal_softmax(lpc, g)
        return 0.5 * (loss + lc)


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``"none"``: the rows; ``"sum"``; ``"mean"`` (over the rows)."""
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
