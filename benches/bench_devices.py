"""Device benchmark of zipfnce.torch's torch path (issue 14), against two PyTorch peers in one process.

    python benches/bench_devices.py                      # CUDA: V = 1e6, B = 4096, d = 256, S = 8192
    python benches/bench_devices.py --device cpu --small # CPU, smaller: torch path vs native (what "auto" saves)

One training step each (loss + backward, no optimiser), in bfloat16 and float32, methods interleaved round by
round (so a noisy neighbour hits them alike), medians reported:

- ``zipfnce torch``: ``LogUniformSampler.sample`` on the host (unique candidates, expected counts),
  ``CandidateSample.to(device)`` (pinned, non_blocking), ``znt.sampled_softmax_loss(..., backend="torch")``;
- ``T4Rec-style``: a hand-written sampled softmax the way Transformers4Rec writes one: ``torch.multinomial``
  draw from the log-uniform distribution on the device (with replacement), gather of the true and sampled
  rows, logQ subtraction, accidental-hit mask, ``F.cross_entropy`` with target column 0;
- ``exact``: ``F.cross_entropy(x @ W.T + b, labels)`` over the whole vocabulary;
- with ``--device cpu``: ``zipfnce native`` too (the Rust kernels; float32 only, and bfloat16 when the
  installed native build reads it).

Before timing it checks parity: the torch path on the device against the CPU native path on the same
candidates (float32: loss to 2e-4 relative, weight gradients of the used rows to 2e-4 of their scale;
bfloat16: against the native float32 loss of the bfloat16-rounded values, 1e-3 relative). Without CUDA (and
without ``--device cpu``) it prints a skip line and exits 0. The whole run stays under 5 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    print("bench_devices: SKIP (torch is not installed)")
    sys.exit(0)

import zipfnce as zn
import zipfnce.torch as znt

FULL = dict(V=1_000_000, B=4096, d=256, S=8192)
SMALL = dict(V=100_000, B=512, d=128, S=2048)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _log_uniform_probs(v: int, dev: torch.device) -> torch.Tensor:
    """P(k) = log((k + 2) / (k + 1)) / log(V + 1), the log-uniform (Zipf-like) distribution over [0, V)."""
    k = torch.arange(v, dtype=torch.float64, device=dev)
    return (torch.log1p(1.0 / (k + 1.0)) / math.log(v + 1.0)).float()


def t4rec_step(w, b, x, labels, probs, s):
    """A hand-written sampled softmax in the style of Transformers4Rec's (after Transformer-XL's): draw S
    ids with replacement, expected counts S * P, gather, subtract log(S P), mask hits, cross-entropy."""
    ids = torch.multinomial(probs, s, replacement=True)
    logq_s = torch.log(probs[ids] * s)
    logq_t = torch.log(probs[labels] * s)
    wt, ws = w[labels].float(), w[ids].float()
    xf = x.float()
    zt = (xf * wt).sum(1) + b[labels].float() - logq_t
    zs = xf @ ws.T + b[ids].float() - logq_s
    zs = zs.masked_fill(labels[:, None] == ids[None, :], -1e30)
    logits = torch.cat([zt[:, None], zs], 1)
    loss = F.cross_entropy(logits, torch.zeros_like(labels))
    loss.backward()
    return loss


def exact_step(w, b, x, labels):
    loss = F.cross_entropy((x @ w.T + b).float(), labels)
    loss.backward()
    return loss


def zipfnce_step(w, b, x, labels_host, labels_dev, sampler, s, backend):
    sv = sampler.sample(s, unique=True, true_classes=labels_host.reshape(-1, 1))
    if backend == "torch":
        sv = sv.to(w.device)
    loss = znt.sampled_softmax_loss(w, b, labels_dev, x, s, w.shape[0], sampled_values=sv, backend=backend)
    loss.backward()
    return loss


def _native_half_ok() -> bool:
    try:
        zn.sampled_softmax_loss(
            np.ones((4, 2), np.float16), None, [0], np.ones((1, 2), np.float16), 2, 4, seed=1
        )
        return True
    except TypeError:
        return False


def parity(dev, dtype, sz, seed=0):
    """The torch path on ``dev`` against the native path on CPU, same candidates; returns the errors."""
    g = torch.Generator().manual_seed(seed)
    v, bsz, d, s = sz["V"], sz["B"], sz["d"], sz["S"]
    w32 = torch.randn(v, d, generator=g) / math.sqrt(d)
    b32 = torch.randn(v, generator=g) * 0.1
    x32 = torch.randn(bsz, d, generator=g)
    lab = torch.randint(0, v, (bsz,), generator=g)
    # Rounded once to the dtype; the native reference computes in float32 on the rounded values.
    wr, br, xr = (t.to(dtype).float() for t in (w32, b32, x32))
    sv = zn.LogUniformSampler(v, seed=seed).sample(s, true_classes=lab.numpy().reshape(-1, 1))
    ref_w = wr.clone().requires_grad_(True)
    ref = znt.sampled_softmax_loss(ref_w, br, lab, xr, s, v, sampled_values=sv, backend="native")
    ref.backward()
    wd = wr.to(dev, dtype).requires_grad_(True)
    got = znt.sampled_softmax_loss(wd, br.to(dev, dtype), lab.to(dev), xr.to(dev, dtype), s, v,
                                   sampled_values=sv.to(dev), backend="torch")  # fmt: skip
    got.backward()
    used = torch.unique(torch.cat([lab, torch.from_numpy(sv.ids)]))
    gw_ref = ref_w.grad[used]
    gw_dev = wd.grad[used.to(dev)].float().cpu()
    got, ref = got.detach(), ref.detach()
    loss_err = abs(float(got) - float(ref)) / max(1.0, abs(float(ref)))
    grad_err = float((gw_dev - gw_ref).abs().max()) / float(gw_ref.abs().max())
    return loss_err, grad_err


def bench(dev, dtype, sz, rounds, methods, seed=1):
    g = torch.Generator().manual_seed(seed)
    v, bsz, d, s = sz["V"], sz["B"], sz["d"], sz["S"]
    w = (torch.randn(v, d, generator=g) / math.sqrt(d)).to(dev, dtype).requires_grad_(True)
    b = torch.zeros(v).to(dev, dtype).requires_grad_(True)
    x = torch.randn(bsz, d, generator=g).to(dev, dtype).requires_grad_(True)
    lab_host = torch.randint(0, v, (bsz,), generator=g)
    lab_dev = lab_host.to(dev)
    sampler = zn.LogUniformSampler(v, seed=seed)
    probs = _log_uniform_probs(v, dev)
    run = {
        "zipfnce torch": lambda: zipfnce_step(w, b, x, lab_host.numpy(), lab_dev, sampler, s, "torch"),
        "zipfnce native": lambda: zipfnce_step(w, b, x, lab_host.numpy(), lab_host, sampler, s, "native"),
        "T4Rec-style": lambda: t4rec_step(w, b, x, lab_dev, probs, s),
        "exact": lambda: exact_step(w, b, x, lab_dev),
    }
    times = {m: [] for m in methods}
    skipped = {}
    for r in range(rounds + 1):  # round 0 warms up
        for m in methods:
            if m in skipped:
                continue
            w.grad = b.grad = x.grad = None
            _sync(dev)
            t0 = time.perf_counter()
            try:
                loss = run[m]()
                _sync(dev)
            except torch.OutOfMemoryError:
                skipped[m] = "out of memory"
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if r > 0:
                times[m].append(time.perf_counter() - t0)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{m}: non-finite loss")
    out = {m: (float(np.median(t)) * 1e3 if t else None) for m, t in times.items()}
    best = {m: (float(np.min(t)) * 1e3 if t else None) for m, t in times.items()}
    return out, best, skipped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--small", action="store_true", help=f"the smaller size {SMALL} (default {FULL})")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--no-exact", action="store_true", help="skip F.cross_entropy over the whole vocabulary")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench_devices: SKIP (no CUDA device; run with --device cpu --small for the CPU figures)")
        return 0
    sz = SMALL if a.small else FULL
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"bench_devices: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, size {sz}")
    report = {"device": name, "size": sz, "results": {}}
    t_start = time.perf_counter()
    for dn in a.dtypes.split(","):
        dtype = getattr(torch, dn)
        le, ge = parity(dev, dtype, SMALL if dev.type == "cpu" else sz)
        tol = 2e-4 if dtype == torch.float32 else 1e-3
        ok = le <= tol and ge <= (2e-4 if dtype == torch.float32 else 2.0**-7)
        print(
            f"  parity {dn}: loss rel err {le:.2e}, used-row weight grad rel err {ge:.2e} -> {'ok' if ok else 'FAIL'}"
        )
        if not ok:
            return 1
        methods = ["zipfnce torch", "T4Rec-style"]
        if dev.type == "cpu" and (dtype in (torch.float32, torch.float64) or _native_half_ok()):
            methods.insert(1, "zipfnce native")
        if not a.no_exact and not (dev.type == "cpu" and dtype in (torch.bfloat16, torch.float16)):
            methods.append("exact")  # (a half-precision [B, V] product on a CPU without bf16 units: minutes)
        med, best, skipped = bench(dev, dtype, sz, a.rounds, methods)
        base, base_min = med["zipfnce torch"], best["zipfnce torch"]
        for m in methods:
            if med.get(m) is None:
                print(f"  {dn:8s} {m:15s}  skipped ({skipped.get(m, '?')})")
            else:
                print(
                    f"  {dn:8s} {m:15s} median {med[m]:9.2f} ms ({med[m] / base:5.2f}x the torch path), "
                    f"min {best[m]:9.2f} ms ({best[m] / base_min:5.2f}x)"
                )
        report["results"][dn] = {"median_ms": med, "min_ms": best, "skipped": skipped, "parity": [le, ge]}
    print(f"  total {time.perf_counter() - t_start:.0f} s")
    if a.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
