"""Threads and fork (issue 7): many Python threads calling the library at once on shared sampler objects,
and forked children (multiprocessing "fork", a torch DataLoader with workers) after the library's pool ran.

Every call here is seeded, so its result must equal the single-threaded one exactly; unseeded calls on a
shared sampler must use each position of its stream exactly once. Every wait has a timeout: a deadlock is a
failure, not a stuck CI job. Losses join CALLS below (a name and a seeded call) once they are in zipfnce.
"""

import multiprocessing
import os
import signal
import threading
import time

import hardening as H
import numpy as np
import pytest
import zipfnce as zn

N_THREADS = 8
TIMEOUT = 180.0

rng = np.random.default_rng(0)
V = 1_000_000
TC = rng.integers(0, V, size=(2000, 2))  # 2000 rows: per-row calls of 16 take the parallel path
IDS = rng.integers(0, V, size=50_000)
CANDS = np.concatenate([rng.integers(0, 50, size=200), TC[:100, 0]])

LOGU = zn.LogUniformSampler(V, seed=1)
UNI = zn.UniformSampler(V, seed=2)
ZIPF = zn.ZipfSampler(V, 1.05, seed=3)
UNIGRAM = zn.UnigramSampler(rng.random(V) + 0.01, distortion=0.75, seed=4)
SMALL_UNIGRAM = np.arange(1, 1001, dtype=np.float64)


def _t(x):
    return tuple(x) if isinstance(x, tuple) else (x,)


# (name, seeded call) pairs; large sizes take the parallel paths (>= 8192 draws or rows x samples).
CALLS = [
    ("log_uniform.sample unique", lambda: _t(LOGU.sample(20_000, true_classes=TC, seed=11))),
    ("uniform.sample plain", lambda: _t(UNI.sample(50_000, unique=False, true_classes=TC, seed=12))),
    ("zipf.sample small", lambda: _t(ZIPF.sample(64, true_classes=TC[:8], remove_true=True, seed=13))),
    (
        "unigram.sample remove_true",
        lambda: _t(UNIGRAM.sample(9000, true_classes=TC[:50], remove_true=True, seed=14)),
    ),
    ("log_uniform.sample_per_row", lambda: _t(LOGU.sample_per_row(TC, 16, remove_true=True, seed=15))),
    ("zipf.sample_per_row plain", lambda: _t(ZIPF.sample_per_row(TC, 8, unique=False, seed=16))),
    ("unigram.sample_per_row", lambda: _t(UNIGRAM.sample_per_row(TC[:300], 32, seed=17))),
    ("probability", lambda: _t(ZIPF.probability(IDS))),
    ("expected_count", lambda: _t(LOGU.expected_count(IDS, 64, 900))),
    (
        "log_uniform_candidate_sampler",
        lambda: _t(zn.log_uniform_candidate_sampler(TC, 2, 128, True, V, seed=18)),
    ),
    (
        "fixed_unigram_candidate_sampler",
        lambda: _t(
            zn.fixed_unigram_candidate_sampler(
                TC[:10] % 1000, 2, 100, True, 1000, unigrams=SMALL_UNIGRAM, distortion=0.75, seed=19
            )
        ),
    ),
    ("compute_accidental_hits", lambda: _t(zn.compute_accidental_hits(TC[:100], CANDS, 2))),
]

# Losses (docs/API.md: Sampled softmax and NCE, InfoNCE).
_W = rng.standard_normal((20_000, 64)).astype(np.float32)
_B = rng.standard_normal(20_000).astype(np.float32)
_X = rng.standard_normal((256, 64)).astype(np.float32)
_L = rng.integers(0, 20_000, size=(256, 1))
CALLS.append(
    ("sampled_softmax_loss", lambda: _t(zn.sampled_softmax_loss(_W, _B, _L, _X, 512, 20_000, seed=21)))
)
CALLS.append(("nce_loss", lambda: _t(zn.nce_loss(_W, _B, _L, _X, 512, 20_000, seed=22))))
# Gradients (the parallel backward pass and the sparse sums), per-row candidates, float64, focal.
_G = rng.standard_normal(256).astype(np.float32)
_L3 = rng.integers(0, 20_000, size=(256, 3))
_PER_ROW = LOGU.sample_per_row(_L3 % V, 64, seed=23)
_PER_ROW = (_PER_ROW.ids % 20_000, _PER_ROW.true_expected_count, _PER_ROW.sampled_expected_count)
_W64 = _W.astype(np.float64)


def _flat(g):
    return (g.loss, g.grad_inputs, *g.grad_weights, *(g.grad_biases or ()))


CALLS.append(
    (
        "sampled_softmax_loss_and_grad",
        lambda: _flat(zn.sampled_softmax_loss_and_grad(_W, _B, _L, _X, 2048, 20_000, seed=24, grad_loss=_G)),
    )
)
CALLS.append(
    (
        "nce_loss_and_grad per row",
        lambda: _flat(
            zn.nce_loss_and_grad(_W64, None, _L3, _X, 64, 20_000, 3, sampled_values=_PER_ROW, focal_gamma=1.5)
        ),
    )
)
_Q = rng.standard_normal((256, 64)).astype(np.float32)
_K = rng.standard_normal((256, 64)).astype(np.float32)
_N = rng.standard_normal((1024, 64)).astype(np.float32)
CALLS.append(("info_nce_loss", lambda: _t(zn.info_nce_loss(_Q, _K, negatives=_N, symmetric=True))))


@pytest.fixture(scope="module")
def reference():
    """Every call's result, one at a time on one thread of the library's pool."""
    before = zn.get_num_threads()
    zn.set_num_threads(1)
    try:
        return {name: f() for name, f in CALLS}
    finally:
        zn.set_num_threads(before)


def _run_threads(target, n=N_THREADS, timeout=TIMEOUT):
    """Run target(i) on n daemon threads started together; re-raise the first error; fail on a deadlock."""
    barrier = threading.Barrier(n)
    errors = []

    def body(i):
        try:
            barrier.wait(timeout)
            target(i)
        except BaseException as e:  # noqa: B036 - reported below
            errors.append((i, e))

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"threads {stuck} still running after {timeout} s: deadlock or livelock"
    if errors:
        raise AssertionError(f"thread {errors[0][0]} failed: {errors[0][1]!r}") from errors[0][1]


def test_threads_share_samplers_and_match_the_single_threaded_results(reference):
    def target(i):
        order = CALLS[i % len(CALLS) :] + CALLS[: i % len(CALLS)]  # threads start on different calls
        for _ in range(2):
            for name, f in order:
                H._same(f(), reference[name])

    _run_threads(target)


def test_results_hold_while_another_thread_resizes_the_pool(reference):
    stop = threading.Event()
    before = zn.get_num_threads()

    def target(i):
        if i == 0:
            n = 0
            while not stop.is_set():
                zn.set_num_threads(1 + n % 4)
                n += 1
                time.sleep(0.002)
            return
        try:
            for name, f in CALLS[i % len(CALLS) :] + CALLS[: i % len(CALLS)]:
                H._same(f(), reference[name])
        finally:
            if i == 1:
                stop.set()

    try:
        _run_threads(target)
    finally:
        stop.set()
        zn.set_num_threads(before)


@pytest.mark.parametrize("size,unique", [(64, True), (9000, False), (3000, True)])
def test_a_shared_stream_gives_each_call_its_own_position(size, unique):
    """Unseeded calls on one sampler from 8 threads: together they draw exactly what the same number of
    calls draws on one thread (call i of a sampler uses stream position i), in some order."""
    calls_per_thread = 12
    shared = zn.LogUniformSampler(V, seed=77)
    got = [[] for _ in range(N_THREADS)]

    def target(i):
        for _ in range(calls_per_thread):
            got[i].append(shared.sample(size, unique=unique).ids.tobytes())

    _run_threads(target)
    solo = zn.LogUniformSampler(V, seed=77)
    want = sorted(solo.sample(size, unique=unique).ids.tobytes() for _ in range(N_THREADS * calls_per_thread))
    assert sorted(sum(got, [])) == want
    assert len(set(want)) == len(want)  # and the positions really differ


def test_per_row_shared_stream_under_threads():
    shared = zn.ZipfSampler(V, 1.2, seed=5)
    got = [[] for _ in range(N_THREADS)]

    def target(i):
        for _ in range(6):
            got[i].append(shared.sample_per_row(TC[:600], 16).ids.tobytes())

    _run_threads(target)
    solo = zn.ZipfSampler(V, 1.2, seed=5)
    assert sorted(sum(got, [])) == sorted(
        solo.sample_per_row(TC[:600], 16).ids.tobytes() for _ in range(N_THREADS * 6)
    )


# ----------------------------------------------------------------------------------------------------------
# Fork
# ----------------------------------------------------------------------------------------------------------


def _all_results(_=None):
    return {name: f() for name, f in CALLS}


def _check_against(results, reference):
    for name, value in results.items():
        H._same(value, reference[name])


def _warm_the_pool():
    # The parallel paths run on the library's pool, so its worker threads exist in the parent when it forks.
    assert zn.get_num_threads() >= 1
    LOGU.sample(50_000, unique=False, seed=1)
    LOGU.sample_per_row(TC, 16, seed=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_multiprocessing_fork_children_sample_without_hanging(reference):
    _warm_the_pool()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        async_result = pool.map_async(_all_results, range(4))
        try:
            results = async_result.get(timeout=TIMEOUT)
        except multiprocessing.TimeoutError:
            pytest.fail(f"forked workers did not finish within {TIMEOUT} s: deadlock after fork")
    for r in results:
        _check_against(r, reference)


class _Rows:
    """A torch Dataset whose items are seeded library calls."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        # The first calls (samplers) and the last ones (losses, when present).
        name, f = CALLS[i] if i < 3 else CALLS[len(CALLS) - (i - 2)]
        return name, f()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_torch_dataloader_workers_sample_without_hanging(reference):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    _warm_the_pool()
    loader = DataLoader(
        _Rows(),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
        timeout=TIMEOUT,
        collate_fn=lambda x: x,
    )
    seen = 0
    for name, value in loader:
        H._same(value, reference[name])
        seen += 1
    assert seen == len(_Rows())
    del torch


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_while_other_threads_are_inside_the_pool(reference):
    """Children forked while threads of the parent are busy in the library (and resizing its pool) each
    make a parallel call; none may hang on state the parent's threads held at the moment of the fork."""
    stop = threading.Event()
    before = zn.get_num_threads()
    name, f = CALLS[4]  # a parallel per-row call
    want = reference[name]

    def busy(i):
        while not stop.is_set():
            if i == 0:
                zn.set_num_threads(1 + int(time.monotonic() * 1000) % 3)
            LOGU.sample(20_000, unique=(i % 2 == 0), seed=i)

    threads = [threading.Thread(target=busy, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    pids = []
    try:
        for _ in range(12):
            time.sleep(0.01)
            pid = os.fork()
            if pid == 0:  # the child: one parallel call, compared with the reference
                code = 1
                try:
                    H._same(f(), want)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        deadline = time.monotonic() + TIMEOUT
        failed, hung = [], []
        for pid in pids:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                        failed.append(status)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    hung.append(pid)
                    break
                time.sleep(0.01)
        assert not hung, f"{len(hung)} of {len(pids)} forked children hung"
        assert not failed, f"forked children failed: {failed}"
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
        zn.set_num_threads(before)
