"""zipfnce.torch.distributed in a real 2-rank gloo group on 127.0.0.1: every function against the
single-process zipfnce.torch result on the full problem (tests/_dist_checks.py runs the checks inside the
ranks; one process group for the whole module)."""

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import _dist_checks  # noqa: E402

WORLD = 2


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _dist_checks.run_group(WORLD, str(tmp_path_factory.mktemp(f"dist{WORLD}")))


@pytest.mark.parametrize("name", list(_dist_checks.CHECKS))
def test_check(results, name):
    assert name in results, f"{name}: no result from the ranks"
    bad = [f"rank {r}: {msg}" for r, (ok, msg) in enumerate(results[name]) if not ok]
    assert not bad, f"{name} ({WORLD} ranks):\n" + "\n".join(bad)


def test_readme_example_runs_under_torchrun(tmp_path):
    """README's "Many devices" example, as written, in 2 ranks started by torchrun (--standalone: a free port)."""
    import os
    import pathlib
    import re
    import subprocess
    import sys

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "zipfnce.torch.distributed" in b]
    assert len(code) == 1, "README.md should have one example of zipfnce.torch.distributed"
    script = tmp_path / "many_devices.py"
    script.write_text(code[0], encoding="utf-8")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("rank ")]
    assert sorted(ln.split(":")[0] for ln in lines) == ["rank 0", "rank 1"], out[-3000:]
    # The vocabulary-parallel loss is the same on both ranks; each owns half the classes.
    assert len({ln.split("sampled softmax ")[1].split(",")[0] for ln in lines}) == 1, lines
    assert any("classes [0, 100000)" in ln for ln in lines) and any("[100000, 200000)" in ln for ln in lines)


def test_without_a_process_group_says_so():
    import zipfnce.torch.distributed as znd

    if dist.is_initialized():  # pragma: no cover - this process never joins a group
        pytest.skip("a process group is initialised in this process")
    x = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="init_process_group"):
        znd.info_nce_loss(x, x, temperature=0.1)
    with pytest.raises(RuntimeError, match="init_process_group"):
        znd.shard_range(10)
    with pytest.raises(RuntimeError, match="init_process_group"):
        znd.vocab_parallel_nce_loss(x, None, [0, 1], x, 2, 10)
