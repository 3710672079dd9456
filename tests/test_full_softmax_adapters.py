"""zipfnce.jax.full_softmax_loss and zipfnce.tf.full_softmax_loss: values and gradients against the NumPy API,
and against the frameworks' own softmax cross-entropy on the materialised logits."""

import numpy as np
import pytest
import zipfnce as zn

V, D, B = 300, 8, 9


def _data(k=1, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((V, D)) * 0.5).astype(np.float32)
    b = (rng.standard_normal(V) * 0.1).astype(np.float32)
    x = rng.standard_normal((B, D)).astype(np.float32)
    lab = rng.integers(0, V, (B, k))
    c = np.linspace(0.5, 1.5, B).astype(np.float32)  # a cotangent that differs per row
    return w, b, x, lab, c


def _numpy(w, b, x, lab, c, **kw):
    return zn.full_softmax_loss_and_grad(w, b, lab, x, grad_loss=c, **kw)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("jit", [False, True])
def test_jax(k, jit):
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    znj = pytest.importorskip("zipfnce.jax")
    w, b, x, lab, c = _data(k)
    kw = dict(label_smoothing=0.1)

    def f(w_, b_, x_, cc):
        return jnp.sum(znj.full_softmax_loss(w_, b_, lab, x_, **kw) * cc)

    g = jax.jit(jax.grad(f, (0, 1, 2))) if jit else jax.grad(f, (0, 1, 2))
    for cc in (c, np.ones(B, np.float32)):  # a per-row and a constant cotangent (the fused path)
        want = _numpy(w, b, x, lab, cc, **kw)
        gw, gb, gx = g(w, b, x, cc)
        np.testing.assert_allclose(gw, want.grad_weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gb, want.grad_biases, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gx, want.grad_inputs, rtol=1e-5, atol=1e-6)
    loss = znj.full_softmax_loss(w, b, lab, x, **kw)
    np.testing.assert_allclose(loss, want.loss, rtol=1e-6)
    if k == 1:
        # jax's own cross-entropy on the logits (optax is not required: log_softmax by hand).
        z = jnp.asarray(x) @ jnp.asarray(w).T + jnp.asarray(b)
        ls = jax.nn.log_softmax(z)
        ref = -(0.9 * jnp.take_along_axis(ls, jnp.asarray(lab), 1)[:, 0] + 0.1 * ls.mean(axis=1))
        np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_function", [False, True])
def test_tf(use_function):
    tf = pytest.importorskip("tensorflow")
    zntf = pytest.importorskip("zipfnce.tf")
    w, b, x, lab, c = _data(1)
    wv, bv = tf.Variable(w), tf.Variable(b)
    xt = tf.constant(x)

    def grads(fn, cc):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            loss = fn()
            total = tf.reduce_sum(loss * cc)
        return [loss] + tape.gradient(total, [wv, bv, xt])

    ours = lambda: zntf.full_softmax_loss(wv, bv, lab[:, 0], xt)  # noqa: E731
    theirs = lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(  # noqa: E731
        labels=lab[:, 0], logits=tf.matmul(xt, wv, transpose_b=True) + bv
    )
    if use_function:
        ours, theirs = tf.function(ours), tf.function(theirs)
    for cc in (tf.constant(c), tf.ones(B)):
        for a, r in zip(grads(ours, cc), grads(theirs, cc)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-5, atol=1e-6)
    want = _numpy(w, b, x, lab, c)
    np.testing.assert_allclose(grads(ours, tf.constant(c))[1], want.grad_weights, rtol=1e-5, atol=1e-6)
