"""Smoke test of an installed zipfnce: call every name in ``zipfnce.__all__`` once with small valid arguments.

Run by .ci/run against the wheel installed in a fresh virtual environment (no Rust toolchain, no source tree
on sys.path). It fails when a call fails, returns something malformed, or when ``__all__`` holds a name that
has no entry in ``SMOKE`` below: a new public name needs a line here (a function taking the module, calling
the name, returning what it got), so that no public name ships untried.

    python .ci/smoke.py               # prints one line per name and "smoke: N names ok"
    python .ci/smoke.py --installed   # also fail unless zipfnce comes from this environment's site-packages
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import zipfnce as zn

B, D, V, S = 4, 8, 50, 6
RNG = np.random.default_rng(0)
W = RNG.standard_normal((V, D)).astype(np.float32)
BIAS = RNG.standard_normal(V).astype(np.float32)
X = RNG.standard_normal((B, D)).astype(np.float32)
LABELS = RNG.integers(0, V, size=(B, 1))
TRUE = LABELS.astype(np.int64)


def _finite(a, shape=None):
    a = np.asarray(a)
    assert np.all(np.isfinite(a)), a
    if shape is not None:
        assert a.shape == shape, (a.shape, shape)
    return a


def _triple(t, s=S):
    ids, tec, sec = t
    assert np.asarray(ids).shape == (s,) and np.asarray(tec).shape == (B, 1) and np.asarray(sec).shape == (s,)
    return t


def _sampler(cls, *args, **kw):
    s = cls(*args, seed=1, **kw)
    c = s.sample(S, true_classes=TRUE)
    assert isinstance(c, zn.CandidateSample) and c.ids.shape == (S,)
    assert np.all((c.ids >= 0) & (c.ids < s.range_max))
    _finite(c.sampled_expected_count, (S,))
    r = s.sample_per_row(TRUE, S, unique=False)
    assert r.ids.shape == (B, S)
    _finite(s.probability(np.arange(5)), (5,))
    _finite(s.expected_count(np.arange(5), S), (5,))
    assert len(s.spawn(2)) == 2
    return c


def _loss(fn, **kw):
    return _finite(fn(W, BIAS, LABELS, X, S, V, seed=3, **kw), (B,))


def _loss_and_grad(fn):
    g = fn(W, BIAS, LABELS, X, S, V, seed=3)
    assert isinstance(g, zn.LossAndGrad) and isinstance(g.grad_weights, zn.SparseGrad)
    _finite(g.loss, (B,))
    _finite(g.grad_inputs, (B, D))
    _finite(g.grad_weights.values, (len(g.grad_weights.indices), D))
    _finite(g.grad_biases.values, (len(g.grad_biases.indices),))
    return g


def _info_nce_grad():
    q, k = X, RNG.standard_normal((B, D)).astype(np.float32)
    g = zn.info_nce_loss_and_grad(q, k, negatives=W[:S])
    assert isinstance(g, zn.InfoNCEGrad)
    _finite(g.loss, (B,))
    _finite(g.grad_query, (B, D))
    return g


def _unigram_file():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vocab.txt")
        with open(path, "w") as f:
            f.write("".join(f"w{i},{i + 1}\n" for i in range(V)))
        return _triple(zn.fixed_unigram_candidate_sampler(TRUE, 1, S, True, V, vocab_file=path, seed=2))


def _threads():
    n = zn.get_num_threads()
    zn.set_num_threads(1)
    _loss(zn.sampled_softmax_loss)
    zn.set_num_threads(n)
    assert zn.get_num_threads() == n
    return n


def _simd():
    level = zn.simd_level()
    assert level in ("avx512", "avx2", "baseline"), level
    return level


def _full_grad():
    g = zn.full_softmax_loss_and_grad(W, BIAS, LABELS[:, 0], X)
    assert isinstance(g, zn.FullSoftmaxGrad)
    _finite(g.loss, (B,))
    _finite(g.grad_weights, (V, D))
    _finite(g.grad_biases, (V,))
    return g


def _frequency():
    f = zn.FrequencyEstimator(1 << 10, seed=0)
    for _ in range(5):
        f.update(TRUE[:, 0])
    p = _finite(f.probability(TRUE[:, 0]), (B,))
    assert np.all((p > 0) & (p <= 1)), p
    return _finite(f.log_q(TRUE[:, 0]), (B,))


def _mixed():
    m = zn.mixed_negatives(zn.LogUniformSampler(V, seed=1), S, TRUE[:, 0], np.full(V, 0.1), seed=2)
    assert isinstance(m, zn.MixedNegatives)
    neg = W[np.asarray(m.negative_ids)]
    return _finite(zn.info_nce_loss(X, W[TRUE[:, 0]], negatives=neg, **m.kwargs()), (B,))


def _learned():
    s = zn.LearnedUnigramSampler(V, seed=1)
    s.sample(S, true_classes=TRUE)
    return _sampler(zn.LearnedUnigramSampler, V)


# name in zipfnce.__all__ -> a call that exercises it (and checks what it returns).
SMOKE = {
    "CandidateSample": lambda: _sampler(zn.UniformSampler, V),
    "LogUniformSampler": lambda: _sampler(zn.LogUniformSampler, V),
    "UniformSampler": lambda: _sampler(zn.UniformSampler, V),
    "UnigramSampler": lambda: _sampler(zn.UnigramSampler, np.arange(1, V + 1, dtype=np.float64)),
    "ZipfSampler": lambda: _sampler(zn.ZipfSampler, V, 1.1),
    "log_uniform_candidate_sampler": lambda: _triple(
        zn.log_uniform_candidate_sampler(TRUE, 1, S, True, V, seed=2)
    ),
    "uniform_candidate_sampler": lambda: _triple(zn.uniform_candidate_sampler(TRUE, 1, S, False, V, seed=2)),
    "fixed_unigram_candidate_sampler": _unigram_file,
    "all_candidate_sampler": lambda: _triple(zn.all_candidate_sampler(TRUE, 1, V, True), V),
    "compute_accidental_hits": lambda: zn.compute_accidental_hits(TRUE, TRUE[:, 0], 1),
    "sampled_softmax_loss": lambda: _loss(zn.sampled_softmax_loss),
    "nce_loss": lambda: _loss(zn.nce_loss),
    "sampled_softmax_loss_and_grad": lambda: _loss_and_grad(zn.sampled_softmax_loss_and_grad),
    "nce_loss_and_grad": lambda: _loss_and_grad(zn.nce_loss_and_grad),
    "LossAndGrad": lambda: _loss_and_grad(zn.sampled_softmax_loss_and_grad),
    "SparseGrad": lambda: _loss_and_grad(zn.nce_loss_and_grad).grad_biases,
    "InfoNCEGrad": _info_nce_grad,
    "info_nce_loss": lambda: _finite(zn.info_nce_loss(X, X[::-1].copy(), symmetric=True), (B,)),
    "info_nce_loss_and_grad": _info_nce_grad,
    "FullSoftmaxGrad": _full_grad,
    "full_softmax_loss": lambda: _finite(zn.full_softmax_loss(W, BIAS, LABELS[:, 0], X), (B,)),
    "full_softmax_loss_and_grad": _full_grad,
    "FrequencyEstimator": _frequency,
    "MixedNegatives": _mixed,
    "mixed_negatives": _mixed,
    "LearnedUnigramSampler": _learned,
    "set_num_threads": _threads,
    "get_num_threads": _threads,
    "simd_level": _simd,
}


def main() -> int:
    print(f"zipfnce {zn.__version__} from {os.path.dirname(zn.__file__)}")
    if "--installed" in sys.argv and not os.path.abspath(zn.__file__).startswith(os.path.abspath(sys.prefix)):
        print(f"zipfnce was imported from {zn.__file__}, not from this environment ({sys.prefix})")
        return 1
    missing = [n for n in zn.__all__ if n not in SMOKE]
    failed = []
    for name in zn.__all__:
        if name in SMOKE:
            try:
                SMOKE[name]()
                print(f"  ok   {name}")
            except Exception as e:  # report every failure, then fail
                failed.append(name)
                print(f"  FAIL {name}: {type(e).__name__}: {e}")
    for name in missing:
        print(f"  MISSING {name}: public, but .ci/smoke.py has no smoke call for it (add one to SMOKE)")
    if failed or missing:
        return 1
    print(f"smoke: {len(zn.__all__)} names ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
