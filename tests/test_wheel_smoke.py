"""The wheel's smoke test (.ci/smoke.py) runs in the ordinary test suite too, so that a new public name without
a smoke call fails here, at pytest time, and not only in CI's wheel stage."""

from __future__ import annotations

import importlib.util
import os

import zipfnce as zn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke():
    spec = importlib.util.spec_from_file_location("zipfnce_smoke", os.path.join(ROOT, ".ci", "smoke.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_public_name_has_a_smoke_call():
    smoke = _smoke()
    missing = sorted(set(zn.__all__) - set(smoke.SMOKE))
    assert not missing, f"add a smoke call to SMOKE in .ci/smoke.py for: {missing}"
    stale = sorted(set(smoke.SMOKE) - set(zn.__all__))
    assert not stale, f"SMOKE in .ci/smoke.py names what zipfnce.__all__ no longer has: {stale}"


def test_smoke_calls_pass(capsys):
    assert _smoke().main() == 0, capsys.readouterr().out
