"""Shared machinery of the hardening tests (test_hardening_*.py, test_value_stability.py, test_big_inputs.py).

- ``recipes``: arguments as plain, picklable data. ``Arr`` is an array given by its values, dtype, shape and
  memory layout (Fortran order, strided, negative strides, read-only, big-endian, unaligned, nested lists);
  ``Raw`` names an awkward Python object (a ragged list, a set, a generator...); ``SamplerRecipe`` a sampler.
  They are built into real arguments only in the process that makes the call.
- ``reference`` and ``checks``: values computed with NumPy alone, and the properties a result must have.
- ``registry``: ``REGISTRY`` holds every public function of docs/API.md with a strategy of valid arguments,
  strategies of hostile values per argument (``strategies``), the argument names an error may blame, and a
  check of the result's properties. A function joins with one ``register(Entry(...))`` in an ``entries_*``
  module; a registered function that ``zipfnce`` lacks fails its tests.
- ``worker``: ``Worker``, a child process that makes the calls one at a time, so that an abort, a segfault or a
  hang fails the example that caused it instead of ending the test run. It imports this package and runs
  ``run_recipe``, or a helper of ``in_worker`` by name.
"""

from __future__ import annotations

# Importing the entries modules registers their functions.
from . import (  # noqa: F401
    entries_dropins,
    entries_full,
    entries_infonce,
    entries_losses,
    entries_mixed,
    entries_retrieval,
    entries_samplers,
)
from .checks import _same
from .in_worker import HOPELESS_CASES, hopeless_sample
from .recipes import Arr, Drawn, Mutate, Raw, SamplerRecipe, Triple, build, canonical
from .registry import REGISTRY, Entry, Recipe, assemble, error_names, judge, register, run_recipe
from .worker import TESTS_DIR, Worker, WorkerDied

__all__ = [
    "Arr",
    "Drawn",
    "Entry",
    "HOPELESS_CASES",
    "Mutate",
    "REGISTRY",
    "Raw",
    "Recipe",
    "SamplerRecipe",
    "TESTS_DIR",
    "Triple",
    "Worker",
    "WorkerDied",
    "_same",
    "assemble",
    "build",
    "canonical",
    "error_names",
    "hopeless_sample",
    "judge",
    "register",
    "run_recipe",
]
