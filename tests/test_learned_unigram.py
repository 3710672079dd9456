"""zn.LearnedUnigramSampler without TensorFlow: the counts' evolution, the draws' law (chi-square p-values,
fixed seeds), streams and seeds, copies, pickles, spawn, threads, cost against range_max and bad input.
Parity with TensorFlow itself is in test_learned_unigram_tf.py."""

from __future__ import annotations

import copy
import pickle
import threading
import time

import numpy as np
import pytest
import zipfnce as zn
from scipy import stats

ALPHA = 1e-4  # p-value threshold: a correct sampler fails a test about once in 10^4 runs


def chi_square_p(ids: np.ndarray, p: np.ndarray) -> float:
    """Pearson's chi-square p-value of draws ``ids`` against P over ``0..len(p)``, merging small cells."""
    obs = np.bincount(ids, minlength=len(p)).astype(np.float64)
    exp = p * len(ids)
    order = np.argsort(exp)
    o, e = obs[order], exp[order]
    # Merge the smallest cells until each expects at least 5.
    cut = np.searchsorted(np.cumsum(e), 5.0)
    o = np.concatenate([[o[: cut + 1].sum()], o[cut + 1 :]])
    e = np.concatenate([[e[: cut + 1].sum()], e[cut + 1 :]])
    return float(stats.chisquare(o, e * o.sum() / e.sum()).pvalue)


def test_counts_start_at_one_and_learn_after_each_draw():
    s = zn.LearnedUnigramSampler(10, seed=1)
    np.testing.assert_array_equal(s.counts(np.arange(10)), np.ones(10))
    tc = np.array([[1], [1], [2]])
    r = s.sample(4, unique=False, true_classes=tc)
    # The call's counts use the counts before its own true classes were added.
    np.testing.assert_array_equal(r.true_expected_count.ravel(), np.float32(4 * 0.1))
    assert s.total_count == 13
    np.testing.assert_array_equal(s.counts([1, 2, 3]), [3, 2, 1])
    np.testing.assert_array_equal(s.probability([1, 2, 3]), np.array([3, 2, 1]) / 13)
    r = s.sample(4, unique=False, true_classes=tc)
    p = np.array([3 / 13, 3 / 13, 2 / 13]).astype(np.float32)
    np.testing.assert_array_equal(r.true_expected_count.ravel(), p * np.float32(4))
    s.sample(3)  # no true classes: nothing learned
    assert s.total_count == 16
    s.update([[0, 0], [9, 0]])
    np.testing.assert_array_equal(s.counts([0, 9]), [4, 2])
    assert s.total_count == 20


def test_draws_follow_the_learned_counts():
    s = zn.LearnedUnigramSampler(3000, seed=5)
    rng = np.random.default_rng(0)
    history = (3000 * rng.random(40_000) ** 3).astype(np.int64)
    s.update(history)
    p = s.probability(np.arange(3000))
    np.testing.assert_allclose(p, (1 + np.bincount(history, minlength=3000)) / (3000 + 40_000), rtol=1e-15)
    ids = np.concatenate([s.sample(1000, unique=False).ids for _ in range(300)])
    assert chi_square_p(ids, p) > ALPHA
    rows = s.sample_per_row(np.zeros((300, 1), np.int64), 1000, unique=False)
    # sample_per_row learned its 300 true classes after drawing: the draws follow the old P.
    assert chi_square_p(rows.ids.ravel(), p) > ALPHA
    assert s.counts([0])[0] == 1 + np.sum(history == 0) + 300


def test_unique_and_remove_true():
    s = zn.LearnedUnigramSampler(50, seed=2)
    s.update(np.repeat(np.arange(5), 100))
    tc = np.array([[0, 1], [2, 3]])
    r = s.sample(40, unique=True, true_classes=tc, remove_true=True)
    assert len(set(r.ids.tolist())) == 40 and not set(r.ids.tolist()) & {0, 1, 2, 3}
    assert r.num_tries >= 40
    per = s.sample_per_row(tc, 10, unique=True, remove_true=True)
    for row, t in zip(per.ids, tc):
        assert len(set(row.tolist())) == 10 and not set(row.tolist()) & set(t.tolist())
    # The expected counts are the sampler's own expected_count with the P of before the call.
    s2 = zn.LearnedUnigramSampler(50, seed=2)
    s2.update(np.repeat(np.arange(5), 100))
    before = copy.copy(s2)
    r2 = s2.sample(20, unique=True, true_classes=tc)
    np.testing.assert_array_equal(r2.true_expected_count, before.expected_count(tc, 20, r2.num_tries))
    np.testing.assert_array_equal(r2.sampled_expected_count, before.expected_count(r2.ids, 20, r2.num_tries))


def test_streams_seeds_copies_and_pickles():
    tc = np.array([[3], [4]])

    def run(s):
        return [s.sample(5, unique=False, true_classes=tc).ids for _ in range(4)]

    a, b = zn.LearnedUnigramSampler(100, seed=9), zn.LearnedUnigramSampler(100, seed=9)
    for x, y in zip(run(a), run(b)):
        np.testing.assert_array_equal(x, y)
    # A seeded copy and a pickle continue the stream and carry the counts.
    for c in (copy.copy(a), copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert c.total_count == a.total_count == 108
        np.testing.assert_array_equal(c.counts(np.arange(100)), a.counts(np.arange(100)))
        assert type(c) is zn.LearnedUnigramSampler
    c = copy.copy(a)
    np.testing.assert_array_equal(c.sample(5, true_classes=tc).ids, a.sample(5, true_classes=tc).ids)
    c.update([7])
    assert c.total_count == a.total_count + 1, "a copy learns on its own"
    b.sample(5, true_classes=tc)  # b keeps learning what a learned
    # seed= makes a call stateless and reproducible, but it still learns.
    r1 = a.sample(5, seed=3, true_classes=tc)
    r2 = b.sample(5, seed=3, true_classes=tc)
    assert a.total_count == 112
    # (a and b have learned the same: the same seed gives the same ids.)
    np.testing.assert_array_equal(r1.ids, r2.ids)
    # spawn: children share the counts, draw from their own streams.
    kids = a.spawn(2)
    kids[0].update([1, 1])
    assert a.counts([1])[0] == 3 and kids[1].counts([1])[0] == 3
    assert not np.array_equal(kids[0].sample(50).ids, kids[1].sample(50).ids)
    # Child j of a sampler seeded with s has the same stream in every run.
    assert zn.LearnedUnigramSampler(100, seed=9).spawn(1)[0]._s.stream_state[0] == kids[0]._s.stream_state[0]


def test_threads_serialise_whole_calls():
    s = zn.LearnedUnigramSampler(1000)
    nthreads, calls = 8, 200
    totals = []

    def work(i: int) -> None:
        tc = np.full((4, 1), 100 + i)
        for _ in range(calls):
            r = s.sample(16, unique=True, true_classes=tc)
            totals.append(r.true_expected_count[0, 0])
            s.sample_per_row(tc, 4)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # Every call learned all its true classes exactly once: no update lost or torn.
    assert s.total_count == 1000 + nthreads * calls * 8
    np.testing.assert_array_equal(s.counts(100 + np.arange(nthreads)), 1 + calls * 8)
    assert s.counts([0])[0] == 1


def test_a_call_costs_no_table_rebuild():
    # A call at range_max = 10^7 costs about what it costs at 10^3 (a rebuild would be 10^4 times more).
    def per_call(v: int) -> float:
        s = zn.LearnedUnigramSampler(v, seed=1)
        tc = np.random.default_rng(0).integers(0, v, size=(64, 1))
        s.sample(64, unique=False, true_classes=tc)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(20):
                s.sample(64, unique=False, true_classes=tc)
            best = min(best, (time.perf_counter() - t) / 20)
        return best

    small, big = per_call(1000), per_call(10_000_000)
    assert big < 20 * small + 1e-3, (small, big)


def test_bad_input_names_the_argument():
    for bad in (0, -3):
        with pytest.raises(ValueError, match="range_max"):
            zn.LearnedUnigramSampler(bad)
    with pytest.raises(TypeError, match="range_max"):
        zn.LearnedUnigramSampler(10.0)
    with pytest.raises(ValueError, match="seed"):
        zn.LearnedUnigramSampler(10, seed=-1)
    with pytest.raises(ValueError, match="range_max"):
        zn.LearnedUnigramSampler(2**62)  # does not fit in memory
    s = zn.LearnedUnigramSampler(10, seed=0)
    with pytest.raises(ValueError, match="true_classes"):
        s.sample(3, true_classes=[[1], [10]])
    with pytest.raises(ValueError, match="true_classes"):
        s.sample(3, true_classes=[[-1]])
    with pytest.raises(ValueError, match="true_classes"):
        s.update([5, 11])
    with pytest.raises(TypeError, match="true_classes"):
        s.update([0.5])
    assert s.total_count == 10, "rejected calls learn nothing"
    with pytest.raises(ValueError, match="num_sampled"):
        s.sample(11, unique=True)
    with pytest.raises(ValueError, match="num_sampled"):
        s.sample(-1)
    with pytest.raises(ValueError, match="ids"):
        s.probability([10])
    with pytest.raises(ValueError, match="ids"):
        s.counts([-1])
    assert s.total_count == 10
