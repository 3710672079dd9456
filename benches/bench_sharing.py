"""Sharing the cores: the sampled softmax step alone, right after a NumPy (OpenBLAS) product, and right after a
torch matmul, in one process, interleaved.

Case: B = 1024, d = 128, V = 1e6, S = 8192, float32, shared candidates (zn.sampled_softmax_loss_and_grad, the
step of benches/bench_losses.py). Each round runs, in alternating order, three timings of one step:

- ``alone``: the step after 50 ms of sleep (every pool has gone to sleep);
- ``after numpy``: the step right after ``x @ Ws.T`` in NumPy (the forward product of the same step, through
  OpenBLAS's threads);
- ``after torch``: the step right after the same product as ``torch.matmul`` (torch's OpenMP threads).

A pool that keeps its threads spinning after its call takes cores from the step that follows. The figures
are medians over the rounds. Then, for each of the three calls, the CPU time the process burns during 50 ms
of sleep right after it (the spinning of idle pools, which other load on the machine does not hide). The peers' settings come from the environment, read when NumPy and torch load,
so compare settings by running the script once per setting::

    python benches/bench_sharing.py [--rounds 15] [--threads 2] [--zn-threads 1] [--no-torch]
    OPENBLAS_THREAD_TIMEOUT=4 OMP_WAIT_POLICY=passive python benches/bench_sharing.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

THREADS = 2
if "--threads" in sys.argv[:-1]:
    THREADS = int(sys.argv[sys.argv.index("--threads") + 1])
# The peers' thread counts must be fixed before numpy / torch start their pools.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402  (after the settings above)
import zipfnce as zn  # noqa: E402

B, D, V, S = 1024, 128, 1_000_000, 8192


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--zn-threads", type=int, default=None, help="zipfnce's threads (default: --threads)")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    zn.set_num_threads(args.zn_threads or args.threads)
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((V, D), dtype=np.float32) * 0.05).astype(np.float32)
    b = (rng.standard_normal(V, dtype=np.float32) * 0.01).astype(np.float32)
    x = rng.standard_normal((B, D), dtype=np.float32)
    labels = rng.integers(0, V, (B, 1))
    sv = zn.LogUniformSampler(V, seed=1).sample(S, true_classes=labels, seed=2)
    ws = np.ascontiguousarray(w[sv.ids])

    def step() -> None:
        zn.sampled_softmax_loss_and_grad(w, b, labels, x, S, V, sampled_values=sv)

    def np_product() -> None:
        x @ ws.T

    before = {"alone": lambda: time.sleep(0.05), "after numpy": np_product}
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
        tx, tws = torch.from_numpy(x), torch.from_numpy(ws)

        def torch_product() -> None:
            torch.matmul(tx, tws.T)

        before["after torch"] = torch_product
    products = {name: [] for name in before if name != "alone"}
    times = {name: [] for name in before}
    for f in [step, *before.values()]:
        f()
    for r in range(args.rounds):
        order = list(before) if r % 2 else list(before)[::-1]
        for name in order:
            time.sleep(0.05)
            t0 = time.perf_counter()
            before[name]()
            t1 = time.perf_counter()
            step()
            t2 = time.perf_counter()
            times[name].append(t2 - t1)
            if name in products:
                products[name].append(t1 - t0)
    # The CPU a pool burns after its call returns: process CPU time over 50 ms of sleep right after each call
    # (threads that sleep cost nothing; threads that spin cost up to 50 ms each). Insensitive to other load.
    idle = {"numpy product": np_product, "zipfnce step": step}
    if "after torch" in before:
        idle["torch matmul"] = before["after torch"]
    burn = {name: [] for name in idle}
    for _ in range(args.rounds):
        for name, f in idle.items():
            time.sleep(0.05)
            f()
            c0 = time.process_time()
            time.sleep(0.05)
            burn[name].append(time.process_time() - c0)
    alone = statistics.median(times["alone"])
    env = {
        k: os.environ.get(k, "-")
        for k in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "ZIPFNCE_NUM_THREADS")
    }
    print(f"threads {args.threads} (zipfnce {zn.get_num_threads()}), rounds {args.rounds}, {env}")
    print(f"{'step':<14} {'median ms':>10} {'vs alone':>9} {'product ms':>11}")
    for name, t in times.items():
        m = statistics.median(t)
        p = f"{statistics.median(products[name]) * 1e3:11.1f}" if name in products else f"{'':>11}"
        print(f"{name:<14} {m * 1e3:10.1f} {m / alone:8.2f}x {p}")
    print("CPU burnt in the 50 ms of sleep after a call (median ms; two spinning threads burn up to 100):")
    for name, t in burn.items():
        print(f"  {name:<14} {statistics.median(t) * 1e3:6.1f}")


if __name__ == "__main__":
    main()
