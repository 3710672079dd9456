"""examples/two_tower.py in its tiny mode (a few thousand interactions, one epoch, every variant), and its data
preparation on a hand-made document. The corpus ships with gensim (skipped without it); torch trains."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gensim")
pytest.importorskip("torch")

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "two_tower.py"


@pytest.fixture(scope="module")
def tt():
    spec = importlib.util.spec_from_file_location("two_tower_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pairs_are_the_window_before_each_position(tt):
    ctx, item = tt._pairs([np.array([0, 1, -1, 2])], 2, pad=9)
    # Position 0 has no context; position 2 is out of the catalogue; -1 in a context becomes the pad id.
    assert item.tolist() == [1, 2]
    assert ctx.tolist() == [[9, 0], [1, 9]]


def test_tiny_run_writes_every_variant(tt, tmp_path):
    # A fresh interpreter: torch next to an earlier test's TensorFlow or JAX in one process can clash.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, str(EXAMPLE), "--tiny", "--out", str(tmp_path), "--no-plot"]
    subprocess.run(cmd, check=True, env=env, timeout=900, capture_output=True)
    res = json.loads((tmp_path / "two_tower_tiny.json").read_text())
    names = [v.name for v in tt.VARIANTS]
    assert list(res["variants"]) == names
    for r in res["variants"].values():
        rec = [r["recall"][str(k)] for k in tt.KS]
        assert all(0.0 <= x <= 1.0 for x in rec) and rec == sorted(rec)
        assert r["seconds_per_epoch"] > 0 and len(r["recall50_per_epoch"]) == 1
    pop = [res["popularity"][str(k)] for k in tt.KS]
    assert pop == sorted(pop)
