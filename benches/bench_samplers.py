"""pytest-benchmark suite for the samplers: the very cases of ``python -m zipfnce bench`` (zipfnce.bench.cases).

Run: ``pytest benches/bench_samplers.py --benchmark-only`` (the project's test run does not collect benches/).
"""

import pytest
from zipfnce.bench.cases import sampler_cases

CASES = sampler_cases()
PARAMS = [(c, impl) for c in CASES for impl in c.make()]


@pytest.mark.parametrize("case,impl", PARAMS, ids=[f"{c.name} [{i}]" for c, i in PARAMS])
def test_sampler_case(benchmark, case, impl):
    fn = case.make()[impl]
    benchmark.group = case.name
    benchmark(fn)
