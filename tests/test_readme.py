"""The README's code blocks run as written (the README stays true)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def blocks():
    text = README.read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_has_python_examples():
    assert len(blocks()) >= 2


def test_readme_examples_run():
    namespace: dict = {}
    for code in blocks():
        needs = re.findall(r"^import (torch|jax|tensorflow)", code, re.M)
        for mod in needs:
            pytest.importorskip(mod)
        exec(compile(code, str(README), "exec"), namespace)
