"""PyTorch adapter: the sampled softmax, NCE and InfoNCE losses as differentiable torch functions and modules.

``import zipfnce.torch as znt``. Importing this module imports torch; ``import zipfnce`` alone never does.

The native path (``backend="native"``, and ``"auto"`` for CPU float32/float64; see "Backends and devices"
below): tensors go to the NumPy API without copies (``tensor.detach().numpy()`` on CPU tensors) and the
results come back through ``torch.from_numpy``. Gradients reach ``weight``, ``bias`` and ``inputs`` (``query``, ``keys``,
``negatives`` for InfoNCE) through a ``torch.autograd.Function``:

- ``reduction="mean"`` or ``"sum"``: the forward pass computes the loss and every gradient in one fused
  native call (rows weighted by 1/B for "mean"); backward only scales them by the incoming scalar gradient
  (not at all for the usual ``loss.backward()``). A second backward through a retained graph recomputes.
- ``reduction="none"``: the forward pass computes only the per-row loss; backward runs the native call again
  with the upstream gradient as its row weights (the gradient is not a fixed multiple of one saved result).

On the native path the losses are differentiable once: the gradients come from the native code, not from torch operations, so
there is no graph through them. A backward with ``create_graph=True`` (double backward: gradient penalties,
Hessian-vector products) raises a ``RuntimeError`` at once rather than returning a gradient that cannot be
differentiated. An empty batch (B = 0) is a ``ValueError``, as in the NumPy API.

The weight gradient is sparse by nature (only the rows of the true and sampled classes). The functions and
the modules with ``sparse=False`` return it as a dense ``[V, d]`` tensor, which costs O(V·d) memory and time
per step as any dense gradient does; the modules with ``sparse=True`` return a ``torch.sparse_coo_tensor``
holding only those rows (for ``torch.optim.SparseAdam``, ``SGD``, ``Adagrad``).

Backends and devices. Every loss and module takes ``backend="auto" | "native" | "torch"``:

- ``"native"``: the Rust kernels above; CPU tensors only (float32, float64, and float16 / bfloat16 read in
  place where the installed native build supports them). A tensor on another device is a ``ValueError``:
  nothing is ever copied to the host behind the caller's back.
- ``"torch"``: the same loss written with torch operations (``zipfnce.torch._ops``) on the tensors' own
  device (cpu, cuda, mps, xpu), differentiated by autograd, and usable under
  ``torch.compile``. The modules' ``sparse=True`` gathers the rows with ``F.embedding(sparse=True)``.
- ``"auto"`` (default): native for CPU float32/float64 tensors, the torch path otherwise.

Candidates are drawn by the native sampler on the host (from host labels) and moved to the device once per
call (pinned memory and ``non_blocking`` for CUDA); ``CandidateSample.to(device)`` does that ahead of time,
so a loop can draw the next batch's candidates while the device works.

Precision: float16 and bfloat16 tensors give a float32 loss and gradients in their own dtype (the products
are accumulated in float32). All float tensors of a call share a dtype and a device; under
``torch.autocast`` mixed float dtypes are promoted to the widest one instead (the way autocast treats a loss).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

import zipfnce as _zn
from zipfnce import _infonce, _losses
from zipfnce._validate import as_ids, as_int
from zipfnce.torch._queue import NegativeQueue

from . import _ops

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
_HALF = (torch.float16, torch.bfloat16)
_ALL_FLOATS = _FLOATS + _HALF
_BACKENDS = ("auto", "native", "torch")


def _backend(b: Any) -> str:
    if not isinstance(b, str) or b not in _BACKENDS:
        raise ValueError(f"backend: must be one of 'auto', 'native', 'torch', got {b!r}")
    return b


def _call_floats(named: Any) -> Tuple[List[Optional[torch.Tensor]], torch.device, torch.dtype]:
    """The float tensors of one call (``(name, tensor or None)`` pairs, the first one given): checked to be
    dense float tensors on one device with one dtype. Under ``torch.autocast`` (on for their device) mixed
    float dtypes are promoted to the widest one; otherwise a mismatch is a ``TypeError`` naming the
    argument."""
    out: List[Optional[torch.Tensor]] = []
    first = None
    for name, t in named:
        if t is None:
            out.append(None)
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{name}: must be a dense (strided) tensor, got layout {t.layout}")
        if t.dtype not in _ALL_FLOATS:
            raise TypeError(
                f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}"
            )
        if first is None:
            first = (name, t)
        elif t.device != first[1].device:
            raise ValueError(
                f"{name}: is on {t.device}, but {first[0]} is on {first[1].device}; the tensors of one call "
                "must share a device"
            )
        out.append(t)
    assert first is not None
    dev, dt = first[1].device, first[1].dtype
    mixed = [(n, t) for (n, t) in named if t is not None and t.dtype != dt]
    if mixed:
        if not _autocast_on(dev):
            n, t = mixed[0]
            raise TypeError(
                f"{n}: has dtype {t.dtype}, but {first[0]} has {dt}; the float tensors of one call share a "
                "dtype (convert it first, or run under torch.autocast)"
            )
        for _, t in mixed:
            dt = torch.promote_types(dt, t.dtype)
        out = [None if t is None else t.to(dt) for t in out]
    return out, dev, dt


def _autocast_on(dev: torch.device) -> bool:
    try:
        return bool(torch.is_autocast_enabled(dev.type))
    except (RuntimeError, TypeError, ValueError):
        return False


def _pick(backend: Any, dev: torch.device, dt: torch.dtype) -> str:
    """The path a call takes: ``"native"`` or ``"torch"``."""
    b = _backend(backend)
    if b == "auto":
        return "native" if dev.type == "cpu" and dt in _FLOATS else "torch"
    if b == "native" and dev.type != "cpu":
        raise ValueError(
            f"backend: 'native' runs on the host and the tensors are on {dev}; zipfnce does not copy them to "
            "the host: use backend='torch' (or 'auto') to compute on the device, or move them yourself"
        )
    return b


def _np_view(t: torch.Tensor) -> np.ndarray:
    """A CPU float tensor as a NumPy array sharing its memory (bfloat16 as ``ml_dtypes.bfloat16``)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(
                "bfloat16 tensors on the native path need the ml_dtypes package (NumPy's bfloat16); "
                "install it, or use backend='torch'"
            ) from None
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _from_np(a: np.ndarray, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A NumPy result as a tensor sharing its memory (``ml_dtypes.bfloat16`` as torch.bfloat16), converted to
    ``dtype`` when given."""
    if a.dtype.kind == "V" or a.dtype.name == "bfloat16":
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def _index(x: Any, name: str, dev: torch.device) -> torch.Tensor:
    """Integer ids for the torch path: a tensor on ``dev`` (int64), or a host array moved there once."""
    if isinstance(x, torch.Tensor):
        if x.device != dev:
            raise ValueError(f"{name}: is on {x.device}, but the tables are on {dev}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name}: expected integer class ids, got dtype {x.dtype}")
        return x.long()
    return _ops.to_device(as_ids(x, name), dev)


def _const(x: Any, name: str, dev: torch.device, ct: torch.dtype) -> Optional[torch.Tensor]:
    """Real constants (expected counts, log-Q) for the torch path, on ``dev`` in ``ct``."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        if x.device != dev:
            raise ValueError(f"{name}: is on {x.device}, but the tables are on {dev}")
        if x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
        return x.detach().to(ct)
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return _ops.to_device(a, dev, ct)


def _host_ids(x: Any, name: str) -> np.ndarray:
    """Ids as a host int64 array (a copy of a device tensor's few ids: the sampler reads them)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name}: expected integer class ids, got dtype {x.dtype}")
        x = x.numpy()
    return as_ids(x, name)


def _in_range(ids: torch.Tensor, rows: int, name: str, table: str) -> None:
    """On CPU (no device synchronisation) an id outside the table is a ``ValueError``; on an accelerator, and
    inside ``torch.compile`` (a data-dependent branch breaks the graph), the ids are trusted."""
    if ids.device.type == "cpu" and ids.numel() and not torch.compiler.is_compiling():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= rows:
            bad = hi if hi >= rows else lo
            raise ValueError(f"{name}: class id {bad} is outside [0, {rows}), the rows of {table}")


def _reduction(r: Any) -> str:
    if not isinstance(r, str) or r not in _REDUCTIONS:
        raise ValueError(f"reduction: must be one of 'none', 'mean', 'sum', got {r!r}")
    return r


def _as_np(x: Any, name: str) -> Any:
    """Tensors (any dtype) as NumPy arrays sharing their memory, for the native path; anything else
    unchanged. A tensor off the host is a ``ValueError`` (never a silent copy)."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name}: must be a CPU tensor for backend='native', got a tensor on {x.device}")
        if x.layout != torch.strided:
            raise TypeError(f"{name}: must be a dense (strided) tensor, got layout {x.layout}")
        if x.dtype in _HALF:
            return _np_view(x)
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
    v = _from_np(vals, dtype)
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
    inputs_dtype: torch.dtype


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
        return _from_np(_reduce(loss, call.reduction))

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
            gx = _from_np(r.grad_inputs, call.inputs_dtype)
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
    backend: Any = "auto",
) -> torch.Tensor:
    red = _reduction(reduction)
    (weight, bias, inputs), dev, dt = _call_floats((("weight", weight), ("bias", bias), ("inputs", inputs)))
    path = _pick(backend, dev, dt)
    opts = _losses.options(
        nce, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
    )
    if path == "torch":
        return _sampled_torch(opts, weight, bias, labels, inputs, sampled_values, red, sparse, dev)
    lab = _as_np(labels, "labels")
    _nonempty_labels(lab)
    if sampled_values is None:
        # Drawn here from the labels as given: an id out of range is the sampler's error (true_classes).
        opts.check_num_classes(weight.shape[0], "weight")
        lab2 = np.asarray(lab)
        sv = opts.draw(lab2.reshape(-1, 1) if lab2.ndim == 1 and opts.num_true == 1 else lab2)
    else:
        sv = tuple(_as_np(v, "sampled_values") for v in _losses.split_sampled_values(sampled_values))
    b = None if bias is None else _np_view(bias)
    args = opts.bind(_np_view(weight), b, lab, _np_view(inputs), sv)
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
        dt,
    )
    return _Sampled.apply(weight, bias, inputs, call)


def _sampled_torch(
    opts: _losses.SampledOptions,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: Any,
    inputs: torch.Tensor,
    sampled_values: Any,
    red: str,
    sparse: bool,
    dev: torch.device,
) -> torch.Tensor:
    """The torch path of a sampled softmax / NCE call: the arguments checked as the native path checks them
    (shapes, ids), the candidates drawn on the host if need be and moved to ``dev`` once."""
    nt, ns = opts.num_true, opts.num_sampled
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(
            f"weight: must be a non-empty [num_classes, dim] tensor, got shape {list(weight.shape)}"
        )
    v, d = weight.shape
    if isinstance(labels, torch.Tensor) and labels.device != dev:
        raise ValueError(f"labels: is on {labels.device}, but weight is on {dev}")
    if sampled_values is None:
        opts.check_num_classes(v, "weight")
        host = _host_ids(labels, "labels")
        if host.ndim == 1 and nt == 1:
            host = host.reshape(-1, 1)
        if host.ndim == 2 and host.shape[0] == 0:
            raise ValueError("labels: the batch is empty")
        if host.ndim != 2 or host.shape[1] != nt:
            raise ValueError(f"labels: must be [batch, num_true={nt}], got shape {host.shape}")
        if host.size and (int(host.min()) < 0 or int(host.max()) >= opts.num_classes):
            bad = host.max() if host.max() >= opts.num_classes else host.min()
            raise ValueError(
                f"labels: class id {bad} is outside the default sampler's range [0, num_classes={opts.num_classes})"
            )
        ids, te, se = opts.draw(host)
        lab = labels.long() if isinstance(labels, torch.Tensor) else _ops.to_device(host, dev)
    else:
        ids, te, se = _losses.split_sampled_values(sampled_values)
        lab = _index(labels, "labels", dev)
    if lab.dim() == 1 and nt == 1:
        lab = lab.reshape(-1, 1)
    if lab.dim() != 2 or lab.shape[1] != nt:
        raise ValueError(f"labels: must be [batch, num_true={nt}], got shape {tuple(lab.shape)}")
    bsz = lab.shape[0]
    if bsz == 0:
        raise ValueError("labels: the batch is empty")
    if inputs.dim() != 2:
        raise ValueError(f"inputs: must be [batch, dim], got shape {tuple(inputs.shape)}")
    if inputs.shape[1] != d:
        raise ValueError(f"inputs: has {inputs.shape[1]} columns but weight has {d}")
    if inputs.shape[0] != bsz:
        raise ValueError(f"inputs: has {inputs.shape[0]} rows but labels has {bsz}")
    if bias is not None and tuple(bias.shape) != (v,):
        raise ValueError(f"bias: must have shape ({v},) like the rows of weight, got {tuple(bias.shape)}")
    ids_t = _index(ids, "sampled_values", dev)
    if ids_t.dim() == 1:
        if ids_t.shape[0] != ns:
            raise ValueError(f"sampled_values: has {ids_t.shape[0]} candidates but num_sampled is {ns}")
    elif ids_t.dim() == 2:
        if tuple(ids_t.shape) != (bsz, ns):
            raise ValueError(
                f"sampled_values: per-row candidates must be [batch={bsz}, num_sampled={ns}], "
                f"got {tuple(ids_t.shape)}"
            )
    else:
        raise ValueError(
            f"sampled_values: candidates must be [S] or [batch, S], got shape {tuple(ids_t.shape)}"
        )
    _in_range(lab, v, "labels", "weight")
    _in_range(ids_t, v, "sampled_values", "weight")
    ct = _ops.compute_dtype(weight.dtype)
    te_t = se_t = None
    if opts.subtract_log_q:
        if te is None:
            opts.check_no_true_expected()
        te_t = _const(te, "sampled_values", dev, ct)
        se_t = _const(se, "sampled_values", dev, ct)
        assert te_t is not None and se_t is not None
        if tuple(te_t.shape) != (bsz, nt) and not (nt == 1 and tuple(te_t.shape) == (bsz,)):
            raise ValueError(
                f"sampled_values: true_expected_count must be {(bsz, nt)}, got {tuple(te_t.shape)}"
            )
        if se_t.shape != ids_t.shape:
            raise ValueError(
                f"sampled_values: sampled_expected_count has shape {tuple(se_t.shape)}, "
                f"the candidates {tuple(ids_t.shape)}"
            )
    loss = _ops.sampled_rows_loss(
        opts.nce, weight, bias, lab, inputs, ids_t, te_t, se_t, opts.remove_accidental_hits,
        opts.subtract_log_q, opts.focal_gamma, sparse,
    )  # fmt: skip
    return _ops.reduce(loss, red)


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
    backend: str = "auto",
) -> torch.Tensor:
    """Sampled softmax loss (``zipfnce.sampled_softmax_loss``) on torch tensors, differentiable.

    ``weight`` ``[V, d]``, ``bias`` ``[V]`` or None, ``labels`` int ``[B]`` or ``[B, num_true]`` (tensor or
    array), ``inputs`` ``[B, d]``. ``sampled_values``: None (a unique log-uniform draw over ``num_classes``,
    made once per call, reproducible with ``seed``), TensorFlow's triple or a :class:`zipfnce.CandidateSample`
    (tensors or arrays). ``reduction``: ``"none"`` (``[B]``), ``"mean"`` or ``"sum"`` (scalars). The weight
    and bias gradients are dense tensors (O(V·d)); :class:`SampledSoftmaxLoss` with ``sparse=True`` avoids
    it.

    ``backend``: ``"auto"`` (native for CPU float32/float64, else torch), ``"native"`` (CPU only) or
    ``"torch"`` (torch operations on the tensors' device; see the module docstring). Both compute
    ``z_t = x.w_t + b_t - log Q_t``, ``z_s = x.w_s + b_s - log Q_s``, accidental hits masked, and
    ``loss_b = -sum_t y (1 - p_t)^g log p_t`` with ``y = 1/num_true``, ``p = softmax(z)``. float16/bfloat16
    tensors give a float32 loss and gradients in their own dtype.
    """
    return _sampled(
        False, weight, bias, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        remove_accidental_hits, seed, subtract_log_q, focal_gamma, reduction, False, backend,
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
    backend: str = "auto",
) -> torch.Tensor:
    """NCE loss (``zipfnce.nce_loss``) on torch tensors, differentiable; arguments as
    :func:`sampled_softmax_loss`."""
    return _sampled(
        True, weight, bias, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        remove_accidental_hits, seed, subtract_log_q, focal_gamma, reduction, False, backend,
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
        ctx.dtype = query.dtype
        return _from_np(_reduce(loss, call.reduction))

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
            g = _from_np(a, ctx.dtype)
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
    backend: str = "auto",
) -> torch.Tensor:
    """InfoNCE (``zipfnce.info_nce_loss``) on torch tensors, differentiable in ``query``, ``keys`` and
    ``negatives``. ``key_log_q``, ``negative_log_q``, ``key_ids``, ``negative_ids`` are constants (tensors or
    arrays; no gradient flows to them). ``reduction`` as in :func:`sampled_softmax_loss`; ``backend`` too
    (the torch path builds the ``B x (B + N)`` logits ``z[i, j] = q_i.k_j / T - key_log_q[j]`` whole and
    ignores ``max_logits_bytes``; ``loss_i = -(1 - p_ii)^g log p_ii``)."""
    red = _reduction(reduction)
    (query, keys, negatives), dev, dt = _call_floats(
        (("query", query), ("keys", keys), ("negatives", negatives))
    )
    _nonempty_query(query)
    if _pick(backend, dev, dt) == "torch":
        return _info_nce_torch(
            query, keys, negatives, temperature, key_log_q, negative_log_q, key_ids, negative_ids, symmetric,
            focal_gamma, max_logits_bytes, red, dev, num_hard_negatives,
        )  # fmt: skip
    args = _infonce.prepare(
        _np_view(query),
        _np_view(keys),
        None if negatives is None else _np_view(negatives),
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


def _info_nce_torch(
    query: torch.Tensor,
    keys: torch.Tensor,
    negatives: Optional[torch.Tensor],
    temperature: Any,
    key_log_q: Any,
    negative_log_q: Any,
    key_ids: Any,
    negative_ids: Any,
    symmetric: Any,
    focal_gamma: Any,
    max_logits_bytes: Any,
    red: str,
    dev: torch.device,
    num_hard_negatives: Any = None,
) -> torch.Tensor:
    """The torch path of an InfoNCE call, checked as the native path checks it."""
    o = _infonce.options(temperature, symmetric, focal_gamma, max_logits_bytes, num_hard_negatives)
    if query.dim() != 2:
        raise ValueError(f"query: must be two-dimensional [rows, dim], got shape {tuple(query.shape)}")
    if keys.shape != query.shape:
        raise ValueError(f"keys: must have the shape of query {tuple(query.shape)}, got {tuple(keys.shape)}")
    b, d = query.shape
    n = 0
    if negatives is not None:
        if negatives.dim() != 2 or negatives.shape[1] != d:
            raise ValueError(
                f"negatives: must have {d} columns like query, got shape {tuple(negatives.shape)}"
            )
        n = negatives.shape[0]
    elif negative_log_q is not None:
        raise ValueError("negative_log_q: given without negatives")
    elif negative_ids is not None:
        raise ValueError("negative_ids: given without negatives")
    ct = _ops.compute_dtype(query.dtype)

    def per_item(x: Any, name: str, size: int, what: str) -> Optional[torch.Tensor]:
        t = _const(x, name, dev, ct)
        if t is not None and tuple(t.shape) != (size,):
            raise ValueError(f"{name}: must have shape ({size},) ({what}), got {tuple(t.shape)}")
        return t

    def ids(x: Any, name: str, size: int, what: str) -> Optional[torch.Tensor]:
        if x is None:
            return None
        t = _index(x, name, dev)
        if tuple(t.shape) != (size,):
            raise ValueError(f"{name}: must have shape ({size},) ({what}), got {tuple(t.shape)}")
        return t

    kq = per_item(key_log_q, "key_log_q", b, "one per key")
    nq = per_item(negative_log_q, "negative_log_q", n, "one per negative")
    kid = ids(key_ids, "key_ids", b, "one per key")
    nid = ids(negative_ids, "negative_ids", n, "one per negative")
    if nid is not None and kid is None:
        raise ValueError(
            "negative_ids: needs key_ids (a negative is masked where its id equals the row's key id)"
        )
    _infonce.check_hard(o, b, n)
    loss = _ops.info_nce_rows_loss(
        query,
        keys,
        negatives,
        o.temperature,
        kq,
        nq,
        kid,
        nid,
        o.symmetric,
        o.focal_gamma,
        o.num_hard_negatives,
    )
    return _ops.reduce(loss, red)


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
        device: Any = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.backend = _backend(backend)
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
        if dtype not in _ALL_FLOATS:
            raise TypeError(f"dtype: expected torch.float32, float64, float16 or bfloat16, got {dtype}")
        fk = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim, **fk))
        self.bias = nn.Parameter(torch.empty(self.num_classes, **fk)) if bias else None
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
            f"num_true={self.num_true}, sampler={self.sampler!r}, reduction={self.reduction!r}, sparse={self.sparse}, "
            f"backend={self.backend!r}"
        )

    def sample(self, labels: Any) -> Any:
        """The candidates for one step: ``self.sampler.sample(num_sampled, true_classes=labels)``, on the host
        (a :class:`zipfnce.CandidateSample` of NumPy arrays; ``.to(device)`` moves it). ``labels`` may be a
        tensor on any device: its few ids are read on the host."""
        if isinstance(labels, torch.Tensor):
            labels = _host_ids(labels, "labels")
        return self.sampler.sample(self.num_sampled, unique=True, true_classes=labels)

    def forward(self, inputs: torch.Tensor, labels: Any, sampled_values: Any = None) -> torch.Tensor:
        """``inputs`` ``[B, embedding_dim]``; ``labels`` int ``[B]`` or ``[B, num_true]`` (array, or tensor on
        the weight's device: its ids are read on the host to draw the candidates). ``sampled_values``: None
        draws with :meth:`sample`; a :class:`zipfnce.CandidateSample` given instead (e.g. drawn for this
        batch ahead of time with ``module.sample(labels).to(device)``) is used as it is."""
        dev = self.weight.device
        if isinstance(labels, torch.Tensor) and labels.device != dev:
            raise ValueError(f"labels: is on {labels.device}, but the module's weight is on {dev}")
        if sampled_values is None:
            lab = _host_ids(labels, "labels") if isinstance(labels, torch.Tensor) else np.asarray(labels)
            if lab.ndim == 1 and self.num_true == 1:
                lab = lab.reshape(-1, 1)
            _nonempty_labels(lab)  # before the sampler's stream moves on
            if lab.dtype.kind not in "iu":
                raise TypeError(f"labels: expected integer class ids, got dtype {lab.dtype}")
            sampled_values = self.sample(lab)
            if not isinstance(labels, torch.Tensor):
                labels = lab
        return _sampled(
            self._nce, self.weight, self.bias, labels, inputs, self.num_sampled, self.num_classes, self.num_true,
            sampled_values, self.remove_accidental_hits, None, self.subtract_log_q, self.focal_gamma,
            self.reduction, self.sparse, self.backend,
        )  # fmt: skip


class SampledSoftmaxLoss(_SampledLossModule):
    """Sampled softmax over ``num_classes`` that owns its output embedding (``weight`` ``[V, d]``, ``bias``
    ``[V]``), like ``nn.AdaptiveLogSoftmaxWithLoss``.

    ``forward(inputs, labels)`` draws ``num_sampled`` unique candidates from ``sampler`` (default
    ``zipfnce.LogUniformSampler(num_classes)``; any zipfnce sampler, e.g. a seeded or unigram one) and returns
    the loss reduced by ``reduction``. ``sparse=True`` gives ``weight`` and ``bias`` sparse gradients holding
    only the rows used (as ``nn.Embedding(sparse=True)``; use ``torch.optim.SparseAdam`` or ``SGD``); with
    ``sparse=False`` they are dense, which costs O(V·d) per step. ``bias=False`` drops the bias.
    ``dtype`` (float32 default, float64, float16, bfloat16) and ``device`` place the parameters;
    ``backend`` as in :func:`sampled_softmax_loss` (``"auto"``: native for CPU float32/float64 parameters).
    Under ``torch.autocast`` half-precision ``inputs`` are promoted to the parameters' dtype.
    ``forward(inputs, labels, sampled_values=c)`` uses candidates ``c`` drawn ahead of time (e.g.
    ``module.sample(next_labels).to(device)`` while the device works on this step).
    """

    _nce = False


class NCELoss(_SampledLossModule):
    """NCE over ``num_classes`` with its own output embedding; as :class:`SampledSoftmaxLoss`
    (``remove_accidental_hits`` defaults to False, as ``tf.nn.nce_loss``)."""

    _nce = True


class InfoNCELoss(nn.Module):
    """InfoNCE / CLIP loss: ``forward(query, keys, negatives=None, **options)``; ``options`` are the other
    keyword arguments of :func:`info_nce_loss` (``key_log_q``, ``key_ids``, ...), and may override the
    constructor's ``temperature``, ``symmetric``, ``focal_gamma`` and ``backend`` for one call."""

    def __init__(
        self,
        temperature: float = 0.1,
        symmetric: bool = False,
        focal_gamma: float = 0.0,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.backend = _backend(backend)
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
            f"reduction={self.reduction!r}, backend={self.backend!r}"
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
            "backend": self.backend,
        }
        kw.update(options)
        return info_nce_loss(query, keys, negatives=negatives, **kw)


from ._full import FullSoftmaxLoss, full_softmax_loss  # noqa: E402  (the exact softmax: its own module)
