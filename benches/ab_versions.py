"""Two builds of zipfnce and TensorFlow in one process: a shared unique draw, interleaved rounds.

Absolute times on a shared VM move by tens of percent from one minute to the next; comparing two builds in
separate processes minutes apart mostly measures that. This loads an earlier build (a copy of an installed
``zipfnce`` package directory, e.g. taken from site-packages before ``pip install .``) under the name
``zipfnce_old`` next to the installed one, and times both and TensorFlow in alternating rounds, as the
runner of ``python -m zipfnce bench`` does (a 20 ms pause before each turn, medians over rounds).

    cp -r "$(python -c 'import zipfnce, os; print(os.path.dirname(zipfnce.__file__))')" /tmp/zipfnce_before
    pip install .
    python benches/ab_versions.py --old /tmp/zipfnce_before --num-sampled 8192 --range-max 1e6
    python benches/ab_versions.py --old /tmp/zipfnce_before --sampler zipf --exponent 1.1

TensorFlow takes part for the log-uniform sampler (it has no Zipf sampler).

With ``--after-idle`` each call is timed alone after 20 ms of other work (single-threaded NumPy passes over
32 MiB, as ``benches/bench_simd_levels.py`` does), the builds (and TensorFlow) in alternating order: how a
training loop calls the sampler. ``--non-unique`` draws with replacement, ``--no-true-classes`` leaves the
true classes out (with ``--non-unique``, the "1e6 draws" case):

    python benches/ab_versions.py --old /tmp/zipfnce_before --after-idle --rounds 25
    python benches/ab_versions.py --old /tmp/zipfnce_before --after-idle --non-unique --num-sampled 65536
    python benches/ab_versions.py --old /tmp/zipfnce_before --after-idle --non-unique --no-true-classes \
        --num-sampled 1000000
"""

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time


def load_old(path):
    """Import the package directory `path` as `zipfnce_old` (its modules import each other relatively)."""
    root = tempfile.mkdtemp(prefix="zipfnce_ab_")
    shutil.copytree(path, os.path.join(root, "zipfnce_old"))
    sys.path.insert(0, root)
    return importlib.import_module("zipfnce_old")


def interleaved_medians(calls, rounds):
    """The median time of one call of each of `calls` (name -> function): in each round every function runs
    about 20 ms of calls after a 20 ms pause, in alternating order, as the bench runner does."""
    reps = {}
    for name, f in calls.items():
        f()
        t = time.perf_counter()
        f()
        reps[name] = max(1, int(0.02 / max(time.perf_counter() - t, 1e-7)))
    times = {name: [] for name in calls}
    for r in range(rounds):
        for name in list(calls) if r % 2 else list(calls)[::-1]:
            time.sleep(0.02)
            t = time.perf_counter()
            for _ in range(reps[name]):
                calls[name]()
            times[name].append((time.perf_counter() - t) / reps[name])
    return {name: statistics.median(t) for name, t in times.items()}


def after_idle_medians(calls, rounds, pause_after=None):
    """The median time of one call of each of `calls` after 20 ms of other work (single-threaded NumPy passes
    over 32 MiB), in alternating order. ``pause_after(name)``: seconds to sleep after that call, before the
    next one's other work (to let another library's spinning threads stop)."""
    import numpy as np

    buf = np.ones(4 << 20)
    for f in calls.values():
        f()
    times = {name: [] for name in calls}
    for r in range(rounds):
        for name in list(calls) if r % 2 else list(calls)[::-1]:
            end = time.perf_counter() + 0.02
            while time.perf_counter() < end:
                buf *= 1.0000001
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
            if pause_after is not None:
                time.sleep(pause_after(name))
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="directory of an earlier build's zipfnce package")
    ap.add_argument("--sampler", choices=["log-uniform", "zipf"], default="log-uniform")
    ap.add_argument("--exponent", type=float, default=1.0, help="Zipf's s")
    ap.add_argument("--num-sampled", type=int, default=8192)
    ap.add_argument("--range-max", type=float, default=1e6)
    ap.add_argument("--batch", type=int, default=1024, help="rows of true_classes (one class each)")
    ap.add_argument("--per-row", action="store_true", help="sample_per_row over the batch (no TensorFlow)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--after-idle", action="store_true", help="time single calls after 20 ms of other work")
    ap.add_argument("--non-unique", action="store_true", help="draw with replacement")
    ap.add_argument("--no-true-classes", action="store_true", help="no true classes in the call")
    args = ap.parse_args()
    s, v = args.num_sampled, int(args.range_max)

    import numpy as np
    import zipfnce as new

    old = load_old(args.old)
    tc = np.random.default_rng(0).integers(0, v, (args.batch, 1))
    if args.sampler == "zipf":
        so, sn = old.ZipfSampler(v, args.exponent, seed=1), new.ZipfSampler(v, args.exponent, seed=1)
    else:
        so, sn = old.LogUniformSampler(v, seed=1), new.LogUniformSampler(v, seed=1)
    if args.per_row:
        calls = {"old": lambda: so.sample_per_row(tc, s), "new": lambda: sn.sample_per_row(tc, s)}
    else:
        uq, tcs = not args.non_unique, None if args.no_true_classes else tc
        calls = {
            "old": lambda: so.sample(s, unique=uq, true_classes=tcs),
            "new": lambda: sn.sample(s, unique=uq, true_classes=tcs),
        }
    try:
        if args.sampler == "log-uniform" and not args.per_row and not args.no_true_classes:
            import tensorflow as tf

            tct = tf.constant(tc)
            calls["tensorflow"] = lambda: tf.random.log_uniform_candidate_sampler(tct, 1, s, uq, v)
    except ImportError:
        pass
    med = (after_idle_medians if args.after_idle else interleaved_medians)(calls, args.rounds)
    line = (
        f"{args.sampler}{' per-row B=%d' % args.batch if args.per_row else ''}"
        f"{' non-unique' if args.non_unique else ''}{' after idle' if args.after_idle else ''} S={s} V={v}: old {med['old'] * 1e6:.1f} us, new {med['new'] * 1e6:.1f} us "
        f"(new/old {med['new'] / med['old']:.3f})"
    )
    if "tensorflow" in med:
        tf_t = med["tensorflow"]
        line += (
            f"; tensorflow {tf_t * 1e6:.0f} us: old {tf_t / med['old']:.1f}x, new {tf_t / med['new']:.1f}x"
        )
    print(line)


if __name__ == "__main__":
    main()
