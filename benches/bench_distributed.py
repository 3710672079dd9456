"""Benchmark of zipfnce.torch.distributed: communication volume per step, and step time of 2 ranks against 1.

1. Communication volume (computed from the algorithm; the formulas are checked against the bytes the
   collectives actually carry in a small 2-rank run, see ``counted`` below). Per step, ``B`` rows, ``P``
   ranks, ``S`` candidates, ``d`` the embedding width, ``t`` = num_true, ``f`` bytes per float. "Payload" is
   the size of the tensor handed to the collective; a ring all-reduce puts ``2 (P - 1) / P`` times that on
   each rank's wire, a ring all-gather ``(P - 1) / P`` times the gathered total.

   - zipfnce vocab-parallel sampled softmax: all-reduce MAX ``[B]`` + all-reduce SUM ``[B, 1 + t]``, an
     agreement all-reduce of 64 int64 (512 bytes), and in backward the input-gradient all-reduce ``[B, d]``
     (the same one every tensor-parallel output layer has);
   - zipfnce vocab-parallel NCE: all-reduce SUM ``[B]`` + 512 bytes + ``[B, d]`` in backward;
   - Megatron's exact vocab-parallel cross-entropy: all-reduces of ``[B]`` (max), ``[B]`` (target logit),
     ``[B]`` (sum of exps) + ``[B, d]`` in backward; but every rank computes and keeps ``B x V / P`` logits;
   - gathering the full logits (each rank scores its shard, then all-gathers ``[B, V / P]``): ``B V f``
     gathered per step; gathering the sampled logits instead: ``B S f``; gathering the sampled weight rows
     to every rank: ``S d f`` forward and the same reduced in backward.

2. Step time on this machine (2 vCPUs shared by all ranks, so the scaling is simulated, not real):
   forward + backward of one training step of the same global problem in a 1-rank group (2 threads, and
   1 thread) and in a 2-rank gloo group on 127.0.0.1 (1 thread per rank), the configurations in turn in
   each round. The 1-rank runs also time the single-process ``zipfnce.torch`` loss (the native kernel) as
   the peer.

    python benches/bench_distributed.py [--rounds 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

# The global problems of the step-time runs.
VP = {"V": 1_000_000, "d": 128, "B": 1024, "S": 8192}
INFO = {"B": 2048, "d": 128, "N": 0}


def comm_bytes(B: int, S: int, V: int, P: int, d: int, t: int = 1, f: int = 4) -> Dict[str, Dict[str, float]]:
    """Payload bytes per step, forward (loss-specific) and backward, and logits held per rank."""
    agree = 64 * 8
    bwd = B * d * f  # input-gradient all-reduce of a tensor-parallel output layer (everyone has it)
    return {
        "zipfnce sampled softmax": {"fwd": B * (2 + t) * f + agree, "bwd": bwd, "logits": B * (S + t) / P},
        "zipfnce NCE": {"fwd": B * f + agree, "bwd": bwd, "logits": B * (S + t) / P},
        "Megatron exact softmax": {"fwd": 3 * B * f, "bwd": bwd, "logits": B * V / P},
        "all-gather full logits": {"fwd": B * V * f, "bwd": bwd, "logits": B * V},
        "all-gather sampled logits": {"fwd": B * (S + t) * f, "bwd": bwd, "logits": B * (S + t)},
        "all-gather sampled rows": {"fwd": S * d * f, "bwd": S * d * f + bwd, "logits": B * (S + t)},
    }


def _fmt(n: float) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= k:
            return f"{n / k:.3g} {unit}"
    return f"{n:.0f} B"


def volume_table(B: int = 4096, S: int = 8192, V: int = 10**7, P: int = 8, d: int = 1024) -> str:
    rows = [
        f"V = {V:.0e}, P = {P}, B = {B}, S = {S}, d = {d}, num_true = 1, float32",
        "| scheme | forward payload | backward payload | ring wire bytes per rank (fwd + bwd) | logits per rank |",
        "|---|---|---|---|---|",
    ]
    for name, c in comm_bytes(B, S, V, P, d).items():
        gather = name.startswith("all-gather")
        wire_f = c["fwd"] * (P - 1) / P if gather else c["fwd"] * 2 * (P - 1) / P
        wire = wire_f + c["bwd"] * 2 * (P - 1) / P
        rows.append(
            f"| {name} | {_fmt(c['fwd'])} | {_fmt(c['bwd'])} | {_fmt(wire)} | {c['logits']:.3g} "
            f"({_fmt(c['logits'] * 4)}) |"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------------------
# One rank of a timing run
# ----------------------------------------------------------------------------------------------------------


class _Counter:
    """Counts the payload bytes handed to torch.distributed's collectives while ``on``."""

    def __init__(self, dist: Any) -> None:
        self.on = False
        self.bytes: Dict[str, int] = {}
        for op in ("all_reduce", "all_gather", "broadcast", "reduce_scatter_tensor"):
            orig = getattr(dist, op)

            def wrap(*a: Any, _orig: Any = orig, _op: str = op, **k: Any) -> Any:
                if self.on:
                    t = a[1] if _op in ("all_gather", "reduce_scatter_tensor") else a[0]
                    n = t.numel() * t.element_size() * (len(a[0]) if _op == "all_gather" else 1)
                    self.bytes[_op] = self.bytes.get(_op, 0) + n
                return _orig(*a, **k)

            setattr(dist, op, wrap)


def rank_main(rank: int, world: int, port: int, out: str, steps: int, threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import numpy as np
    import torch
    import torch.distributed as dist
    import zipfnce as zn

    torch.set_num_threads(threads)
    zn.set_num_threads(threads)
    counter = _Counter(dist)
    import zipfnce.torch as znt
    import zipfnce.torch.distributed as znd

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    res: Dict[str, Any] = {}

    def timed(name: str, step: Any) -> None:
        for _ in range(2):
            step()
        ts = []
        for _ in range(steps):
            dist.barrier()
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
        res[name] = statistics.median(ts)

    # Vocabulary-parallel sampled softmax, sparse shard gradients (module), forward + backward.
    V, d, B, S = VP["V"], VP["d"], VP["B"], VP["S"]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = znd.VocabParallelSampledSoftmaxLoss(V, d, S, seed=1, sparse=True)
    x = torch.randn(B, d, requires_grad=True)
    lab = torch.from_numpy(rng.zipf(1.2, B) % V)

    def vp_step() -> None:
        head.zero_grad()
        x.grad = None
        head(x, lab).backward()

    timed("vocab-parallel sampled softmax", vp_step)
    counter.bytes.clear()
    counter.on = True
    vp_step()
    counter.on = False
    res["bytes vocab-parallel sampled softmax"] = dict(counter.bytes)

    nce = znd.VocabParallelNCELoss(V, d, S, seed=1, sparse=True)

    def nce_step() -> None:
        nce.zero_grad()
        x.grad = None
        nce(x, lab).backward()

    timed("vocab-parallel NCE", nce_step)
    counter.bytes.clear()
    counter.on = True
    nce_step()
    counter.on = False
    res["bytes vocab-parallel NCE"] = dict(counter.bytes)

    # InfoNCE over the global batch: each rank its share of the rows.
    Bg, di = INFO["B"], INFO["d"]
    g = torch.Generator().manual_seed(2)
    # Unit vectors, as CLIP-style towers produce (raw N(0, 1) rows at temperature 0.07 give logits of
    # +-160 whose exps are float32 subnormals, which this CPU handles some 5x slower).
    q_all = torch.nn.functional.normalize(torch.randn(Bg, di, generator=g), dim=1)
    k_all = torch.nn.functional.normalize(torch.randn(Bg, di, generator=g), dim=1)
    ids_all = torch.randint(0, Bg * 4, (Bg,), generator=g)
    lo, hi = rank * Bg // world, (rank + 1) * Bg // world
    q = q_all[lo:hi].clone().requires_grad_(True)
    k = k_all[lo:hi].clone().requires_grad_(True)

    def info_step() -> None:
        q.grad = k.grad = None
        znd.info_nce_loss(q, k, temperature=0.07, key_ids=ids_all[lo:hi], symmetric=True).backward()

    timed("InfoNCE global batch (symmetric, ids)", info_step)
    counter.bytes.clear()
    counter.on = True
    info_step()
    counter.on = False
    res["bytes InfoNCE"] = dict(counter.bytes)

    if world == 1:
        # The peer: the single-process native losses in the same process, same problems.
        ref = znt.SampledSoftmaxLoss(V, d, S, sampler=zn.LogUniformSampler(V, seed=1), sparse=True)

        def ref_step() -> None:
            ref.zero_grad()
            x.grad = None
            ref(x, lab).backward()

        timed("znt sampled softmax (native, 1 process)", ref_step)
        refn = znt.NCELoss(V, d, S, sampler=zn.LogUniformSampler(V, seed=1), sparse=True)

        def refn_step() -> None:
            refn.zero_grad()
            x.grad = None
            refn(x, lab).backward()

        timed("znt NCE (native, 1 process)", refn_step)

        def ref_info() -> None:
            q.grad = k.grad = None
            znt.info_nce_loss(q, k, temperature=0.07, key_ids=ids_all, symmetric=True).backward()

        timed("znt InfoNCE (native, 1 process)", ref_info)
    dist.destroy_process_group()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)


def run_world(world: int, steps: int, threads: int) -> Dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "res.json")
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--rank",
                    str(r),
                    "--world",
                    str(world),
                    "--port",
                    str(port),
                    "--out",
                    out,
                    "--steps",
                    str(steps),
                    "--threads",
                    str(threads),
                ],
                env=dict(os.environ, GLOO_SOCKET_IFNAME="lo"),
            )  # fmt: skip
            for r in range(world)
        ]
        for p in procs:
            if p.wait(timeout=900) != 0:
                raise RuntimeError(f"a rank of the {world}-rank run failed")
        with open(out) as f:
            return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--rank", type=int)
    ap.add_argument("--world", type=int)
    ap.add_argument("--port", type=int)
    ap.add_argument("--out")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.rank is not None:
        rank_main(a.rank, a.world, a.port, a.out, a.steps, a.threads)
        return

    print("## Communication volume per step (from the algorithm)\n")
    print(volume_table())
    print()
    # (ranks, threads per rank): the two cores as one 2-thread process, as one 1-thread process, as 2 ranks.
    configs = [(1, 2), (1, 1), (2, 1)]
    runs: Dict[Any, List[Dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(a.rounds):
        for c in configs:  # alternating, so a busy spell of the machine hits every configuration
            runs[c].append(run_world(c[0], a.steps, c[1]))
    # The byte counts of the 2-rank run against the formulas at its sizes.
    c2 = runs[(2, 1)][0]
    B, S, V, d = VP["B"], VP["S"], VP["V"], VP["d"]
    f = comm_bytes(B, S, V, 2, d)
    print("## Bytes counted at the collectives in the 2-rank run, against the formulas\n")
    for key, name in (("bytes vocab-parallel sampled softmax", "zipfnce sampled softmax"),
                      ("bytes vocab-parallel NCE", "zipfnce NCE")):  # fmt: skip
        got = sum(c2[key].values())
        want = f[name]["fwd"] + f[name]["bwd"]
        print(f"- {name}: counted {got} B ({c2[key]}), formula {want:.0f} B")
    bi = INFO["B"]
    print(
        f"- InfoNCE (B = {bi} global, d = {INFO['d']}, symmetric, ids): counted {c2['bytes InfoNCE']} "
        f"(all_gather: 16 int64 metadata, keys + queries [2 B/P, d] per rank, ids; reduce_scatter_tensor: the "
        f"gathered gradient [2 B, d] in backward)"
    )
    print("\n## Step time, forward + backward (median of rounds of medians, seconds)\n")
    print("| step | 1 rank, 2 threads | 1 rank, 1 thread | 2 ranks, 1 thread each | 2 ranks / best 1 rank |")
    print("|---|---|---|---|---|")
    names = [k for k in runs[(1, 1)][0] if not k.startswith("bytes")]
    for n in names:
        t = {c: statistics.median(r[n] for r in runs[c]) for c in configs if n in runs[c][0]}
        cells = [f"{t[c] * 1e3:.1f} ms" if c in t else "" for c in configs]
        ratio = f"{t[(2, 1)] / min(t[(1, 2)], t[(1, 1)]):.2f}" if (2, 1) in t else ""
        print(f"| {n} | {' | '.join(cells)} | {ratio} |")
    print(f"\nrounds {a.rounds}, steps {a.steps}; each round runs the configurations in turn")


if __name__ == "__main__":
    main()
