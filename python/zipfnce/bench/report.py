"""The bench command: run the suite with a progress bar, print the table, write DIR/report.md and plots."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections import defaultdict
from typing import Dict, List

from .cases import all_cases
from .runner import Result, format_time, run_case


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
        if mod in sys.modules:
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


def table(results: List[Result]) -> List[str]:
    rows = ["| case | zipfnce | peer | peer time | speed-up | target |", "|---|---|---|---|---|---|"]
    for r in results:
        peers = [p for p in r.seconds if p != "zipfnce"]
        z = format_time(r.seconds["zipfnce"])
        if not peers:
            extra = ""
            if r.case.work:
                extra = f"{r.case.work / r.seconds['zipfnce'] / 1e6:.1f} M {r.case.work_unit}/s"
            rows.append(f"| {r.case.name} | {z} | — | {extra} | | |")
        for p in peers:
            ratio = r.ratio(p)
            target = r.case.targets.get(p)
            mark = ""
            if target and p.endswith("bound"):
                mark = f"time ≤ {1 / target:.3g}× bound {'✓' if ratio >= target else '✗'}"
            elif target:
                mark = f"≥ {target:g}× {'✓' if ratio >= target else '✗'}"
            rows.append(f"| {r.case.name} | {z} | {p} | {format_time(r.seconds[p])} | {ratio:.1f}× | {mark} |")
    return rows


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
        rs.sort(key=lambda r: r.case.x)
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        peers = sorted({p for r in rs for p in r.seconds if not p.startswith("zipfnce")})
        for p in peers:
            pts = [(r.case.x, r.ratio(p)) for r in rs if r.ratio(p) is not None]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"vs {p}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_ylabel("speed-up of zipfnce (×)")
        ax.set_xlabel(title.split(" vs ")[-1])
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        name = "".join(c if c.isalnum() else "_" for c in title.split(" (")[0]).strip("_") + ".png"
        path = os.path.join(out_dir, name)
        fig.savefig(path)
        plt.close(fig)
        files.append(name)
    return files


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
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    images = plots(results, args.out)
    path = os.path.join(args.out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("# zipfnce benchmark\n\n")
        f.write(f"- command: `python -m zipfnce bench {' '.join(sys.argv[2:])}`\n")
        f.write(f"- machine: {_cpu_model()}, {os.cpu_count()} cores, {platform.platform()}\n")
        f.write(f"- python {platform.python_version()}; {', '.join(_versions())}\n")
        f.write(f"- zipfnce threads: {zn.get_num_threads()}; time: {time.strftime('%Y-%m-%d %H:%M')}\n")
        f.write("- speed-up = peer time / zipfnce time, medians of interleaved repeats in one process\n\n")
        f.write("\n".join(lines) + "\n")
        for img in images:
            f.write(f"\n![{img}]({img})\n")
    print(f"report: {path}", file=sys.stderr)
    return 0
