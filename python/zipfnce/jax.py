"""JAX adapter: the sampled softmax, NCE and InfoNCE losses, differentiable with ``jax.grad`` and usable under
``jax.jit``.

``import zipfnce.jax as znj``. Importing this module imports jax; ``import zipfnce`` alone never does.

Each loss is a ``jax.custom_vjp`` whose forward and backward passes call the NumPy API on the host through
``jax.pure_callback``. Under differentiation the forward pass makes one fused native call (loss and the
gradients of ``loss.sum()``); the backward pass scales those when the incoming cotangent is the same for
every row (``jnp.mean``, ``jnp.sum`` of the loss: the usual case) and otherwise calls the native code again
with the cotangent as row weights. Without differentiation only the loss is computed.

The rows of ``weights`` and ``biases`` the call uses are gathered in JAX and only they go to the host, so a
call moves O((B + S)·d) bytes whatever the vocabulary. The gradient of ``weights`` is still a dense
``[V, d]`` array, as JAX gradients are (JAX's own transpose of the gather), which costs O(V·d) per step.
Integer arguments (labels, candidates, ids) and the option values are not differentiated. The options (``num_sampled``,
``num_classes``, ``temperature``, ...) must be Python values, not traced arrays.

Without ``jax_enable_x64`` JAX has no 64-bit types: ids travel as int32 and floats as float32.

Two paths compute every loss (keyword ``backend``):

- ``"callback"``: the native kernels through ``jax.pure_callback`` as above (float32/float64 only; the
  arrays go to the host and back, so on a GPU or TPU every call is a round trip);
- ``"jax"``: the same loss, with the same definitions, written with ``jax.numpy`` and differentiated by
  JAX: no host callback in the loss, so it runs on the arrays' device (CPU, GPU, TPU) and fuses with the
  model under ``jit``. The candidates are still drawn on the host by the native sampler: pass
  ``sampled_values`` (drawn outside ``jit``, e.g. ``zipfnce.LogUniformSampler.sample``) for a graph without
  any callback; with ``sampled_values=None`` the draw happens on the host at call time when the labels are
  concrete, and through one ``pure_callback`` returning only the ids and expected counts (no float array of
  the model) when they are traced. float16 and bfloat16 arrays are accepted: the logits, the loss and its
  reductions are computed in float32 (the rows used are converted after the gather, never the whole
  table), the loss is float32 and the gradients have the input dtype. A class id outside the table raises
  ``ValueError`` when it is concrete; inside ``jit`` (where nothing can be raised) its row gets a NaN loss.
  Non-finite inputs give NaN or inf rather than the native path's ``ValueError``. ``max_logits_bytes`` does
  not apply (the logits of the call are materialised, as for any JAX expression);
- ``"auto"`` (default): ``"jax"`` for float16/bfloat16 and for arrays on a GPU or TPU; on the CPU the
  callback path for float32/float64 calls large enough for the native kernels to beat XLA (see
  BENCHMARKS.md, "JAX and TensorFlow paths"), the JAX path for smaller ones.

The differentiable float arguments of a call (``weights``, ``biases``, ``inputs``; ``query``, ``keys``,
``negatives``) must share one dtype: a mix raises ``TypeError`` naming the argument, whatever the path.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from zipfnce import _infonce, _losses

__all__ = ["sampled_softmax_loss", "nce_loss", "info_nce_loss"]


def _int_dtype() -> Any:
    return jax.dtypes.canonicalize_dtype(np.int64)


_FLOATS = (jnp.float32, jnp.float64, jnp.float16, jnp.bfloat16)
_BACKENDS = ("auto", "callback", "jax")
#: ``backend="auto"`` on the CPU takes the callback path for float32/float64 calls whose work (multiply-adds
#: of the logits, ``B * (S + num_true) * d`` or ``B * (B + N) * d``) reaches this; measured in BENCHMARKS.md.
AUTO_CALLBACK_MIN_WORK = 1 << 25


def _float_dtype(x: Any, name: str) -> Any:
    dt = jnp.result_type(x)
    if dt not in _FLOATS:
        raise TypeError(f"{name}: expected a float32, float64, float16 or bfloat16 array, got dtype {dt}")
    return dt


def _same_float(x: Any, name: str, dt: Any, of: str) -> Any:
    """``x`` as an array of ``dt``: converted when it has no dtype of its own (a list, a Python float),
    else it must already be ``dt`` (``TypeError`` naming ``name``)."""
    if not hasattr(x, "dtype"):
        return jnp.asarray(x, dtype=dt)
    a = jnp.asarray(x)
    _float_dtype(a, name)
    if a.dtype != dt:
        raise TypeError(f"{name}: has dtype {a.dtype} but {of} has {dt} (mixed dtypes in one call)")
    return a


def _compute_dtype(dt: Any) -> Any:
    """The float type the JAX path computes in: float32 for the half types."""
    return dt if dt in (jnp.float32, jnp.float64) else jnp.float32


def _is_tracer(a: Any) -> bool:
    return isinstance(a, jax.core.Tracer)


def _platform(arrays: Tuple[Any, ...]) -> str:
    """The platform of the call: that of its first concrete JAX array, else JAX's default backend."""
    for a in arrays:
        if isinstance(a, jax.Array) and not _is_tracer(a):
            try:
                return next(iter(a.devices())).platform
            except Exception:  # pragma: no cover - a sharded or deleted array
                break
    return jax.default_backend()


def _backend(backend: Any, dt: Any, arrays: Tuple[Any, ...], work: int) -> str:
    """The path of one call: ``"callback"`` or ``"jax"``."""
    if not isinstance(backend, str) or backend not in _BACKENDS:
        raise ValueError(f"backend: expected 'auto', 'callback' or 'jax', got {backend!r}")
    half = dt not in (jnp.float32, jnp.float64)
    if backend == "callback":
        if half:
            raise TypeError(
                f"backend: 'callback' computes in float32 or float64, got {dt} arrays (use backend='jax')"
            )
        return "callback"
    if backend == "jax" or half or _platform(arrays) != "cpu":
        return "jax"
    return "callback" if work >= AUTO_CALLBACK_MIN_WORK else "jax"


def _precision(dt: Any) -> Any:
    # float32/float64 inputs: full-precision products (no TF32/bf16 passes on GPU/TPU), as the native path.
    return jax.lax.Precision.HIGHEST if dt in (jnp.float32, jnp.float64) else None


def _check_ids(a: Any, name: str, v: int) -> None:
    """Concrete ids must index the table (JAX would clamp them silently)."""
    if _is_tracer(a):
        return
    h = np.asarray(a)
    if h.size == 0 or h.dtype.kind not in "iu":
        return
    lo, hi = int(h.min()), int(h.max())
    if lo < 0 or hi >= v:
        raise ValueError(f"{name}: class id {lo if lo < 0 else hi} is outside the {v} rows of weights")


def _rows_of(table: Any, ids: Any, ct: Any) -> Any:
    """``table[ids]`` in the compute type ``ct``; an id outside the table reads NaN (only possible under
    ``jit``, where concrete checks cannot run). For a float32/float64 table this is JAX's own gather (any
    mode of differentiation); for a half-precision one the gradient sums the cotangents of each distinct id
    in ``ct`` and rounds once to the table's dtype, rather than accumulating in half (reverse mode only)."""
    if table.dtype == ct:
        return table.at[ids].get(mode="fill", fill_value=jnp.nan)
    return _gather((np.dtype(ct), tuple(table.shape), np.dtype(table.dtype)), table, ids)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gather(static, table, ids):
    return table.at[ids].get(mode="fill", fill_value=jnp.nan).astype(static[0])


def _gather_fwd(static, table, ids):
    return _gather(static, table, ids), ids


def _gather_bwd(static, ids, g):
    _, shape, dt = static
    flat = ids.reshape(-1)
    uniq, inv = jnp.unique(flat, return_inverse=True, size=flat.shape[0], fill_value=flat[0])
    sums = jax.ops.segment_sum(g.reshape((flat.shape[0],) + shape[1:]), inv.reshape(-1), flat.shape[0])
    # Padding slots of ``uniq`` repeat a real id with a zero sum; ids outside the table are dropped.
    return jnp.zeros(shape, dt).at[uniq].add(sums.astype(dt), mode="drop"), None


_gather.defvjp(_gather_fwd, _gather_bwd)


def _pow(q: Any, g: float) -> Any:
    """``q ** g`` for ``q >= 0``, with a zero (not NaN) gradient at ``q = 0``."""
    pos = q > 0
    return jnp.where(pos, jnp.where(pos, q, 1.0) ** g, 0.0)


def _callback(f: Any, out: Any, *args: Any) -> Any:
    return jax.pure_callback(f, out, *args, vmap_method="sequential")


def _const_cotangent(g: Any) -> Any:
    return jnp.all(g == g[0])


# ------------------------------------------------------------------------------------------------------------
# Sampled softmax / NCE


class _Static(NamedTuple):
    """The static (non-differentiated, hashable) argument of the sampled custom_vjp."""

    options: _losses.SampledOptions
    has_te: bool  # the caller gave true_expected_count (else ones stand in for it)
    rows: int  # rows of the whole weights table (the ids are checked against it)


def _np_args(static: _Static, w, b, x, lab, ids, te, se) -> _losses.SampledArgs:
    """The host arrays of one call, checked against the call's options."""
    sv = (np.asarray(ids), np.asarray(te) if static.has_te else None, np.asarray(se))
    b = None if b is None else np.asarray(b)
    return static.options.bind(np.asarray(w), b, np.asarray(lab), np.asarray(x), sv)


def _table_grads(r: Any, n_rows: int, has_bias: bool, dt: Any) -> Tuple[np.ndarray, ...]:
    """The sparse row gradients of ``r`` as dense gradients of the small ``[n_rows, d]`` table."""
    gw = r.grad_weights
    vals = np.zeros((n_rows,) + gw.values.shape[1:], dtype=dt)
    vals[gw.indices] = gw.values
    bvals = np.zeros(n_rows, dtype=dt)
    if has_bias:
        bvals[r.grad_biases.indices] = r.grad_biases.values
    return np.asarray(r.grad_inputs, dtype=dt), vals, bvals


def _grad_shapes(w, x):
    return (
        jax.ShapeDtypeStruct(x.shape, w.dtype),
        jax.ShapeDtypeStruct(w.shape, w.dtype),
        jax.ShapeDtypeStruct((w.shape[0],), w.dtype),
    )


# The core works on the rows of the table the call uses, gathered in JAX (``w[rows]``): the host callback
# then moves O((B + S) * d) bytes instead of the whole [V, d] table, and JAX differentiates the gather itself.


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sampled_core(static, w, b, x, lab, ids, te, se, rows):
    def host(w, b, x, lab, ids, te, se, rows):
        _check_rows(static, rows)
        return np.asarray(_np_args(static, w, b, x, lab, ids, te, se).loss(), dtype=w.dtype)

    return _callback(host, jax.ShapeDtypeStruct((x.shape[0],), w.dtype), w, b, x, lab, ids, te, se, rows)


def _check_rows(static: _Static, rows: np.ndarray) -> None:
    # JAX clamps out-of-range gathers; the ids are checked here, where an error can be raised.
    v = static.rows
    lo, hi = int(rows.min()), int(rows.max())
    if lo < 0 or hi >= v:
        raise ValueError(f"labels / sampled_values: class id {lo if lo < 0 else hi} is outside [0, {v})")


def _sampled_fwd(static, w, b, x, lab, ids, te, se, rows):
    has_bias = b is not None

    def host(w, b, x, lab, ids, te, se, rows):
        _check_rows(static, rows)
        r = _np_args(static, w, b, x, lab, ids, te, se).loss_and_grad()
        return (np.asarray(r.loss, dtype=w.dtype),) + _table_grads(r, w.shape[0], has_bias, w.dtype)

    out = _callback(
        host,
        (jax.ShapeDtypeStruct((x.shape[0],), w.dtype),) + _grad_shapes(w, x),
        w, b, x, lab, ids, te, se, rows,
    )  # fmt: skip
    return out[0], (w, b, x, lab, ids, te, se, out[1:])


def _sampled_bwd(static, res, g):
    w, b, x, lab, ids, te, se, grads1 = res
    has_bias = b is not None
    g = g.astype(w.dtype)

    def scaled(_):
        return tuple(a * g[0] for a in grads1)

    def recompute(_):
        def host(w, b, x, lab, ids, te, se, g):
            r = _np_args(static, w, b, x, lab, ids, te, se).loss_and_grad(g)
            return _table_grads(r, w.shape[0], has_bias, w.dtype)

        return _callback(host, _grad_shapes(w, x), w, b, x, lab, ids, te, se, g)

    gx, gw, gb = jax.lax.cond(_const_cotangent(g), scaled, recompute, None)
    return gw, (gb if has_bias else None), gx, None, None, None, None, None


_sampled_core.defvjp(_sampled_fwd, _sampled_bwd)


def _sampled(opts: _losses.SampledOptions, weights, biases, labels, inputs, sampled_values, backend):
    """The loss of one call whose options the public function has checked."""
    ns, nt = opts.num_sampled, opts.num_true
    w = jnp.asarray(weights)
    dt = _float_dtype(w, "weights")
    if w.ndim != 2:
        raise ValueError(f"weights: must be [num_classes, dim], got shape {w.shape}")
    b = None if biases is None else _same_float(biases, "biases", dt, "weights")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"biases: must have shape ({w.shape[0]},) like the rows of weights, got {b.shape}")
    x = _same_float(inputs, "inputs", dt, "weights")
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"inputs: must be [batch, {w.shape[1]}], got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("labels: the batch is empty")
    lab = jnp.asarray(labels)
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        raise TypeError(f"labels: expected integer class ids, got dtype {lab.dtype}")
    if lab.ndim == 1 and nt == 1:
        lab = lab.reshape(-1, 1)
    if lab.ndim != 2 or lab.shape != (x.shape[0], nt):
        raise ValueError(f"labels: must be [batch={x.shape[0]}, num_true={nt}], got shape {lab.shape}")
    path = _backend(backend, dt, (w, x, b, lab), x.shape[0] * (ns + nt) * w.shape[1])
    ity = _int_dtype()
    lab = lab.astype(ity)
    if sampled_values is None:
        opts.check_num_classes(w.shape[0])

        def draw(lab):
            ids, te, se = opts.draw(np.asarray(lab))
            return ids.astype(ity), te.astype(np.float32), se.astype(np.float32)

        if path == "jax" and not _is_tracer(lab):
            # Concrete labels: drawn here, on the host; the loss sees constants.
            ids, te, se = (jnp.asarray(a) for a in draw(lab))
        else:
            ids, te, se = _callback(
                draw,
                (
                    jax.ShapeDtypeStruct((ns,), ity),
                    jax.ShapeDtypeStruct(lab.shape, jnp.float32),
                    jax.ShapeDtypeStruct((ns,), jnp.float32),
                ),
                lab,
            )
    else:
        ids, te, se = _losses.split_sampled_values(sampled_values)
        ids = jnp.asarray(ids).astype(ity)
        te = None if te is None else jnp.asarray(te)
        se = jnp.asarray(se)
        if ids.ndim not in (1, 2) or ids.shape[-1] != ns or (ids.ndim == 2 and ids.shape[0] != x.shape[0]):
            raise ValueError(
                f"sampled_values: candidates must be [{ns}] or [batch={x.shape[0]}, {ns}], got shape {ids.shape}"
            )
        if se.shape != ids.shape:
            raise ValueError(
                f"sampled_values: sampled_expected_count has shape {se.shape}, the candidates {ids.shape}"
            )
        if te is not None and te.shape != lab.shape:
            if nt == 1 and te.shape == (x.shape[0],):
                te = te.reshape(lab.shape)
            else:
                raise ValueError(f"sampled_values: true_expected_count must be {lab.shape}, got {te.shape}")
    has_te = te is not None
    if not has_te:
        opts.check_no_true_expected()
        te = jnp.ones(lab.shape, _compute_dtype(dt))
    if path == "jax":
        # On the values as given (inside jit, any JAX operation on them is already traced).
        _check_ids(labels, "labels", w.shape[0])
        _check_ids(sampled_values[0] if sampled_values is not None else ids, "sampled_values", w.shape[0])
        return _sampled_jax(opts, w, b, x, lab, ids, te, se)
    static = _Static(opts, has_te, int(w.shape[0]))
    # The rows used: the sorted unique ids of labels and candidates, padded (static size) with the largest,
    # so that ``searchsorted`` maps every id to the position of its first copy.
    all_ids = jnp.concatenate([lab.ravel(), ids.ravel()])
    rows = jnp.unique(all_ids, size=all_ids.shape[0], fill_value=jnp.max(all_ids))
    lab_pos = jnp.searchsorted(rows, lab).astype(ity)
    ids_pos = jnp.searchsorted(rows, ids).astype(ity)
    w_rows = w[rows]
    b_rows = None if b is None else b[rows]
    return _sampled_core(static, w_rows, b_rows, x, lab_pos, ids_pos, te, se, rows)


def _sampled_jax(opts: _losses.SampledOptions, w, b, x, lab, ids, te, se):
    """The sampled softmax or NCE loss written with ``jax.numpy`` (``backend="jax"``): the definitions of
    ``zipfnce.sampled_softmax_loss`` / ``zipfnce.nce_loss``, differentiated by JAX. ``[B, T]`` true logits,
    ``[B, S]`` candidate logits (one product for shared candidates, a batched one for per-row candidates),
    the accidental-hit mask, then the row losses, in float32 for half-precision arrays."""
    ct, prec = _compute_dtype(w.dtype), _precision(w.dtype)
    nt, y, g = opts.num_true, 1.0 / opts.num_true, opts.focal_gamma
    xc = x.astype(ct)
    # One gather of the true and candidate rows, so that a class used both ways sums its gradient once.
    nl = lab.size
    every = jnp.concatenate([lab.reshape(-1), ids.reshape(-1)])
    rows = _rows_of(w, every, ct)
    wt, ws = rows[:nl].reshape(lab.shape + (-1,)), rows[nl:].reshape(ids.shape + (-1,))
    # z_t = x . w_t + b_t - log q_t
    zt = jnp.einsum("btd,bd->bt", wt, xc, precision=prec)
    # z_s = x . w_s + b_s - log q_s  ([S] shared by the batch, or [B, S] per row)
    if ids.ndim == 1:
        zs = jnp.matmul(xc, ws.T, precision=prec)
    else:
        zs = jnp.einsum("bsd,bd->bs", ws, xc, precision=prec)
    if b is not None:
        bias = _rows_of(b, every, ct)
        zt = zt + bias[:nl].reshape(lab.shape)
        zs = zs + bias[nl:].reshape(ids.shape)
    if opts.subtract_log_q:
        zt = zt - jnp.log(te.astype(ct))
        zs = zs - jnp.log(se.astype(ct))
    hit = None
    if opts.remove_accidental_hits:
        # A candidate equal to one of its row's true classes takes no part (probability exactly 0).
        cand = ids if ids.ndim == 2 else ids[None, :]
        hit = jnp.any(cand[:, :, None] == lab[:, None, :], axis=2)
    if not opts.nce:
        if hit is not None:
            zs = jnp.where(hit, -jnp.inf, zs)
        lse = jax.nn.logsumexp(jnp.concatenate([zt, zs], axis=1), axis=1, keepdims=True)
        lp = zt - lse  # log p_t
        if g == 0:
            return -y * jnp.sum(lp, axis=1)  # sum_t y (lse - z_t)
        return -y * jnp.sum(_pow(-jnp.expm1(lp), g) * lp, axis=1)  # -sum_t y (1 - p_t)^g log p_t
    # NCE: sigmoid cross-entropy, label y on the true columns, 0 on the candidates.
    if g == 0:
        lt = jax.nn.softplus(zt) - zt * y  # max(z, 0) - z y + log(1 + e^-|z|)
        lc = jax.nn.softplus(zs)
    else:
        # -[y (1 - s)^g log s + (1 - y) s^g log(1 - s)], s = sigmoid(z), log s = -softplus(-z).
        ls, l1s = -jax.nn.softplus(-zt), -jax.nn.softplus(zt)
        lt = -(y * jnp.exp(g * l1s) * ls + (1.0 - y) * jnp.exp(g * ls) * l1s)
        lc = jnp.exp(-g * jax.nn.softplus(-zs)) * jax.nn.softplus(zs)
    if hit is not None:
        lc = jnp.where(hit, 0.0, lc)
    del nt
    return jnp.sum(lt, axis=1) + jnp.sum(lc, axis=1)


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
    backend: str = "auto",
) -> Any:
    """``zipfnce.sampled_softmax_loss`` on JAX arrays: ``[B]``, differentiable in ``weights``, ``biases`` and
    ``inputs``. ``sampled_values=None`` draws the candidates on the host (reproducibly with ``seed``).

    For row ``b``, ``z_t = x_b . w_t + bias_t - log q_t`` on its true classes and ``z_s`` likewise on the
    candidates (accidental hits masked), ``loss_b = -sum_t (1/num_true) (1 - p_t)^focal_gamma log p_t`` with
    ``p = softmax(z)``. ``backend``: ``"auto"``, ``"callback"`` (native kernels on the host) or ``"jax"``
    (``jax.numpy``, any device, float16/bfloat16 too); see the module docstring."""
    opts = _losses.options(
        False, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
    )
    return _sampled(opts, weights, biases, labels, inputs, sampled_values, backend)


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
    backend: str = "auto",
) -> Any:
    """``zipfnce.nce_loss`` on JAX arrays: ``[B]``, differentiable in ``weights``, ``biases`` and
    ``inputs``: ``loss_b = sum_j [softplus(z_j) - y_j z_j]`` over the row's true (``y = 1/num_true``) and
    candidate (``y = 0``) logits, focal as ``zipfnce.nce_loss``. ``backend`` as
    :func:`sampled_softmax_loss`."""
    opts = _losses.options(
        True, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
    )
    return _sampled(opts, weights, biases, labels, inputs, sampled_values, backend)


# ------------------------------------------------------------------------------------------------------------
# InfoNCE


class _InfoStatic(NamedTuple):
    """The static (non-differentiated, hashable) argument of the InfoNCE custom_vjp."""

    options: _infonce.InfoNCEOptions
    has_neg: bool
    has_kq: bool
    has_nq: bool
    has_kid: bool
    has_nid: bool


def _info_args(static: _InfoStatic, q, k, n, kq, nq, kid, nid) -> _infonce.InfoNCEArgs:
    """The host arrays of one call, checked against the call's options."""
    return static.options.bind(
        np.asarray(q),
        np.asarray(k),
        np.asarray(n) if static.has_neg else None,
        np.asarray(kq) if static.has_kq else None,
        np.asarray(nq) if static.has_nq else None,
        np.asarray(kid) if static.has_kid else None,
        np.asarray(nid) if static.has_nid else None,
    )


def _info_shapes(q, n):
    shapes = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(q.shape, q.dtype))
    if n is not None:
        shapes += (jax.ShapeDtypeStruct(n.shape, q.dtype),)
    return shapes


def _info_grads(r: Any, dt: Any, has_neg: bool) -> Tuple[np.ndarray, ...]:
    out = (np.asarray(r.grad_query, dtype=dt), np.asarray(r.grad_keys, dtype=dt))
    if has_neg:
        out += (np.asarray(r.grad_negatives, dtype=dt),)
    return out


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _info_core(static, q, k, n, kq, nq, kid, nid):
    def host(q, k, n, kq, nq, kid, nid):
        return np.asarray(_info_args(static, q, k, n, kq, nq, kid, nid).loss(), dtype=q.dtype)

    return _callback(host, jax.ShapeDtypeStruct((q.shape[0],), q.dtype), q, k, n, kq, nq, kid, nid)


def _info_fwd(static, q, k, n, kq, nq, kid, nid):
    def host(q, k, n, kq, nq, kid, nid):
        r = _info_args(static, q, k, n, kq, nq, kid, nid).loss_and_grad()
        return (np.asarray(r.loss, dtype=q.dtype),) + _info_grads(r, q.dtype, n is not None)

    out = _callback(
        host, (jax.ShapeDtypeStruct((q.shape[0],), q.dtype),) + _info_shapes(q, n), q, k, n, kq, nq, kid, nid
    )
    return out[0], (q, k, n, kq, nq, kid, nid, out[1:])


def _info_bwd(static, res, g):
    q, k, n, kq, nq, kid, nid, grads1 = res
    g = g.astype(q.dtype)

    def scaled(_):
        return tuple(a * g[0] for a in grads1)

    def recompute(_):
        def host(q, k, n, kq, nq, kid, nid, g):
            r = _info_args(static, q, k, n, kq, nq, kid, nid).loss_and_grad(np.asarray(g))
            return _info_grads(r, q.dtype, n is not None)

        return _callback(host, _info_shapes(q, n), q, k, n, kq, nq, kid, nid, g)

    grads = jax.lax.cond(_const_cotangent(g), scaled, recompute, None)
    gn = grads[2] if n is not None else None
    # The log-q corrections are constants: zero cotangents.
    zq = lambda a: None if a is None else jnp.zeros_like(a)  # noqa: E731
    return grads[0], grads[1], gn, zq(kq), zq(nq), None, None


_info_core.defvjp(_info_fwd, _info_bwd)


def _info_jax(opts: _infonce.InfoNCEOptions, q, k, n, kq, nq, kid, nid):
    """InfoNCE written with ``jax.numpy`` (``backend="jax"``): the ``B x (B + N)`` logits, the id masks, the
    row (and with ``symmetric`` the column) log-softmax of the positives, in float32 for half precision."""
    ct, prec = _compute_dtype(q.dtype), _precision(q.dtype)
    t, g = opts.temperature, opts.focal_gamma
    qc = q.astype(ct)
    zk = jnp.matmul(qc, k.astype(ct).T, precision=prec) / t  # [B, B]
    if kq is not None:
        zk = zk - kq[None, :]
    bsz = q.shape[0]
    if kid is not None:
        # Key j != i with the id of row i's key: an accidental hit, probability exactly 0 (both directions).
        same = (kid[None, :] == kid[:, None]) & ~jnp.eye(bsz, dtype=bool)
        zk = jnp.where(same, -jnp.inf, zk)
    blocks = [zk]
    if n is not None:
        zn = jnp.matmul(qc, n.astype(ct).T, precision=prec) / t  # [B, N]
        if nq is not None:
            zn = zn - nq[None, :]
        if nid is not None:
            zn = jnp.where(nid[None, :] == kid[:, None], -jnp.inf, zn)
        blocks.append(zn)
    pos = jnp.diagonal(zk)

    def f(lp):  # -(1 - p)^g log p of the positive's log-probability
        return -lp if g == 0 else -_pow(-jnp.expm1(lp), g) * lp

    z = blocks[0] if n is None else jnp.concatenate(blocks, axis=1)
    loss = f(pos - jax.nn.logsumexp(z, axis=1))
    if opts.symmetric:
        # Key i against every query (column i of the key block; the extra negatives take no part).
        loss = 0.5 * (loss + f(pos - jax.nn.logsumexp(zk, axis=0)))
    return loss


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
    backend: str = "auto",
) -> Any:
    """``zipfnce.info_nce_loss`` on JAX arrays: ``[B]``, differentiable in ``query``, ``keys`` and
    ``negatives`` (the log-q corrections and ids are constants).

    ``z[i, j] = query[i] . keys[j] / temperature - key_log_q[j]`` (and likewise over ``negatives``), masked
    where ``key_ids``/``negative_ids`` repeat row ``i``'s key id, ``loss[i] = -(1 - p_ii)^focal_gamma log p_ii``
    (averaged with the key-to-query direction when ``symmetric``). ``backend``: ``"auto"``, ``"callback"`` or
    ``"jax"`` as for :func:`sampled_softmax_loss`; ``num_hard_negatives`` runs in the native kernel only."""
    q = jnp.asarray(query)
    dt = _float_dtype(q, "query")
    if q.ndim != 2:
        raise ValueError(f"query: must be two-dimensional [rows, dim], got shape {q.shape}")
    k = _same_float(keys, "keys", dt, "query")
    if k.shape != q.shape:
        raise ValueError(f"keys: must have the shape of query {q.shape}, got {k.shape}")
    n = None
    if negatives is not None:
        n = _same_float(negatives, "negatives", dt, "query")
        if n.ndim != 2 or n.shape[1] != q.shape[1]:
            raise ValueError(f"negatives: must be [N, {q.shape[1]}], got shape {n.shape}")
    opts = _infonce.options(temperature, symmetric, focal_gamma, max_logits_bytes, num_hard_negatives)
    nn = 0 if n is None else n.shape[0]
    path = _backend(backend, dt, (q, k, n), q.shape[0] * (q.shape[0] + nn) * q.shape[1])
    if opts.num_hard_negatives is not None and path == "jax":
        if backend == "jax":
            raise ValueError(
                "num_hard_negatives: runs in the native kernel only; use backend='callback' or 'auto'"
            )
        path = "callback"  # hard-negative mining lives in the native kernel
    ity = _int_dtype()
    ct = dt if path == "callback" else _compute_dtype(dt)
    kq = None if key_log_q is None else jnp.asarray(key_log_q, dtype=ct)
    nq = None if negative_log_q is None else jnp.asarray(negative_log_q, dtype=ct)
    kid = None if key_ids is None else jnp.asarray(key_ids)
    nid = None if negative_ids is None else jnp.asarray(negative_ids)
    for name, a in (("key_ids", kid), ("negative_ids", nid)):
        if a is not None and not jnp.issubdtype(a.dtype, jnp.integer):
            raise TypeError(f"{name}: expected integer ids, got dtype {a.dtype}")
    kid = None if kid is None else kid.astype(ity)
    nid = None if nid is None else nid.astype(ity)
    for name, a in (("negative_log_q", nq), ("negative_ids", nid)):
        if a is not None and n is None:
            raise ValueError(f"{name}: given without negatives")
    if nid is not None and kid is None:
        raise ValueError(
            "negative_ids: needs key_ids (a negative is masked where its id equals the row's key id)"
        )
    for name, a, m in (("key_log_q", kq, q.shape[0]), ("key_ids", kid, q.shape[0]),
                       ("negative_log_q", nq, nn), ("negative_ids", nid, nn)):  # fmt: skip
        if a is not None and a.shape != (m,):
            raise ValueError(f"{name}: must have shape ({m},), got {a.shape}")
    _infonce.check_hard(opts, q.shape[0], 0 if n is None else n.shape[0])
    if path == "jax":
        return _info_jax(opts, q, k, n, kq, nq, kid, nid)
    has = (n is not None, kq is not None, nq is not None, kid is not None, nid is not None)
    static = _InfoStatic(opts, *has)
    return _info_core(static, q, k, n, kq, nq, kid, nid)


# ------------------------------------------------------------------------------------------------------------
# Full softmax (issue 16; this block is maintained with python/zipfnce/_full.py)

from zipfnce import _full  # noqa: E402

__all__ += ["full_softmax_loss"]


class _FullStatic(NamedTuple):
    """The static (non-differentiated, hashable) argument of the full-softmax custom_vjp."""

    has_bias: bool
    ignore_index: Optional[int]
    label_smoothing: float
    max_logits_bytes: Optional[int]


def _full_args(static: _FullStatic, w, b, lab, x) -> _full.FullArgs:
    return _full.prepare(
        np.asarray(w), np.asarray(b) if static.has_bias else None, np.asarray(lab), np.asarray(x),
        static.ignore_index, static.label_smoothing, static.max_logits_bytes,
    )  # fmt: skip


def _full_shapes(w, b, x):
    out = (jax.ShapeDtypeStruct(w.shape, w.dtype),)
    if b is not None:
        out += (jax.ShapeDtypeStruct(b.shape, w.dtype),)
    return out + (jax.ShapeDtypeStruct(x.shape, w.dtype),)


def _full_grads(r: Any, dt: Any, has_bias: bool) -> Tuple[np.ndarray, ...]:
    out = (np.asarray(r.grad_weights, dtype=dt),)
    if has_bias:
        out += (np.asarray(r.grad_biases, dtype=dt),)
    return out + (np.asarray(r.grad_inputs, dtype=dt),)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _full_core(static, w, b, lab, x):
    def host(w, b, lab, x):
        return np.asarray(_full_args(static, w, b, lab, x).loss(), dtype=w.dtype)

    return _callback(host, jax.ShapeDtypeStruct((x.shape[0],), w.dtype), w, b, lab, x)


def _full_fwd(static, w, b, lab, x):
    def host(w, b, lab, x):
        r = _full_args(static, w, b, lab, x).loss_and_grad()
        return (np.asarray(r.loss, dtype=w.dtype),) + _full_grads(r, w.dtype, b is not None)

    shapes = (jax.ShapeDtypeStruct((x.shape[0],), w.dtype),) + _full_shapes(w, b, x)
    out = _callback(host, shapes, w, b, lab, x)
    return out[0], (w, b, lab, x, out[1:])


def _full_bwd(static, res, g):
    w, b, lab, x, grads1 = res
    g = g.astype(w.dtype)

    def scaled(_):
        return tuple(a * g[0] for a in grads1)

    def recompute(_):
        def host(w, b, lab, x, g):
            r = _full_args(static, w, b, lab, x).loss_and_grad(np.asarray(g))
            return _full_grads(r, w.dtype, b is not None)

        return _callback(host, _full_shapes(w, b, x), w, b, lab, x, g)

    grads = jax.lax.cond(_const_cotangent(g), scaled, recompute, None)
    gb = grads[1] if b is not None else None
    return grads[0], gb, None, grads[-1]


_full_core.defvjp(_full_fwd, _full_bwd)


def full_softmax_loss(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    *,
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    max_logits_bytes: Optional[int] = None,
) -> Any:
    """``zipfnce.full_softmax_loss`` on JAX arrays: the exact softmax cross-entropy of each row over all
    classes, ``[B]``, differentiable in ``weights``, ``biases`` and ``inputs`` (``labels`` are constants).
    The whole ``weights`` table goes to the host (the loss reads every class) and its gradient is dense."""
    w = jnp.asarray(weights)
    dt = _float_dtype(w, "weights")
    if w.ndim != 2:
        raise ValueError(f"weights: must be [num_classes, dim], got shape {w.shape}")
    x = jnp.asarray(inputs)
    _float_dtype(x, "inputs")
    x = x.astype(dt)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"inputs: must be [B, {w.shape[1]}], got shape {x.shape}")
    b = None
    if biases is not None:
        b = jnp.asarray(biases)
        _float_dtype(b, "biases")
        b = b.astype(dt)
        if b.shape != (w.shape[0],):
            raise ValueError(f"biases: must have shape ({w.shape[0]},), got {b.shape}")
    lab = jnp.asarray(labels)
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        raise TypeError(f"labels: expected integer class ids, got dtype {lab.dtype}")
    if lab.ndim == 1:
        lab = lab[:, None]
    if lab.ndim != 2 or lab.shape[0] != x.shape[0] or lab.shape[1] == 0:
        raise ValueError(f"labels: must be [{x.shape[0]}] or [{x.shape[0]}, num_true], got shape {lab.shape}")
    lab = lab.astype(_int_dtype())
    # The options checked once, eagerly (the same checks as the NumPy API).
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing: must be in [0, 1], got {label_smoothing!r}")
    ig = None if ignore_index is None else int(ignore_index)
    budget = None if max_logits_bytes is None else int(max_logits_bytes)
    return _full_core(_FullStatic(b is not None, ig, eps, budget), w, b, lab, x)


# End of the full softmax block.
