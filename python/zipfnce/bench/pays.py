"""The "where sampling pays" sweep of ``python -m zipfnce bench`` (issue 16): the time of one training step
(loss and every gradient) of the exact softmax over all V classes (``zn.full_softmax_loss_and_grad``) against
sampled softmax with S = 1024 and 8192 candidates (zipfnce) and TensorFlow's ``tf.nn.sampled_softmax_loss``
(S = 1024, same candidates), for V = 10^4 ... 10^7, at B = 1024, d = 128.

The exact loss costs O(B·V·d) per step, so it is measured only while one step takes under
:data:`EXACT_LIMIT_S` seconds: its time per class, from the largest V measured so far (or a probe at
V = 10^4), predicts the next one, and a prediction above the limit drops it from that point on. The report
plots the seconds per step of every implementation against V, log-log. Time alone says when sampling is
cheaper per step; whether it reaches the exact loss's quality sooner is what ``examples/skipgram.py``
measures (held-out cross-entropy per wall-clock second).
"""

from __future__ import annotations

import time
from typing import Dict, List

import numpy as np

from .cases import BOUND, Case, Impls, _loss_data, _tf, _torch

#: Sweep points.
VOCABS = (10**4, 10**5, 10**6, 10**7)
#: The exact loss is timed only while one step is predicted to take less than this.
EXACT_LIMIT_S = 5.0
#: Title of the sweep's plot (the report draws it as seconds per step against V, log-log).
PLOT = "where sampling pays: seconds per training step vs V (B=1024, d=128)"
BATCH, DIM = 1024, 128

EXACT = "exact full softmax"
S8192 = "zipfnce S=8192"

#: Seconds per class of one exact step, measured at the largest V so far.
_rate: Dict[str, float] = {}


def _exact_rate() -> float:
    """Seconds per class of one exact step (a probe at V = 10^4 when nothing larger was measured)."""
    if "rate" not in _rate:
        import zipfnce as zn

        w, _, x, labels = _loss_data(BATCH, DIM, 10**4)
        zn.full_softmax_loss_and_grad(w, None, labels, x)
        t = time.perf_counter()
        zn.full_softmax_loss_and_grad(w, None, labels, x)
        _rate["rate"] = (time.perf_counter() - t) / 10**4
    return _rate["rate"]


def pays_case(vocab: int) -> Impls:
    """One sweep point: the step of each implementation at this V (the exact one while under the limit)."""
    import zipfnce as zn

    w, b, x, labels = _loss_data(BATCH, DIM, vocab)
    sampler = zn.LogUniformSampler(vocab, seed=1)
    impls: Impls = {}
    sv1 = sampler.sample(1024, true_classes=labels, seed=2)
    sv8 = sampler.sample(8192, true_classes=labels, seed=3)
    impls["zipfnce"] = lambda: zn.sampled_softmax_loss_and_grad(
        w, b, labels, x, 1024, vocab, sampled_values=sv1
    )
    impls[S8192] = lambda: zn.sampled_softmax_loss_and_grad(w, b, labels, x, 8192, vocab, sampled_values=sv8)
    if _exact_rate() * vocab < EXACT_LIMIT_S:

        def exact():
            t = time.perf_counter()
            zn.full_softmax_loss_and_grad(w, b, labels[:, 0], x)
            _rate["rate"] = max(_rate.get("rate", 0.0), (time.perf_counter() - t) / vocab)

        impls[EXACT] = exact
    tf = _tf()
    if tf is not None:
        tw, tb = tf.Variable(w), tf.Variable(b)
        tx, tl = tf.constant(x), tf.constant(labels)
        tsv = tuple(tf.constant(a) for a in (sv1.ids, sv1.true_expected_count, sv1.sampled_expected_count))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(tx)
                loss = tf.nn.sampled_softmax_loss(tw, tb, tl, tx, 1024, vocab, sampled_values=tsv)
                total = tf.reduce_sum(loss)
            gw, gb, gx = tape.gradient(total, [tw, tb, tx])
            return loss, gw.values, gb.values, gx

        impls["tensorflow"] = lambda: step()[0].numpy()
    return impls


def full_case(batch: int, dim: int, vocab: int, grad: bool = True) -> Impls:
    """The exact full softmax (loss and, with `grad`, every gradient) against the NumPy/OpenBLAS products it
    cannot avoid (x·Wᵀ, G·W, Gᵀ·x; x·Wᵀ alone without `grad`) and, with `grad`, PyTorch eager
    ``F.cross_entropy(x @ W.T, y)`` + backward on the same threads."""
    import zipfnce as zn

    w, _, x, labels = _loss_data(batch, dim, vocab)
    y = labels[:, 0]
    if grad:
        impls: Impls = {"zipfnce": lambda: zn.full_softmax_loss_and_grad(w, None, y, x)}
    else:
        impls = {"zipfnce": lambda: zn.full_softmax_loss(w, None, y, x)}
    g = np.random.default_rng(1).standard_normal((batch, vocab), dtype=np.float32) if grad else None

    def bound():
        x @ w.T
        if g is not None:
            g @ w
            g.T @ x

    impls[BOUND] = bound
    torch = _torch()
    if torch is not None and grad:
        torch.set_num_threads(zn.get_num_threads())
        tw = torch.from_numpy(w.copy()).requires_grad_()
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ty = torch.from_numpy(y)

        def torch_step():
            tw.grad = tx.grad = None
            torch.nn.functional.cross_entropy(tx @ tw.T, ty, reduction="sum").backward()

        impls["torch"] = torch_step
    return impls


def full_cases() -> List[Case]:
    """The exact full softmax against its bounds and PyTorch (issue 16's targets)."""
    return [
        Case(
            "full softmax + grads B=1024 d=128 V=1e5",
            "full softmax",
            lambda: full_case(1024, 128, 10**5),
            {BOUND: 1 / 1.2, "torch": 1.5},
            quick=False,
            subject="zn.full_softmax_loss_and_grad",
            labels={
                BOUND: "hardware bound (NumPy sgemm: x·Wᵀ, G·W, Gᵀ·x)",
                "torch": "PyTorch eager cross_entropy",
            },
        ),
        Case(
            "full softmax forward B=1024 d=128 V=1e5",
            "full softmax",
            lambda: full_case(1024, 128, 10**5, grad=False),
            {BOUND: 1 / 1.1},
            quick=False,
            subject="zn.full_softmax_loss",
            labels={BOUND: "hardware bound (NumPy sgemm: x·Wᵀ)"},
        ),
    ]


def pays_cases() -> List[Case]:
    """The sweep's points; only V = 10^4 is in ``--quick``."""
    labels = {
        "zipfnce": "zipfnce sampled softmax S=1024",
        S8192: "zipfnce sampled softmax S=8192",
        EXACT: "zipfnce exact full softmax (all V classes)",
        "tensorflow": "TensorFlow sampled softmax S=1024",
    }
    return [
        Case(
            f"where sampling pays V={v:.0e}".replace("e+0", "e"),
            "where sampling pays",
            lambda v=v: pays_case(v),
            quick=v == 10**4,
            plot=PLOT,
            x=v,
            subject="zipfnce sampled softmax S=1024",
            labels=labels,
        )
        for v in VOCABS
    ]


def time_figure(title: str, rs, plt):
    """The sweep's figure: seconds per training step of every implementation against V, log-log."""
    rs = sorted(rs, key=lambda r: r.case.x)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    impls = sorted({p for r in rs for p in r.seconds})
    for p in impls:
        pts = [(r.case.x, r.seconds[p]) for r in rs if p in r.seconds]
        ax.plot([v for v, _ in pts], [s for _, s in pts], marker="o", label=rs[0].case.label(p))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("V (classes)")
    ax.set_ylabel("seconds per step (loss + all gradients)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def crossover(rs) -> List[str]:
    """Report lines: at each V, how many times faster each sampled step is than the exact one."""
    out = []
    for r in sorted(rs, key=lambda r: r.case.x):
        e = r.seconds.get(EXACT)
        if e is None:
            out.append(f"- V={r.case.x:.0e}: exact step not timed (predicted > {EXACT_LIMIT_S:g} s)")
            continue
        parts = [f"{r.case.label(p)} {e / s:.1f}× faster" for p, s in r.seconds.items() if p != EXACT]
        out.append(f"- V={r.case.x:.0e}: exact step {e:.3g} s; " + "; ".join(parts))
    return out
