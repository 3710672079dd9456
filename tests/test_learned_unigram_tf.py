"""zn.LearnedUnigramSampler against the real tf.random.learned_unigram_candidate_sampler (TensorFlow only in
this process).

TensorFlow draws with its own generator, so the candidates differ; what must agree is how the counts
evolve over a sequence of calls, seen through the expected counts each call reports: for TensorFlow's
true classes and for TensorFlow's own sampled candidates, evaluated with zipfnce's counts of before the
call. With unique=False they must agree exactly; with unique=True TensorFlow's num_tries (random) is
recovered from its output and its float32 formula is matched to 2 ulps (1 seen).
"""

from __future__ import annotations

import numpy as np
import pytest
import zipfnce as zn

tf = pytest.importorskip("tensorflow")


def ulps(a, b):
    a = np.asarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    b = np.asarray(b, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.abs(a - b)


def tf_sampler(num_true, num_sampled, unique, range_max, seed):
    """One TensorFlow op instance, called repeatedly: its kernel, and so its counts, persist across calls."""

    @tf.function
    def call(tc):
        return tf.random.learned_unigram_candidate_sampler(
            tc, num_true, num_sampled, unique, range_max, seed=seed
        )

    return call


def recover_tries(zs, ids, ec, num_sampled):
    """TensorFlow's num_tries for one unique call, from the expected counts it reported (ids with P far
    from 0 and 1 pin it down)."""
    p = np.float32(zs.probability(ids)).astype(np.float64)
    ec = np.asarray(ec, np.float64)
    k = int(np.argmax(np.where(ec < 0.99, p, 0)))
    guess = int(round(np.log1p(-ec[k]) / np.log1p(-p[k])))
    # No draw rejected: TensorFlow reports P * num_sampled.
    for t in [num_sampled, *range(max(num_sampled + 1, guess - 3), guess + 4)]:
        if ulps(zs.expected_count(ids, num_sampled, t), ec).max() <= 2:
            return t
    raise AssertionError(f"no num_tries near {guess} reproduces TensorFlow's counts")


@pytest.mark.parametrize(
    "range_max,num_true,batch,num_sampled", [(20, 1, 8, 6), (500, 2, 32, 40), (10**6, 3, 64, 100)]
)
def test_counts_evolve_as_tensorflows_without_unique(range_max, num_true, batch, num_sampled):
    rng = np.random.default_rng(range_max)
    call = tf_sampler(num_true, num_sampled, False, range_max, seed=4)
    zs = zn.LearnedUnigramSampler(range_max, seed=1)
    hot = min(range_max, 30)  # true classes from a small head, so the counts move far from uniform
    for step in range(40):
        tc = rng.integers(0, hot, size=(batch, num_true)).astype(np.int64)
        r = call(tf.constant(tc))
        tf_ids = r.sampled_candidates.numpy()
        # TensorFlow's candidates under zipfnce's counts of before this call.
        want_sampled = zs.expected_count(tf_ids, num_sampled)
        ours = zs.sample(num_sampled, unique=False, true_classes=tc)
        np.testing.assert_array_equal(
            ours.true_expected_count, r.true_expected_count.numpy(), err_msg=f"step {step}"
        )
        np.testing.assert_array_equal(want_sampled, r.sampled_expected_count.numpy(), err_msg=f"step {step}")
    assert zs.total_count == range_max + 40 * batch * num_true


@pytest.mark.parametrize("range_max,num_sampled", [(40, 20), (3000, 64)])
def test_counts_evolve_as_tensorflows_with_unique(range_max, num_sampled):
    rng = np.random.default_rng(7)
    call = tf_sampler(2, num_sampled, True, range_max, seed=5)
    zs = zn.LearnedUnigramSampler(range_max, seed=1)
    for step in range(30):
        tc = rng.integers(0, min(range_max, 25), size=(16, 2)).astype(np.int64)
        r = call(tf.constant(tc))
        tf_ids = r.sampled_candidates.numpy()
        assert len(set(tf_ids.tolist())) == num_sampled
        both_ids = np.concatenate([tc.ravel(), tf_ids])
        both_ec = np.concatenate([r.true_expected_count.numpy().ravel(), r.sampled_expected_count.numpy()])
        tries = recover_tries(zs, both_ids, both_ec, num_sampled)
        assert ulps(zs.expected_count(both_ids, num_sampled, tries), both_ec).max() <= 2, f"step {step}"
        zs.sample(num_sampled, unique=True, true_classes=tc)  # learns the same true classes


def test_probability_is_tensorflows_count_ratio():
    # A documented case by hand: 10 classes, true classes [1, 1, 2] -> counts 3, 2 and 1 (x8) of 13.
    call = tf_sampler(1, 4, False, 10, seed=2)
    zs = zn.LearnedUnigramSampler(10)
    tc = np.array([[1], [1], [2]])
    call(tf.constant(tc))
    zs.sample(4, unique=False, true_classes=tc)
    r = call(tf.constant(tc))
    np.testing.assert_array_equal(
        r.true_expected_count.numpy().ravel(), (zs.probability([1, 1, 2]).astype(np.float32) * np.float32(4))
    )
