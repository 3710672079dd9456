"""zipfnce.jax, backend="jax" (the losses written with jax.numpy) against the native kernels of the NumPy API:
loss and every gradient over the option grid in float64 (1e-9) and float32 (2e-4), no host callback in the
jaxpr, jit, float16/bfloat16 against float32, backend selection and bad input."""

import numpy as np
import pytest
import zipfnce as zn

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
znj = pytest.importorskip("zipfnce.jax")

V, D, B, S = 40, 8, 7, 12


def _x64():
    """float64 inside a context (``jax.enable_x64`` in current JAX, ``jax.experimental`` before)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


# (remove_accidental_hits, subtract_log_q, biases): every option meets every other at least once across the
# parametrised axes without the full product.
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
    return w, b, x, lab, sv


def _dense(sg, shape):
    out = np.zeros(shape, dtype=np.float64)
    np.add.at(out, sg.indices, sg.values)
    return out


def _close(got, want, rtol, atol, what):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol, err_msg=what)


def _loss_and_vjp(f, args, c):
    """The loss and the gradients of ``sum(c * loss)``, in one jitted program (compiling one program is much
    cheaper than the per-operation compilations of an eager call with new shapes)."""

    def run(*a):
        loss, vjp = jax.vjp(f, *a)
        return loss, vjp(jnp.asarray(c, loss.dtype))

    return jax.jit(run)(*args)


def _sampled_pair(nce, dtype, num_true, per_row, hits, log_q, bias, gamma, c):
    """(jax-path loss and gradients, native loss and gradients) for one option set, both as float64."""
    w, b, x, lab, sv = _data(dtype, num_true, per_row)
    b = b if bias else None
    fn = znj.nce_loss if nce else znj.sampled_softmax_loss
    ref_fn = zn.nce_loss_and_grad if nce else zn.sampled_softmax_loss_and_grad
    kw = dict(remove_accidental_hits=hits, subtract_log_q=log_q, focal_gamma=gamma)
    # TensorFlow's triple (the JAX path takes the candidates as arrays).
    svt = (sv.ids, sv.true_expected_count, sv.sampled_expected_count)

    def f(w_, b_, x_):
        return fn(w_, b_, lab, x_, S, V, num_true, svt, backend="jax", **kw)

    loss, (gw, gb, gx) = _loss_and_vjp(f, (w, b, x), c)
    ref = ref_fn(w, b, lab, x, S, V, num_true, svt, grad_loss=c, **kw)
    got = [loss, gx, gw] + ([gb] if bias else [])
    want = [ref.loss, ref.grad_inputs, _dense(ref.grad_weights, w.shape)]
    if bias:
        want.append(_dense(ref.grad_biases, b.shape))
    return got, want


@pytest.mark.parametrize("nce", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("num_true, gamma", [(1, 0.0), (3, 0.7)])
def test_sampled_matches_native_float64(nce, per_row, num_true, gamma):
    c = np.linspace(0.5, 2.0, B)
    with _x64():
        for hits, log_q, bias in _COMBOS:
            got, want = _sampled_pair(nce, np.float64, num_true, per_row, hits, log_q, bias, gamma, c)
            assert got[0].dtype == jnp.float64
            for g, e, name in zip(got, want, ["loss", "grad_inputs", "grad_weights", "grad_biases"]):
                _close(g, e, 1e-9, 1e-12, f"{name} hits={hits} log_q={log_q} bias={bias}")


@pytest.mark.parametrize("nce", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_sampled_matches_native_float32(nce, per_row):
    c = np.linspace(0.5, 2.0, B).astype(np.float32)
    for (hits, log_q, bias), gamma, nt in zip(_COMBOS, [0.0, 0.7, 0.0, 2.0], [1, 3, 2, 1]):
        got, want = _sampled_pair(nce, np.float32, nt, per_row, hits, log_q, bias, gamma, c)
        assert got[0].dtype == jnp.float32
        for g, e, name in zip(got, want, ["loss", "grad_inputs", "grad_weights", "grad_biases"]):
            _close(g, e, 2e-4, 2e-5, f"{name} hits={hits} log_q={log_q} bias={bias} gamma={gamma}")


def _info_data(dtype, seed=5):
    rng = np.random.default_rng(seed)
    q, k = (rng.standard_normal((6, 4)).astype(dtype) for _ in range(2))
    n = rng.standard_normal((3, 4)).astype(dtype)
    lq, nlq = rng.standard_normal(6).astype(dtype), rng.standard_normal(3).astype(dtype)
    kid, nid = np.array([0, 1, 2, 0, 3, 1]), np.array([1, 9, 0])  # duplicate key ids, negatives that hit
    return q, k, n, lq, nlq, kid, nid


def _info_pair(dtype, symmetric, gamma, negatives, masks, c):
    q, k, n, lq, nlq, kid, nid = _info_data(dtype)
    opts = dict(temperature=0.3, symmetric=symmetric, focal_gamma=gamma)
    if masks:
        opts.update(key_log_q=lq, key_ids=kid)
        if negatives:
            opts.update(negative_log_q=nlq, negative_ids=nid)
    nn = n if negatives else None

    def f(q_, k_, n_):
        return znj.info_nce_loss(q_, k_, negatives=n_, backend="jax", **opts)

    loss, (gq, gk, gn) = _loss_and_vjp(f, (q, k, nn), c)
    ref = zn.info_nce_loss_and_grad(q, k, negatives=nn, grad_loss=c, **opts)
    got, want = [loss, gq, gk], [ref.loss, ref.grad_query, ref.grad_keys]
    if negatives:
        got.append(gn)
        want.append(ref.grad_negatives)
    return got, want


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(
    "gamma, negatives, masks", [(0.0, False, True), (1.5, True, True), (0.0, True, False)]
)
def test_info_nce_matches_native(symmetric, gamma, negatives, masks):
    c = np.linspace(0.5, 2.0, 6)
    with _x64():
        got, want = _info_pair(np.float64, symmetric, gamma, negatives, masks, c)
        for g, e, name in zip(got, want, ["loss", "grad_query", "grad_keys", "grad_negatives"]):
            _close(g, e, 1e-9, 1e-12, f"float64 {name}")
    got, want = _info_pair(np.float32, symmetric, gamma, negatives, masks, c.astype(np.float32))
    for g, e, name in zip(got, want, ["loss", "grad_query", "grad_keys", "grad_negatives"]):
        _close(g, e, 2e-4, 2e-5, f"float32 {name}")


def test_info_nce_fully_masked_row_is_zero_not_nan():
    # Two rows with one key id and no negatives: each row's other key is masked, p_ii = 1, loss 0 and a zero
    # (not NaN) gradient also with focal_gamma < 1, whose (1 - p)^g has an infinite slope at p = 1.
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    kid = np.array([4, 4])
    with _x64():
        for g in (0.0, 0.5):
            f = lambda q_, g=g: znj.info_nce_loss(q_, k, key_ids=kid, focal_gamma=g, backend="jax")  # noqa: E731
            loss, vjp = jax.vjp(f, q)
            (gq,) = vjp(jnp.ones(2))
            ref = zn.info_nce_loss_and_grad(q, k, key_ids=kid, focal_gamma=g)
            np.testing.assert_array_equal(np.asarray(loss), ref.loss)
            np.testing.assert_array_equal(np.asarray(gq), ref.grad_query)
            assert np.all(np.asarray(loss) == 0) and np.all(np.isfinite(np.asarray(gq)))


def test_jaxpr_has_no_callback():
    w, b, x, lab, sv = _data(np.float32, 2, False)
    svt = (jnp.asarray(sv.ids), jnp.asarray(sv.true_expected_count), jnp.asarray(sv.sampled_expected_count))
    q, k, n, lq, nlq, kid, nid = _info_data(np.float32)

    def step(backend):
        def f(w_, b_, x_, lab_, svt_, q_, k_, n_):
            a = znj.sampled_softmax_loss(w_, b_, lab_, x_, S, V, 2, svt_, focal_gamma=0.5, backend=backend)
            c = znj.nce_loss(w_, b_, lab_, x_, S, V, 2, svt_, backend=backend)
            i = znj.info_nce_loss(q_, k_, negatives=n_, key_ids=kid, negative_ids=nid, symmetric=True,
                                  backend=backend)  # fmt: skip
            return jnp.sum(a) + jnp.mean(c) + jnp.sum(i)

        return jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2, 5, 6, 7)))(w, b, x, lab, svt, q, k, n)

    text = str(step("jax"))
    assert "callback" not in text
    assert "gather" in text  # the candidate rows are gathered on the device
    assert "pure_callback" in str(step("callback"))  # the probe sees a callback where there is one
    # sampled_values=None with traced labels: the only callback is the draw, which returns no float of the
    # model (ids and expected counts).
    jp = jax.make_jaxpr(lambda w_, l_: znj.sampled_softmax_loss(w_, None, l_, x, S, V, 2, backend="jax"))(
        w, lab
    )
    cbs = [e for e in jp.eqns if "callback" in e.primitive.name]
    assert len(cbs) == 1 and not any(v.aval.shape == w.shape for v in cbs[0].invars)


def test_jit_matches_eager_and_default_sampler():
    w, b, x, lab, sv = _data(np.float32, 1, False)

    def obj(w_, b_, x_):
        return jnp.mean(znj.sampled_softmax_loss(w_, b_, lab, x_, S, V, sampled_values=sv, backend="jax"))

    eager = jax.grad(obj, argnums=(0, 1, 2))(w, b, x)
    jitted = jax.jit(jax.grad(obj, argnums=(0, 1, 2)))(w, b, x)
    for a, e in zip(jitted, eager):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-7)
    # Plain JAX autodiff: forward mode too (a Hessian-vector product of the inputs).
    fx = lambda x_: jnp.sum(
        znj.nce_loss(w, b, lab, x_, S, V, sampled_values=sv, focal_gamma=0.5, backend="jax")
    )  # noqa: E731
    hvp = jax.jvp(jax.grad(fx), (x,), (jnp.ones_like(x),))[1]
    eps = 1e-2  # against a central difference of the gradient
    fd = (jax.grad(fx)(x + eps * jnp.ones_like(x)) - jax.grad(fx)(x - eps * jnp.ones_like(x))) / (2 * eps)
    np.testing.assert_allclose(np.asarray(hvp), np.asarray(fd), rtol=2e-2, atol=2e-3)
    # The default sampler: the same candidates as the native call with the same seed, eager and under jit
    # (where the labels are traced and drawn through one host callback).
    ref = zn.nce_loss(w, b, lab, x, S, V, seed=9)
    got = znj.nce_loss(w, b, lab, x, S, V, seed=9, backend="jax")
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5)
    got = jax.jit(lambda w_, l_: znj.nce_loss(w_, b, l_, x, S, V, seed=9, backend="jax"))(w, lab)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5)


# Half precision. bfloat16 keeps 8 significant bits, so one rounding to it is exact to a relative 2^-8
# (float16: 11 bits, 2^-11). The JAX path computes the logits, loss and gradient sums in float32 from the
# half values and rounds each gradient element once to the input dtype. So against the native float32
# kernels run on the same (half-rounded) values, the loss agrees to float32 accuracy and every gradient
# element to one half-precision rounding: |g - g32| <= 2^-p |g32| (+ the smallest normal for underflow).
_HALF = [("bfloat16", 8, 1e-30), ("float16", 11, 6.2e-5)]


@pytest.mark.parametrize("name, bits, tiny", _HALF)
@pytest.mark.parametrize("which", ["sampled_softmax_loss", "nce_loss", "info_nce_loss"])
def test_half_precision_against_float32(name, bits, tiny, which):
    hdt = jnp.dtype(name)
    c = np.linspace(0.5, 2.0, B).astype(np.float32)
    if which == "info_nce_loss":
        q, k, n, lq, _, kid, _ = _info_data(np.float32)
        qh, kh, nh = (jnp.asarray(a, hdt) for a in (q, k, n))
        c = c[:6]
        loss, grads = _loss_and_vjp(
            lambda a, b_, n_: znj.info_nce_loss(a, b_, negatives=n_, key_log_q=lq, key_ids=kid, focal_gamma=0.5),
            (qh, kh, nh), c,
        )  # fmt: skip
        f32 = [np.asarray(a, np.float32) for a in (qh, kh, nh)]
        ref = zn.info_nce_loss_and_grad(
            f32[0], f32[1], negatives=f32[2], key_log_q=lq, key_ids=kid, focal_gamma=0.5, grad_loss=c
        )
        want = [ref.grad_query, ref.grad_keys, ref.grad_negatives]
    else:
        w, b, x, lab, sv = _data(np.float32, 2, False)
        wh, bh, xh = (jnp.asarray(a, hdt) for a in (w, b, x))
        fn = getattr(znj, which)
        loss, grads = _loss_and_vjp(
            lambda a, b_, x_: fn(a, b_, lab, x_, S, V, 2, sv, focal_gamma=0.5), (wh, bh, xh), c
        )
        w32, b32, x32 = (np.asarray(a, np.float32) for a in (wh, bh, xh))
        ref = getattr(zn, which + "_and_grad")(w32, b32, lab, x32, S, V, 2, sv, focal_gamma=0.5, grad_loss=c)
        want = [_dense(ref.grad_weights, w.shape), _dense(ref.grad_biases, b.shape), ref.grad_inputs]
    assert loss.dtype == jnp.float32  # the loss in float32 ...
    np.testing.assert_allclose(np.asarray(loss), ref.loss, rtol=2e-5, atol=1e-6)
    for g, e in zip(grads, want):
        assert g.dtype == hdt  # ... the gradients in the input dtype
        err = np.abs(np.asarray(g, np.float64) - e)
        bound = 2.0**-bits * np.abs(e) * (1 + 1e-3) + tiny + 1e-6 * np.abs(e).max()
        assert np.all(err <= bound), f"max excess {np.max(err - bound)}"


def test_bfloat16_loss_within_the_rounding_of_its_inputs():
    # Against float32 on the unrounded data: rounding x and w to bfloat16 moves each logit by at most
    # |dz| <= 2 u sum_i |x_i w_i| + u |b| (u = 2^-8, two roundings per product term, one per bias), and the
    # sampled softmax loss lse - z_t moves by at most 2 max |dz| over the row.
    w, b, x, lab, sv = _data(np.float32, 1, False)
    u = 2.0**-8
    got = znj.sampled_softmax_loss(*(jnp.asarray(a, jnp.bfloat16) for a in (w, b)), lab,
                                   jnp.asarray(x, jnp.bfloat16), S, V, sampled_values=sv)  # fmt: skip
    ref = zn.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv)
    cols = np.concatenate([lab, np.broadcast_to(sv.ids, (B, S))], axis=1)
    dz = 2 * u * np.einsum("bd,bjd->bj", np.abs(x), np.abs(w[cols])) + u * np.abs(b[cols])
    assert np.all(np.abs(np.asarray(got) - ref) <= 2 * dz.max(axis=1) * 1.01)


def test_backend_selection(monkeypatch):
    w, b, x, lab, sv = _data(np.float32, 1, False)
    seen = []
    orig = zn._core.sampled_loss
    monkeypatch.setattr(zn._core, "sampled_loss", lambda *a: seen.append(1) or orig(*a))
    znj.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv, backend="jax")
    assert not seen
    znj.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv, backend="callback")
    assert seen
    # auto: small float32 calls on the CPU take the JAX path, large ones the callback (BENCHMARKS.md).
    seen.clear()
    znj.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv)
    assert not seen
    monkeypatch.setattr(znj, "AUTO_CALLBACK_MIN_WORK", 1)
    znj.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv)
    assert seen
    # auto with half precision: always the JAX path.
    seen.clear()
    znj.sampled_softmax_loss(jnp.asarray(w, jnp.bfloat16), None, lab, jnp.asarray(x, jnp.bfloat16), S, V,
                             sampled_values=sv)  # fmt: skip
    assert not seen


def test_bad_input():
    w, b, x, lab, sv = _data(np.float32, 1, False)
    with pytest.raises(ValueError, match="backend"):
        znj.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv, backend="gpu")
    with pytest.raises(ValueError, match="backend"):
        znj.info_nce_loss(x, x, backend="torch")
    with pytest.raises(TypeError, match="backend"):  # the native kernels take float32/float64
        znj.nce_loss(jnp.asarray(w, jnp.bfloat16), None, lab, jnp.asarray(x, jnp.bfloat16), S, V,
                     sampled_values=sv, backend="callback")  # fmt: skip
    for be in ("jax", "callback"):
        with pytest.raises(TypeError, match="inputs.*bfloat16"):
            znj.sampled_softmax_loss(
                w, b, lab, jnp.asarray(x, jnp.bfloat16), S, V, sampled_values=sv, backend=be
            )
        with pytest.raises(TypeError, match="biases.*float16"):
            znj.nce_loss(w, jnp.asarray(b, jnp.float16), lab, x, S, V, sampled_values=sv, backend=be)
        with pytest.raises(TypeError, match="keys"):
            znj.info_nce_loss(x, jnp.asarray(x, jnp.bfloat16), backend=be)
        with pytest.raises(TypeError, match="negatives"):
            znj.info_nce_loss(x, x, negatives=jnp.asarray(x, jnp.float16), backend=be)
        with pytest.raises(TypeError, match="weights"):
            znj.sampled_softmax_loss(w.astype(np.int32), b, lab, x, S, V, sampled_values=sv, backend=be)
        with pytest.raises(ValueError, match="negative_ids"):
            znj.info_nce_loss(x, x, negatives=x, negative_ids=np.arange(B), backend=be)
    bad = lab.copy()
    bad[0, 0] = V + 3
    with pytest.raises(ValueError, match="labels.*outside"):
        jax.jit(lambda w_: znj.sampled_softmax_loss(w_, b, bad, x, S, V, sampled_values=sv, backend="jax"))(w)
    with pytest.raises(ValueError, match="sampled_values.*outside"):
        znj.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=(np.full(S, -1), None, np.ones(S)),
                                 subtract_log_q=False, backend="jax")  # fmt: skip
    # Traced out-of-range labels cannot raise inside jit: their rows get NaN, never another row's value.
    got = jax.jit(lambda l_: znj.sampled_softmax_loss(w, b, l_, x, S, V, sampled_values=sv, backend="jax"))(
        bad
    )
    assert np.isnan(np.asarray(got)[0]) and np.all(np.isfinite(np.asarray(got)[1:]))
