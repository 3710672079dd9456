"""InfoNCE benchmarks: zipfnce against PyTorch eager and NumPy's matrix products, in one process.

Two ways to run it:

    python benches/bench_infonce.py [--threads 2] [--reps 15] [--big]
        interleaves the cases rep by rep (so machine load hits them alike), prints medians and the ratios
        that BENCHMARKS.md records; --big adds B = 65,536 (time and peak memory, in a subprocess).
    pytest benches/bench_infonce.py --benchmark-only
        the same cases as pytest-benchmark tests.

Cases (B = 4096, d = 128, float32, loss + gradients of the in-batch InfoNCE):
- zipfnce, logits kept between the passes (the default at this size: 64 MiB < 256 MiB) and recomputed;
- torch: cross_entropy(q @ k.T / T) + backward, eager, same number of threads;
- numpy3: the three products a fused kernel cannot avoid, q @ k.T, G @ k and G.T @ q (OpenBLAS sgemm):
  the hardware bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

B, D, T = 4096, 128, 0.1


def _threads_from_argv() -> int:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return int(os.environ.get("ZIPFNCE_NUM_THREADS", os.cpu_count() or 1))


# OpenBLAS reads its thread count at import: set it before numpy loads.
_NT = _threads_from_argv()
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(_NT))
os.environ.setdefault("OMP_NUM_THREADS", str(_NT))

import numpy as np  # noqa: E402
import zipfnce as zn  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def make_cases(b: int = B, d: int = D, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((b, d)) * 0.1).astype(np.float32)
    k = (rng.standard_normal((b, d)) * 0.1).astype(np.float32)
    g = rng.standard_normal((b, b)).astype(np.float32)
    cases = {
        "zipfnce (kept logits)": lambda: zn.info_nce_loss_and_grad(q, k, temperature=T),
        "zipfnce (recomputed)": lambda: zn.info_nce_loss_and_grad(q, k, temperature=T, max_logits_bytes=0),
        "zipfnce symmetric (kept)": lambda: zn.info_nce_loss_and_grad(q, k, temperature=T, symmetric=True),
        "numpy 3 products": lambda: (q @ k.T, g @ k, g.T @ q),
    }
    if torch is not None:
        tq = torch.tensor(q, requires_grad=True)
        tk = torch.tensor(k, requires_grad=True)
        labels = torch.arange(b)

        def torch_eager():
            tq.grad = tk.grad = None
            loss = torch.nn.functional.cross_entropy(tq @ tk.T / T, labels, reduction="sum")
            loss.backward()
            return tq.grad, tk.grad

        def torch_symmetric():
            tq.grad = tk.grad = None
            logits = tq @ tk.T / T
            f = torch.nn.functional.cross_entropy
            loss = (f(logits, labels, reduction="sum") + f(logits.T, labels, reduction="sum")) / 2
            loss.backward()
            return tq.grad, tk.grad

        cases["torch eager"] = torch_eager
        cases["torch eager symmetric"] = torch_symmetric
    return cases


def set_threads(n: int) -> None:
    zn.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def interleaved(cases: dict, reps: int) -> dict:
    """Median wall time of each case; the cases take turns within every repetition."""
    for f in cases.values():
        f()  # warm up (and let zipfnce keep its logits block)
    times = {name: [] for name in cases}
    for _ in range(reps):
        for name, f in cases.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in times.items()}


BIG_SCRIPT = r"""
import json, sys, time, numpy as np, zipfnce as zn
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def reset_hwm():  # the peak so far becomes the current resident size (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
b, d, sym = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
rng = np.random.default_rng(0)
q = (rng.standard_normal((b, d), dtype=np.float32) * 0.1)
k = (rng.standard_normal((b, d), dtype=np.float32) * 0.1)
zn.info_nce_loss_and_grad(q[:256], k[:256])
reset_hwm()
before = hwm()
t, c = time.perf_counter(), time.process_time()
g = zn.info_nce_loss_and_grad(q, k, temperature=0.1, symmetric=sym)
secs, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps(dict(seconds=secs, cpu_seconds=cpu, peak_growth=hwm() - before, inputs=q.nbytes + k.nbytes,
                      finite=bool(np.isfinite(g.loss).all() and np.isfinite(g.grad_keys).all()))))
"""


def big(b: int = 65536, d: int = D, symmetric: bool = False) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", BIG_SCRIPT, str(b), str(d), "1" if symmetric else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=_NT)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--big", action="store_true", help="also run B = 65,536 (recomputed logits)")
    a = p.parse_args()
    set_threads(a.threads)
    med = interleaved(make_cases(), a.reps)
    print(f"B={B} d={D} float32, loss + gradients, {a.threads} threads, median of {a.reps} interleaved reps")
    print("| case | median ms |")
    print("|---|---:|")
    for name, s in med.items():
        print(f"| {name} | {s * 1e3:.1f} |")
    np3 = med["numpy 3 products"]
    for name in ("zipfnce (kept logits)", "zipfnce (recomputed)"):
        line = f"{name}: {med[name] / np3:.2f}x numpy's 3 products"
        if "torch eager" in med:
            line += f", {med['torch eager'] / med[name]:.2f}x faster than torch eager"
        print(line)
    if "torch eager symmetric" in med:
        s = med["zipfnce symmetric (kept)"]
        print(f"symmetric: {med['torch eager symmetric'] / s:.2f}x faster than torch eager symmetric")
    if a.big:
        r = big()
        print(
            f"B=65536 d={D}: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s of CPU), peak memory above the inputs "
            f"{r['peak_growth'] / 2**20:.0f} MiB (inputs {r['inputs'] / 2**20:.0f} MiB, "
            f"logits would be {65536 * 65536 * 4 / 2**30:.0f} GiB), finite={r['finite']}"
        )


# pytest-benchmark: the same cases, one test each.
_CASES = None


def _case(name):
    global _CASES
    if _CASES is None:
        set_threads(_NT)
        _CASES = make_cases()
    return _CASES[name]


def _bench(benchmark, name):
    import pytest

    if name.startswith("torch") and torch is None:
        pytest.skip("torch is not installed")
    f = _case(name)
    benchmark.group = f"infonce B={B} d={D} float32"
    benchmark.pedantic(f, rounds=7, warmup_rounds=1)


def test_zipfnce_kept(benchmark):
    _bench(benchmark, "zipfnce (kept logits)")


def test_zipfnce_recomputed(benchmark):
    _bench(benchmark, "zipfnce (recomputed)")


def test_torch_eager(benchmark):
    _bench(benchmark, "torch eager")


def test_numpy_three_products(benchmark):
    _bench(benchmark, "numpy 3 products")


if __name__ == "__main__":
    main()
