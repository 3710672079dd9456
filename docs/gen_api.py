"""Write the reference part of docs/API.md from the package's docstrings.

    python docs/gen_api.py           rewrite docs/API.md below its marker line
    python docs/gen_api.py --check   exit 1 (and say what differs) when docs/API.md is out of date

The sources are read with ``ast``, not imported, so no framework (torch, JAX, TensorFlow) needs to be
installed and none is loaded. Each public name (a module's ``__all__``) gets its signature and its
docstring, with reStructuredText's double backticks turned into Markdown's.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import pathlib
import re
import sys
from typing import Iterable, List, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "zipfnce"
DOC = ROOT / "docs" / "API.md"
MARKER = "<!-- generated below by docs/gen_api.py from the docstrings: do not edit by hand -->"

# (section title, import prefix, source files in order). A file's public names are its ``__all__``.
SECTIONS = [
    ("Samplers", "zn", ["_samplers.py"]),
    ("TensorFlow-style samplers (NumPy in and out)", "zn", ["_dropins.py"]),
    ("Sampled softmax and NCE", "zn", ["_losses.py"]),
    ("InfoNCE", "zn", ["_infonce.py"]),
    ("Full softmax", "zn", ["_full.py"]),
    ("Mixed negatives (retrieval)", "zn", ["_retrieval.py"]),
    ("Streaming frequency estimates (logQ of in-batch negatives)", "zn", ["_freq.py"]),
    ("Threads", "zn", ["__init__.py"]),
    (
        "PyTorch: `import zipfnce.torch as znt`",
        "znt",
        ["torch/__init__.py", "torch/_full.py", "torch/_queue.py"],
    ),
    ("PyTorch across ranks: `import zipfnce.torch.distributed as znd`", "znd", ["torch/distributed.py"]),
    ("JAX: `import zipfnce.jax as znj`", "znj", ["jax.py"]),
    ("TensorFlow: `import zipfnce.tf as zntf`", "zntf", ["tf.py"]),
]
# Classes that are not exported but whose public methods every exported subclass has.
SHARED_BASES = {"_Sampler": "Every sampler"}
# Module-level strings that a module appends to its classes' docstrings at import time.
APPENDED_DOCS = {"_samplers.py": "_SEEDS_DOC"}


def markdown(doc: Optional[str]) -> str:
    text = inspect.cleandoc(doc or "(no docstring)")
    text = text.replace("``", "`")
    text = re.sub(r":(?:meth|class|func|attr):`~?([^`]+)`", r"`\1`", text)
    return text


def exported(tree: ast.Module) -> List[str]:
    names: List[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names = [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
        elif isinstance(node, ast.AugAssign) and getattr(node.target, "id", None) == "__all__":
            names += [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    return names


def signature(name: str, args: ast.arguments, drop_self: bool) -> str:
    a = ast.unparse(args)
    if drop_self:
        a = re.sub(r"^self(: [^,]+)?(, )?", "", a)
    return f"{name}({a})"


def public_methods(cls: ast.ClassDef) -> Iterable[ast.FunctionDef]:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node


def describe_class(prefix: str, cls: ast.ClassDef, heading: Optional[str] = None) -> List[str]:
    out: List[str] = []
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    title = heading or (
        f"`{prefix}.{signature(cls.name, init.args, True)}`" if init else f"`{prefix}.{cls.name}`"
    )
    doc = (
        "Methods common to all the samplers below."
        if heading
        else markdown(ast.get_docstring(cls, clean=False))
    )
    out += [f"### {title}", "", doc, ""]
    fields = [
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and not n.target.id.startswith("_")
    ]
    if fields and not init:
        out += ["Fields: " + ", ".join(f"`{f}`" for f in fields) + ".", ""]
    for m in public_methods(cls):
        is_prop = any(getattr(d, "id", None) == "property" for d in m.decorator_list)
        sig = m.name if is_prop else signature(m.name, m.args, True)
        ret = f" -> {ast.unparse(m.returns)}" if m.returns is not None and not is_prop else ""
        ret = re.sub(r"\b_S\b", "Self", ret)  # the TypeVar of "the same class as self"
        out += [f"- `{sig}{ret}`" + (" (property)" if is_prop else ""), ""]
        out += [
            "  " + line if line else "" for line in markdown(ast.get_docstring(m, clean=False)).splitlines()
        ]
        out += [""]
    return out


def describe_file(prefix: str, path: pathlib.Path) -> List[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    out: List[str] = []
    for base, heading in SHARED_BASES.items():
        if base in defs:
            out += describe_class(prefix, defs[base], heading)  # type: ignore[arg-type]
    appended = APPENDED_DOCS.get(path.name)
    if appended:
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == appended for t in node.targets):
                out += ["#### Seeds, copies and processes (every sampler's docstring ends with this)", ""]
                out += [markdown(ast.literal_eval(node.value)), ""]
    for name in exported(tree):
        node = defs.get(name)
        if isinstance(node, ast.ClassDef):
            out += describe_class(prefix, node)
        elif isinstance(node, ast.FunctionDef):
            ret = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
            out += [f"### `{prefix}.{signature(name, node.args, False)}{ret}`", ""]
            out += [markdown(ast.get_docstring(node, clean=False)), ""]
    return out


def reference() -> str:
    out = ["## Reference", ""]
    for title, prefix, files in SECTIONS:
        out += [f"## {title}", ""]
        for f in files:
            out += describe_file(prefix, PKG / f)
    return "\n".join(out).rstrip() + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when docs/API.md is out of date")
    args = ap.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    head, sep, _ = text.partition(MARKER)
    if not sep:
        print(f"{DOC}: the marker line is missing", file=sys.stderr)
        return 2
    new = head + MARKER + "\n\n" + reference()
    if args.check:
        if new != text:
            diff = difflib.unified_diff(
                text.splitlines(), new.splitlines(), "docs/API.md", "generated", lineterm=""
            )
            print("\n".join(list(diff)[:60]), file=sys.stderr)
            print("docs/API.md is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
