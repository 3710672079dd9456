"""The registry: one ``Entry`` per public function, the ``Recipe`` of one call, and how an outcome is
judged."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

from .recipes import SamplerRecipe, build, canonical


@dataclass
class Entry:
    """A public function: how to call it, valid and hostile arguments, and what a result must satisfy.

    ``call(recipe_kind, built_args)`` makes the call; ``valid`` is a strategy of (kind, {arg: recipe}); ``hostile``
    maps an argument to a strategy of bad recipes for it; ``blame`` maps an argument to the names an error may
    give when that argument is the bad one (itself always allowed); ``check(recipe, args, out, again)`` asserts
    the result's properties. Every entry's function exists in ``zipfnce``: a missing one fails its tests.
    """

    name: str
    call: Callable[[str, Dict[str, Any]], Any]
    valid: Callable[[], Any]
    hostile: Callable[[], Dict[str, Any]]
    check: Callable[..., None]
    blame: Dict[str, FrozenSet[str]] = field(default_factory=dict)
    names: FrozenSet[str] = frozenset()


REGISTRY: Dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    REGISTRY[entry.name] = entry
    return entry


@dataclass(frozen=True)
class Recipe:
    """One call: the entry, a tag for the checks (sampler kind, drop-in name), and the argument recipes."""

    entry: str
    kind: str
    args: Tuple[Tuple[str, Any], ...]
    hostile: Optional[str] = None  # the argument that was made bad, if any

    @property
    def kwargs(self) -> Dict[str, Any]:
        return dict(self.args)


def run_recipe(recipe: Recipe) -> Dict[str, Any]:
    """Make the call and check it. Returns {"status": "ok" | "raised" | "failed", ...}. Never raises."""
    entry = REGISTRY[recipe.entry]
    try:
        args = {k: build(v) for k, v in recipe.args}
    except (ValueError, TypeError) as e:
        if isinstance(dict(recipe.args).get("self"), SamplerRecipe):
            # A random sampler recipe the library refuses (a shard whose weights are all zero, say): the
            # constructor's own tests judge that; this call has nothing to check.
            return {"status": "skipped", "why": repr(e)}
        return {"status": "failed", "why": f"could not build the arguments: {e!r}\n{traceback.format_exc()}"}
    except BaseException as e:  # the recipe itself is broken: a defect of the test
        return {"status": "failed", "why": f"could not build the arguments: {e!r}\n{traceback.format_exc()}"}
    try:
        out = entry.call(recipe.kind, args)
    except BaseException as e:  # PanicException derives from BaseException
        return {
            "status": "raised",
            "type": type(e).__name__,
            "mro": [c.__name__ for c in type(e).__mro__],
            "message": str(e),
        }

    def again(canonical_layout: bool) -> Any:
        rebuilt = {k: build(canonical(v) if canonical_layout else v) for k, v in recipe.args}
        return entry.call(recipe.kind, rebuilt)

    try:
        sampler_recipe = dict(recipe.args).get("self")
        entry.check(sampler_recipe if isinstance(sampler_recipe, SamplerRecipe) else recipe, args, out, again)
    except BaseException as e:
        return {"status": "failed", "why": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    return {"status": "ok"}


def error_names(message: str) -> str:
    """The argument an error message blames: the text before the first colon."""
    return message.split(":", 1)[0].strip()


def judge(recipe: Recipe, outcome: Dict[str, Any]) -> Optional[str]:
    """None when the outcome is acceptable, else a description of what is wrong."""
    entry = REGISTRY[recipe.entry]
    st_ = outcome["status"]
    if st_ in ("ok", "skipped"):
        return None
    if st_ == "failed":
        return "wrong result: " + outcome["why"]
    if st_ != "raised":
        return f"{st_}: {outcome.get('why', '')}"
    if outcome["type"] not in ("ValueError", "TypeError"):
        return f"raised {outcome['type']} (not ValueError/TypeError): {outcome['message']}"
    blamed = error_names(outcome["message"])
    if recipe.hostile is not None:
        allowed = {recipe.hostile} | set(entry.blame.get(recipe.hostile, ()))
    else:
        allowed = set(entry.names)
    if blamed not in allowed:
        return f"{outcome['type']} blames {blamed!r}, expected one of {sorted(allowed)}: {outcome['message']}"
    return None


def assemble(kind_args: Tuple[str, Dict[str, Any]], entry: str, hostile: Optional[str] = None) -> Recipe:
    kind, args = kind_args
    return Recipe(entry, kind, tuple(args.items()), hostile)
