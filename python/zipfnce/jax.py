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


def _float_dtype(x: Any, name: str) -> Any:
    dt = jnp.result_type(x)
    if dt not in (jnp.float32, jnp.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {dt}")
    return dt


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


def _sampled(opts: _losses.SampledOptions, weights, biases, labels, inputs, sampled_values):
    """The loss of one call whose options the public function has checked."""
    ns, nt = opts.num_sampled, opts.num_true
    w = jnp.asarray(weights)
    dt = _float_dtype(w, "weights")
    if w.ndim != 2:
        raise ValueError(f"weights: must be [num_classes, dim], got shape {w.shape}")
    b = None if biases is None else jnp.asarray(biases, dtype=dt)
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"biases: must have shape ({w.shape[0]},) like the rows of weights, got {b.shape}")
    x = jnp.asarray(inputs)
    _float_dtype(x, "inputs")
    x = x.astype(dt)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"inputs: must be [batch, {w.shape[1]}], got shape {x.shape}")
    lab = jnp.asarray(labels)
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        raise TypeError(f"labels: expected integer class ids, got dtype {lab.dtype}")
    if lab.ndim == 1 and nt == 1:
        lab = lab.reshape(-1, 1)
    if lab.ndim != 2 or lab.shape != (x.shape[0], nt):
        raise ValueError(f"labels: must be [batch={x.shape[0]}, num_true={nt}], got shape {lab.shape}")
    ity = _int_dtype()
    lab = lab.astype(ity)
    if sampled_values is None:
        opts.check_num_classes(w.shape[0])

        def draw(lab):
            ids, te, se = opts.draw(np.asarray(lab))
            return ids.astype(ity), te.astype(np.float32), se.astype(np.float32)

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
        if ids.ndim not in (1, 2) or ids.shape[-1] != ns:
            raise ValueError(
                f"sampled_values: candidates must be [{ns}] or [batch, {ns}], got shape {ids.shape}"
            )
        if se.shape != ids.shape:
            raise ValueError(
                f"sampled_values: sampled_expected_count has shape {se.shape}, the candidates {ids.shape}"
            )
    has_te = te is not None
    if not has_te:
        opts.check_no_true_expected()
        te = jnp.ones(lab.shape, dt)
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
) -> Any:
    """``zipfnce.sampled_softmax_loss`` on JAX arrays: ``[B]``, differentiable in ``weights``, ``biases`` and
    ``inputs``. ``sampled_values=None`` draws the candidates on the host (reproducibly with ``seed``)."""
    opts = _losses.options(
        False, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
    )
    return _sampled(opts, weights, biases, labels, inputs, sampled_values)


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
) -> Any:
    """``zipfnce.nce_loss`` on JAX arrays: ``[B]``, differentiable in ``weights``, ``biases`` and
    ``inputs``."""
    opts = _losses.options(
        True, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
    )
    return _sampled(opts, weights, biases, labels, inputs, sampled_values)


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
) -> Any:
    """``zipfnce.info_nce_loss`` on JAX arrays: ``[B]``, differentiable in ``query``, ``keys`` and
    ``negatives`` (the log-q corrections and ids are constants)."""
    q = jnp.asarray(query)
    dt = _float_dtype(q, "query")
    if q.ndim != 2:
        raise ValueError(f"query: must be two-dimensional [rows, dim], got shape {q.shape}")
    k = jnp.asarray(keys)
    _float_dtype(k, "keys")
    k = k.astype(dt)
    if k.shape != q.shape:
        raise ValueError(f"keys: must have the shape of query {q.shape}, got {k.shape}")
    n = None
    if negatives is not None:
        n = jnp.asarray(negatives)
        _float_dtype(n, "negatives")
        n = n.astype(dt)
        if n.ndim != 2 or n.shape[1] != q.shape[1]:
            raise ValueError(f"negatives: must be [N, {q.shape[1]}], got shape {n.shape}")
    opts = _infonce.options(temperature, symmetric, focal_gamma, max_logits_bytes, num_hard_negatives)
    ity = _int_dtype()
    kq = None if key_log_q is None else jnp.asarray(key_log_q, dtype=dt)
    nq = None if negative_log_q is None else jnp.asarray(negative_log_q, dtype=dt)
    kid = None if key_ids is None else jnp.asarray(key_ids).astype(ity)
    nid = None if negative_ids is None else jnp.asarray(negative_ids).astype(ity)
    for name, a, m in (("key_log_q", kq, q.shape[0]), ("key_ids", kid, q.shape[0]),
                       ("negative_log_q", nq, 0 if n is None else n.shape[0]),
                       ("negative_ids", nid, 0 if n is None else n.shape[0])):  # fmt: skip
        if a is not None and a.shape != (m,):
            raise ValueError(f"{name}: must have shape ({m},), got {a.shape}")
    _infonce.check_hard(opts, q.shape[0], 0 if n is None else n.shape[0])
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
