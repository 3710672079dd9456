"""Two-tower retrieval trained with zipfnce's InfoNCE: in-batch negatives with and without the streaming
frequency estimate's logQ correction, mixed negatives, hard negatives; recall@k on held-out interactions.

Run it::

    python examples/two_tower.py                 # the full comparison (several minutes on 2 cores)
    python examples/two_tower.py --quick         # a smaller run (about a minute)
    python examples/two_tower.py --epochs 4 --dim 64 --batch 1024 --threads 2 --out examples/

The data. No interaction data set ships with the installed packages, so the interactions come from a real
corpus that does: ``gensim/test/test_data/head500.noblanks.cor`` (the first 500 articles of English Wikipedia as
in text8, stemmed, stop words removed; 250 documents, 331 000 tokens). A *query* is the bag of the ``--window``
words before a position, its *item* the word at that position: a next-item retrieval task whose item side is
Zipfian (word frequencies), like the play counts behind a recommender. Words seen at least ``--min-count``
times in the training documents form the item catalogue ``V`` (ids by decreasing count); a fraction
``--holdout`` of the documents, chosen at random, is held out and gives the evaluation interactions.

The model. Query tower: the mean of the context words' embeddings (``EmbeddingBag``, ``[V, d]``) through a
linear layer; item tower: an item embedding ``[V, d]``; both outputs L2-normalised, score ``q . k / T``. Trained
with Adam (written out) on batches of ``--batch`` (query, item) interactions, shuffled every epoch, through
``zipfnce.torch.info_nce_loss`` (autograd; CPU tensors). Variants, on the same data, seeds and steps:

- ``in-batch``: row i's negatives are the batch's other items, no correction (``key_ids`` masks a repeat of
  the row's own item). Popular items fill the batches, so they are pushed down far more than a full softmax
  would push them.
- ``in-batch + logQ``: the same with ``key_log_q = log Q(item)``, ``Q`` from ``zn.FrequencyEstimator`` updated
  with every batch's items (Yi et al. 2019): the sampled-softmax correction of in-batch negatives.
- ``mixed``: ``zn.mixed_negatives``: the batch's items plus ``--num-sampled`` items drawn uniformly from the
  catalogue (``zn.UniformSampler``; Yang et al. 2020), every column corrected by ``log(E_B + E_S)``, its expected
  count in the union of both sources (the frequency estimate gives ``E_B``, the sampler ``E_S``).
- ``in-batch + logQ + hard``, ``mixed + hard``: the same with ``num_hard_negatives=--hard``: each row keeps its
  positive and its ``h`` highest-scoring negatives (after the correction), TFRS's ``HardNegativeMining``.
- ``full softmax``: the exact cross-entropy over the whole catalogue (dense torch), the target the sampled
  variants approximate.

Reported: recall@k (k = 10, 50, 100) on the held-out interactions: the fraction whose item ranks among the top k
of all ``V`` items by score (ties counted against it), for each variant and for the popularity ranking; and
the training time per epoch (wall clock; on a shared machine it moves with the load, the recalls do not:
fixed seeds). A Markdown table is printed; recall@50 after each epoch and the final recalls go to
``two_tower.png`` in ``--out`` (``two_tower_quick.png`` with ``--quick``), the numbers to a ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np
import zipfnce as zn

KS = (10, 50, 100)


# ----------------------------------------------------------------------------------------------- data


class Data(NamedTuple):
    """Interactions: query contexts ``[N, window]`` (id ``V`` pads), items ``[N]``; train and held-out."""

    vocab: List[str]
    counts: np.ndarray  # int64 [V], training counts of the items
    train_ctx: np.ndarray
    train_item: np.ndarray
    test_ctx: np.ndarray
    test_item: np.ndarray


def corpus_path(name: str = "head500.noblanks.cor") -> str:
    """A file of gensim's bundled test data (or a path)."""
    if os.path.exists(name):
        return name
    from gensim.test.utils import datapath

    return datapath(name)


def _pairs(docs: List[np.ndarray], window: int, pad: int) -> tuple:
    """Every position with an in-catalogue item and at least one in-catalogue word among the ``window`` before
    it: the context (``pad`` for missing words) and the item. Vectorised per document."""
    ctx, item = [], []
    for d in docs:
        if len(d) < 2:
            continue
        padded = np.r_[np.full(window, -1), d]
        idx = np.arange(len(d))[:, None] + np.arange(window)[None, :]
        c = padded[idx]  # the window before each position
        ok = (d >= 0) & (c >= 0).any(1)
        c = np.where(c >= 0, c, pad)[ok]
        ctx.append(c)
        item.append(d[ok])
    return np.concatenate(ctx).astype(np.int64), np.concatenate(item).astype(np.int64)


def load_data(
    path: str,
    *,
    window: int = 8,
    min_count: int = 5,
    holdout: float = 0.1,
    max_docs: Optional[int] = None,
    max_test: Optional[int] = None,
    max_train: Optional[int] = None,
    seed: int = 0,
) -> Data:
    """Read one document per line (whitespace tokens), hold out ``holdout`` of the documents at random, build
    the catalogue from the training part and the (context, item) interactions of both parts."""
    with open(path, encoding="utf-8") as f:
        docs = [line.split() for line in f if line.strip()]
    if max_docs is not None:
        docs = docs[:max_docs]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs))
    n_test = max(1, int(round(holdout * len(docs))))
    test_raw = [docs[i] for i in sorted(order[:n_test])]
    train_raw = [docs[i] for i in sorted(order[n_test:])]
    c = Counter(w for d in train_raw for w in d)
    kept = sorted((w for w, n in c.items() if n >= min_count), key=lambda w: (-c[w], w))
    index = {w: i for i, w in enumerate(kept)}
    counts = np.array([c[w] for w in kept], dtype=np.int64)
    as_ids = lambda ds: [np.array([index.get(w, -1) for w in d], dtype=np.int64) for d in ds]  # noqa: E731
    v = len(kept)
    tr_c, tr_i = _pairs(as_ids(train_raw), window, v)
    te_c, te_i = _pairs(as_ids(test_raw), window, v)
    if max_train is not None and len(tr_i) > max_train:
        pick = np.sort(rng.choice(len(tr_i), max_train, replace=False))
        tr_c, tr_i = tr_c[pick], tr_i[pick]
    if max_test is not None and len(te_i) > max_test:
        pick = np.sort(rng.choice(len(te_i), max_test, replace=False))
        te_c, te_i = te_c[pick], te_i[pick]
    return Data(kept, counts, tr_c, tr_i, te_c, te_i)


# ---------------------------------------------------------------------------------------------- model


def make_model(v: int, dim: int, seed: int):
    """The two towers (torch modules) with fixed initial weights."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Towers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ctx = nn.EmbeddingBag(v + 1, dim, mode="mean", padding_idx=v)
            self.proj = nn.Linear(dim, dim)
            self.item = nn.Embedding(v, dim)
            nn.init.normal_(self.ctx.weight, std=0.1)
            nn.init.normal_(self.item.weight, std=0.1)

        def query(self, ctx):
            return nn.functional.normalize(self.proj(self.ctx(ctx)), dim=-1)

        def items(self, ids):
            return nn.functional.normalize(self.item(ids), dim=-1)

    return Towers()


def recall_at(model, ctx: np.ndarray, item: np.ndarray, ks=KS, chunk: int = 2048) -> Dict[int, float]:
    """Recall@k over the held-out interactions: the item's rank among all items by score (ties against it)."""
    import torch

    with torch.no_grad():
        v = model.item.weight.shape[0]
        all_items = model.items(torch.arange(v))
        ranks = []
        for s in range(0, len(item), chunk):
            q = model.query(torch.from_numpy(ctx[s : s + chunk]))
            sc = q @ all_items.T
            tgt = torch.from_numpy(item[s : s + chunk])
            mine = sc.gather(1, tgt[:, None])
            ranks.append((sc >= mine).sum(1).numpy() - 1)
        r = np.concatenate(ranks)
    return {k: float(np.mean(r < k)) for k in ks}


def popularity_recall(counts: np.ndarray, item: np.ndarray, ks=KS) -> Dict[int, float]:
    """Recall@k of ranking every query's items by training frequency (ids are already in that order)."""
    return {k: float(np.mean(item < k)) for k in ks}


# -------------------------------------------------------------------------------------------- training


def adam_step(
    params, state, t: int, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> None:
    """One Adam update, written out (``torch.optim`` pulls in the compiler stack, which clashes with
    TensorFlow's and JAX's LLVM when they share the process, as in the test suite)."""
    import torch

    with torch.no_grad():
        for p, (m, v) in zip(params, state):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**t)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**t))


class Variant(NamedTuple):
    name: str
    logq: bool = False  # in-batch logQ from the frequency estimate
    mixed: bool = False  # plus uniformly sampled corpus negatives, mixture correction
    hard: Optional[int] = None  # num_hard_negatives
    full: bool = False  # exact softmax over the catalogue


VARIANTS = [
    Variant("in-batch"),
    Variant("in-batch + logQ", logq=True),
    Variant("mixed", mixed=True),
    Variant("in-batch + logQ + hard", logq=True, hard=-1),
    Variant("mixed + hard", mixed=True, hard=-1),
    Variant("full softmax", full=True),
]


def train(
    data: Data,
    variant: Variant,
    *,
    dim: int = 64,
    batch: int = 1024,
    epochs: int = 3,
    lr: float = 0.01,
    temperature: float = 0.1,
    num_sampled: int = 1024,
    hard: int = 128,
    seed: int = 0,
    on_epoch: Optional[Callable[[int, object], None]] = None,
) -> Dict[str, float]:
    """Train one variant; returns seconds per epoch (training only) and calls ``on_epoch(epoch, model)``."""
    import torch
    import zipfnce.torch as znt

    v = len(data.vocab)
    model = make_model(v, dim, seed)
    params = list(model.parameters())
    adam = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    steps = 0
    freq = zn.FrequencyEstimator(num_buckets=1 << 16, seed=seed)
    sampler = zn.UniformSampler(v, seed=seed + 1)
    rng = np.random.default_rng(seed)
    n = len(data.train_item)
    h = None if variant.hard is None else hard
    seconds = 0.0
    for ep in range(epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        for s in range(0, n - batch + 1, batch):  # full batches only
            sel = perm[s : s + batch]
            ids_np = data.train_item[sel]
            ctx = torch.from_numpy(data.train_ctx[sel])
            ids = torch.from_numpy(ids_np)
            q = model.query(ctx)
            if variant.full:
                all_items = model.items(torch.arange(v))
                loss = torch.nn.functional.cross_entropy(q @ all_items.T / temperature, ids)
            else:
                freq.update(ids_np)
                kw: Dict[str, object] = {
                    "key_ids": ids_np,
                    "num_hard_negatives": h,
                    "temperature": temperature,
                }
                negatives = None
                if variant.mixed:
                    m = zn.mixed_negatives(sampler, num_sampled, ids_np, freq)
                    kw.update(m.kwargs())
                    negatives = model.items(torch.from_numpy(m.negative_ids))
                elif variant.logq:
                    kw["key_log_q"] = freq.log_q(ids_np)
                loss = znt.info_nce_loss(q, model.items(ids), negatives=negatives, **kw)
            for p in params:
                p.grad = None
            loss.backward()
            steps += 1
            adam_step(params, adam, steps, lr)
        seconds += time.perf_counter() - t0
        if on_epoch is not None:
            on_epoch(ep + 1, model)
    return {"seconds_per_epoch": seconds / max(epochs, 1)}


# ---------------------------------------------------------------------------------------------- report


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    zn.set_num_threads(args.threads)
    data = load_data(
        corpus_path(args.corpus), window=args.window, min_count=args.min_count, holdout=args.holdout,
        max_docs=args.max_docs, max_test=args.max_test, max_train=args.max_train, seed=args.seed,
    )  # fmt: skip
    v = len(data.vocab)
    print(
        f"catalogue {v} items, {len(data.train_item)} training and {len(data.test_item)} held-out interactions; "
        f"dim {args.dim}, batch {args.batch}, {args.epochs} epochs, {args.threads} threads",
        flush=True,
    )
    top = data.counts / data.counts.sum()
    results: dict = {
        "setup": {
            k: getattr(args, k)
            for k in "corpus window min_count holdout dim batch epochs lr temperature num_sampled hard threads seed".split()
        },
        "catalogue": v,
        "train_interactions": int(len(data.train_item)),
        "test_interactions": int(len(data.test_item)),
        "top_item_share": float(top[0]),
        "popularity": popularity_recall(data.counts, data.test_item),
        "variants": {},
    }
    for var in VARIANTS:
        if args.only and var.name not in args.only:
            continue
        curve: List[float] = []
        final: Dict[int, float] = {}

        def on_epoch(ep: int, model: object, var=var, curve=curve, final=final) -> None:
            curve.append(recall_at(model, data.test_ctx, data.test_item, (50,))[50])
            print(f"  {var.name}: epoch {ep} recall@50 {curve[-1]:.4f}", flush=True)
            if ep == args.epochs:
                final.update(recall_at(model, data.test_ctx, data.test_item))

        t = train(
            data, var, dim=args.dim, batch=args.batch, epochs=args.epochs, lr=args.lr,
            temperature=args.temperature, num_sampled=args.num_sampled, hard=args.hard, seed=args.seed,
            on_epoch=on_epoch,
        )  # fmt: skip
        results["variants"][var.name] = {"recall": final, "recall50_per_epoch": curve, **t}
    return results


def table(res: dict) -> str:
    head = "| method | " + " | ".join(f"recall@{k}" for k in KS) + " | s / epoch |"
    lines = [head, "|" + "---|" * (len(KS) + 2)]
    for name, r in res["variants"].items():
        rec = " | ".join(f"{r['recall'][k]:.4f}" for k in KS)
        lines.append(f"| {name} | {rec} | {r['seconds_per_epoch']:.1f} |")
    pop = " | ".join(f"{res['popularity'][k]:.4f}" for k in KS)
    lines.append(f"| popularity (train counts) | {pop} | - |")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(res["variants"])
    for name in names:
        c = res["variants"][name]["recall50_per_epoch"]
        a.plot(range(1, len(c) + 1), c, marker="o", label=name)
    a.axhline(res["popularity"][50], color="gray", ls="--", label="popularity")
    a.set_xlabel("epoch")
    a.set_ylabel("held-out recall@50")
    a.legend(fontsize=8)
    a.set_title("recall@50 after each epoch")
    x = np.arange(len(KS))
    w = 0.8 / (len(names) + 1)
    for j, name in enumerate(names + ["popularity"]):
        r = res["popularity"] if name == "popularity" else res["variants"][name]["recall"]
        b.bar(x + j * w, [r[k] for k in KS], w, label=name)
    b.set_xticks(x + 0.4 - w / 2)
    b.set_xticklabels([f"recall@{k}" for k in KS])
    b.set_title(f"held-out recall ({res['catalogue']} items)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="head500.noblanks.cor")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--max-test", type=int, default=20000)
    ap.add_argument("--max-train", type=int, default=None, help="subsample the training interactions")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--num-sampled", type=int, default=1024)
    ap.add_argument("--hard", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="run only these variants (by name)")
    ap.add_argument("--quick", action="store_true", help="a smaller run (100 documents, 2 epochs)")
    ap.add_argument("--tiny", action="store_true", help="a few seconds: for the test suite")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.max_docs, args.epochs = args.max_docs or 100, 2
    if args.tiny:
        args.max_docs, args.epochs, args.max_test, args.batch, args.dim = 12, 1, 300, 256, 16
        args.max_train = 2048
        args.num_sampled, args.hard = 128, 16
    res = run(args)
    print()
    print(table(res))
    suffix = "_quick" if args.quick else "_tiny" if args.tiny else ""
    base = os.path.join(args.out, f"two_tower{suffix}")
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    if not args.no_plot:
        plot(res, base + ".png")
    print(f"\nwrote {base}.json" + ("" if args.no_plot else f" and {base}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
