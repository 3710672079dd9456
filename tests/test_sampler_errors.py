"""Every bad argument of docs/API.md: Samplers, TensorFlow-style samplers raises ValueError or TypeError naming the argument."""

import numpy as np
import pytest
import zipfnce as zn

BAD_CONSTRUCTORS = [
    (lambda: zn.LogUniformSampler(0), ValueError, "range_max"),
    (lambda: zn.LogUniformSampler(-3), ValueError, "range_max"),
    (lambda: zn.LogUniformSampler(2**62 + 1), ValueError, "range_max"),
    (lambda: zn.LogUniformSampler(2**70), ValueError, "range_max"),
    (lambda: zn.LogUniformSampler(10.0), TypeError, "range_max"),
    (lambda: zn.LogUniformSampler(float("nan")), TypeError, "range_max"),
    (lambda: zn.LogUniformSampler(True), TypeError, "range_max"),
    (lambda: zn.UniformSampler(0), ValueError, "range_max"),
    (lambda: zn.UniformSampler("10"), TypeError, "range_max"),
    (lambda: zn.ZipfSampler(10, 0.0), ValueError, "exponent"),
    (lambda: zn.ZipfSampler(10, -1.0), ValueError, "exponent"),
    (lambda: zn.ZipfSampler(10, float("nan")), ValueError, "exponent"),
    (lambda: zn.ZipfSampler(10, float("inf")), ValueError, "exponent"),
    (lambda: zn.ZipfSampler(0, 1.0), ValueError, "range_max"),
    (lambda: zn.UnigramSampler([]), ValueError, "unigrams"),
    (lambda: zn.UnigramSampler([1.0, -1.0]), ValueError, "unigrams"),
    (lambda: zn.UnigramSampler([1.0, float("nan")]), ValueError, "unigrams"),
    (lambda: zn.UnigramSampler([1.0, float("inf")]), ValueError, "unigrams"),
    (lambda: zn.UnigramSampler([0.0, 0.0]), ValueError, "unigrams"),
    (lambda: zn.UnigramSampler(["a", "b"]), TypeError, "unigrams"),
    (lambda: zn.UnigramSampler([True, False]), TypeError, "unigrams"),
    (lambda: zn.UnigramSampler([[1.0, 2.0]]), ValueError, "unigrams"),
    (lambda: zn.UnigramSampler(), ValueError, "unigrams"),
    (lambda: zn.UnigramSampler([1.0], vocab_file="x"), ValueError, "unigrams"),
    (lambda: zn.UnigramSampler([1.0], distortion=float("nan")), ValueError, "distortion"),
    (lambda: zn.UnigramSampler([1.0], num_reserved_ids=-1), ValueError, "num_reserved_ids"),
    (lambda: zn.UnigramSampler([1.0], num_shards=0), ValueError, "num_shards"),
    (lambda: zn.UnigramSampler([1.0], num_shards=2, shard=2), ValueError, "shard"),
    (lambda: zn.UnigramSampler([1.0], num_shards=2, shard=-1), ValueError, "shard"),
    (lambda: zn.UnigramSampler(vocab_file=3), TypeError, "vocab_file"),
    (lambda: zn.UnigramSampler([0.0, 5.0], distortion=-1.0), ValueError, "unigrams"),
]


@pytest.mark.parametrize("make,exc,name", BAD_CONSTRUCTORS, ids=range(len(BAD_CONSTRUCTORS)))
def test_bad_constructor_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


def test_bad_vocab_files(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("a,1\nb,x\n")
    with pytest.raises(ValueError, match="vocab_file"):
        zn.UnigramSampler(vocab_file=f)
    f.write_text("a,1\n \n")
    with pytest.raises(ValueError, match="vocab_file"):
        zn.UnigramSampler(vocab_file=f)
    f.write_text("")
    with pytest.raises(ValueError, match="vocab_file"):
        zn.UnigramSampler(vocab_file=f)
    with pytest.raises(FileNotFoundError):
        zn.UnigramSampler(vocab_file=tmp_path / "missing.txt")


s = zn.LogUniformSampler(100, seed=0)
BAD_CALLS = [
    (lambda: s.probability([100]), ValueError, "ids"),
    (lambda: s.probability([-1]), ValueError, "ids"),
    (lambda: s.probability([1.5]), TypeError, "ids"),
    (lambda: s.probability([np.nan]), TypeError, "ids"),
    (lambda: s.probability(np.array([2**63], dtype=np.uint64)), ValueError, "ids"),
    (lambda: s.probability(["a"]), TypeError, "ids"),
    (lambda: s.sample(-1), ValueError, "num_sampled"),
    (lambda: s.sample(101), ValueError, "num_sampled"),
    (lambda: s.sample(2.0), TypeError, "num_sampled"),
    (lambda: s.sample(2**40), ValueError, "num_sampled"),
    (lambda: s.sample(5, true_classes=[[100]]), ValueError, "true_classes"),
    (lambda: s.sample(5, true_classes=[[-1]]), ValueError, "true_classes"),
    (lambda: s.sample(5, true_classes=[[1.0]]), TypeError, "true_classes"),
    (lambda: s.sample(5, true_classes=np.zeros((2, 2, 2), dtype=np.int64)), ValueError, "true_classes"),
    (lambda: s.sample(5, true_classes=np.zeros((2, 0), dtype=np.int64)), ValueError, "true_classes"),
    (lambda: s.sample(5, remove_true=True), ValueError, "remove_true"),
    (lambda: s.sample(98, true_classes=[[0], [1], [2]], remove_true=True), ValueError, "num_sampled"),
    (lambda: s.sample(5, unique="yes"), TypeError, "unique"),
    (lambda: s.sample(5, seed=1.5), TypeError, "seed"),
    (lambda: s.sample_per_row([[0], [1]], 100, remove_true=True), ValueError, "num_sampled"),
    (lambda: s.sample_per_row([[0], [100]], 3), ValueError, "true_classes"),
    (lambda: s.sample_per_row([[0.5]], 3), TypeError, "true_classes"),
    (lambda: s.sample_per_row(np.zeros((2, 2, 2), dtype=np.int64), 3), ValueError, "true_classes"),
    (lambda: s.expected_count([1], 5, 4), ValueError, "num_tries"),
    (lambda: zn.UnigramSampler([1.0, 0.0, 2.0]).sample(3), ValueError, "num_sampled"),
    (
        lambda: zn.UnigramSampler([1.0, 0.0]).sample(1, unique=False, true_classes=[[0]], remove_true=True),
        ValueError,
        "num_sampled",
    ),
]


@pytest.mark.parametrize("call,exc,name", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_bad_call_arguments(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


tc = np.array([[1], [2]], dtype=np.int64)
BAD_DROPINS = [
    (lambda: zn.log_uniform_candidate_sampler(tc, 2, 5, True, 100), ValueError, "true_classes"),
    (lambda: zn.log_uniform_candidate_sampler(tc, 0, 5, True, 100), ValueError, "num_true"),
    (lambda: zn.log_uniform_candidate_sampler(tc, 1, 0, True, 100), ValueError, "num_sampled"),
    (lambda: zn.log_uniform_candidate_sampler(tc, 1, 101, True, 100), ValueError, "num_sampled"),
    (lambda: zn.log_uniform_candidate_sampler(tc, 1, 5, True, 0), ValueError, "range_max"),
    (
        lambda: zn.log_uniform_candidate_sampler(tc.astype(np.float32), 1, 5, True, 100),
        TypeError,
        "true_classes",
    ),
    (lambda: zn.uniform_candidate_sampler([[100]], 1, 5, True, 100), ValueError, "true_classes"),
    (lambda: zn.fixed_unigram_candidate_sampler(tc, 1, 2, True, 3), ValueError, "unigrams"),
    (
        lambda: zn.fixed_unigram_candidate_sampler(tc, 1, 2, True, 4, unigrams=[1, 2, 3]),
        ValueError,
        "range_max",
    ),
    (
        lambda: zn.fixed_unigram_candidate_sampler(tc, 1, 2, True, 3, unigrams=[1, 2, -3]),
        ValueError,
        "unigrams",
    ),
    (lambda: zn.all_candidate_sampler(tc, 1, 2, True), ValueError, "true_classes"),
    (lambda: zn.compute_accidental_hits(tc, [[1, 2]], 1), ValueError, "sampled_candidates"),
    (lambda: zn.compute_accidental_hits(tc, [1.5], 1), TypeError, "sampled_candidates"),
    (lambda: zn.compute_accidental_hits(tc, [1], 2), ValueError, "true_classes"),
]


@pytest.mark.parametrize("call,exc,name", BAD_DROPINS, ids=range(len(BAD_DROPINS)))
def test_bad_dropin_arguments(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


def test_empty_inputs_are_fine():
    assert s.probability(np.zeros((0, 3), dtype=np.int64)).shape == (0, 3)
    r = s.sample(3, true_classes=np.zeros((0, 1), dtype=np.int64))
    assert r.true_expected_count.shape == (0, 1)
    h = zn.compute_accidental_hits(np.zeros((0, 1), dtype=np.int64), [1, 2], 1)
    assert all(len(x) == 0 for x in h)


def test_non_contiguous_and_other_integer_inputs():
    base = np.arange(40, dtype=np.int64).reshape(10, 4)
    view = base[::2, 1:2]  # non-contiguous [5, 1]
    r1 = s.sample(5, true_classes=view, seed=1)
    r2 = s.sample(5, true_classes=np.ascontiguousarray(view), seed=1)
    np.testing.assert_array_equal(r1.true_expected_count, r2.true_expected_count)
    r3 = s.sample(5, true_classes=view.astype(np.int32), seed=1)
    r4 = s.sample(5, true_classes=view.astype(">i8"), seed=1)
    np.testing.assert_array_equal(r1.true_expected_count, r3.true_expected_count)
    np.testing.assert_array_equal(r1.true_expected_count, r4.true_expected_count)
    np.testing.assert_array_equal(s.probability(view.tolist()), s.probability(view))
