"""The benchmark cases, shared by ``python -m zipfnce bench`` and the pytest-benchmark suites in ``benches/``.

A case builds its inputs once and returns one callable per implementation: ``"zipfnce"`` always, and each
peer that is installed (``"tensorflow"``, ``"torch"``, ``"numpy"``). The figure of merit is the ratio
peer time / zipfnce time, measured in the same process with interleaved repeats. The optional peer frameworks
are listed in :data:`PEERS`; :func:`missing_peers` names those that cannot be imported here, whose rows the
suite then leaves out (the report says so).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

Impls = Dict[str, Callable[[], object]]

#: Keys of implementations that are not a peer framework: only the matrix products a loss step needs (a
#: hardware bound), only its gather of weight rows (a memory bound), and zipfnce's own TF-style function.
BOUND = "numpy sgemm bound"
GATHER = "numpy gather of the B·S rows"
DROP_IN = "zipfnce drop-in"

#: How the report names each implementation key (a case's ``labels`` may say it better for that case).
PEER_LABELS: Dict[str, str] = {
    "tensorflow": "TensorFlow",
    "torch": "PyTorch",
    "numpy": "NumPy",
    BOUND: "hardware bound (NumPy sgemm)",
    GATHER: "memory bound (NumPy gather of the B·S rows)",
    DROP_IN: "zipfnce drop-in (TF-style function)",
}


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
    #: What the "zipfnce" implementation is, in the report's sentences (e.g. "zipfnce.torch").
    subject: str = "zipfnce"
    #: Names for the report that replace :data:`PEER_LABELS` in this case (e.g. {"numpy": "the NumPy call"}).
    labels: Dict[str, str] = field(default_factory=dict)

    def label(self, impl: str) -> str:
        """How the report names implementation `impl` of this case."""
        return self.labels.get(impl, PEER_LABELS.get(impl, impl))


@dataclass(frozen=True)
class Peer:
    """An optional framework that the suite measures zipfnce against."""

    #: The name a user knows, e.g. "PyTorch".
    name: str
    #: The module the suite imports, e.g. "torch".
    module: str
    #: The command that adds it, e.g. "pip install torch".
    install: str
    #: Which rows of the report need it.
    rows: str
    #: Anything else worth knowing before installing it.
    note: str = ""


#: The optional peers of ``python -m zipfnce bench`` (NumPy is a dependency, hence always there).
PEERS: Tuple[Peer, ...] = (
    Peer(
        "TensorFlow",
        "tensorflow",
        "pip install tensorflow-cpu",
        "the samplers and the sampled softmax / NCE losses against tf.random and tf.nn",
        "the full tensorflow package works too",
    ),
    Peer(
        "PyTorch",
        "torch",
        "pip install torch",
        "InfoNCE against PyTorch eager and the zipfnce.torch module step",
        "the CPU-only build is enough; zipfnce[bench] leaves torch out because its default wheel is the "
        "large CUDA build",
    ),
)

#: Import outcome by module name: the module, or the reason it could not be imported.
_IMPORTS: Dict[str, Tuple[Optional[Any], str]] = {}


def peer_module(module: str) -> Optional[Any]:
    """The peer framework `module` (e.g. "torch"), imported once; None when it cannot be imported here."""
    if module not in _IMPORTS:
        if module == "tensorflow":
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            _IMPORTS[module] = (importlib.import_module(module), "")
        except Exception as e:  # not installed, or installed but broken: either way no rows against it
            _IMPORTS[module] = (None, f"{type(e).__name__}: {e}")
    return _IMPORTS[module][0]


def missing_peers() -> List[Tuple[Peer, str]]:
    """The peers of :data:`PEERS` that cannot be imported here, each with the import error."""
    return [(p, _IMPORTS[p.module][1]) for p in PEERS if peer_module(p.module) is None]


def _tf():
    return peer_module("tensorflow")


def _true_classes(batch: int, range_max: int, seed: int = 0) -> np.ndarray:
    # Log-uniform-ish labels, like real word ids.
    rng = np.random.default_rng(seed)
    return np.minimum(
        np.exp(rng.random((batch, 1)) * np.log1p(range_max)).astype(np.int64) - 1, range_max - 1
    )


def shared_sampler_case(num_sampled: int, range_max: int, unique: bool, batch: int = 1024) -> Impls:
    import zipfnce as zn

    tc = _true_classes(batch, range_max)
    s = zn.LogUniformSampler(range_max, seed=1)
    impls: Impls = {
        "zipfnce": lambda: s.sample(num_sampled, unique=unique, true_classes=tc),
        DROP_IN: lambda: zn.log_uniform_candidate_sampler(tc, 1, num_sampled, unique, range_max),
    }
    tf = _tf()
    if tf is not None:
        tct = tf.constant(tc)
        impls["tensorflow"] = lambda: tf.random.log_uniform_candidate_sampler(
            tct, 1, num_sampled, unique, range_max
        )
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


def _loss_data(batch: int, dim: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((vocab, dim), dtype=np.float32) * 0.05).astype(np.float32)
    b = (rng.standard_normal(vocab, dtype=np.float32) * 0.01).astype(np.float32)
    x = rng.standard_normal((batch, dim), dtype=np.float32)
    labels = _true_classes(batch, vocab, seed)
    return w, b, x, labels


def sampled_loss_case(
    kind: str, batch: int, dim: int, vocab: int, num_sampled: int, per_row: bool = False
) -> Impls:
    """Loss and all gradients of sampled softmax / NCE against TensorFlow (tf.function + GradientTape, same
    candidates) and against the three NumPy/OpenBLAS products of the step (x·Wsᵀ, G·Ws, Gᵀ·x); with per-row
    candidates also against the NumPy gather of the rows the step reads."""
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
    if per_row:
        # Each row reads its own candidates' weight rows: the gather of all B·S rows is the step's memory
        # traffic, a lower bound that the three small products above do not capture.
        flat = sv.ids.ravel()
        impls[GATHER] = lambda: w[flat]
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
    return peer_module("torch")


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
        Case(
            "InfoNCE symmetric + grads B=4096 d=128", "info_nce", lambda: info_nce_case(4096, 128, True), {}
        ),
    ]


def all_cases() -> List[Case]:
    # Issue 16: the exact softmax and the "where sampling pays" sweep (pays.py imports this module).
    from .pays import full_cases, pays_cases

    return (
        sampler_cases()
        + loss_cases()
        + info_nce_cases()
        + adapter_cases()
        + sampler_sweeps()
        + loss_sweeps()
        + full_cases()
        + pays_cases()
    )


# ------------------------------------------------------------------------------------------------------------
# Framework adapters (issue 5)


def torch_step_impls(
    batch: int = 1024,
    dim: int = 128,
    vocab: int = 10**6,
    num_sampled: int = 8192,
    dense: bool = True,
    multinomial: bool = True,
) -> Impls:
    """One sampled-softmax training step (candidates, loss, all gradients; no optimiser step) through
    ``zipfnce.torch.SampledSoftmaxLoss``, through the NumPy call it wraps, and in pure PyTorch.

    Keys: ``"zipfnce.torch sparse"`` (the module with sparse weight gradients), ``"numpy"`` (sampler +
    ``sampled_softmax_loss_and_grad``), ``"zipfnce.torch dense"`` (dense [V, d] weight gradient),
    ``"torch"`` (log-uniform draw by inverse CDF, ``F.embedding(sparse=True)``, ``F.cross_entropy``) and
    ``"torch multinomial"`` (the same with ``torch.multinomial`` drawing unique candidates).
    """
    import math

    import torch
    import torch.nn.functional as F

    import zipfnce as zn
    import zipfnce.torch as znt

    torch.manual_seed(0)
    lab_np = _true_classes(batch, vocab)
    lab = torch.from_numpy(lab_np)
    x = torch.randn(batch, dim, requires_grad=True)
    mods = {"zipfnce.torch sparse": znt.SampledSoftmaxLoss(vocab, dim, num_sampled, sparse=True,
                                                           sampler=zn.LogUniformSampler(vocab, seed=1))}  # fmt: skip
    if dense:
        mods["zipfnce.torch dense"] = znt.SampledSoftmaxLoss(
            vocab, dim, num_sampled, sampler=zn.LogUniformSampler(vocab, seed=1)
        )
    mod = mods["zipfnce.torch sparse"]
    w_np, b_np, x_np = mod.weight.detach().numpy(), mod.bias.detach().numpy(), x.detach().numpy()
    np_sampler = zn.LogUniformSampler(vocab, seed=1)

    def numpy_step():
        sv = np_sampler.sample(num_sampled, true_classes=lab_np)
        return zn.sampled_softmax_loss_and_grad(w_np, b_np, lab_np, x_np, num_sampled, vocab, sampled_values=sv,
                                                grad_loss=1.0 / batch)  # fmt: skip

    def module_step(m):
        def step():
            m.weight.grad = m.bias.grad = x.grad = None
            m(x, lab).backward()

        return step

    # Pure PyTorch: its own parameters, same shapes and values.
    w_t = torch.nn.Parameter(mod.weight.detach().clone())
    b_t = torch.nn.Parameter(mod.bias.detach().clone()[:, None])  # [V, 1]: a table F.embedding can gather
    log_range = math.log1p(vocab)
    probs = None
    if multinomial:
        k = torch.arange(vocab, dtype=torch.float64)
        probs = (torch.log((k + 2) / (k + 1)) / log_range).float()

    def torch_step(use_multinomial: bool):
        def step():
            w_t.grad = b_t.grad = x.grad = None
            if use_multinomial:
                ids = torch.multinomial(probs, num_sampled, replacement=False)
            else:
                ids = (
                    ((torch.rand(num_sampled, dtype=torch.float64) * log_range).exp() - 1)
                    .long()
                    .clamp_(0, vocab - 1)
                )
            p_s = torch.log((ids + 2).double() / (ids + 1).double()) / log_range
            p_t = torch.log((lab + 2).double() / (lab + 1).double()) / log_range
            log_q_s = torch.log(p_s * num_sampled).float()
            log_q_t = torch.log(p_t * num_sampled).float()
            w_true = F.embedding(lab, w_t, sparse=True)[:, 0]  # [B, d]
            w_s = F.embedding(ids, w_t, sparse=True)  # [S, d]
            b_true = F.embedding(lab, b_t, sparse=True)[:, 0, 0]
            b_s = F.embedding(ids, b_t, sparse=True)[:, 0]
            true_logit = (x * w_true).sum(1) + b_true - log_q_t[:, 0]
            samp_logits = x @ w_s.t() + b_s - log_q_s
            samp_logits = samp_logits.masked_fill(lab == ids[None, :], float("-inf"))  # accidental hits
            logits = torch.cat([true_logit[:, None], samp_logits], 1)
            F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long)).backward()

        return step

    impls: Impls = {"numpy": numpy_step}
    for k, m in mods.items():
        impls[k] = module_step(m)
    impls["torch"] = torch_step(False)
    if multinomial:
        impls["torch multinomial"] = torch_step(True)
    return impls


def framework_step_impls(
    batch: int = 1024, dim: int = 128, vocab: int = 10**6, num_sampled: int = 8192, frameworks=("jax", "tf")
) -> Impls:
    """The same step (fixed candidates, mean loss, all gradients) through ``zipfnce.jax`` (``jax.jit`` of
    ``value_and_grad``; the weight gradient is a dense [V, d] array, as JAX gradients are), ``zipfnce.tf``
    and ``tf.nn.sampled_softmax_loss`` (``tf.function`` with a ``GradientTape``), and the NumPy call."""
    import zipfnce as zn

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((vocab, dim), dtype=np.float32) * 0.05).astype(np.float32)
    b = np.zeros(vocab, np.float32)
    x = rng.standard_normal((batch, dim), dtype=np.float32)
    lab = _true_classes(batch, vocab)
    sv = zn.LogUniformSampler(vocab, seed=1).sample(num_sampled, true_classes=lab, seed=2)
    impls: Impls = {
        "numpy": lambda: zn.sampled_softmax_loss_and_grad(
            w, b, lab, x, num_sampled, vocab, sampled_values=sv, grad_loss=1.0 / batch
        )
    }
    if "jax" in frameworks:
        import jax
        import jax.numpy as jnp

        import zipfnce.jax as znj

        svj = tuple(jnp.asarray(a) for a in sv[:3])
        wj, bj, xj, lj = jnp.asarray(w), jnp.asarray(b), jnp.asarray(x), jnp.asarray(lab)

        def objective(w_, b_, x_):
            return jnp.mean(znj.sampled_softmax_loss(w_, b_, lj, x_, num_sampled, vocab, sampled_values=svj))

        g = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))
        impls["zipfnce.jax"] = lambda: jax.block_until_ready(g(wj, bj, xj))
    if "tf" in frameworks:
        tf = _tf()
        if tf is not None:
            import zipfnce.tf as zntf

            wv, bv = tf.Variable(w), tf.Variable(b)
            xt, lt = tf.constant(x), tf.constant(lab)
            svt = tuple(tf.constant(a) for a in sv[:3])

            def tf_step(fn):
                @tf.function
                def step():
                    with tf.GradientTape() as tape:
                        tape.watch(xt)
                        loss = tf.reduce_mean(fn(wv, bv, lt, xt, num_sampled, vocab, sampled_values=svt))
                    return loss, tape.gradient(loss, [wv, bv, xt])

                return step

            impls["zipfnce.tf"] = tf_step(zntf.sampled_softmax_loss)
            impls["tensorflow"] = tf_step(tf.nn.sampled_softmax_loss)
    return impls


def _adapter_case(dense: bool, multinomial: bool) -> Impls:
    impls = torch_step_impls(dense=dense, multinomial=multinomial)
    # The report's convention: "zipfnce" is the implementation measured, the other keys are its peers.
    impls["zipfnce"] = impls.pop("zipfnce.torch sparse")
    return impls


def adapter_cases() -> List[Case]:
    """The PyTorch adapter's training step (B=1024, d=128, V=1e6, S=8192): ratio against the NumPy call it
    wraps (issue: overhead under 10%, i.e. numpy / zipfnce >= 0.91) and against pure PyTorch (>= 3x)."""
    if _torch() is None:
        return []
    labels = {
        "numpy": "the NumPy call it wraps",
        "torch": "pure PyTorch",
        "zipfnce.torch dense": "the same module with a dense weight gradient",
        "torch multinomial": "pure PyTorch drawing with torch.multinomial",
    }
    return [
        Case(
            "torch module step B=1024 d=128 V=1e6 S=8192",
            "adapters",
            lambda: _adapter_case(dense=False, multinomial=False),
            {"numpy": 0.91, "torch": 3},
            1024,
            "rows",
            subject="zipfnce.torch",
            labels=labels,
        ),
        Case(
            "torch module step, with dense-grad and multinomial variants",
            "adapters",
            lambda: _adapter_case(dense=True, multinomial=True),
            {"numpy": 0.91, "torch": 3},
            1024,
            "rows",
            quick=False,
            subject="zipfnce.torch",
            labels=labels,
        ),
    ]
