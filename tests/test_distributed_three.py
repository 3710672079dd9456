"""zipfnce.torch.distributed in a real 3-rank (uneven shards of V = 23) gloo group on 127.0.0.1: every function against the
single-process zipfnce.torch result on the full problem (tests/_dist_checks.py runs the checks inside the
ranks; one process group for the whole module)."""

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import _dist_checks  # noqa: E402

WORLD = 3


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _dist_checks.run_group(WORLD, str(tmp_path_factory.mktemp(f"dist{WORLD}")))


@pytest.mark.parametrize("name", list(_dist_checks.CHECKS))
def test_check(results, name):
    assert name in results, f"{name}: no result from the ranks"
    bad = [f"rank {r}: {msg}" for r, (ok, msg) in enumerate(results[name]) if not ok]
    assert not bad, f"{name} ({WORLD} ranks):\n" + "\n".join(bad)
