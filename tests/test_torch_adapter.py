"""zipfnce.torch: values and gradients against the NumPy API, gradcheck, modules, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import zipfnce as zn
from conftest import spy_sampled_loss

torch = pytest.importorskip("torch")
znt = pytest.importorskip("zipfnce.torch")

V, D, B, S = 40, 6, 5, 8


def _data(dtype=np.float64, num_true=1, seed=0, per_row=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((V, D)).astype(dtype) * 0.5
    b = rng.standard_normal(V).astype(dtype) * 0.1
    x = rng.standard_normal((B, D)).astype(dtype)
    lab = rng.integers(0, V, (B, num_true))
    s = zn.LogUniformSampler(V, seed=3)
    sv = s.sample_per_row(lab, S, seed=4) if per_row else s.sample(S, true_classes=lab, seed=4)
    return w, b, x, lab, sv


def _leaf(a):
    return torch.tensor(a, requires_grad=True)


def _dense(sg, shape):
    out = np.zeros(shape, dtype=sg.values.dtype)
    out[sg.indices] = sg.values
    return out


def test_import_zipfnce_does_not_import_frameworks():
    code = "import sys, zipfnce; bad = [m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("nce", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("per_row", [False, True])
def test_values_and_grads_match_numpy(nce, reduction, per_row):
    w, b, x, lab, sv = _data(num_true=2, per_row=per_row)
    np_fn = zn.nce_loss_and_grad if nce else zn.sampled_softmax_loss_and_grad
    t_fn = znt.nce_loss if nce else znt.sampled_softmax_loss
    tw, tb, tx = _leaf(w), _leaf(b), _leaf(x)
    out = t_fn(tw, tb, torch.from_numpy(lab), tx, S, V, num_true=2, sampled_values=sv, focal_gamma=0.5,
               reduction=reduction)  # fmt: skip
    c = np.random.default_rng(9).standard_normal(B) if reduction == "none" else None
    if reduction == "none":
        out.backward(torch.from_numpy(c))
        gl = c
    else:
        out.backward()
        gl = 1.0 / B if reduction == "mean" else 1.0
    ref = np_fn(w, b, lab, x, S, V, 2, sv, focal_gamma=0.5, grad_loss=np.full(B, gl) if c is None else c)
    want = {"none": ref.loss, "mean": ref.loss.mean(), "sum": ref.loss.sum()}[reduction]
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(tx.grad.numpy(), ref.grad_inputs, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(tw.grad.numpy(), _dense(ref.grad_weights, w.shape), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(tb.grad.numpy(), _dense(ref.grad_biases, b.shape), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("nce", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck_sampled(nce, reduction):
    w, b, x, lab, sv = _data()
    fn = znt.nce_loss if nce else znt.sampled_softmax_loss

    def f(w_, b_, x_):
        return fn(w_, b_, lab, x_, S, V, sampled_values=sv, focal_gamma=1.0, reduction=reduction)

    assert torch.autograd.gradcheck(f, (_leaf(w), _leaf(b), _leaf(x)))


def test_gradcheck_sampled_no_bias_num_true_2():
    w, _, x, lab, sv = _data(num_true=2, per_row=True)

    def f(w_, x_):
        return znt.sampled_softmax_loss(
            w_, None, lab, x_, S, V, num_true=2, sampled_values=sv, reduction="none"
        )

    assert torch.autograd.gradcheck(f, (_leaf(w), _leaf(x)))


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcheck_info_nce(reduction, symmetric):
    rng = np.random.default_rng(1)
    q, k, n = (_leaf(rng.standard_normal(s)) for s in ((4, 3), (4, 3), (5, 3)))
    kid = np.array([0, 1, 0, 2])

    def f(q_, k_, n_):
        return znt.info_nce_loss(q_, k_, negatives=n_, temperature=0.5, key_ids=kid, symmetric=symmetric,
                                 focal_gamma=0.5, reduction=reduction)  # fmt: skip

    assert torch.autograd.gradcheck(f, (q, k, n))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_info_nce_matches_numpy(reduction):
    rng = np.random.default_rng(2)
    q, k, n = (rng.standard_normal(s).astype(np.float32) for s in ((6, 4), (6, 4), (3, 4)))
    lq = rng.standard_normal(6).astype(np.float32)
    tq, tk, tn = _leaf(q), _leaf(k), _leaf(n)
    mod = znt.InfoNCELoss(temperature=0.2, reduction=reduction)
    out = mod(tq, tk, tn, key_log_q=torch.from_numpy(lq))
    c = np.arange(1, 7, dtype=np.float32) if reduction == "none" else None
    out.backward(None if c is None else torch.from_numpy(c))
    gl = c if c is not None else (1.0 / 6 if reduction == "mean" else 1.0)
    ref = zn.info_nce_loss_and_grad(q, k, negatives=n, temperature=0.2, key_log_q=lq, grad_loss=gl)
    want = {"none": ref.loss, "mean": ref.loss.mean(), "sum": ref.loss.sum()}[reduction]
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-5)
    for got, exp in ((tq, ref.grad_query), (tk, ref.grad_keys), (tn, ref.grad_negatives)):
        np.testing.assert_allclose(got.grad.numpy(), exp, rtol=1e-5, atol=1e-7)


def test_info_nce_without_negatives_and_grad_only_for_query():
    rng = np.random.default_rng(3)
    q = _leaf(rng.standard_normal((4, 3)))
    k = torch.tensor(rng.standard_normal((4, 3)))
    loss = znt.info_nce_loss(q, k, reduction="sum")
    loss.backward()
    ref = zn.info_nce_loss_and_grad(q.detach().numpy(), k.numpy())
    np.testing.assert_allclose(q.grad.numpy(), ref.grad_query, rtol=1e-12)
    assert k.grad is None


def test_mean_is_one_fused_call_and_backward_only_scales(monkeypatch):
    calls = []
    # Counted at the native call, which the adapter reaches through its prepared arguments.
    spy_sampled_loss(monkeypatch, lambda name, weights: calls.append((name, weights)))
    w, b, x, lab, sv = _data(np.float32)
    tw, tb, tx = _leaf(w), _leaf(b), _leaf(x)
    loss = znt.sampled_softmax_loss(tw, tb, lab, tx, S, V, sampled_values=sv)
    assert [c[0] for c in calls] == ["sampled_softmax_loss_and_grad"]
    # Zero copy: the native call reads the tensor's own memory.
    assert np.shares_memory(calls[0][1], tw.detach().numpy())
    (loss * 3).backward()
    assert len(calls) == 1
    ref = zn.sampled_softmax_loss_and_grad(w, b, lab, x, S, V, sampled_values=sv, grad_loss=3.0 / B)
    np.testing.assert_allclose(tx.grad.numpy(), ref.grad_inputs, rtol=1e-5, atol=1e-7)
    # Without gradients only the loss is computed.
    calls.clear()
    with torch.no_grad():
        znt.sampled_softmax_loss(tw, tb, lab, tx, S, V, sampled_values=sv)
    assert [c[0] for c in calls] == ["sampled_softmax_loss"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_backward_twice_through_a_retained_graph(reduction):
    w, b, x, lab, sv = _data()
    tw, tx = _leaf(w), _leaf(x)
    loss = znt.sampled_softmax_loss(
        tw, torch.tensor(b), lab, tx, S, V, sampled_values=sv, reduction=reduction
    )
    if reduction == "none":
        loss = loss.sum()
    loss.backward(retain_graph=True)
    first = tx.grad.clone(), tw.grad.clone()
    tx.grad.mul_(10.0)  # in-place use of the handed-over gradient must not leak into the second pass
    tx.grad = None
    tw.grad = None
    loss.backward()
    torch.testing.assert_close(tx.grad, first[0])
    torch.testing.assert_close(tw.grad, first[1])
    q, k = _leaf(x), _leaf(x[::-1].copy())
    li = znt.info_nce_loss(q, k, reduction=reduction)
    li = li.sum() if reduction == "none" else li
    li.backward(retain_graph=True)
    g1 = q.grad.clone()
    q.grad = None
    li.backward()
    torch.testing.assert_close(q.grad, g1)


def test_default_sampler_is_seeded_and_consistent():
    w, b, x, lab, _ = _data()
    a = znt.sampled_softmax_loss(torch.tensor(w), torch.tensor(b), lab, torch.tensor(x), S, V, seed=7)
    ref = zn.sampled_softmax_loss(w, b, lab, x, S, V, seed=7)
    np.testing.assert_allclose(a.numpy(), ref.mean(), rtol=1e-12)
    # "none" recomputes in backward: the gradient must use the same candidates as the forward pass.
    tw, tx = _leaf(w), _leaf(x)
    out = znt.sampled_softmax_loss(tw, torch.tensor(b), lab, tx, S, V, reduction="none")
    out.sum().backward()
    w2, x2 = _leaf(w), _leaf(x)
    assert torch.autograd.gradcheck(
        lambda w_, x_: znt.sampled_softmax_loss(w_, None, lab, x_, S, V, seed=5, reduction="none"), (w2, x2)
    )


@pytest.mark.parametrize("cls", ["SampledSoftmaxLoss", "NCELoss"])
def test_module_sparse_grad_equals_dense(cls):
    torch.manual_seed(0)
    kw = dict(sampler=zn.LogUniformSampler(V, seed=11), num_true=2)
    dense = getattr(znt, cls)(V, D, S, **kw)
    sparse = getattr(znt, cls)(V, D, S, sparse=True, **{**kw, "sampler": zn.LogUniformSampler(V, seed=11)})
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(B, D)
    lab = torch.randint(0, V, (B, 2))
    ld, ls = dense(x, lab), sparse(x, lab)
    assert torch.equal(ld, ls)
    ld.backward()
    ls.backward()
    assert sparse.weight.grad.is_sparse and sparse.bias.grad.is_sparse
    assert sparse.weight.grad._nnz() <= B * 2 + S
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
    torch.testing.assert_close(sparse.bias.grad.to_dense(), dense.bias.grad)


def _train(module, optimizer, steps=60):
    torch.manual_seed(0)
    v = module.num_classes
    proj = torch.nn.Linear(16, module.embedding_dim)
    feats = torch.randn(v, 16)
    labels_all = torch.randint(0, v, (512,))
    opt_dense = torch.optim.Adam(proj.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        lab = labels_all[(step * 64) % 512 :][:64]
        loss = module(proj(feats[lab]), lab)
        optimizer.zero_grad()
        opt_dense.zero_grad()
        loss.backward()
        optimizer.step()
        opt_dense.step()
        losses.append(float(loss.detach()))
    return losses


def _training_run(case):
    """Losses of a short training run. ``case``: "SampledSoftmaxLoss", "NCELoss" (Adam, dense gradients) or
    "sparse" (SampledSoftmaxLoss(sparse=True) with SparseAdam)."""
    torch.manual_seed(0)
    if case == "sparse":
        m = znt.SampledSoftmaxLoss(200, 16, 20, sparse=True, sampler=zn.UniformSampler(200, seed=1))
        return _train(m, torch.optim.SparseAdam(list(m.parameters()), lr=2e-2))
    m = getattr(znt, case)(200, 16, 20, sampler=zn.LogUniformSampler(200, seed=1))
    return _train(m, torch.optim.Adam(m.parameters(), lr=2e-2))


@pytest.mark.parametrize("case", ["SampledSoftmaxLoss", "NCELoss", "sparse"])
def test_module_trains_with_adam(case):
    # torch.optim loads torch._dynamo and with it triton (CUDA builds of torch), whose LLVM aborts the process
    # when TensorFlow's LLVM is already loaded (other test files import TensorFlow). So train in a fresh
    # interpreter, this file run as a script.
    out = subprocess.run([sys.executable, __file__, case], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    losses = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(losses) == 60 and np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_errors_name_the_argument():
    w, b, x, lab, sv = _data(np.float32)
    tw, tb, tx = torch.tensor(w), torch.tensor(b), torch.tensor(x)
    with pytest.raises(ValueError, match="reduction"):
        znt.sampled_softmax_loss(tw, tb, lab, tx, S, V, sampled_values=sv, reduction="avg")
    with pytest.raises(TypeError, match="weight"):
        znt.sampled_softmax_loss(tw.to(torch.int32), tb, lab, tx, S, V, sampled_values=sv)
    with pytest.raises(TypeError, match="weight"):
        znt.sampled_softmax_loss(w, tb, lab, tx, S, V, sampled_values=sv)
    with pytest.raises(TypeError, match="inputs"):
        znt.sampled_softmax_loss(tw, tb, lab, tx.double(), S, V, sampled_values=sv)
    with pytest.raises(TypeError, match="bias"):
        znt.nce_loss(tw, tb.half(), lab, tx, S, V, sampled_values=sv)
    with pytest.raises(ValueError, match="inputs"):
        znt.sampled_softmax_loss(tw, tb, lab, tx.to("meta"), S, V, sampled_values=sv)
    with pytest.raises(TypeError, match="labels"):
        znt.sampled_softmax_loss(tw, tb, lab.astype(np.float32), tx, S, V, sampled_values=sv)
    with pytest.raises(ValueError, match="num_classes"):
        znt.sampled_softmax_loss(tw, tb, lab, tx, S, 10 * V)
    with pytest.raises(ValueError, match="keys"):
        znt.info_nce_loss(tx, tx[:2])
    with pytest.raises(ValueError, match="reduction"):
        znt.InfoNCELoss(reduction="max")
    with pytest.raises(TypeError, match="sampler"):
        znt.SampledSoftmaxLoss(V, D, S, sampler=object())


EMPTY_CASES = [
    "sampled_softmax_loss",
    "sampled_softmax_loss+sampled_values",
    "nce_loss",
    "info_nce_loss",
    "SampledSoftmaxLoss",
    "SampledSoftmaxLoss+sparse",
    "NCELoss",
    "InfoNCELoss",
]


def _numpy_empty_batch_error(case):
    """The message of the NumPy API's ValueError for the same empty batch."""
    w, b, _, _, _ = _data(np.float32)
    x0 = np.zeros((0, D), np.float32)
    with pytest.raises(ValueError) as e:
        if case.startswith("info") or case.startswith("InfoNCE"):
            zn.info_nce_loss(x0, x0)
        else:
            (zn.nce_loss if case.startswith("nce") or case.startswith("NCE") else zn.sampled_softmax_loss)(
                w, b, np.zeros((0, 1), np.int64), x0, S, V
            )
    return str(e.value)


def _empty_call(case, reduction, grad, labels):
    w, b, _, _, sv = _data(np.float32)
    x0 = torch.zeros(0, D, requires_grad=grad)
    if case.startswith("sampled") or case == "nce_loss":
        fn = znt.nce_loss if case == "nce_loss" else znt.sampled_softmax_loss
        tw, tb = torch.tensor(w, requires_grad=grad), torch.tensor(b, requires_grad=grad)
        kw = {"sampled_values": sv} if case.endswith("+sampled_values") else {"seed": 1}
        return fn(tw, tb, labels, x0, S, V, reduction=reduction, **kw)
    if case == "info_nce_loss":
        return znt.info_nce_loss(x0, torch.zeros(0, D), reduction=reduction)
    if case == "InfoNCELoss":
        return znt.InfoNCELoss(reduction=reduction)(x0, torch.zeros(0, D))
    cls = getattr(znt, case.split("+")[0])
    sampler = zn.LogUniformSampler(V, seed=5)
    m = cls(V, D, S, sampler=sampler, reduction=reduction, sparse=case.endswith("+sparse"))
    try:
        return m(x0, labels)
    finally:
        # The error comes before the draw: the sampler's stream has not moved.
        assert np.array_equal(sampler.sample(S).ids, zn.LogUniformSampler(V, seed=5).sample(S).ids)


@pytest.mark.parametrize("case", EMPTY_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("grad", [True, False])
def test_empty_batch_is_the_numpy_value_error(case, reduction, grad):
    # "mean" divided by the batch size: a ZeroDivisionError (not a ValueError) before.
    want = _numpy_empty_batch_error(case)
    assert "empty" in want and ("labels" in want or "query" in want)
    label_forms = [torch.zeros(0, dtype=torch.long), np.zeros((0, 1), np.int64), []]
    for labels in label_forms if not case.lower().startswith("info") else [None]:
        with pytest.raises(ValueError) as e:
            _empty_call(case, reduction, grad, labels)
        assert str(e.value) == want


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_inputs_with_labels_is_the_numpy_value_error(reduction):
    w, b, _, lab, sv = _data(np.float32)
    tw = torch.tensor(w, requires_grad=True)
    with pytest.raises(ValueError, match=f"inputs: has 0 rows but labels has {B}"):
        znt.sampled_softmax_loss(tw, None, lab, torch.zeros(0, D), S, V, sampled_values=sv, reduction=reduction)  # fmt: skip


PATHS = ("sampled_softmax_loss", "nce_loss", "info_nce_loss", "SampledSoftmaxLoss", "NCELoss", "InfoNCELoss")
DOUBLE_BACKWARD_CASES = [(fn, red) for fn in PATHS for red in ("mean", "sum", "none")] + [
    ("SampledSoftmaxLoss+sparse", "mean"),
    ("SampledSoftmaxLoss+sparse", "none"),
]


def _loss_for_double_backward(case, reduction):
    """A scalar loss through one of the autograd paths (fused for "mean"/"sum", recomputed for "none"), and
    the input tensor it is differentiated in."""
    w, b, x, lab, sv = _data()
    tx = _leaf(x)
    if case in ("sampled_softmax_loss", "nce_loss"):
        out = getattr(znt, case)(_leaf(w), _leaf(b), lab, tx, S, V, sampled_values=sv, reduction=reduction)
    elif case == "info_nce_loss":
        out = znt.info_nce_loss(tx, _leaf(x[::-1].copy()), reduction=reduction)
    elif case == "InfoNCELoss":
        out = znt.InfoNCELoss(reduction=reduction)(tx, _leaf(x[::-1].copy()))
    else:
        torch.manual_seed(0)
        cls = getattr(znt, case.split("+")[0])
        m = cls(V, D, S, sampler=zn.LogUniformSampler(V, seed=2), reduction=reduction,
                sparse=case.endswith("+sparse"), dtype=torch.float64)  # fmt: skip
        out = m(tx, lab)
    return (out.sum() if reduction == "none" else out), tx


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("how", ["backward", "autograd.grad"])
@pytest.mark.parametrize("case,reduction", DOUBLE_BACKWARD_CASES)
def test_create_graph_raises_at_the_first_backward(case, reduction, how):
    loss, tx = _loss_for_double_backward(case, reduction)
    with pytest.raises(RuntimeError) as e:
        if how == "backward":
            loss.backward(create_graph=True)
        else:
            torch.autograd.grad(loss, tx, create_graph=True)
    msg = str(e.value)
    assert "zipfnce" in msg and "differentiable once" in msg and "create_graph=True" in msg
    assert tx.grad is None
    # The graph is intact: a plain backward afterwards gives the gradient a fresh graph gives.
    (g,) = torch.autograd.grad(loss, tx)
    fresh, fx = _loss_for_double_backward(case, reduction)
    fresh.backward()
    torch.testing.assert_close(g, fx.grad)
    assert not g.requires_grad


def test_first_order_backward_inside_enable_grad_still_works():
    # Grad mode in the caller does not matter: only create_graph turns it on inside backward.
    loss, tx = _loss_for_double_backward("sampled_softmax_loss", "mean")
    with torch.enable_grad():
        loss.backward()
    assert tx.grad is not None and torch.isfinite(tx.grad).all()


if __name__ == "__main__":
    print(json.dumps(_training_run(sys.argv[1])))
