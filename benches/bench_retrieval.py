"""The retrieval toolbox's stateful pieces against their peers, in one process, interleaved rounds.

- ``learned``: one ``LearnedUnigramSampler.sample(S, true_classes=[B, 1])`` call (draw from the counts, then
  learn the B true classes) against ``tf.random.learned_unigram_candidate_sampler`` (eager, with a
  fixed seed, so TensorFlow reuses the op's kernel and its counts persist as zipfnce's do), for several
  ``range_max``; and zipfnce's
  ``update`` alone (B ids learned, no draw).
- ``freq``: one training step of ``FrequencyEstimator`` (``update`` with B ids, then ``log_q`` of them)
  against the same algorithm written in vectorised NumPy (``np.unique`` of the batch's cells, fancy-indexed
  array updates).

    python benches/bench_retrieval.py learned --range-max 1e3 1e5 1e6 1e7
    python benches/bench_retrieval.py freq

Timing: every peer runs ~20 ms of calls after a 20 ms pause, in alternating order, medians over rounds
(``ab_versions.interleaved_medians``). TensorFlow and torch never share this process.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_versions import interleaved_medians  # noqa: E402


def zipf_ids(rng, v, size, s=1.1):
    """Ids of a Zipf(s) law over 0..v-1 (by inversion of the continuous approximation)."""
    u = rng.random(size)
    x = ((v ** (1 - s) - 1) * u + 1) ** (1 / (1 - s))
    return np.minimum(x.astype(np.int64) - 1, v - 1).clip(0)


def learned_calls(tf, v, b, s, unique, rng):
    """The timed calls of one case: zipfnce's sample (draw, then learn), its update alone, TensorFlow's op."""
    import zipfnce as zn

    batches = [zipf_ids(rng, v, (b, 1)) for _ in range(64)]
    it = {"zipfnce": 0, "update": 0, "tensorflow": 0}

    def nxt(who):
        it[who] = (it[who] + 1) % len(batches)
        return it[who]

    zs = zn.LearnedUnigramSampler(v, seed=1)
    upd = zn.LearnedUnigramSampler(v, seed=1)
    calls = {
        "zipfnce": lambda: zs.sample(s, unique=unique, true_classes=batches[nxt("zipfnce")]),
        "zipfnce update only": lambda: upd.update(batches[nxt("update")]),
    }
    if tf is not None:
        # Eager, with a fixed seed: TensorFlow caches the op's kernel, so its counts persist across calls
        # (a tf.function does the same, but adds about 1 ms of dispatch per call on this machine).
        def tf_call(tc):
            return tf.random.learned_unigram_candidate_sampler(tc, 1, s, unique, v, seed=3)

        tf_batches = [tf.constant(t) for t in batches]
        calls["tensorflow"] = lambda: tf_call(tf_batches[nxt("tensorflow")])
    return calls


def bench_learned(args):
    tf = None
    if not args.no_tf:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        import tensorflow as tf
    rng = np.random.default_rng(0)
    b, s = args.batch, args.num_sampled
    for vf in args.range_max:
        v = int(vf)
        for unique in (False, True):
            med = interleaved_medians(learned_calls(tf, v, b, s, unique, rng), args.rounds)
            line = f"learned unigram V={v:.0e} B={b} S={s} unique={unique}: zipfnce {med['zipfnce'] * 1e6:.1f} us"
            line += f" (update only {med['zipfnce update only'] * 1e6:.1f} us)"
            if "tensorflow" in med:
                line += f", tensorflow {med['tensorflow'] * 1e6:.1f} us ({med['tensorflow'] / med['zipfnce']:.1f}x)"
            print(line, flush=True)


class NumpyFreq:
    """Yi et al.'s estimator (the rule of zipfnce.FrequencyEstimator) in vectorised NumPy: the peer."""

    def __init__(self, num_buckets, num_hashes, alpha):
        self.n, self.h, self.alpha, self.t = num_buckets, num_hashes, alpha, 0
        self.last = np.zeros((num_hashes, num_buckets), np.int64)
        self.gap = np.zeros((num_hashes, num_buckets), np.float64)
        self.seen = np.zeros((num_hashes, num_buckets), np.int64)
        self.mult = np.array(
            [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5][:num_hashes],
            np.uint64,
        )

    def cells(self, ids):
        x = ids.astype(np.uint64)[None, :] * self.mult[:, None]
        return (x >> np.uint64(40)) % np.uint64(self.n)

    def update(self, ids):
        self.t += 1
        c = self.cells(np.asarray(ids))
        for h in range(self.h):
            u = np.unique(c[h]).astype(np.int64)
            n = self.seen[h, u] + 1
            w = np.maximum(self.alpha, 1.0 / n)
            g = self.gap[h, u]
            self.gap[h, u] = g + w * ((self.t - self.last[h, u]) - g)
            self.seen[h, u] = n
            self.last[h, u] = self.t

    def log_q(self, ids):
        c = self.cells(np.asarray(ids)).astype(np.int64)
        g = np.max(
            np.where(
                self.seen[np.arange(self.h)[:, None], c] > 0,
                self.gap[np.arange(self.h)[:, None], c],
                self.t + 1,
            ),
            axis=0,
        )
        return -np.log(g)


def bench_freq(args):
    import zipfnce as zn

    rng = np.random.default_rng(0)
    b = args.batch
    batches = [zipf_ids(rng, 20_000, b) for _ in range(256)]
    est = zn.FrequencyEstimator(args.num_buckets, num_hashes=args.num_hashes, alpha=0.01)
    peer = NumpyFreq(args.num_buckets, args.num_hashes, 0.01)
    st = {"i": 0, "j": 0}

    def ours():
        st["i"] = (st["i"] + 1) % len(batches)
        ids = batches[st["i"]]
        est.update(ids)
        return est.log_q(ids)

    def theirs():
        st["j"] = (st["j"] + 1) % len(batches)
        ids = batches[st["j"]]
        peer.update(ids)
        return peer.log_q(ids)

    med = interleaved_medians({"zipfnce": ours, "numpy": theirs}, args.rounds)
    print(
        f"frequency estimator step (update + log_q) B={b} buckets={args.num_buckets} hashes={args.num_hashes}: "
        f"zipfnce {med['zipfnce'] * 1e6:.1f} us, numpy {med['numpy'] * 1e6:.1f} us ({med['numpy'] / med['zipfnce']:.1f}x)",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["learned", "freq"])
    ap.add_argument("--range-max", type=float, nargs="+", default=[1e3, 1e5, 1e6, 1e7])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--num-sampled", type=int, default=64)
    ap.add_argument("--num-buckets", type=int, default=2**20)
    ap.add_argument("--num-hashes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--no-tf", action="store_true", help="zipfnce alone (no TensorFlow)")
    args = ap.parse_args()
    if args.case == "learned":
        bench_learned(args)
    else:
        bench_freq(args)


if __name__ == "__main__":
    main()
