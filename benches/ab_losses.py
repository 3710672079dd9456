"""Two builds of zipfnce's fused losses in one process, interleaved rounds (as ``ab_versions.py`` for samplers).

Absolute times on a shared VM move by tens of percent from one minute to the next, so an earlier build
(a copy of an installed ``zipfnce`` package directory) is loaded under the name ``zipfnce_old`` next to the
one on ``sys.path`` and both are timed in alternating rounds (a 20 ms pause before each turn, medians over
rounds). Both get the same arrays and the same candidates (a tuple, so neither build draws).

    cp -r "$(python -c 'import zipfnce, os; print(os.path.dirname(zipfnce.__file__))')" /tmp/zipfnce_before
    python benches/ab_losses.py --old /tmp/zipfnce_before
    ZIPFNCE_SIMD=baseline python benches/ab_losses.py --old /tmp/zipfnce_before

Cases: ``sampled_softmax_loss_and_grad`` (B=1024, d=128, V=1e6, S=8192, shared unique log-uniform
candidates) and ``info_nce_loss_and_grad`` (B=4096, d=128, in-batch negatives), float32.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_versions import interleaved_medians, load_old  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="directory of an earlier build's zipfnce package")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--batch", type=int, default=1024, help="rows of the sampled-softmax case")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--num-sampled", type=int, default=8192)
    ap.add_argument("--range-max", type=float, default=1e6)
    ap.add_argument("--infonce-batch", type=int, default=4096)
    ap.add_argument("--only", choices=["sampled", "infonce"], help="time one case only")
    args = ap.parse_args()

    import numpy as np
    import zipfnce as new

    old = load_old(args.old)
    rng = np.random.default_rng(0)
    d, b, s, v = args.dim, args.batch, args.num_sampled, int(args.range_max)
    cases = {}
    if args.only in (None, "sampled"):
        w = (rng.standard_normal((v, d)) * 0.05).astype(np.float32)
        bias = (rng.standard_normal(v) * 0.01).astype(np.float32)
        x = rng.standard_normal((b, d)).astype(np.float32)
        labels = rng.integers(0, v, (b, 1))
        cs = new.LogUniformSampler(v, seed=1).sample(s, true_classes=labels)
        sv = (np.asarray(cs.ids), np.asarray(cs.true_expected_count), np.asarray(cs.sampled_expected_count))

        def sampled(m):
            return lambda: m.sampled_softmax_loss_and_grad(w, bias, labels, x, s, v, sampled_values=sv)

        cases[f"sampled_softmax_loss_and_grad B={b} d={d} V={v} S={s}"] = (sampled(old), sampled(new))
    if args.only in (None, "infonce"):
        bi = args.infonce_batch
        q = rng.standard_normal((bi, d)).astype(np.float32)
        k = rng.standard_normal((bi, d)).astype(np.float32)

        def infonce(m):
            return lambda: m.info_nce_loss_and_grad(q, k)

        cases[f"info_nce_loss_and_grad B={bi} d={d}"] = (infonce(old), infonce(new))

    simd = os.environ.get("ZIPFNCE_SIMD", "default")
    for label, (fo, fn) in cases.items():
        calls = {"old": fo, "new": fn}
        a, c = fo(), fn()
        # The same inputs give the same loss to rounding in both builds (a cheap check that both ran the case).
        np.testing.assert_allclose(np.asarray(a.loss), np.asarray(c.loss), rtol=1e-4, atol=1e-5)
        med = interleaved_medians(calls, args.rounds)
        print(
            f"{label} [ZIPFNCE_SIMD={simd}, {args.rounds} rounds]: old {med['old'] * 1e3:.2f} ms, "
            f"new {med['new'] * 1e3:.2f} ms (new/old {med['new'] / med['old']:.3f})"
        )


if __name__ == "__main__":
    main()
