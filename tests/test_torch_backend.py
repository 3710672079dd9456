"""zipfnce.torch backends: the torch-operations path against the native one (every option), half precision,
autocast, torch.compile, candidates on a device, and bad input. This machine has no GPU: the device code is
exercised on CPU tensors (the torch path is the one that runs on cuda/mps/xpu)."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import zipfnce as zn

torch = pytest.importorskip("torch")
znt = pytest.importorskip("zipfnce.torch")

V, D, B, S = 30, 6, 5, 8


def _data(dtype, num_true, per_row, seed=0):
    """Labels among the small ids, which the log-uniform sampler favours: accidental hits do happen."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((V, D)) * 0.5
    b = rng.standard_normal(V) * 0.1
    x = rng.standard_normal((B, D))
    lab = rng.integers(0, 8, (B, num_true))
    s = zn.LogUniformSampler(V, seed=3)
    sv = s.sample_per_row(lab, S, seed=4) if per_row else s.sample(S, true_classes=lab, seed=4)
    return [torch.tensor(a, dtype=dtype) for a in (w, b, x)], lab, sv


def _run(fn, leaves, call, reduction, c):
    ts = [t.detach().clone().requires_grad_(True) if t is not None else None for t in leaves]
    out = call(*ts)
    if reduction == "none":
        out.backward(c.to(out.dtype))
    else:
        out.backward()
    grads = []
    for t in ts:
        if t is not None:
            g = t.grad
            grads.append(g.to_dense() if g.is_sparse else g)
    return out.detach(), grads


def _close(a, b, tol, what):
    a, b = a.detach().double(), b.detach().double()
    scale = max(1.0, float(b.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


TOL = {torch.float64: 1e-9, torch.float32: 2e-4}
GRID = list(
    itertools.product([False, True], [1, 3], [False, True], [False, True], [False, True], [0.0, 0.5, 2.0])
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nce", [False, True])
def test_sampled_torch_path_matches_native_over_the_grid(dtype, nce):
    """Loss and the gradients of weight, bias and inputs, every option: per-row candidates, num_true > 1,
    accidental hits, logQ, focal, bias or not, each reduction."""
    fn = znt.nce_loss if nce else znt.sampled_softmax_loss
    hits_seen = 0
    for i, (per_row, nt, hits, logq, use_bias, gamma) in enumerate(GRID):
        (w, b, x), lab, sv = _data(dtype, nt, per_row, seed=i)
        ids = sv.ids if per_row else np.broadcast_to(sv.ids, (B, S))
        hits_seen += int((ids[:, :, None] == lab[:, None, :]).any())
        reduction = ("mean", "none", "sum")[i % 3]
        c = torch.from_numpy(np.random.default_rng(i).standard_normal(B))
        leaves = [w, b if use_bias else None, x]
        res = {}
        for backend in ("native", "torch"):
            kw = dict(num_true=nt, sampled_values=sv, remove_accidental_hits=hits, subtract_log_q=logq,
                      focal_gamma=gamma, reduction=reduction, backend=backend)  # fmt: skip
            lt_ = torch.from_numpy(lab)

            def call(tw, tb, tx, kw=kw, lt_=lt_):
                return fn(tw, tb, lt_, tx, S, V, **kw)

            res[backend] = _run(fn, leaves, call, reduction, c)
        (ln, gn), (lt, gt) = res["native"], res["torch"]
        assert lt.dtype == ln.dtype == dtype
        case = f"per_row={per_row} nt={nt} hits={hits} logq={logq} bias={use_bias} gamma={gamma} {reduction}"
        _close(lt, ln, TOL[dtype], "loss " + case)
        for name, a, e in zip(("weight", "bias", "inputs") if use_bias else ("weight", "inputs"), gt, gn):
            _close(a, e, TOL[dtype], f"grad {name} " + case)
    assert hits_seen > len(GRID) // 4  # the masks were exercised


def _infonce_case(dtype, seed, with_neg, ids, logq):
    rng = np.random.default_rng(seed)
    q = torch.tensor(rng.standard_normal((B, D)), dtype=dtype)
    k = torch.tensor(rng.standard_normal((B, D)), dtype=dtype)
    n = torch.tensor(rng.standard_normal((4, D)), dtype=dtype) if with_neg else None
    kw = {}
    if ids:
        kw["key_ids"] = rng.integers(0, 3, B)  # duplicates among the keys
        if with_neg:
            kw["negative_ids"] = rng.integers(0, 3, 4)
    if logq:
        kw["key_log_q"] = rng.standard_normal(B) * 0.3
        if with_neg:
            kw["negative_log_q"] = rng.standard_normal(4) * 0.3
    return [q, k, n], kw


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_info_nce_torch_path_matches_native_over_the_grid(dtype):
    for i, (with_neg, ids, logq, sym, gamma) in enumerate(
        itertools.product([False, True], [False, True], [False, True], [False, True], [0.0, 0.7])
    ):
        leaves, kw = _infonce_case(dtype, i, with_neg, ids, logq)
        reduction = ("mean", "none", "sum")[i % 3]
        c = torch.from_numpy(np.random.default_rng(i).standard_normal(B))
        res = {}
        for backend in ("native", "torch"):
            o = dict(
                temperature=0.3, symmetric=sym, focal_gamma=gamma, reduction=reduction, backend=backend, **kw
            )

            def call(q, k, n, o=o):
                return znt.info_nce_loss(q, k, negatives=n, **o)

            res[backend] = _run(None, leaves, call, reduction, c)
        (ln, gn), (lt, gt) = res["native"], res["torch"]
        case = f"neg={with_neg} ids={ids} logq={logq} sym={sym} gamma={gamma} {reduction}"
        _close(lt, ln, TOL[dtype], "loss " + case)
        for a, e in zip(gt, gn):
            _close(a, e, TOL[dtype], "grad " + case)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_info_nce_hard_negatives_torch_path_matches_native(dtype):
    # num_hard_negatives: the native kernel's per-row top-h selection and the torch path's topk agree (random
    # logits have no ties), with the masks, logQ and focal on.
    for i, (with_neg, ids, logq, gamma, h) in enumerate(
        itertools.product([False, True], [False, True], [False, True], [0.0, 0.7], [1, 3])
    ):
        leaves, kw = _infonce_case(dtype, 100 + i, with_neg, ids, logq)
        reduction = ("mean", "none", "sum")[i % 3]
        c = torch.from_numpy(np.random.default_rng(i).standard_normal(B))
        res = {}
        for backend in ("native", "torch"):
            o = dict(temperature=0.3, focal_gamma=gamma, reduction=reduction, backend=backend, **kw)

            def call(q, k, n, o=o, h=h):
                return znt.info_nce_loss(q, k, negatives=n, num_hard_negatives=h, **o)

            res[backend] = _run(None, leaves, call, reduction, c)
        (ln, gn), (lt, gt) = res["native"], res["torch"]
        case = f"neg={with_neg} ids={ids} logq={logq} gamma={gamma} h={h} {reduction}"
        _close(lt, ln, TOL[dtype], "loss " + case)
        for a, e in zip(gt, gn):
            _close(a, e, TOL[dtype], "grad " + case)
    with pytest.raises(ValueError, match="num_hard_negatives"):
        q, k, _ = _infonce_case(dtype, 0, False, False, False)[0]
        znt.info_nce_loss(q, k, num_hard_negatives=B, backend="torch")


@pytest.mark.parametrize("cls", ["SampledSoftmaxLoss", "NCELoss"])
@pytest.mark.parametrize("sparse", [False, True])
def test_modules_torch_path_matches_native_sparse_grads(cls, sparse):
    """Same seeded sampler, same parameters: the same loss and gradients; ``sparse=True`` gives sparse COO
    gradients on the torch path too (F.embedding(sparse=True))."""
    out = {}
    for backend in ("native", "torch"):
        torch.manual_seed(0)
        m = getattr(znt, cls)(V, D, S, sampler=zn.LogUniformSampler(V, seed=5), num_true=2, sparse=sparse,
                              dtype=torch.float64, backend=backend, focal_gamma=0.5)  # fmt: skip
        x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
        lab = torch.from_numpy(np.random.default_rng(1).integers(0, 10, (B, 2)))
        loss = m(x, lab)
        loss.backward()
        assert m.weight.grad.is_sparse == sparse and m.bias.grad.is_sparse == sparse
        out[backend] = (loss.detach(), m.weight.grad.to_dense(), m.bias.grad.to_dense(), x.grad)
    for a, e in zip(out["torch"], out["native"]):
        _close(a, e, 1e-9, cls)


def test_auto_picks_native_for_cpu_f32_f64_and_torch_otherwise(monkeypatch):
    calls = []
    orig = znt._ops.sampled_rows_loss
    monkeypatch.setattr(znt._ops, "sampled_rows_loss", lambda *a, **k: calls.append(1) or orig(*a, **k))
    (w, b, x), lab, sv = _data(torch.float32, 1, False)
    znt.sampled_softmax_loss(w, b, lab, x, S, V, sampled_values=sv)
    assert calls == []
    znt.sampled_softmax_loss(w.bfloat16(), b.bfloat16(), lab, x.bfloat16(), S, V, sampled_values=sv)
    assert calls == [1]


# Unit roundoff u = 2**-p for p significant bits: bfloat16 keeps p = 8 (7 stored and the implicit one), so
# rounding to nearest moves a value by at most 2**-8 of itself; float16 keeps p = 11.
U_BF16 = 2.0**-8
U_F16 = 2.0**-11


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nce", [False, True])
def test_half_precision_torch_path_accuracy(half, nce):
    """Half inputs: the loss is float32 and the gradients come back in the input dtype.

    (1) Against float32 on the same (rounded) values, the only differences are float32 rounding in the loss
    and one final rounding of each gradient to the half type: |err| <= u * max|g| (+ float32 slack).
    (2) Against float32 on the unrounded values, each logit moves by at most
    |dz| <= 2u sum_i |x_i w_i| + u |b| (+ u^2 terms) since x, w and b are each rounded once; the softmax and
    NCE losses are Lipschitz in the logits (|dL| <= 2 max|dz| per true column for softmax, sum |dz| for NCE),
    which bounds the loss difference from the data themselves."""
    u = U_BF16 if half == torch.bfloat16 else U_F16
    fn = znt.nce_loss if nce else znt.sampled_softmax_loss
    (w, b, x), lab, sv = _data(torch.float32, 1, False, seed=7)
    kw = dict(num_true=1, sampled_values=sv, focal_gamma=0.0, backend="torch")
    wh, bh, xh = (t.to(half).requires_grad_(True) for t in (w, b, x))
    loss_h = fn(wh, bh, torch.from_numpy(lab), xh, S, V, **kw)
    loss_h.backward()
    assert loss_h.dtype == torch.float32
    assert wh.grad.dtype == bh.grad.dtype == xh.grad.dtype == half
    wr, br, xr = (t.detach().float().requires_grad_(True) for t in (wh, bh, xh))
    loss_r = fn(wr, br, torch.from_numpy(lab), xr, S, V, **kw)
    loss_r.backward()
    _close(loss_h, loss_r, 1e-6, "loss vs float32 on the rounded values")
    for gh, gr in ((wh.grad, wr.grad), (bh.grad, br.grad), (xh.grad, xr.grad)):
        err = float((gh.float() - gr).abs().max())
        assert err <= u * float(gr.abs().max()) + 1e-6, (err, u)
    # (2): the bound on the logits, from the data.
    loss_f = fn(w, b, torch.from_numpy(lab), x, S, V, **kw)
    cols = np.concatenate([lab, np.broadcast_to(sv.ids, (B, S))], 1)
    dz = (2 * u * (x.abs()[:, None, :] * w.abs()[torch.from_numpy(cols)]).sum(-1) + u * b.abs()[cols]).max()
    bound = float(dz) * (2.0 if not nce else cols.shape[1])
    loss_h = loss_h.detach()
    assert abs(float(loss_h) - float(loss_f)) <= bound * 1.01, (float(loss_h), float(loss_f), bound)
    assert abs(float(loss_h) - float(loss_f)) > 0  # the rounding is there (the test can fail)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_info_nce_torch_path(half):
    """InfoNCE in half precision: float32 loss, gradients in the input dtype, equal to float32 on the same
    rounded values up to one final rounding of each gradient (|err| <= u max|g|)."""
    u = U_BF16 if half == torch.bfloat16 else U_F16
    (q, k, n), kw = _infonce_case(torch.float32, 11, True, True, True)
    res = {}
    for name, dt in (("half", half), ("f32", torch.float32)):
        ts = [t.to(half).to(dt).requires_grad_(True) for t in (q, k, n)]
        loss = znt.info_nce_loss(ts[0], ts[1], negatives=ts[2], symmetric=True, focal_gamma=0.5, backend="torch",
                                 **kw)  # fmt: skip
        loss.backward()
        assert loss.dtype == torch.float32 and all(t.grad.dtype == dt for t in ts)
        res[name] = (loss.detach(), [t.grad.float() for t in ts])
    _close(res["half"][0], res["f32"][0], 1e-6, "loss")
    for gh, gf in zip(res["half"][1], res["f32"][1]):
        assert float((gh - gf).abs().max()) <= u * float(gf.abs().max()) + 1e-7


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_native_half_reads_in_place_and_matches_torch_path(half, monkeypatch):
    """backend="native" hands the half table to the kernels as a NumPy view of the tensor's own memory
    (bfloat16 through ml_dtypes), and agrees with the torch path."""
    pytest.importorskip("ml_dtypes")
    (w, b, x), lab, sv = _data(torch.float32, 1, False, seed=3)
    seen = []
    orig = zn._core.sampled_loss

    def spy(*args, **kwargs):
        seen.extend(a.__array_interface__["data"][0] for a in args if isinstance(a, np.ndarray))
        return orig(*args, **kwargs)

    monkeypatch.setattr(zn._core, "sampled_loss", spy)
    res = {}
    for backend in ("native", "torch"):
        wh, bh, xh = (t.to(half).requires_grad_(True) for t in (w, b, x))
        loss = znt.sampled_softmax_loss(wh, bh, lab, xh, S, V, sampled_values=sv, backend=backend)
        if backend == "native":
            assert wh.data_ptr() in seen  # the table was read in place, not copied
        loss.backward()
        assert loss.dtype == torch.float32 and wh.grad.dtype == half and xh.grad.dtype == half
        res[backend] = (loss.detach(), wh.grad.float(), bh.grad.float(), xh.grad.float())
    u = U_BF16 if half == torch.bfloat16 else U_F16
    for a, e in zip(res["torch"], res["native"]):
        _close(a, e, 4 * u, "native half vs torch half")


def test_module_under_cpu_autocast_bfloat16():
    """An autocast model feeds bfloat16 activations to a float32 loss module: they are promoted (the way
    autocast treats a loss), the native path runs, and the gradient reaches the bfloat16 side."""
    torch.manual_seed(0)
    enc = torch.nn.Linear(D, D)
    m = znt.SampledSoftmaxLoss(V, D, S, sampler=zn.LogUniformSampler(V, seed=2))
    x = torch.randn(B, D)
    lab = torch.randint(0, V, (B,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = enc(x)
        assert h.dtype == torch.bfloat16
        loss = m(h, lab)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert enc.weight.grad is not None and torch.isfinite(enc.weight.grad).all()
    assert m.weight.grad is not None
    # The same under autocast with the torch path, and with a bfloat16 module.
    for mod in (
        znt.SampledSoftmaxLoss(V, D, S, sampler=zn.LogUniformSampler(V, seed=2), backend="torch"),
        znt.NCELoss(V, D, S, sampler=zn.LogUniformSampler(V, seed=2), dtype=torch.bfloat16),
        znt.InfoNCELoss(backend="torch"),
    ):
        enc.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = enc(x)
            loss = mod(h, h.flip(0)) if isinstance(mod, znt.InfoNCELoss) else mod(h, lab)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert torch.isfinite(enc.weight.grad).all()


def _compiled_step_check():
    """Run as a script (see the test below): eager and compiled steps agree; raises otherwise."""
    torch.manual_seed(0)
    w0 = torch.randn(V, D)
    x = torch.randn(B, D)
    lab = torch.randint(0, 8, (B, 2))
    sv = zn.LogUniformSampler(V, seed=3).sample(S, true_classes=lab.numpy(), seed=1).to("cpu")

    def loss_fn(w, x, lab, ids, te, se):
        return znt.sampled_softmax_loss(w, None, lab, x, S, V, num_true=2, sampled_values=(ids, te, se),
                                        focal_gamma=0.5, backend="torch")  # fmt: skip

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    out = {}
    for name, f in (("eager", loss_fn), ("compiled", compiled)):
        w = w0.clone().requires_grad_(True)
        loss = f(w, x, lab, *sv[:3])
        loss.backward()
        out[name] = (loss.detach(), w.grad)
    for a, e in zip(out["compiled"], out["eager"]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    print("compiled step ok")


def test_torch_compile_of_a_step():
    """A compiled training step on the torch path (candidates drawn outside, moved once with .to): the loss
    traces as one graph (``fullgraph=True``: no graph break, no host round trip), and the loss and the
    gradients of the backward pass AOT autograd compiled equal the eager step's. (``aot_eager`` checks the
    tracing and the compiled backward; inductor's C++ code generation takes minutes on this machine and was
    checked by hand.) It runs in a fresh interpreter: torch.compile loads triton, whose LLVM aborts a process
    that already loaded TensorFlow's or JAX's (other test files import them)."""
    out = subprocess.run([sys.executable, __file__, "compile"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled step ok" in out.stdout


def test_candidate_sample_to_device():
    s = zn.LogUniformSampler(V, seed=1).sample(S, true_classes=[[1], [2]])
    t = s.to("cpu")
    assert isinstance(t.ids, torch.Tensor) and t.ids.dtype == torch.int64
    assert t.true_expected_count.dtype == t.sampled_expected_count.dtype == torch.float32
    np.testing.assert_array_equal(t.ids.numpy(), s.ids)
    np.testing.assert_array_equal(t.sampled_expected_count.numpy(), s.sampled_expected_count)
    assert t.to("cpu").ids is t.ids  # already there: kept
    assert zn.LogUniformSampler(V, seed=1).sample(S).to("cpu").true_expected_count is None
    # A module step with candidates moved ahead of time equals the step that draws them itself.
    m1 = znt.SampledSoftmaxLoss(V, D, S, sampler=zn.LogUniformSampler(V, seed=9), backend="torch")
    m2 = znt.SampledSoftmaxLoss(V, D, S, sampler=zn.LogUniformSampler(V, seed=9), backend="torch")
    m2.load_state_dict(m1.state_dict())
    x, lab = torch.randn(B, D), torch.randint(0, V, (B,))
    pre = m2.sample(lab.numpy().reshape(-1, 1)).to("cpu")
    torch.testing.assert_close(m1(x, lab), m2(x, lab, sampled_values=pre))


def test_bad_input():
    (w, b, x), lab, sv = _data(torch.float32, 1, False)
    f = znt.sampled_softmax_loss
    with pytest.raises(ValueError, match="backend"):
        f(w, b, lab, x, S, V, sampled_values=sv, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        znt.SampledSoftmaxLoss(V, D, S, backend="jax")
    with pytest.raises(ValueError, match="backend"):
        znt.info_nce_loss(x, x, backend=None)
    with pytest.raises(TypeError, match="weight: expected a floating-point"):
        f(w.int(), b, lab, x, S, V, sampled_values=sv, backend="torch")
    with pytest.raises(TypeError, match="inputs: has dtype torch.bfloat16, but weight has torch.float32"):
        f(w, b, lab, x.bfloat16(), S, V, sampled_values=sv, backend="torch")
    with pytest.raises(TypeError, match="bias: has dtype torch.float64"):
        f(w, b.double(), lab, x, S, V, sampled_values=sv)
    with pytest.raises(TypeError, match="keys: has dtype"):
        znt.info_nce_loss(x, x.half())
    with pytest.raises(ValueError, match="inputs: is on meta, but weight is on cpu"):
        f(w, b, lab, x.to("meta"), S, V, sampled_values=sv, backend="torch")
    with pytest.raises(ValueError, match="negatives: is on meta"):
        znt.info_nce_loss(x, x, negatives=x.to("meta"), backend="torch")
    # backend="native" with tensors off the host: a ValueError, never a copy.
    wm, bm, xm = w.to("meta"), b.to("meta"), x.to("meta")
    with pytest.raises(ValueError, match="'native' runs on the host and the tensors are on meta"):
        f(wm, bm, lab, xm, S, V, sampled_values=sv, backend="native")
    with pytest.raises(ValueError, match="'native' runs on the host"):
        znt.info_nce_loss(xm, xm, backend="native")
    # Index tensors on another device, ids out of range, float ids, wrong shapes.
    with pytest.raises(ValueError, match="labels: is on meta"):
        f(w, b, torch.from_numpy(lab).to("meta"), x, S, V, sampled_values=sv, backend="torch")
    with pytest.raises(ValueError, match="sampled_values: is on meta"):
        f(w, b, lab, x, S, V, sampled_values=(torch.from_numpy(sv.ids).to("meta"),) + tuple(sv[1:3]),
          backend="torch")  # fmt: skip
    with pytest.raises(ValueError, match="labels: class id 99 is outside"):
        f(w, b, lab + 99 - lab.max(), x, S, V, sampled_values=sv, backend="torch")
    with pytest.raises(TypeError, match="labels"):
        f(w, b, torch.from_numpy(lab).float(), x, S, V, sampled_values=sv, backend="torch")
    with pytest.raises(ValueError, match="inputs: has 5 columns but weight has 6"):
        f(w, b, lab, x[:, :5], S, V, sampled_values=sv, backend="torch")
    with pytest.raises(ValueError, match="sampled_values: has 8 candidates but num_sampled is 7"):
        f(w, b, lab, x, 7, V, sampled_values=sv, backend="torch")
    with pytest.raises(ValueError, match="labels: the batch is empty"):
        f(w, b, lab[:0], x[:0], S, V, backend="torch")
    with pytest.raises(ValueError, match="key_ids: must have shape"):
        znt.info_nce_loss(x, x, key_ids=[1, 2], backend="torch")
    with pytest.raises(ValueError, match="negative_ids: needs key_ids"):
        znt.info_nce_loss(x, x, negatives=x, negative_ids=np.arange(B), backend="torch")


def test_torch_path_draws_the_default_candidates_like_native():
    """``sampled_values=None`` with a seed: both paths draw the same candidates on the host."""
    (w, b, x), lab, _ = _data(torch.float64, 1, False)
    a = znt.nce_loss(w, b, lab, x, S, V, seed=5, backend="native", reduction="none")
    t = znt.nce_loss(w, b, torch.from_numpy(lab), x, S, V, seed=5, backend="torch", reduction="none")
    _close(t, a, 1e-9, "default draw")


if __name__ == "__main__" and sys.argv[1:] == ["compile"]:
    _compiled_step_check()
