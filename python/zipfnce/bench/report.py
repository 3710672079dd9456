"""The bench command: run the suite with a progress bar, print the table, write DIR/report.md and plots."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from typing import Dict, List

from . import pays
from .cases import BOUND, DROP_IN, GATHER, Case, all_cases, missing_peers
from .runner import Result, format_time, run_case

#: Implementations that are a floor rather than a competitor: zipfnce cannot beat them, so their rows read
#: "zipfnce takes N× the bound" and their targets are an upper limit on that N.
BOUNDS = (BOUND, GATHER)

#: The line above the plots' dashed line at speed-up 1.
ONE_X_LABEL = "1× = as fast as the peer"


def _simd_line() -> str:
    """Which kernels ran, e.g. "avx2 (ZIPFNCE_SIMD=avx2)"; the environment variable is named when set."""
    import zipfnce as zn

    env = os.environ.get("ZIPFNCE_SIMD", "").strip()
    return zn.simd_level() + (f" (ZIPFNCE_SIMD={env})" if env else " (the widest this CPU has)")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> List[str]:
    import numpy

    import zipfnce

    out = [f"zipfnce {zipfnce.__version__}", f"numpy {numpy.__version__}"]
    for mod in ("tensorflow", "torch", "jax"):
        if sys.modules.get(mod) is not None:  # None: an import that was blocked
            out.append(f"{mod} {getattr(sys.modules[mod], '__version__', '?')}")
    return out


class _Progress:
    """tqdm when installed, else one line per case on stderr."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.start = time.time()
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self.bar = None

    def step(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(name[:48])
        else:
            print(f"[{self.done + 1}/{self.total}] {name}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _shown(x: float) -> float:
    """`x` rounded as the report prints it: 2 decimals below 10, 1 from there."""
    return round(x, 2) if x < 10 else round(x, 1)


def _times(x: float) -> str:
    """A ratio as "0.93×", "1.08×" or "23.2×"."""
    return f"{_shown(x):.2f}×" if x < 10 else f"{_shown(x):.1f}×"


def met(target: float, ratio: float) -> bool:
    """Whether speed-up `ratio` (peer / zipfnce time) meets `target`, judged on the figures the report prints
    (a target of 5× is met by a ratio printed as 5.00×).

    A target of at least 1 asks zipfnce to be that many times faster; one below 1 (against the bounds, or the
    NumPy call that zipfnce.torch wraps) lets zipfnce take at most 1/target times the peer's time."""
    if target >= 1:
        return _shown(ratio) >= target
    return _shown(1 / ratio) <= float(f"{1 / target:.3g}")


def describe(case: Case, peer: str, ratio: float) -> str:
    """The row of `case` against `peer` as a sentence that reads on its own (`ratio`: peer / zipfnce time)."""
    subject, label = case.subject, case.label(peer)
    if peer in BOUNDS:
        return f"{subject} takes {_times(1 / ratio)} the {label}"
    if peer == DROP_IN:
        return f"the TF-style zn.log_uniform_candidate_sampler takes {_times(ratio)} the sampler's time"
    if ratio >= 1:
        return f"{subject} is {_times(ratio)} faster than {label}"
    return f"{subject} takes {_times(1 / ratio)} the time of {label}"


def target_cell(case: Case, peer: str, ratio: float) -> str:
    """The target of `case` against `peer` and whether this run met it; "" when there is none."""
    target = case.targets.get(peer)
    if not target:
        return ""
    if target >= 1:
        goal = f"≥ {target:g}× faster"
    else:
        goal = f"≤ {1 / target:.3g}× the {'bound' if peer in BOUNDS else 'peer'}'s time"
    return f"{goal}: {'✓ met' if met(target, ratio) else '✗ not met here'}"


def table(results: List[Result]) -> List[str]:
    """The report's rows in Markdown: one per case and implementation compared with zipfnce."""
    rows = [
        "| case | zipfnce | compared with | its time | speed-up | target | in words |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peers = [p for p in r.seconds if p != "zipfnce"]
        z = format_time(r.seconds["zipfnce"])
        if not peers:
            words = f"{r.case.subject} alone: no peer has this operation"
            if r.case.work:
                words += f"; {r.case.work / r.seconds['zipfnce'] / 1e6:.1f} M {r.case.work_unit}/s"
            rows.append(f"| {r.case.name} | {z} | — | | | | {words} |")
        for p in peers:
            ratio = r.ratio(p)
            rows.append(
                f"| {r.case.name} | {z} | {r.case.label(p)} | {format_time(r.seconds[p])} | {_times(ratio)} "
                f"| {target_cell(r.case, p, ratio)} | {describe(r.case, p, ratio)} |"
            )
    return rows


def target_summary(results: List[Result]) -> str:
    """The count of targets met, e.g. "targets met on this machine: 5 of 7"; "" when the run had none."""
    verdicts = [met(t, r.ratio(p)) for r in results for p, t in r.case.targets.items() if p in r.seconds]
    if not verdicts:
        return ""
    return f"targets met on this machine: {sum(verdicts)} of {len(verdicts)}"


#: The top of report.md: what the columns, targets and marks mean.
HOW_TO_READ = """\
## How to read this report

- **zipfnce**: zipfnce's time for the case (in the torch module step rows, the zipfnce.torch module's);
  **compared with** and **its time**: the other implementation and its time.
- **speed-up** = the other implementation's time / zipfnce's time (medians of interleaved repeats in one
  process): above 1× zipfnce is faster, below 1× it is slower. The **in words** column reads each row out.
- **target**: the speed-up the project set itself for that case when it was designed, on its own reference
  machine (see the project's BENCHMARKS.md). **✓ met** means this run reached it; **✗ not met here** means
  it did not, on this machine. A ✗ is a performance finding, not a failure of correctness (correctness is
  what the test suite checks): ratios move with the CPU, its core count, the BLAS behind NumPy and whatever
  else the machine runs. Most targets ask zipfnce to be at least N× faster; against a bound, which zipfnce
  cannot beat, the target is a ceiling instead: "≤ 1.3× the bound's time" means zipfnce may take at most
  1.3× as long as the bound (a speed-up of at least 0.77×). Targets are judged on the figures as printed.
- **hardware bound (NumPy sgemm)**: NumPy/OpenBLAS doing only the matrix products the loss step cannot avoid
  (x·Wsᵀ, G·Ws, Gᵀ·x): about the fastest any implementation can be on this machine. "zipfnce takes 1.08× the
  hardware bound" means zipfnce's whole step costs 8 % more than those products alone.
- **memory bound (NumPy gather of the B·S rows)**: NumPy only gathering the weight rows a per-row step reads.
- **zipfnce drop-in (TF-style function)**: `zn.log_uniform_candidate_sampler`, zipfnce's drop-in for
  `tf.random.log_uniform_candidate_sampler`, timed beside the sampler object (`LogUniformSampler.sample`,
  the "zipfnce" column) to show what the TensorFlow-style call costs; it has no target.
- **plots**: the speed-up of zipfnce against each peer along a sweep; the dashed line at 1× is "as fast as the
  peer" (or, for a bound, "as fast as the bound").
"""


def skipped_peers() -> List[str]:
    """Markdown bullets, one per peer framework that cannot be imported here: what is missing, and how to add
    it. Empty when every peer is there."""
    out = []
    for peer, error in missing_peers():
        note = f" ({peer.note})" if peer.note else ""
        out.append(
            f"- **{peer.name} skipped**: `import {peer.module}` failed ({error}), so the rows for "
            f"{peer.rows} are missing. Add it with `{peer.install}`{note} and run the bench again."
        )
    return out


def _speedup_figure(title: str, rs: List[Result], plt):
    """The figure of one sweep: the speed-up of zipfnce over each peer against the swept quantity."""
    rs = sorted(rs, key=lambda r: r.case.x)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    peers = sorted({p for r in rs for p in r.seconds if not p.startswith("zipfnce")})
    for p in peers:
        pts = [(r.case.x, r.ratio(p)) for r in rs if r.ratio(p) is not None]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"vs {rs[0].case.label(p)}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.annotate(ONE_X_LABEL, xy=(0.01, 1.0), xycoords=("axes fraction", "data"), xytext=(0, 2),
                textcoords="offset points", va="bottom", fontsize=8, color="grey")  # fmt: skip
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("speed-up of zipfnce (peer time / zipfnce time)")
    ax.set_xlabel(title.split(" vs ")[-1])
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plots(results: List[Result], out_dir: str) -> List[str]:
    """One PNG per sweep: speed-up of zipfnce over each peer against the swept quantity."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'zipfnce[bench]')", file=sys.stderr)
        return []
    by_plot: Dict[str, List[Result]] = defaultdict(list)
    for r in results:
        if r.case.plot:
            by_plot[r.case.plot].append(r)
    files = []
    for title, rs in by_plot.items():
        if title == pays.PLOT:  # seconds per step, log-log (issue 16)
            fig = pays.time_figure(title, rs, plt)
        else:
            fig = _speedup_figure(title, rs, plt)
        name = "".join(c if c.isalnum() else "_" for c in title.split(" (")[0]).strip("_") + ".png"
        path = os.path.join(out_dir, name)
        fig.savefig(path)
        plt.close(fig)
        files.append(name)
    return files


def _command(args) -> str:
    """The command line that repeats this run."""
    words = ["python", "-m", "zipfnce", "bench"] + (["--quick"] if args.quick else [])
    if args.filter:
        words += ["--filter", args.filter]
    if args.threads:
        words += ["--threads", str(args.threads)]
    return shlex.join(words + ["--out", args.out])


def bench_main(args) -> int:
    import zipfnce as zn

    if args.threads:
        zn.set_num_threads(args.threads)
    cases = [c for c in all_cases() if args.filter in c.name and (c.quick or not args.quick)]
    repeats = 5 if args.quick else 15
    progress = _Progress(len(cases))
    results = []
    for case in cases:
        progress.step(case.name)
        results.append(run_case(case, repeats, budget=0.01 if args.quick else 0.03))
        progress.advance()
    progress.close()
    lines = table(results)
    summary = target_summary(results)
    skipped = skipped_peers()
    print(f"machine: {_cpu_model()}; zipfnce's SIMD level: {_simd_line()}")
    print("\n".join(lines))
    if summary:
        print(f"\n{summary} (✗ = slower than the target on this machine, not an error; see report.md)")
    if skipped:
        print("\npeers skipped (not importable here):\n" + "\n".join(skipped))
    os.makedirs(args.out, exist_ok=True)
    images = plots(results, args.out)
    path = os.path.join(args.out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("# zipfnce benchmark\n\n")
        f.write(f"- command: `{_command(args)}`\n")
        f.write(f"- machine: {_cpu_model()}, {os.cpu_count()} cores, {platform.platform()}\n")
        f.write(f"- zipfnce's SIMD level: {_simd_line()}\n")
        f.write(f"- python {platform.python_version()}; {', '.join(_versions())}\n")
        f.write(f"- zipfnce threads: {zn.get_num_threads()}; time: {time.strftime('%Y-%m-%d %H:%M')}\n")
        f.write("- speed-up = peer time / zipfnce time, medians of interleaved repeats in one process\n")
        if summary:
            f.write(f"- {summary}\n")
        f.write("\n" + HOW_TO_READ)
        if skipped:
            f.write("\n## Peers skipped on this machine\n\n" + "\n".join(skipped) + "\n")
        f.write("\n## Results\n\n" + "\n".join(lines) + "\n")
        sweep = [r for r in results if r.case.plot == pays.PLOT]
        if sweep:
            f.write("\n## Where sampling pays (time per step)\n\n" + "\n".join(pays.crossover(sweep)) + "\n")
        for img in images:
            f.write(f"\n![{img}]({img})\n")
    print(f"report: {path}", file=sys.stderr)
    return 0
