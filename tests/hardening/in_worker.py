"""Helpers that tests run inside a worker, by name, through ``Worker.exec``."""

from __future__ import annotations

from typing import Tuple


def _hopeless_cases():
    import zipfnce as zn

    return [
        (lambda: zn.UnigramSampler([1e300, 1e-300, 5e-324, 0.0]), 3, {}),
        (lambda: zn.ZipfSampler(10**9, 50.0), 20, {}),
        (lambda: zn.ZipfSampler(10, 1e300), 1, {"unique": False, "true_classes": [0], "remove_true": True}),
    ]


HOPELESS_CASES = 3


def hopeless_sample(case: int) -> Tuple[str, str]:
    """Run hopeless request `case`; returns (exception type, message)."""
    make, n, kw = _hopeless_cases()[case]
    try:
        make().sample(n, seed=1, **kw)
    except Exception as e:
        return type(e).__name__, str(e)
    return "no error", ""
