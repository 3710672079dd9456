"""bfloat16 (or float16) table vs float32 table: one native sampled-softmax step (forward + backward,
``sampled_softmax_loss_and_grad``) at V = 10^7, d = 128, B = 1024, S = 8192 (issue 14, item 2).

Two measurements, each in its own process so that peak memory means something:

    python benches/bench_half.py time            # both tables in one process, steps interleaved A/B/A/B...
    python benches/bench_half.py rss bfloat16    # peak RSS of a process that only ever holds the bf16 table
    python benches/bench_half.py rss float32     # ... and of one holding the float32 table

``time`` prints the median step time of each and their ratio (rounds alternate, so a busy machine slows
both alike). ``rss`` prints the table's bytes and the process's peak resident set after a few steps: for
bf16 it stays near the table's 2.5 GB (no float32 copy), where a widen-first implementation would need
another 5 GB. The table's rows repeat a random 65536 x 128 block (values do not change the cost; every row
is still its own memory). Options: --v, --d, --b, --s, --rounds (small values for a quick check).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np
import zipfnce as zn


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _table(v: int, d: int, dtype: np.dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    block = (rng.standard_normal((min(v, 65536), d), dtype=np.float32) * 0.05).astype(dtype)
    out = np.empty((v, d), dtype=dtype)
    for i in range(0, v, block.shape[0]):
        n = min(block.shape[0], v - i)
        out[i : i + n] = block[:n]
    return out


def _problem(v: int, d: int, b: int, s: int, dtype: np.dtype):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, v, b)
    x = (rng.standard_normal((b, d), dtype=np.float32)).astype(dtype)
    sv = zn.LogUniformSampler(v, seed=2).sample(s, true_classes=labels)
    return labels, x, sv


def _step(w, labels, x, sv, v, s) -> float:
    t = time.perf_counter()
    zn.sampled_softmax_loss_and_grad(w, None, labels, x, s, v, sampled_values=sv)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["time", "rss"])
    p.add_argument("dtype", nargs="?", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--v", type=int, default=10**7)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--b", type=int, default=1024)
    p.add_argument("--s", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    level = os.environ.get("ZIPFNCE_SIMD") or "the widest the CPU has"
    print(
        f"zipfnce native, ZIPFNCE_SIMD: {level}, threads {zn.get_num_threads()}; V={a.v} d={a.d} B={a.b} S={a.s}"
    )
    if a.mode == "rss":
        dt = _dtype(a.dtype)
        w = _table(a.v, a.d, dt)
        labels, x, sv = _problem(a.v, a.d, a.b, a.s, dt)
        times = [_step(w, labels, x, sv, a.v, a.s) for _ in range(3)]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"{a.dtype}: table {w.nbytes / 2**30:.2f} GiB, peak RSS {peak / 2**30:.2f} GiB, "
              f"step {statistics.median(times) * 1e3:.0f} ms")  # fmt: skip
        return
    half = _dtype(a.dtype)
    wh = _table(a.v, a.d, half)
    w32 = wh.astype(np.float32)  # the same values, widened
    labels, xh, sv = _problem(a.v, a.d, a.b, a.s, half)
    x32 = xh.astype(np.float32)
    _step(wh, labels, xh, sv, a.v, a.s)  # warm-up (page in the rows, the pool, the caches)
    _step(w32, labels, x32, sv, a.v, a.s)
    th, t32 = [], []
    for r in range(a.rounds):
        pair = [(th, wh, xh), (t32, w32, x32)]
        for out, w, x in pair if r % 2 == 0 else pair[::-1]:
            out.append(_step(w, labels, x, sv, a.v, a.s))
    mh, m32 = statistics.median(th), statistics.median(t32)
    print(f"{a.dtype}: median {mh * 1e3:.0f} ms  float32: median {m32 * 1e3:.0f} ms  ratio {mh / m32:.3f} "
          f"({a.rounds} interleaved rounds)")  # fmt: skip
    print("  half:", " ".join(f"{t * 1e3:.0f}" for t in th))
    print("  f32: ", " ".join(f"{t * 1e3:.0f}" for t in t32))


if __name__ == "__main__":
    sys.exit(main())
