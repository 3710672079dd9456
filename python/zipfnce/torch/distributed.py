"""Losses across the ranks of a ``torch.distributed`` group: ``import zipfnce.torch.distributed as znd``.

Two ways a model outgrows one device, and the loss each needs:

- **InfoNCE over the global batch** (:func:`info_nce_loss`). Data parallel: every rank holds its own rows.
  The keys (and extra negatives, ids, logQ) of every rank are gathered with their gradients, so each row is
  contrasted with the whole global batch. Row ``i`` of rank ``r`` has its positive at global column
  ``offset_r + i`` (``offset_r = r * B`` when every rank has ``B`` rows), a key id repeated anywhere in the
  global batch is masked, and the per-row losses are those of ``zipfnce.torch.info_nce_loss`` on the
  concatenated batch. Backward follows the DDP convention: the gradient that reaches a rank's
  ``query``/``keys``/``negatives`` is that of the **sum of all ranks' losses** (the backward of the gather
  is a reduce-scatter: the gathered gradient summed over the ranks, the rank's own rows kept). DDP then
  averages over ranks, which with ``reduction="mean"`` and equal batches is the gradient of the global mean.

- **Vocabulary-parallel sampled softmax and NCE** (:func:`vocab_parallel_sampled_softmax_loss`,
  :func:`vocab_parallel_nce_loss`, and the modules :class:`VocabParallelSampledSoftmaxLoss`,
  :class:`VocabParallelNCELoss`). Tensor parallel: the output embedding ``[V, d]`` is split by rows in
  contiguous blocks, rank ``r`` of ``P`` owning classes ``[r * V // P, (r + 1) * V // P)``
  (:func:`shard_range`). ``labels`` and ``inputs`` are the same on every rank, and so are the candidates
  (drawn from a seed that every rank shares). Each rank scores only the true classes and candidates it
  owns; for sampled softmax the row's normaliser is combined with two all-reduces (the row maxima, then the
  sums of ``exp(z - max)`` together with the true logits), for NCE one all-reduce sums the per-column terms.
  Every rank returns the same loss, equal to ``zipfnce.torch.sampled_softmax_loss`` / ``nce_loss`` over the
  full weight matrix with the same candidates; a rank's ``weight``/``bias`` shard receives the gradient of
  its own rows, and ``inputs`` receives the full input gradient (the partial gradients are all-reduced in
  backward, Megatron's "copy to tensor-parallel region").

The per-rank arithmetic is written with torch operations, so it runs on any device the group's backend
serves (CPU tensors with ``gloo``, CUDA tensors with ``nccl``), in any floating dtype (float16 and bfloat16
are scored in their dtype and normalised in float32). Unlike the single-process losses there is no native
kernel and no finiteness check: a NaN or infinity in the inputs gives a NaN or infinite loss, as in any torch
loss.

Every function is a collective: all ranks of ``group`` call it with consistent arguments, in the same order.
Each call first agrees on the arguments with one small collective (128 bytes per rank for InfoNCE, 512 for
the vocabulary-parallel losses, and one host synchronisation): an argument that is wrong on any rank raises
on **every** rank (on the others as a ``ValueError`` naming the argument and the rank), so a bad call never
leaves ranks hanging in a collective.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import zipfnce as _zn
from zipfnce import _infonce, _losses
from zipfnce._validate import as_ids, as_int

__all__ = [
    "info_nce_loss",
    "shard_range",
    "vocab_parallel_sampled_softmax_loss",
    "vocab_parallel_nce_loss",
    "VocabParallelSampledSoftmaxLoss",
    "VocabParallelNCELoss",
]

_REDUCTIONS = ("none", "mean", "sum")
_HASH_M = 2**31 - 1  # the modulus of the argument fingerprints (a Mersenne prime)


# ---------------------------------------------------------------------------------------------------------
# Groups and agreement
# ---------------------------------------------------------------------------------------------------------


def _group_info(group: Any) -> Tuple[Any, int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "zipfnce.torch.distributed: torch.distributed is not initialised; call "
            "torch.distributed.init_process_group first (or run under torchrun)"
        )
    g = dist.group.WORLD if group is None else group
    return g, dist.get_rank(g), dist.get_world_size(g)


def _comm_device(group: Any, like: Optional[torch.device]) -> torch.device:
    """Where the small bookkeeping tensors live: ``like`` (the call's device), except that NCCL needs CUDA."""
    try:
        backend = str(dist.get_backend(group)).lower()
    except Exception:  # pragma: no cover - a group object the backend query does not know
        backend = ""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if like is None else like


def _bits(x: float) -> int:
    """A float's IEEE-754 double bits as a signed int64 (to compare floats exactly across ranks)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _fingerprint(t: Optional[torch.Tensor]) -> Any:
    """A cheap 31-bit fingerprint of an integer or float tensor's values and positions, computed where the
    tensor lives (no copy to the host): ``sum_k (a_k mod M) * c_k mod M`` with position weights ``c_k``.
    Equal tensors give equal fingerprints; two different ones collide with probability about ``2**-31``."""
    if t is None:
        return -1
    a = t.detach().reshape(-1)
    if a.is_floating_point():
        a = a.to(torch.float64).view(torch.int64)
    a = a.to(torch.int64)
    n = a.numel()
    if n == 0:
        return 0
    k = torch.arange(n, device=a.device, dtype=torch.int64)
    c = (k * 2654435761 + 97531) % _HASH_M + 1
    h = (torch.remainder(a, _HASH_M) * c) % _HASH_M
    return (h.sum() % _HASH_M) + n  # (the length too: a run of zeros is not the empty tensor)


class _Agreement:
    """What the ranks of a call must agree on, combined by one all-reduce (MAX) of an int64 vector built where
    the tensors live (one host synchronisation, when the result is read):

    - ``same(name, v)``: ``v`` must be equal on every rank; it travels as ``v`` and ``-v``, so the reduction
      yields its largest and smallest value at once;
    - ``flag(name, v)``: an error if ``v`` is nonzero on any rank (a check computed on the device);
    - ``largest(name, v)``: the largest value over the ranks (rank 0 hands out a seed this way);
    - ``error``: a local argument error; every rank then raises.
    """

    def __init__(self) -> None:
        self.names: List[str] = []
        self.kinds: List[str] = []
        self.values: List[Any] = []
        self.error: Optional[BaseException] = None

    def same(self, name: str, v: Any) -> None:
        self._add(name, "same", v)

    def flag(self, name: str, v: Any) -> None:
        self._add(name, "flag", v)

    def largest(self, name: str, v: Any) -> None:
        self._add(name, "max", v)

    def _add(self, name: str, kind: str, v: Any) -> None:
        self.names.append(name)
        self.kinds.append(kind)
        self.values.append(v)

    def run(self, group: Any, rank: int, device: torch.device) -> List[int]:
        """All-reduce; raise on every rank if any rank failed or disagrees; return the reduced values in the
        order added (``same``: the common value; ``flag``, ``largest``: the maximum)."""
        failed = self.error is not None
        # Host integers go over in one copy; values computed on the device (fingerprints, checks) stay there.
        host: List[int] = [rank + 1 if failed else 0]
        dev_vals: List[torch.Tensor] = []
        dev_pos: List[int] = []
        for kind, v in zip(self.kinds, self.values):
            if failed:
                v = 0  # (the values may be half-filled: send only the error, every other entry neutral)
            if isinstance(v, torch.Tensor):
                dev_pos.append(len(host))
                dev_vals.append(v.reshape(()).to(torch.int64))
                host.extend([0, 0] if kind == "same" else [0])
            else:
                host.extend([int(v), -int(v)] if kind == "same" else [int(v)])
        if len(host) > _AGREE_SLOTS:  # pragma: no cover - a programming error, not a user's
            raise AssertionError("zipfnce.torch.distributed: too many entries to agree on")
        # A fixed length: a rank that failed halfway, or took another branch, still sends as much as the others.
        vec = torch.tensor(host + [0] * (_AGREE_SLOTS - len(host)), dtype=torch.int64).to(device)
        if dev_vals:
            t = torch.stack(dev_vals).to(device)
            pos = torch.tensor(dev_pos, dtype=torch.int64, device=device)
            vec.index_copy_(0, pos, t)
            kinds = [k for k, v in zip(self.kinds, self.values) if isinstance(v, torch.Tensor)]
            neg = [p + 1 for p, k in zip(dev_pos, kinds) if k == "same"]
            if neg:
                sel = torch.tensor([k == "same" for k in kinds], device=device)
                vec.index_copy_(0, torch.tensor(neg, dtype=torch.int64, device=device), -t[sel])
        dist.all_reduce(vec, op=dist.ReduceOp.MAX, group=group)
        out = vec.tolist()
        if self.error is not None:
            raise self.error
        if out[0] != 0:
            raise ValueError(_OTHER_RANK.format(out[0] - 1))
        res: List[int] = []
        i = 1
        for name, kind in zip(self.names, self.kinds):
            if kind == "same":
                hi, lo = out[i], -out[i + 1]
                if hi != lo:
                    raise ValueError(
                        f"{name}: differs between the ranks of the group (every rank must pass the same; "
                        f"values from {lo} to {hi})"
                    )
                i += 2
            else:
                hi = out[i]
                i += 1
                if kind == "flag" and hi:
                    raise ValueError(f"{name}, on some rank of the group")
            res.append(hi)
        return res


_AGREE_SLOTS = 64
_OTHER_RANK = (
    "rank {} of the group rejected its arguments (its error says which); this rank stops too so that no rank "
    "waits in a collective"
)


def _reduction(r: Any) -> str:
    if not isinstance(r, str) or r not in _REDUCTIONS:
        raise ValueError(f"reduction: must be one of 'none', 'mean', 'sum', got {r!r}")
    return r


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _float_tensor(t: Any, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.layout != torch.strided:
        raise TypeError(f"{name}: must be a dense (strided) tensor, got layout {t.layout}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: has dtype {t.dtype}, but the call computes in {dtype}; convert it first")
    return t


def _acc_dtype(dt: torch.dtype) -> torch.dtype:
    """The dtype the normalisers are accumulated in: float32 at least."""
    return torch.promote_types(dt, torch.float32)


def _masked_focal(logp: torch.Tensor, gamma: float) -> torch.Tensor:
    """``-(1 - p)**gamma * log p`` with ``p = exp(logp)``; ``gamma = 0`` is ``-log p``. Safe at ``p = 1``
    (no NaN gradient from ``0**(gamma - 1)``)."""
    if gamma == 0.0:
        return -logp
    omp = -torch.expm1(logp)
    pos = omp > 0
    w = torch.where(pos, torch.where(pos, omp, torch.ones_like(omp)) ** gamma, torch.zeros_like(omp))
    return -w * logp


def _dtype_code(dt: torch.dtype) -> int:
    return {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}.get(dt, 5)


# ---------------------------------------------------------------------------------------------------------
# Collectives with gradients
# ---------------------------------------------------------------------------------------------------------


class _GatherRows(torch.autograd.Function):
    """All-gather of equally shaped ``[m, ...]`` blocks into ``[P * m, ...]``; backward sums the gathered
    gradient over the ranks and returns this rank's block (the sum-of-all-ranks'-losses convention): a
    reduce-scatter, or where the backend has none, an all-reduce and a slice (twice the wire bytes)."""

    @staticmethod
    def forward(ctx, x, rank, world, group):  # type: ignore[override]
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x, group=group)
        ctx.rank, ctx.m, ctx.group = rank, x.shape[0], group
        return torch.cat(out)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        g = g.contiguous()
        out = g.new_empty((ctx.m,) + tuple(g.shape[1:]))
        if _reduce_scatter(out, g, ctx.group):
            return out, None, None, None
        g = g.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g[ctx.rank * ctx.m : (ctx.rank + 1) * ctx.m], None, None, None


_NO_REDUCE_SCATTER: set = set()  # backends found without reduce_scatter_tensor


def _reduce_scatter(out: torch.Tensor, g: torch.Tensor, group: Any) -> bool:
    """``out = sum over ranks of g``'s block of this rank, by reduce-scatter; False where the backend lacks
    it (then nothing was sent: the check happens before any communication, alike on every rank)."""
    try:
        backend = str(dist.get_backend(group))
    except Exception:  # pragma: no cover
        backend = "?"
    if backend in _NO_REDUCE_SCATTER:
        return False
    try:
        dist.reduce_scatter_tensor(out, g, op=dist.ReduceOp.SUM, group=group)
    except (RuntimeError, NotImplementedError, AttributeError):  # pragma: no cover - older gloo builds
        _NO_REDUCE_SCATTER.add(backend)
        return False
    return True


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) of per-rank partial values into the replicated total. Backward is the identity:
    every rank holds the same loss and the same upstream gradient, and ``d total / d partial_r = 1``
    (Megatron's "reduce from tensor-parallel region")."""

    @staticmethod
    def forward(ctx, x, group):  # type: ignore[override]
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None


class _CopyToRanks(torch.autograd.Function):
    """The identity on a tensor every rank holds; backward sums the ranks' partial gradients (each rank's
    gradient only covers the classes it owns), so every rank gets the full one (Megatron's "copy to
    tensor-parallel region")."""

    @staticmethod
    def forward(ctx, x, group):  # type: ignore[override]
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        g = g.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def _gather_plain(x: torch.Tensor, world: int, group: Any) -> torch.Tensor:
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x, group=group)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------
# InfoNCE over the global batch
# ---------------------------------------------------------------------------------------------------------


def _pad_rows(x: torch.Tensor, m: int) -> torch.Tensor:
    if x.shape[0] == m:
        return x
    return torch.cat([x, x.new_zeros((m - x.shape[0],) + tuple(x.shape[1:]))])


def info_nce_loss(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    negatives: Optional[torch.Tensor] = None,
    temperature: float,
    key_log_q: Any = None,
    negative_log_q: Any = None,
    key_ids: Any = None,
    negative_ids: Any = None,
    symmetric: bool = False,
    focal_gamma: float = 0.0,
    reduction: str = "mean",
    group: Any = None,
) -> torch.Tensor:
    """InfoNCE of this rank's rows against the global batch of ``group`` (a collective call).

    Each rank passes its own ``query`` and ``keys`` ``[B_r, d]``, optional ``negatives`` ``[N_r, d]`` and the
    per-item constants (``key_log_q``, ``key_ids`` ``[B_r]``; ``negative_log_q``, ``negative_ids``
    ``[N_r]``; tensors or arrays). They are gathered in rank order: the global keys are
    ``K = cat_r keys_r`` (``B_tot`` rows), the global negatives ``cat_r negatives_r``, and row ``i`` of rank
    ``r`` has its positive at global column ``c = offset_r + i`` with ``offset_r = sum_{s<r} B_s``
    (``r * B`` for equal batches). For that row::

        z[j]         = query[i] . K[j] / temperature - key_log_q_global[j]          (j < B_tot)
        z[B_tot + m] = query[i] . negatives_global[m] / temperature - negative_log_q_global[m]
        loss[i]      = -(1 - p_c)**focal_gamma * log p_c,      p = softmax(z) over the unmasked columns

    With ``key_ids`` a key column ``j != c`` whose id equals the row's key id is masked, anywhere in the
    global batch, and so is a negative with that id (``negative_ids``). ``symmetric=True`` averages with
    the key-to-query loss of key ``c`` over all ``B_tot`` global queries (the queries are gathered too).
    The per-row losses equal ``zipfnce.torch.info_nce_loss`` on the concatenated batch (float rounding
    aside); ``reduction`` reduces this rank's ``B_r`` rows (``"none"``: ``[B_r]``).

    Gradients: those of the **sum over ranks** of every rank's returned loss reach this rank's ``query``,
    ``keys`` and ``negatives`` (the gather's backward is a reduce-scatter: the gathered gradient summed over
    the ranks, this rank's rows kept). Every rank must call backward, as with DDP.

    Unequal local batches are supported (the blocks are padded to the largest for the gather); the ranks
    must agree on whether ``negatives`` and each optional argument are given, on ``temperature``,
    ``symmetric``, ``focal_gamma``, ``reduction``, the dtype, ``d`` and which tensors require gradients;
    otherwise every rank raises ``ValueError``. Cost: one all-gather of 16 int64 per rank to agree (and a
    host synchronisation), one all-gather of the embeddings ``[B_r + N_r (+ B_r if symmetric), d]``, one of
    the ids and one of the logQ values when given; in backward one reduce-scatter of the gathered embedding
    gradient ``[P * max_r(B_r + N_r (+ B_r)), d]`` (an all-reduce and a slice where the backend has no
    reduce-scatter: twice the wire bytes).
    """
    g, rank, world = _group_info(group)
    err: Optional[BaseException] = None
    meta = [0] * 16
    try:
        red = _reduction(reduction)
        opts = _infonce.options(temperature, symmetric, focal_gamma, None)
        query = _float_tensor(query, "query")
        dt, dev = query.dtype, query.device
        keys = _float_tensor(keys, "keys", dt)
        if query.ndim != 2 or query.shape[0] == 0:
            raise ValueError(f"query: must be a non-empty [batch, dim] tensor, got shape {list(query.shape)}")
        if keys.shape != query.shape:
            raise ValueError(
                f"keys: must have the shape of query {list(query.shape)}, got {list(keys.shape)}"
            )
        b, d = query.shape
        if negatives is not None:
            negatives = _float_tensor(negatives, "negatives", dt)
            if negatives.ndim != 2 or negatives.shape[1] != d:
                raise ValueError(f"negatives: must be [N, {d}] like query, got shape {list(negatives.shape)}")
        n = 0 if negatives is None else negatives.shape[0]
        if negatives is None and negative_log_q is not None:
            raise ValueError("negative_log_q: given without negatives")
        if negatives is None and negative_ids is not None:
            raise ValueError("negative_ids: given without negatives")
        if negative_ids is not None and key_ids is None:
            raise ValueError(
                "negative_ids: needs key_ids (a negative is masked where its id equals the row's key id)"
            )
        kq = _aux_float(key_log_q, "key_log_q", b, "one per key", dt, dev)
        nq = _aux_float(negative_log_q, "negative_log_q", n, "one per negative", dt, dev)
        kid = _aux_ids(key_ids, "key_ids", b, "one per key", dev)
        nid = _aux_ids(negative_ids, "negative_ids", n, "one per negative", dev)
        grad = torch.is_grad_enabled()
        flags = (
            (negatives is not None)
            | (kq is not None) << 1
            | (nq is not None) << 2
            | (kid is not None) << 3
            | (nid is not None) << 4
            | opts.symmetric << 5
            | (grad and query.requires_grad) << 6
            | (grad and keys.requires_grad) << 7
            | (grad and negatives is not None and negatives.requires_grad) << 8
        )
        meta = [
            0, b, n, d, int(flags), _dtype_code(dt), _bits(opts.temperature), _bits(opts.focal_gamma),
            _REDUCTIONS.index(red), 0, 0, 0, 0, 0, 0, 0,
        ]  # fmt: skip
    except (TypeError, ValueError) as e:
        err = e
        meta = [rank + 1] + [0] * 15
    cdev = _comm_device(g, query.device if isinstance(query, torch.Tensor) else None)
    m_all = (
        _gather_plain(torch.tensor(meta, dtype=torch.int64, device=cdev), world, g).view(world, 16).tolist()
    )
    if err is not None:
        raise err
    bad = [row[0] for row in m_all if row[0] != 0]
    if bad:
        raise ValueError(_OTHER_RANK.format(bad[0] - 1))
    flag_names = [
        "negatives (given or None)", "key_log_q (given or None)", "negative_log_q (given or None)",
        "key_ids (given or None)", "negative_ids (given or None)", "symmetric", "query (requires_grad)",
        "keys (requires_grad)", "negatives (requires_grad)",
    ]  # fmt: skip
    differ = 0
    for row in m_all:
        differ |= row[4] ^ m_all[0][4]
    for bit, name in enumerate(flag_names):
        if differ >> bit & 1:
            raise ValueError(f"{name}: differs between the ranks of the group; every rank must agree")
    for col, name in (
        (3, "query"),
        (5, "query (dtype)"),
        (6, "temperature"),
        (7, "focal_gamma"),
        (8, "reduction"),
    ):
        vals = {row[col] for row in m_all}
        if len(vals) > 1:
            what = " (the number of columns)" if col == 3 else ""
            raise ValueError(f"{name}: differs between the ranks of the group{what}; every rank must agree")

    bs = [row[1] for row in m_all]
    ns = [row[2] for row in m_all]
    sym = opts.symmetric
    rows = [bs[r] + ns[r] + (bs[r] if sym else 0) for r in range(world)]
    m = max(rows)
    offs = [sum(bs[:r]) for r in range(world)]
    b_tot, n_tot = sum(bs), sum(ns)

    def layout(parts: Sequence[str]) -> torch.Tensor:
        # Positions in the gathered [world * m] block of each rank's keys ("k"), negatives ("n"), queries ("q").
        pieces = []
        for p in parts:
            for r in range(world):
                start = r * m + {"k": 0, "n": bs[r], "q": bs[r] + ns[r]}[p]
                pieces.append(torch.arange(start, start + (ns[r] if p == "n" else bs[r]), device=dev))
        return torch.cat(pieces)

    # One gather with gradients: [keys; negatives; queries (symmetric)] per rank, padded to m rows.
    local = [keys] + ([negatives] if negatives is not None else []) + ([query] if sym else [])
    block = _pad_rows(torch.cat(local) if len(local) > 1 else keys, m)
    allrows = _GatherRows.apply(block, rank, world, g)
    cols = allrows.index_select(0, layout(["k", "n"]))  # [B_tot + N_tot, d]
    q_all = allrows.index_select(0, layout(["q"])) if sym else None

    acc = _acc_dtype(dt)
    z = (query @ cols.T).to(acc) / opts.temperature  # [B_r, B_tot + N_tot]
    if kq is not None or nq is not None:
        # One gather for both kinds of logQ: [key_log_q; negative_log_q] per rank (zeros for a missing kind).
        lq = torch.cat(
            [kq if kq is not None else query.new_zeros(b), nq if nq is not None else query.new_zeros(n)]
        )
        lq_all = _gather_plain(_pad_rows(lq, m), world, g).to(acc)
        z = z - lq_all.index_select(0, layout(["k", "n"]))
    ar = torch.arange(b, device=dev)
    tgt = offs[rank] + ar
    kid_all = None
    if kid is not None:
        ids_local = torch.cat([kid, nid if nid is not None else kid.new_zeros(ns[rank])])
        ids_all = _gather_plain(_pad_rows(ids_local, m), world, g)
        kid_all = ids_all[layout(["k"])]
        mask = torch.zeros(b, b_tot + n_tot, dtype=torch.bool, device=dev)
        mask[:, :b_tot] = kid[:, None] == kid_all[None, :]
        if nid is not None:
            mask[:, b_tot:] = kid[:, None] == ids_all[layout(["n"])][None, :]
        mask[ar, tgt] = False
        z = z.masked_fill(mask, float("-inf"))
    logp = z[ar, tgt] - torch.logsumexp(z, dim=1)
    loss = _masked_focal(logp, opts.focal_gamma)
    if sym:
        assert q_all is not None
        zc = (keys @ q_all.T).to(acc) / opts.temperature  # [B_r, B_tot]: key i against every global query
        if kid_all is not None:
            maskc = kid[:, None] == kid_all[None, :]
            maskc[ar, tgt] = False
            zc = zc.masked_fill(maskc, float("-inf"))
        logpc = zc[ar, tgt] - torch.logsumexp(zc, dim=1)
        loss = 0.5 * (loss + _masked_focal(logpc, opts.focal_gamma))
    return _reduce(loss, red)


def _aux_float(
    x: Any, name: str, n: int, what: str, dt: torch.dtype, dev: torch.device
) -> Optional[torch.Tensor]:
    if x is None:
        return None
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name}: expected real numbers, got dtype {t.dtype}")
    if tuple(t.shape) != (n,):
        raise ValueError(f"{name}: must have shape ({n},) ({what}), got {tuple(t.shape)}")
    return t.detach().to(device=dev, dtype=dt)


def _aux_ids(x: Any, name: str, n: int, what: str, dev: torch.device) -> Optional[torch.Tensor]:
    if x is None:
        return None
    t = _int_tensor(x, name)
    if tuple(t.shape) != (n,):
        raise ValueError(f"{name}: must have shape ({n},) ({what}), got {tuple(t.shape)}")
    return t.to(dev)


def _int_tensor(x: Any, name: str) -> torch.Tensor:
    """Integer ids as an int64 tensor (a tensor stays where it is; anything else goes through NumPy)."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name}: expected integer ids, got a tensor of dtype {x.dtype}")
        return x.detach().to(torch.int64)
    return torch.from_numpy(np.ascontiguousarray(as_ids(x, name)))


# ---------------------------------------------------------------------------------------------------------
# Vocabulary-parallel sampled softmax and NCE
# ---------------------------------------------------------------------------------------------------------


def shard_range(num_classes: int, group: Any = None) -> Tuple[int, int]:
    """The classes ``[lo, hi)`` this rank owns when ``num_classes`` rows are split in contiguous blocks over
    the ranks of ``group``: rank ``r`` of ``P`` owns ``[r * V // P, (r + 1) * V // P)`` (the blocks differ
    by at most one row when ``P`` does not divide ``V``). Needs ``num_classes >= P`` (every rank owns a
    class)."""
    v = as_int(num_classes, "num_classes", lo=1)
    _, rank, world = _group_info(group)
    if v < world:
        raise ValueError(
            f"num_classes: is {v}, fewer than the {world} ranks of the group (each must own a class)"
        )
    return rank * v // world, (rank + 1) * v // world


def _vocab_parallel(
    nce: bool,
    weight_shard: Any,
    bias_shard: Any,
    labels: Any,
    inputs: Any,
    num_sampled: Any,
    num_classes: Any,
    num_true: Any,
    sampled_values: Any,
    remove_accidental_hits: Any,
    seed: Any,
    subtract_log_q: Any,
    focal_gamma: Any,
    reduction: Any,
    group: Any,
    sparse: bool = False,
    pre_error: Optional[BaseException] = None,
) -> torch.Tensor:
    g, rank, world = _group_info(group)
    agree = _Agreement()
    dev: Optional[torch.device] = None
    try:
        if pre_error is not None:
            raise pre_error  # (a module's sampler refused the labels: every rank hears of it below)
        red = _reduction(reduction)
        opts = _losses.options(
            nce, num_sampled, num_classes, num_true, remove_accidental_hits, seed, subtract_log_q, focal_gamma
        )
        v, nt, ns = opts.num_classes, opts.num_true, opts.num_sampled
        if v < world:
            raise ValueError(
                f"num_classes: is {v}, fewer than the {world} ranks of the group (each must own a class)"
            )
        lo, hi = rank * v // world, (rank + 1) * v // world
        w = _float_tensor(weight_shard, "weight_shard")
        dt, dev = w.dtype, w.device
        if w.ndim != 2 or w.shape[0] != hi - lo:
            raise ValueError(
                f"weight_shard: rank {rank} of {world} owns classes [{lo}, {hi}) of num_classes={v}, so its "
                f"shard must be [{hi - lo}, dim], got shape {list(w.shape)} (see shard_range)"
            )
        d = w.shape[1]
        bsh = None
        if bias_shard is not None:
            bsh = _float_tensor(bias_shard, "bias_shard", dt)
            if tuple(bsh.shape) != (hi - lo,):
                raise ValueError(
                    f"bias_shard: must have shape ({hi - lo},) like weight_shard, got {tuple(bsh.shape)}"
                )
        x = _float_tensor(inputs, "inputs", dt)
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(
                f"inputs: must be [batch, {d}] (weight_shard has {d} columns), got {list(x.shape)}"
            )
        lab = _int_tensor(labels, "labels")
        if lab.ndim == 1 and nt == 1:
            lab = lab.reshape(-1, 1)
        if lab.ndim != 2 or lab.shape[1] != nt:
            raise ValueError(f"labels: must be [batch, num_true={nt}], got shape {tuple(lab.shape)}")
        bsz = lab.shape[0]
        if bsz == 0:
            raise ValueError("labels: the batch is empty")
        if x.shape[0] != bsz:
            raise ValueError(f"inputs: has {x.shape[0]} rows but labels has {bsz}")
        lab = lab.to(dev)
        agree.same("num_classes", v)
        agree.same("num_true", nt)
        agree.same("num_sampled", ns)
        agree.same("labels (batch size)", bsz)
        agree.same("inputs (dim)", d)
        agree.same("weight_shard (dtype)", _dtype_code(dt))
        agree.same("bias_shard (given or not)", bsh is not None)
        agree.same("remove_accidental_hits", opts.remove_accidental_hits)
        agree.same("subtract_log_q", opts.subtract_log_q)
        agree.same("focal_gamma", _bits(opts.focal_gamma))
        agree.same("reduction", _REDUCTIONS.index(red))
        grad = torch.is_grad_enabled()
        agree.same("inputs (requires_grad)", grad and x.requires_grad)
        agree.same("labels", _fingerprint(lab))
        agree.flag("labels: a class id outside [0, num_classes))", ((lab < 0) | (lab >= v)).any())
        cand = te = se = None
        if sampled_values is not None:
            c0, te0, se0 = _losses.split_sampled_values(sampled_values)
            cand = _int_tensor(c0, "sampled_values").to(dev)
            if cand.ndim == 1:
                if cand.shape[0] != ns:
                    raise ValueError(
                        f"sampled_values: has {cand.shape[0]} candidates but num_sampled is {ns}"
                    )
            elif cand.ndim == 2:
                if tuple(cand.shape) != (bsz, ns):
                    raise ValueError(
                        f"sampled_values: per-row candidates must be [batch={bsz}, num_sampled={ns}], "
                        f"got {tuple(cand.shape)}"
                    )
            else:
                raise ValueError(
                    f"sampled_values: candidates must be [S] or [batch, S], got shape {tuple(cand.shape)}"
                )
            if te0 is None:
                opts.check_no_true_expected()
            else:
                te = _aux_counts(te0, "sampled_values", dt, dev)
                if tuple(te.shape) != (bsz, nt) and not (nt == 1 and tuple(te.shape) == (bsz,)):
                    raise ValueError(
                        f"sampled_values: true_expected_count must be {(bsz, nt)}, got {tuple(te.shape)}"
                    )
                te = te.reshape(bsz, nt)
            se = _aux_counts(se0, "sampled_values", dt, dev)
            if se.shape != cand.shape:
                raise ValueError(
                    f"sampled_values: sampled_expected_count has shape {tuple(se.shape)}, the candidates "
                    f"{tuple(cand.shape)}"
                )
            agree.same("sampled_values (shared or per-row candidates)", cand.ndim)
            agree.same("sampled_values (candidates)", _fingerprint(cand))
            agree.same("sampled_values (expected counts)", _fingerprint(se))
            agree.same("sampled_values (true expected counts)", _fingerprint(te))
            agree.flag(
                "sampled_values: a candidate outside [0, num_classes))", ((cand < 0) | (cand >= v)).any()
            )
            if opts.subtract_log_q:
                bad = (se <= 0).any() if te is None else ((se <= 0).any() | (te <= 0).any())
                agree.flag("sampled_values: an expected count is <= 0 (subtract_log_q takes its log)", bad)
        else:
            agree.same("sampled_values (given or None)", -1)
            agree.same("seed (given or None)", opts.seed is not None)
            s = 0 if opts.seed is None else opts.seed
            agree.same("seed", s >> 32)
            agree.same("seed (low bits)", s & 0xFFFFFFFF)
            # Rank 0's fresh seed, for seed=None: the reduction (MAX) hands it to every rank.
            agree.largest(
                "seed (drawn on rank 0)", int.from_bytes(os.urandom(8), "little") >> 2 if rank == 0 else -1
            )
    except (TypeError, ValueError) as e:
        agree.error = e
    res = agree.run(g, rank, _comm_device(g, dev))
    if sampled_values is None:
        # Every rank draws the candidates itself, from the same labels and seed: the single-process draw.
        s = opts.seed if opts.seed is not None else res[-1]
        c0, te0, se0 = opts._replace(seed=s).draw(lab.cpu().numpy())
        cand = torch.from_numpy(np.ascontiguousarray(c0)).to(dev)
        te = torch.from_numpy(np.asarray(te0)).to(device=dev, dtype=dt).reshape(bsz, nt)
        se = torch.from_numpy(np.asarray(se0)).to(device=dev, dtype=dt)
    assert cand is not None and se is not None and dev is not None
    return _vp_loss(nce, w, bsh, lab, x, cand, te, se, lo, hi, opts, red, g, sparse)


def _aux_counts(x: Any, name: str, dt: torch.dtype, dev: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name}: expected counts as real numbers, got dtype {t.dtype}")
    return t.detach().to(device=dev, dtype=dt)


def _rows(idx: torch.Tensor, table: torch.Tensor, sparse: bool) -> torch.Tensor:
    """``table[idx]`` for a ``[n, d]`` table (``F.embedding``) or a ``[n]`` bias (``torch.gather``): with
    ``sparse`` the table's gradient is a sparse tensor holding only those rows."""
    if table.ndim == 1:
        return torch.gather(table, 0, idx.reshape(-1), sparse_grad=sparse).view(idx.shape)
    return F.embedding(idx, table, sparse=sparse)


def _vp_loss(
    nce: bool,
    w: torch.Tensor,
    bsh: Optional[torch.Tensor],
    lab: torch.Tensor,
    x: torch.Tensor,
    cand: torch.Tensor,
    te: Optional[torch.Tensor],
    se: torch.Tensor,
    lo: int,
    hi: int,
    opts: _losses.SampledOptions,
    red: str,
    group: Any,
    sparse: bool,
) -> torch.Tensor:
    """One rank's share of the loss: the true classes and candidates in ``[lo, hi)``, then the collectives."""
    acc = _acc_dtype(w.dtype)
    bsz, nt = lab.shape
    y = 1.0 / nt
    xr = _CopyToRanks.apply(x, group) if x.requires_grad and torch.is_grad_enabled() else x

    # True columns: z_t = x . w_t + b_t - log(te), scored where owned, 0 elsewhere.
    own_t = (lab >= lo) & (lab < hi)
    it = torch.where(own_t, lab - lo, torch.zeros_like(lab))
    zt = (xr[:, None, :] * _rows(it, w, sparse)).sum(-1).to(acc)
    if bsh is not None:
        zt = zt + _rows(it, bsh, sparse).to(acc)
    if opts.subtract_log_q and te is not None:
        zt = zt - torch.log(te.to(acc))

    gamma = opts.focal_gamma
    ninf = torch.tensor(float("-inf"), dtype=acc, device=zt.device)
    zt_m = torch.where(own_t, zt, ninf)
    if cand.ndim == 1:
        # Shared candidates: the owned columns as one [B, S_r] block.
        sel = torch.nonzero((cand >= lo) & (cand < hi)).squeeze(1)
        ids = cand.index_select(0, sel)
        wc = _rows(ids - lo, w, sparse)  # [S_r, d]
        shift = torch.zeros(ids.shape[0], dtype=acc, device=ids.device)
        if bsh is not None:
            shift = shift + _rows(ids - lo, bsh, sparse).to(acc)
        if opts.subtract_log_q:
            shift = shift - torch.log(se.index_select(0, sel).to(acc))
        if opts.remove_accidental_hits:
            cols = torch.nonzero(torch.isin(ids, lab)).squeeze(1)  # candidates that are some row's true class
            hmask = (ids.index_select(0, cols)[None, :, None] == lab[:, None, :]).any(-1)  # [B, k]
        else:
            cols = hmask = None
        if not (nce and gamma != 0.0):
            # Fused: one matmul, the normaliser in place, a hand-written backward.
            mt = zt_m.detach().amax(1)
            part_s, mx = _SharedCandidates.apply(xr, wc, shift, mt, cols, hmask, nce, group)
        else:
            # Focal NCE: the same block through autograd.
            zs = (xr @ wc.T).to(acc) + shift[None, :]
            keep = torch.ones(zs.shape, dtype=torch.bool, device=zs.device)
            if cols is not None and cols.numel():
                keep[:, cols] = ~hmask
            part_s = torch.where(keep, _nce_terms(zs, 0.0, gamma), torch.zeros_like(zs)).sum(1)
    else:
        # Per-row candidates: only the owned entries of [B, S] are scored (n of them, about B * S / P), then
        # placed in a [B, S] block (-inf elsewhere).
        own_s = (cand >= lo) & (cand < hi)
        if opts.remove_accidental_hits:
            own_s = own_s & ~(cand[:, :, None] == lab[:, None, :]).any(-1)
        rows, cols2 = torch.nonzero(own_s, as_tuple=True)
        ic = cand[rows, cols2] - lo
        z1 = (xr.index_select(0, rows) * _rows(ic, w, sparse)).sum(-1).to(acc)  # [n]
        if bsh is not None:
            z1 = z1 + _rows(ic, bsh, sparse).to(acc)
        if opts.subtract_log_q:
            z1 = z1 - torch.log(se[rows, cols2].to(acc))
        if nce:
            t1 = _nce_terms(z1, 0.0, gamma)
            part_s = torch.zeros(bsz, dtype=acc, device=z1.device).index_add(0, rows, t1)
        else:
            zs_m = torch.full(cand.shape, float("-inf"), dtype=acc, device=z1.device).index_put(
                (rows, cols2), z1
            )
            mx = torch.maximum(zt_m.detach().amax(1), zs_m.detach().amax(1))
            dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=group)
            part_s = torch.exp(zs_m - mx[:, None]).sum(1)

    if nce:
        # Sigmoid cross-entropy per column, summed over the owned columns, then over the ranks.
        part = torch.where(own_t, _nce_terms(zt, y, gamma), torch.zeros_like(zt)).sum(1) + part_s
        loss = _SumAcrossRanks.apply(part, group)
    else:
        # lse = mx + log(sum exp(z - mx)) is exact for any mx, so mx carries no gradient.
        e = torch.exp(zt_m - mx[:, None]).sum(1) + part_s
        zt0 = torch.where(own_t, zt, torch.zeros_like(zt))
        tot = _SumAcrossRanks.apply(torch.cat([e[:, None], zt0], 1), group)
        lse = mx + torch.log(tot[:, 0])
        logp = tot[:, 1:] - lse[:, None]
        loss = (y * _masked_focal(logp, gamma)).sum(1)
    return _reduce(loss, red)


def _nce_terms(z: torch.Tensor, y: float, gamma: float) -> torch.Tensor:
    """NCE's per-column term: sigmoid cross-entropy with label ``y``, focal for ``gamma > 0``."""
    if gamma == 0.0:
        return torch.clamp(z, min=0) - z * y + torch.log1p(torch.exp(-z.abs()))
    s = torch.sigmoid(z)
    return -(y * (1 - s) ** gamma * F.logsigmoid(z) + (1 - y) * s**gamma * F.logsigmoid(-z))


class _SharedCandidates(torch.autograd.Function):
    """A rank's owned shared candidates ``c`` of every row, fused: ``z = x W_c^T + shift`` (``shift`` = bias
    minus log expected count; accidental hits at ``(row, cols[k])`` where ``hmask`` is set become ``-inf``).

    Softmax: the row maximum ``m`` (of ``z`` and the true columns' local maximum ``mt``) is all-reduced
    (MAX), and the block's share of the normaliser ``e_b = sum_j exp(z_bj - m_b)`` is returned with ``m``.
    NCE (label 0, no focal): ``e_b = sum_j softplus(z_bj)``. Backward: ``G = de_b * exp(z_bj - m_b)``
    (softmax) or ``de_b * sigmoid(z_bj)`` (NCE); ``dx = G W_c``, ``dW_c = G^T x``, ``dshift = sum_b G``.
    Only the ``[B, S_r]`` block is kept between the passes (the exps, or ``z`` for NCE)."""

    @staticmethod
    def forward(ctx, x, wc, shift, mt, cols, hmask, nce, group):  # type: ignore[override]
        acc = shift.dtype
        if x.dtype == acc:
            z = torch.addmm(shift[None, :], x, wc.T)
        else:
            z = (x @ wc.T).to(acc).add_(shift[None, :])
        if cols is not None and cols.numel():
            zc = z.index_select(1, cols).masked_fill_(hmask, float("-inf"))
            z.index_copy_(1, cols, zc)
        if nce:
            e = (torch.clamp(z, min=0) + torch.log1p(torch.exp(-z.abs()))).sum(1)
            m = mt  # (unused)
        else:
            m = torch.maximum(mt, z.amax(1)) if z.shape[1] else mt.clone()
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
            z.sub_(m[:, None]).exp_()
            e = z.sum(1)
        ctx.nce = nce
        ctx.save_for_backward(x, wc, z)
        ctx.mark_non_differentiable(m)
        return e, m

    @staticmethod
    def backward(ctx, ge, _gm):  # type: ignore[override]
        x, wc, z = ctx.saved_tensors
        g = (torch.sigmoid(z) if ctx.nce else z) * ge[:, None]
        gx = gw = gs = None
        gd = g.to(x.dtype)
        if ctx.needs_input_grad[0]:
            gx = gd @ wc
        if ctx.needs_input_grad[1]:
            gw = gd.T @ x
        if ctx.needs_input_grad[2]:
            gs = g.sum(0)
        return gx, gw, gs, None, None, None, None, None


def vocab_parallel_sampled_softmax_loss(
    weight_shard: torch.Tensor,
    bias_shard: Optional[torch.Tensor],
    labels: Any,
    inputs: torch.Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Any = None,
    remove_accidental_hits: bool = True,
    seed: Optional[int] = None,
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
    reduction: str = "mean",
    group: Any = None,
) -> torch.Tensor:
    """Sampled softmax with the output layer split by rows over ``group`` (a collective call); the loss of
    ``zipfnce.torch.sampled_softmax_loss`` over the full weight matrix with the same candidates.

    Rank ``r`` scores the columns it owns (true classes and candidates in ``[lo, hi)``, logits as in the
    single-process loss: ``z = x . w + b - log(expected count)``, accidental hits masked). With
    ``m_b = max_r max_owned z`` (all-reduce MAX), ``E_b = sum_r sum_owned exp(z - m_b)`` and the true logits
    ``z_t`` (one all-reduce SUM of ``[B, 1 + num_true]``)::

        lse_b = m_b + log E_b,   loss_b = -sum_t (1/num_true) (1 - p_t)**focal_gamma log p_t,
        log p_t = z_t - lse_b

    ``weight_shard`` ``[hi - lo, d]`` and ``bias_shard`` ``[hi - lo]`` (or None) are this rank's rows
    ``[lo, hi) = shard_range(num_classes, group)``; ``labels`` int ``[B]`` or ``[B, num_true]`` and ``inputs``
    ``[B, d]`` are the same on every rank (tensor-parallel convention; ``labels`` are checked by a fingerprint,
    ``inputs`` are not: each rank uses its own). ``sampled_values``: None draws ``num_sampled`` unique
    log-uniform candidates over ``num_classes`` exactly as the single-process call with the same ``seed``
    (every rank draws them itself from the same seed, so no ids travel); with ``seed=None`` rank 0 picks a
    fresh seed and the agreement step hands it to the others. Given candidates (TensorFlow's triple or a
    ``CandidateSample``; shared ``[S]`` or per-row ``[B, S]``) must be the same on every rank (checked by a
    fingerprint). Returns the same loss on every rank (``reduction`` as in ``zipfnce.torch``).

    Gradients: this rank's ``weight_shard``/``bias_shard`` get the gradient of its rows (dense, O(shard);
    the modules offer ``sparse=True``), ``inputs`` the full input gradient (all-reduced in backward). Call
    backward on every rank with the same upstream gradient (``loss.backward()`` does).

    Communication per call, ``B`` rows, ``P`` ranks, float ``f`` bytes: an agreement all-reduce of 64
    int64 (and one host synchronisation); an all-reduce MAX of ``B`` floats and an all-reduce SUM of
    ``B * (1 + num_true)`` floats; in backward, when ``inputs`` requires grad, an all-reduce of ``B * d``
    floats.
    """
    return _vocab_parallel(
        False, weight_shard, bias_shard, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        remove_accidental_hits, seed, subtract_log_q, focal_gamma, reduction, group,
    )  # fmt: skip


def vocab_parallel_nce_loss(
    weight_shard: torch.Tensor,
    bias_shard: Optional[torch.Tensor],
    labels: Any,
    inputs: torch.Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Any = None,
    remove_accidental_hits: bool = False,
    seed: Optional[int] = None,
    *,
    subtract_log_q: bool = True,
    focal_gamma: float = 0.0,
    reduction: str = "mean",
    group: Any = None,
) -> torch.Tensor:
    """NCE with the output layer split by rows over ``group`` (a collective call); the loss of
    ``zipfnce.torch.nce_loss`` over the full weight matrix with the same candidates.

    NCE's loss is a sum of independent per-column terms (sigmoid cross-entropy, label ``1/num_true`` on the
    true columns, 0 on the candidates; focal as in ``zipfnce.nce_loss``), so each rank sums its owned
    columns and one all-reduce SUM of ``[B]`` adds the ranks' shares::

        loss_b = sum_r sum_{owned j} [max(z_j, 0) - z_j y_j + log(1 + exp(-|z_j|))]

    ``weight_shard`` ``[hi - lo, d]`` and ``bias_shard`` ``[hi - lo]`` (or None) are this rank's rows
    ``[lo, hi) = shard_range(num_classes, group)``; ``labels`` int ``[B]`` or ``[B, num_true]`` and ``inputs``
    ``[B, d]`` are the same on every rank (tensor-parallel convention; ``labels`` are checked by a fingerprint,
    ``inputs`` are not: each rank uses its own). ``sampled_values``: None draws ``num_sampled`` unique
    log-uniform candidates over ``num_classes`` exactly as the single-process call with the same ``seed``
    (every rank draws them itself from the same seed, so no ids travel); with ``seed=None`` rank 0 picks a
    fresh seed and the agreement step hands it to the others. Given candidates (TensorFlow's triple or a
    ``CandidateSample``; shared ``[S]`` or per-row ``[B, S]``) must be the same on every rank (checked by a
    fingerprint). Returns the same loss on every rank (``reduction`` as in ``zipfnce.torch``).

    Gradients: this rank's ``weight_shard``/``bias_shard`` get the gradient of its rows (dense, O(shard);
    the modules offer ``sparse=True``), ``inputs`` the full input gradient (all-reduced in backward). Call
    backward on every rank with the same upstream gradient (``loss.backward()`` does).

    Communication per call, ``B`` rows, ``P`` ranks, float ``f`` bytes: an agreement all-reduce of 64
    int64 (and one host synchronisation); one all-reduce SUM of ``B`` floats; in backward, when ``inputs``
    requires grad, an all-reduce of ``B * d`` floats.
    """
    return _vocab_parallel(
        True, weight_shard, bias_shard, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        remove_accidental_hits, seed, subtract_log_q, focal_gamma, reduction, group,
    )  # fmt: skip


class _VocabParallelModule(nn.Module):
    _nce = False

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        num_sampled: int,
        *,
        seed: Optional[int] = None,
        group: Any = None,
        sparse: bool = False,
        num_true: int = 1,
        remove_accidental_hits: Optional[bool] = None,
        subtract_log_q: bool = True,
        focal_gamma: float = 0.0,
        reduction: str = "mean",
        bias: bool = True,
        dtype: Optional[torch.dtype] = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        self.group = group
        self.num_classes = as_int(num_classes, "num_classes", lo=1)
        self.embedding_dim = as_int(embedding_dim, "embedding_dim", lo=1)
        self.num_sampled = as_int(num_sampled, "num_sampled", lo=1)
        self.num_true = as_int(num_true, "num_true", lo=1)
        self.lo, self.hi = shard_range(self.num_classes, group)
        hits = (not self._nce) if remove_accidental_hits is None else remove_accidental_hits
        self.remove_accidental_hits = bool(hits)
        self.subtract_log_q = bool(subtract_log_q)
        self.focal_gamma = float(focal_gamma)
        self.reduction = _reduction(reduction)
        self.sparse = bool(sparse)
        dtype = torch.float32 if dtype is None else dtype
        if not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point dtype, got {dtype}")
        # One stream of candidates for every rank: the given seed, or rank 0's fresh one broadcast now.
        g, rank, _ = _group_info(group)
        if seed is None:
            t = torch.tensor(
                [int.from_bytes(os.urandom(8), "little") >> 2 if rank == 0 else 0], dtype=torch.int64
            )
            t = t.to(_comm_device(g, None))
            dist.broadcast(t, src=dist.get_global_rank(g, 0) if g is not dist.group.WORLD else 0, group=g)
            seed = int(t.item())
        self.seed = int(seed)
        self.sampler = _zn.LogUniformSampler(self.num_classes, seed=self.seed)
        n = self.hi - self.lo
        self.weight = nn.Parameter(torch.empty(n, self.embedding_dim, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(n, dtype=dtype, device=device)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight ~ N(0, 1/embedding_dim), bias 0 (each rank draws its own rows from torch's generator)."""
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0 / math.sqrt(self.embedding_dim))
            if self.bias is not None:
                self.bias.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, shard=[{self.lo}, {self.hi}), "
            f"embedding_dim={self.embedding_dim}, "
            f"num_sampled={self.num_sampled}, num_true={self.num_true}, seed={self.seed}, "
            f"reduction={self.reduction!r}, sparse={self.sparse}"
        )

    def sample(self, labels: Any) -> Any:
        """The candidates for one step, the same on every rank: ``self.sampler.sample(num_sampled,
        true_classes=labels)`` from the seeded stream that every rank advances in step."""
        return self.sampler.sample(self.num_sampled, unique=True, true_classes=labels)

    def forward(self, inputs: torch.Tensor, labels: Any) -> torch.Tensor:
        """``inputs`` ``[B, embedding_dim]`` and ``labels`` int ``[B]`` or ``[B, num_true]``, the same on every
        rank. Returns the loss (the same on every rank)."""
        sv: Any = None
        err: Optional[BaseException] = None
        try:
            lab = _int_tensor(labels, "labels").cpu().numpy()
            if lab.ndim == 1 and self.num_true == 1:
                lab = lab.reshape(-1, 1)
            if lab.ndim != 2 or lab.shape[0] == 0:
                raise ValueError(
                    f"labels: must be a non-empty [batch, num_true={self.num_true}], got {lab.shape}"
                )
            sv = self.sample(lab)
        except (TypeError, ValueError) as e:
            err = e  # reported on every rank by the call below
        return _vocab_parallel(
            self._nce, self.weight, self.bias, labels, inputs, self.num_sampled, self.num_classes,
            self.num_true, sv, self.remove_accidental_hits, None, self.subtract_log_q, self.focal_gamma,
            self.reduction, self.group, self.sparse, err,
        )  # fmt: skip


class VocabParallelSampledSoftmaxLoss(_VocabParallelModule):
    """``VocabParallelSampledSoftmaxLoss(num_classes, embedding_dim, num_sampled, *, seed=None, group=None,
    sparse=False, num_true=1, remove_accidental_hits=None, subtract_log_q=True, focal_gamma=0.0,
    reduction="mean", bias=True, dtype=None, device=None)``: sampled softmax whose output embedding is split
    by rows over the ranks of ``group``: this rank's ``weight`` is ``[hi - lo, embedding_dim]`` and ``bias``
    ``[hi - lo]`` for ``(lo, hi) = shard_range(num_classes, group)``. Building one is a collective (with
    ``seed=None`` rank 0's fresh seed is broadcast).

    ``forward(inputs, labels)`` (the same ``inputs`` and ``labels`` on every rank) draws ``num_sampled``
    unique log-uniform candidates from a ``zipfnce.LogUniformSampler(num_classes, seed=seed)`` stream that
    every rank advances in step, and returns :func:`vocab_parallel_sampled_softmax_loss`. It equals
    ``zipfnce.torch.SampledSoftmaxLoss(sampler=zipfnce.LogUniformSampler(num_classes, seed=seed))`` with the
    concatenated shards as its weight. ``sparse=True`` gives the shard sparse gradients holding only the
    rows used. The ranks' streams stay in step as long as every rank's ``forward`` draws (a call that fails on
    some ranks only, before drawing, leaves them apart: build the module again). Other keyword arguments as
    ``zipfnce.torch.SampledSoftmaxLoss`` (``num_true``, ``remove_accidental_hits``, ``subtract_log_q``,
    ``focal_gamma``, ``reduction``, ``bias``, ``dtype``), plus ``device``.
    """

    _nce = False


class VocabParallelNCELoss(_VocabParallelModule):
    """``VocabParallelNCELoss(num_classes, embedding_dim, num_sampled, *, ...)``: NCE with the output
    embedding split by rows over ``group``; as :class:`VocabParallelSampledSoftmaxLoss`
    (``remove_accidental_hits`` defaults to False)."""

    _nce = True
