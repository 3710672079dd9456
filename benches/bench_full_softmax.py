"""The exact full softmax (issue 16) against its bounds and PyTorch, in one process, interleaved rounds.

    ZIPFNCE_NUM_THREADS=2 python benches/bench_full_softmax.py [--rounds 5] [--memory]

Prints medians of interleaved rounds (zipfnce, then the NumPy/OpenBLAS products, then PyTorch eager, per round)
and their ratios: fwd+bwd at B=1024, d=128, V=1e5 against the three products x·Wᵀ, G·W, Gᵀ·x and against
``F.cross_entropy(x @ W.T, y)`` + backward; forward only against x·Wᵀ. ``--memory`` measures, in a fresh
subprocess, the peak RSS that fwd+bwd adds at B=8192, d=128, V=2e5 beyond the dense weight gradient.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

MEMORY = """
import json, time, numpy as np, zipfnce as zn

def status(key):  # kB -> bytes, from /proc/self/status
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

b, v, d = 8192, 200_000, 128
rng = np.random.default_rng(0)
w = rng.standard_normal((v, d), dtype=np.float32)
w *= 0.05
x = rng.standard_normal((b, d), dtype=np.float32)
y = rng.integers(0, v, b)
zn.full_softmax_loss(w[:10], None, y % 10, x)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
t = time.perf_counter()
r = zn.full_softmax_loss_and_grad(w, None, y, x)
dt = time.perf_counter() - t
peak = status("VmHWM:")
print(json.dumps({"extra_bytes": peak - before, "grad_weights_bytes": r.grad_weights.nbytes, "seconds": dt}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    import zipfnce as zn

    b, d, v = 1024, 128, 10**5
    rng = np.random.default_rng(0)
    w = rng.standard_normal((v, d), dtype=np.float32) * 0.05
    x = rng.standard_normal((b, d), dtype=np.float32)
    y = rng.integers(0, v, b)
    g = rng.standard_normal((b, v), dtype=np.float32)
    impls = {
        "zipfnce fwd+bwd": lambda: zn.full_softmax_loss_and_grad(w, None, y, x),
        "numpy 3 products": lambda: (x @ w.T, g @ w, g.T @ x),
        "zipfnce fwd": lambda: zn.full_softmax_loss(w, None, y, x),
        "numpy x·Wᵀ": lambda: x @ w.T,
    }
    if not a.no_torch:
        import torch

        torch.set_num_threads(zn.get_num_threads())
        tw = torch.from_numpy(w.copy()).requires_grad_()
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ty = torch.from_numpy(y)

        def torch_step():
            tw.grad = tx.grad = None
            torch.nn.functional.cross_entropy(tx @ tw.T, ty, reduction="sum").backward()

        impls["torch eager fwd+bwd"] = torch_step
    for f in impls.values():
        f()
    times = {k: [] for k in impls}
    for _ in range(a.rounds):
        for k, f in impls.items():
            time.sleep(0.05)
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(t) for k, t in times.items()}
    for k, t in med.items():
        print(f"{k:22s} {t:8.3f} s  (rounds: {', '.join(f'{s:.2f}' for s in times[k])})")
    print(f"fwd+bwd / 3 products  = {med['zipfnce fwd+bwd'] / med['numpy 3 products']:.2f}  (target <= 1.2)")
    print(f"fwd / x·Wᵀ            = {med['zipfnce fwd'] / med['numpy x·Wᵀ']:.2f}  (target <= 1.1)")
    if "torch eager fwd+bwd" in med:
        print(
            f"torch / zipfnce       = {med['torch eager fwd+bwd'] / med['zipfnce fwd+bwd']:.2f}  (target >= 1.5)"
        )
    print(f"threads {zn.get_num_threads()}, ZIPFNCE_SIMD={os.environ.get('ZIPFNCE_SIMD', '(default)')}")
    if a.memory:
        out = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True, check=True)
        m = json.loads(out.stdout)
        extra = m["extra_bytes"] - m["grad_weights_bytes"]
        print(
            f"B=8192 d=128 V=2e5: {m['seconds']:.1f} s, extra peak RSS beyond grad_weights {extra / 2**30:.3f} GiB "
            f"(grad_weights {m['grad_weights_bytes'] / 2**30:.3f} GiB; the float32 logits alone: "
            f"{8192 * 200_000 * 4 / 2**30:.1f} GiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
