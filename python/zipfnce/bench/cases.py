"""The benchmark cases, shared by ``python -m zipfnce bench`` and the pytest-benchmark suites in ``benches/``.

A case builds its inputs once and returns one callable per implementation: ``"zipfnce"`` always, and each
peer that is installed (``"tensorflow"``, ``"torch"``, ``"numpy"``). The figure of merit is the ratio
peer time / zipfnce time, measured in the same process with interleaved repeats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import numpy as np

Impls = Dict[str, Callable[[], object]]


@dataclass
class Case:
    name: str
    group: str
    make: Callable[[], Impls]
    #: What the issue asks of the ratio against each peer (for the report), e.g. {"tensorflow": 20}.
    targets: Dict[str, float] = field(default_factory=dict)
    #: Work per call, for throughput figures (e.g. draws).
    work: float = 0.0
    work_unit: str = ""
    #: Part of the --quick suite.
    quick: bool = True
    #: For sweeps: the plot this case is a point of, and its x value (e.g. the vocabulary size).
    plot: str = ""
    x: float = 0.0


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf  # noqa: F401
    except Exception:
        return None
    return tf


def _true_classes(batch: int, range_max: int, seed: int = 0) -> np.ndarray:
    # Log-uniform-ish labels, like real word ids.
    rng = np.random.default_rng(seed)
    return np.minimum(np.exp(rng.random((batch, 1)) * np.log1p(range_max)).astype(np.int64) - 1, range_max - 1)


def shared_sampler_case(num_sampled: int, range_max: int, unique: bool, batch: int = 1024) -> Impls:
    import zipfnce as zn

    tc = _true_classes(batch, range_max)
    s = zn.LogUniformSampler(range_max, seed=1)
    impls: Impls = {
        "zipfnce": lambda: s.sample(num_sampled, unique=unique, true_classes=tc),
        "zipfnce drop-in": lambda: zn.log_uniform_candidate_sampler(tc, 1, num_sampled, unique, range_max),
    }
    tf = _tf()
    if tf is not None:
        tct = tf.constant(tc)
        impls["tensorflow"] = lambda: tf.random.log_uniform_candidate_sampler(tct, 1, num_sampled, unique, range_max)
    return impls


def draws_case(n: int, range_max: int) -> Impls:
    import zipfnce as zn

    s = zn.LogUniformSampler(range_max, seed=1)
    rng = np.random.default_rng(0)
    log_range = np.log1p(range_max)

    def numpy_inverse_cdf():
        return (np.exp(rng.random(n) * log_range) - 1).astype(np.int64)

    return {"zipfnce": lambda: s.sample(n, unique=False), "numpy": numpy_inverse_cdf}


def per_row_case(batch: int, num_sampled: int, range_max: int) -> Impls:
    import zipfnce as zn

    tc = _true_classes(batch, range_max)
    s = zn.LogUniformSampler(range_max, seed=1)
    return {"zipfnce": lambda: s.sample_per_row(tc, num_sampled, unique=True)}


def sampler_cases() -> List[Case]:
    return [
        Case(
            "log-uniform unique S=8192 V=1e6",
            "samplers",
            lambda: shared_sampler_case(8192, 10**6, True),
            {"tensorflow": 20},
            8192,
            "candidates",
        ),
        Case(
            "log-uniform unique S=50000 V=1e5",
            "samplers",
            lambda: shared_sampler_case(50_000, 10**5, True),
            {"tensorflow": 10},
            50_000,
            "candidates",
        ),
        Case(
            "log-uniform non-unique S=65536 V=1e6",
            "samplers",
            lambda: shared_sampler_case(65_536, 10**6, False),
            {"tensorflow": 10},
            65_536,
            "candidates",
        ),
        Case(
            "log-uniform unique S=64 V=1e5 (small call)",
            "samplers",
            lambda: shared_sampler_case(64, 10**5, True),
            {"tensorflow": 5},
            64,
            "candidates",
        ),
        Case(
            "1e6 log-uniform draws vs NumPy inverse CDF",
            "samplers",
            lambda: draws_case(10**6, 10**6),
            {"numpy": 4},
            10**6,
            "draws",
        ),
        Case(
            "per-row B=4096 S=64 unique V=1e6",
            "samplers",
            lambda: per_row_case(4096, 64, 10**6),
            {},
            4096 * 64,
            "candidates",
        ),
    ]


def sampler_sweeps() -> List[Case]:
    """Speed-up over TensorFlow as the vocabulary and the number of samples grow (unique log-uniform)."""
    out = []
    for v in (10**4, 10**5, 10**6, 10**7, 10**8):
        out.append(
            Case(
                f"sweep V={v:.0e} S=4096 unique",
                "sampler sweeps",
                lambda v=v: shared_sampler_case(4096, v, True),
                work=4096,
                work_unit="candidates",
                quick=v in (10**4, 10**6, 10**8),
                plot="sampler speed-up vs vocabulary (S=4096, unique)",
                x=v,
            )
        )
    for n in (64, 512, 4096, 32768):
        out.append(
            Case(
                f"sweep S={n} V=1e6 unique",
                "sampler sweeps",
                lambda n=n: shared_sampler_case(n, 10**6, True),
                work=n,
                work_unit="candidates",
                quick=n in (64, 4096, 32768),
                plot="sampler speed-up vs samples (V=1e6, unique)",
                x=n,
            )
        )
    return out


BOUND = "numpy sgemm bound"


def _loss_data(batch: int, dim: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((vocab, dim), dtype=np.float32) * 0.05).astype(np.float32)
    b = (rng.standard_normal(vocab, dtype=np.float32) * 0.01).astype(np.float32)
    x = rng.standard_normal((batch, dim), dtype=np.float32)
    labels = _true_classes(batch, vocab, seed)
    return w, b, x, labels


def sampled_loss_case(kind: str, batch: int, dim: int, vocab: int, num_sampled: int, per_row: bool = False) -> Impls:
    """Loss and all gradients of sampled softmax / NCE against TensorFlow (tf.function + GradientTape, same
    candidates) and against the three NumPy/OpenBLAS products of the step (x·Wsᵀ, G·Ws, Gᵀ·x)."""
    import zipfnce as zn

    w, b, x, labels = _loss_data(batch, dim, vocab)
    sampler = zn.LogUniformSampler(vocab, seed=1)
    if per_row:
        sv = sampler.sample_per_row(labels, num_sampled, seed=2)
    else:
        sv = sampler.sample(num_sampled, true_classes=labels, seed=2)
    fn = zn.sampled_softmax_loss_and_grad if kind == "softmax" else zn.nce_loss_and_grad
    impls: Impls = {"zipfnce": lambda: fn(w, b, labels, x, num_sampled, vocab, sampled_values=sv)}
    ws = w[sv.ids[: max(1, num_sampled)]] if not per_row else w[sv.ids[0]]
    g = np.random.default_rng(1).standard_normal((batch, num_sampled), dtype=np.float32)

    def bound():
        x @ ws.T
        g @ ws
        g.T @ x

    impls[BOUND] = bound
    tf = _tf()
    if tf is not None and not per_row:
        tw, tb = tf.Variable(w), tf.Variable(b)
        tx, tl = tf.constant(x), tf.constant(labels)
        tsv = tuple(tf.constant(a) for a in (sv.ids, sv.true_expected_count, sv.sampled_expected_count))
        tf_loss = tf.nn.sampled_softmax_loss if kind == "softmax" else tf.nn.nce_loss

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(tx)
                loss = tf_loss(tw, tb, tl, tx, num_sampled, vocab, sampled_values=tsv)
                total = tf.reduce_sum(loss)
            gw, gb, gx = tape.gradient(total, [tw, tb, tx])
            return loss, gw.values, gb.values, gx

        impls["tensorflow"] = lambda: step()[0].numpy()
    return impls


def loss_cases() -> List[Case]:
    return [
        Case(
            "sampled softmax + grads B=1024 d=128 V=1e6 S=8192",
            "losses",
            lambda: sampled_loss_case("softmax", 1024, 128, 10**6, 8192),
            {"tensorflow": 5, BOUND: 1 / 1.3},
        ),
        Case(
            "NCE + grads B=1024 d=128 V=1e6 S=8192",
            "losses",
            lambda: sampled_loss_case("nce", 1024, 128, 10**6, 8192),
            {"tensorflow": 5, BOUND: 1 / 1.3},
        ),
        Case(
            "sampled softmax per-row B=1024 d=128 V=1e6 S=256",
            "losses",
            lambda: sampled_loss_case("softmax", 1024, 128, 10**6, 256, per_row=True),
            {},
        ),
    ]


def loss_sweeps() -> List[Case]:
    """zipfnce's time against the NumPy sgemm bound as the number of samples grows (sampled softmax)."""
    return [
        Case(
            f"sweep softmax S={n} V=1e6",
            "loss sweeps",
            lambda n=n: sampled_loss_case("softmax", 1024, 128, 10**6, n),
            quick=n in (1024, 8192),
            plot="sampled softmax speed-up vs samples (B=1024, d=128, V=1e6)",
            x=n,
        )
        for n in (1024, 4096, 8192, 16384)
    ]


def _torch():
    try:
        import torch
    except Exception:
        return None
    return torch


def info_nce_case(batch: int, dim: int, symmetric: bool = False) -> Impls:
    """InfoNCE loss and gradients with in-batch negatives, against PyTorch eager
    (cross_entropy(q @ kᵀ / T) + backward, same threads) and the three NumPy products (q·kᵀ, G·k, Gᵀ·q)."""
    import zipfnce as zn

    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, dim), dtype=np.float32)
    k = rng.standard_normal((batch, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    impls: Impls = {"zipfnce": lambda: zn.info_nce_loss_and_grad(q, k, temperature=0.1, symmetric=symmetric)}
    g = rng.standard_normal((batch, batch), dtype=np.float32)

    def bound():
        q @ k.T
        g @ k
        g.T @ q

    impls[BOUND] = bound
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(zn.get_num_threads())
        tq = torch.from_numpy(q.copy()).requires_grad_()
        tk = torch.from_numpy(k.copy()).requires_grad_()
        target = torch.arange(batch)

        def torch_step():
            tq.grad = tk.grad = None
            logits = tq @ tk.T / 0.1
            loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            if symmetric:
                loss = (loss + torch.nn.functional.cross_entropy(logits.T, target, reduction="sum")) / 2
            loss.backward()

        impls["torch"] = torch_step
    return impls


def info_nce_cases() -> List[Case]:
    return [
        Case(
            "InfoNCE + grads B=4096 d=128",
            "info_nce",
            lambda: info_nce_case(4096, 128),
            {"torch": 2.5, BOUND: 1 / 1.3},
        ),
        Case("InfoNCE symmetric + grads B=4096 d=128", "info_nce", lambda: info_nce_case(4096, 128, True), {}),
    ]


def all_cases() -> List[Case]:
    return sampler_cases() + loss_cases() + info_nce_cases() + sampler_sweeps() + loss_sweeps()
