"""zipfnce on the command line.

python -m zipfnce bench [--quick] [--out DIR] [--threads N] [--filter TEXT]
    measure zipfnce against its peers (TensorFlow, PyTorch, NumPy) on this machine

python -m zipfnce --version
    print the installed version
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__

BENCH_DESCRIPTION = """\
Time zipfnce against its peers on this machine: TensorFlow's samplers and sampled losses, PyTorch's InfoNCE
and training step, and NumPy (including the hardware bound of the matrix products a loss step needs). Prints
a table and writes DIR/report.md (with plots when matplotlib is installed). A peer that is not installed is
skipped, and the table and the report say which and how to add it.
"""


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m zipfnce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"zipfnce {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    b = sub.add_parser(
        "bench",
        help="run the benchmark suite against TensorFlow, PyTorch and NumPy",
        description=BENCH_DESCRIPTION,
        epilog="example: python -m zipfnce bench --quick --out zipfnce-bench",
    )
    b.add_argument("--quick", action="store_true", help="fewer repeats and only the quick cases")
    b.add_argument(
        "--out",
        default="zipfnce-bench",
        metavar="DIR",
        help="directory for report.md (default ./zipfnce-bench)",
    )
    b.add_argument("--threads", type=int, metavar="N", help="threads for zipfnce (default: all cores)")
    b.add_argument("--filter", default="", metavar="TEXT", help="only cases whose name contains this text")
    args = parser.parse_args(argv)
    from .bench.report import bench_main

    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
