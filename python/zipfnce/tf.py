"""TensorFlow adapter: drop-ins for ``tf.nn.sampled_softmax_loss``, ``tf.nn.nce_loss`` and the candidate
samplers of ``tf.random``, plus ``info_nce_loss``, all on tensors.

``import zipfnce.tf as zntf``. Importing this module imports tensorflow; ``import zipfnce`` alone never does.

The losses work eagerly, inside ``tf.function`` and under ``tf.GradientTape``: each is a
``tf.custom_gradient`` whose passes call the NumPy API through ``tf.numpy_function``. For the sampled
losses, when a gradient tape records the call, the forward pass makes one fused native call (loss and the
gradients of ``loss.sum()``) and the backward pass scales them if the upstream gradient is the same for
every row (``reduce_mean``, ``reduce_sum``), else calls the native code again with the upstream gradient as
row weights. Without a tape only the loss is computed. (``info_nce_loss``, whose arrays are small, computes the loss forward and its
gradients backward.) The weight and bias gradients are ``tf.IndexedSlices`` over the rows used (as
``tf.nn.*`` gives through its embedding lookups), so no ``[V, d]`` array is ever built. Because the ops run
in Python, a graph using them cannot be serialised (SavedModel) or placed on another device.

Seeds: ``seed=None`` draws fresh candidates on every run; an int ``seed`` makes a call stateless (the same
candidates for the same arguments on every run), unlike TensorFlow's op seeds which start a stream.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import tensorflow as tf

import zipfnce as _zn
from zipfnce import _infonce, _losses
from zipfnce._validate import as_int

__all__ = [
    "sampled_softmax_loss",
    "nce_loss",
    "info_nce_loss",
    "log_uniform_candidate_sampler",
    "uniform_candidate_sampler",
    "fixed_unigram_candidate_sampler",
    "all_candidate_sampler",
    "compute_accidental_hits",
]


# ------------------------------------------------------------------------------------------------------------
# Samplers


def _np(x: Any) -> Any:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _run(fn: Any, inputs: list, touts: list, shapes: list, name: Optional[str]) -> Tuple[Any, ...]:
    """``fn`` on NumPy values of ``inputs``: directly when eager, through ``tf.numpy_function`` in a graph."""
    if tf.executing_eagerly():
        out = fn(*[_np(i) for i in inputs])
        return tuple(tf.convert_to_tensor(np.asarray(o), dtype=t) for o, t in zip(out, touts))
    out = tf.numpy_function(lambda *a: tuple(np.asarray(o, dtype=t.as_numpy_dtype) for o, t in zip(fn(*a), touts)),
                            inputs, touts, stateful=True, name=name)  # fmt: skip
    for o, s in zip(out, shapes):
        o.set_shape(s)
    return tuple(out)


def _true_classes(tc: Any) -> tf.Tensor:
    t = tf.convert_to_tensor(tc)
    if not t.dtype.is_integer:
        raise TypeError(f"true_classes: expected integer class ids, got {t.dtype.name}")
    return tf.cast(t, tf.int64)


def _sampler_shapes(tc: tf.Tensor, num_true: int, num_sampled: int) -> list:
    return [
        tf.TensorShape([num_sampled]),
        tf.TensorShape([tc.shape[0], num_true]),
        tf.TensorShape([num_sampled]),
    ]


_SAMPLER_TOUT = [tf.int64, tf.float32, tf.float32]


def log_uniform_candidate_sampler(
    true_classes: Any, num_true: int, num_sampled: int, unique: bool, range_max: int, seed: Optional[int] = None,
    name: Optional[str] = None,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:  # fmt: skip
    """``tf.random.log_uniform_candidate_sampler`` returning tensors (``zipfnce.log_uniform_candidate_sampler``)."""
    tc = _true_classes(true_classes)
    nt, ns = as_int(num_true, "num_true", lo=1), as_int(num_sampled, "num_sampled", lo=1)
    f = lambda t: _zn.log_uniform_candidate_sampler(t, nt, ns, unique, range_max, seed=seed)  # noqa: E731
    return _run(f, [tc], _SAMPLER_TOUT, _sampler_shapes(tc, nt, ns), name)


def uniform_candidate_sampler(
    true_classes: Any, num_true: int, num_sampled: int, unique: bool, range_max: int, seed: Optional[int] = None,
    name: Optional[str] = None,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:  # fmt: skip
    """``tf.random.uniform_candidate_sampler`` returning tensors."""
    tc = _true_classes(true_classes)
    nt, ns = as_int(num_true, "num_true", lo=1), as_int(num_sampled, "num_sampled", lo=1)
    f = lambda t: _zn.uniform_candidate_sampler(t, nt, ns, unique, range_max, seed=seed)  # noqa: E731
    return _run(f, [tc], _SAMPLER_TOUT, _sampler_shapes(tc, nt, ns), name)


def fixed_unigram_candidate_sampler(
    true_classes: Any, num_true: int, num_sampled: int, unique: bool, range_max: int, vocab_file: str = "",
    distortion: float = 1.0, num_reserved_ids: int = 0, num_shards: int = 1, shard: int = 0,
    unigrams: Any = (), seed: Optional[int] = None, name: Optional[str] = None,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:  # fmt: skip
    """``tf.random.fixed_unigram_candidate_sampler`` returning tensors. The unigram table is built on every
    call; to sample repeatedly from a large table keep a ``zipfnce.UnigramSampler``."""
    tc = _true_classes(true_classes)
    nt, ns = as_int(num_true, "num_true", lo=1), as_int(num_sampled, "num_sampled", lo=1)
    u = list(_np(unigrams)) if not isinstance(unigrams, (list, tuple)) else unigrams

    def f(t: np.ndarray) -> Any:
        return _zn.fixed_unigram_candidate_sampler(
            t, nt, ns, unique, range_max, vocab_file=vocab_file, distortion=distortion,
            num_reserved_ids=num_reserved_ids, num_shards=num_shards, shard=shard, unigrams=u, seed=seed,
        )  # fmt: skip

    return _run(f, [tc], _SAMPLER_TOUT, _sampler_shapes(tc, nt, ns), name)


def all_candidate_sampler(
    true_classes: Any, num_true: int, num_sampled: int, unique: bool, seed: Optional[int] = None,
    name: Optional[str] = None,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:  # fmt: skip
    """``tf.random.all_candidate_sampler`` returning tensors."""
    tc = _true_classes(true_classes)
    nt, ns = as_int(num_true, "num_true", lo=1), as_int(num_sampled, "num_sampled", lo=1)
    f = lambda t: _zn.all_candidate_sampler(t, nt, ns, unique, seed=seed)  # noqa: E731
    return _run(f, [tc], _SAMPLER_TOUT, _sampler_shapes(tc, nt, ns), name)


def compute_accidental_hits(
    true_classes: Any,
    sampled_candidates: Any,
    num_true: int,
    seed: Optional[int] = None,
    name: Optional[str] = None,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``tf.nn.compute_accidental_hits`` returning tensors ``(indices int32, ids int64, weights float32)``."""
    tc = _true_classes(true_classes)
    sc = tf.cast(tf.convert_to_tensor(sampled_candidates), tf.int64)
    nt = as_int(num_true, "num_true", lo=1)
    f = lambda t, s: _zn.compute_accidental_hits(t, s, nt, seed=seed)  # noqa: E731
    shapes = [tf.TensorShape([None])] * 3
    return _run(f, [tc, sc], [tf.int32, tf.int64, tf.float32], shapes, name)


# ------------------------------------------------------------------------------------------------------------
# Sampled softmax / NCE


def _recording(tensors: list) -> bool:
    """Whether a gradient tape records operations on ``tensors`` (then the forward pass makes the fused call).
    Uses TensorFlow's internal ``record`` module; without it every call takes the unfused path."""
    try:
        from tensorflow.python.eager import record

        return bool(record.should_record_backprop(tensors))
    except Exception:  # pragma: no cover - internal API moved
        return False


def _float_tensor(x: Any, name: str, dtype: Optional[tf.DType] = None) -> tf.Tensor:
    # Only dtype-less values (lists, Python floats) get the hint: an integer array must not become floats.
    t = (
        tf.convert_to_tensor(x)
        if hasattr(x, "dtype")
        else tf.convert_to_tensor(x, dtype_hint=dtype or tf.float32)
    )
    if t.dtype not in (tf.float32, tf.float64) and not (dtype is not None and t.dtype.is_floating):
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {t.dtype.name}")
    return t if dtype is None else tf.cast(t, dtype)


def _sampled(
    opts: _losses.SampledOptions,
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    sampled_values: Any,
    name: str,
) -> tf.Tensor:
    """The loss of one call whose options the public function has checked."""
    ns, nt = opts.num_sampled, opts.num_true
    with tf.name_scope(name):
        if isinstance(weights, (list, tuple)):
            # TensorFlow's sharded weights: joined into one table (a copy when there is more than one shard).
            weights = weights[0] if len(weights) == 1 else tf.concat(list(weights), 0)
        w = _float_tensor(weights, "weights")
        dt = w.dtype
        if w.shape.rank is not None and w.shape.rank != 2:
            raise ValueError(f"weights: must be [num_classes, dim], got shape {w.shape}")
        has_bias = biases is not None
        if has_bias:
            if isinstance(biases, (list, tuple)):
                biases = biases[0] if len(biases) == 1 else tf.concat(list(biases), 0)
            b = _float_tensor(biases, "biases", dt)
        x = _float_tensor(inputs, "inputs", dt)
        lab = tf.convert_to_tensor(labels)
        if not lab.dtype.is_integer:
            raise TypeError(f"labels: expected integer class ids, got {lab.dtype.name}")
        lab = tf.cast(lab, tf.int64)
        if lab.shape.rank == 1 and nt == 1:
            lab = tf.reshape(lab, [-1, 1])
        if sampled_values is None:
            sampled_values = _run(opts.draw, [lab], _SAMPLER_TOUT, _sampler_shapes(lab, nt, ns), None)
        ids, te, se = _losses.split_sampled_values(sampled_values)
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int64)
        has_te = te is not None
        te = tf.convert_to_tensor(te if has_te else np.zeros(0, np.float32))
        se = tf.convert_to_tensor(se)
        npdt = dt.as_numpy_dtype

        def args(w_, b_, x_, lab_, ids_, te_, se_):
            sv = (ids_, te_ if has_te else None, se_)
            return opts.bind(w_, b_ if has_bias else None, lab_, x_, sv)

        def host_loss(w_, b_, x_, lab_, ids_, te_, se_):
            return np.asarray(args(w_, b_, x_, lab_, ids_, te_, se_).loss(), dtype=npdt)

        def unpack(r):
            gb = r.grad_biases.values if has_bias else np.zeros(0, npdt)
            return (
                np.asarray(r.grad_inputs, dtype=npdt),
                r.grad_weights.indices.astype(np.int64),
                np.asarray(r.grad_weights.values, dtype=npdt),
                np.asarray(gb, dtype=npdt),
            )

        def host_grad(w_, b_, x_, lab_, ids_, te_, se_, g_):
            return unpack(args(w_, b_, x_, lab_, ids_, te_, se_).loss_and_grad(g_))

        def host_fused(w_, b_, x_, lab_, ids_, te_, se_):
            r = args(w_, b_, x_, lab_, ids_, te_, se_).loss_and_grad()
            return (np.asarray(r.loss, dtype=npdt),) + unpack(r)

        b_in = b if has_bias else tf.zeros([0], dt)
        fused = _recording([w, b_in, x])
        grad_types = [dt, tf.int64, dt, dt]

        def core(w_, b_, x_):
            feed = [w_, b_, x_, lab, ids, te, se]
            if fused:
                # A tape is recording: loss and the gradients of loss.sum() in one native call.
                loss, *saved = tf.numpy_function(host_fused, feed, [dt] + grad_types, stateful=False)
            else:
                loss = tf.numpy_function(host_loss, feed, dt, stateful=False)
            loss.set_shape(x_.shape[:1])

            def grad(upstream):
                def recompute():
                    return tuple(tf.numpy_function(host_grad, feed + [upstream], grad_types, stateful=False))

                if fused:
                    c = upstream[0]

                    def scaled():
                        return saved[0] * c, saved[1], saved[2] * c, saved[3] * c

                    # reduce_mean / reduce_sum of the loss send the same upstream value to every row.
                    gx, idx, vals, gb = tf.cond(tf.reduce_all(tf.equal(upstream, c)), scaled, recompute)
                else:
                    gx, idx, vals, gb = recompute()
                gx.set_shape(x_.shape)
                vals.set_shape([None, w_.shape[1]])
                gw = tf.IndexedSlices(vals, idx, dense_shape=tf.shape(w_, out_type=tf.int64))
                gbs = (
                    tf.IndexedSlices(gb, idx, dense_shape=tf.shape(b_, out_type=tf.int64))
                    if has_bias
                    else None
                )
                return gw, gbs, gx

            return loss, grad

        return tf.custom_gradient(core)(w, b_in, x)


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
    name: str = "sampled_softmax_loss",
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
) -> tf.Tensor:
    """Drop-in for ``tf.nn.sampled_softmax_loss`` (same arguments; ``biases`` may also be None), ``[B]``.

    Differentiable in ``weights``, ``biases`` (``tf.IndexedSlices`` gradients) and ``inputs``. The extra
    keyword-only options are those of ``zipfnce.sampled_softmax_loss``."""
    opts = _losses.options(
        False, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
    )
    return _sampled(opts, weights, biases, labels, inputs, sampled_values, name)


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
    name: str = "nce_loss",
    *,
    seed: Optional[int] = None,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
) -> tf.Tensor:
    """Drop-in for ``tf.nn.nce_loss`` (same arguments), ``[B]``; ``seed`` seeds the default sampler."""
    opts = _losses.options(
        True, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
    )
    return _sampled(opts, weights, biases, labels, inputs, sampled_values, name)


# ------------------------------------------------------------------------------------------------------------
# InfoNCE


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
    name: str = "info_nce_loss",
    num_hard_negatives: Optional[int] = None,
) -> tf.Tensor:
    """``zipfnce.info_nce_loss`` on tensors, ``[B]``, differentiable in ``query``, ``keys`` and ``negatives``
    (the log-q corrections and ids are constants)."""
    opts = _infonce.options(temperature, symmetric, focal_gamma, max_logits_bytes, num_hard_negatives)
    with tf.name_scope(name):
        q = _float_tensor(query, "query")
        dt = q.dtype
        npdt = dt.as_numpy_dtype
        k = _float_tensor(keys, "keys", dt)
        has_neg = negatives is not None
        n = _float_tensor(negatives, "negatives", dt) if has_neg else tf.zeros([0, 0], dt)
        if q.shape[0] is not None and n.shape[0] is not None:  # static sizes: check num_hard_negatives now
            _infonce.check_hard(opts, q.shape[0], n.shape[0] if has_neg else 0)
        opt = [
            (key_log_q, dt), (negative_log_q, dt), (key_ids, tf.int64), (negative_ids, tf.int64),
        ]  # fmt: skip
        present = [a is not None for a, _ in opt]
        extras = [tf.cast(tf.convert_to_tensor(a), d) if a is not None else tf.zeros([0], d) for a, d in opt]

        def args(q_, k_, n_, ex):
            kq, nq, kid, nid = (e if p else None for e, p in zip(ex, present))
            return opts.bind(q_, k_, n_ if has_neg else None, kq, nq, kid, nid)

        def host_loss(q_, k_, n_, *ex):
            return np.asarray(args(q_, k_, n_, ex).loss(), dtype=npdt)

        def host_grad(q_, k_, n_, g_, *ex):
            r = args(q_, k_, n_, ex).loss_and_grad(g_)
            gn = r.grad_negatives if has_neg else np.zeros((0, 0), npdt)
            return np.asarray(r.grad_query, npdt), np.asarray(r.grad_keys, npdt), np.asarray(gn, npdt)

        def core(q_, k_, n_):
            loss = tf.numpy_function(host_loss, [q_, k_, n_] + extras, dt, stateful=False)
            loss.set_shape(q_.shape[:1])

            def grad(upstream):
                gq, gk, gn = tf.numpy_function(
                    host_grad, [q_, k_, n_, upstream] + extras, [dt, dt, dt], stateful=False
                )
                gq.set_shape(q_.shape)
                gk.set_shape(k_.shape)
                gn.set_shape(n_.shape)
                return gq, gk, (gn if has_neg else None)

            return loss, grad

        return tf.custom_gradient(core)(q, k, n)


# ------------------------------------------------------------------------------------------------------------
# Full softmax (issue 16; this block is maintained with python/zipfnce/_full.py)

from zipfnce import _full  # noqa: E402

__all__ += ["full_softmax_loss"]


def full_softmax_loss(
    weights: Any,
    biases: Any,
    labels: Any,
    inputs: Any,
    *,
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    max_logits_bytes: Optional[int] = None,
    name: str = "full_softmax_loss",
) -> tf.Tensor:
    """``zipfnce.full_softmax_loss`` on tensors: the exact softmax cross-entropy of each row over all classes,
    ``[B]``, differentiable in ``weights``, ``biases`` (dense gradients: every class takes part) and
    ``inputs``; ``labels`` (int ``[B]`` or ``[B, num_true]``) are constants. As for the sampled losses, a
    recording tape makes the forward pass one fused native call whose gradients the backward pass scales
    when the upstream gradient is the same for every row (``reduce_mean``, ``reduce_sum``)."""
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing: must be in [0, 1], got {label_smoothing!r}")
    ig = None if ignore_index is None else as_int(ignore_index, "ignore_index")
    with tf.name_scope(name):
        w = _float_tensor(weights, "weights")
        dt = w.dtype
        npdt = dt.as_numpy_dtype
        if w.shape.rank is not None and w.shape.rank != 2:
            raise ValueError(f"weights: must be [num_classes, dim], got shape {w.shape}")
        has_bias = biases is not None
        b_in = _float_tensor(biases, "biases", dt) if has_bias else tf.zeros([0], dt)
        x = _float_tensor(inputs, "inputs", dt)
        lab = tf.convert_to_tensor(labels)
        if not lab.dtype.is_integer:
            raise TypeError(f"labels: expected integer class ids, got {lab.dtype.name}")
        lab = tf.cast(lab, tf.int64)

        def args(w_, b_, x_, lab_):
            return _full.prepare(w_, b_ if has_bias else None, lab_, x_, ig, eps, max_logits_bytes)

        def unpack(r):
            gb = r.grad_biases if has_bias else np.zeros(0, npdt)
            return np.asarray(r.grad_weights, npdt), np.asarray(gb, npdt), np.asarray(r.grad_inputs, npdt)

        def host_loss(w_, b_, x_, lab_):
            return np.asarray(args(w_, b_, x_, lab_).loss(), dtype=npdt)

        def host_grad(w_, b_, x_, lab_, g_):
            return unpack(args(w_, b_, x_, lab_).loss_and_grad(g_))

        def host_fused(w_, b_, x_, lab_):
            r = args(w_, b_, x_, lab_).loss_and_grad()
            return (np.asarray(r.loss, dtype=npdt),) + unpack(r)

        fused = _recording([w, b_in, x])

        def core(w_, b_, x_):
            feed = [w_, b_, x_, lab]
            if fused:
                loss, *saved = tf.numpy_function(host_fused, feed, [dt, dt, dt, dt], stateful=False)
            else:
                loss = tf.numpy_function(host_loss, feed, dt, stateful=False)
            loss.set_shape(x_.shape[:1])

            def grad(upstream):
                def recompute():
                    return tuple(
                        tf.numpy_function(host_grad, feed + [upstream], [dt, dt, dt], stateful=False)
                    )

                if fused:
                    c = upstream[0]

                    def scaled():
                        return saved[0] * c, saved[1] * c, saved[2] * c

                    gw, gb, gx = tf.cond(tf.reduce_all(tf.equal(upstream, c)), scaled, recompute)
                else:
                    gw, gb, gx = recompute()
                gw.set_shape(w_.shape)
                gx.set_shape(x_.shape)
                return gw, (gb if has_bias else None), gx

            return loss, grad

        return tf.custom_gradient(core)(w, b_in, x)


# End of the full softmax block.
