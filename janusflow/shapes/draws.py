"""Random choices of the shapes world's samplers: uniform, or in proportion to named weights.

`pick(rng, items)` draws uniformly with one `rng.integers` call (the draw every sampler of the world
uses, so seeded streams stay as they are); `pick(rng, items, weights)` draws item k with probability
weights.get(k, 1) / sum, e.g. the recipe's `und_form_weights` over question forms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def pick(rng: np.random.Generator, items: Sequence[T], weights: Mapping[T, float] | None = None) -> T:
    """One of `items`: uniform when `weights` is empty or None, else by weight (1 for an item not named)."""
    if not weights:
        return items[int(rng.integers(len(items)))]
    p = np.array([float(weights.get(item, 1.0)) for item in items])
    if not p.sum() > 0:
        raise ValueError(f"every choice among {list(items)} has weight 0")
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def check_weights(weights: Mapping[str, float], names: Sequence[str], what: str) -> None:
    """ValueError unless every key is one of `names` (`what`, plural: "question forms") and every
    weight a finite number >= 0, not all 0 (an item not named weighs 1)."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; the {what} are {tuple(names)}")
    bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float)) and 0 <= v < math.inf)}
    if bad:
        raise ValueError(f"weights of {what} must be finite numbers >= 0, got {bad}")
    if not sum(float(weights.get(name, 1.0)) for name in names) > 0:
        raise ValueError(f"all {what} have weight 0")
