"""Timing: interleaved repeats of every implementation of a case, medians, ratios against zipfnce."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

from .cases import Case


@dataclass
class Result:
    case: Case
    #: Median seconds per call, by implementation.
    seconds: Dict[str, float]

    def ratio(self, peer: str) -> Optional[float]:
        """peer time / zipfnce time (> 1: zipfnce is faster)."""
        if peer not in self.seconds or "zipfnce" not in self.seconds:
            return None
        return self.seconds[peer] / self.seconds["zipfnce"]


#: Pause before each implementation's turn: thread pools that spin for a while after their work (OpenBLAS,
#: TensorFlow's Eigen pool) would otherwise compete with whichever implementation runs next.
SETTLE = 0.02
#: Pause after the turn of a NumPy matrix product (an implementation whose name mentions sgemm): OpenBLAS's
#: threads keep polling for about 0.1 s after a product unless OPENBLAS_THREAD_TIMEOUT says otherwise, and
#: the sampled softmax step timed inside that window shared the two cores of the test VM with them (the
#: S = 1024 step at 19.7 ms instead of 7).
BLAS_SETTLE = 0.15


def settle_after(name: str) -> float:
    """Seconds to pause after the turn of implementation `name` before timing anything else."""
    return BLAS_SETTLE if "sgemm" in name else SETTLE


def _calls_per_sample(fn: Callable[[], object], budget: float) -> int:
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return max(1, min(1000, int(budget / max(dt, 1e-7))))


def run_case(case: Case, repeats: int = 15, budget: float = 0.02) -> Result:
    """Time every implementation of `case`: `repeats` rounds, each running every implementation in turn
    for about `budget` seconds, so that machine noise hits all of them alike. Returns medians."""
    impls = case.make()
    for fn in impls.values():  # warm up: first-call costs (imports, graph tracing, page faults)
        fn()
        fn()
    loops = {name: _calls_per_sample(fn, budget) for name, fn in impls.items()}
    samples: Dict[str, List[float]] = {name: [] for name in impls}
    previous = ""
    for _ in range(repeats):
        for name, fn in impls.items():
            time.sleep(settle_after(previous))
            previous = name
            n = loops[name]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t) / n)
    return Result(case, {name: statistics.median(v) for name, v in samples.items()})


def run_suite(
    cases: Iterable[Case], repeats: int = 15, progress: Optional[Callable[[str], None]] = None
) -> List[Result]:
    out = []
    for case in cases:
        if progress:
            progress(case.name)
        out.append(run_case(case, repeats))
    return out


def format_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"
