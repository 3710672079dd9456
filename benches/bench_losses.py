"""Benchmark of the fused sampled softmax / NCE step (loss + all gradients) against its peers, in one process.

Case (issue 3): B = 1024, d = 128, V = 1e6, S = 8192, float32, shared candidates; per-row candidates with
S = 256. Peers measured in the same process:

- TensorFlow: ``tf.nn.sampled_softmax_loss`` under ``tf.function`` with a GradientTape (weights, biases,
  inputs), the same ``sampled_values``;
- the hardware bound: NumPy/OpenBLAS doing the three matrix products of the step (x·Wsᵀ, G·Ws, Gᵀ·x);
- for per-row candidates also the NumPy gather ``W[ids]`` of the B·S rows (the memory the step must read).

Run as a script for the table in BENCHMARKS.md (medians of interleaved repeats)::

    python benches/bench_losses.py [--threads 2] [--repeats 15] [--no-tf]

or under pytest-benchmark: ``pytest benches/bench_losses.py --benchmark-only``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

THREADS = 2
for _arg in sys.argv:
    if _arg.startswith("--threads="):
        THREADS = int(_arg.split("=", 1)[1])
if "--threads" in sys.argv[:-1]:
    THREADS = int(sys.argv[sys.argv.index("--threads") + 1])
# The peers' thread counts must be fixed before numpy / TensorFlow start their pools.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402  (after the thread settings above)
import zipfnce as zn  # noqa: E402

B, D, V, S, S_ROW = 1024, 128, 1_000_000, 8192, 256


class Case:
    """The benchmark's data, built once."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.w = (rng.standard_normal((V, D), dtype=np.float32) * 0.05).astype(np.float32)
        self.b = (rng.standard_normal(V, dtype=np.float32) * 0.01).astype(np.float32)
        self.x = rng.standard_normal((B, D), dtype=np.float32)
        self.labels = rng.integers(0, V, (B, 1))
        smp = zn.LogUniformSampler(V, seed=1)
        self.sv = smp.sample(S, true_classes=self.labels, seed=2)
        self.sv_row = smp.sample_per_row(self.labels, S_ROW, seed=3)
        self.ws = self.w[self.sv.ids]
        self.g = rng.standard_normal((B, S), dtype=np.float32)
        self.ws_row = self.w[self.sv_row.ids[:, 0]][:S_ROW]
        self.g_row = rng.standard_normal((B, S_ROW), dtype=np.float32)

    # zipfnce ---------------------------------------------------------------------------------------------
    def zn_softmax(self) -> object:
        return zn.sampled_softmax_loss_and_grad(
            self.w, self.b, self.labels, self.x, S, V, sampled_values=self.sv
        )

    def zn_nce(self) -> object:
        return zn.nce_loss_and_grad(self.w, self.b, self.labels, self.x, S, V, sampled_values=self.sv)

    def zn_per_row(self) -> object:
        return zn.sampled_softmax_loss_and_grad(
            self.w, self.b, self.labels, self.x, S_ROW, V, sampled_values=self.sv_row
        )

    # hardware bounds -------------------------------------------------------------------------------------
    def numpy_bound(self) -> None:
        self.x @ self.ws.T
        self.g @ self.ws
        self.g.T @ self.x

    def numpy_bound_row(self) -> None:
        self.x @ self.ws_row.T
        self.g_row @ self.ws_row
        self.g_row.T @ self.x

    def numpy_gather_row(self) -> None:
        self.w[self.sv_row.ids.ravel()]


def tf_step(case: Case):
    """The same step in TensorFlow: loss and gradients (weights as IndexedSlices, biases, inputs)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    w = tf.Variable(case.w)
    b = tf.Variable(case.b)
    x = tf.constant(case.x)
    labels = tf.constant(case.labels)
    sv = (
        tf.constant(case.sv.ids),
        tf.constant(case.sv.true_expected_count),
        tf.constant(case.sv.sampled_expected_count),
    )

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.nn.sampled_softmax_loss(w, b, labels, x, S, V, sampled_values=sv)
            total = tf.reduce_sum(loss)
        gw, gb, gx = tape.gradient(total, [w, b, x])
        return loss, gw.values, gw.indices, gb, gx

    def run() -> None:
        out = step()
        out[0].numpy()

    return run


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


#: Pause before each timed call: thread pools that spin after their work (OpenBLAS, TensorFlow's Eigen
#: pool) would otherwise compete with whichever contender runs next.
SETTLE = 0.05


def measure(fns: dict, repeats: int, cpu: dict | None = None) -> dict:
    """Median wall seconds of each function, the functions interleaved in every repeat (the machine is
    shared). With ``cpu``, also the median process CPU seconds per call, into it."""
    for f in fns.values():
        f()
        f()
    times: dict = {k: [] for k in fns}
    cpus: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            time.sleep(SETTLE)
            c = _cpu()
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
            cpus[k].append(_cpu() - c)
    if cpu is not None:
        cpu.update({k: statistics.median(v) for k, v in cpus.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-tf", action="store_true")
    args = ap.parse_args()
    case = Case()
    fns = {
        "numpy_bound": case.numpy_bound,
        "numpy_bound_row": case.numpy_bound_row,
        "numpy_gather_row": case.numpy_gather_row,
    }
    cpu: dict = {}
    zn.set_num_threads(1)
    one = measure({"zn_softmax_1t": case.zn_softmax}, args.repeats, cpu)
    zn.set_num_threads(args.threads)
    fns.update(zn_softmax=case.zn_softmax, zn_nce=case.zn_nce, zn_per_row=case.zn_per_row)
    if not args.no_tf:
        fns["tf"] = tf_step(case)
    t = measure(fns, args.repeats, cpu)
    t.update(one)
    ms = {k: v * 1e3 for k, v in t.items()}
    print(f"threads={args.threads} repeats={args.repeats} load average {os.getloadavg()[0]:.1f}")
    print(f"  {'':18s} {'wall ms':>8s} {'cpu ms':>8s}   (medians; cpu = process CPU time per call)")
    for k, v in sorted(ms.items()):
        print(f"  {k:18s} {v:8.2f} {cpu[k] * 1e3:8.2f}")
    print("ratios:")
    if "tf" in ms:
        print(f"  TF / zipfnce softmax step          {ms['tf'] / ms['zn_softmax']:6.2f}x  (target >= 5)")
    print(
        f"  zipfnce softmax / numpy bound      {ms['zn_softmax'] / ms['numpy_bound']:6.2f}x  (target <= 1.3)"
    )
    print(f"  zipfnce NCE / numpy bound          {ms['zn_nce'] / ms['numpy_bound']:6.2f}x")
    print(
        f"  zipfnce 1 thread / {args.threads} threads        {ms['zn_softmax_1t'] / ms['zn_softmax']:6.2f}x  (target >= 1.8)"
    )
    print(f"  per-row S=256 / numpy bound S=8192 {ms['zn_per_row'] / ms['numpy_bound']:6.2f}x")
    print(f"  per-row S=256 / numpy bound S=256  {ms['zn_per_row'] / ms['numpy_bound_row']:6.2f}x")
    print(f"  per-row S=256 / numpy gather B*S   {ms['zn_per_row'] / ms['numpy_gather_row']:6.2f}x")


# pytest-benchmark ----------------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def case() -> Case:
        zn.set_num_threads(THREADS)
        return Case()

    def test_zipfnce_sampled_softmax_step(benchmark, case):
        benchmark(case.zn_softmax)

    def test_zipfnce_nce_step(benchmark, case):
        benchmark(case.zn_nce)

    def test_zipfnce_per_row_step(benchmark, case):
        benchmark(case.zn_per_row)

    def test_numpy_three_products(benchmark, case):
        benchmark(case.numpy_bound)

    def test_tensorflow_step(benchmark, case):
        pytest.importorskip("tensorflow")
        benchmark(tf_step(case))


if __name__ == "__main__":
    main()
