"""Samplers inside data pipelines (issue 13): fork, pickling and copies, spawn, DataLoader workers, seeds."""

from __future__ import annotations

import copy
import os
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import zipfnce as zn
from scipy import stats

V = 10_000
MAKERS = {
    "log_uniform": lambda seed=None: zn.LogUniformSampler(V, seed=seed),
    "uniform": lambda seed=None: zn.UniformSampler(V, seed=seed),
    "zipf": lambda seed=None: zn.ZipfSampler(V, 1.1, seed=seed),
    "unigram": lambda seed=None: zn.UnigramSampler(
        np.arange(1, V + 1) ** -0.9, distortion=0.75, num_reserved_ids=3, seed=seed
    ),
}
KINDS = list(MAKERS)
TC = np.array([[1], [5], [9]])


def draws(s, n=64):
    """Two calls from the sampler's stream: a shared unique draw and a per-row draw."""
    return np.concatenate([s.sample(n).ids, s.sample_per_row(TC, 8, unique=False).ids.ravel()])


def in_child(fn):
    """Run ``fn()`` in a forked child and return what it returned (an array, through a pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.write(w, pickle.dumps(fn()))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


# --- fork -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("used_before_fork", [False, True])
def test_unseeded_sampler_gets_fresh_entropy_in_a_forked_child(kind, used_before_fork):
    s = MAKERS[kind]()
    if used_before_fork:
        draws(s)
    child_a = in_child(lambda: draws(s))
    child_b = in_child(lambda: draws(s))
    parent = draws(s)
    # 88 ids each; two independent streams agree on all of them with negligible probability.
    assert not np.array_equal(child_a, parent)
    assert not np.array_equal(child_b, parent)
    assert not np.array_equal(child_a, child_b)


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_sampler_continues_its_stream_in_a_forked_child(kind):
    s = MAKERS[kind](seed=7)
    draws(s)
    child = in_child(lambda: draws(s))
    np.testing.assert_array_equal(child, draws(s))  # a seeded stream is a value: reproducible everywhere


def test_stateless_drop_ins_differ_between_parent_and_child():
    tc = np.zeros((1, 1), dtype=np.int64)
    child = in_child(lambda: zn.log_uniform_candidate_sampler(tc, 1, 64, True, 10**6)[0])
    assert not np.array_equal(child, zn.log_uniform_candidate_sampler(tc, 1, 64, True, 10**6)[0])


# --- pickle and copies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["pickle", "pickle5", "deepcopy", "copy"])
def test_seeded_copy_continues_the_same_stream(kind, how):
    s = MAKERS[kind](seed=11)
    draws(s)  # the copy must continue from here, not from the seed
    c = {
        "pickle": lambda x: pickle.loads(pickle.dumps(x)),
        "pickle5": lambda x: pickle.loads(pickle.dumps(x, protocol=5)),
        "deepcopy": copy.deepcopy,
        "copy": copy.copy,
    }[how](s)
    assert type(c) is type(s) and c.range_max == s.range_max
    ids = np.arange(s.range_max)
    np.testing.assert_array_equal(c.probability(ids), s.probability(ids))
    a, b = draws(c), draws(s)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(draws(c), draws(s))
    # Stateless calls are untouched by the copy.
    np.testing.assert_array_equal(c.sample(32, seed=5).ids, s.sample(32, seed=5).ids)


@pytest.mark.parametrize("kind", KINDS)
def test_unseeded_copy_has_the_same_law_and_a_stream_of_its_own(kind):
    s = MAKERS[kind]()
    c = pickle.loads(pickle.dumps(s))
    d = copy.deepcopy(s)
    ids = np.arange(s.range_max)
    np.testing.assert_array_equal(c.probability(ids), s.probability(ids))
    np.testing.assert_array_equal(d.probability(ids), s.probability(ids))
    a, b, e = draws(c), draws(s), draws(d)
    assert not np.array_equal(a, b) and not np.array_equal(e, b) and not np.array_equal(a, e)


def test_native_sampler_pickles_too():
    s = zn._core.Sampler.zipf(1000, 1.3, 4)
    c = pickle.loads(pickle.dumps(s))
    assert c.kind == "zipf" and c.range_max == 1000
    got = c.sample(16, True, None, False, None)[0]
    np.testing.assert_array_equal(got, s.sample(16, True, None, False, None)[0])


def test_unigram_shards_and_tf_float32_survive_a_copy():
    u = zn.UnigramSampler(
        np.arange(1.0, 101.0), distortion=0.5, num_reserved_ids=4, num_shards=3, shard=1, seed=2
    )
    c = pickle.loads(pickle.dumps(u))
    np.testing.assert_array_equal(
        c.probability(np.arange(u.range_max)), u.probability(np.arange(u.range_max))
    )
    f = zn._core.Sampler.unigram_tf(np.arange(1.0, 101.0), 0.75, 0, 1, 0, True, 3)
    g = pickle.loads(pickle.dumps(f))
    k = np.arange(100)
    np.testing.assert_array_equal(g.probability(k), f.probability(k))  # TensorFlow's float32 total travels


def test_large_unigram_round_trip_is_linear():
    """The weights travel once as float64 (8 bytes a class, no alias table, no Python lists); the
    round trip of 10^6 classes takes well under a second (10^7: BENCHMARKS.md)."""
    n = 10**6
    u = zn.UnigramSampler(np.random.default_rng(0).random(n) + 0.01, seed=1)
    t = time.perf_counter()
    blob = pickle.dumps(u, protocol=pickle.HIGHEST_PROTOCOL)
    c = pickle.loads(blob)
    took = time.perf_counter() - t
    assert 8 * n <= len(blob) < 8 * n + 4096
    assert took < 5.0, took  # generous: a shared CI machine; a quadratic copy would take minutes
    np.testing.assert_array_equal(c.sample(256).ids, u.sample(256).ids)


# --- spawn ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_spawn_is_reproducible_and_pairwise_different(kind):
    kids = MAKERS[kind](seed=11).spawn(3)
    again = MAKERS[kind](seed=11).spawn(3)
    assert len(kids) == 3 and all(type(k) is type(kids[0]) for k in kids)
    first = [draws(k) for k in kids]
    for a, b in zip(first, (draws(k) for k in again)):
        np.testing.assert_array_equal(a, b)
    parent = draws(MAKERS[kind](seed=11))
    for i in range(3):
        assert not np.array_equal(first[i], parent)
        for j in range(i):
            assert not np.array_equal(first[i], first[j])


def test_spawn_continues_the_child_numbering_and_children_spawn():
    s, t = zn.LogUniformSampler(V, seed=11), zn.LogUniformSampler(V, seed=11)
    kids = s.spawn(2) + s.spawn(1)
    for a, b in zip(kids, t.spawn(3)):
        np.testing.assert_array_equal(draws(a), draws(b))
    grandkids = [draws(g) for g in zn.LogUniformSampler(V, seed=11).spawn(1)[0].spawn(2)]
    assert not np.array_equal(grandkids[0], grandkids[1])
    assert s.spawn(0) == []
    with pytest.raises(ValueError, match="^n:"):
        s.spawn(-1)
    with pytest.raises(TypeError, match="^n:"):
        s.spawn(2.0)


def test_spawned_child_keeps_the_law():
    """Chi-square goodness of fit of a child's draws against P (20 classes, 40,000 draws, fixed seed)."""
    child = zn.LogUniformSampler(20, seed=3).spawn(4)[2]
    ids = child.sample(40_000, unique=False).ids
    observed = np.bincount(ids, minlength=20)
    expected = child.probability(np.arange(20)) * ids.size
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_spawned_child_is_a_value_too():
    kid = zn.ZipfSampler(V, 1.2, seed=4).spawn(2)[1]
    draws(kid)
    c = pickle.loads(pickle.dumps(kid))
    np.testing.assert_array_equal(draws(c), draws(kid))


# --- DataLoader workers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_workers_draw_different_and_reproducible_candidates(method):
    pytest.importorskip("torch")
    from _pipeline_data import run_loader

    s = zn.LogUniformSampler(10**6, seed=3)
    first = run_loader(s, method, torch_seed=0)
    assert sorted(first) == [0, 1] and all(len(v) == 4 for v in first.values())
    for a, b in zip(first[0], first[1]):
        assert not np.array_equal(a, b)
    items = [a.tobytes() for v in first.values() for a in v]
    assert len(set(items)) == len(items), "a worker repeated itself"
    if method == "spawn":  # the slowest start method runs once; fork shows reproducibility below
        return
    again = run_loader(s, method, torch_seed=0)
    for w in (0, 1):
        np.testing.assert_array_equal(np.stack(again[w]), np.stack(first[w]))
    other = run_loader(s, method, torch_seed=1)
    assert not np.array_equal(np.stack(other[0]), np.stack(first[0]))


def test_dataloader_workers_with_an_unseeded_sampler_differ():
    pytest.importorskip("torch")
    from _pipeline_data import run_loader

    got = run_loader(zn.UnigramSampler(np.arange(1.0, 10**5)), "fork", torch_seed=0)
    for a, b in zip(got[0], got[1]):
        assert not np.array_equal(a, b)


def test_the_main_process_stream_is_untouched_by_torch():
    pytest.importorskip("torch")
    import torch  # noqa: F401  (loaded, but not in a worker: nothing changes)

    np.testing.assert_array_equal(
        draws(zn.LogUniformSampler(V, seed=9)), draws(zn.LogUniformSampler(V, seed=9))
    )


def test_without_torch_nothing_is_imported():
    code = (
        "import sys, zipfnce as zn\n"
        "s = zn.LogUniformSampler(100, seed=1); s.sample(5); pickle_ok = s.spawn(2)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- seeds and hopeless requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**64, 2**70, -(2**63)])
def test_seeds_outside_uint64_are_refused(seed):
    for make in MAKERS.values():
        with pytest.raises(ValueError, match=r"^seed: must be None or an integer in \[0, 2\*\*64\)"):
            make(seed=seed)
    s = zn.LogUniformSampler(V)
    with pytest.raises(ValueError, match="^seed:"):
        s.sample(4, seed=seed)
    with pytest.raises(ValueError, match="^seed:"):
        zn.uniform_candidate_sampler(TC, 1, 4, True, V, seed=seed)


def test_seed_edges_and_numpy_integers_are_accepted():
    s = zn.LogUniformSampler(V)
    np.testing.assert_array_equal(s.sample(5, seed=np.uint64(2**64 - 1)).ids, s.sample(5, seed=2**64 - 1).ids)
    np.testing.assert_array_equal(s.sample(5, seed=np.int8(9)).ids, s.sample(5, seed=9).ids)
    assert zn.LogUniformSampler(V, seed=0).range_max == V


def test_constructors_document_the_seed():
    for cls in (zn.LogUniformSampler, zn.UniformSampler, zn.ZipfSampler, zn.UnigramSampler):
        doc = cls.__doc__
        assert "``seed`` is None or an integer in [0, 2**64)" in doc, cls
        assert "DataLoader" in doc and "spawn" in doc


def test_hopeless_unique_request_fails_fast_with_consistent_counts():
    s = zn.UnigramSampler([1e12] + [1] * 1000)
    t = time.perf_counter()
    with pytest.raises(ValueError, match="^num_sampled: gave up after") as e:
        s.sample(1001, unique=True, seed=1)
    assert time.perf_counter() - t < 2.0  # it used to take 14 s
    msg = str(e.value)
    made = int(re.search(r"after (\d+) draws", msg).group(1))
    left, allowed = map(int, re.search(r"the (\d+) draws left of the (\d+) allowed", msg).groups())
    assert made + left == allowed == 2**31 and made < 10**5, msg


def test_a_hard_but_possible_unique_request_still_succeeds():
    # 1000 classes of weight 1 next to one of 10^4: about 1.1 * 10^4 * ln(1000) draws, well within reach.
    s = zn.UnigramSampler([1e4] + [1] * 1000, seed=0)
    got = s.sample(1001, unique=True)
    assert np.unique(got.ids).size == 1001


def test_threads_racing_on_the_first_call_after_a_fork_never_share_keys():
    """Eight threads make the first calls of an unseeded sampler in a forked child at once: the stream is
    re-bound once, so no two calls draw with the same key (identical 64-id draws over 10^6 classes)."""
    import threading

    s = zn.LogUniformSampler(10**6)
    s.sample(4)

    def child():
        out, go = [], threading.Barrier(8)

        def work():
            go.wait()
            for _ in range(10):
                out.append(s.sample(64, unique=False).ids.tobytes())

        ts = [threading.Thread(target=work) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return out

    got = in_child(child)
    assert len(got) == 80 and len(set(got)) == 80
