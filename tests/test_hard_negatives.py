"""Hard-negative mining (num_hard_negatives) on the InfoNCE loss: against a straightforward NumPy reference
(every logit, top-h, softmax) for values and gradients, float32 and float64, masks and log-q; the torch and JAX
adapters; bad h."""

from __future__ import annotations

import numpy as np
import pytest
import zipfnce as zn


def _data(b=37, n=23, d=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, d)).astype(dtype)
    k = rng.normal(size=(b, d)).astype(dtype)
    neg = rng.normal(size=(n, d)).astype(dtype)
    kq = rng.normal(size=b) - 3
    nq = rng.normal(size=n) - 4
    kid = rng.integers(0, 15, b)
    nid = rng.integers(0, 15, n)
    return q, k, neg, kq, nq, kid, nid


def reference(q, k, neg, h, t, kq=None, nq=None, kid=None, nid=None, gamma=0.0, gl=None):
    """Top-h then softmax, with dense matrices (float64)."""
    q, k = q.astype(np.float64), k.astype(np.float64)
    x = k if neg is None else np.vstack([k, neg.astype(np.float64)])
    b, w = q.shape[0], x.shape[0]
    corr = np.zeros(w)
    if kq is not None:
        corr[:b] = kq
    if nq is not None:
        corr[b:] = nq
    z = q @ x.T / t - corr
    ids = None if kid is None else np.r_[kid, nid if nid is not None else np.full(w - b, -1)]
    gl = np.ones(b) if gl is None else gl
    loss, gz = np.zeros(b), np.zeros((b, w))
    for i in range(b):
        cols = [c for c in range(w) if c != i and (ids is None or ids[c] != kid[i])]
        order = sorted(cols, key=lambda c: (-z[i, c], c))[:h]
        kept = np.array([i] + order)
        zz = z[i, kept]
        lse = zz.max() + np.log(np.exp(zz - zz.max()).sum())
        p = np.exp(zz - lse)
        loss[i] = -((1 - p[0]) ** gamma) * (zz[0] - lse)
        c = (
            1.0
            if gamma == 0
            else (1 - p[0]) ** gamma - gamma * p[0] * (1 - p[0]) ** (gamma - 1) * np.log(p[0])
        )
        g = gl[i] * c * p
        g[0] -= gl[i] * c
        gz[i, kept] = g
    gq = gz @ x / t
    gx = gz.T @ q / t
    return loss, gq, gx[:b], (gx[b:] if neg is not None else None)


@pytest.mark.parametrize("h", [1, 4, 30, 59])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_top_h_then_softmax_reference(h, gamma, dtype):
    q, k, neg, kq, nq, kid, nid = _data(dtype=dtype)
    gl = np.linspace(0.5, 1.5, q.shape[0])
    kw = dict(
        temperature=0.3, key_log_q=kq, negative_log_q=nq, key_ids=kid, negative_ids=nid, focal_gamma=gamma
    )
    got = zn.info_nce_loss_and_grad(q, k, negatives=neg, num_hard_negatives=h, grad_loss=gl, **kw)
    want = reference(q, k, neg, h, 0.3, kq, nq, kid, nid, gamma, gl)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, **tol)
    loss = zn.info_nce_loss(q, k, negatives=neg, num_hard_negatives=h, **kw)
    np.testing.assert_array_equal(loss, got.loss)


def test_without_extra_negatives_and_without_masks():
    q, k, _, _, _, _, _ = _data(b=300, d=9, seed=3)
    got = zn.info_nce_loss_and_grad(q, k, num_hard_negatives=7, temperature=0.5)
    want = reference(q, k, None, 7, 0.5)
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    assert got.grad_negatives is None


def test_all_negatives_kept_equals_the_plain_loss():
    q, k, neg, kq, nq, kid, nid = _data()
    kw = dict(negatives=neg, key_log_q=kq, negative_log_q=nq, key_ids=kid, negative_ids=nid)
    plain = zn.info_nce_loss_and_grad(q, k, **kw)
    hard = zn.info_nce_loss_and_grad(q, k, num_hard_negatives=q.shape[0] - 1 + neg.shape[0], **kw)
    for a, b in zip(hard, plain):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gradient_flows_only_through_kept_columns():
    q, k, neg, *_ = _data(b=8, n=4)
    g = zn.info_nce_loss_and_grad(q, k, negatives=neg, num_hard_negatives=2, grad_loss=np.eye(8)[0])
    z = q[0] @ np.vstack([k, neg]).T / 0.1
    others = [c for c in range(12) if c != 0]
    kept = sorted(others, key=lambda c: -z[c])[:2]
    x_grad = np.vstack([g.grad_keys, g.grad_negatives])
    nonzero = {c for c in range(12) if np.any(x_grad[c] != 0)}
    assert nonzero == {0, *kept}


@pytest.mark.parametrize(
    "h, kw, exc",
    [
        (38 - 1 + 23, {}, ValueError),  # one more than B - 1 + N
        (0, {}, ValueError),
        (-3, {}, ValueError),
        (2.0, {}, TypeError),
        (True, {}, TypeError),
        (3, {"symmetric": True}, ValueError),
    ],
)
def test_bad_h_names_num_hard_negatives(h, kw, exc):
    q, k, neg, *_ = _data()
    with pytest.raises(exc, match="num_hard_negatives"):
        zn.info_nce_loss(q, k, negatives=neg, num_hard_negatives=h, **kw)
    with pytest.raises(exc, match="num_hard_negatives"):
        zn.info_nce_loss_and_grad(q, k, negatives=neg, num_hard_negatives=h, **kw)


def test_too_large_h_without_negatives():
    q, k, *_ = _data(b=5)
    with pytest.raises(ValueError, match="num_hard_negatives: 5 is larger"):
        zn.info_nce_loss(q, k, num_hard_negatives=5)
    zn.info_nce_loss(q, k, num_hard_negatives=4)


def test_torch_adapter_matches_numpy():
    torch = pytest.importorskip("torch")
    import zipfnce.torch as znt

    q, k, neg, kq, nq, kid, nid = _data()
    kw = dict(key_log_q=kq, negative_log_q=nq, key_ids=kid, negative_ids=nid, temperature=0.2)
    want = zn.info_nce_loss_and_grad(q, k, negatives=neg, num_hard_negatives=5, **kw)
    qt, kt, nt = (torch.tensor(a, requires_grad=True) for a in (q, k, neg))  # CPU tensors
    loss = znt.info_nce_loss(qt, kt, negatives=nt, num_hard_negatives=5, reduction="sum", **kw)
    loss.backward()
    np.testing.assert_allclose(loss.item(), want.loss.sum(), rtol=1e-12)
    for t, w in ((qt, want.grad_query), (kt, want.grad_keys), (nt, want.grad_negatives)):
        np.testing.assert_allclose(t.grad.numpy(), w, rtol=1e-10, atol=1e-12)
    mod = znt.InfoNCELoss(temperature=0.2)
    kw.pop("temperature")
    np.testing.assert_allclose(
        mod(qt, kt, nt, num_hard_negatives=5, **kw).item(), want.loss.mean(), rtol=1e-12
    )
    with pytest.raises(ValueError, match="num_hard_negatives"):
        znt.info_nce_loss(qt, kt, negatives=nt, num_hard_negatives=100)


def test_jax_adapter_matches_numpy():
    jax = pytest.importorskip("jax")
    import zipfnce.jax as znj

    q, k, neg, kq, nq, kid, nid = _data(dtype=np.float32)
    kw = dict(key_log_q=kq, negative_log_q=nq, key_ids=kid, negative_ids=nid, temperature=0.2)
    want = zn.info_nce_loss_and_grad(q, k, negatives=neg, num_hard_negatives=6, **kw)

    def total(q_, k_, n_):
        return znj.info_nce_loss(q_, k_, negatives=n_, num_hard_negatives=6, **kw).sum()

    val, grads = jax.value_and_grad(total, argnums=(0, 1, 2))(q, k, neg)
    np.testing.assert_allclose(float(val), want.loss.sum(), rtol=1e-5)
    for g, w in zip(grads, want[1:]):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(lambda a, b, c: znj.info_nce_loss(a, b, negatives=c, num_hard_negatives=6, **kw))
    np.testing.assert_allclose(np.asarray(jitted(q, k, neg)), want.loss, rtol=1e-6)
    with pytest.raises(ValueError, match="num_hard_negatives"):
        znj.info_nce_loss(q, k, negatives=neg, num_hard_negatives=100)


# --- the sampled softmax ---------------------------------------------------------------------------------


def _sampled_reference(w, bias, lab, x, ids, te, se, h, per_row):
    """Keep the true columns and the h best unmasked candidates (after bias, log-q, mask), softmax; dense
    gradients by loops (float64)."""
    bsz, nt = lab.shape
    loss, gx, gw, gb = np.zeros(bsz), np.zeros_like(x), np.zeros_like(w), np.zeros_like(bias)
    for r in range(bsz):
        cand = ids[r] if per_row else ids
        cq = se[r] if per_row else se
        zt = w[lab[r]] @ x[r] + bias[lab[r]] - np.log(te[r])
        zs = w[cand] @ x[r] + bias[cand] - np.log(cq)
        ok = [j for j in range(len(cand)) if cand[j] not in lab[r]]
        keep = sorted(ok, key=lambda j: (-zs[j], j))[:h]
        z = np.r_[zt, zs[keep]]
        cls = np.r_[lab[r], cand[keep]]
        lse = z.max() + np.log(np.exp(z - z.max()).sum())
        y = np.r_[np.full(nt, 1.0 / nt), np.zeros(len(keep))]
        loss[r] = (y * (lse - z)).sum()
        dz = np.exp(z - lse) - y
        gx[r] = dz @ w[cls]
        for c, g in zip(cls, dz):
            gw[c] += g * x[r]
            gb[c] += g
    return loss, gx, gw, gb


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("h", [1, 5, 12])
def test_sampled_softmax_hard_negatives_match_the_reference(per_row, h):
    rng = np.random.default_rng(7)
    v, d, bsz, nt, s = 40, 6, 9, 2, 12
    w, bias, x = rng.normal(size=(v, d)), rng.normal(size=v) * 0.1, rng.normal(size=(bsz, d))
    lab = rng.integers(0, 8, (bsz, nt))  # frequent classes: accidental hits
    sampler = zn.UniformSampler(v, seed=3)
    cs = (
        sampler.sample_per_row(lab, s, unique=True, seed=1)
        if per_row
        else sampler.sample(s, unique=True, true_classes=lab, seed=1)
    )
    got = zn.sampled_softmax_loss_and_grad(w, bias, lab, x, s, v, nt, cs, num_hard_negatives=h)
    want = _sampled_reference(
        w, bias, lab, x, cs.ids, cs.true_expected_count.astype(np.float64),
        cs.sampled_expected_count.astype(np.float64), h, per_row,
    )  # fmt: skip
    np.testing.assert_allclose(got.loss, want[0], rtol=1e-5)  # expected counts are float32
    np.testing.assert_allclose(got.grad_inputs, want[1], rtol=1e-5, atol=1e-8)
    gw = np.zeros_like(w)
    gw[got.grad_weights.indices] = got.grad_weights.values
    gb = np.zeros_like(bias)
    gb[got.grad_biases.indices] = got.grad_biases.values
    np.testing.assert_allclose(gw, want[2], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gb, want[3], rtol=1e-5, atol=1e-8)
    loss = zn.sampled_softmax_loss(w, bias, lab, x, s, v, nt, cs, num_hard_negatives=h)
    np.testing.assert_array_equal(loss, got.loss)
    if h == s:
        plain = zn.sampled_softmax_loss(w, bias, lab, x, s, v, nt, cs)
        np.testing.assert_allclose(loss, plain, rtol=1e-12)


def test_sampled_softmax_bad_h():
    rng = np.random.default_rng(0)
    w, x, lab = rng.normal(size=(30, 4)), rng.normal(size=(3, 4)), np.array([1, 2, 3])
    for h, exc in ((11, ValueError), (0, ValueError), (1.5, TypeError)):
        with pytest.raises(exc, match="num_hard_negatives"):
            zn.sampled_softmax_loss(w, None, lab, x, 10, 30, num_hard_negatives=h)
    with pytest.raises(ValueError, match="num_hard_negatives"):
        zn._losses.prepare(True, w, None, lab, x, 10, 30, 1, None, False, None, True, 0.0, 3)


def test_ties_go_to_the_lower_column_as_tf_top_k():
    rng = np.random.default_rng(5)
    q = rng.normal(size=(6, 3))
    k = rng.normal(size=(6, 3))
    k[4] = k[2] = k[5]  # three identical keys: equal logits in every other row
    g = zn.info_nce_loss_and_grad(q, k, num_hard_negatives=1, grad_loss=np.eye(6)[0])
    z = q[0] @ k.T
    best = max(range(1, 6), key=lambda c: (z[c], -c))
    assert np.count_nonzero(np.any(g.grad_keys[1:] != 0, axis=1)) == 1
    assert np.any(g.grad_keys[best] != 0)
