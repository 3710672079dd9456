"""Mixed negative sampling (zn.mixed_negatives): the mixture correction's expected gradient approaches the full
softmax over the corpus, by Monte Carlo with fixed seeds and a statistical criterion; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import zipfnce as zn

V, D, B, T = 400, 8, 32, 1.0


def _world(seed: int = 1):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(V, D)) * 0.5
    p = 1.0 / np.arange(1, V + 1) ** 1.1
    p /= p.sum()
    q0 = rng.normal(size=D)
    t0 = 3
    z = emb @ q0 / T
    pf = np.exp(z - z.max())
    pf /= pf.sum()
    g_full = (emb.T @ pf - emb[t0]) / T  # d/dq of the full softmax cross-entropy over the corpus
    return rng, emb, p, q0, t0, g_full


def _grads(num_sampled: int, trials: int, corrections):
    """Per trial, d loss_0 / d q_0 for each correction, on the same batch and the same sampled ids."""
    rng, emb, p, q0, t0, g_full = _world()
    pb = 1.0 - (1.0 - p) ** (B - 1)  # P(item among the other B - 1 keys)
    sampler = zn.UniformSampler(V, seed=5)
    out = {c: np.empty((trials, D)) for c in corrections}
    w = np.r_[1.0, np.zeros(B - 1)]
    for k in range(trials):
        kid = np.r_[t0, rng.choice(V, size=B - 1, p=p)]
        query = np.vstack([q0, rng.normal(size=(B - 1, D))])
        for c in corrections:
            m = zn.mixed_negatives(sampler, num_sampled, kid, pb, correction=c, seed=1000 + k)
            g = zn.info_nce_loss_and_grad(
                query, emb[kid], negatives=emb[m.negative_ids], temperature=T, grad_loss=w, **m.kwargs()
            )
            out[c][k] = g.grad_query[0]
    return out, g_full


def _bias2(g: np.ndarray, g_full: np.ndarray) -> float:
    """Unbiased estimate of |E g - g_full|^2 (the squared norm of the mean, less its noise)."""
    n = g.shape[0]
    return float(((g.mean(0) - g_full) ** 2).sum() - g.var(0, ddof=1).sum() / n)


def _p_better(worse: np.ndarray, better: np.ndarray, g_full: np.ndarray) -> float:
    """One-sided p-value that ``better``'s bias is smaller than ``worse``'s along ``worse``'s bias direction.

    The direction u comes from the first half of the trials; on the second half, with a = (worse - g_full).u
    and c = (better - g_full).u per trial, both a - c > 0 and a + c > 0 (i.e. |E c| < E a) are z-tested,
    paired; the larger p-value is returned."""
    h = worse.shape[0] // 2
    u = worse[:h].mean(0) - g_full
    u /= np.linalg.norm(u)
    a = (worse[h:] - g_full) @ u
    c = (better[h:] - g_full) @ u
    ps = []
    for diff in (a - c, a + c):
        z = diff.mean() / (diff.std(ddof=1) / math.sqrt(diff.size))
        ps.append(0.5 * math.erfc(z / math.sqrt(2)))
    return max(ps)


def test_mixture_correction_approaches_the_full_softmax_gradient_better_than_none():
    out, g_full = _grads(32, 3000, ("mixture", "none"))
    p_value = _p_better(out["none"], out["mixture"], g_full)
    assert p_value < 1e-6, p_value
    # And over the whole gradient: the squared bias at most half of the uncorrected one.
    b_mix, b_none = _bias2(out["mixture"], g_full), _bias2(out["none"], g_full)
    assert b_mix < 0.5 * b_none, (b_mix, b_none)


def test_with_many_samples_the_mixture_beats_the_per_source_correction():
    # per_source estimates the partition function about twice over: a bias that does not shrink with S.
    out, g_full = _grads(1000, 1200, ("mixture", "per_source"))
    p_value = _p_better(out["per_source"], out["mixture"], g_full)
    assert p_value < 1e-6, p_value


def test_corrections_are_the_documented_formulas():
    sampler = zn.UniformSampler(50, seed=3)
    kid = np.array([1, 2, 2, 7])
    pb = np.linspace(0.5, 0.001, 50)
    m = zn.mixed_negatives(sampler, 6, kid, pb, seed=9)
    cs = sampler.sample(6, unique=False, true_classes=kid, seed=9)
    np.testing.assert_array_equal(m.negative_ids, cs.ids)
    eb = -np.log1p(-pb)
    want_k = np.log(eb[kid] + cs.true_expected_count[:, 0].astype(np.float64))
    want_n = np.log(eb[cs.ids] + cs.sampled_expected_count.astype(np.float64))
    np.testing.assert_allclose(m.key_log_q, want_k, rtol=1e-12)
    np.testing.assert_allclose(m.negative_log_q, want_n, rtol=1e-12)
    ps = zn.mixed_negatives(sampler, 6, kid, lambda ids: pb[ids], correction="per_source", seed=9)
    np.testing.assert_allclose(ps.key_log_q, np.log(eb[kid]), rtol=1e-12)
    np.testing.assert_allclose(ps.negative_log_q, np.log(cs.sampled_expected_count.astype(np.float64)))
    none = zn.mixed_negatives(sampler, 6, kid, pb, correction="none", seed=9)
    assert none.key_log_q is None and none.negative_log_q is None
    kw = m.kwargs()
    assert set(kw) == {"key_ids", "negative_ids", "key_log_q", "negative_log_q"}


def test_an_object_with_probability_is_accepted():
    class Freq:
        def probability(self, ids):
            return np.full(np.shape(ids), 0.01)

    m = zn.mixed_negatives(zn.LogUniformSampler(100, seed=1), 4, [0, 5], Freq(), seed=2)
    assert m.key_log_q.shape == (2,) and np.all(np.isfinite(m.negative_log_q))


@pytest.mark.parametrize(
    "kwargs, exc, arg",
    [
        ({"num_sampled": 0}, ValueError, "num_sampled"),
        ({"key_ids": [0, 100]}, ValueError, "key_ids"),
        ({"key_ids": [[0, 1]]}, ValueError, "key_ids"),
        ({"batch_probability": np.array([np.nan] * 100)}, ValueError, "batch_probability"),
        ({"batch_probability": np.full(100, 1.5)}, ValueError, "batch_probability"),
        ({"batch_probability": np.full(10, 0.1)}, ValueError, "batch_probability"),
        ({"batch_probability": "x"}, TypeError, "batch_probability"),
        ({"correction": "both"}, ValueError, "correction"),
        ({"sampler": object()}, TypeError, "sampler"),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, arg):
    call = {
        "sampler": zn.UniformSampler(100, seed=1),
        "num_sampled": 4,
        "key_ids": [0, 1, 2],
        "batch_probability": np.full(100, 0.01),
    }
    call.update(kwargs)
    with pytest.raises(exc, match=arg):
        zn.mixed_negatives(**call)
