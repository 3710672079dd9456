"""Benchmark of the PyTorch adapter's training step against the NumPy call it wraps and against pure PyTorch.

Case (issue 5): B = 1024, d = 128, V = 1e6, S = 8192, float32, unique log-uniform candidates shared by the
batch, mean reduction. One step = draw the candidates, loss, every gradient. Measured in one process with
interleaved repeats (medians):

- ``numpy``: ``LogUniformSampler.sample`` + ``zn.sampled_softmax_loss_and_grad`` (what the module wraps);
- ``zipfnce.torch sparse``: ``SampledSoftmaxLoss(sparse=True)`` forward + ``backward()`` (sparse weight and
  bias gradients, the rows used only);
- ``zipfnce.torch dense``: the same with ``sparse=False``: autograd gets a dense [V, d] weight gradient, an
  O(V·d) = 512 MB scatter every step (for reference);
- ``torch``: pure PyTorch sampled softmax: a log-uniform draw (``torch.rand`` + inverse CDF), the rows
  through ``F.embedding(sparse=True)``, logQ correction, accidental-hit mask, ``F.cross_entropy``,
  ``backward()``; ``torch multinomial`` draws the candidates with ``torch.multinomial`` instead (without
  replacement, from the [V] log-uniform probabilities).

Optimiser steps are left out of every variant (they are the same work for all of them).

Run as a script for the table in BENCHMARKS.md::

    python benches/bench_adapters.py [--threads 2] [--repeats 11]

or under pytest-benchmark: ``pytest benches/bench_adapters.py --benchmark-only``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

THREADS = 2
for _i, _arg in enumerate(sys.argv):
    if _arg.startswith("--threads="):
        THREADS = int(_arg.split("=", 1)[1])
    elif _arg == "--threads" and _i + 1 < len(sys.argv):
        THREADS = int(sys.argv[_i + 1])
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("ZIPFNCE_NUM_THREADS", str(THREADS))

from zipfnce.bench.cases import torch_step_impls  # noqa: E402 - the installed package


def _median_times(impls, repeats: int, warmup: int = 2):
    for f in impls.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in impls}
    for _ in range(repeats):
        for k, f in impls.items():  # interleaved, so that load drifts hit every variant alike
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times


def adapter_own_time(step, repeats: int):
    """Median time per module step spent outside the sampler and the native loss call: the adapter's own
    cost, measured within each step, so that load from other processes cancels out."""
    import zipfnce as zn

    inside = [0.0]
    orig_call, orig_sample = zn.sampled_softmax_loss_and_grad, zn.LogUniformSampler.sample

    def timed_call(*a, **k):
        t = time.perf_counter()
        try:
            return orig_call(*a, **k)
        finally:
            inside[0] += time.perf_counter() - t

    def timed_sample(self, *a, **k):
        t = time.perf_counter()
        try:
            return orig_sample(self, *a, **k)
        finally:
            inside[0] += time.perf_counter() - t

    zn.sampled_softmax_loss_and_grad, zn.LogUniformSampler.sample = timed_call, timed_sample
    own, native = [], []
    try:
        for _ in range(repeats):
            inside[0] = 0.0
            t = time.perf_counter()
            step()
            total = time.perf_counter() - t
            own.append(total - inside[0])
            native.append(inside[0])
    finally:
        zn.sampled_softmax_loss_and_grad, zn.LogUniformSampler.sample = orig_call, orig_sample
    return statistics.median(own), statistics.median(native)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense-gradient module variant")
    ap.add_argument("--no-multinomial", action="store_true", help="skip the torch.multinomial peer")
    ap.add_argument(
        "--frameworks", action="store_true", help="also time zipfnce.jax and zipfnce.tf (and tf.nn)"
    )
    args = ap.parse_args()
    import torch
    import zipfnce as zn

    torch.set_num_threads(args.threads)
    zn.set_num_threads(args.threads)
    impls = torch_step_impls(dense=not args.no_dense, multinomial=not args.no_multinomial)
    med, _ = _median_times(impls, args.repeats)
    base = med["zipfnce.torch sparse"]
    print(
        f"B=1024 d=128 V=1e6 S=8192 float32, threads={args.threads}, repeats={args.repeats}, torch {torch.__version__}"
    )
    print(f"{'variant':<26} {'median ms':>10} {'vs zipfnce.torch sparse':>24}")
    for k, v in med.items():
        print(f"{k:<26} {v * 1e3:>10.1f} {v / base:>23.2f}x")
    print(f"adapter overhead (zipfnce.torch sparse / numpy - 1): {base / med['numpy'] - 1:+.1%}")
    own, native = adapter_own_time(impls["zipfnce.torch sparse"], args.repeats)
    print(
        f"adapter's own time per step (outside sampler and native call): {own * 1e3:.2f} ms "
        f"= {own / native:.1%} of the {native * 1e3:.1f} ms native work"
    )
    if args.frameworks:
        from zipfnce.bench.cases import framework_step_impls

        med, _ = _median_times(framework_step_impls(), args.repeats)
        print("\nfixed candidates, value and all gradients of the mean loss:")
        for k, v in med.items():
            print(f"{k:<26} {v * 1e3:>10.1f} {v / med['numpy']:>10.2f}x numpy")


# pytest-benchmark entry points --------------------------------------------------------------------------------

_IMPLS = None


def _impl(name):
    global _IMPLS
    if _IMPLS is None:
        _IMPLS = torch_step_impls(dense=False, multinomial=False)
    return _IMPLS[name]


def test_numpy_step(benchmark):
    benchmark(_impl("numpy"))


def test_torch_module_sparse_step(benchmark):
    benchmark(_impl("zipfnce.torch sparse"))


def test_pure_torch_step(benchmark):
    benchmark(_impl("torch"))


if __name__ == "__main__":
    main()
