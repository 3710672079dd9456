"""zipfnce.tf: values and GradientTape gradients against tf.nn for the same sampled_values, in eager mode
and inside tf.function; the samplers returning tensors."""

import numpy as np
import pytest
import zipfnce as zn
from conftest import spy_sampled_loss

tf = pytest.importorskip("tensorflow")
zntf = pytest.importorskip("zipfnce.tf")

V, D, B, S = 60, 8, 7, 12


def _data(num_true=1, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((V, D)) * 0.5).astype(np.float32)
    b = (rng.standard_normal(V) * 0.1).astype(np.float32)
    x = rng.standard_normal((B, D)).astype(np.float32)
    lab = rng.integers(0, V, (B, num_true))
    # Frequent classes among the labels, so that accidental hits happen.
    lab[:3, 0] = [0, 1, 2]
    sv = zn.log_uniform_candidate_sampler(lab, num_true, S, True, V, seed=4)
    return w, b, x, lab, tuple(tf.constant(a) for a in sv)


def _grads(fn, w, b, x, lab, sv, num_true, c, hits, use_function):
    wv, bv = tf.Variable(w), tf.Variable(b)
    xt, labt, ct = tf.constant(x), tf.constant(lab), tf.constant(c)

    def step():
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = fn(
                wv, bv, labt, xt, S, V, num_true=num_true, sampled_values=sv, remove_accidental_hits=hits
            )
            obj = tf.reduce_sum(loss * ct)
        gw, gb, gx = tape.gradient(obj, [wv, bv, xt])
        return loss, tf.convert_to_tensor(gw), tf.convert_to_tensor(gb), gx

    return [t.numpy() for t in (tf.function(step)() if use_function else step())]


@pytest.mark.parametrize("which", ["sampled_softmax_loss", "nce_loss"])
@pytest.mark.parametrize("num_true", [1, 3])
@pytest.mark.parametrize("use_function", [False, True])
@pytest.mark.parametrize("hits", [False, True])
def test_matches_tf_nn(which, num_true, use_function, hits):
    w, b, x, lab, sv = _data(num_true)
    c = np.linspace(0.5, 2.0, B).astype(np.float32)
    ours = _grads(getattr(zntf, which), w, b, x, lab, sv, num_true, c, hits, use_function)
    theirs = _grads(getattr(tf.nn, which), w, b, x, lab, sv, num_true, c, hits, use_function)
    for a, e in zip(ours, theirs):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_function", [False, True])
def test_mean_is_one_fused_call_and_matches_tf_nn(monkeypatch, use_function):
    calls = []
    # Counted at the native call, which the adapter reaches through its prepared arguments.
    spy_sampled_loss(monkeypatch, lambda name, weights: calls.append(name))
    w, b, x, lab, sv = _data(2)

    def grads(fn):
        wv, bv, xt = tf.Variable(w), tf.Variable(b), tf.constant(x)

        def step():
            with tf.GradientTape() as tape:
                tape.watch(xt)
                loss = tf.reduce_mean(fn(wv, bv, lab, xt, S, V, num_true=2, sampled_values=sv))
            return [loss] + [tf.convert_to_tensor(g) for g in tape.gradient(loss, [wv, bv, xt])]

        return [t.numpy() for t in (tf.function(step)() if use_function else step())]

    ours = grads(zntf.sampled_softmax_loss)
    assert calls == ["sampled_softmax_loss_and_grad"]
    for a, e in zip(ours, grads(tf.nn.sampled_softmax_loss)):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)
    # Without a tape only the loss is computed.
    calls.clear()
    zntf.sampled_softmax_loss(w, b, lab, x, S, V, num_true=2, sampled_values=sv)
    assert calls == ["sampled_softmax_loss"]


def test_weight_gradient_is_indexed_slices_and_matches_numpy():
    w, b, x, lab, sv = _data()
    wt, bt, xt = tf.constant(w), tf.constant(b), tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch([wt, bt, xt])
        loss = zntf.sampled_softmax_loss(wt, bt, lab, xt, S, V, sampled_values=sv, focal_gamma=0.7)
    gw, gb, gx = tape.gradient(loss, [wt, bt, xt])
    assert isinstance(gw, tf.IndexedSlices) and isinstance(gb, tf.IndexedSlices)
    ref = zn.sampled_softmax_loss_and_grad(w, b, lab, x, S, V, sampled_values=[a.numpy() for a in sv],
                                           focal_gamma=0.7)  # fmt: skip
    np.testing.assert_allclose(loss.numpy(), ref.loss, rtol=1e-6)
    np.testing.assert_array_equal(gw.indices.numpy(), ref.grad_weights.indices)
    np.testing.assert_allclose(gw.values.numpy(), ref.grad_weights.values, rtol=1e-6)
    np.testing.assert_allclose(gx.numpy(), ref.grad_inputs, rtol=1e-6)


def test_default_sampler_inside_tf_function_trains():
    rng = np.random.default_rng(1)
    w = tf.Variable(rng.standard_normal((V, D)).astype(np.float32) * 0.1)
    b = tf.Variable(np.zeros(V, np.float32))
    x = tf.constant(rng.standard_normal((B, D)).astype(np.float32))
    lab = tf.constant(rng.integers(0, V, (B, 1)))
    opt = tf.keras.optimizers.SGD(0.5)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(zntf.sampled_softmax_loss(w, b, lab, x, S, V))
        opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
        return loss

    losses = [float(step()) for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


@pytest.mark.parametrize("use_function", [False, True])
def test_info_nce_matches_numpy(use_function):
    rng = np.random.default_rng(2)
    q, k, n = (rng.standard_normal(s).astype(np.float32) for s in ((6, 4), (6, 4), (3, 4)))
    kid = np.array([0, 1, 0, 2, 3, 4])
    c = np.linspace(0.5, 2.0, 6).astype(np.float32)
    qt, kt, nt = (tf.constant(a) for a in (q, k, n))

    def step():
        with tf.GradientTape() as tape:
            tape.watch([qt, kt, nt])
            loss = zntf.info_nce_loss(qt, kt, negatives=nt, temperature=0.3, key_ids=kid, symmetric=True)
            obj = tf.reduce_sum(loss * c)
        return [loss] + tape.gradient(obj, [qt, kt, nt])

    got = [t.numpy() for t in (tf.function(step)() if use_function else step())]
    ref = zn.info_nce_loss_and_grad(
        q, k, negatives=n, temperature=0.3, key_ids=kid, symmetric=True, grad_loss=c
    )
    for a, e in zip(got, ref):
        np.testing.assert_allclose(a, e, rtol=2e-5, atol=1e-6)


def test_samplers_return_tensors_eager_and_in_graph():
    tc = tf.constant(np.array([[1], [5], [7]], np.int64))
    for use_function in (False, True):

        def run():
            return (
                zntf.log_uniform_candidate_sampler(tc, 1, 10, True, 100, seed=3),
                zntf.uniform_candidate_sampler(tc, 1, 10, False, 100, seed=3),
                zntf.fixed_unigram_candidate_sampler(
                    tc, 1, 10, True, 20, unigrams=list(range(1, 21)), seed=3
                ),
                zntf.all_candidate_sampler(tc, 1, 10, True),
                zntf.compute_accidental_hits(tc, tf.range(10, dtype=tf.int64), 1),
            )

        out = tf.function(run)() if use_function else run()
        for triple in out:
            assert all(isinstance(t, tf.Tensor) for t in triple)
        ref = zn.log_uniform_candidate_sampler(tc.numpy(), 1, 10, True, 100, seed=3)
        for a, e in zip(out[0], ref):
            np.testing.assert_array_equal(a.numpy(), e)
        assert out[0][0].dtype == tf.int64 and out[0][1].shape == (3, 1)
        idx, ids, wts = out[4]
        np.testing.assert_array_equal(ids.numpy(), [1, 5, 7])
        assert idx.dtype == tf.int32


def test_errors_name_the_argument():
    w, b, x, lab, sv = _data()
    with pytest.raises(TypeError, match="labels"):
        zntf.sampled_softmax_loss(w, b, lab.astype(np.float32), x, S, V, sampled_values=sv)
    with pytest.raises(TypeError, match="weights"):
        zntf.nce_loss(w.astype(np.int32), b, lab, x, S, V, sampled_values=sv)
    with pytest.raises(ValueError, match="focal_gamma"):
        zntf.nce_loss(w, b, lab, x, S, V, sampled_values=sv, focal_gamma=-1.0)
    with pytest.raises(TypeError, match="true_classes"):
        zntf.log_uniform_candidate_sampler(tf.constant([[1.0]]), 1, 2, True, 10)
