"""Big inputs (issue 7): requests that need more memory than the machine has are a ValueError naming the
argument, never an OOM kill or an abort; large inputs are read in place.

Requests run in a child process whose address space is capped (RLIMIT_AS), so that a regression fails
there (an abort, a MemoryError) instead of pushing this machine into the OOM killer. The library also
counts the room under RLIMIT_AS, so the cap alone would give a ValueError too; the messages checked here
("memory") and the unit tests of rust/buf.rs pin down which check fired.
"""

import os
import resource
import subprocess
import sys
import textwrap

import hardening as H  # noqa: F401 (tests dir on sys.path)
import numpy as np
import pytest
import zipfnce as zn


def _sample(kind, range_max, num_sampled, unique, per_row_rows=0):
    s = getattr(zn, kind)(range_max, seed=1)
    try:
        if per_row_rows:
            s.sample_per_row(np.zeros(per_row_rows, dtype=np.int64), num_sampled, unique=unique)
        else:
            s.sample(num_sampled, unique=unique)
    except Exception as e:
        return type(e).__name__, str(e)
    return "no error", ""


def _hits(rows, cands):
    try:
        zn.compute_accidental_hits(np.zeros((rows, 1), np.int64), np.zeros(cands, np.int64), 1)
    except Exception as e:
        return type(e).__name__, str(e)
    return "no error", ""


def _all_candidates(n):
    try:
        zn.all_candidate_sampler([[0]], 1, n, True)
    except Exception as e:
        return type(e).__name__, str(e)
    return "no error", ""


def _run(fn, **kwargs):
    """Call test_big_inputs.<fn>(**kwargs) in a child whose address space is capped at 6 GiB."""
    src = (
        f"import sys; sys.path.insert(0, {H.TESTS_DIR!r}); import test_big_inputs as t; "
        f"print(repr(t.{fn}(**{kwargs!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", src],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)),
    )
    assert proc.returncode == 0, f"the child died ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return eval(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "kind,range_max,num_sampled,unique,rows",
    [
        ("LogUniformSampler", 10**6, 2**36, False, 0),  # 2^36 draws with replacement: 768 GiB
        ("UniformSampler", 2**62, 2**35, True, 0),  # unique over a huge range: ids plus a hash set
        ("ZipfSampler", 2**40, 2**33, False, 0),  # 96 GiB, each buffer alone below the machine's memory
        ("LogUniformSampler", 10**6, 2**16, False, 2**17),  # per row: B x S = 2^33
        ("UniformSampler", 10**6, 2**20, False, 2**16),  # B x S = 2^36
    ],
)
def test_impossible_sample_sizes_are_value_errors(kind, range_max, num_sampled, unique, rows):
    typ, msg = _run(
        "_sample", kind=kind, range_max=range_max, num_sampled=num_sampled, unique=unique, per_row_rows=rows
    )
    assert typ == "ValueError" and msg.startswith("num_sampled:"), (typ, msg)


def test_accidental_hits_that_cannot_fit_are_value_errors():
    # 2^17 rows, each true class in all 2^17 candidates: 2^34 hits (256 GiB). This grew a vector until it
    # aborted (or, with overcommit, until the OOM killer came).
    typ, msg = _run("_hits", rows=2**17, cands=2**17)
    assert typ == "ValueError" and msg.startswith("sampled_candidates:") and "memory" in msg, (typ, msg)


def test_all_candidates_that_cannot_fit_are_value_errors():
    typ, msg = _run("_all_candidates", n=2**36)  # was a numpy MemoryError
    assert typ == "ValueError" and msg.startswith("num_sampled:"), (typ, msg)


def test_memory_limit_from_the_environment():
    """ZIPFNCE_MAX_MEMORY caps what a call may allocate: 2^25 draws (384 MiB of ids and counts) fail under
    a 256 MiB limit and pass under 1 GiB."""
    code = (
        "import sys, zipfnce as zn; s = zn.LogUniformSampler(1000, seed=1)\n"
        "try:\n r = s.sample(2**25, unique=False); print('ok', r.ids.size)\n"
        "except ValueError as e: print('ValueError', e)"
    )
    outs = {}
    for limit in ("256M", "1G"):
        env = dict(os.environ, ZIPFNCE_MAX_MEMORY=limit)
        outs[limit] = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
        ).stdout.strip()
    assert outs["256M"].startswith("ValueError num_sampled:") and "memory" in outs["256M"], outs
    assert outs["1G"] == f"ok {2**25}", outs


def test_available_memory_is_known_on_linux():
    avail = zn._core.available_memory()
    if sys.platform.startswith("linux"):
        assert isinstance(avail, int) and avail > 0


# ----------------------------------------------------------------------------------------------------------
# Losses: 1e7 x 128 float32 weights (5 GB) are read in place. Runs once zn.sampled_softmax_loss exists.
# ----------------------------------------------------------------------------------------------------------

LOSS_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np, zipfnce as zn
    V, D, B, S = 10_000_000, 128, 256, 1024
    # A sparse file mapped in place: pages the loss does not read are never resident, so the peak RSS
    # grows by what the call touches and allocates, not by the 5 GB of weights.
    w = np.memmap(sys.argv[1], dtype=np.float32, mode="w+", shape=(V, D))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, V, size=(B, 1))
    x = rng.standard_normal((B, D)).astype(np.float32)
    sv = zn.LogUniformSampler(V, seed=0).sample(S, true_classes=labels, seed=1)
    used = np.unique(np.concatenate([labels.ravel(), sv.ids]))
    rows = (0.1 * rng.standard_normal((used.size, D))).astype(np.float32)
    w[used] = rows  # the only rows the call reads (a few MiB of pages)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss = zn.sampled_softmax_loss(w, None, labels, x, S, V, sampled_values=sv)
    out = zn.sampled_softmax_loss_and_grad(w, None, labels, x, S, V, sampled_values=sv)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The same problem with the used rows packed into a small matrix (ids renumbered in the same order):
    # the same arithmetic in the same order, so the same bits.
    small = zn.sampled_softmax_loss_and_grad(rows, None, np.searchsorted(used, labels), x, S, used.size,
        sampled_values=(np.searchsorted(used, sv.ids), sv.true_expected_count, sv.sampled_expected_count))
    assert loss.shape == (B,) and loss.dtype == np.float32 and np.all(np.isfinite(loss))
    assert np.array_equal(loss, small.loss) and np.array_equal(out.loss, small.loss)
    assert np.array_equal(out.grad_inputs, small.grad_inputs)
    assert np.array_equal(out.grad_weights.indices, used[small.grad_weights.indices])
    assert np.array_equal(out.grad_weights.values, small.grad_weights.values)
    print(after - before, w.nbytes)
""")


def test_loss_reads_5gb_of_weights_in_place(tmp_path):
    path = tmp_path / "weights.f32"
    out = subprocess.run(
        [sys.executable, "-c", LOSS_CHILD, str(path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    grown, size = map(int, out.stdout.split())
    assert grown < 0.05 * size, f"peak memory grew by {grown >> 20} MiB for {size >> 20} MiB of weights"


def _loss_call(case):
    """Loss calls whose arguments are small or broadcast views (no memory behind them) but whose copies or
    work buffers cannot fit under the child's 6 GiB cap."""
    f32 = np.float32
    try:
        if case == "shared work buffers":
            # 2^24 candidates of 256 floats: 16 GiB of gathered rows. The arguments take 192 MiB.
            v, d, s = 2**24, 256, 2**24
            w = np.broadcast_to(np.full((1, d), 0.01, f32), (v, d))
            sv = (np.arange(s), np.ones((4, 1), f32), np.ones(s, f32))
            zn.sampled_softmax_loss_and_grad(
                w, None, np.zeros((4, 1), np.int64), np.ones((4, d), f32), s, v, sampled_values=sv
            )
        elif case == "per-row ids":
            # [2^14, 2^16] int64 candidates, a broadcast view: the binding's copy of them takes 8 GiB (and
            # aborted). Straight into the binding: the Python layer would refuse the counts' copy first.
            b, s = 2**14, 2**16
            ids = np.broadcast_to(np.int64(0), (b, s))
            se = np.broadcast_to(f32(1), (b, s))
            zn._core.sampled_loss(
                True,
                np.ones((2, 4), f32),
                None,
                np.zeros((b, 1), np.int64),
                np.ones((b, 4), f32),
                ids,
                np.ones((b, 1), f32),
                se,
                False,
                True,
                0.0,
                False,
            )
        elif case == "per-row counts":
            b, s = 2**14, 2**16
            se = np.broadcast_to(f32(1), (b, s))  # a float64 copy of it is 8 GiB
            zn.nce_loss(
                np.ones((2, 4)),
                None,
                np.zeros(b, np.int64),
                np.ones((b, 4)),
                s,
                2,
                sampled_values=(np.zeros((b, s), np.int8), np.ones(b), se),
            )
    except Exception as e:
        return type(e).__name__, str(e)
    return "no error", ""


@pytest.mark.parametrize(
    "case,name",
    [
        ("shared work buffers", "num_sampled"),
        ("per-row ids", "sampled_values"),
        ("per-row counts", "sampled_values"),
    ],
)
def test_loss_work_that_cannot_fit_is_a_value_error(case, name):
    typ, msg = _run("_loss_call", case=case)
    assert typ == "ValueError" and msg.startswith(name + ":") and "memory" in msg, (typ, msg)
