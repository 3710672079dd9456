"""Parity with TensorFlow's candidate samplers (docs/API.md: TensorFlow-style samplers), against the real tensorflow from PyPI.

TensorFlow draws with another generator, so the candidates differ; what must agree is everything that is a
function of the candidates: probabilities and expected counts (with TensorFlow's float32 rules), the
accidental hits, the all-candidate sampler, shapes, dtypes and which arguments are errors.
"""

import numpy as np
import pytest
import zipfnce as zn

tf = pytest.importorskip("tensorflow")


def ulps(a, b):
    a = np.asarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    b = np.asarray(b, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.abs(a - b)


def infer_tries(sampler, ids, ec, num_sampled):
    """num_tries of a TensorFlow unique draw, recovered from its reported expected counts."""
    if np.array_equal(ec, sampler.expected_count(ids, num_sampled)):
        return num_sampled
    p = sampler.probability(ids)
    k = int(np.argmax(p * (ec < 0.999)))  # an id whose count is not saturated
    guess = int(round(np.log1p(-float(ec[k])) / np.log1p(-float(np.float32(p[k])))))
    for t in range(max(num_sampled, guess - 3), guess + 4):
        if ulps(sampler.expected_count(ids, num_sampled, t), ec).max() <= 2:
            return t
    raise AssertionError(f"no num_tries near {guess} reproduces TensorFlow's counts")


@pytest.mark.parametrize("range_max", [10, 1000, 1_000_000, 2**40])
@pytest.mark.parametrize("kind", ["log_uniform", "uniform"])
def test_log_uniform_and_uniform_counts_match_tf(kind, range_max):
    rng = np.random.default_rng(0)
    tc = rng.integers(0, min(range_max, 5000), size=(64, 2)).astype(np.int64)
    tf_fn = getattr(tf.random, f"{kind}_candidate_sampler")
    zn_fn = getattr(zn, f"{kind}_candidate_sampler")
    sampler = zn.UniformSampler(range_max)
    if kind == "log_uniform":  # the drop-in's sampler: TensorFlow's expression for P(k)
        sampler = zn.LogUniformSampler(range_max)
        sampler._s = zn._core.Sampler.log_uniform(range_max, None, True)
    for unique in (False, True):
        for num_sampled in (1, 8, min(range_max, 300)):
            ids, tec, sec = (x.numpy() for x in tf_fn(tc, 2, num_sampled, unique, range_max, seed=3))
            tries = infer_tries(sampler, ids, sec, num_sampled) if unique else num_sampled
            # Our counts for TensorFlow's own candidates and true classes, with its num_tries.
            assert ulps(sampler.expected_count(ids, num_sampled, tries), sec).max() <= 2
            assert ulps(sampler.expected_count(tc, num_sampled, tries), tec).max() <= 2
            if not unique:  # P rounded to float32 times S: exact
                np.testing.assert_array_equal(sampler.expected_count(tc, num_sampled), tec)
            # The drop-in returns the same shapes and dtypes.
            z = zn_fn(tc, 2, num_sampled, unique, range_max, seed=3)
            for mine, theirs in zip(z, (ids, tec, sec)):
                assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
            if unique:
                assert len(set(z[0].tolist())) == num_sampled


@pytest.mark.parametrize(
    "reserved,shards,shard,distortion",
    [
        (0, 1, 0, 1.0),
        (0, 1, 0, 0.75),
        (3, 1, 0, 0.5),
        (0, 3, 1, 0.75),
        (2, 3, 1, 0.75),
        (5, 2, 0, 1.3),
        (4, 4, 3, 0.0),
    ],
)
@pytest.mark.parametrize("source", ["unigrams", "vocab_file"])
def test_fixed_unigram_matches_tf(tmp_path, source, reserved, shards, shard, distortion):
    counts = np.random.default_rng(1).integers(1, 1000, size=40).astype(np.float64)
    kwargs = dict(distortion=distortion, num_reserved_ids=reserved, num_shards=shards, shard=shard)
    if source == "vocab_file":
        f = tmp_path / "vocab.csv"
        f.write_text("".join(f"word{i},{int(c)}\n" for i, c in enumerate(counts)))
        kwargs["vocab_file"] = str(f)
    else:
        kwargs["unigrams"] = counts.tolist()
    # The shard's size, which range_max must equal (TensorFlow's rule, quirks included).
    local = zn.UnigramSampler(counts, num_reserved_ids=reserved, num_shards=shards, shard=shard)
    r = local.range_max
    tc = np.arange(r, dtype=np.int64).reshape(-1, 1)  # every id of the shard
    ids, tec, sec = (
        x.numpy() for x in tf.random.fixed_unigram_candidate_sampler(tc, 1, 7, False, r, seed=2, **kwargs)
    )
    mine = zn.fixed_unigram_candidate_sampler(tc, 1, 7, False, r, seed=2, **kwargs)
    # With replacement the counts are P * 7 in float32, P computed as TensorFlow does: exact equality.
    np.testing.assert_array_equal(mine[1], tec)
    assert mine[0].dtype == ids.dtype and mine[0].shape == ids.shape
    by_id = dict(zip(range(r), tec[:, 0]))
    for k, e in zip(mine[0], mine[2]):
        assert by_id[int(k)] == e and e > 0  # reserved ids (probability 0) are never drawn
    with pytest.raises(ValueError, match="range_max"):
        zn.fixed_unigram_candidate_sampler(tc, 1, 7, False, r + 1, **kwargs)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.random.fixed_unigram_candidate_sampler(tc, 1, 7, False, r + 1, **kwargs)


def test_all_candidate_sampler_matches_tf():
    tc = np.array([[0, 3], [4, 1]], dtype=np.int64)
    theirs = [x.numpy() for x in tf.random.all_candidate_sampler(tc, 2, 5, True)]
    mine = zn.all_candidate_sampler(tc, 2, 5, True)
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="true_classes"):
        zn.all_candidate_sampler([[7]], 1, 5, True)


@pytest.mark.parametrize("seed", range(5))
def test_accidental_hits_match_tf_for_unique_candidates(seed):
    rng = np.random.default_rng(seed)
    num_true = int(rng.integers(1, 4))
    tc = rng.integers(0, 60, size=(50, num_true)).astype(np.int64)
    cands = rng.permutation(60)[:25].astype(np.int64)
    theirs = [x.numpy() for x in tf.nn.compute_accidental_hits(tc, cands, num_true)]
    mine = zn.compute_accidental_hits(tc, cands, num_true)
    assert len(theirs[0]) > 0
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_accidental_hits_with_repeated_candidates_report_every_position():
    tc = np.array([[3, 7], [7, 7]], dtype=np.int64)
    cands = np.array([7, 3, 5, 7, 3, 0], dtype=np.int64)
    rows, pos, w = zn.compute_accidental_hits(tc, cands, 2)
    assert list(zip(rows.tolist(), pos.tolist())) == [
        (0, 1),
        (0, 4),
        (0, 0),
        (0, 3),
        (1, 0),
        (1, 3),
        (1, 0),
        (1, 3),
    ]
    assert np.all(w == np.float32(-np.finfo(np.float32).max))
    # TensorFlow reports only the last position of each repeated candidate: a subset of ours.
    t_rows, t_pos, _ = (x.numpy() for x in tf.nn.compute_accidental_hits(tc, cands, 2))
    assert set(zip(t_rows.tolist(), t_pos.tolist())) <= set(zip(rows.tolist(), pos.tolist()))


def test_errors_where_tf_errors():
    tc = np.array([[1], [2]], dtype=np.int64)
    cases = [
        dict(true_classes=tc, num_true=1, num_sampled=11, unique=True, range_max=10),  # unique, too many
        dict(true_classes=tc, num_true=2, num_sampled=3, unique=True, range_max=10),  # num_true mismatch
        dict(true_classes=[[10]], num_true=1, num_sampled=3, unique=True, range_max=10),  # id out of range
    ]
    for kw in cases:
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
            tf.random.log_uniform_candidate_sampler(**kw)
        with pytest.raises(ValueError):
            zn.log_uniform_candidate_sampler(**kw)
    # Without unique, more candidates than classes is fine for both.
    tf.random.log_uniform_candidate_sampler(tc, 1, 11, False, 10)
    assert zn.log_uniform_candidate_sampler(tc, 1, 11, False, 10)[0].shape == (11,)
