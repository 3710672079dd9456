"""Skip-gram (word2vec) trained with zipfnce's sampled losses, against the exact softmax and gensim: which
reaches a given held-out cross-entropy sooner, in wall-clock seconds?

Run it::

    python examples/skipgram.py                 # the full comparison (a few minutes on 2 cores)
    python examples/skipgram.py --quick         # a smaller run (< 2 minutes)
    python examples/skipgram.py --epochs 5 --dim 64 --threads 2 --out examples/
    python examples/skipgram.py --corpus head500.noblanks.cor --min-count 5 --no-full --max-eval-pairs 50000

The corpus ships with gensim (``gensim/test/test_data/lee_background.cor``, news text; ``--corpus`` picks
another file there, e.g. ``head500.noblanks.cor``, 6x larger: there the dense full softmax takes ~10 minutes
an epoch on 2 cores with dense NumPy, a few seconds with ``zn.full_softmax_loss_and_grad``). Sentences are tokenised with
``gensim.utils.simple_preprocess``; words seen fewer than ``--min-count`` times in the training sentences
are dropped; a fraction ``--holdout`` of the sentences is kept aside for evaluation.

The model. Word ids ``0..V-1``; an input table ``U [V, d]`` (the center word's vector), an output table
``W [V, d]`` and an output bias ``b [V]``. For a (center c, context o) pair the logits over the vocabulary
are ``z_w = U_c . W_w + b_w`` and the model's probability of the context is the full softmax

    p(o | c) = exp(z_o) / sum_w exp(z_w).

Training pairs are every (c, o) with ``0 < |pos(o) - pos(c)| <= window`` in one sentence (a fixed window,
also for gensim: ``shrink_windows=False``). Methods compared, all on the same pairs, dimension and threads:

- ``zipfnce NCE``: ``zn.nce_loss_and_grad`` with ``k`` negatives per pair drawn by
  ``zn.UnigramSampler(counts, distortion=0.75).sample_per_row`` (unigram^0.75 noise, as word2vec). With
  ``s_j = z_j - log(E_j)`` (``E_j`` the expected count of class j in the draw) the pair's loss is
  ``-log sigmoid(s_o) - sum_{n in negatives} log(1 - sigmoid(s_n))``; at its optimum ``z`` is the
  self-normalised log-probability ``log p(o | c)``.
- ``zipfnce sampled softmax``: ``zn.sampled_softmax_loss_and_grad`` with the same negatives: softmax
  cross-entropy over ``{o} + negatives`` of ``s_j``, accidental hits removed; its logits estimate the full
  softmax's (Jean et al. 2015).
- ``zipfnce exact softmax``: the exact cross-entropy ``-log p(o | c)`` and its dense gradients from
  ``zn.full_softmax_loss_and_grad`` (fused and tiled: the ``[B, V]`` logits are never held); cost O(V d)
  per pair, the reference the sampled losses approximate.
- ``gensim``: ``gensim.models.Word2Vec(sg=1, negative=k, sample=0, shrink_windows=False, workers=threads)``,
  word2vec's own C-accelerated SGNS. It has no output bias; it is scored with ``U = wv.vectors``,
  ``W = syn1neg``, ``b = 0``, and also with ``b_w = log q(w)`` (``q`` the unigram^0.75 noise law), the
  correction that turns SGNS scores ``U_c . W_w ~ log p(w|c) - log(k q(w))`` into log-probabilities.

All the zipfnce models and the full softmax use Adagrad on the rows a batch (``--batch`` pairs, shuffled
every epoch) touches: ``G += g * g``, ``theta -= lr * g / (sqrt(G) + eps)``, with ``g`` the gradient of the
batch's summed loss. The Python loop runs over batches of pairs, never over rows.

Reported: training speed in words/s (in-vocabulary training tokens x epochs / training seconds, evaluation
excluded, the same count for every method) and the held-out cross-entropy, the mean of ``-log p(o | c)``
over every window pair of the held-out sentences whose words are both in the vocabulary (nats; positions of
out-of-vocabulary words still count in the distance), computed with ``zn.full_softmax_loss``. The quality
for the time: each method's held-out CE against its cumulative training seconds (``*_time.png``), and the
seconds each method needs to reach the exact softmax's final held-out CE and the sampled softmax's best one
(the table's last two columns; "—" when it never does within the run). Two context-blind references frame it: the uniform
model (``log V``, also the untrained model's score) and the unigram frequency of the context word. A table in
Markdown is printed; the per-epoch curves go to ``skipgram.png`` in ``--out`` (``skipgram_<corpus>.png`` for
another corpus, ``_quick`` added with ``--quick``), the numbers to a ``.json`` beside it. Speeds are wall
clock: on a shared machine they move with its load, the held-out losses do not (fixed seeds; gensim with
several workers is not bit-reproducible).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

if __name__ == "__main__":  # BLAS threads must be fixed before NumPy loads (the full-softmax baseline)
    _t = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), None)
    if _t is None and "--threads" in sys.argv[:-1]:
        _t = sys.argv[sys.argv.index("--threads") + 1]
    if _t is not None:
        for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[_v] = _t

import numpy as np
import zipfnce as zn

DTYPE = np.float32
EXACT = "zipfnce exact softmax"


# ----------------------------------------------------------------------------------------------- data


class Corpus(NamedTuple):
    """Tokenised corpus split into training and held-out sentences, with the training vocabulary."""

    vocab: List[str]  # id -> word, most frequent first
    counts: np.ndarray  # int64 [V], training counts
    train: List[np.ndarray]  # int64 ids per training sentence (out-of-vocabulary words dropped)
    test: List[np.ndarray]  # held-out sentences: ids, -1 for out-of-vocabulary words (kept as gaps)
    train_tokens: List[List[str]]  # the raw training sentences (what gensim is given)

    @property
    def train_words(self) -> int:
        """In-vocabulary training tokens: the words one epoch processes (the words/s numerator)."""
        return int(sum(len(s) for s in self.train))


def corpus_path(name: str) -> str:
    """Path of a file that ships in gensim's test data (``lee_background.cor``, ``head500.noblanks.cor``)."""
    if os.path.exists(name):
        return name
    from gensim.test.utils import datapath

    return datapath(name)


def load_corpus(
    path: str,
    *,
    min_count: int = 3,
    holdout: float = 0.1,
    max_sentences: Optional[int] = None,
    seed: int = 0,
) -> Corpus:
    """Read one sentence per line, tokenise, split off ``holdout`` of the sentences at random, and build
    the vocabulary from the training part (words seen >= ``min_count`` times, by decreasing count)."""
    from gensim.utils import simple_preprocess

    with open(path, encoding="utf-8") as f:
        sents = [t for t in (simple_preprocess(line) for line in f) if len(t) > 1]
    if max_sentences is not None:
        sents = sents[:max_sentences]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sents))
    n_test = max(1, int(round(holdout * len(sents))))
    test_raw = [sents[i] for i in sorted(order[:n_test])]
    train_raw = [sents[i] for i in sorted(order[n_test:])]

    c = Counter(w for s in train_raw for w in s)
    kept = sorted((w for w, n in c.items() if n >= min_count), key=lambda w: (-c[w], w))
    index = {w: i for i, w in enumerate(kept)}
    counts = np.array([c[w] for w in kept], dtype=np.int64)
    train = [np.array([index[w] for w in s if w in index], dtype=np.int64) for s in train_raw]
    test = [np.array([index.get(w, -1) for w in s], dtype=np.int64) for s in test_raw]
    return Corpus(kept, counts, train, test, train_raw)


def window_pairs(sentences: Sequence[np.ndarray], window: int) -> np.ndarray:
    """All (center, context) pairs at distance 1..``window`` inside each sentence, as int64 ``[P, 2]``.

    Vectorised over the concatenated corpus: for each offset o, position i pairs with i + o (both ways)
    when both lie in the same sentence and both ids are >= 0 (a -1 marks an out-of-vocabulary word).
    """
    if not sentences:
        return np.zeros((0, 2), dtype=np.int64)
    ids = np.concatenate(sentences)
    sid = np.repeat(np.arange(len(sentences)), [len(s) for s in sentences])
    out = []
    for o in range(1, window + 1):
        a, b = ids[:-o], ids[o:]
        ok = (sid[:-o] == sid[o:]) & (a >= 0) & (b >= 0)
        a, b = a[ok], b[ok]
        out.append(np.stack([a, b], 1))
        out.append(np.stack([b, a], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def heldout_pairs(corpus: Corpus, window: int, max_pairs: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """The held-out evaluation pairs; with ``max_pairs``, a fixed random subset of that many (to keep the
    O(V d)-per-pair evaluation affordable on large corpora)."""
    pairs = window_pairs(corpus.test, window)
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = pairs[np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))]
    return pairs


# ------------------------------------------------------------------------------------------- the model


class SkipGram:
    """``U [V, d]``, ``W [V, d]``, ``b [V]`` with Adagrad state; word2vec's initialisation
    (``U ~ Uniform(-0.5/d, 0.5/d)``, ``W = 0``, ``b = 0``), so the untrained model is the uniform one."""

    def __init__(self, vocab_size: int, dim: int, *, lr: float = 0.1, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.U = ((rng.random((vocab_size, dim), dtype=DTYPE) - 0.5) / dim).astype(DTYPE)
        self.W = np.zeros((vocab_size, dim), DTYPE)
        self.b = np.zeros(vocab_size, DTYPE)
        self.gU = np.zeros_like(self.U)  # Adagrad: running sums of squared gradients
        self.gW = np.zeros_like(self.W)
        self.gb = np.zeros_like(self.b)
        self.lr = DTYPE(lr)
        self.eps = DTYPE(1e-8)

    def _adagrad(self, param: np.ndarray, acc: np.ndarray, rows: np.ndarray, g: np.ndarray) -> None:
        """``acc[rows] += g^2; param[rows] -= lr g / (sqrt(acc[rows]) + eps)`` for unique ``rows``."""
        a = acc[rows] + g * g
        acc[rows] = a
        param[rows] -= self.lr * g / (np.sqrt(a) + self.eps)

    def update_inputs(self, centers: np.ndarray, grad_inputs: np.ndarray) -> None:
        """Scatter-add the per-pair input gradients onto their (repeated) center rows, then step."""
        rows, inv = np.unique(centers, return_inverse=True)
        g = np.zeros((len(rows), self.U.shape[1]), DTYPE)
        np.add.at(g, inv, grad_inputs)
        self._adagrad(self.U, self.gU, rows, g)

    def update_outputs(self, grad_weights: zn.SparseGrad, grad_biases: zn.SparseGrad) -> None:
        """Step the output rows a sampled loss touched (its ``SparseGrad`` rows are already unique)."""
        self._adagrad(self.W, self.gW, grad_weights.indices, grad_weights.values)
        self._adagrad(self.b, self.gb, grad_biases.indices, grad_biases.values)


def heldout_ce(
    U: np.ndarray, W: np.ndarray, b: Optional[np.ndarray], pairs: np.ndarray, chunk: int = 16384
) -> float:
    """Mean full-softmax cross-entropy ``mean over pairs of [logsumexp_w(z_w) - z_o]``,
    ``z_w = U_c . W_w + b_w`` (nats): ``zn.full_softmax_loss`` over chunks of pairs (so the gathered
    ``U[c]`` stays small), in the tables' float type, the mean in float64."""
    dt = np.result_type(U, W, np.float32)
    U, W = np.asarray(U, dt), np.asarray(W, dt)
    total = 0.0
    for s in range(0, len(pairs), chunk):
        c, o = pairs[s : s + chunk, 0], pairs[s : s + chunk, 1]
        total += float(zn.full_softmax_loss(W, b, o, U[c]).sum(dtype=np.float64))
    return total / max(1, len(pairs))


def unigram_ce(corpus: Corpus, pairs: np.ndarray) -> float:
    """Held-out CE of the context-blind model ``p(o | c) = count(o) / N`` (training counts): the score of
    word frequency alone, which a skip-gram model has to beat to have learned anything about context."""
    logp = np.log(corpus.counts / corpus.counts.sum())
    return float(-logp[pairs[:, 1]].mean())


# ------------------------------------------------------------------------------------------- training


class Result(NamedTuple):
    """One method's run: held-out CE before training and after each epoch, and its training speed."""

    name: str
    curve: List[float]  # held-out CE, index 0 = untrained, index e = after epoch e
    train_seconds: float
    words_per_s: float
    extra: Dict[str, List[float]]  # other curves (gensim's bias-corrected score)
    elapsed: List[float] = []  # cumulative training seconds at each point of ``curve`` (0 first)


def _batches(pairs: np.ndarray, batch: int, rng: np.random.Generator):
    perm = rng.permutation(len(pairs))
    for s in range(0, len(perm), batch):
        yield pairs[perm[s : s + batch]]


def train_sampled(
    corpus: Corpus,
    loss: str,
    *,
    dim: int = 64,
    window: int = 5,
    epochs: int = 5,
    negatives: int = 10,
    batch: int = 1024,
    lr: float = 0.1,
    unique: bool = True,
    seed: int = 0,
    max_eval_pairs: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> Result:
    """Train the skip-gram with zipfnce's ``nce`` or ``softmax`` (sampled softmax) loss.

    Per batch of B pairs: ``inputs = U[centers]`` ``[B, d]``, ``labels = contexts`` ``[B, 1]``, per-row
    negatives ``[B, k]`` from the unigram^0.75 sampler, one fused loss-and-gradient call, then Adagrad on
    the touched rows of ``W``, ``b`` (the ``SparseGrad``) and ``U`` (``grad_inputs`` scattered onto the
    centers). Pairs are reshuffled every epoch.
    """
    fn = {"nce": zn.nce_loss_and_grad, "softmax": zn.sampled_softmax_loss_and_grad}[loss]
    V = len(corpus.vocab)
    rng = np.random.default_rng(seed)
    model = SkipGram(V, dim, lr=lr, seed=seed)
    noise = zn.UnigramSampler(corpus.counts, distortion=0.75, seed=seed)
    train_pairs = window_pairs(corpus.train, window)
    test_pairs = heldout_pairs(corpus, window, max_eval_pairs, seed)
    curve = [heldout_ce(model.U, model.W, model.b, test_pairs)]
    seconds = 0.0
    elapsed = [0.0]
    for epoch in range(epochs):
        t0 = time.perf_counter()
        run = 0.0
        for bp in _batches(train_pairs, batch, rng):
            centers, labels = bp[:, 0], bp[:, 1:2]
            neg = noise.sample_per_row(labels, negatives, unique=unique)
            out = fn(model.W, model.b, labels, model.U[centers], negatives, V, sampled_values=neg)
            model.update_outputs(out.grad_weights, out.grad_biases)
            model.update_inputs(centers, out.grad_inputs)
            run += float(out.loss.sum())
        seconds += time.perf_counter() - t0
        elapsed.append(seconds)
        curve.append(heldout_ce(model.U, model.W, model.b, test_pairs))
        log(f"  {loss:8s} epoch {epoch + 1}: train loss {run / len(train_pairs):.4f}  "
            f"held-out CE {curve[-1]:.4f}")  # fmt: skip
    words = corpus.train_words * epochs
    name = {"nce": "zipfnce NCE", "softmax": "zipfnce sampled softmax"}[loss]
    return Result(name, curve, seconds, words / seconds, {}, elapsed)


def train_full_softmax(
    corpus: Corpus,
    *,
    dim: int = 64,
    window: int = 5,
    epochs: int = 5,
    batch: int = 1024,
    lr: float = 0.1,
    seed: int = 0,
    max_eval_pairs: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> Result:
    """The same model and optimiser with the exact softmax cross-entropy: ``zn.full_softmax_loss_and_grad``.

    ``z = U[c] W^T + b`` over all V words, ``dz = softmax(z) - onehot(o)``; the call returns
    ``dW = dz^T U[c]`` (dense ``[V, d]``), ``db = sum_B dz`` and ``dU[c] = dz W`` without holding ``z``.
    Every output row gets a gradient every batch (Adagrad on all of W and b).
    """
    V = len(corpus.vocab)
    rng = np.random.default_rng(seed)
    model = SkipGram(V, dim, lr=lr, seed=seed)
    train_pairs = window_pairs(corpus.train, window)
    test_pairs = heldout_pairs(corpus, window, max_eval_pairs, seed)
    curve = [heldout_ce(model.U, model.W, model.b, test_pairs)]
    all_rows = np.arange(V)
    seconds = 0.0
    elapsed = [0.0]
    for epoch in range(epochs):
        t0 = time.perf_counter()
        run = 0.0
        for bp in _batches(train_pairs, batch, rng):
            centers, ctx = bp[:, 0], bp[:, 1]
            out = zn.full_softmax_loss_and_grad(model.W, model.b, ctx, model.U[centers])
            run += float(out.loss.sum())
            model._adagrad(model.W, model.gW, all_rows, out.grad_weights)
            model._adagrad(model.b, model.gb, all_rows, out.grad_biases)
            model.update_inputs(centers, out.grad_inputs)
        seconds += time.perf_counter() - t0
        elapsed.append(seconds)
        curve.append(heldout_ce(model.U, model.W, model.b, test_pairs))
        log(f"  exact    epoch {epoch + 1}: train loss {run / len(train_pairs):.4f}  "
            f"held-out CE {curve[-1]:.4f}")  # fmt: skip
    return Result(EXACT, curve, seconds, corpus.train_words * epochs / seconds, {}, elapsed)


def train_gensim(
    corpus: Corpus,
    *,
    dim: int = 64,
    window: int = 5,
    epochs: int = 5,
    negatives: int = 10,
    min_count: int = 3,
    threads: int = 2,
    seed: int = 0,
    max_eval_pairs: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> Result:
    """gensim's Word2Vec (SGNS) on the same training sentences, scored with the same held-out metric after
    every epoch (in a callback whose time is subtracted from the training time)."""
    from gensim.models import Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec

    test_pairs = heldout_pairs(corpus, window, max_eval_pairs, seed)
    q = corpus.counts.astype(np.float64) ** 0.75
    log_q = np.log(q / q.sum())

    class Score(CallbackAny2Vec):
        def __init__(self) -> None:
            self.plain: List[float] = []
            self.corrected: List[float] = []
            self.spent = 0.0
            self.start = time.perf_counter()
            self.elapsed: List[float] = []

        def score(self, model: Word2Vec) -> None:
            t0 = time.perf_counter()
            self.elapsed.append(max(0.0, t0 - self.start - self.spent))
            perm = np.array([model.wv.key_to_index[w] for w in corpus.vocab])
            U, W = model.wv.vectors[perm], model.syn1neg[perm]
            self.plain.append(heldout_ce(U, W, None, test_pairs))
            self.corrected.append(heldout_ce(U, W, log_q, test_pairs))
            self.spent += time.perf_counter() - t0

        def on_train_begin(self, model: Word2Vec) -> None:
            self.score(model)

        def on_epoch_end(self, model: Word2Vec) -> None:
            self.score(model)
            log(f"  gensim   epoch {len(self.plain) - 1}: held-out CE {self.plain[-1]:.4f} "
                f"(with log q bias {self.corrected[-1]:.4f})")  # fmt: skip

    model = Word2Vec(
        vector_size=dim, window=window, min_count=min_count, sg=1, hs=0, negative=negatives,
        ns_exponent=0.75, sample=0, shrink_windows=False, workers=threads, seed=seed,
    )  # fmt: skip
    model.build_vocab(corpus.train_tokens)
    missing = set(corpus.vocab) - set(model.wv.key_to_index)
    if missing:
        raise RuntimeError(f"gensim's vocabulary lacks {len(missing)} of ours")
    cb = Score()
    t0 = cb.start = time.perf_counter()
    model.train(corpus.train_tokens, total_examples=len(corpus.train_tokens), epochs=epochs, callbacks=[cb])
    seconds = time.perf_counter() - t0 - cb.spent
    # Words gensim trained on: its own count of in-vocabulary tokens (equal to ours, same vocabulary).
    return Result(
        "gensim Word2Vec (SGNS, b = 0)", cb.plain, seconds, corpus.train_words * epochs / seconds,
        {"gensim Word2Vec (SGNS, b = log q)": cb.corrected}, cb.elapsed,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- reporting


def seconds_to_reach(r: Result, curve: List[float], target: float) -> Optional[float]:
    """Training seconds after which ``curve`` first reaches ``target`` (None if it never does)."""
    for t, ce in zip(r.elapsed, curve):
        if ce <= target:
            return t
    return None


def table(results: Sequence[Result], uniform: float, unigram: float) -> str:
    """A Markdown table: method | words/s | held-out CE after the last epoch (and the best epoch's) | the
    training seconds to reach the exact softmax's final held-out CE and the sampled softmax's best one (a
    level both losses reach), when those methods are in the run ("—": never within the run)."""
    exact = next((r for r in results if r.name == EXACT), None)
    sampled = next((r for r in results if r.name == "zipfnce sampled softmax"), None)
    lines = [
        "| method | words/s | held-out CE (nats) | best epoch's CE | s to the exact's CE | s to the sampled's best |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        curves = [(r.name, r.curve)] + list(r.extra.items())
        for name, curve in curves:
            reach = ["", ""]
            for i, target in ((0, exact and exact.curve[-1]), (1, sampled and min(sampled.curve[1:]))):
                if target is not None and r.elapsed:
                    t = seconds_to_reach(r, curve, target)
                    reach[i] = "—" if t is None else f"{t:.1f}"
            lines.append(
                f"| {name} | {r.words_per_s:,.0f} | {curve[-1]:.3f} | {min(curve[1:]):.3f} | {reach[0]} | {reach[1]} |"
            )
    lines.append(f"| unigram frequency, no context | — | {unigram:.3f} | | | |")
    lines.append(f"| uniform (untrained), log V | — | {uniform:.3f} | | | |")
    return "\n".join(lines)


def plot_time(results: Sequence[Result], unigram: float, path: str, title: str) -> None:
    """Held-out CE against cumulative training seconds (log scale): the quality each method buys per
    second, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=90)
    for r in results:
        for name, c in [(r.name, r.curve)] + list(r.extra.items()):
            if r.elapsed:
                ax.plot(
                    r.elapsed[1:], c[1:], marker="o", ms=3, ls="--" if name != r.name else "-", label=name
                )
    ax.axhline(unigram, color="black", lw=0.8, ls="-.", label="unigram frequency")
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (cumulative, evaluation excluded)")
    ax.set_ylabel("held-out full-softmax CE (nats)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot(results: Sequence[Result], uniform: float, unigram: float, path: str, title: str) -> None:
    """Held-out CE against epochs for every method, saved to ``path`` (PNG): every epoch on the left, the
    trained epochs zoomed in on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0), dpi=90)
    curves = []
    colors = {"zipfnce NCE": "C0", "zipfnce sampled softmax": "C1", EXACT: "C2"}
    for i, r in enumerate(results):
        color = colors.get(r.name, "C3" if r.name.startswith("gensim") else f"C{4 + i}")  # fixed per method
        curves.append((r.name, r.curve, color, "-"))
        curves += [(name, c, color, "--") for name, c in r.extra.items()]
    trained = [v for _, c, _, _ in curves for v in c[1:]]
    for ax, first in zip(axes, (0, 1)):
        for name, c, color, ls in curves:
            ax.plot(range(first, len(c)), c[first:], marker="o", ms=3, color=color, ls=ls, label=name)
        ax.axhline(uniform, color="grey", lw=0.8, ls=":", label="uniform, log V")
        ax.axhline(unigram, color="black", lw=0.8, ls="-.", label="unigram frequency")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out full-softmax CE (nats)")
    lo = min(trained + [unigram])
    axes[1].set_ylim(lo - 0.03, min(max(trained), unigram + 0.25) + 0.03)
    axes[1].set_title("trained epochs, zoomed in", fontsize=9)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="zipfnce, BLAS, gensim threads")
    p.add_argument(
        "--out",
        default=os.path.dirname(os.path.abspath(__file__)),
        help="where the plot and the numbers go: skipgram[_<corpus>][_quick].png and .json",
    )
    p.add_argument("--quick", action="store_true", help="fewer sentences and epochs (< 2 minutes)")
    p.add_argument("--corpus", default="lee_background.cor", help="a file in gensim's test data, or a path")
    p.add_argument("--min-count", type=int, default=3)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--negatives", type=int, default=10, help="k, also gensim's negative")
    p.add_argument("--batch", type=int, default=4096, help="pairs per step")
    p.add_argument(
        "--unique",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="negatives without replacement within a row (--no-unique: with, as word2vec)",
    )
    p.add_argument("--lr", type=float, default=0.1, help="Adagrad step size")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--max-eval-pairs", type=int, default=None, help="score a random subset of held-out pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-gensim", action="store_true")
    p.add_argument("--no-full", action="store_true", help="skip the exact-softmax baseline")
    a = p.parse_args(argv)
    epochs = min(a.epochs, 2) if a.quick else a.epochs
    zn.set_num_threads(a.threads)

    corpus = load_corpus(
        corpus_path(a.corpus), min_count=a.min_count, holdout=a.holdout,
        max_sentences=100 if a.quick else None, seed=a.seed,
    )  # fmt: skip
    V = len(corpus.vocab)
    test_pairs = heldout_pairs(corpus, a.window, a.max_eval_pairs, a.seed)
    n_test = len(test_pairs)
    title = (
        f"skip-gram on {os.path.basename(a.corpus)}: V={V}, d={a.dim}, window={a.window}, k={a.negatives}, "
        f"{a.threads} threads"
    )
    print(title)
    print(f"{len(corpus.train)} training sentences ({corpus.train_words} words, "
          f"{len(window_pairs(corpus.train, a.window))} pairs/epoch), {len(corpus.test)} held-out "
          f"({n_test} pairs), {epochs} epochs")  # fmt: skip

    kw = dict(dim=a.dim, window=a.window, epochs=epochs, seed=a.seed, max_eval_pairs=a.max_eval_pairs)
    results = [
        train_sampled(corpus, loss, negatives=a.negatives, batch=a.batch, lr=a.lr, unique=a.unique, **kw)
        for loss in ("nce", "softmax")
    ]
    if not a.no_full:
        results.append(train_full_softmax(corpus, batch=a.batch, lr=a.lr, **kw))
    if not a.no_gensim:
        results.append(
            train_gensim(corpus, negatives=a.negatives, min_count=a.min_count, threads=a.threads, **kw)
        )
    uniform = float(np.log(V))
    unigram = unigram_ce(corpus, test_pairs)
    os.makedirs(a.out, exist_ok=True)
    stem = "skipgram"
    if os.path.basename(a.corpus) != "lee_background.cor":
        stem += "_" + os.path.basename(a.corpus).split(".")[0]
    stem += "_quick" if a.quick else ""
    png = os.path.join(a.out, stem + ".png")
    plot(results, uniform, unigram, png, title)
    plot_time(results, unigram, os.path.join(a.out, stem + "_time.png"), title)
    with open(os.path.join(a.out, stem + ".json"), "w") as f:  # the numbers behind the plot and table
        json.dump({"title": title, "args": vars(a), "vocab_size": V, "train_words": corpus.train_words,
                   "uniform": uniform, "unigram": unigram, "results": [r._asdict() for r in results]},
                  f, indent=1)  # fmt: skip
    print()
    print(table(results, uniform, unigram))
    print(f"\n{title}; plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
