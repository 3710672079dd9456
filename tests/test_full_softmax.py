"""zipfnce.full_softmax_loss (and _and_grad, and the torch adapter) against the real
torch.nn.functional.cross_entropy: loss and gradients over float32/float64, labels [B] and [B, k] (probability
targets), biases or not, ignore_index, label_smoothing, grad_loss; kept vs recomputed logits; thread counts;
peak memory (in a subprocess); bad input."""

import itertools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zipfnce as zn

torch = pytest.importorskip("torch")
F = torch.nn.functional
znt = pytest.importorskip("zipfnce.torch")

IGNORE = -100


def _data(dtype, b=37, v=700, d=16, k=1, seed=0, ignore_rows=()):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((v, d)) * 0.5).astype(dtype)
    bias = rng.standard_normal(v).astype(dtype)
    x = rng.standard_normal((b, d)).astype(dtype)
    lab = rng.integers(0, v, (b, k))
    if k > 1:
        lab[0, 1] = lab[0, 0]  # a repeated label counts twice
    for i in ignore_rows:
        lab[i] = IGNORE
    gl = (rng.random(b) + 0.5).astype(dtype)
    return w, bias, x, lab, gl


def _torch_reference(w, bias, x, lab, gl, eps, ignore):
    """Loss [B] and gradients of sum(gl * loss) from F.cross_entropy on the materialised logits."""
    wt = torch.tensor(w, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    bt = None if bias is None else torch.tensor(bias, requires_grad=True)
    z = xt @ wt.T + (0 if bt is None else bt)
    b, k = lab.shape
    if k == 1:
        target = torch.tensor(lab[:, 0])
        kw = {} if ignore is None else {"ignore_index": ignore}
        loss = F.cross_entropy(z, target, reduction="none", label_smoothing=eps, **kw)
    else:
        keep = np.ones(b, bool) if ignore is None else ~(lab == ignore).all(axis=1)
        probs = np.zeros((b, w.shape[0]), w.dtype)
        for i in np.flatnonzero(keep):
            np.add.at(probs[i], lab[i], 1.0 / k)
        loss = F.cross_entropy(z, torch.tensor(probs), reduction="none", label_smoothing=eps)
        loss = loss * torch.tensor(keep.astype(w.dtype))  # ignored rows: loss (and gradient) 0
    (loss * torch.tensor(gl)).sum().backward()
    gb = None if bt is None else bt.grad.numpy()
    return loss.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), gb


@pytest.mark.parametrize(
    "dtype,k,with_bias,eps,ignore",
    [
        (dt, k, wb, eps, ig)
        for dt, k, wb, eps, ig in itertools.product(
            [np.float32, np.float64], [1, 3], [False, True], [0.0, 0.15], [None, IGNORE]
        )
    ],
)
def test_parity_with_torch_cross_entropy(dtype, k, with_bias, eps, ignore):
    ignore_rows = (2, 11) if ignore is not None else ()
    w, bias, x, lab, gl = _data(dtype, k=k, ignore_rows=ignore_rows)
    bias = bias if with_bias else None
    got = zn.full_softmax_loss_and_grad(
        w, bias, lab if k > 1 else lab[:, 0], x, grad_loss=gl, ignore_index=ignore, label_smoothing=eps
    )
    want = _torch_reference(w, bias, x, lab, gl, eps, ignore)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    assert got.loss.dtype == dtype and got.grad_weights.dtype == dtype
    np.testing.assert_allclose(got.loss, want[0], **tol)
    np.testing.assert_allclose(got.grad_inputs, want[1], **tol)
    np.testing.assert_allclose(got.grad_weights, want[2], **tol)
    if with_bias:
        np.testing.assert_allclose(got.grad_biases, want[3], **tol)
    else:
        assert got.grad_biases is None
    for i in ignore_rows:
        assert got.loss[i] == 0 and not got.grad_inputs[i].any()
    alone = zn.full_softmax_loss(w, bias, lab, x, ignore_index=ignore, label_smoothing=eps)
    np.testing.assert_array_equal(alone, got.loss)


def test_many_classes_and_rows_several_groups_and_blocks():
    # V over several groups of classes, B over several row blocks (budget small enough for 2 blocks).
    w, bias, x, lab, gl = _data(np.float64, b=600, v=9000, d=8, seed=3)
    got = zn.full_softmax_loss_and_grad(
        w, bias, lab, x, grad_loss=gl, max_logits_bytes=300 * 9000 * 8 + 2**20
    )
    want = _torch_reference(w, bias, x, lab, gl, 0.0, None)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_kept_and_recomputed_logits_and_thread_counts_agree_exactly():
    w, bias, x, lab, gl = _data(np.float32, b=300, v=5000, d=24, k=2, seed=5)
    kw = dict(grad_loss=gl, label_smoothing=0.1)
    kept = zn.full_softmax_loss_and_grad(w, bias, lab, x, **kw)
    recomputed = zn.full_softmax_loss_and_grad(w, bias, lab, x, max_logits_bytes=0, **kw)
    before = zn.get_num_threads()
    try:
        zn.set_num_threads(1)
        one = zn.full_softmax_loss_and_grad(w, bias, lab, x, **kw)
        zn.set_num_threads(3)
        three = zn.full_softmax_loss_and_grad(w, bias, lab, x, max_logits_bytes=0, **kw)
    finally:
        zn.set_num_threads(before)
    for other in (recomputed, one, three):
        for a, b in zip(kept, other):
            np.testing.assert_array_equal(a, b)


def test_grad_loss_scalar_and_default():
    w, bias, x, lab, _ = _data(np.float64)
    ones = zn.full_softmax_loss_and_grad(w, bias, lab, x)
    half = zn.full_softmax_loss_and_grad(w, bias, lab, x, grad_loss=0.5)
    np.testing.assert_allclose(half.grad_weights, 0.5 * ones.grad_weights, rtol=1e-14)
    np.testing.assert_allclose(half.grad_inputs, 0.5 * ones.grad_inputs, rtol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_adapter_matches_cross_entropy(reduction, dtype):
    w, bias, x, lab, _ = _data(np.float64, ignore_rows=(4,))
    y = torch.tensor(lab[:, 0])

    def run(fn):
        wt = torch.tensor(w, dtype=dtype, requires_grad=True)
        bt = torch.tensor(bias, dtype=dtype, requires_grad=True)
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        out = fn(wt, bt, xt)
        up = torch.linspace(0.5, 1.5, out.numel(), dtype=dtype).reshape(out.shape)
        (out * up).sum().backward()
        return out.detach(), wt.grad, bt.grad, xt.grad

    kw = dict(ignore_index=IGNORE, label_smoothing=0.05)
    got = run(lambda wt, bt, xt: znt.full_softmax_loss(wt, bt, y, xt, reduction, **kw))
    want = run(lambda wt, bt, xt: F.cross_entropy(xt @ wt.T + bt, y, reduction=reduction, **kw))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, **tol)


def test_torch_module_matches_linear_plus_cross_entropy():
    torch.manual_seed(0)
    m = znt.FullSoftmaxLoss(300, 12, label_smoothing=0.1)
    x = torch.randn(20, 12, requires_grad=True)
    y = torch.randint(0, 300, (20,))
    m(x, y).backward()
    g = (m.weight.grad.clone(), m.bias.grad.clone(), x.grad.clone())
    m.zero_grad()
    x.grad = None
    F.cross_entropy(F.linear(x, m.weight, m.bias), y, label_smoothing=0.1).backward()
    for a, b in zip(g, (m.weight.grad, m.bias.grad, x.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert "num_classes=300" in repr(m)
    with pytest.raises(RuntimeError, match="differentiable once"):
        loss = m(x, y)
        torch.autograd.grad(loss, x, create_graph=True)


def test_bad_input_names_the_argument():
    w, bias, x, lab, _ = _data(np.float32, b=4, v=10, d=3)
    y = lab[:, 0]
    with pytest.raises(ValueError, match="labels"):
        zn.full_softmax_loss(w, bias, np.array([0, 1, 2, 10]), x)
    with pytest.raises(ValueError, match="labels"):
        zn.full_softmax_loss(w, bias, np.array([0, 1, 2, -1]), x)
    with pytest.raises(ValueError, match="labels"):
        zn.full_softmax_loss(w, bias, y[:3], x)
    with pytest.raises(TypeError, match="labels"):
        zn.full_softmax_loss(w, bias, y.astype(float), x)
    with pytest.raises(ValueError, match="labels"):  # a row mixing ignore_index with a label
        zn.full_softmax_loss(w, bias, np.array([[0, -1], [1, 1], [2, 2], [3, 3]]), x, ignore_index=-1)
    xn = x.copy()
    xn[1, 2] = np.nan
    with pytest.raises(ValueError, match="inputs: must be finite"):
        zn.full_softmax_loss(w, bias, y, xn)
    wn = w.copy()
    wn[7, 0] = np.inf
    with pytest.raises(ValueError, match="weights: must be finite"):
        zn.full_softmax_loss_and_grad(w * 0 + wn, bias, y, x)
    with pytest.raises(ValueError, match="inputs"):
        zn.full_softmax_loss(w, bias, y, x[:, :2])
    with pytest.raises(ValueError, match="biases"):
        zn.full_softmax_loss(w, bias[:5], y, x)
    with pytest.raises(TypeError, match="weights"):
        zn.full_softmax_loss(w.astype(np.int32), bias, y, x)
    with pytest.raises(ValueError, match="label_smoothing"):
        zn.full_softmax_loss(w, bias, y, x, label_smoothing=1.5)
    with pytest.raises(ValueError, match="grad_loss"):
        zn.full_softmax_loss_and_grad(w, bias, y, x, grad_loss=np.ones(3))
    with pytest.raises(ValueError, match="overflow"):
        zn.full_softmax_loss(w * 1e30, None, y, x * 1e30)
    with pytest.raises(TypeError, match="inputs"):
        znt.full_softmax_loss(torch.tensor(w), None, y, torch.tensor(x, dtype=torch.float64))
    with pytest.raises(ValueError, match="reduction"):
        znt.full_softmax_loss(torch.tensor(w), None, y, torch.tensor(x), "avg")


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import zipfnce as zn

    def status(key):  # bytes, from /proc/self/status
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    b, v, d, budget = (int(a) for a in sys.argv[1:])
    rng = np.random.default_rng(0)
    w = rng.standard_normal((v, d), dtype=np.float32)
    w *= 0.1
    x = rng.standard_normal((b, d), dtype=np.float32)
    y = rng.integers(0, v, b)
    zn.full_softmax_loss(w[:10], None, y % 10, x)  # load everything once
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current RSS
    before = status("VmRSS:")
    r = zn.full_softmax_loss_and_grad(w, None, y, x, max_logits_bytes=budget)
    print(json.dumps({"extra": status("VmHWM:") - before, "grad_weights": r.grad_weights.nbytes}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_stays_flat_in_a_subprocess():
    # B x V float32 logits would take 2048 * 40000 * 4 = 328 MB (torch holds them and their gradient).
    b, v, d, budget = 2048, 40_000, 32, 64 << 20  # keeps 384-row blocks of logits (61 MB)
    env = dict(os.environ, ZIPFNCE_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(b), str(v), str(d), str(budget)],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    m = json.loads(out.stdout)
    extra = m["extra"] - m["grad_weights"]
    assert extra < budget + (40 << 20), m  # the kept logits, the outputs [B, d] and slack
    assert m["extra"] < b * v * 4 // 2, m
