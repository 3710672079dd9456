"""zipfnce.tf, backend="tf" (the losses written with TensorFlow operations) against the native kernels: loss and
every gradient over the option grid in float64 (1e-9) and float32 (2e-4), eagerly and in tf.function, float16
and bfloat16 against float32, backend selection and bad input. (TensorFlow only: it never shares a process's
imports with torch in this file.)"""

import numpy as np
import pytest
import zipfnce as zn

tf = pytest.importorskip("tensorflow")
zntf = pytest.importorskip("zipfnce.tf")

V, D, B, S = 40, 8, 7, 12

# (remove_accidental_hits, subtract_log_q, biases), cycled through the parametrised axes.
_COMBOS = [(True, True, True), (False, True, False), (True, False, False), (False, False, True)]


def _data(dtype, num_true, per_row, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((V, D)) * 0.5).astype(dtype)
    b = (rng.standard_normal(V) * 0.3).astype(dtype)
    x = rng.standard_normal((B, D)).astype(dtype)
    lab = rng.integers(0, V, (B, num_true))
    lab[:4, 0] = [0, 1, 2, 0]  # frequent classes (and a repeated one), so that accidental hits happen
    s = zn.LogUniformSampler(V, seed=3)
    sv = s.sample_per_row(lab, S, seed=4) if per_row else s.sample(S, true_classes=lab, seed=4)
    cand = sv.ids if per_row else sv.ids[None, :]
    assert (cand[:, :, None] == lab[:, None, :]).any(), "the data must contain accidental hits"
    return w, b, x, lab, (sv.ids, sv.true_expected_count, sv.sampled_expected_count)


def _dense(sg, shape):
    out = np.zeros(shape, dtype=np.float64)
    np.add.at(out, sg.indices, sg.values)
    return out


def _tape(fn, tensors, c, use_function):
    """The loss and the gradients of ``sum(c * loss)`` with respect to ``tensors`` (variables or constants)."""

    def step():
        with tf.GradientTape() as tape:
            tape.watch([t for t in tensors if not isinstance(t, tf.Variable)])
            loss = fn(*tensors)
            obj = tf.reduce_sum(loss * tf.cast(c, loss.dtype))
        return [loss] + tape.gradient(obj, tensors)

    return (tf.function(step) if use_function else step)()


def _sampled_pair(nce, dtype, num_true, per_row, hits, log_q, bias, gamma, c, use_function):
    w, b, x, lab, svt = _data(dtype, num_true, per_row)
    fn = zntf.nce_loss if nce else zntf.sampled_softmax_loss
    ref_fn = zn.nce_loss_and_grad if nce else zn.sampled_softmax_loss_and_grad
    kw = dict(subtract_log_q=log_q, focal_gamma=gamma)
    wv, bv, xt = tf.Variable(w), tf.Variable(b), tf.constant(x)
    f = lambda w_, b_, x_: fn(
        w_, b_ if bias else None, lab, x_, S, V, num_true, svt, hits, backend="tf", **kw
    )  # noqa: E731
    loss, gw, gb, gx = _tape(f, [wv, bv, xt], c, use_function)
    assert isinstance(gw, tf.IndexedSlices)  # sparse, as tf.nn gives
    ref = ref_fn(w, b if bias else None, lab, x, S, V, num_true, svt, hits, grad_loss=c, **kw)
    got = [loss, gx, tf.convert_to_tensor(gw)]
    want = [ref.loss, ref.grad_inputs, _dense(ref.grad_weights, w.shape)]
    if bias:
        got.append(tf.convert_to_tensor(gb))
        want.append(_dense(ref.grad_biases, b.shape))
    else:
        assert gb is None
    return [np.asarray(t, np.float64) for t in got], want


@pytest.mark.parametrize("nce", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("num_true, gamma", [(1, 0.0), (3, 0.7)])
def test_sampled_matches_native_float64(nce, per_row, num_true, gamma):
    c = np.linspace(0.5, 2.0, B)
    for i, (hits, log_q, bias) in enumerate(_COMBOS):
        got, want = _sampled_pair(nce, np.float64, num_true, per_row, hits, log_q, bias, gamma, c, i % 2 == 1)
        for g, e, name in zip(got, want, ["loss", "grad_inputs", "grad_weights", "grad_biases"]):
            np.testing.assert_allclose(
                g, e, rtol=1e-9, atol=1e-12, err_msg=f"{name} hits={hits} log_q={log_q}"
            )


@pytest.mark.parametrize("nce", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_sampled_matches_native_float32(nce, per_row):
    c = np.linspace(0.5, 2.0, B).astype(np.float32)
    for i, ((hits, log_q, bias), gamma, nt) in enumerate(zip(_COMBOS, [0.0, 0.7, 0.0, 2.0], [1, 3, 2, 1])):
        got, want = _sampled_pair(nce, np.float32, nt, per_row, hits, log_q, bias, gamma, c, i % 2 == 0)
        for g, e, name in zip(got, want, ["loss", "grad_inputs", "grad_weights", "grad_biases"]):
            np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-5, err_msg=f"{name} gamma={gamma}")


def _info_data(dtype, seed=5):
    rng = np.random.default_rng(seed)
    q, k = (rng.standard_normal((6, 4)).astype(dtype) for _ in range(2))
    n = rng.standard_normal((3, 4)).astype(dtype)
    lq, nlq = rng.standard_normal(6).astype(dtype), rng.standard_normal(3).astype(dtype)
    kid, nid = np.array([0, 1, 2, 0, 3, 1]), np.array([1, 9, 0])  # duplicate key ids, negatives that hit
    return q, k, n, lq, nlq, kid, nid


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(
    "gamma, negatives, masks", [(0.0, False, True), (1.5, True, True), (0.0, True, False)]
)
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-9, 1e-12), (np.float32, 2e-4, 2e-5)])
def test_info_nce_matches_native(symmetric, gamma, negatives, masks, dtype, rtol, atol):
    q, k, n, lq, nlq, kid, nid = _info_data(dtype)
    c = np.linspace(0.5, 2.0, 6).astype(dtype)
    opts = dict(temperature=0.3, symmetric=symmetric, focal_gamma=gamma)
    if masks:
        opts.update(key_log_q=lq, key_ids=kid)
        if negatives:
            opts.update(negative_log_q=nlq, negative_ids=nid)
    ts = [tf.constant(q), tf.constant(k)] + ([tf.constant(n)] if negatives else [])
    f = lambda q_, k_, *n_: zntf.info_nce_loss(q_, k_, negatives=n_[0] if n_ else None, backend="tf", **opts)  # noqa: E731
    got = _tape(f, ts, c, symmetric)
    ref = zn.info_nce_loss_and_grad(q, k, negatives=n if negatives else None, grad_loss=c, **opts)
    want = [ref.loss, ref.grad_query, ref.grad_keys] + ([ref.grad_negatives] if negatives else [])
    for g, e in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), e, rtol=rtol, atol=atol)


# bfloat16 keeps 8 significant bits, so one rounding to it is exact to a relative 2^-8 (float16: 11 bits,
# 2^-11). The TF path computes logits, loss and gradient sums in float32 from the half values and rounds each
# gradient element once, so against the native float32 kernels on the same (half-rounded) values the loss
# agrees to float32 accuracy and every gradient element to one rounding: |g - g32| <= 2^-p |g32|.
@pytest.mark.parametrize("name, bits, tiny", [("bfloat16", 8, 1e-30), ("float16", 11, 6.2e-5)])
@pytest.mark.parametrize("which", ["sampled_softmax_loss", "nce_loss", "info_nce_loss"])
def test_half_precision_against_float32(name, bits, tiny, which):
    hdt = tf.as_dtype(name)
    c = np.linspace(0.5, 2.0, B).astype(np.float32)
    if which == "info_nce_loss":
        q, k, n, lq, _, kid, _ = _info_data(np.float32)
        c = c[:6]
        ts = [tf.cast(tf.constant(a), hdt) for a in (q, k, n)]
        got = _tape(
            lambda q_, k_, n_: zntf.info_nce_loss(q_, k_, negatives=n_, key_log_q=lq, key_ids=kid, focal_gamma=0.5),
            ts, c, False,
        )  # fmt: skip
        f32 = [tf.cast(t, tf.float32).numpy() for t in ts]
        ref = zn.info_nce_loss_and_grad(
            f32[0], f32[1], negatives=f32[2], key_log_q=lq, key_ids=kid, focal_gamma=0.5, grad_loss=c
        )
        want = [ref.grad_query, ref.grad_keys, ref.grad_negatives]
    else:
        w, b, x, lab, svt = _data(np.float32, 2, False)
        ts = [tf.Variable(tf.cast(w, hdt)), tf.Variable(tf.cast(b, hdt)), tf.cast(tf.constant(x), hdt)]
        fn = getattr(zntf, which)
        got = _tape(lambda w_, b_, x_: fn(w_, b_, lab, x_, S, V, 2, svt, focal_gamma=0.5), ts, c, True)
        w32, b32, x32 = (tf.cast(t, tf.float32).numpy() for t in ts)
        ref = getattr(zn, which + "_and_grad")(w32, b32, lab, x32, S, V, 2, svt, focal_gamma=0.5, grad_loss=c)
        want = [_dense(ref.grad_weights, w.shape), _dense(ref.grad_biases, b.shape), ref.grad_inputs]
    loss, grads = got[0], got[1:]
    assert loss.dtype == tf.float32  # the loss in float32 ...
    np.testing.assert_allclose(loss.numpy(), ref.loss, rtol=2e-5, atol=1e-6)
    for g, e in zip(grads, want):
        assert g.dtype == hdt  # ... the gradients in the input dtype
        err = np.abs(tf.cast(tf.convert_to_tensor(g), tf.float64).numpy() - e)
        bound = 2.0**-bits * np.abs(e) * (1 + 1e-3) + tiny + 1e-6 * np.abs(e).max()
        assert np.all(err <= bound), f"max excess {np.max(err - bound)}"


def test_backend_selection_and_default_sampler(monkeypatch):
    w, b, x, lab, svt = _data(np.float32, 1, False)
    seen = []
    orig = zn._core.sampled_loss
    monkeypatch.setattr(zn._core, "sampled_loss", lambda *a: seen.append(1) or orig(*a))
    zntf.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=svt, backend="tf")
    assert not seen
    zntf.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=svt)  # auto: CPU float32 tensors -> native
    assert seen
    seen.clear()
    zntf.nce_loss(tf.cast(w, tf.bfloat16), None, lab, tf.cast(x, tf.bfloat16), S, V, sampled_values=svt)
    assert not seen  # auto: half precision -> TF operations
    # sampled_values=None: candidates drawn on the host by the native sampler, the same for both paths.
    for fn in (zntf.sampled_softmax_loss, zntf.nce_loss):
        a = fn(w, b, lab, x, S, V, seed=9, backend="tf")
        e = fn(w, b, lab, x, S, V, seed=9, backend="native")
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=2e-5)
        a = tf.function(lambda fn=fn: fn(w, b, lab, x, S, V, seed=9, backend="tf"))()
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=2e-5)


def test_graph_has_no_numpy_function():
    w, b, x, lab, svt = _data(np.float32, 2, False)
    q, k, n, *_ = _info_data(np.float32)

    def ops(backend):
        @tf.function
        def step(w_, x_, q_):
            with tf.GradientTape() as tape:
                tape.watch([w_, x_, q_])
                a = zntf.sampled_softmax_loss(w_, b, lab, x_, S, V, 2, svt, backend=backend)
                i = zntf.info_nce_loss(q_, k, negatives=n, backend=backend)
                obj = tf.reduce_sum(a) + tf.reduce_sum(i)
            return tape.gradient(obj, [w_, x_, q_])

        g = step.get_concrete_function(tf.constant(w), tf.constant(x), tf.constant(q)).graph
        return {op.type for op in g.get_operations()}

    assert not any("PyFunc" in t for t in ops("tf"))
    assert any("PyFunc" in t for t in ops("native"))  # the probe sees the host call where there is one


def test_bad_input():
    w, b, x, lab, svt = _data(np.float32, 1, False)
    with pytest.raises(ValueError, match="backend"):
        zntf.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=svt, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        zntf.info_nce_loss(x, x, backend="jax")
    with pytest.raises(TypeError, match="backend"):  # the native kernels take float32/float64
        zntf.nce_loss(tf.cast(w, tf.float16), None, lab, tf.cast(x, tf.float16), S, V, sampled_values=svt,
                      backend="native")  # fmt: skip
    for be in ("tf", "native"):
        with pytest.raises(TypeError, match="inputs.*bfloat16"):
            zntf.sampled_softmax_loss(
                w, b, lab, tf.cast(x, tf.bfloat16), S, V, sampled_values=svt, backend=be
            )
        with pytest.raises(TypeError, match="biases.*float64"):
            zntf.nce_loss(w, b.astype(np.float64), lab, x, S, V, sampled_values=svt, backend=be)
        with pytest.raises(TypeError, match="keys"):
            zntf.info_nce_loss(x, tf.cast(x, tf.float16), backend=be)
        with pytest.raises(TypeError, match="weights"):
            zntf.sampled_softmax_loss(w.astype(np.int32), b, lab, x, S, V, sampled_values=svt, backend=be)
        with pytest.raises(ValueError, match="labels"):
            zntf.sampled_softmax_loss(w, b, lab[:3], x, S, V, sampled_values=svt, backend=be)
    with pytest.raises(ValueError, match="negative_ids"):
        zntf.info_nce_loss(x, x, negatives=x, negative_ids=np.arange(B), backend="tf")
    bad = lab.copy()
    bad[0, 0] = V + 3
    with pytest.raises(ValueError, match="labels.*outside"):
        zntf.sampled_softmax_loss(w, b, bad, x, S, V, sampled_values=svt, backend="tf")
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels.*outside"):  # in a graph: an assertion
        tf.function(lambda: zntf.sampled_softmax_loss(w, b, bad, x, S, V, sampled_values=svt, backend="tf"))()
    with pytest.raises(ValueError, match="sampled_values.*outside"):
        zntf.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=(np.full(S, -1), None, np.ones(S)),
                                  subtract_log_q=False, backend="tf")  # fmt: skip
