"""The loss pool's workers are bound one per CPU when the pool has exactly one worker per CPU of the process's
affinity mask (and never, or always, as ZIPFNCE_PIN_THREADS says); the results are the same bits either way.

Each case runs in a fresh interpreter (the pool is built once per process and thread count), makes one loss
call, then reads every ``zipfnce-N`` thread's ``Cpus_allowed_list`` from /proc.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "sched_getaffinity"),
    reason="thread binding is Linux-only",
)

CHILD = r"""
import hashlib, json, os, sys, time
import numpy as np
import zipfnce as zn

rng = np.random.default_rng(0)
B, D, V, S = 256, 32, 20_000, 512
w = rng.standard_normal((V, D), dtype=np.float32)
b = rng.standard_normal(V, dtype=np.float32)
x = rng.standard_normal((B, D), dtype=np.float32)
labels = rng.integers(0, V, (B, 1))
out = zn.sampled_softmax_loss_and_grad(w, b, labels, x, S, V, seed=1)
h = hashlib.sha256()
for part in (out.loss, out.grad_inputs, *out.grad_weights, *out.grad_biases):
    h.update(np.ascontiguousarray(part).tobytes())


def cpus(text):
    out = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def workers_now():
    found = {}
    for t in os.listdir("/proc/self/task"):
        try:
            name = open(f"/proc/self/task/{t}/comm").read().strip()
            status = open(f"/proc/self/task/{t}/status").read()
        except OSError:
            continue
        if name.startswith("zipfnce-") and not name.startswith("zipfnce-helper"):
            line = next(ln for ln in status.splitlines() if ln.startswith("Cpus_allowed_list:"))
            found[name] = cpus(line.split(":", 1)[1].strip())
    return found


# A worker names itself, then binds itself, as it starts; the call above may have finished before every
# worker got that far. Wait for all of them, then a little longer for the binding.
want, deadline = int(sys.argv[1]), time.monotonic() + 30
while len(workers_now()) < want and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.5)
workers = workers_now()
print(json.dumps({"mask": sorted(os.sched_getaffinity(0)), "workers": workers, "hash": h.hexdigest()}))
"""


def _run(threads: int, pin: str | None) -> dict:
    env = dict(os.environ, ZIPFNCE_NUM_THREADS=str(threads))
    env.pop("ZIPFNCE_PIN_THREADS", None)
    if pin is not None:
        env["ZIPFNCE_PIN_THREADS"] = pin
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads)], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["workers"]) == threads, out
    return out


def _ncpu() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda _: [0])(0)) < 2, reason="needs 2 CPUs")
def test_one_worker_per_cpu_is_bound_one_to_each():
    out = _run(_ncpu(), None)
    bound = sorted(c for cs in out["workers"].values() for c in cs)
    assert all(len(cs) == 1 for cs in out["workers"].values()), out
    assert bound == out["mask"], out  # every CPU of the mask gets exactly one worker


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda _: [0])(0)) < 2, reason="needs 2 CPUs")
def test_pin_zero_leaves_workers_free_and_results_equal():
    free = _run(_ncpu(), "0")
    assert all(cs == free["mask"] for cs in free["workers"].values()), free
    assert free["hash"] == _run(_ncpu(), None)["hash"]


def test_a_pool_larger_than_the_mask_is_not_bound_unless_asked():
    n = _ncpu() + 1
    free = _run(n, None)
    assert all(cs == free["mask"] for cs in free["workers"].values()), free
    forced = _run(n, "1")
    assert all(len(cs) == 1 and cs[0] in forced["mask"] for cs in forced["workers"].values()), forced
    # Worker i goes to the i-th CPU of the mask, cycling.
    for name, cs in forced["workers"].items():
        i = int(name.split("-")[1])
        assert cs == [forced["mask"][i % len(forced["mask"])]], forced
    assert forced["hash"] == free["hash"]


def test_a_single_thread_is_never_bound():
    out = _run(1, None)
    assert all(cs == out["mask"] for cs in out["workers"].values()), out
