"""The README's code blocks run as written (the README stays true).

The NumPy blocks run in order in one namespace, and each block of the NumPy section also runs on its own in
a fresh namespace (a reader copies one block). Each block that imports a framework runs on its own in a
fresh interpreter: TensorFlow and the CUDA build of PyTorch from PyPI must not share a process (their LLVM
copies clash), and a fresh interpreter also proves the block is self-contained.
"""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
FRAMEWORKS = ("torch", "jax", "tensorflow")


def blocks():
    text = README.read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def numpy_section_blocks():
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Use it from NumPy\n(.*?)^## ", text, re.S | re.M)
    assert section, "README.md has no '## Use it from NumPy' section"
    return re.findall(r"```python\n(.*?)```", section.group(1), re.S)


def framework_of(code):
    for mod in FRAMEWORKS:
        if re.search(rf"^import {mod}\b", code, re.M):
            return mod
    return None


def test_readme_has_examples_for_every_framework():
    found = {framework_of(b) for b in blocks()}
    assert {None, *FRAMEWORKS} <= found


def test_readme_numpy_examples_run():
    namespace: dict = {}
    for code in blocks():
        if framework_of(code) is None:
            exec(compile(code, str(README), "exec"), namespace)


def test_readme_numpy_section_has_its_blocks():
    assert len(numpy_section_blocks()) >= 3


@pytest.mark.parametrize("i", range(len(numpy_section_blocks())))
def test_readme_numpy_block_runs_on_its_own(i):
    code = numpy_section_blocks()[i]
    exec(compile(code, f"{README} (NumPy block {i + 1})", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_readme_framework_examples_run(framework):
    pytest.importorskip(framework)
    for code in blocks():
        if framework_of(code) == framework:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
