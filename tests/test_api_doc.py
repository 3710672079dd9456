"""docs/API.md, the public contract, stays true: its reference part is the docstrings as they are now."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_api_reference_matches_the_docstrings():
    r = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_api_reference_covers_every_public_name():
    import zipfnce

    text = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    missing = [n for n in zipfnce.__all__ if f"zn.{n}" not in text]
    assert not missing, f"not in docs/API.md: {missing}"
