"""PyTorch adapter: the sampled softmax, NCE and InfoNCE losses as differentiable torch functions and modules.

``import zipfnce.torch as znt``. Importing this module imports torch; ``import zipfnce`` alone never does.

Tensors go to the NumPy API without copies (``tensor.detach().numpy()`` on CPU tensors) and the results come
back through ``torch.from_numpy``. Gradients reach ``weight``, ``bias`` and ``inputs`` (``query``, ``keys``,
``negatives`` for InfoNCE) through a ``torch.autograd.Function``:

- ``reduction="mean"`` or ``"sum"``: the forward pass computes the loss and every gradient in one fused
  native call (rows weighted by 1/B for "mean"); backward only scales them by the incoming scalar gradient
  (not at all for the usual ``loss.backward()``). A second backward through a retained graph recomputes.
- ``reduction="none"``: the forward pass computes only the per-row loss; backward runs the native call again
  with the upstream gradient as its row weights (the gradient is not a fixed multiple of one saved result).

The losses are differentiable once: the gradients come from the native code, not from torch operations, so
there is no graph through them. A backward with ``create_graph=True`` (double backward: gradient penalties,
Hessian-vector products) raises a ``RuntimeError`` at once rather than returning a gradient that cannot be
differentiated. An empty batch (B = 0) is a ``ValueError``, as in the NumPy API.

The weight gradient is sparse by nature (only the rows of the true and sampled classes). The functions and
the modules with ``sparse=False`` return it as a dense ``[V, d]`` tensor, which costs O(V·d) memory and time
per step as any dense gradient does; the modules with ``sparse=True`` return a ``torch.sparse_coo_tensor``
holding only those rows (for ``torch.optim.SparseAdam``, ``SGD``, ``Adagrad``).

Only CPU tensors of dtype float32 or float64 are accepted; all float tensors of one call share a dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

import zipfnce as _zn
from zipfnce import _infonce, _losses
from zipfnce._validate import as_int
from zipfnce.torch._queue import NegativeQueue

__all__ = [
    "sampled_softmax_loss",
    "nce_loss",
    "info_nce_loss",
    "SampledSoftmaxLoss",
    "NCELoss",
    "InfoNCELoss",
    "full_softmax_loss",
    "FullSoftmaxLoss",
    "NegativeQueue",
]

_REDUCTIONS = ("none", "mean", "sum")
_FLOATS = (torch.float32, torch.float64)


def _reduction(r: Any) -> str:
    if not isinstance(r, str) or r not in _REDUCTIONS:
        raise ValueError(f"reduction: must be one of 'none', 'mean', 'sum', got {r!r}")
    return r


def _cpu(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{name}: must be a CPU tensor, got a tensor on {t.device}")
    if t.layout != torch.strided:
        raise TypeError(f"{name}: must be a dense (strided) tensor, got layout {t.layout}")


def _float_tensor(t: Any, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    _cpu(t, name)
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: has dtype {t.dtype}, but the call computes in {dtype}; convert it first")
    return t


def _as_np(x: Any, name: str) -> Any:
    """Tensors (any dtype) as NumPy arrays sharing their memory; anything else unchanged."""
    if isinstance(x, torch.Tensor):
        _cpu(x, name)
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            raise TypeError(f"{name}: dtype {x.dtype} is not supported")
        return x.detach().resolve_conj().resolve_neg().numpy()
    return x


def _reduce(loss: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        return loss
    return np.asarray(loss.sum() if reduction == "sum" else loss.mean(), dtype=loss.dtype)


def _nonempty_labels(labels: Any) -> None:
    """The NumPy API's error for an empty batch, raised before anything is drawn or computed."""
    if np.ndim(labels) >= 1 and np.shape(labels)[0] == 0:
        raise ValueError("labels: the batch is empty")


def _nonempty_query(query: torch.Tensor) -> None:
    """The NumPy API's error for an empty InfoNCE batch."""
    if query.ndim == 2 and query.shape[0] == 0:
        raise ValueError(f"query: must be a non-empty [batch, dim] array, got shape {list(query.shape)}")


def _fused_weight(reduction: str, batch: int) -> Optional[float]:
    """Row weight of the fused forward call: the gradients come out already scaled for the reduction, so
    the usual ``loss.backward()`` (upstream gradient 1) hands them to autograd without touching them. An
    empty ``batch`` (a mismatch the NumPy API reports) gets no weight rather than a division by zero."""
    return 1.0 / batch if reduction == "mean" and batch > 0 else None


_DOUBLE_BACKWARD = (
    "zipfnce's fused losses are differentiable once: their gradients are computed natively and have no graph, "
    "so backward with create_graph=True (double backward, e.g. a gradient penalty or a Hessian-vector "
    "product) is not supported; call backward() or torch.autograd.grad without create_graph=True"
)


def _once_differentiable(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps an ``autograd.Function.backward``: a backward with ``create_graph=True`` is a ``RuntimeError``
    at once. (Autograd runs ``backward`` with grad mode on exactly when ``create_graph=True``. Torch's own
    ``once_differentiable`` reports only at the second differentiation, with a generic message.)"""

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grad_outputs: Any) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        return backward(ctx, *grad_outputs)

    return wrapper


def _upstream_rows(grad_output: torch.Tensor, reduction: str, batch: int) -> Any:
    """The row weights of a recomputation: the upstream gradient itself for "none", else its scalar (over the
    batch size for "mean")."""
    if reduction == "none":
        return grad_output.detach().numpy()
    g = float(grad_output)
    return g / batch if reduction == "mean" else g


def _rows_to_grad(
    idx: np.ndarray, vals: np.ndarray, like: Tuple[Tuple[int, ...], torch.dtype], scale: float, sparse: bool
) -> torch.Tensor:
    """A sparse row gradient (sorted unique ``idx``, ``vals``) as the gradient of a tensor of shape and dtype
    ``like``."""
    shape, dtype = like
    v = torch.from_numpy(vals)
    if scale != 1.0:
        v = v * scale
    i = torch.from_numpy(idx)
    if sparse:
        return torch.sparse_coo_tensor(i[None], v, shape, is_coalesced=True, check_invariants=False)
    # A dense gradient of the whole table: O(V*d), as for any dense gradient.
    return torch.zeros(shape, dtype=dtype).index_copy_(0, i, v)


class _SampledCall(NamedTuple):
    """What a sampled softmax / NCE call carries from its front end through autograd: the checked arguments
    (with the candidates drawn once, so that a recomputation in backward sees the same ones) and how the
    result is reduced and its gradients built."""

    args: _losses.SampledArgs
    reduction: str
    fused: bool  # the forward pass computes the gradients too
    sparse: bool
    # Shapes and dtypes only: the gradient constructors need them, not the data.
    weight_like: Tuple[Tuple[int, ...], torch.dtype]
    bias_like: Optional[Tuple[Tuple[int, ...], torch.dtype]]


class _Sampled(torch.autograd.Function):
    """Sampled softmax / NCE; ``call`` (a :class:`_SampledCall`) holds everything but the three tensors."""

    @staticmethod
    def forward(ctx, weight, bias, inputs, call):  # type: ignore[override]
        ctx.call = call
        ctx.has_bias = bias is not None
        if call.fused:
            r = call.args.loss_and_grad(_fused_weight(call.reduction, inputs.shape[0]))
            ctx.fused = r
            loss = r.loss
        else:
            ctx.fused = None
            loss = call.args.loss()
        # Kept for a recomputation: "none", or a second backward through a retained graph.
        ctx.save_for_backward(weight, bias, inputs)
        return torch.from_numpy(_reduce(loss, call.reduction))

    @staticmethod
    @_once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        call = ctx.call
        if ctx.fused is not None:
            # The saved gradients go to autograd without a copy, so they are handed over once only.
            r, ctx.fused = ctx.fused, None
            s = float(grad_output)
        else:
            # Reading the saved tensors checks that none was modified in place since the forward pass; the
            # prepared arguments hold their memory, and run again with the upstream gradient as row weights.
            weight, bias, inputs = ctx.saved_tensors
            r = call.args.loss_and_grad(_upstream_rows(grad_output, call.reduction, inputs.shape[0]))
            s = 1.0
        gx = gw = gb = None
        if ctx.needs_input_grad[2]:
            gx = torch.from_numpy(r.grad_inputs)
            if s != 1.0:
                gx = gx * s
        if ctx.needs_input_grad[0]:
            gw = _rows_to_grad(
                r.grad_weights.indices, r.grad_weights.values, call.weight_like, s, call.sparse
            )
        if ctx.has_bias and ctx.needs_input_grad[1]:
            gb = _rows_to_grad(r.grad_biases.indices, r.grad_biases.values, call.bias_like, s, call.sparse)
        return gw, gb, gx, None


def _sampled(
    nce: bool,
    weight: Any,
    bias: Any,
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
    reduction: Any,
    sparse: bool = False,
) -> torch.Tensor:
    red = _reduction(reduction)
    weight = _float_tensor(weight, "weight")
    dt = weight.dtype
    if bias is not None:
        bias = _float_tensor(bias, "bias", dt)
    inputs = _float_tensor(inputs, "inputs", dt)
    lab = _as_np(labels, "labels")
    _nonempty_labels(lab)
    opts = _losses.options(
        nce, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
    )
    if sampled_values is None:
        # Drawn here from the labels as given: an id out of range is the sampler's error (true_classes).
        opts.check_num_classes(weight.shape[0], "weight")
        lab2 = np.asarray(lab)
        sv = opts.draw(lab2.reshape(-1, 1) if lab2.ndim == 1 and opts.num_true == 1 else lab2)
    else:
        sv = tuple(_as_np(v, "sampled_values") for v in _losses.split_sampled_values(sampled_values))
    b = None if bias is None else bias.detach().numpy()
    args = opts.bind(weight.detach().numpy(), b, lab, inputs.detach().numpy(), sv)
    need = torch.is_grad_enabled() and (
        weight.requires_grad or inputs.requires_grad or (bias is not None and bias.requires_grad)
    )
    call = _SampledCall(
        args,
        red,
        need and red != "none",
        sparse,
        (tuple(weight.shape), dt),
        None if bias is None else (tuple(bias.shape), dt),
    )
    return _Sampled.apply(weight, bias, inputs, call)


def sampled_softmax_loss(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: Any,
    inputs: torch.Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Any = None,
    remove_accidental_hits: bool = True,
    seed: Optional[int] = None,
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sampled softmax loss (``zipfnce.sampled_softmax_loss``) on torch tensors, differentiable.

    ``weight`` ``[V, d]``, ``bias`` ``[V]`` or None, ``labels`` int ``[B]`` or ``[B, num_true]`` (tensor or
    array), ``inputs`` ``[B, d]``. ``sampled_values``: None (a unique log-uniform draw over ``num_classes``,
    made once per call, reproducible with ``seed``), TensorFlow's triple or a :class:`zipfnce.CandidateSample`
    (tensors or arrays). ``reduction``: ``"none"`` (``[B]``), ``"mean"`` or ``"sum"`` (scalars). The weight
    and bias gradients are dense tensors (O(V·d)); :class:`SampledSoftmaxLoss` with ``sparse=True`` avoids
    it.
    """
    return _sampled(
        False, weight, bias, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        remove_accidental_hits, seed, subtract_log_q, focal_gamma, reduction,
    )  # fmt: skip


def nce_loss(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: Any,
    inputs: torch.Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Any = None,
    remove_accidental_hits: bool = False,
    seed: Optional[int] = None,
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """NCE loss (``zipfnce.nce_loss``) on torch tensors, differentiable; arguments as
    :func:`sampled_softmax_loss`."""
    return _sampled(
        True, weight, bias, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        remove_accidental_hits, seed, subtract_log_q, focal_gamma, reduction,
    )  # fmt: skip


class _InfoNCECall(NamedTuple):
    """What an InfoNCE call carries through autograd: the checked arguments and the reduction."""

    args: _infonce.InfoNCEArgs
    reduction: str
    fused: bool


class _InfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, keys, negatives, call):  # type: ignore[override]
        ctx.call = call
        if call.fused:
            r = call.args.loss_and_grad(_fused_weight(call.reduction, query.shape[0]))
            ctx.fused = r
            loss = r.loss
        else:
            ctx.fused = None
            loss = call.args.loss()
        ctx.save_for_backward(query, keys, negatives)
        return torch.from_numpy(_reduce(loss, call.reduction))

    @staticmethod
    @_once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        call = ctx.call
        if ctx.fused is not None:
            r, ctx.fused = ctx.fused, None
            s = float(grad_output)
        else:
            query, keys, negatives = ctx.saved_tensors  # (checks for in-place changes since forward)
            r = call.args.loss_and_grad(_upstream_rows(grad_output, call.reduction, query.shape[0]))
            s = 1.0

        def t(a: Optional[np.ndarray], i: int) -> Optional[torch.Tensor]:
            if a is None or not ctx.needs_input_grad[i]:
                return None
            g = torch.from_numpy(a)
            return g * s if s != 1.0 else g

        return t(r.grad_query, 0), t(r.grad_keys, 1), t(r.grad_negatives, 2), None


def info_nce_loss(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    negatives: Optional[torch.Tensor] = None,
    temperature: float = 0.1,
    key_log_q: Any = None,
    negative_log_q: Any = None,
    key_ids: Any = None,
    negative_ids: Any = None,
    symmetric: bool = False,
    focal_gamma: float = 0.0,
    max_logits_bytes: Optional[int] = None,
    reduction: str = "mean",
    num_hard_negatives: Optional[int] = None,
) -> torch.Tensor:
    """InfoNCE (``zipfnce.info_nce_loss``) on torch tensors, differentiable in ``query``, ``keys`` and
    ``negatives``. ``key_log_q``, ``negative_log_q``, ``key_ids``, ``negative_ids`` are constants (tensors or
    arrays; no gradient flows to them). ``reduction`` as in :func:`sampled_softmax_loss`."""
    red = _reduction(reduction)
    query = _float_tensor(query, "query")
    dt = query.dtype
    keys = _float_tensor(keys, "keys", dt)
    if negatives is not None:
        negatives = _float_tensor(negatives, "negatives", dt)
    _nonempty_query(query)
    args = _infonce.prepare(
        query.detach().numpy(),
        keys.detach().numpy(),
        None if negatives is None else negatives.detach().numpy(),
        temperature,
        _as_np(key_log_q, "key_log_q"),
        _as_np(negative_log_q, "negative_log_q"),
        _as_np(key_ids, "key_ids"),
        _as_np(negative_ids, "negative_ids"),
        symmetric,
        focal_gamma,
        max_logits_bytes,
        num_hard_negatives,
    )
    need = torch.is_grad_enabled() and (
        query.requires_grad or keys.requires_grad or (negatives is not None and negatives.requires_grad)
    )
    return _InfoNCE.apply(query, keys, negatives, _InfoNCECall(args, red, need and red != "none"))


class _SampledLossModule(nn.Module):
    _nce = False

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        num_sampled: int,
        *,
        sampler: Any = None,
        num_true: int = 1,
        remove_accidental_hits: Optional[bool] = None,
        subtract_log_q: bool = True,
        focal_gamma: float = 0.0,
        reduction: str = "mean",
        sparse: bool = False,
        bias: bool = True,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.num_classes = as_int(num_classes, "num_classes", lo=1)
        self.embedding_dim = as_int(embedding_dim, "embedding_dim", lo=1)
        self.num_sampled = as_int(num_sampled, "num_sampled", lo=1)
        self.num_true = as_int(num_true, "num_true", lo=1)
        if sampler is None:
            sampler = _zn.LogUniformSampler(self.num_classes)
        if not hasattr(sampler, "sample") or not hasattr(sampler, "range_max"):
            raise TypeError(f"sampler: expected a zipfnce sampler, got {type(sampler).__name__}")
        if sampler.range_max > self.num_classes:
            raise ValueError(
                f"sampler: draws from {sampler.range_max} classes but num_classes is {self.num_classes}"
            )
        self.sampler = sampler
        hits = (not self._nce) if remove_accidental_hits is None else remove_accidental_hits
        self.remove_accidental_hits = bool(hits)
        self.subtract_log_q = bool(subtract_log_q)
        self.focal_gamma = float(focal_gamma)
        self.reduction = _reduction(reduction)
        self.sparse = bool(sparse)
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
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, num_sampled={self.num_sampled}, "
            f"num_true={self.num_true}, sampler={self.sampler!r}, reduction={self.reduction!r}, sparse={self.sparse}"
        )

    def sample(self, labels: Any) -> Any:
        """The candidates for one step: ``self.sampler.sample(num_sampled, true_classes=labels)``."""
        return self.sampler.sample(self.num_sampled, unique=True, true_classes=labels)

    def forward(self, inputs: torch.Tensor, labels: Any) -> torch.Tensor:
        """``inputs`` ``[B, embedding_dim]``; ``labels`` int ``[B]`` or ``[B, num_true]``."""
        lab = _as_np(labels, "labels")
        lab = np.asarray(lab)
        if lab.ndim == 1 and self.num_true == 1:
            lab = lab.reshape(-1, 1)
        _nonempty_labels(lab)  # before the sampler's stream moves on
        if lab.dtype.kind not in "iu":
            raise TypeError(f"labels: expected integer class ids, got dtype {lab.dtype}")
        sv = self.sample(lab)
        return _sampled(
            self._nce, self.weight, self.bias, lab, inputs, self.num_sampled, self.num_classes, self.num_true,
            sv, self.remove_accidental_hits, None, self.subtract_log_q, self.focal_gamma, self.reduction,
            self.sparse,
        )  # fmt: skip


class SampledSoftmaxLoss(_SampledLossModule):
    """Sampled softmax over ``num_classes`` that owns its output embedding (``weight`` ``[V, d]``, ``bias``
    ``[V]``), like ``nn.AdaptiveLogSoftmaxWithLoss``.

    ``forward(inputs, labels)`` draws ``num_sampled`` unique candidates from ``sampler`` (default
    ``zipfnce.LogUniformSampler(num_classes)``; any zipfnce sampler, e.g. a seeded or unigram one) and returns
    the loss reduced by ``reduction``. ``sparse=True`` gives ``weight`` and ``bias`` sparse gradients holding
    only the rows used (as ``nn.Embedding(sparse=True)``; use ``torch.optim.SparseAdam`` or ``SGD``); with
    ``sparse=False`` they are dense, which costs O(V·d) per step. ``bias=False`` drops the bias.
    """

    _nce = False


class NCELoss(_SampledLossModule):
    """NCE over ``num_classes`` with its own output embedding; as :class:`SampledSoftmaxLoss`
    (``remove_accidental_hits`` defaults to False, as ``tf.nn.nce_loss``)."""

    _nce = True


class InfoNCELoss(nn.Module):
    """InfoNCE / CLIP loss: ``forward(query, keys, negatives=None, **options)``; ``options`` are the other
    keyword arguments of :func:`info_nce_loss` (``key_log_q``, ``key_ids``, ...), and may override the
    constructor's ``temperature``, ``symmetric`` and ``focal_gamma`` for one call."""

    def __init__(
        self,
        temperature: float = 0.1,
        symmetric: bool = False,
        focal_gamma: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        t = float(temperature)
        if not t > 0:
            raise ValueError(f"temperature: must be > 0, got {temperature!r}")
        self.temperature = t
        self.symmetric = bool(symmetric)
        self.focal_gamma = float(focal_gamma)
        self.reduction = _reduction(reduction)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, symmetric={self.symmetric}, focal_gamma={self.focal_gamma}, "
            f"reduction={self.reduction!r}"
        )

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        negatives: Optional[torch.Tensor] = None,
        **options: Any,
    ) -> torch.Tensor:
        kw = {
            "temperature": self.temperature,
            "symmetric": self.symmetric,
            "focal_gamma": self.focal_gamma,
            "reduction": self.reduction,
        }
        kw.update(options)
        return info_nce_loss(query, keys, negatives=negatives, **kw)


from ._full import FullSoftmaxLoss, full_softmax_loss  # noqa: E402  (the exact softmax: its own module)
