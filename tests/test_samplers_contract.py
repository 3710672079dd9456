"""The sampler contract of docs/API.md: Samplers: shapes, dtypes, seeds, threads, probabilities."""

import numpy as np
import pytest
import zipfnce as zn

SAMPLERS = [
    lambda seed=None: zn.LogUniformSampler(10_000, seed=seed),
    lambda seed=None: zn.UniformSampler(10_000, seed=seed),
    lambda seed=None: zn.UnigramSampler(np.arange(1, 10_001) ** -0.9, seed=seed),
    lambda seed=None: zn.ZipfSampler(10_000, 1.1, seed=seed),
]
IDS = ["log_uniform", "uniform", "unigram", "zipf"]


@pytest.fixture(params=SAMPLERS, ids=IDS)
def make(request):
    return request.param


def test_probability_shape_dtype_and_normalisation(make):
    s = make(1)
    assert s.range_max == 10_000
    p = s.probability(np.arange(10_000).reshape(100, 100))
    assert p.dtype == np.float64 and p.shape == (100, 100)
    assert abs(p.sum() - 1.0) < 1e-12
    assert s.probability([]).shape == (0,)


def test_probability_formulas():
    k = np.arange(1000)
    np.testing.assert_allclose(
        zn.LogUniformSampler(1000).probability(k), np.log1p(1 / (k + 1)) / np.log(1001), rtol=1e-14
    )
    np.testing.assert_allclose(zn.UniformSampler(1000).probability(k), 1 / 1000, rtol=1e-15)
    w = np.random.default_rng(0).random(1000)
    np.testing.assert_allclose(
        zn.UnigramSampler(w, distortion=0.75).probability(k), w**0.75 / (w**0.75).sum(), rtol=1e-12
    )
    zipf = (k + 1.0) ** -1.3
    np.testing.assert_allclose(zn.ZipfSampler(1000, 1.3).probability(k), zipf / zipf.sum(), rtol=1e-12)


def test_shared_sample_shapes(make):
    s = make(3)
    tc = np.array([[1, 2], [3, 4], [5, 6]])
    r = s.sample(64, true_classes=tc)
    assert isinstance(r, zn.CandidateSample)
    assert r.ids.dtype == np.int64 and r.ids.shape == (64,)
    assert r.true_expected_count.dtype == np.float32 and r.true_expected_count.shape == (3, 2)
    assert r.sampled_expected_count.dtype == np.float32 and r.sampled_expected_count.shape == (64,)
    assert isinstance(r.num_tries, int) and r.num_tries >= 64
    assert len(set(r.ids.tolist())) == 64
    ids, tec, sec, tries = r  # a tuple, in TensorFlow's order first
    assert ids is r.ids
    r = s.sample(10, unique=False)
    assert r.true_expected_count is None and r.num_tries == 10
    r = s.sample(5, true_classes=[7, 8])  # [B] means num_true = 1
    assert r.true_expected_count.shape == (2, 1)
    assert s.sample(0).ids.shape == (0,)


def test_per_row_sample_shapes(make):
    s = make(4)
    tc = np.arange(12).reshape(6, 2)
    r = s.sample_per_row(tc, 16, remove_true=True)
    assert r.ids.shape == (6, 16) and r.ids.dtype == np.int64
    assert r.sampled_expected_count.shape == (6, 16) and r.sampled_expected_count.dtype == np.float32
    assert r.true_expected_count.shape == (6, 2)
    assert r.num_tries.shape == (6,) and r.num_tries.dtype == np.int64
    for row, truth in zip(r.ids, tc):
        assert len(set(row.tolist())) == 16
        assert not set(row.tolist()) & set(truth.tolist())
    r = s.sample_per_row(np.zeros((0, 1), dtype=np.int64), 8)
    assert r.ids.shape == (0, 8)


def test_seeded_streams_and_stateless_calls(make):
    a, b = make(11), make(11)
    first = [a.sample(32).ids for _ in range(3)]
    second = [b.sample(32).ids for _ in range(3)]
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], first[1])  # the stream advances
    # A call with seed= depends only on the sampler, the seed and the arguments.
    c = make(999)
    np.testing.assert_array_equal(a.sample(32, seed=5).ids, c.sample(32, seed=5).ids)
    np.testing.assert_array_equal(a.sample(32, seed=5).ids, a.sample(32, seed=5).ids)
    # ... and does not move the sampler's own stream.
    d = make(11)
    d.sample(32, seed=123)
    np.testing.assert_array_equal(d.sample(32).ids, first[0])
    # Unseeded samplers differ from each other.
    assert not np.array_equal(make().sample(32).ids, make().sample(32).ids)


def test_results_do_not_depend_on_threads(make):
    s = make(1)
    tc = np.random.default_rng(0).integers(0, 10_000, size=(2000, 1))
    out = {}
    before = zn.get_num_threads()
    try:
        for n in (1, 2, 4):
            zn.set_num_threads(n)
            assert zn.get_num_threads() == n
            shared = s.sample(9000, true_classes=tc, seed=3)
            plain = s.sample(50_000, unique=False, true_classes=tc, seed=3)
            rows = s.sample_per_row(tc, 32, seed=3)
            out[n] = (shared, plain, rows)
    finally:
        zn.set_num_threads(before)
    for n in (2, 4):
        for x, y in zip(out[1], out[n]):
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)


def test_expected_count_rules():
    s = zn.LogUniformSampler(1000)
    p = s.probability([0, 5, 100]).astype(np.float32)
    np.testing.assert_array_equal(s.expected_count([0, 5, 100], 8), p * np.float32(8))
    e = s.expected_count([0, 5, 100], 64, 95)
    want = -np.expm1(95 * np.log1p(-p.astype(np.float64)))
    np.testing.assert_allclose(e, want, rtol=3e-7)
    r = s.sample(64, true_classes=[[0], [5]], seed=1)
    np.testing.assert_array_equal(r.sampled_expected_count, s.expected_count(r.ids, 64, r.num_tries))
    np.testing.assert_array_equal(r.true_expected_count[:, 0], s.expected_count([0, 5], 64, r.num_tries))


def test_remove_true_renormalises_sampled_counts():
    s = zn.LogUniformSampler(100)
    tc = np.array([[0], [1], [2]])
    r = s.sample(30, unique=False, true_classes=tc, remove_true=True, seed=2)
    assert not set(r.ids.tolist()) & {0, 1, 2}
    rest = 1 - s.probability([0, 1, 2]).sum()
    want = (s.probability(r.ids) / rest).astype(np.float32) * np.float32(30)
    np.testing.assert_array_equal(r.sampled_expected_count, want)
    np.testing.assert_array_equal(r.true_expected_count[:, 0], s.expected_count([0, 1, 2], 30))


def test_huge_ranges():
    for s in (zn.LogUniformSampler(2**62), zn.UniformSampler(2**62), zn.ZipfSampler(2**62, 0.5)):
        r = s.sample(1000, unique=False, seed=1)
        assert r.ids.min() >= 0 and r.ids.max() < 2**62
        r = s.sample(1000, true_classes=[[2**62 - 1]], seed=1)
        assert np.all(r.true_expected_count > 0)
        assert s.probability([2**62 - 1])[0] > 0


def test_unigram_vocab_file_and_reserved_ids(tmp_path):
    f = tmp_path / "vocab.txt"
    f.write_text("the,10\nof,5\n\nzebra,1\n")
    s = zn.UnigramSampler(vocab_file=f, num_reserved_ids=2)
    assert s.range_max == 5
    np.testing.assert_allclose(s.probability(np.arange(5)), [0, 0, 10 / 16, 5 / 16, 1 / 16])
    r = s.sample(3, seed=0)
    assert sorted(r.ids.tolist()) == [2, 3, 4]
    s2 = zn.UnigramSampler([10, 5, 1], num_reserved_ids=2)
    np.testing.assert_array_equal(s.probability(np.arange(5)), s2.probability(np.arange(5)))


def test_threads_setting_validation():
    with pytest.raises(ValueError, match="n"):
        zn.set_num_threads(0)
    with pytest.raises(TypeError, match="n"):
        zn.set_num_threads(1.5)


def test_import_does_not_pull_frameworks():
    import subprocess
    import sys

    code = "import sys, zipfnce; print([m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_thread_count_from_environment():
    import os
    import subprocess
    import sys

    env = dict(os.environ, ZIPFNCE_NUM_THREADS="3")
    code = "import zipfnce; print(zipfnce.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.strip() == "3"


def test_sampling_releases_the_gil():
    """While one thread samples, another Python thread keeps running."""
    import threading
    import time

    s = zn.LogUniformSampler(10**6, seed=0)
    done = threading.Event()
    ticks = []

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    t = threading.Thread(target=count)
    t.start()
    try:
        time.sleep(0.01)
        start = time.perf_counter()
        s.sample(10_000_000, unique=False)  # one call of tens of milliseconds
        end = time.perf_counter()
    finally:
        done.set()
        t.join()
    during = [start] + [x for x in ticks if start < x < end] + [end]
    # Had the call held the GIL, the counter would have stalled for its whole duration.
    assert len(during) > 10 and np.diff(during).max() < (end - start) / 2
