"""The exact full softmax (``zipfnce.full_softmax_loss``) on torch tensors: a differentiable function and a
module that owns its output layer.

``full_softmax_loss(weight, bias, labels, inputs)`` equals ``F.cross_entropy(inputs @ weight.T + bias, labels)``
(with ``ignore_index`` and ``label_smoothing`` as torch defines them) without the ``[B, V]`` logits or their
gradient. As for the other zipfnce losses: CPU tensors of dtype float32 or float64 (one dtype per call), the
gradients computed natively in the forward pass for ``reduction="mean"``/``"sum"`` (in backward, from the
upstream gradient, for ``"none"``), differentiable once (``create_graph=True`` is a ``RuntimeError``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from zipfnce import _full
from zipfnce._validate import as_int

__all__ = ["full_softmax_loss", "FullSoftmaxLoss"]

_FLOATS = (torch.float32, torch.float64)


def _reduction(r: Any) -> str:
    if not isinstance(r, str) or r not in ("none", "mean", "sum"):
        raise ValueError(f"reduction: must be one of 'none', 'mean', 'sum', got {r!r}")
    return r


def _float_tensor(t: Any, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: must be a CPU tensor, got a tensor on {t.device}")
    if t.layout != torch.strided:
        raise TypeError(f"{name}: must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: has dtype {t.dtype}, but the call computes in {dtype}; convert it first")
    return t


def _labels(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"labels: must be a CPU tensor, got a tensor on {x.device}")
        if x.is_floating_point() or x.dtype == torch.bool:
            raise TypeError(f"labels: expected integer class ids, got {x.dtype}")
        return x.detach().numpy()
    return x


def _once_differentiable(backward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(backward)
    def wrapper(ctx: Any, *grad_outputs: Any) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "zipfnce's full softmax is differentiable once: its gradients are computed natively and have "
                "no graph, so backward with create_graph=True is not supported"
            )
        return backward(ctx, *grad_outputs)

    return wrapper


class _FullCall(NamedTuple):
    args: _full.FullArgs
    reduction: str
    #: Rows that count in "mean" (those not ignored).
    count: int
    fused: bool


def _reduce(loss: np.ndarray, call: _FullCall) -> torch.Tensor:
    if call.reduction == "none":
        return torch.from_numpy(loss)
    s = loss.sum(dtype=loss.dtype)
    if call.reduction == "mean":
        # torch's convention: the mean over the rows not ignored (NaN when every row is).
        s = s / loss.dtype.type(call.count) if call.count else loss.dtype.type(math.nan)
    return torch.from_numpy(np.asarray(s, dtype=loss.dtype))


class _Full(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, bias, inputs, call):  # type: ignore[override]
        ctx.call = call
        if call.fused:
            gl = 1.0 / call.count if call.reduction == "mean" and call.count else 1.0
            r = call.args.loss_and_grad(gl)
            ctx.fused = r
            loss = r.loss
        else:
            ctx.fused = None
            loss = call.args.loss()
        ctx.save_for_backward(weight, bias, inputs)
        return _reduce(loss, call)

    @staticmethod
    @_once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        call = ctx.call
        if ctx.fused is not None:
            r, ctx.fused = ctx.fused, None
            s = float(grad_output)
        else:
            _ = ctx.saved_tensors  # (checks for in-place changes since forward)
            if call.reduction == "none":
                gl: Any = grad_output.detach().numpy()
            else:
                g = float(grad_output)
                gl = g / call.count if call.reduction == "mean" and call.count else g
            r = call.args.loss_and_grad(gl)
            s = 1.0

        def t(a: Optional[np.ndarray], i: int) -> Optional[torch.Tensor]:
            if a is None or not ctx.needs_input_grad[i]:
                return None
            g = torch.from_numpy(a)
            return g * s if s != 1.0 else g

        return t(r.grad_weights, 0), t(r.grad_biases, 1), t(r.grad_inputs, 2), None


def full_softmax_loss(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: Any,
    inputs: torch.Tensor,
    reduction: str = "mean",
    *,
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    max_logits_bytes: Optional[int] = None,
) -> torch.Tensor:
    """The exact softmax cross-entropy over all classes (``zipfnce.full_softmax_loss``), differentiable in
    ``weight`` ``[V, d]``, ``bias`` ``[V]`` (or None) and ``inputs`` ``[B, d]``; ``labels`` int ``[B]`` or
    ``[B, num_true]`` (a tensor or an array; a constant).

    Equals ``F.cross_entropy(inputs @ weight.T + bias, labels, reduction=reduction,
    ignore_index=ignore_index, label_smoothing=label_smoothing)``; with ``num_true > 1`` the target of a row
    is ``1 / num_true`` on each of its labels (torch's probability targets). ``reduction="mean"`` divides by
    the number of rows not ignored, as torch does. The gradient of ``weight`` is dense ``[V, d]``.
    """
    red = _reduction(reduction)
    weight = _float_tensor(weight, "weight")
    dt = weight.dtype
    inputs = _float_tensor(inputs, "inputs", dt)
    if bias is not None:
        bias = _float_tensor(bias, "bias", dt)
    args = _full.prepare(
        weight.detach().numpy(),
        None if bias is None else bias.detach().numpy(),
        _labels(labels),
        inputs.detach().numpy(),
        ignore_index,
        label_smoothing,
        max_logits_bytes,
    )
    count = args.labels.shape[0]
    if args.ignore_index is not None:
        count = int(np.count_nonzero(~(args.labels == args.ignore_index).all(axis=1)))
    need = torch.is_grad_enabled() and (
        weight.requires_grad or inputs.requires_grad or (bias is not None and bias.requires_grad)
    )
    return _Full.apply(weight, bias, inputs, _FullCall(args, red, count, need and red != "none"))


class FullSoftmaxLoss(nn.Module):
    """The exact softmax cross-entropy over ``num_classes`` with its own output layer (``weight``
    ``[V, d]``, ``bias`` ``[V]``): ``forward(inputs, labels)`` is :func:`full_softmax_loss` of them,
    ``F.cross_entropy(nn.Linear(d, V)(inputs), labels)`` without the ``[B, V]`` logits. ``bias=False`` drops
    the bias."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        bias: bool = True,
        reduction: str = "mean",
        ignore_index: Optional[int] = None,
        label_smoothing: float = 0.0,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.num_classes = as_int(num_classes, "num_classes", lo=1)
        self.embedding_dim = as_int(embedding_dim, "embedding_dim", lo=1)
        self.reduction = _reduction(reduction)
        self.ignore_index = None if ignore_index is None else as_int(ignore_index, "ignore_index")
        self.label_smoothing = float(label_smoothing)
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in _FLOATS:
            raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(self.num_classes, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight ~ N(0, 1/embedding_dim), bias 0."""
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0 / math.sqrt(self.embedding_dim))
            if self.bias is not None:
                self.bias.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"
        )

    def forward(self, inputs: torch.Tensor, labels: Any) -> torch.Tensor:
        """``inputs`` ``[B, embedding_dim]``; ``labels`` int ``[B]`` or ``[B, num_true]``."""
        return full_softmax_loss(
            self.weight, self.bias, labels, inputs, self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )  # fmt: skip
