"""InfoNCE (docs/API.md: InfoNCE): parity with an autograd implementation of the formula, numerics, bad input,
memory.

The reference below writes the formula of docs/API.md in torch ops and lets autograd differentiate it (the same
in TensorFlow ops with tf.GradientTape when torch is absent, as in CI, whose test extra has TensorFlow); the native kernel is compared with it over every option and their combinations,
in float32 and float64, on both of the kernel's paths (logits kept between the passes, or recomputed).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zipfnce as zn

try:
    import torch

    # The references are small; torch's OpenMP workers spin after each op and would take the cores from
    # the kernel's own pool (3-4x slower tests on two cores).
    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - depends on the environment
    torch = None
if torch is None:
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        tf = None
else:
    tf = None
needs_autograd = pytest.mark.skipif(torch is None and tf is None, reason="needs torch or tensorflow")

# Sizes that leave partial tiles (the kernel's tiles are 256 x 256) on both axes.
B, N, D = 300, 70, 16


def reference(q, k, n, **kw):
    """docs/API.md: InfoNCE by autograd in float64: (loss, grad_q, grad_k, grad_n)."""
    return reference_torch(q, k, n, **kw) if torch is not None else reference_tf(q, k, n, **kw)


def reference_tf(
    q,
    k,
    n,
    *,
    temperature=0.1,
    key_log_q=None,
    negative_log_q=None,
    key_ids=None,
    negative_ids=None,
    symmetric=False,
    focal_gamma=0.0,
    grad_loss=None,
):
    """The formula in TensorFlow ops, differentiated by tf.GradientTape."""
    f64 = lambda a: tf.constant(np.asarray(a, dtype=np.float64))  # noqa: E731
    tq, tk = tf.Variable(f64(q)), tf.Variable(f64(k))
    tn = None if n is None else tf.Variable(f64(n))
    b = q.shape[0]
    with tf.GradientTape() as tape:
        z = tf.matmul(tq, tk, transpose_b=True) / temperature
        if key_log_q is not None:
            z = z - f64(key_log_q)[None, :]
        if tn is not None:
            zn_ = tf.matmul(tq, tn, transpose_b=True) / temperature
            if negative_log_q is not None:
                zn_ = zn_ - f64(negative_log_q)[None, :]
            z = tf.concat([z, zn_], axis=1)
        mask = np.zeros(z.shape, dtype=bool)
        if key_ids is not None:
            kid = np.asarray(key_ids)
            mask[:, :b] = (kid[None, :] == kid[:, None]) & ~np.eye(b, dtype=bool)
            if negative_ids is not None:
                mask[:, b:] = np.asarray(negative_ids)[None, :] == kid[:, None]
        z = tf.where(mask, tf.constant(-np.inf, tf.float64), z)

        def focal_ce(logits):
            logp = tf.linalg.diag_part(tf.nn.log_softmax(logits, axis=1))
            if focal_gamma == 0:
                return -logp
            return -((1 - tf.exp(logp)) ** focal_gamma) * logp

        loss = focal_ce(z)
        if symmetric:
            loss = (loss + focal_ce(tf.transpose(z[:, :b]))) / 2
        w = tf.ones(b, tf.float64) if grad_loss is None else f64(grad_loss)
        total = tf.reduce_sum(loss * w)
    grads = tape.gradient(total, [tq, tk] + ([] if tn is None else [tn]))
    gn = None if tn is None else grads[2].numpy()
    return loss.numpy(), grads[0].numpy(), grads[1].numpy(), gn


def reference_torch(
    q,
    k,
    n,
    *,
    temperature=0.1,
    key_log_q=None,
    negative_log_q=None,
    key_ids=None,
    negative_ids=None,
    symmetric=False,
    focal_gamma=0.0,
    grad_loss=None,
):
    """The formula in torch ops, differentiated by autograd."""
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)  # noqa: E731
    tq, tk = t(q), t(k)
    tn = None if n is None else t(n)
    b = tq.shape[0]
    z = tq @ tk.T / temperature
    if key_log_q is not None:
        z = z - torch.tensor(key_log_q, dtype=torch.float64)[None, :]
    if tn is not None:
        zn_ = tq @ tn.T / temperature
        if negative_log_q is not None:
            zn_ = zn_ - torch.tensor(negative_log_q, dtype=torch.float64)[None, :]
        z = torch.cat([z, zn_], dim=1)
    mask = torch.zeros(z.shape, dtype=torch.bool)
    if key_ids is not None:
        kid = torch.tensor(key_ids)
        mask[:, :b] = (kid[None, :] == kid[:, None]) & ~torch.eye(b, dtype=torch.bool)
        if negative_ids is not None:
            mask[:, b:] = torch.tensor(negative_ids)[None, :] == kid[:, None]
    z = z.masked_fill(mask, float("-inf"))
    target = torch.arange(b)

    def focal_ce(logits):
        logp = torch.log_softmax(logits, dim=1)[target, target]
        if focal_gamma == 0:
            return -logp
        return -((1 - logp.exp()) ** focal_gamma) * logp

    loss = focal_ce(z)
    if symmetric:
        loss = (loss + focal_ce(z[:, :b].T)) / 2
    w = (
        torch.ones(b, dtype=torch.float64)
        if grad_loss is None
        else torch.tensor(grad_loss, dtype=torch.float64)
    )
    (loss * w).sum().backward()
    gn = None if tn is None else tn.grad.numpy()
    return loss.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), gn


def data(seed, b=B, n=N, d=D, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, d)) * 0.4
    k = rng.standard_normal((b, d)) * 0.4
    negs = rng.standard_normal((n, d)) * 0.4
    return q.astype(dtype), k.astype(dtype), negs.astype(dtype), rng


def assert_close(got, want, dtype, what):
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}"
    rtol = 1e-9 if dtype == np.float64 else 2e-4
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


# Which corrections and masks a case uses: (negatives?, key_log_q?, negative_log_q?, key_ids?, negative_ids?).
OPTION_SETS = [
    (neg, kq, nq, kid, nid)
    for neg, kq, nq, kid, nid in itertools.product([False, True], repeat=5)
    if (neg or not (nq or nid)) and (kid or not nid)
]


@needs_autograd
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("focal_gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("kept", [True, False], ids=["kept", "recomputed"])
def test_parity_with_autograd_over_every_option(dtype, symmetric, focal_gamma, kept):
    q, k, negs, rng = data(7, dtype=dtype)
    key_log_q = np.log(rng.uniform(0.001, 0.5, B))
    negative_log_q = np.log(rng.uniform(0.001, 0.5, N))
    # Duplicate ids make accidental hits among keys and between keys and negatives.
    key_ids = rng.integers(0, 120, B)
    negative_ids = rng.integers(0, 120, N)
    grad_loss = rng.uniform(0.5, 2.0, B)
    budget = None if kept else 0
    for neg, kq, nq, kid, nid in OPTION_SETS:
        kw = dict(
            temperature=0.2,
            key_log_q=key_log_q if kq else None,
            negative_log_q=negative_log_q if nq else None,
            key_ids=key_ids if kid else None,
            negative_ids=negative_ids if nid else None,
            symmetric=symmetric,
            focal_gamma=focal_gamma,
        )
        n = negs if neg else None
        want = reference(q, k, n, grad_loss=grad_loss, **kw)
        got = zn.info_nce_loss_and_grad(q, k, negatives=n, grad_loss=grad_loss, max_logits_bytes=budget, **kw)
        what = f"neg={neg} key_log_q={kq} negative_log_q={nq} key_ids={kid} negative_ids={nid}"
        assert_close(got.loss, want[0], dtype, "loss " + what)
        assert_close(got.grad_query, want[1], dtype, "grad_query " + what)
        assert_close(got.grad_keys, want[2], dtype, "grad_keys " + what)
        if neg:
            assert_close(got.grad_negatives, want[3], dtype, "grad_negatives " + what)
        else:
            assert got.grad_negatives is None
        loss = zn.info_nce_loss(q, k, negatives=n, max_logits_bytes=budget, **kw)
        np.testing.assert_array_equal(loss, got.loss)


def test_defaults_match_the_plain_cross_entropy():
    from scipy.special import logsumexp

    q, k, _, _ = data(1, b=50)
    logits = q @ k.T / 0.1
    want = logsumexp(logits, axis=1) - np.diag(logits)
    np.testing.assert_allclose(zn.info_nce_loss(q, k), want, rtol=1e-12)


@pytest.mark.skipif(torch is None or tf is not None, reason="checks the TF reference against torch's")
def test_the_tensorflow_reference_agrees_with_torch():
    # The TF reference stands in for torch where torch is absent: make sure it computes the same formula.
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pytest.skip("tensorflow is not installed")
    global tf
    import tensorflow as tf_mod

    tf = tf_mod
    try:
        q, k, negs, rng = data(10, b=40, n=9)
        kw = dict(
            temperature=0.3,
            key_log_q=rng.uniform(-3, 0, 40),
            negative_log_q=rng.uniform(-3, 0, 9),
            key_ids=rng.integers(0, 20, 40),
            negative_ids=rng.integers(0, 20, 9),
            symmetric=True,
            focal_gamma=0.5,
            grad_loss=rng.uniform(0.5, 2, 40),
        )
        for a, b in zip(reference_tf(q, k, negs, **kw), reference_torch(q, k, negs, **kw)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    finally:
        tf = None


@needs_autograd
@pytest.mark.parametrize("grad_loss", [None, 2.5, "rows"])
def test_grad_loss_weights_the_rows(grad_loss):
    q, k, negs, rng = data(2, b=40, n=9)
    gl = rng.uniform(-1, 1, 40) if grad_loss == "rows" else grad_loss
    want = reference(q, k, negs, grad_loss=None if gl is None else np.broadcast_to(gl, (40,)))
    got = zn.info_nce_loss_and_grad(q, k, negatives=negs, grad_loss=gl)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("focal_gamma", [0.0, 0.5])
def test_rows_with_every_negative_masked_have_zero_loss_and_no_nan(dtype, symmetric, focal_gamma):
    q, k, negs, _ = data(3, b=12, n=5, dtype=dtype)
    same = np.full(12, 7)  # every key is a duplicate of every row's positive
    for budget in (None, 0):
        # Every other column masked, in both directions: only the target is left, p = 1.
        g = zn.info_nce_loss_and_grad(
            q,
            k,
            negatives=negs,
            key_ids=same,
            negative_ids=np.full(5, 7),
            symmetric=symmetric,
            focal_gamma=focal_gamma,
            max_logits_bytes=budget,
        )
        for a in g:
            assert (a == 0).all()
        # Negatives 3 and 4 have other ids and stay: finite positive losses, and exactly zero gradient for
        # the three masked negatives.
        g = zn.info_nce_loss_and_grad(
            q,
            k,
            negatives=negs,
            key_ids=same,
            negative_ids=[7, 7, 7, 1, 2],
            symmetric=symmetric,
            focal_gamma=focal_gamma,
            max_logits_bytes=budget,
        )
        for a in g:
            assert np.isfinite(a).all()
        assert (g.loss > 0).all()
        assert (g.grad_negatives[:3] == 0).all() and (g.grad_negatives[3:] != 0).all()


def test_masked_columns_get_exactly_zero_gradient():
    q, k, negs, _ = data(4, b=6, n=3)
    key_ids = np.array([0, 1, 2, 3, 4, 5])
    negative_ids = np.array([0, 0, 0])  # masked for row 0 only
    g = zn.info_nce_loss_and_grad(
        q,
        k,
        negatives=negs,
        key_ids=key_ids,
        negative_ids=negative_ids,
        grad_loss=np.array([1.0, 0, 0, 0, 0, 0]),
    )
    # Only row 0 has weight and it masks every negative: the negatives' gradient is exactly zero.
    assert (g.grad_negatives == 0).all()
    g = zn.info_nce_loss_and_grad(
        q,
        k,
        negatives=negs,
        key_ids=key_ids,
        negative_ids=negative_ids,
        grad_loss=np.array([0, 1.0, 0, 0, 0, 0]),
    )
    assert (np.abs(g.grad_negatives).sum(axis=1) > 0).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_kept_and_recomputed_logits_give_the_same_numbers(symmetric):
    q, k, negs, rng = data(5, b=700, n=300, d=64, dtype=np.float32)
    kw = dict(
        negatives=negs,
        key_ids=rng.integers(0, 500, 700),
        negative_ids=rng.integers(0, 500, 300),
        key_log_q=rng.uniform(-8, -1, 700),
        symmetric=symmetric,
        focal_gamma=1.0,
        temperature=0.05,
    )
    kept = zn.info_nce_loss_and_grad(q, k, max_logits_bytes=700 * 1000 * 4, **kw)
    recomputed = zn.info_nce_loss_and_grad(q, k, max_logits_bytes=700 * 1000 * 4 - 1, **kw)
    # Identical logit tiles and the same online log-sum-exp: the same loss to the bit.
    np.testing.assert_array_equal(kept.loss, recomputed.loss)
    # The gradients add the same products in another order.
    for a, b in zip(kept[1:], recomputed[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))


def test_results_do_not_depend_on_the_thread_count():
    q, k, negs, rng = data(6, b=600, n=100, d=32, dtype=np.float32)
    before = zn.get_num_threads()
    try:
        out = []
        for nt in (1, 2, 3):
            zn.set_num_threads(nt)
            for budget in (None, 0):
                out.append(
                    zn.info_nce_loss_and_grad(q, k, negatives=negs, symmetric=True, max_logits_bytes=budget)
                )
    finally:
        zn.set_num_threads(before)
    for other in out[2:]:
        ref = out[0] if other is out[2] or other is out[4] else out[1]
        for a, b in zip(ref, other):
            np.testing.assert_array_equal(a, b)


def test_dtype_of_query_decides():
    q, k, negs, _ = data(8, b=20, n=4)
    g = zn.info_nce_loss_and_grad(q.astype(np.float32), k, negatives=negs, key_log_q=np.zeros(20, np.float64))
    assert all(a.dtype == np.float32 for a in g)
    want = zn.info_nce_loss_and_grad(
        q.astype(np.float32), k.astype(np.float32), negatives=negs.astype(np.float32)
    )
    np.testing.assert_array_equal(g.loss, want.loss)
    g64 = zn.info_nce_loss_and_grad(q, k.astype(np.float32), negatives=negs.astype(np.float16))
    assert all(a.dtype == np.float64 for a in g64)
    # Non-contiguous and list inputs are accepted.
    lst = zn.info_nce_loss(np.asfortranarray(q), k.tolist())
    np.testing.assert_allclose(lst, zn.info_nce_loss(q, k), rtol=1e-15)


def test_symmetric_ignores_key_log_q_in_the_key_to_query_direction():
    # In the transposed block, key i's correction is the same for its whole column and cancels: only the
    # query-to-key half of the loss moves when the corrections change.
    q, k, _, rng = data(9, b=30)
    lq = rng.uniform(-5, -1, 30)
    row = zn.info_nce_loss(q, k, key_log_q=lq)
    row0 = zn.info_nce_loss(q, k)
    sym = zn.info_nce_loss(q, k, key_log_q=lq, symmetric=True)
    sym0 = zn.info_nce_loss(q, k, symmetric=True)
    np.testing.assert_allclose(sym - sym0, (row - row0) / 2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, exc, arg",
    [
        (dict(keys=np.zeros((5, 3))), ValueError, "keys"),
        (dict(keys=np.zeros((4, 4))), ValueError, "keys"),
        (dict(query=np.zeros(12)), ValueError, "query"),
        (dict(query=np.zeros((0, 3)), keys=np.zeros((0, 3))), ValueError, "query"),
        (dict(query=np.zeros((4, 0)), keys=np.zeros((4, 0))), ValueError, "query"),
        (dict(query=np.ones((4, 3), dtype=np.int64)), TypeError, "query"),
        # float16 query (half precision, issue 14) with float64 keys: half dtypes are not mixed.
        (dict(query=np.ones((4, 3), dtype=np.float16)), TypeError, "keys"),
        (dict(query=np.ones((4, 3), dtype=np.complex128)), TypeError, "query"),
        (dict(keys=np.ones((4, 3), dtype=np.int32)), TypeError, "keys"),
        (dict(keys=[["a"] * 3] * 4), TypeError, "keys"),
        (dict(negatives=np.zeros((5, 2))), ValueError, "negatives"),
        (dict(negatives=np.zeros(6)), ValueError, "negatives"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-0.5), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(temperature="0.1"), TypeError, "temperature"),
        (dict(temperature=1e-320), ValueError, "temperature"),
        (dict(focal_gamma=-1.0), ValueError, "focal_gamma"),
        (dict(focal_gamma=float("nan")), ValueError, "focal_gamma"),
        (dict(key_log_q=np.zeros(3)), ValueError, "key_log_q"),
        (dict(key_log_q=np.zeros((4, 1))), ValueError, "key_log_q"),
        (dict(key_log_q=np.array([0, np.nan, 0, 0])), ValueError, "key_log_q"),
        (dict(key_log_q=np.array([0, -np.inf, 0, 0])), ValueError, "key_log_q"),
        (dict(key_log_q=np.array(["a"] * 4)), TypeError, "key_log_q"),
        (dict(negatives=np.zeros((5, 3)), negative_log_q=np.zeros(4)), ValueError, "negative_log_q"),
        (dict(negative_log_q=np.zeros(5)), ValueError, "negative_log_q"),
        (dict(key_ids=np.arange(5)), ValueError, "key_ids"),
        (dict(key_ids=np.arange(4.0) + 0.5), TypeError, "key_ids"),
        (
            dict(negatives=np.zeros((5, 3)), key_ids=np.arange(4), negative_ids=np.arange(4)),
            ValueError,
            "negative_ids",
        ),
        (dict(negatives=np.zeros((5, 3)), negative_ids=np.arange(5)), ValueError, "negative_ids"),
        (dict(negative_ids=np.arange(5)), ValueError, "negative_ids"),
        (dict(symmetric="yes"), TypeError, "symmetric"),
        (dict(query=np.array([[1.0, np.nan, 0]] * 4)), ValueError, "query"),
        (dict(keys=np.array([[1.0, np.inf, 0]] * 4)), ValueError, "keys"),
        (dict(negatives=np.array([[1.0, np.nan, 0]])), ValueError, "negatives"),
        (dict(max_logits_bytes=-1), ValueError, "max_logits_bytes"),
        (dict(max_logits_bytes=1.5), TypeError, "max_logits_bytes"),
        (dict(grad_loss=np.ones(3)), ValueError, "grad_loss"),
        (dict(grad_loss=np.array([1.0, np.nan, 1, 1])), ValueError, "grad_loss"),
        (dict(grad_loss="x"), TypeError, "grad_loss"),
        # Finite embeddings whose logits overflow float64.
        (dict(query=np.full((4, 3), 1e300), keys=np.full((4, 3), 1e300)), ValueError, "query"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, exc, arg):
    args = dict(query=np.ones((4, 3)), keys=np.ones((4, 3)))
    args.update(kwargs)
    query, keys = args.pop("query"), args.pop("keys")
    with pytest.raises(exc, match=f"^{arg}"):
        zn.info_nce_loss_and_grad(query, keys, **args)
    if "grad_loss" not in args:
        with pytest.raises(exc, match=f"^{arg}"):
            zn.info_nce_loss(query, keys, **args)


def test_the_native_binding_rejects_mismatched_dtypes_itself():
    # The Python layer converts every float argument to the dtype of query; the binding checks again.
    from zipfnce import _core

    q = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="^keys"):
        _core.info_nce(q, np.ones((4, 3)), None, 0.1, None, None, None, None, False, 0.0, None, True, 0)
    with pytest.raises(TypeError, match="^query"):
        _core.info_nce(q.astype(np.int32), q, None, 0.1, None, None, None, None, False, 0.0, None, True, 0)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import numpy as np, zipfnce as zn, json, sys
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    b, d, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    q = rng.standard_normal((b, d), dtype=np.float32)
    k = rng.standard_normal((b, d), dtype=np.float32)
    negs = rng.standard_normal((n, d), dtype=np.float32)
    zn.info_nce_loss_and_grad(q[:8], k[:8])  # start the pool, load everything
    with open("/proc/self/clear_refs", "w") as f:  # the peak so far becomes the current size
        f.write("5")
    before = hwm()
    g = zn.info_nce_loss_and_grad(q, k, negatives=negs, symmetric=True)
    print(json.dumps(dict(growth=hwm() - before, finite=bool(np.isfinite(g.loss).all()))))
    """
)


def test_peak_memory_stays_flat_when_the_logits_do_not_fit():
    # B x (B + N) float32 logits would take 12288 x 14336 x 4 = 672 MiB, over the default 256 MiB budget,
    # so the kernel recomputes them: its peak memory above the inputs is the outputs (3 x 1.5 MiB of
    # gradients) plus O(B + N) statistics and a 256 KiB tile per thread.
    b, d, n = 12288, 32, 2048
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(b), str(d), str(n)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ZIPFNCE_NUM_THREADS": "2"},
    )
    assert out.returncode == 0, out.stderr
    import json

    r = json.loads(out.stdout)
    assert r["finite"]
    assert r["growth"] < 32 * 2**20, f"peak grew by {r['growth'] / 2**20:.1f} MiB"
