"""Sampled softmax and NCE: parity with TensorFlow (losses and GradientTape gradients), per-row candidates,
focal losses against autograd, gradients' structure, thread independence and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import zipfnce as zn

LOSSES = {"softmax": (zn.sampled_softmax_loss, zn.sampled_softmax_loss_and_grad),
          "nce": (zn.nce_loss, zn.nce_loss_and_grad)}  # fmt: skip


@pytest.fixture(scope="module")
def tf():
    tf = pytest.importorskip("tensorflow")
    return tf


def _problem(dtype, v=60, d=12, b=16, nt=1, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((v, d)) * 0.5).astype(dtype)
    bias = (rng.standard_normal(v) * 0.3).astype(dtype)
    x = (rng.standard_normal((b, d)) * scale).astype(dtype)
    labels = np.stack([rng.choice(v, nt, replace=False) for _ in range(b)]).astype(np.int64)
    return w, bias, x, labels


def _dense(sparse, shape):
    out = np.zeros(shape, dtype=np.float64)
    out[sparse.indices] = sparse.values
    return out


def _tf_step(tf, kind, w, bias, labels, x, num_sampled, num_classes, nt, sv, hits, c):
    """TensorFlow's loss and the gradients of sum(c * loss) w.r.t. weights, biases and inputs (dense)."""
    tw, tb, tx = tf.constant(w), tf.constant(bias), tf.constant(x)
    ids, te, se = sv
    dt = tf.float64 if w.dtype == np.float64 else tf.float32
    # TensorFlow needs the expected counts in the inputs' dtype (float32 counts, cast like ours).
    tsv = (tf.constant(ids), tf.cast(tf.constant(te), dt), tf.cast(tf.constant(se), dt))
    fn = tf.nn.sampled_softmax_loss if kind == "softmax" else tf.nn.nce_loss
    with tf.GradientTape() as tape:
        tape.watch([tw, tb, tx])
        loss = fn(tw, tb, tf.constant(labels), tx, num_sampled, num_classes, num_true=nt,
                  sampled_values=tsv, remove_accidental_hits=hits)  # fmt: skip
        total = tf.reduce_sum(loss * tf.constant(c))
    gw, gb, gx = tape.gradient(total, [tw, tb, tx])
    return (loss.numpy(), tf.convert_to_tensor(gw).numpy(), tf.convert_to_tensor(gb).numpy(), gx.numpy())


def _tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-11, "atol": 1e-11}


def _check_against_tf(tf, kind, w, bias, labels, x, sv, nt, hits, c, dtype):
    ns = len(sv[0])
    want = _tf_step(tf, kind, w, bias, labels, x, ns, w.shape[0], nt, sv, hits, c)
    plain, with_grad = LOSSES[kind]
    got = with_grad(w, bias, labels, x, ns, w.shape[0], nt, sampled_values=sv,
                    remove_accidental_hits=hits, grad_loss=c)  # fmt: skip
    tol = _tol(dtype)
    assert got.loss.dtype == dtype and got.grad_inputs.dtype == dtype
    np.testing.assert_allclose(got.loss, want[0], **tol)
    np.testing.assert_array_equal(
        plain(w, bias, labels, x, ns, w.shape[0], nt, sampled_values=sv, remove_accidental_hits=hits),
        got.loss,
    )
    np.testing.assert_allclose(_dense(got.grad_weights, w.shape), want[1], **tol)
    np.testing.assert_allclose(_dense(got.grad_biases, bias.shape), want[2], **tol)
    np.testing.assert_allclose(got.grad_inputs, want[3], **tol)
    # Sparse structure: sorted unique ids, exactly the classes the call used.
    used = np.unique(np.concatenate([labels.ravel(), np.asarray(sv[0]).ravel()]))
    np.testing.assert_array_equal(got.grad_weights.indices, used)
    np.testing.assert_array_equal(got.grad_biases.indices, used)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("unique", [True, False])
@pytest.mark.parametrize("hits", [True, False])
@pytest.mark.parametrize("nt", [1, 2, 3])
@pytest.mark.parametrize("kind", ["softmax", "nce"])
def test_parity_with_tensorflow(tf, kind, nt, hits, unique, dtype):
    v, ns = 60, 20
    w, bias, x, labels = _problem(dtype, v=v, nt=nt, seed=nt * 7 + hits + 2 * unique)
    sv = tf.random.log_uniform_candidate_sampler(labels, nt, ns, unique, v, seed=11 + nt)
    sv = tuple(t.numpy() for t in sv)
    ids = sv[0]
    if not unique:
        # TensorFlow masks only the last copy of a repeated candidate that is a hit; zipfnce masks every
        # copy (test_repeated_hits_are_all_masked). Keep repeated ids out of the labels to compare exactly.
        rep = {i for i in ids.tolist() if (ids == i).sum() > 1}
        assert rep, "the draw should repeat some candidates"
        pool = [i for i in range(v) if i not in rep]
        single = [i for i in ids.tolist() if i not in rep]
        rng = np.random.default_rng(nt)
        for r in range(labels.shape[0]):
            first = single[r % len(single)] if r % 2 == 0 else rng.choice(pool)
            rest = rng.choice([p for p in pool if p != first], nt - 1, replace=False)
            labels[r] = np.concatenate([[first], rest])
        sv = (ids, tf.random.log_uniform_candidate_sampler(labels, nt, ns, unique, v).true_expected_count.numpy(),
              sv[2])  # fmt: skip
    if hits:
        hit_rows = [r for r in range(labels.shape[0]) if np.isin(labels[r], ids).any()]
        assert hit_rows, "the test should contain accidental hits"
    c = np.random.default_rng(3).uniform(-1, 2, labels.shape[0]).astype(dtype)
    _check_against_tf(tf, kind, w, bias, labels, x, sv, nt, hits, c, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["softmax", "nce"])
def test_parity_with_tensorflow_over_several_blocks_and_tiles(tf, kind, dtype):
    # 700 rows and 1300 candidates: several candidate blocks and row sub-tiles in the kernel.
    v, ns, nt = 5000, 1300, 2
    w, bias, x, labels = _problem(dtype, v=v, d=40, b=700, nt=nt, seed=8)
    sv = tuple(t.numpy() for t in tf.random.log_uniform_candidate_sampler(labels, nt, ns, True, v, seed=2))
    assert np.isin(labels, sv[0]).any()
    c = np.random.default_rng(4).uniform(0, 1, 700).astype(dtype)
    _check_against_tf(tf, kind, w, bias, labels, x, sv, nt, True, c, dtype)


@pytest.mark.parametrize("kind", ["softmax", "nce"])
def test_parity_at_large_logits(tf, kind):
    # Logits in the thousands: no overflow on either side, and float32 still matches TensorFlow.
    for dtype in (np.float32, np.float64):
        w, bias, x, labels = _problem(dtype, nt=2, scale=300.0, seed=5)
        sv = tuple(
            t.numpy() for t in tf.random.log_uniform_candidate_sampler(labels, 2, 20, True, 60, seed=3)
        )
        got = LOSSES[kind][1](w, bias, labels, x, 20, 60, 2, sampled_values=sv)
        assert np.abs(got.loss).max() > 1000
        for a in (got.loss, got.grad_inputs, got.grad_weights.values, got.grad_biases.values):
            assert np.isfinite(a).all()
        c = np.ones(labels.shape[0], dtype=dtype)
        want = _tf_step(tf, kind, w, bias, labels, x, 20, 60, 2, sv, kind == "softmax", c)
        np.testing.assert_allclose(got.loss, want[0], rtol=1e-5 if dtype == np.float32 else 1e-11)
        np.testing.assert_allclose(
            got.grad_inputs, want[3], rtol=1e-4, atol=1e-3 if dtype == np.float32 else 1e-9
        )


@pytest.mark.parametrize("kind", ["softmax", "nce"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_row_candidates_match_tensorflow_row_by_row(tf, kind, dtype):
    v, ns, nt = 80, 12, 2
    w, bias, x, labels = _problem(dtype, v=v, nt=nt, b=10, seed=21)
    cs = zn.LogUniformSampler(v, seed=1).sample_per_row(labels, ns, seed=4)
    assert cs.ids.shape == (10, ns)
    # Rows differ, and some rows hit their own labels.
    assert any(not np.array_equal(cs.ids[0], cs.ids[r]) for r in range(1, 10))
    c = np.linspace(0.5, 1.5, 10).astype(dtype)
    got = LOSSES[kind][1](w, bias, labels, x, ns, v, nt, sampled_values=cs, remove_accidental_hits=True,
                          grad_loss=c)  # fmt: skip
    gw = np.zeros(w.shape)
    gb = np.zeros(bias.shape)
    tol = _tol(dtype)
    for r in range(10):
        sv = (cs.ids[r], cs.true_expected_count[r : r + 1], cs.sampled_expected_count[r])
        want = _tf_step(tf, kind, w, bias, labels[r : r + 1], x[r : r + 1], ns, v, nt, sv, True, c[r : r + 1])
        np.testing.assert_allclose(got.loss[r], want[0][0], **tol)
        np.testing.assert_allclose(got.grad_inputs[r], want[3][0], **tol)
        gw += want[1]
        gb += want[2]
    np.testing.assert_allclose(_dense(got.grad_weights, w.shape), gw, **tol)
    np.testing.assert_allclose(_dense(got.grad_biases, bias.shape), gb, **tol)
    np.testing.assert_array_equal(
        got.grad_weights.indices, np.unique(np.concatenate([labels.ravel(), cs.ids.ravel()]))
    )


@pytest.mark.parametrize("kind", ["softmax", "nce"])
def test_repeated_hits_are_all_masked(tf, kind):
    # Candidates [3, 7, 3, 9] for label 3: both copies of 3 are masked, exactly as if they were not there.
    w, bias, x, _ = _problem(np.float64, b=1, seed=2)
    labels = np.array([[3]])
    te = np.array([[0.3]], dtype=np.float32)
    sv = (np.array([3, 7, 3, 9]), te, np.array([0.3, 0.2, 0.3, 0.1], dtype=np.float32))
    got = LOSSES[kind][1](w, bias, labels, x, 4, 60, sampled_values=sv, remove_accidental_hits=True)
    kept = (np.array([7, 9]), te, np.array([0.2, 0.1], dtype=np.float32))
    want = _tf_step(tf, kind, w, bias, labels, x, 2, 60, 1, kept, False, np.ones(1))
    np.testing.assert_allclose(got.loss, want[0], rtol=1e-12)
    np.testing.assert_allclose(_dense(got.grad_weights, w.shape), want[1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.grad_inputs, want[3], rtol=1e-12)


def test_default_sampler_is_a_unique_log_uniform_draw():
    w, bias, x, labels = _problem(np.float32, v=500, nt=2, b=8)
    a = zn.sampled_softmax_loss_and_grad(w, bias, labels, x, 40, 500, 2, seed=9)
    sv = zn.log_uniform_candidate_sampler(labels, 2, 40, True, 500, seed=9)
    assert len(np.unique(sv[0])) == 40
    b = zn.sampled_softmax_loss_and_grad(w, bias, labels, x, 40, 500, 2, sampled_values=sv)
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.grad_weights.values, b.grad_weights.values)
    c = zn.nce_loss(w, bias, labels, x, 40, 500, 2, seed=10)
    assert not np.array_equal(c, zn.nce_loss(w, bias, labels, x, 40, 500, 2, seed=9))


def _tf_focal(tf, kind, w, bias, labels, x, sv, nt, hits, gamma, c):
    """Autograd (TensorFlow) of docs/API.md's focal formula on TensorFlow's own sampled logits."""
    from tensorflow.python.ops.nn_impl import _compute_sampled_logits

    tw, tb, tx = tf.constant(w), tf.constant(bias), tf.constant(x)
    dt = tw.dtype
    tsv = (tf.constant(sv[0]), tf.cast(sv[1], dt), tf.cast(sv[2], dt))
    with tf.GradientTape() as tape:
        tape.watch([tw, tb, tx])
        z, y = _compute_sampled_logits(tw, tb, tf.constant(labels), tx, len(sv[0]), w.shape[0], num_true=nt,
                                       sampled_values=tsv, remove_accidental_hits=hits)  # fmt: skip
        if kind == "softmax":
            logp = tf.nn.log_softmax(z)
            per = -y * (1 - tf.exp(logp)) ** gamma * logp
        else:
            s = tf.sigmoid(z)
            ls, l1s = tf.math.log_sigmoid(z), tf.math.log_sigmoid(-z)
            per = -(y * (1 - s) ** gamma * ls + (1 - y) * s**gamma * l1s)
        loss = tf.reduce_sum(per, axis=1)
        total = tf.reduce_sum(loss * c)
    gw, gb, gx = tape.gradient(total, [tw, tb, tx])
    return loss.numpy(), tf.convert_to_tensor(gw).numpy(), tf.convert_to_tensor(gb).numpy(), gx.numpy()


@pytest.mark.parametrize("kind", ["softmax", "nce"])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("nt", [1, 3])
def test_focal_gradients_match_autograd(tf, kind, gamma, nt):
    w, bias, x, labels = _problem(np.float64, nt=nt, seed=31, scale=2.0)
    sv = tuple(t.numpy() for t in tf.random.log_uniform_candidate_sampler(labels, nt, 20, True, 60, seed=5))
    hits = kind == "softmax"  # NCE: masked columns would be -FLT_MAX, where TF's autograd of s**g is NaN
    c = np.random.default_rng(1).uniform(0.5, 2, labels.shape[0])
    want = _tf_focal(tf, kind, w, bias, labels, x, sv, nt, hits, gamma, c)
    got = LOSSES[kind][1](w, bias, labels, x, 20, 60, nt, sampled_values=sv, remove_accidental_hits=hits,
                          focal_gamma=gamma, grad_loss=c)  # fmt: skip
    tol = {"rtol": 1e-9, "atol": 1e-11}
    np.testing.assert_allclose(got.loss, want[0], **tol)
    np.testing.assert_allclose(_dense(got.grad_weights, w.shape), want[1], **tol)
    np.testing.assert_allclose(_dense(got.grad_biases, bias.shape), want[2], **tol)
    np.testing.assert_allclose(got.grad_inputs, want[3], **tol)


@pytest.mark.parametrize("kind", ["softmax", "nce"])
def test_focal_gamma_zero_is_exactly_the_plain_loss(kind):
    w, bias, x, labels = _problem(np.float32, nt=2)
    sv = zn.log_uniform_candidate_sampler(labels, 2, 20, True, 60, seed=1)
    a = LOSSES[kind][1](w, bias, labels, x, 20, 60, 2, sampled_values=sv)
    b = LOSSES[kind][1](w, bias, labels, x, 20, 60, 2, sampled_values=sv, focal_gamma=0.0)
    f = LOSSES[kind][1](w, bias, labels, x, 20, 60, 2, sampled_values=sv, focal_gamma=1.0)
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.grad_inputs, b.grad_inputs)
    assert (f.loss < a.loss).all()  # (1 - p)^g < 1 down-weights every term


def test_grad_loss_weights_rows_and_defaults_to_ones():
    w, bias, x, labels = _problem(np.float64, nt=1)
    sv = zn.log_uniform_candidate_sampler(labels, 1, 20, True, 60, seed=1)
    f = zn.sampled_softmax_loss_and_grad
    base = f(w, bias, labels, x, 20, 60, sampled_values=sv)
    two = f(w, bias, labels, x, 20, 60, sampled_values=sv, grad_loss=2)
    np.testing.assert_allclose(two.grad_inputs, 2 * base.grad_inputs, rtol=1e-14)
    np.testing.assert_allclose(two.grad_weights.values, 2 * base.grad_weights.values, rtol=1e-14, atol=1e-16)
    c = np.zeros(16)
    c[4] = 1.0
    one = f(w, bias, labels, x, 20, 60, sampled_values=sv, grad_loss=c)
    assert np.abs(one.grad_inputs[np.arange(16) != 4]).max() == 0
    np.testing.assert_allclose(one.grad_inputs[4], base.grad_inputs[4], rtol=1e-14)


def test_no_biases_gives_no_bias_gradient():
    w, _, x, labels = _problem(np.float32)
    sv = zn.log_uniform_candidate_sampler(labels, 1, 20, True, 60, seed=1)
    g = zn.nce_loss_and_grad(w, None, labels, x, 20, 60, sampled_values=sv)
    assert g.grad_biases is None
    assert np.isfinite(g.loss).all()


def test_weights_read_in_place_never_o_v_d():
    # A [10^12, d] view of one row takes no memory: any O(V·d) pass would take hours or run out of memory.
    d = 16
    row = np.linspace(-1, 1, d, dtype=np.float32)
    w = np.lib.stride_tricks.as_strided(row, shape=(10**12, d), strides=(0, 4), writeable=False)
    x = np.ones((4, d), dtype=np.float32)
    labels = np.array([[5], [10**11], [7], [10**12 - 1]])
    g = zn.sampled_softmax_loss_and_grad(w, None, labels, x, 64, 10**12, seed=1)
    # Every logit equals x·row, so every row's loss is log of the sum of 1/q ratios: finite and positive.
    assert np.isfinite(g.loss).all() and g.grad_weights.values.shape == (len(g.grad_weights.indices), d)


def test_strided_and_transposed_weights_equal_a_contiguous_copy():
    w, bias, x, labels = _problem(np.float32, d=8)
    sv = zn.log_uniform_candidate_sampler(labels, 1, 20, True, 60, seed=1)
    wide = np.zeros((60, 16), dtype=np.float32)
    wide[:, ::2] = w
    fortran = np.asfortranarray(w)
    want = zn.sampled_softmax_loss_and_grad(w, bias, labels, x, 20, 60, sampled_values=sv)
    for view in (wide[:, ::2], fortran, w[::-1][::-1]):
        got = zn.sampled_softmax_loss_and_grad(view, bias, labels, x, 20, 60, sampled_values=sv)
        np.testing.assert_array_equal(got.loss, want.loss)
        np.testing.assert_array_equal(got.grad_weights.values, want.grad_weights.values)


def test_weights_dtype_decides():
    w, bias, x, labels = _problem(np.float32)
    sv = zn.log_uniform_candidate_sampler(labels, 1, 20, True, 60, seed=1)
    a = zn.sampled_softmax_loss(w, bias, labels, x.astype(np.float64), 20, 60, sampled_values=sv)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, zn.sampled_softmax_loss(w, bias, labels, x, 20, 60, sampled_values=sv))
    b = zn.sampled_softmax_loss(w.astype(np.float64), bias, labels, x, 20, 60, sampled_values=sv)
    assert b.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("per_row", [False, True])
def test_results_do_not_depend_on_thread_count(per_row):
    rng = np.random.default_rng(0)
    v, d, b, s = 20000, 64, 300, 2000 if not per_row else 50
    w = rng.standard_normal((v, d), dtype=np.float32)
    bias = rng.standard_normal(v, dtype=np.float32)
    x = rng.standard_normal((b, d), dtype=np.float32)
    labels = rng.integers(0, v, (b, 2))
    smp = zn.LogUniformSampler(v, seed=3)
    sv = smp.sample_per_row(labels, s, seed=1) if per_row else smp.sample(s, true_classes=labels, seed=1)
    old = zn.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            zn.set_num_threads(n)
            outs.append(zn.sampled_softmax_loss_and_grad(w, bias, labels, x, s, v, 2, sampled_values=sv))
    finally:
        zn.set_num_threads(old)
    for o in outs[1:]:
        for a, b_ in zip(
            (o.loss, o.grad_inputs, o.grad_weights.values, o.grad_biases.values),
            (outs[0].loss, outs[0].grad_inputs, outs[0].grad_weights.values, outs[0].grad_biases.values),
        ):
            np.testing.assert_array_equal(a, b_)


# --- bad input ------------------------------------------------------------------------------------------


@pytest.fixture
def ok():
    w, bias, x, labels = _problem(np.float32, nt=1)
    sv = zn.log_uniform_candidate_sampler(labels, 1, 20, True, 60, seed=1)
    return dict(
        weights=w, biases=bias, labels=labels, inputs=x, num_sampled=20, num_classes=60, sampled_values=sv
    )


def _raises(exc, arg, **kw):
    for fn in (zn.sampled_softmax_loss, zn.nce_loss_and_grad):
        with pytest.raises(exc, match=arg):
            fn(**kw)


def test_label_ids_out_of_range(ok):
    for bad in (60, -1):
        lab = ok["labels"].copy()
        lab[3, 0] = bad
        _raises(ValueError, "labels", **{**ok, "labels": lab})
    ids, te, se = ok["sampled_values"]
    ids = ids.copy()
    ids[0] = 60
    _raises(ValueError, "sampled_values", **{**ok, "sampled_values": (ids, te, se)})


def test_shape_mismatches(ok):
    _raises(ValueError, "inputs", **{**ok, "inputs": ok["inputs"][:, :-1]})  # d differs from weights
    _raises(ValueError, "inputs", **{**ok, "inputs": ok["inputs"][:-1]})  # rows differ from labels
    _raises(ValueError, "biases", **{**ok, "biases": ok["biases"][:-1]})
    _raises(ValueError, "labels", **{**ok, "labels": np.zeros((16, 2), dtype=np.int64)})
    _raises(ValueError, "weights", **{**ok, "weights": ok["weights"][0]})
    _raises(
        ValueError, "labels", **{**ok, "labels": np.zeros((0, 1), dtype=np.int64), "inputs": ok["inputs"][:0]}
    )


def test_non_float_arguments(ok):
    _raises(TypeError, "weights", **{**ok, "weights": ok["weights"].astype(np.int32)})
    _raises(TypeError, "weights", **{**ok, "weights": ok["weights"].astype(np.float16)})
    _raises(TypeError, "inputs", **{**ok, "inputs": ok["inputs"].astype(np.int64)})
    _raises(TypeError, "labels", **{**ok, "labels": ok["labels"].astype(np.float32)})
    _raises(TypeError, "sampled_values", **{**ok, "sampled_values": "abc"})
    with pytest.raises(TypeError, match="grad_loss"):
        zn.nce_loss_and_grad(**ok, grad_loss="x")


def test_nan_is_rejected_where_it_is_read(ok):
    x = ok["inputs"].copy()
    x[2, 3] = np.nan
    _raises(ValueError, "inputs", **{**ok, "inputs": x})
    used = ok["sampled_values"][0][0]
    w = ok["weights"].copy()
    w[used, 1] = np.nan
    _raises(ValueError, "weights", **{**ok, "weights": w})
    w = ok["weights"].copy()
    w[ok["labels"][0, 0], 0] = np.inf
    _raises(ValueError, "weights", **{**ok, "weights": w})
    b = ok["biases"].copy()
    b[used] = np.nan
    _raises(ValueError, "biases", **{**ok, "biases": b})
    # A row no call uses is never read: NaN there changes nothing.
    unused = next(i for i in range(60) if i not in ok["sampled_values"][0] and i not in ok["labels"])
    w = ok["weights"].copy()
    w[unused] = np.nan
    np.testing.assert_array_equal(
        zn.sampled_softmax_loss(**{**ok, "weights": w}), zn.sampled_softmax_loss(**ok)
    )
    with pytest.raises(ValueError, match="grad_loss"):
        zn.sampled_softmax_loss_and_grad(**ok, grad_loss=np.full(16, np.nan))
    # Logits beyond float32: an error, not inf or NaN.
    big = np.full_like(ok["inputs"], 3e38)  # finite, but x·w > FLT_MAX for positive weights
    _raises(ValueError, "inputs", **{**ok, "inputs": big, "weights": np.abs(ok["weights"]) + 0.1})


def test_sampled_values_mismatches(ok):
    ids, te, se = ok["sampled_values"]
    _raises(ValueError, "sampled_values", **{**ok, "num_sampled": 19})
    _raises(ValueError, "sampled_values", **{**ok, "sampled_values": (ids, te, se[:-1])})
    _raises(ValueError, "sampled_values", **{**ok, "sampled_values": (ids, te[:-1], se)})
    _raises(
        ValueError, "sampled_values", **{**ok, "sampled_values": (ids[None], te, se[None])}
    )  # 1 row, not 16
    _raises(ValueError, "sampled_values", **{**ok, "sampled_values": (ids, te, np.zeros_like(se))})  # log(0)
    _raises(ValueError, "sampled_values", **{**ok, "sampled_values": (ids, None, se)})
    cs = zn.LogUniformSampler(60, seed=1).sample(20)  # no true classes: no true expected counts
    _raises(ValueError, "true_expected_count", **{**ok, "sampled_values": cs})
    # Without subtract_log_q the counts are not needed.
    assert np.isfinite(zn.sampled_softmax_loss(**{**ok, "sampled_values": cs}, subtract_log_q=False)).all()


def test_too_many_unique_candidates(ok):
    kw = {**ok, "sampled_values": None, "num_sampled": 61}
    _raises(ValueError, "num_sampled", **kw)
    _raises(ValueError, "num_classes", **{**kw, "num_sampled": 5, "num_classes": 61})


def test_bad_scalars(ok):
    _raises(ValueError, "focal_gamma", **ok, focal_gamma=-1.0)
    _raises(ValueError, "focal_gamma", **ok, focal_gamma=float("nan"))
    _raises(ValueError, "num_true", **{**ok, "num_true": 0})
    _raises(TypeError, "remove_accidental_hits", **ok, remove_accidental_hits="yes")
    with pytest.raises(ValueError, match="grad_loss"):
        zn.sampled_softmax_loss_and_grad(**ok, grad_loss=np.ones(15))
