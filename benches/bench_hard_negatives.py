"""Hard-negative mining (num_hard_negatives) against the plain loss, in one process, cases interleaved.

InfoNCE: ``zn.info_nce_loss_and_grad(q, k, negatives=n, key_ids=ids)`` with and without ``num_hard_negatives=h``
(float32). Sampled softmax: ``zn.sampled_softmax_loss_and_grad`` with shared candidates, with and without
``num_hard_negatives=h``. Each repetition runs every case once, in turn, so load on a shared machine hits
them alike; the figures are medians, and the ratio is the median of the per-repetition ratios.

    python benches/bench_hard_negatives.py --threads 2 --reps 9
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np
import zipfnce as zn


def interleaved(cases: dict, reps: int) -> dict:
    for f in cases.values():
        f()
    t = {name: [] for name in cases}
    for _ in range(reps):
        for name, f in cases.items():
            s = time.perf_counter()
            f()
            t[name].append(time.perf_counter() - s)
    return t


def report(label: str, t: dict) -> None:
    (a, ta), (b, tb) = t.items()
    ratio = float(np.median(np.array(tb) / np.array(ta)))
    print(
        f"{label}: {a} {np.median(ta) * 1e3:.1f} ms, {b} {np.median(tb) * 1e3:.1f} ms, ratio {b}/{a} {ratio:.2f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    zn.set_num_threads(args.threads)
    print(f"threads {args.threads}, ZIPFNCE_SIMD={os.environ.get('ZIPFNCE_SIMD', 'default')}")
    rng = np.random.default_rng(0)
    for b, n, d, h in [(1024, 0, 64, 16), (1024, 0, 64, 128), (4096, 0, 128, 16), (4096, 0, 128, 128),
                       (4096, 4096, 128, 128)]:  # fmt: skip
        q = rng.normal(size=(b, d)).astype(np.float32)
        k = rng.normal(size=(b, d)).astype(np.float32)
        neg = rng.normal(size=(n, d)).astype(np.float32) if n else None
        ids = rng.integers(0, 10**6, b)
        t = interleaved(
            {
                "plain": functools.partial(zn.info_nce_loss_and_grad, q, k, negatives=neg, key_ids=ids),
                "hard": functools.partial(
                    zn.info_nce_loss_and_grad, q, k, negatives=neg, key_ids=ids, num_hard_negatives=h
                ),
            },
            args.reps,
        )
        report(f"InfoNCE B={b} N={n} d={d} h={h}", t)
    v, d = 100_000, 128
    w = rng.normal(size=(v, d)).astype(np.float32) * 0.1
    for b, s, h in [(1024, 4096, 64), (4096, 8192, 128)]:
        x = rng.normal(size=(b, d)).astype(np.float32)
        lab = rng.integers(0, v, b)
        cs = zn.LogUniformSampler(v, seed=1).sample(s, true_classes=lab, seed=2)
        t = interleaved(
            {
                "plain": functools.partial(zn.sampled_softmax_loss_and_grad, w, None, lab, x, s, v, 1, cs),
                "hard": functools.partial(
                    zn.sampled_softmax_loss_and_grad, w, None, lab, x, s, v, 1, cs, num_hard_negatives=h
                ),
            },
            args.reps,
        )
        report(f"sampled softmax B={b} S={s} d={d} h={h}", t)


if __name__ == "__main__":
    main()
