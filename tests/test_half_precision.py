"""Half precision in the native losses (issue 14, item 2): float16 and ml_dtypes.bfloat16 tables, inputs and
InfoNCE embeddings are read as storage and widened to float32, so

- on the same (rounded) values, a half call gives *bit for bit* the float32 call: the loss equal, every
  gradient equal to the float32 gradient rounded to the half type (round to nearest even, which is what
  NumPy's and ml_dtypes' ``astype`` do);
- against float32 on unrounded values, the difference is bounded by the rounding of the operands (the bound
  is computed from the data below, not guessed);
- gradients have their argument's dtype, the loss is float32, the table is passed in place, and mixed half
  dtypes are a TypeError naming the argument.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zipfnce as zn

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # ml_dtypes is optional: the bfloat16 cases skip without it
    BF16 = None

HALF = [
    pytest.param(np.dtype(np.float16), id="float16"),
    pytest.param(BF16, id="bfloat16", marks=pytest.mark.skipif(BF16 is None, reason="needs ml_dtypes")),
]
# Unit roundoff of each type (half the gap above 1): 2^-11 for float16 (11-bit significand), 2^-8 for
# bfloat16 (8-bit significand).
UNIT = {"float16": 2.0**-11, "bfloat16": 2.0**-8}

LOSSES = {
    "softmax": (zn.sampled_softmax_loss, zn.sampled_softmax_loss_and_grad),
    "nce": (zn.nce_loss, zn.nce_loss_and_grad),
}


def _problem(v=300, d=24, b=32, nt=1, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((v, d)) * 0.4).astype(np.float32)
    bias = (rng.standard_normal(v) * 0.3).astype(np.float32)
    x = rng.standard_normal((b, d)).astype(np.float32)
    labels = np.stack([rng.choice(v, nt, replace=False) for _ in range(b)]).astype(np.int64)
    return w, bias, x, labels


def _candidates(labels, v, s, per_row):
    sampler = zn.LogUniformSampler(v, seed=11)
    if per_row:
        return sampler.sample_per_row(labels, s)
    return sampler.sample(s, true_classes=labels)


@pytest.mark.parametrize("hd", HALF)
@pytest.mark.parametrize("loss", ["softmax", "nce"])
@pytest.mark.parametrize("per_row", [False, True], ids=["shared", "per_row"])
@pytest.mark.parametrize("nt,gamma,with_bias", [(1, 0.0, True), (2, 0.0, False), (1, 1.5, True)])
def test_half_matches_float32_bit_for_bit_on_the_same_values(hd, loss, per_row, nt, gamma, with_bias):
    v, s = 300, 40
    w, bias, x, labels = _problem(v=v, nt=nt)
    wh, bh, xh = w.astype(hd), bias.astype(hd), x.astype(hd)
    # The float32 twins hold exactly the half values (widening is exact).
    w32, b32, x32 = wh.astype(np.float32), bh.astype(np.float32), xh.astype(np.float32)
    sv = _candidates(labels, v, s, per_row)
    f, fg = LOSSES[loss]
    kw = dict(num_true=nt, sampled_values=sv, remove_accidental_hits=True, focal_gamma=gamma)
    c = np.linspace(-1.0, 2.0, labels.shape[0]).astype(np.float32)
    for inputs, inputs32 in [(xh, x32), (x32, x32)]:  # half inputs, and float32 inputs with a half table
        half = fg(wh, bh if with_bias else None, labels, inputs, s, v, grad_loss=c, **kw)
        ref = fg(w32, b32 if with_bias else None, labels, inputs32, s, v, grad_loss=c, **kw)
        assert half.loss.dtype == np.float32
        np.testing.assert_array_equal(half.loss, ref.loss)
        assert half.grad_inputs.dtype == inputs.dtype
        np.testing.assert_array_equal(half.grad_inputs, ref.grad_inputs.astype(inputs.dtype))
        assert half.grad_weights.values.dtype == hd
        np.testing.assert_array_equal(half.grad_weights.indices, ref.grad_weights.indices)
        np.testing.assert_array_equal(half.grad_weights.values, ref.grad_weights.values.astype(hd))
        if with_bias:
            assert half.grad_biases.values.dtype == hd
            np.testing.assert_array_equal(half.grad_biases.values, ref.grad_biases.values.astype(hd))
        else:
            assert half.grad_biases is None
        np.testing.assert_array_equal(f(wh, bh if with_bias else None, labels, inputs, s, v, **kw), ref.loss)


def _logit_error_bound(x, w, bias, ids, u):
    """max over rows and classes ``ids`` of the change of a logit when x, w and bias are rounded with unit
    roundoff ``u``: x(1+a)·w(1+b) - x·w ≤ (2u + u²) Σ|x_i w_i| per product, and u|bias| for the bias."""
    prod = np.abs(x.astype(np.float64)) @ np.abs(w[ids].astype(np.float64)).T  # [B, len(ids)]
    return float(((2 * u + u * u) * prod + u * np.abs(bias[ids].astype(np.float64))).max())


@pytest.mark.parametrize("hd", HALF)
def test_half_against_unrounded_float32_within_the_rounding_bound(hd):
    """Softmax: the loss ``lse(z) - z_t`` moves by at most ``2 max|Δz|`` (both terms are 1-Lipschitz in the
    max norm); NCE: ``sum_j softplus(±z_j)`` by at most ``sum_j |Δz_j| ≤ (S + 1) max|Δz|``. The bound holds
    whatever the data; a 1e-5 relative slack covers float32's own rounding of the two computations."""
    v, s, b = 500, 64, 48
    w, bias, x, labels = _problem(v=v, b=b, d=64, seed=3)
    sv = _candidates(labels, v, s, False)
    ids = np.unique(np.concatenate([labels.ravel(), np.asarray(sv[0])]))
    dz = _logit_error_bound(x, w, bias, ids, UNIT[hd.name])
    for loss, cols in [("softmax", 2), ("nce", s + 1)]:
        f = LOSSES[loss][0]
        got = f(w.astype(hd), bias.astype(hd), labels, x.astype(hd), s, v, sampled_values=sv)
        want = f(w, bias, labels, x, s, v, sampled_values=sv)
        err = np.abs(got.astype(np.float64) - want)
        assert err.max() <= cols * dz + 1e-5 * np.abs(want).max(), (loss, err.max(), dz)
        # And the bound is not vacuous: the half loss does differ (the operands were rounded).
        assert err.max() > 0


def test_the_table_is_passed_in_place(monkeypatch):
    """A half table, contiguous or a strided view, reaches the core as a uint16 view of the caller's memory:
    never a float32 (or any) copy."""
    if BF16 is None:
        pytest.skip("needs ml_dtypes")
    seen = []
    orig = zn._core.sampled_loss

    def spy(*a, **k):
        seen.append((a[1], a[2], k.get("storage")))
        return orig(*a, **k)

    monkeypatch.setattr(zn._core, "sampled_loss", spy)
    w, bias, x, labels = _problem(v=200, d=32)
    big = w.astype(BF16)
    bb = bias.astype(BF16)
    sv = _candidates(labels, 200, 30, False)
    for table in [big, big[:, ::2], big[::3]]:
        bias_t = bb[: table.shape[0]]
        xt = x[:, : table.shape[1]]
        zn.sampled_softmax_loss_and_grad(table, bias_t, labels % table.shape[0], xt, 30, table.shape[0],
                                         sampled_values=(sv[0] % table.shape[0], sv[1], sv[2]))  # fmt: skip
        passed_w, passed_b, tag = seen[-1]
        assert tag == "bfloat16" and passed_w.dtype == np.uint16
        assert np.shares_memory(passed_w, big) and np.shares_memory(passed_b, bb)


def test_strided_half_tables_match_contiguous_ones():
    w, bias, x, labels = _problem(v=200, d=32)
    hd = np.dtype(np.float16)
    wide = np.zeros((400, 64), dtype=hd)
    wide[::2, ::2] = w.astype(hd)[:, :]
    view = wide[::2, ::2]
    assert not view.flags.c_contiguous
    sv = _candidates(labels, 200, 30, False)
    a = zn.sampled_softmax_loss_and_grad(view, bias.astype(hd), labels, x, 30, 200, sampled_values=sv)
    b = zn.sampled_softmax_loss_and_grad(np.ascontiguousarray(view), bias.astype(hd), labels, x, 30, 200,
                                         sampled_values=sv)  # fmt: skip
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.grad_weights.values, b.grad_weights.values)


@pytest.mark.parametrize("hd", HALF)
def test_mixed_dtypes_are_a_type_error_naming_the_argument(hd):
    w, bias, x, labels = _problem(v=100)
    sv = _candidates(labels, 100, 10, False)
    wh, bh = w.astype(hd), bias.astype(hd)
    other = np.dtype(np.float16) if hd == BF16 else BF16
    call = zn.sampled_softmax_loss
    with pytest.raises(TypeError, match="^biases: .*must be"):
        call(wh, bias, labels, x, 10, 100, sampled_values=sv)  # float32 biases with a half table
    with pytest.raises(TypeError, match="^inputs: .*float32, got dtype float64"):
        call(wh, bh, labels, x.astype(np.float64), 10, 100, sampled_values=sv)
    if other is not None:
        with pytest.raises(TypeError, match="^inputs: "):
            call(wh, bh, labels, x.astype(other), 10, 100, sampled_values=sv)
        with pytest.raises(TypeError, match="^biases: "):
            call(wh, bias.astype(other), labels, x, 10, 100, sampled_values=sv)
    with pytest.raises(TypeError, match="^weights: "):
        call(w.astype(np.int16), None, labels, x, 10, 100, sampled_values=sv)
    q = x[:8].astype(hd)
    with pytest.raises(TypeError, match="^keys: "):
        zn.info_nce_loss(q, x[:8])
    with pytest.raises(TypeError, match="^negatives: "):
        zn.info_nce_loss(q, q, negatives=x[:5])


@pytest.mark.parametrize("hd", HALF)
def test_non_finite_half_rows_and_biases_are_reported(hd):
    w, bias, x, labels = _problem(v=50)
    sv = (np.arange(10, dtype=np.int64), np.ones(labels.shape, np.float32), np.ones(10, np.float32))
    wh, bh = w.astype(hd), bias.astype(hd)
    wh[3, 5] = np.inf
    with pytest.raises(ValueError, match="^weights: row 3 is not finite"):
        zn.sampled_softmax_loss(wh, bh, labels, x, 10, 50, sampled_values=sv)
    wh[3, 5] = 0
    bh[4] = np.nan
    with pytest.raises(ValueError, match="^biases: "):
        zn.nce_loss(wh, bh, labels, x, 10, 50, sampled_values=sv)
    # A non-finite row the call does not use is never read.
    bh[4] = 0
    wh[49] = np.nan
    sv0 = (sv[0], sv[1], sv[2])
    labels = labels % 40
    assert np.isfinite(zn.sampled_softmax_loss(wh, bh, labels, x, 10, 50, sampled_values=sv0)).all()


@pytest.mark.parametrize("hd", HALF)
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_half_matches_float32_on_the_same_values(hd, symmetric):
    rng = np.random.default_rng(5)
    q, k, n = (rng.standard_normal(s).astype(hd) for s in [(24, 16), (24, 16), (40, 16)])
    q32, k32, n32 = (a.astype(np.float32) for a in (q, k, n))
    kw = dict(temperature=0.2, symmetric=symmetric, key_log_q=np.linspace(-3, -1, 24))
    gl = np.linspace(0.5, 1.5, 24)
    half = zn.info_nce_loss_and_grad(q, k, negatives=n, grad_loss=gl, **kw)
    ref = zn.info_nce_loss_and_grad(q32, k32, negatives=n32, grad_loss=gl, **kw)
    assert half.loss.dtype == np.float32
    np.testing.assert_array_equal(half.loss, ref.loss)
    for got, want in [(half.grad_query, ref.grad_query), (half.grad_keys, ref.grad_keys),
                      (half.grad_negatives, ref.grad_negatives)]:  # fmt: skip
        assert got.dtype == hd
        np.testing.assert_array_equal(got, want.astype(hd))
    np.testing.assert_array_equal(zn.info_nce_loss(q, k, negatives=n, **kw), ref.loss)


def test_half_inputs_with_a_float_table_are_converted_to_it():
    """The float32/float64 contract is unchanged: half inputs are converted to the table's dtype like any
    other float argument, and every result has the table's dtype."""
    w, bias, x, labels = _problem(v=80)
    sv = _candidates(labels, 80, 12, False)
    for hd in [np.dtype(np.float16)] + ([BF16] if BF16 is not None else []):
        xh = x.astype(hd)
        for wdt in (np.float32, np.float64):
            got = zn.sampled_softmax_loss_and_grad(w.astype(wdt), bias, labels, xh, 12, 80, sampled_values=sv)
            ref = zn.sampled_softmax_loss_and_grad(w.astype(wdt), bias, labels, xh.astype(wdt), 12, 80,
                                                   sampled_values=sv)  # fmt: skip
            assert got.loss.dtype == wdt and got.grad_weights.values.dtype == wdt
            assert got.grad_inputs.dtype == wdt
            np.testing.assert_array_equal(got.loss, ref.loss)
            np.testing.assert_array_equal(got.grad_inputs, ref.grad_inputs)


_LEVEL_SCRIPT = """
import hashlib, numpy as np, zipfnce as zn
import ml_dtypes
out = hashlib.sha256()
rng = np.random.default_rng(1)
w = (rng.standard_normal((3000, 72)) * 0.3).astype(np.float32)
x = rng.standard_normal((40, 72)).astype(np.float32)
lab = rng.integers(0, 3000, 40)
sv = zn.LogUniformSampler(3000, seed=2).sample(700, true_classes=lab)
for hd in (np.float16, ml_dtypes.bfloat16):
    g = zn.sampled_softmax_loss_and_grad(w.astype(hd), None, lab, x.astype(hd), 700, 3000, sampled_values=sv)
    for a in (g.loss, g.grad_inputs, g.grad_weights.values):
        out.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    r = zn.info_nce_loss_and_grad(x.astype(hd), x[::-1].astype(hd), negatives=w[:50].astype(hd))
    for a in r:
        out.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
print(out.hexdigest())
"""


def test_every_simd_level_gives_the_same_bits():
    """The widening kernels (F16C / AVX2 / baseline) and the f32 path behind them are bit-identical across
    ZIPFNCE_SIMD levels."""
    if BF16 is None:
        pytest.skip("needs ml_dtypes")
    digests = set()
    for level in ["baseline", "avx2", ""]:
        env = dict(os.environ, ZIPFNCE_SIMD=level)
        r = subprocess.run([sys.executable, "-c", _LEVEL_SCRIPT], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        digests.add(r.stdout.strip())
    assert len(digests) == 1, digests


@pytest.mark.parametrize("hd", HALF)
def test_half_grad_loss_and_log_q_are_accepted(hd):
    """A framework's grad_output arrives in the half type (a bfloat16 one is NumPy kind "V"): it is widened
    like any other float, for the sampled losses and InfoNCE."""
    w, bias, x, labels = _problem(v=90)
    sv = _candidates(labels, 90, 12, False)
    c = np.linspace(0.5, 2.0, labels.shape[0]).astype(hd)
    got = zn.sampled_softmax_loss_and_grad(
        w.astype(hd), None, labels, x, 12, 90, sampled_values=sv, grad_loss=c
    )
    ref = zn.sampled_softmax_loss_and_grad(w.astype(hd), None, labels, x, 12, 90, sampled_values=sv,
                                           grad_loss=c.astype(np.float32))  # fmt: skip
    np.testing.assert_array_equal(got.grad_inputs, ref.grad_inputs)
    q = x[:10].astype(hd)
    r = zn.info_nce_loss_and_grad(q, q[::-1].copy(), key_log_q=np.full(10, -2.0, dtype=hd), grad_loss=c[:10])
    assert r.grad_query.dtype == hd and np.isfinite(r.loss).all()
