"""zipfnce.jax: values and gradients (jax.grad, jax.jit) against the NumPy API (tests that concern the host
callback itself pin backend="callback"; tests/test_jax_backend.py covers the JAX path)."""

import numpy as np
import pytest
import zipfnce as zn
from conftest import spy_sampled_loss

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
znj = pytest.importorskip("zipfnce.jax")

V, D, B, S = 50, 8, 6, 10


def _data(num_true=1, per_row=False, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((V, D)) * 0.5).astype(np.float32)
    b = (rng.standard_normal(V) * 0.1).astype(np.float32)
    x = rng.standard_normal((B, D)).astype(np.float32)
    lab = rng.integers(0, V, (B, num_true))
    s = zn.LogUniformSampler(V, seed=3)
    sv = s.sample_per_row(lab, S, seed=4) if per_row else s.sample(S, true_classes=lab, seed=4)
    return w, b, x, lab, sv


def _dense(sg, shape):
    out = np.zeros(shape, dtype=sg.values.dtype)
    out[sg.indices] = sg.values
    return out


def _check(got, ref, w, b):
    gw, gb, gx = got
    np.testing.assert_allclose(np.asarray(gx), ref.grad_inputs, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gw), _dense(ref.grad_weights, w.shape), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gb), _dense(ref.grad_biases, b.shape), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("nce", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("weighting", ["mean", "rows"])
def test_sampled_losses_match_numpy(nce, per_row, jit, weighting):
    w, b, x, lab, sv = _data(num_true=2, per_row=per_row)
    fn = znj.nce_loss if nce else znj.sampled_softmax_loss
    ref_fn = zn.nce_loss_and_grad if nce else zn.sampled_softmax_loss_and_grad
    c = (
        np.linspace(0.5, 2.0, B).astype(np.float32)
        if weighting == "rows"
        else np.full(B, 1.0 / B, np.float32)
    )
    svj = (jnp.asarray(sv.ids), jnp.asarray(sv.true_expected_count), jnp.asarray(sv.sampled_expected_count))

    def objective(w_, b_, x_):
        loss = fn(w_, b_, lab, x_, S, V, 2, svj, focal_gamma=0.5)
        return jnp.mean(loss) if weighting == "mean" else jnp.sum(loss * c)

    g = jax.grad(objective, argnums=(0, 1, 2))
    if jit:
        g = jax.jit(g)
    got = g(w, b, x)
    ref = ref_fn(w, b, lab, x, S, V, 2, sv, focal_gamma=0.5, grad_loss=c)
    _check(got, ref, w, b)
    val = (jax.jit(objective) if jit else objective)(w, b, x)
    np.testing.assert_allclose(float(val), float(np.sum(ref.loss * c)), rtol=1e-5)


def test_loss_values_and_default_sampler():
    w, b, x, lab, _ = _data()
    got = jax.jit(lambda w_, x_: znj.sampled_softmax_loss(w_, b, lab, x_, S, V, seed=7))(w, x)
    np.testing.assert_allclose(
        np.asarray(got), zn.sampled_softmax_loss(w, b, lab, x, S, V, seed=7), rtol=1e-6
    )
    g = jax.grad(lambda w_: jnp.sum(znj.nce_loss(w_, None, lab, x, S, V, seed=7)))(w)
    ref = zn.nce_loss_and_grad(w, None, lab, x, S, V, seed=7)
    np.testing.assert_allclose(np.asarray(g), _dense(ref.grad_weights, w.shape), rtol=2e-5, atol=1e-6)


def test_candidate_sample_and_no_log_q():
    w, b, x, lab, _ = _data()
    sv = zn.UniformSampler(V, seed=1).sample(S, seed=2)  # no true_classes: true_expected_count is None
    f = lambda w_: jnp.sum(
        znj.sampled_softmax_loss(w_, b, lab, x, S, V, sampled_values=sv, subtract_log_q=False)
    )  # noqa: E731
    ref = zn.sampled_softmax_loss_and_grad(w, b, lab, x, S, V, sampled_values=sv, subtract_log_q=False)
    np.testing.assert_allclose(
        np.asarray(jax.grad(f)(w)), _dense(ref.grad_weights, w.shape), rtol=2e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="sampled_values"):
        znj.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("weighting", ["sum", "rows"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_matches_numpy(jit, weighting, symmetric):
    rng = np.random.default_rng(5)
    q, k, n = (rng.standard_normal(s).astype(np.float32) for s in ((6, 4), (6, 4), (3, 4)))
    lq, nlq = rng.standard_normal(6).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    kid, nid = np.array([0, 1, 2, 0, 3, 4]), np.array([1, 9, 9])
    c = np.linspace(0.5, 2.0, 6).astype(np.float32) if weighting == "rows" else np.ones(6, np.float32)
    opts = dict(temperature=0.3, key_log_q=lq, negative_log_q=nlq, key_ids=kid, negative_ids=nid,
                symmetric=symmetric, focal_gamma=0.5)  # fmt: skip

    def objective(q_, k_, n_):
        return jnp.sum(znj.info_nce_loss(q_, k_, negatives=n_, backend="callback", **opts) * c)

    g = jax.grad(objective, argnums=(0, 1, 2))
    if jit:
        g = jax.jit(g)
    gq, gk, gn = g(q, k, n)
    ref = zn.info_nce_loss_and_grad(q, k, negatives=n, grad_loss=c, **opts)
    np.testing.assert_allclose(np.asarray(gq), ref.grad_query, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gk), ref.grad_keys, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gn), ref.grad_negatives, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(objective(q, k, n)), float(np.sum(ref.loss * c)), rtol=1e-5)


def test_info_nce_without_negatives_under_vmap_free_jit():
    rng = np.random.default_rng(6)
    q, k = (rng.standard_normal((5, 3)).astype(np.float32) for _ in range(2))
    gq = jax.jit(jax.grad(lambda q_: jnp.mean(znj.info_nce_loss(q_, k))))(q)
    ref = zn.info_nce_loss_and_grad(q, k, grad_loss=1 / 5)
    np.testing.assert_allclose(np.asarray(gq), ref.grad_query, rtol=2e-5, atol=1e-6)


def test_errors_name_the_argument():
    w, b, x, lab, sv = _data()
    with pytest.raises(TypeError, match="weights"):
        znj.sampled_softmax_loss(w.astype(np.int32), b, lab, x, S, V, sampled_values=sv)
    with pytest.raises(TypeError, match="labels"):
        znj.sampled_softmax_loss(w, b, lab.astype(np.float32), x, S, V, sampled_values=sv)
    with pytest.raises(ValueError, match="inputs"):
        znj.sampled_softmax_loss(w, b, lab, x[:, :3], S, V, sampled_values=sv)
    with pytest.raises(ValueError, match="num_classes"):
        znj.sampled_softmax_loss(w, b, lab, x, S, 10 * V)
    with pytest.raises(ValueError, match="keys"):
        znj.info_nce_loss(x, x[:2])
    with pytest.raises(ValueError, match="temperature"):
        znj.info_nce_loss(x, x, temperature=0.0)


def test_out_of_range_ids_raise_instead_of_clamping():
    # The rows are gathered in JAX, which would clamp; the host callback checks the ids.
    w, b, x, lab, sv = _data()
    bad = lab.copy()
    bad[0, 0] = V + 3
    with pytest.raises(Exception, match="outside"):
        jax.block_until_ready(
            jax.jit(lambda w_: znj.sampled_softmax_loss(w_, b, bad, x, S, V, sampled_values=sv))(w)
        )


def test_only_the_rows_used_reach_the_host(monkeypatch):
    w, b, x, lab, sv = _data()
    seen = []
    orig = zn.sampled_softmax_loss
    # Seen at the native call, which the adapter reaches through its prepared arguments.
    spy_sampled_loss(monkeypatch, lambda name, weights: seen.append(np.asarray(weights).shape))
    got = znj.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv, backend="callback")
    assert seen and seen[0][0] <= B + S < V
    np.testing.assert_allclose(np.asarray(got), orig(w, b, lab, x, S, V, sampled_values=sv), rtol=1e-6)
