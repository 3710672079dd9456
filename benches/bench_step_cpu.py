"""The sampled softmax step against its three matrix products on one core, in process CPU time.

Issue 18, item 4's ratio (step time / the sgemm bound) measured so that other processes on a shared machine
disturb it least: zipfnce and NumPy/OpenBLAS each run on one thread (``ZIPFNCE_NUM_THREADS=1``,
``OPENBLAS_NUM_THREADS=1``, set by this script before either library loads) and each call is timed by the
process CPU time it used, not the wall clock (a call that waits for a core is not charged for the wait). The
contenders take turns, 10 ms apart, and the figures are medians. With ``--old DIR`` (a copy of an earlier
build's ``zipfnce`` package directory) that build is timed in the same turns, and the script checks that
both builds give bit-identical loss and gradients.

Bound: x·Wsᵀ, G·Ws and Gᵀ·x (B = 1024, d = 128, S candidates) on rows gathered beforehand.

    python benches/bench_step_cpu.py [--sizes 1024,4096,8192] [--rounds 15] [--old DIR] [--nce]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("ZIPFNCE_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096,8192")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--old", default="", help="directory of an earlier build's zipfnce package")
    ap.add_argument("--nce", action="store_true", help="time nce_loss_and_grad instead")
    args = ap.parse_args()

    import numpy as np
    import zipfnce as new
    from zipfnce.bench.cases import _loss_data

    mods = {"new": new}
    if args.old:
        from ab_versions import load_old

        mods = {"old": load_old(args.old), "new": new}
    name = "nce_loss_and_grad" if args.nce else "sampled_softmax_loss_and_grad"
    v, b, d = 10**6, 1024, 128
    w, bias, x, labels = _loss_data(b, d, v)
    print(
        f"{name}, B={b} d={d} V=1e6, float32, 1 thread each, ZIPFNCE_SIMD={new.simd_level()}, "
        f"{args.rounds} rounds, process CPU ms (medians)"
    )
    for s in [int(t) for t in args.sizes.split(",")]:
        sv = new.LogUniformSampler(v, seed=1).sample(s, true_classes=labels, seed=2)
        svt = (np.asarray(sv.ids), np.asarray(sv.true_expected_count), np.asarray(sv.sampled_expected_count))
        ws = w[sv.ids]
        g = np.random.default_rng(1).standard_normal((b, s), dtype=np.float32)

        def bound(ws=ws, g=g):
            x @ ws.T
            g @ ws
            g.T @ x

        calls = {
            k: (lambda m=m, s=s, svt=svt: getattr(m, name)(w, bias, labels, x, s, v, sampled_values=svt))
            for k, m in mods.items()
        }
        calls["bound"] = bound
        same = ""
        if "old" in calls:
            ro, rn = calls["old"](), calls["new"]()
            fields = ("loss", "grad_inputs")
            ok = all(np.array_equal(np.asarray(getattr(ro, f)), np.asarray(getattr(rn, f))) for f in fields)
            ok = ok and np.array_equal(np.asarray(ro.grad_weights.values), np.asarray(rn.grad_weights.values))
            same = f", old and new bit-identical: {ok}"
        times = {k: [] for k in calls}
        for r in range(args.rounds):
            for k in list(calls) if r % 2 else list(calls)[::-1]:
                time.sleep(0.01)
                t = time.process_time()
                calls[k]()
                times[k].append(time.process_time() - t)
        med = {k: statistics.median(t) * 1e3 for k, t in times.items()}
        text = ", ".join(f"{k} {t:.2f}" for k, t in med.items())
        ratios = ", ".join(f"{k}/bound {med[k] / med['bound']:.2f}×" for k in mods)
        print(f"S={s}: {text}; {ratios}{same}")


if __name__ == "__main__":
    main()
