"""The bench command: run the suite, print the table, write DIR/report.md."""

from __future__ import annotations

import os
import platform
import sys
from typing import List

from .cases import all_cases
from .runner import Result, format_time, run_case


def _versions() -> List[str]:
    import numpy

    import zipfnce

    out = [f"zipfnce {zipfnce.__version__}", f"numpy {numpy.__version__}"]
    for mod in ("tensorflow", "torch"):
        if mod in sys.modules:
            out.append(f"{mod} {sys.modules[mod].__version__}")
    return out


def table(results: List[Result]) -> List[str]:
    rows = ["| case | zipfnce | peer | peer time | speed-up | target |", "|---|---|---|---|---|---|"]
    for r in results:
        peers = [p for p in r.seconds if p != "zipfnce"]
        if not peers:
            extra = ""
            if r.case.work:
                extra = f"{r.case.work / r.seconds['zipfnce'] / 1e6:.1f} M {r.case.work_unit}/s"
            rows.append(f"| {r.case.name} | {format_time(r.seconds['zipfnce'])} | — | {extra} | | |")
        for p in peers:
            ratio = r.ratio(p)
            target = r.case.targets.get(p)
            rows.append(
                f"| {r.case.name} | {format_time(r.seconds['zipfnce'])} | {p} | {format_time(r.seconds[p])} | "
                f"{ratio:.1f}× | {f'≥ {target:g}×' if target else ''} |"
            )
    return rows


def bench_main(args) -> int:
    import zipfnce as zn

    if args.threads:
        zn.set_num_threads(args.threads)
    cases = [c for c in all_cases() if args.filter in c.name and (c.quick or not args.quick)]
    repeats = 7 if args.quick else 15
    results = []
    for i, case in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {case.name}", file=sys.stderr, flush=True)
        results.append(run_case(case, repeats))
    lines = table(results)
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("# zipfnce benchmark\n\n")
        f.write(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}\n")
        f.write(f"- python {platform.python_version()}; {', '.join(_versions())}\n")
        f.write(f"- zipfnce threads: {zn.get_num_threads()}\n\n")
        f.write("\n".join(lines) + "\n")
    print(f"report: {path}", file=sys.stderr)
    return 0
