"""zipfnce's threads sleep between calls: after a loss or sampling call returns, the process burns (almost) no
CPU while it waits, so the NumPy, torch or TensorFlow work that follows gets the cores (BENCHMARKS.md,
"Sharing the cores"). OpenBLAS's and OpenMP's pools by default spin for a while instead.

The measure is the process's CPU time over a sleep right after a call: a spinning helper would burn up to the
whole sleep (a share of it when the machine is busy, still far above the bound), a sleeping one nothing.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import zipfnce as zn

SLEEP = 0.1
BOUND = 0.005  # seconds of CPU over SLEEP: a spinning thread burns several times this even on a busy machine


@pytest.fixture
def two_threads():
    n = zn.get_num_threads()
    zn.set_num_threads(2)
    yield
    zn.set_num_threads(n)


def _burn_after(call, reps=7):
    call()
    burnt = []
    for _ in range(reps):
        call()
        c0 = time.process_time()
        time.sleep(SLEEP)
        burnt.append(time.process_time() - c0)
    return statistics.median(burnt)


def test_loss_pool_sleeps_after_a_call(two_threads):
    rng = np.random.default_rng(0)
    B, D, V, S = 256, 64, 100_000, 2048
    w = rng.standard_normal((V, D), dtype=np.float32)
    b = np.zeros(V, np.float32)
    x = rng.standard_normal((B, D), dtype=np.float32)
    labels = rng.integers(0, V, (B, 1))
    burnt = _burn_after(lambda: zn.sampled_softmax_loss_and_grad(w, b, labels, x, S, V, seed=1))
    assert burnt < BOUND, (
        f"{burnt * 1e3:.1f} ms of CPU burnt in {SLEEP * 1e3:.0f} ms of sleep after a loss call"
    )


def test_sampling_helpers_sleep_after_a_call(two_threads):
    smp = zn.LogUniformSampler(1_000_000, seed=0)
    true = np.arange(512).reshape(-1, 1)
    burnt = _burn_after(lambda: smp.sample_per_row(true, 256, unique=False))
    assert burnt < BOUND, f"{burnt * 1e3:.1f} ms of CPU burnt in {SLEEP * 1e3:.0f} ms of sleep after sampling"
