"""Checks of zipfnce.torch.distributed that run inside every rank of a real gloo process group.

``python tests/_dist_checks.py RANK WORLD PORT OUT`` joins the group at tcp://127.0.0.1:PORT, runs every check
of ``CHECKS`` in order (each is a collective: all ranks run the same ones, in the same order) and writes
``{name: [ok, message]}`` to OUT as JSON. A check compares the rank's distributed result against the
single-process ``zipfnce.torch`` result on the full (concatenated) problem, which every rank computes from
the same seeds; the parent process (tests/test_distributed*.py) asserts on the collected results.

The checks never raise out of the loop: an exception becomes a failed result, so the ranks stay in step.
"""

from __future__ import annotations

import datetime
import json
import sys
import traceback
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.distributed as dist
import zipfnce as zn
import zipfnce.torch as znt
import zipfnce.torch.distributed as znd

Result = Tuple[bool, str]
CHECKS: Dict[str, Callable[[int, int], Result]] = {}


def check(fn: Callable[[int, int], Result]) -> Callable[[int, int], Result]:
    CHECKS[fn.__name__] = fn
    return fn


class Cmp:
    """Collects the comparisons of one check: ``ok`` is False once any differs, with a message saying which."""

    def __init__(self) -> None:
        self.msgs: List[str] = []

    def close(self, what: str, got: Any, want: Any, rtol: float = 1e-9, atol: float = 1e-11) -> None:
        g = np.asarray(got.detach().numpy() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
        w = np.asarray(want.detach().numpy() if isinstance(want, torch.Tensor) else want, dtype=np.float64)
        if g.shape != w.shape:
            self.msgs.append(f"{what}: shape {g.shape} != {w.shape}")
            return
        if not np.allclose(g, w, rtol=rtol, atol=atol):
            err = np.max(np.abs(g - w))
            self.msgs.append(f"{what}: max abs error {err:.3g} (rtol {rtol}, atol {atol})")

    def true(self, what: str, cond: bool) -> None:
        if not cond:
            self.msgs.append(what)

    def result(self) -> Result:
        return (not self.msgs, "; ".join(self.msgs) or "ok")


def leaf(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, requires_grad=True)


def all_same(x: torch.Tensor, world: int) -> bool:
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return all(torch.equal(out[0], o) for o in out)


def raises(fn: Callable[[], Any], *needles: str) -> Tuple[bool, str]:
    """Whether ``fn()`` raises ValueError/TypeError whose message holds every needle."""
    try:
        fn()
    except (ValueError, TypeError) as e:
        msg = str(e)
        return all(n in msg for n in needles), msg
    return False, "did not raise"


# ----------------------------------------------------------------------------------------------------------
# InfoNCE over the global batch
# ----------------------------------------------------------------------------------------------------------


def _info_case(
    rank: int,
    world: int,
    bs: List[int],
    ns: List[int],
    dtype: Any = np.float64,
    seed: int = 0,
    **opts: Any,
) -> Result:
    """Every rank r holds rows [off_r, off_r + bs[r]) of one global batch (and its negatives); the distributed
    per-row losses and the gradients of sum_r sum_i c[i] loss_r[i] against znt on the concatenated batch."""
    rng = np.random.default_rng(seed)
    d = 5
    bt, nt = sum(bs), sum(ns)
    q = rng.standard_normal((bt, d)).astype(dtype)
    k = rng.standard_normal((bt, d)).astype(dtype)
    n = rng.standard_normal((nt, d)).astype(dtype) if nt else None
    kq = rng.standard_normal(bt).astype(dtype) * 0.3
    nq = rng.standard_normal(nt).astype(dtype) * 0.3
    kid = rng.integers(0, max(2, bt // 2), bt)  # duplicates, also across ranks
    nid = rng.integers(0, max(2, bt // 2), nt)  # some negatives collide with key ids
    c = rng.standard_normal(bt).astype(dtype)  # upstream gradient of each row
    use_lq, use_ids = opts.pop("log_q", True), opts.pop("ids", True)
    red = opts.pop("reduction", "none")

    def kw(sl_k: slice, sl_n: slice) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if use_lq:
            out["key_log_q"] = kq[sl_k]
            if n is not None:
                out["negative_log_q"] = torch.from_numpy(nq[sl_n])
        if use_ids:
            out["key_ids"] = torch.from_numpy(kid[sl_k])
            if n is not None:
                out["negative_ids"] = nid[sl_n]
        return out

    # Reference: one process, the whole batch; row weights c (reduction "none"), or 1/B_r ("mean").
    offs = np.cumsum([0] + bs)
    noffs = np.cumsum([0] + ns)
    w = c.copy()
    if red == "mean":
        w = np.concatenate([np.full(bs[r], 1.0 / bs[r], dtype=dtype) for r in range(world)])
    elif red == "sum":
        w = np.ones(bt, dtype=dtype)
    rq, rk = leaf(q), leaf(k)
    rn = leaf(n) if n is not None else None
    rloss = znt.info_nce_loss(rq, rk, negatives=rn, reduction="none", **kw(slice(None), slice(None)), **opts)
    (rloss * torch.from_numpy(w)).sum().backward()

    lo, hi = offs[rank], offs[rank + 1]
    nlo, nhi = noffs[rank], noffs[rank + 1]
    tq, tk = leaf(q[lo:hi]), leaf(k[lo:hi])
    tn = leaf(n[nlo:nhi]) if n is not None else None
    loss = znd.info_nce_loss(
        tq, tk, negatives=tn, reduction=red, **kw(slice(lo, hi), slice(nlo, nhi)), **opts
    )
    if red == "none":
        (loss * torch.from_numpy(c[lo:hi])).sum().backward()
    else:
        loss.backward()
    tol = {"rtol": 1e-9, "atol": 1e-11} if dtype == np.float64 else {"rtol": 2e-4, "atol": 2e-5}
    cmp = Cmp()
    want = rloss[lo:hi]
    want = want if red == "none" else (want.mean() if red == "mean" else want.sum())
    cmp.close("loss", loss, want, **tol)
    cmp.close("grad query", tq.grad, rq.grad[lo:hi], **tol)
    cmp.close("grad keys", tk.grad, rk.grad[lo:hi], **tol)
    if tn is not None and rn is not None:
        cmp.close("grad negatives", tn.grad, rn.grad[nlo:nhi], **tol)
    return cmp.result()


@check
def info_nce_all_options(rank: int, world: int) -> Result:
    """Negatives, both logQ kinds, key and negative ids with duplicates across ranks, per-row upstream grads."""
    return _info_case(rank, world, [4] * world, [3] * world, temperature=0.3)


@check
def info_nce_symmetric_focal(rank: int, world: int) -> Result:
    return _info_case(rank, world, [4] * world, [2] * world, temperature=0.5, symmetric=True, focal_gamma=0.5)


@check
def info_nce_unequal_batches_mean(rank: int, world: int) -> Result:
    """B_r = 2 + r rows and N_r = 3 - r negatives (0 on rank 3): padded gathers, the offsets, mean per rank."""
    bs = [2 + r for r in range(world)]
    ns = [max(0, 3 - r) for r in range(world)]
    return _info_case(rank, world, bs, ns, temperature=0.4, symmetric=True, reduction="mean", seed=1)


@check
def info_nce_no_negatives_sum(rank: int, world: int) -> Result:
    return _info_case(
        rank, world, [3] * world, [0] * world, temperature=0.2, reduction="sum", seed=2, log_q=False
    )


@check
def info_nce_float32(rank: int, world: int) -> Result:
    return _info_case(
        rank, world, [6] * world, [4] * world, dtype=np.float32, temperature=0.1, focal_gamma=1.0
    )


@check
def info_nce_all_reduce_fallback(rank: int, world: int) -> Result:
    """The gather's backward where the backend has no reduce-scatter: an all-reduce and a slice."""
    znd._NO_REDUCE_SCATTER.add("gloo")
    try:
        return _info_case(
            rank, world, [2 + r for r in range(world)], [2] * world, temperature=0.3, symmetric=True
        )
    finally:
        znd._NO_REDUCE_SCATTER.discard("gloo")


@check
def info_nce_bad_input_raises_on_every_rank(rank: int, world: int) -> Result:
    cmp = Cmp()
    rng = np.random.default_rng(3)
    q, k = torch.tensor(rng.standard_normal((3, 4))), torch.tensor(rng.standard_normal((3, 4)))
    # A different temperature on the last rank: every rank says so.
    t = 0.5 if rank == world - 1 else 0.2
    ok, msg = raises(lambda: znd.info_nce_loss(q, k, temperature=t), "temperature", "differs")
    cmp.true(f"temperature mismatch: {msg}", ok)
    # keys of the wrong shape on rank 0: rank 0 names keys, the others name rank 0.
    kk = k[:2] if rank == 0 else k
    ok, msg = raises(lambda: znd.info_nce_loss(q, kk, temperature=0.2), "keys" if rank == 0 else "rank 0")
    cmp.true(f"bad keys on rank 0: {msg}", ok)
    # key_ids on one rank only.
    ids = np.arange(3) if rank == 1 else None
    ok, msg = raises(lambda: znd.info_nce_loss(q, k, temperature=0.2, key_ids=ids), "key_ids", "differs")
    cmp.true(f"key_ids on one rank only: {msg}", ok)
    # The group still works afterwards.
    loss = znd.info_nce_loss(q, k, temperature=0.2)
    cmp.true("a good call after the errors", bool(torch.isfinite(loss)))
    return cmp.result()


# ----------------------------------------------------------------------------------------------------------
# Vocabulary-parallel sampled softmax and NCE
# ----------------------------------------------------------------------------------------------------------

V, D, B, S = 23, 4, 6, 7  # V % 2 and V % 3 are not 0: uneven shards


def _vp_data(num_true: int, per_row: bool, hits: bool, dtype: Any = np.float64, seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((V, D)).astype(dtype) * 0.5
    b = rng.standard_normal(V).astype(dtype) * 0.1
    x = rng.standard_normal((B, D)).astype(dtype)
    lab = rng.integers(0, V, (B, num_true))
    s = zn.LogUniformSampler(V, seed=3)
    sv = s.sample_per_row(lab, S, seed=4) if per_row else s.sample(S, true_classes=lab, seed=4)
    if hits:
        # Make sure some candidates are accidental hits: put true classes among them.
        ids = np.array(sv.ids, copy=True)
        if per_row:
            ids[:, 0] = lab[:, 0]
            ids[1, 1] = lab[2, 0]
        else:
            ids[0], ids[1] = lab[0, 0], lab[1, 0]
        sv = (ids, sv.true_expected_count, sv.sampled_expected_count)
    return w, b, x, lab, sv


def _vp_case(
    rank: int, world: int, nce: bool, red: str = "none", dtype: Any = np.float64, **kw: Any
) -> Result:
    num_true = kw.pop("num_true", 1)
    per_row = kw.pop("per_row", False)
    hits = kw.pop("hits", True)
    given = kw.pop("given", True)
    use_bias = kw.pop("bias", True)
    w, b, x, lab, sv = _vp_data(num_true, per_row, hits, dtype)
    if not given:
        sv = None
    c = np.random.default_rng(5).standard_normal(B).astype(dtype)
    ref_fn = znt.nce_loss if nce else znt.sampled_softmax_loss
    fn = znd.vocab_parallel_nce_loss if nce else znd.vocab_parallel_sampled_softmax_loss
    lab_in = lab[:, 0] if num_true == 1 else lab

    rw, rb, rx = leaf(w), leaf(b), leaf(x)
    lo, hi = znd.shard_range(V)
    tw, tb, tx = leaf(w[lo:hi]), leaf(b[lo:hi]), leaf(x)
    rl = ref_fn(
        rw, rb if use_bias else None, torch.from_numpy(lab_in), rx, S, V, num_true, sv, reduction=red, **kw
    )
    out = fn(
        tw, tb if use_bias else None, torch.from_numpy(lab_in), tx, S, V, num_true, sv, reduction=red, **kw
    )
    if red == "none":
        rl.backward(torch.from_numpy(c))
        out.backward(torch.from_numpy(c))
    else:
        rl.backward()
        out.backward()
    tol = {"rtol": 1e-9, "atol": 1e-11} if dtype == np.float64 else {"rtol": 2e-4, "atol": 2e-5}
    cmp = Cmp()
    cmp.close("loss", out, rl, **tol)
    cmp.close("grad weight shard", tw.grad, rw.grad[lo:hi], **tol)
    if use_bias:
        cmp.close("grad bias shard", tb.grad, rb.grad[lo:hi], **tol)
    else:
        cmp.true("a bias gradient without a bias", tb.grad is None and rb.grad is None)
    cmp.close("grad inputs", tx.grad, rx.grad, **tol)
    cmp.true("the loss differs between ranks", all_same(out.detach(), world))
    return cmp.result()


@check
def shard_range_covers_the_classes(rank: int, world: int) -> Result:
    cmp = Cmp()
    for v in (world, V, 10**7 + 1):
        lo, hi = znd.shard_range(v)
        got = [torch.empty(2, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(got, torch.tensor([lo, hi]))
        edges = [tuple(t.tolist()) for t in got]
        cmp.true(f"V={v}: blocks {edges}", edges[0][0] == 0 and edges[-1][1] == v)
        cmp.true(
            f"V={v}: not contiguous {edges}", all(edges[i][1] == edges[i + 1][0] for i in range(world - 1))
        )
        cmp.true(
            f"V={v}: uneven by more than 1 {edges}",
            max(h - lo_ for lo_, h in edges) - min(h - lo_ for lo_, h in edges) <= 1,
        )
        cmp.true(
            f"V={v}: rank {rank} got {(lo, hi)}", (lo, hi) == (rank * v // world, (rank + 1) * v // world)
        )
    ok, msg = raises(lambda: znd.shard_range(world - 1) if world > 1 else znd.shard_range(0), "num_classes")
    cmp.true(f"V < P: {msg}", ok)
    return cmp.result()


@check
def vp_softmax_hits_none(rank: int, world: int) -> Result:
    return _vp_case(rank, world, False)


@check
def vp_softmax_num_true_2_focal_mean(rank: int, world: int) -> Result:
    return _vp_case(rank, world, False, "mean", num_true=2, focal_gamma=0.5)


@check
def vp_softmax_per_row_sum(rank: int, world: int) -> Result:
    return _vp_case(rank, world, False, "sum", num_true=2, per_row=True)


@check
def vp_softmax_no_log_q_keep_hits(rank: int, world: int) -> Result:
    return _vp_case(rank, world, False, subtract_log_q=False, remove_accidental_hits=False)


@check
def vp_softmax_seeded_draw(rank: int, world: int) -> Result:
    return _vp_case(rank, world, False, "mean", num_true=2, given=False, seed=11)


@check
def vp_softmax_float32(rank: int, world: int) -> Result:
    return _vp_case(rank, world, False, dtype=np.float32, num_true=2, focal_gamma=1.0)


@check
def vp_candidates_all_on_rank_0(rank: int, world: int) -> Result:
    """Every candidate (ids 0..S-1) is rank 0's: the other ranks score none (an empty block), both losses."""
    w, b, x, lab, _ = _vp_data(1, False, False)
    lab[0, 0] = 3  # and one accidental hit
    sv = (np.arange(S), np.full((B, 1), 0.5), np.linspace(0.1, 0.9, S))
    lo, hi = znd.shard_range(V)
    cmp = Cmp()
    for nce, ref_fn, fn in (
        (False, znt.sampled_softmax_loss, znd.vocab_parallel_sampled_softmax_loss),
        (True, znt.nce_loss, znd.vocab_parallel_nce_loss),
    ):
        rw, rb, rx = leaf(w), leaf(b), leaf(x)
        tw, tb, tx = leaf(w[lo:hi]), leaf(b[lo:hi]), leaf(x)
        want = ref_fn(rw, rb, lab[:, 0], rx, S, V, sampled_values=sv, remove_accidental_hits=True)
        got = fn(tw, tb, lab[:, 0], tx, S, V, sampled_values=sv, remove_accidental_hits=True)
        want.backward()
        got.backward()
        what = "nce" if nce else "softmax"
        cmp.close(f"{what} loss", got, want)
        cmp.close(f"{what} grad weight", tw.grad, rw.grad[lo:hi])
        cmp.close(f"{what} grad bias", tb.grad, rb.grad[lo:hi])
        cmp.close(f"{what} grad inputs", tx.grad, rx.grad)
    return cmp.result()


@check
def vp_nce_defaults(rank: int, world: int) -> Result:
    return _vp_case(rank, world, True)


@check
def vp_nce_per_row_hits_num_true_2_focal(rank: int, world: int) -> Result:
    return _vp_case(
        rank, world, True, "mean", num_true=2, per_row=True, remove_accidental_hits=True, focal_gamma=0.25
    )


@check
def vp_nce_shared_hits_focal(rank: int, world: int) -> Result:
    return _vp_case(rank, world, True, num_true=2, remove_accidental_hits=True, focal_gamma=1.5)


@check
def vp_softmax_per_row_focal_no_bias(rank: int, world: int) -> Result:
    return _vp_case(rank, world, False, "mean", per_row=True, focal_gamma=0.5, bias=False)


@check
def vp_nce_seeded_draw_sum(rank: int, world: int) -> Result:
    return _vp_case(rank, world, True, "sum", given=False, seed=12)


@check
def vp_seed_none_agrees(rank: int, world: int) -> Result:
    """seed=None: rank 0's fresh seed reaches every rank, so all return one loss (and it varies per call)."""
    w, b, x, lab, _ = _vp_data(1, False, False)
    lo, hi = znd.shard_range(V)
    cmp = Cmp()
    losses = []
    for _ in range(3):
        out = znd.vocab_parallel_sampled_softmax_loss(torch.tensor(w[lo:hi]), torch.tensor(b[lo:hi]), lab[:, 0],
                                                      torch.tensor(x), S, V, reduction="none")  # fmt: skip
        cmp.true("the loss differs between ranks", all_same(out, world))
        losses.append(out)
    cmp.true(
        "three unseeded calls gave one loss",
        not (torch.equal(losses[0], losses[1]) and torch.equal(losses[1], losses[2])),
    )
    return cmp.result()


def _module_case(rank: int, world: int, nce: bool, sparse: bool) -> Result:
    torch.manual_seed(0)
    cls = znd.VocabParallelNCELoss if nce else znd.VocabParallelSampledSoftmaxLoss
    ref_cls = znt.NCELoss if nce else znt.SampledSoftmaxLoss
    mod = cls(V, D, S, seed=21, sparse=sparse, num_true=2, focal_gamma=0.5, dtype=torch.float64)
    ref = ref_cls(
        V, D, S, sampler=zn.LogUniformSampler(V, seed=21), num_true=2, focal_gamma=0.5, dtype=torch.float64
    )
    rng = np.random.default_rng(7)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(rng.standard_normal((V, D)) * 0.5))
        ref.bias.copy_(torch.from_numpy(rng.standard_normal(V) * 0.1))
        mod.weight.copy_(ref.weight[mod.lo : mod.hi])
        mod.bias.copy_(ref.bias[mod.lo : mod.hi])
    cmp = Cmp()
    cmp.true(f"weight shape {tuple(mod.weight.shape)}", tuple(mod.weight.shape) == (mod.hi - mod.lo, D))
    for step in range(2):  # the second step draws the stream's next candidates, on every rank alike
        x = torch.tensor(rng.standard_normal((B, D)), requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        lab = torch.from_numpy(rng.integers(0, V, (B, 2)))
        mod.zero_grad()
        ref.zero_grad()
        out = mod(x, lab)
        want = ref(x2, lab)
        out.backward()
        want.backward()
        gw = mod.weight.grad.to_dense() if sparse else mod.weight.grad
        gb = mod.bias.grad.to_dense() if sparse else mod.bias.grad
        cmp.true(
            f"step {step}: sparse gradient expected", (mod.weight.grad.layout == torch.sparse_coo) == sparse
        )
        cmp.close(f"step {step}: loss", out, want)
        cmp.close(f"step {step}: grad weight", gw, ref.weight.grad[mod.lo : mod.hi])
        cmp.close(f"step {step}: grad bias", gb, ref.bias.grad[mod.lo : mod.hi])
        cmp.close(f"step {step}: grad inputs", x.grad, x2.grad)
    return cmp.result()


@check
def vp_module_softmax_dense(rank: int, world: int) -> Result:
    return _module_case(rank, world, False, False)


@check
def vp_module_nce_sparse(rank: int, world: int) -> Result:
    return _module_case(rank, world, True, True)


@check
def vp_module_unseeded_agrees(rank: int, world: int) -> Result:
    mod = znd.VocabParallelSampledSoftmaxLoss(V, D, S)
    cmp = Cmp()
    cmp.true("the broadcast seed differs between ranks", all_same(torch.tensor([mod.seed]), world))
    x = torch.ones(B, D, dtype=torch.float32)
    lab = torch.arange(B)
    out = mod(x, lab)
    cmp.true("the loss differs between ranks", all_same(out.detach(), world))
    return cmp.result()


@check
def vp_bad_input_raises_on_every_rank(rank: int, world: int) -> Result:
    w, b, x, lab, sv = _vp_data(1, False, False)
    lo, hi = znd.shard_range(V)
    tw, tb, tx = torch.tensor(w[lo:hi]), torch.tensor(b[lo:hi]), torch.tensor(x)
    f = znd.vocab_parallel_sampled_softmax_loss
    cmp = Cmp()
    last = world - 1
    # A shard of the wrong size on the last rank.
    bad_w = torch.tensor(w[lo : hi - 1]) if rank == last else tw
    ok, msg = raises(
        lambda: f(bad_w, tb, lab, tx, S, V, sampled_values=sv),
        "weight_shard" if rank == last else f"rank {last}",
    )
    cmp.true(f"wrong shard size: {msg}", ok)
    # Different labels on the last rank: every rank says so.
    lab2 = (lab[:, 0] + (1 if rank == last else 0)) % V
    ok, msg = raises(lambda: f(tw, tb, lab2, tx, S, V, seed=1), "labels", "differs")
    cmp.true(f"different labels: {msg}", ok)
    # Different candidates on rank 0.
    ids = np.array(sv[0], copy=True)
    if rank == 0:
        ids[0] = (ids[0] + 1) % V
    ok, msg = raises(
        lambda: f(tw, tb, lab[:, 0], tx, S, V, sampled_values=(ids, sv[1], sv[2])),
        "sampled_values",
        "differs",
    )
    cmp.true(f"different candidates: {msg}", ok)
    # Different seeds.
    ok, msg = raises(lambda: f(tw, tb, lab[:, 0], tx, S, V, seed=rank), "seed", "differs")
    cmp.true(f"different seeds: {msg}", ok)
    # A label outside [0, V), on every rank; a candidate outside, on one rank.
    ok, msg = raises(lambda: f(tw, tb, np.full(B, V), tx, S, V, seed=1), "labels", "outside")
    cmp.true(f"label out of range: {msg}", ok)
    ids = np.array(sv[0], copy=True)
    ids[0] = V + 5
    ok, msg = raises(
        lambda: f(tw, tb, lab[:, 0], tx, S, V, sampled_values=(ids, sv[1], sv[2])), "sampled_values"
    )
    cmp.true(f"candidate out of range: {msg}", ok)
    # A different num_sampled on rank 0 (and so a shorter candidate list there).
    ok, msg = raises(lambda: f(tw, tb, lab[:, 0], tx, S + (rank == 0), V, seed=3), "num_sampled")
    cmp.true(f"different num_sampled: {msg}", ok)
    # A float dtype mismatch on one rank only.
    xx = tx.float() if rank == last else tx
    ok, msg = raises(
        lambda: f(tw, tb, lab[:, 0], xx, S, V, seed=3), "inputs" if rank == last else f"rank {last}"
    )
    cmp.true(f"inputs dtype: {msg}", ok)
    # The module: a label its sampler refuses, on one rank.
    mod = znd.VocabParallelNCELoss(V, D, S, seed=2, dtype=torch.float64)
    badlab = torch.full((B,), V + 1 if rank == 0 else 0)
    ok, msg = raises(lambda: mod(tx, badlab), "true_classes" if rank == 0 else "rank 0")
    cmp.true(f"module, label out of range: {msg}", ok)
    # The group still works afterwards.
    out = f(tw, tb, lab[:, 0], tx, S, V, seed=3)
    cmp.true("a good call after the errors", bool(torch.isfinite(out)) and all_same(out, world))
    return cmp.result()


def main() -> None:
    rank, world, port, out_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    only = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else None
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    results: Dict[str, Any] = {}
    for name, fn in CHECKS.items():
        if only is not None and name not in only:
            continue
        try:
            results[name] = list(fn(rank, world))
        except Exception:  # noqa: BLE001 - reported to the parent, which fails the test with it
            results[name] = [False, traceback.format_exc()]
        dist.barrier()
    dist.destroy_process_group()
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()


def run_group(world: int, tmp_dir: str, timeout: float = 240.0) -> Dict[str, List[Any]]:
    """Start ``world`` ranks of this script on 127.0.0.1 (a free port; one retry should it be taken) and
    return ``{check: [[ok, message] per rank]}``. Raises RuntimeError with the ranks' output if any rank
    did not finish."""
    import os
    import socket
    import subprocess

    here = os.path.abspath(__file__)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    last = ""
    for attempt in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        outs = [os.path.join(tmp_dir, f"rank{attempt}_{r}.json") for r in range(world)]
        procs = [
            subprocess.Popen(
                [sys.executable, here, str(r), str(world), str(port), outs[r]],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(world)
        ]
        logs = []
        for p in procs:
            try:
                logs.append(p.communicate(timeout=timeout)[0])
            except subprocess.TimeoutExpired:
                for q in procs:
                    if q.poll() is None:
                        q.kill()
                logs.append(p.communicate()[0] + "\n(killed after the timeout)")
        if all(p.returncode == 0 for p in procs) and all(os.path.exists(o) for o in outs):
            per_rank = []
            for o in outs:
                with open(o) as f:
                    per_rank.append(json.load(f))
            return {name: [res[name] for res in per_rank] for name in per_rank[0]}
        last = "\n".join(
            f"--- rank {r} (exit {p.returncode}):\n{log[-3000:]}"
            for r, (p, log) in enumerate(zip(procs, logs))
        )
    raise RuntimeError(f"the {world}-rank group did not finish:\n{last}")
