"""Generation prompts of the shapes world: the six GenEval-like categories.

    tag            template                                        constraint
    single_object  a {shape}
    two_object     a {shape} and a {shape2}                        shape != shape2
    counting       {number} {shape}s                               number in two..four
    colors         a {color} {shape}
    position       a {shape} {relation} a {shape2}                 shape != shape2
    color_attr     a {color} {shape} and a {color2} {shape2}       color != color2, shape != shape2

Prompts are lower case with no final full stop, and follow the templates word for word (so
"a orange circle", not "an orange circle"). There are 3 + 6 + 9 + 18 + 24 + 180 = 240 prompts.
`rng` arguments are `numpy.random.Generator`s.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .draws import pick
from .scorer import passes
from .world import CATEGORIES, COLORS, NUMBER_WORDS, RELATIONS, SHAPES, Placed, Scene

TEMPLATES: dict[str, str] = {
    "single_object": "a {shape}",
    "two_object": "a {shape} and a {shape2}",
    "counting": "{number} {shape}s",
    "colors": "a {color} {shape}",
    "position": "a {shape} {relation} a {shape2}",
    "color_attr": "a {color} {shape} and a {color2} {shape2}",
}
# The fields each category fills; every other field of a PromptSpec stays None.
CATEGORY_FIELDS: dict[str, tuple[str, ...]] = {
    "single_object": ("shape",),
    "two_object": ("shape", "shape2"),
    "counting": ("shape", "number"),
    "colors": ("shape", "color"),
    "position": ("shape", "relation", "shape2"),
    "color_attr": ("shape", "color", "shape2", "color2"),
}
COUNTING_NUMBERS = (2, 3, 4)


@dataclass(frozen=True)
class PromptSpec:
    """One generation prompt: its category `tag` and the fields its template fills."""

    tag: str
    shape: str
    shape2: str | None = None
    color: str | None = None
    color2: str | None = None
    number: int | None = None
    relation: str | None = None

    def __post_init__(self) -> None:
        if self.tag not in CATEGORIES:
            raise ValueError(f"unknown generation category {self.tag!r}; expected one of {CATEGORIES}")
        wanted = set(CATEGORY_FIELDS[self.tag])
        for name, value in self.fields_all().items():
            if (value is None) == (name in wanted):
                state = "needs" if name in wanted else "takes no"
                raise ValueError(f"a {self.tag} prompt {state} field {name!r}")
        for name, vocab in (("shape", SHAPES), ("shape2", SHAPES), ("color", COLORS),
                            ("color2", COLORS), ("relation", RELATIONS), ("number", COUNTING_NUMBERS)):
            value = getattr(self, name)
            if value is not None and value not in vocab:
                raise ValueError(f"{name}={value!r} is not one of {vocab}")
        if self.shape2 is not None and self.shape2 == self.shape:
            raise ValueError(f"a {self.tag} prompt needs two different shapes, got {self.shape!r} twice")
        if self.color2 is not None and self.color2 == self.color:
            raise ValueError(f"a {self.tag} prompt needs two different colours, got {self.color!r} twice")

    def fields_all(self) -> dict[str, str | int | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tag"}

    @property
    def fields(self) -> dict[str, str | int]:
        """The filled fields, e.g. {"shape": "circle", "color": "red"}."""
        return {name: value for name, value in self.fields_all().items() if value is not None}

    @property
    def text(self) -> str:
        words = dict(self.fields)
        if self.number is not None:
            words["number"] = NUMBER_WORDS[self.number]
        return TEMPLATES[self.tag].format(**words)


def _check_tag(tag: str) -> None:
    if tag not in CATEGORIES:
        raise ValueError(f"unknown generation category {tag!r}; expected one of {CATEGORIES}")


@lru_cache(maxsize=None)
def all_prompts(tag: str) -> tuple[PromptSpec, ...]:
    """Every prompt of category `tag`, in a fixed order."""
    _check_tag(tag)
    pairs = [(a, b) for a, b in itertools.product(SHAPES, SHAPES) if a != b]
    if tag == "single_object":
        return tuple(PromptSpec(tag, shape) for shape in SHAPES)
    if tag == "two_object":
        return tuple(PromptSpec(tag, a, shape2=b) for a, b in pairs)
    if tag == "counting":
        return tuple(PromptSpec(tag, s, number=n) for n in COUNTING_NUMBERS for s in SHAPES)
    if tag == "colors":
        return tuple(PromptSpec(tag, s, color=c) for c in COLORS for s in SHAPES)
    if tag == "position":
        return tuple(PromptSpec(tag, a, shape2=b, relation=r) for a, b in pairs for r in RELATIONS)
    return tuple(  # color_attr
        PromptSpec(tag, a, shape2=b, color=c, color2=c2)
        for a, b in pairs for c in COLORS for c2 in COLORS if c != c2
    )


@lru_cache(maxsize=1)
def _prompts_by_text() -> dict[str, PromptSpec]:
    return {p.text: p for tag in CATEGORIES for p in all_prompts(tag)}


def parse_prompt(text: str) -> PromptSpec:
    """The PromptSpec whose `.text` is exactly `text`; ValueError for anything else."""
    spec = _prompts_by_text().get(text)
    if spec is None:
        raise ValueError(
            f"not a shapes-world prompt: {text!r}. Prompts are lower case, without a full stop, "
            "and follow one of the templates: " + ", ".join(repr(t) for t in TEMPLATES.values())
        )
    return spec



def sample_prompt(rng: np.random.Generator, tag: str) -> PromptSpec:
    """A uniformly random prompt of category `tag`."""
    return pick(rng, all_prompts(tag))


# The categories whose prompts bind words to each other, and what swapping them means.
BINDING_SWAPS: dict[str, tuple[str, str]] = {"position": ("shape", "shape2"), "color_attr": ("color", "color2")}


def swapped_prompt(prompt: PromptSpec) -> PromptSpec | None:
    """The same words with their binding swapped ("a circle above a square" -> "a square above a
    circle", "a red circle and a blue square" -> "a blue circle and a red square"); None for a
    category without a binding (single object, two objects, counting, colours)."""
    if prompt.tag not in BINDING_SWAPS:
        return None
    a, b = BINDING_SWAPS[prompt.tag]
    return dataclasses.replace(prompt, **{a: getattr(prompt, b), b: getattr(prompt, a)})


# Which words an edit may replace, and by what: (kind, fields, vocabulary).
EDITABLE: tuple[tuple[str, tuple[str, ...], tuple], ...] = (
    ("shape", ("shape", "shape2"), SHAPES), ("color", ("color", "color2"), COLORS),
    ("relation", ("relation",), RELATIONS), ("number", ("number",), COUNTING_NUMBERS))


def edited_prompts(prompt: PromptSpec, binding_only: bool = True) -> dict[str, list[PromptSpec]]:
    """The prompts of the same category one edit away, by kind of edit: "swap" (the swapped twin),
    "shape", "color", "relation" and "number" (one such word replaced by another allowed one: "a
    red circle and a blue square" -> "... a blue triangle", "a green circle and ..."; "three
    circles" -> "two circles", "three squares"). With ``binding_only``, empty for a category
    without a binding (single object, two objects, counting, colours)."""
    twin = swapped_prompt(prompt)
    if twin is None and binding_only:
        return {}
    edits: dict[str, list[PromptSpec]] = {} if twin is None else {"swap": [twin]}
    for kind, names, vocab in EDITABLE:
        for name in names:
            if getattr(prompt, name) is None:
                continue
            for value in vocab:
                try:
                    edit = dataclasses.replace(prompt, **{name: value})
                except ValueError:  # the two shapes (or colours) of a prompt must differ
                    continue
                if edit != prompt:
                    edits.setdefault(kind, []).append(edit)
    return edits


# "swap": the swapped twin; "edits": one edit away (binding categories only); "all_edits": one edit
# away in every category (counting's number or shape, colours' colour or shape, ...).
NEGATIVE_KINDS: tuple[str, ...] = ("swap", "edits", "all_edits")


def negative_prompt(prompt: PromptSpec, objects: Sequence[Placed], kind: str,
                    rng: np.random.Generator | None = None) -> PromptSpec | None:
    """A prompt that ``objects`` fail, to contrast with ``prompt`` (None where no candidate is
    false of them): "swap", the swapped twin (position and colour attribution); "edits", a kind of
    :func:`edited_prompts` drawn uniformly by ``rng``, then one of that kind (the same two
    categories); "all_edits", the same in every category."""
    if kind not in NEGATIVE_KINDS:
        raise ValueError(f"the kind of negative must be one of {NEGATIVE_KINDS}, got {kind!r}")
    if kind == "swap":  # no draw, and not every edit built
        twin = swapped_prompt(prompt)
        return twin if twin is not None and not passes(twin, objects) else None
    groups = [kept for edits in edited_prompts(prompt, binding_only=kind == "edits").values()
              if (kept := [p for p in edits if not passes(p, objects)])]  # a distractor may make one hold
    return pick(rng, pick(rng, groups)) if groups else None


def true_prompts(scene: Scene, tag: str) -> list[PromptSpec]:
    """Every prompt of category `tag` that `scene` passes (relations by the >= 8 px rule)."""
    return [p for p in all_prompts(tag) if passes(p, scene.objects)]


def caption_for_scene(rng: np.random.Generator, scene: Scene) -> tuple[str, str]:
    """(tag, text): a true prompt for `scene`, of a category drawn uniformly among those with
    at least one true prompt, then a prompt drawn uniformly within it."""
    options = {tag: true_prompts(scene, tag) for tag in CATEGORIES}
    tag = pick(rng, [tag for tag in CATEGORIES if options[tag]])
    return tag, pick(rng, options[tag]).text
