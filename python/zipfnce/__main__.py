"""``python -m zipfnce bench [--quick] [--out DIR] [--threads N]``: measure zipfnce against its peers."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zipfnce", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run the benchmark suite against TensorFlow, PyTorch and NumPy")
    b.add_argument("--quick", action="store_true", help="fewer repeats and only the quick cases")
    b.add_argument("--out", default="zipfnce-bench", help="directory for report.md (default ./zipfnce-bench)")
    b.add_argument("--threads", type=int, default=None, help="threads for zipfnce (default: all cores)")
    b.add_argument("--filter", default="", help="only cases whose name contains this text")
    args = parser.parse_args(argv)
    from .bench.report import bench_main

    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
