"""``python -m zipfnce bench``: zipfnce against its peers (TensorFlow, PyTorch, NumPy) on this machine.

The cases live in :mod:`zipfnce.bench.cases`; the pytest-benchmark suites in ``benches/`` run the same ones.
"""

from .cases import Case, all_cases
from .runner import Result, run_case, run_suite

__all__ = ["Case", "Result", "all_cases", "run_case", "run_suite"]
