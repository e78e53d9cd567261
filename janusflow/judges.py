"""Named judges for best-of-N sampling: a registry the core reads and plugins fill.

A model folder's ``image_generation_config.json`` may name the judge of its best-of-N
(``{"candidates": 4, "judge": "shapes"}``); the core knows judges only by name, through here:

    register_judge(name, factory)      factory(model, processor) -> a best_of.Judge
    make_judge(name, model, processor)

A name nobody has registered yet is looked up, then registered:
  1. among the entry points of installed distributions in the group ``janusflow.judges``
     (``name = "module:factory"``; a third-party package adds its judge this way), then
  2. as a plugin subpackage of janusflow, ``janusflow.<name>``, whose import registers it
     (``janusflow.shapes`` registers "shapes" when imported).
So a folder naming "shapes" works from anywhere (the pipeline, the command line, the server) with no
import of ``janusflow.shapes`` in the core.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "janusflow.judges"

JudgeFactory = Callable[..., object]  # (model, processor) -> best_of.Judge

_REGISTRY: dict[str, JudgeFactory] = {}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def register_judge(name: str, factory: JudgeFactory) -> None:
    """Make ``name`` a judge ``image_generation_config.json`` can name; registering it again replaces it."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a judge name is lower case letters, digits and _, got {name!r}")
    if not callable(factory):
        raise TypeError(f"the factory of judge {name!r} is not callable")
    _REGISTRY[name] = factory


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def find_judge(name: str) -> JudgeFactory | None:
    """The factory of judge ``name`` (registered, from an entry point, or from its plugin subpackage), or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None
    if name in _REGISTRY:
        return _REGISTRY[name]
    point = _entry_points().get(name)
    if point is not None:
        register_judge(name, point.load())
        return _REGISTRY[name]
    plugin = f"{__package__}.{name}"
    if importlib.util.find_spec(plugin) is not None:
        importlib.import_module(plugin)  # registers its judges
    return _REGISTRY.get(name)


def judge_names() -> list[str]:
    """Every name known without importing anything: registered ones and installed entry points."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def make_judge(name: str, model, processor):
    factory = find_judge(name)
    if factory is None:
        raise KeyError(f"no judge named {name!r} (known: {judge_names()})")
    return factory(model, processor)
