"""The two paths of the JAX and TensorFlow adapters on the CPU: a training step (loss and every gradient) of
``zipfnce.jax`` with ``backend="callback"`` (native kernels through ``jax.pure_callback``) against
``backend="jax"`` (``jax.numpy`` under ``jit``), and of ``zipfnce.tf`` with ``backend="native"`` against
``backend="tf"`` (TensorFlow operations in a ``tf.function``), at a few sizes, float32, in one process with
interleaved rounds (medians). The figures choose what ``backend="auto"`` does on the CPU (BENCHMARKS.md).

    python benches/bench_backends.py jax [--rounds 7]
    python benches/bench_backends.py tf  [--rounds 7]

(JAX and TensorFlow run in separate processes.)
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_versions import interleaved_medians  # noqa: E402

# (name, B, S, d, V): sampled softmax with S shared candidates; InfoNCE uses B and d (in-batch negatives).
SIZES = [
    ("small", 64, 256, 64, 10_000),
    ("medium", 256, 1024, 128, 100_000),
    ("medium-large", 512, 2048, 128, 100_000),
    ("large", 1024, 4096, 128, 100_000),
]


def _data(b, s, d, v):
    import zipfnce as zn

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((v, d)) * 0.05).astype(np.float32)
    x = rng.standard_normal((b, d)).astype(np.float32)
    lab = rng.integers(0, v, (b, 1))
    sv = zn.LogUniformSampler(v, seed=1).sample(s, true_classes=lab, seed=2)
    return w, x, lab, (sv.ids, sv.true_expected_count, sv.sampled_expected_count)


def _jax_case(b, s, d, v, rounds):
    import jax
    import jax.numpy as jnp
    import zipfnce.jax as znj

    w, x, lab, svt = _data(b, s, d, v)
    wj, xj = jnp.asarray(w), jnp.asarray(x)
    svj = tuple(jnp.asarray(a) for a in svt)
    k = jnp.asarray(np.roll(x, 1, axis=0) + 0.1)

    def sampled_step(be):
        def loss(w_, x_, sv_):
            return jnp.mean(znj.sampled_softmax_loss(w_, None, lab, x_, s, v, sampled_values=sv_, backend=be))

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return lambda: jax.block_until_ready(step(wj, xj, svj))

    def info_step(be):
        step = jax.jit(
            jax.value_and_grad(lambda q_, k_: jnp.mean(znj.info_nce_loss(q_, k_, backend=be)), (0, 1))
        )
        return lambda: jax.block_until_ready(step(xj, k))

    a = interleaved_medians({be: sampled_step(be) for be in ("callback", "jax")}, rounds)
    i = interleaved_medians({be: info_step(be) for be in ("callback", "jax")}, rounds)
    return a, i


def bench_jax(rounds):
    rows = []
    for name, b, s, d, v in SIZES:
        a, i = _jax_case(b, s, d, v, rounds)
        rows.append(("sampled_softmax", name, f"B={b} S={s} d={d} V={v:.0e}", b * (s + 1) * d, a))
        rows.append(("info_nce", name, f"B={b} d={d}", b * b * d, i))
    return rows, ("callback", "jax")


def _tf_case(b, s, d, v, rounds):
    import tensorflow as tf
    import zipfnce.tf as zntf

    w, x, lab, svt = _data(b, s, d, v)
    wv, xt = tf.Variable(w), tf.constant(x)
    k = tf.constant(np.roll(x, 1, axis=0) + 0.1)

    def sampled_step(be):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(xt)
                loss = zntf.sampled_softmax_loss(wv, None, lab, xt, s, v, sampled_values=svt, backend=be)
                loss = tf.reduce_mean(loss)
            gw, gx = tape.gradient(loss, [wv, xt])
            return loss, gw.values, gx

        return lambda: [t.numpy() for t in step()]

    def info_step(be):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([xt, k])
                loss = tf.reduce_mean(zntf.info_nce_loss(xt, k, backend=be))
            return [loss] + tape.gradient(loss, [xt, k])

        return lambda: [t.numpy() for t in step()]

    a = interleaved_medians({be: sampled_step(be) for be in ("native", "tf")}, rounds)
    i = interleaved_medians({be: info_step(be) for be in ("native", "tf")}, rounds)
    return a, i


def bench_tf(rounds):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    rows = []
    for name, b, s, d, v in SIZES:
        a, i = _tf_case(b, s, d, v, rounds)
        rows.append(("sampled_softmax", name, f"B={b} S={s} d={d} V={v:.0e}", b * (s + 1) * d, a))
        rows.append(("info_nce", name, f"B={b} d={d}", b * b * d, i))
    return rows, ("native", "tf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("framework", choices=["jax", "tf"])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rows, (a, b) = (bench_jax if args.framework == "jax" else bench_tf)(args.rounds)
    print(f"| loss | size | shape | work B·(S+1)·d or B·B·d | {a} ms | {b} ms | {a} / {b} |")
    print("|---|---|---|---:|---:|---:|---:|")
    for loss, name, shape, work, t in rows:
        print(
            f"| {loss} | {name} | {shape} | {work:.2e} | {t[a] * 1e3:.3f} | {t[b] * 1e3:.3f} | {t[a] / t[b]:.2f} |"
        )


if __name__ == "__main__":
    main()
