"""examples/skipgram.py: its core functions on a small slice of the corpus (a few seconds).

The corpus ships with gensim, so gensim is needed (and skipped without it); gensim's Word2Vec itself is not
run here.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

pytest.importorskip("gensim")

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "skipgram.py"


@pytest.fixture(scope="module")
def sg():
    spec = importlib.util.spec_from_file_location("skipgram_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def corpus(sg):
    return sg.load_corpus(sg.corpus_path("lee_background.cor"), min_count=3, max_sentences=150, seed=1)


def test_corpus_and_pairs(sg, corpus):
    V = len(corpus.vocab)
    assert V > 100 and len(corpus.counts) == V and np.all(np.diff(corpus.counts) <= 0)
    assert corpus.counts.min() >= 3
    assert 10 <= len(corpus.test) <= 20
    pairs = sg.window_pairs([np.array([0, 1, -1, 2]), np.array([3, 4])], 2)
    got = sorted(map(tuple, pairs.tolist()))
    assert got == sorted([(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3)])  # -1 keeps its slot, no pairs
    every = sg.heldout_pairs(corpus, 3)
    some = sg.heldout_pairs(corpus, 3, max_pairs=100)
    assert len(some) == 100 and set(map(tuple, some.tolist())) <= set(map(tuple, every.tolist()))
    assert np.all(every >= 0) and np.all(every < V)


def test_heldout_ce_matches_direct_softmax(sg):
    rng = np.random.default_rng(0)
    U, W, b = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)), rng.normal(size=7)
    pairs = rng.integers(0, 7, size=(20, 2))
    z = U[pairs[:, 0]] @ W.T + b
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    want = -np.log(p[np.arange(20), pairs[:, 1]]).mean()
    assert sg.heldout_ce(U, W, b, pairs, chunk=6) == pytest.approx(want, rel=1e-12)
    assert sg.heldout_ce(np.zeros((7, 3)), W, None, pairs) == pytest.approx(np.log(7))


@pytest.mark.parametrize("loss", ["nce", "softmax"])
def test_zipfnce_training_learns(sg, corpus, loss):
    quiet = dict(log=lambda s: None)
    res = sg.train_sampled(corpus, loss, dim=16, window=3, epochs=1, negatives=5, batch=512, **quiet)
    uniform = np.log(len(corpus.vocab))
    untrained, trained = res.curve
    assert untrained == pytest.approx(uniform, abs=1e-3)  # W = 0, b = 0: every word equally likely
    assert trained < uniform - 0.3
    assert res.words_per_s > 0 and res.train_seconds > 0


def test_full_softmax_baseline_learns(sg, corpus):
    small = corpus._replace(train=corpus.train[:30])  # the dense O(V) softmax is slow: a shorter epoch
    res = sg.train_full_softmax(small, dim=16, window=3, epochs=1, batch=512, log=lambda s: None)
    assert res.curve[1] < res.curve[0] - 0.3
