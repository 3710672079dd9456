"""pytest-benchmark over the whole suite of ``python -m zipfnce bench``: every case of zipfnce.bench.cases
(samplers, sampled softmax / NCE, InfoNCE, adapters, sweeps), every implementation of it, so that the two
cannot drift apart.

Run: ``pytest benches/bench_suite.py --benchmark-only`` (add ``-k InfoNCE`` etc. to select cases).
"""

import pytest
from zipfnce.bench.cases import all_cases

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(benchmark, case):
    impls = case.make()
    benchmark.group = case.name
    for name, fn in impls.items():
        if name != "zipfnce":
            fn()  # the peers run too (warm, and proving they work); the benchmark times zipfnce
    benchmark(impls["zipfnce"])
