"""Random scenes of the shapes world, unconditional and for a given generation prompt.

Placement: each object draws an integer size d uniformly in 12..20 and integer x0, y0 uniformly
in 2..(62 - d) (so its box stays 2 px inside the canvas), and is redrawn until its box is
`boxes_apart` from every box placed before it (a gap of >= 2 px along x or y). An object that
finds no place in `TRIES_PER_OBJECT` draws restarts the scene; after `MAX_RESTARTS` restarts the
sampler raises RuntimeError. Colours and shapes are uniform. `rng` is a `numpy.random.Generator`.

`scene_for_prompt` builds training images for a prompt: the objects the prompt asks for plus
distractors the category allows, redrawn until the scene passes the prompt under the scorer's rule:
    single_object, two_object  the named shape(s), plus any objects, 1..4 (2..4) in all
    counting                   exactly {number} objects of the shape, any colours, nothing else
    colors                     1..4 objects of the shape, all of the colour, plus other shapes
    position, color_attr       the two named objects, plus 0..2 objects of the third shape (so
                               the relation or the colour binding stays unambiguous)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .draws import pick
from .prompts import PromptSpec
from .scorer import passes
from .world import (
    COLORS, GAP, IMAGE_SIZE, MAX_OBJECTS, MAX_SIZE, MIN_OBJECTS, MIN_SIZE, SHAPES, Obj, Scene,
    boxes_apart,
)

TRIES_PER_OBJECT = 200
MAX_RESTARTS = 100
MAX_PROMPT_TRIES = 200

Look = tuple[str, str]  # (shape, colour)



def _uniform(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer uniform in lo..hi inclusive."""
    return int(rng.integers(lo, hi + 1))


def random_look(rng: np.random.Generator, shapes: Sequence[str] = SHAPES) -> Look:
    return pick(rng, shapes), pick(rng, COLORS)


def place_objects(rng: np.random.Generator, looks: Sequence[Look]) -> Scene:
    """A valid scene holding one object per (shape, colour) in `looks`, at random sizes/places."""
    for _ in range(MAX_RESTARTS):
        placed: list[Obj] = []
        for shape, color in looks:
            for _ in range(TRIES_PER_OBJECT):
                d = _uniform(rng, MIN_SIZE, MAX_SIZE)
                x0 = _uniform(rng, GAP, IMAGE_SIZE - GAP - d)
                y0 = _uniform(rng, GAP, IMAGE_SIZE - GAP - d)
                candidate = Obj(shape, color, x0, y0, d)
                if all(boxes_apart(candidate, other) for other in placed):
                    placed.append(candidate)
                    break
            else:
                break  # no room for this object: restart the scene
        else:
            return Scene(tuple(placed))
    raise RuntimeError(f"could not place {len(looks)} objects in {MAX_RESTARTS} restarts")


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A random scene of `n_objects` (default: uniform in 1..4) uniform shapes and colours."""
    if n_objects is None:
        n_objects = _uniform(rng, MIN_OBJECTS, MAX_OBJECTS)
    if not MIN_OBJECTS <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in {MIN_OBJECTS}..{MAX_OBJECTS}, got {n_objects}")
    return place_objects(rng, [random_look(rng) for _ in range(n_objects)])


def looks_for_prompt(rng: np.random.Generator, prompt: PromptSpec, distractors: bool = True) -> list[Look]:
    """The (shape, colour) list of a scene for `prompt`: what it asks for plus allowed distractors
    (up to 4 objects in all); with ``distractors=False``, only what it names (one object for
    ``a {shape}`` and ``a {color} {shape}``, two for the two-object forms, the number for counting)."""
    tag, shape = prompt.tag, prompt.shape
    named = [s for s in (prompt.shape, prompt.shape2) if s is not None]
    others = [s for s in SHAPES if s not in named]

    def count(least: int) -> int:  # objects in all: `least` named ones, plus distractors when allowed
        return _uniform(rng, least, MAX_OBJECTS) if distractors else least

    if tag == "single_object":
        n = count(1)
        looks = [random_look(rng, [shape])] + [random_look(rng) for _ in range(n - 1)]
    elif tag == "two_object":
        n = count(2)
        looks = [random_look(rng, named[:1]), random_look(rng, named[1:])]
        looks += [random_look(rng) for _ in range(n - 2)]
    elif tag == "counting":
        looks = [random_look(rng, [shape]) for _ in range(prompt.number)]
    elif tag == "colors":
        n = count(1)
        k = _uniform(rng, 1, n)
        looks = [(shape, prompt.color)] * k + [random_look(rng, others) for _ in range(n - k)]
    elif tag == "position":
        n = count(2)
        looks = [random_look(rng, named[:1]), random_look(rng, named[1:])]
        looks += [random_look(rng, others) for _ in range(n - 2)]
    elif tag == "color_attr":
        n = count(2)
        looks = [(shape, prompt.color), (prompt.shape2, prompt.color2)]
        looks += [random_look(rng, others) for _ in range(n - 2)]
    else:
        raise ValueError(f"unknown generation category {tag!r}")
    return [looks[i] for i in rng.permutation(len(looks))]


def scene_for_prompt(rng: np.random.Generator, prompt: PromptSpec, distractors: bool = True) -> Scene:
    """A random valid scene that passes `prompt` (scorer rule on the true objects); see
    :func:`looks_for_prompt` for ``distractors``."""
    for _ in range(MAX_PROMPT_TRIES):
        scene = place_objects(rng, looks_for_prompt(rng, prompt, distractors))
        if passes(prompt, scene.objects):
            return scene
    raise RuntimeError(f"no scene passing {prompt.text!r} in {MAX_PROMPT_TRIES} tries")
