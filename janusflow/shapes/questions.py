"""Understanding questions of the shapes world, their true answers, and answer scoring.

    form      question                                            answer            asked when
    count     how many shapes are there?                          one..four         always
    count_of  how many {shape}s are there?                        zero..four        always, each shape
    color_of  what color is the {shape}?                          a colour          exactly one {shape}
    shape_of  what shape is the {color} object?                   a shape           exactly one {color} object
    exists    is there a {color} {shape}?                         yes / no          always, all 18 pairs
    relation  is the {color} {shape} {relation} the {color2} {shape2}?  yes / no    both objects unique
    describe  describe the image.                                 see below         always

"Unique" for `relation`: exactly one object in the scene has that (colour, shape); the two
objects are different ones. The answer is yes iff the relation holds by the >= 8 px rule.
Answers are lower case without a full stop and use the template words literally ("a orange
circle").

Description: the objects left to right by cx, ties (same cx) top to bottom by cy, as
`a {color} {shape}` joined by ", " with a final " and ": "a red circle", "a red circle and a blue
square", "a red circle, a blue square and a green triangle".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .draws import check_weights, pick
from .world import COLORS, RELATIONS, SHAPES, Obj, Placed, Scene, number_word, relation_holds

FORMS: tuple[str, ...] = ("count", "count_of", "color_of", "shape_of", "exists", "relation", "describe")
YES_NO_FORMS: tuple[str, ...] = ("exists", "relation")
DESCRIBE_QUESTION = "describe the image."


class QA(NamedTuple):
    form: str
    question: str
    answer: str


def _yes_no(truth: bool) -> str:
    return "yes" if truth else "no"


def phrase(obj: Obj) -> str:
    """'a {color} {shape}'."""
    return f"a {obj.color} {obj.shape}"


def describe(scene: Scene) -> str:
    """The `describe the image.` answer: objects left to right (ties: top first)."""
    ordered = sorted(scene.objects, key=lambda o: (o.cx, o.cy, o.shape, o.color))
    items = [phrase(o) for o in ordered]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def questions_for_scene(scene: Scene) -> list[QA]:
    """Every question the spec allows about `scene`, with its true answer, in FORMS order."""
    objects = scene.objects
    shape_count = Counter(o.shape for o in objects)
    color_count = Counter(o.color for o in objects)
    look_count = Counter((o.color, o.shape) for o in objects)

    qas = [QA("count", "how many shapes are there?", number_word(len(objects)))]
    for shape in SHAPES:
        qas.append(QA("count_of", f"how many {shape}s are there?", number_word(shape_count[shape])))
    for shape in SHAPES:
        if shape_count[shape] == 1:
            (o,) = [o for o in objects if o.shape == shape]
            qas.append(QA("color_of", f"what color is the {shape}?", o.color))
    for color in COLORS:
        if color_count[color] == 1:
            (o,) = [o for o in objects if o.color == color]
            qas.append(QA("shape_of", f"what shape is the {color} object?", o.shape))
    for color in COLORS:
        for shape in SHAPES:
            truth = look_count[(color, shape)] > 0
            qas.append(QA("exists", f"is there a {color} {shape}?", _yes_no(truth)))
    unique = sorted(
        (o for o in objects if look_count[(o.color, o.shape)] == 1),
        key=lambda o: (COLORS.index(o.color), SHAPES.index(o.shape)),
    )
    for a in unique:
        for b in unique:
            if a is b:
                continue
            qas += [relation_question(a, b, relation) for relation in RELATIONS]
    qas.append(QA("describe", DESCRIBE_QUESTION, describe(scene)))
    return qas


def relation_question(a: Placed, b: Placed, relation: str) -> QA:
    """``is the {a} {relation} the {b}?`` with its answer by the >= 8 px rule (both objects unique)."""
    question = f"is the {a.color} {a.shape} {relation} the {b.color} {b.shape}?"
    return QA("relation", question, _yes_no(relation_holds(a, b, relation)))


def sample_question(rng: np.random.Generator, scene: Scene, form_weights: Mapping[str, float] | None = None) -> QA:
    """A random question about `scene`: a form drawn uniformly among those the scene allows (or in
    proportion to `form_weights`, 1 for a form not listed), then for yes/no forms an answer drawn
    50/50 (when both exist), then a question uniformly."""
    by_form: dict[str, list[QA]] = {}
    for qa in questions_for_scene(scene):
        by_form.setdefault(qa.form, []).append(qa)
    if form_weights:
        check_weights(form_weights, FORMS, "question forms")
    candidates = by_form[pick(rng, [form for form in FORMS if form in by_form], form_weights)]
    if candidates[0].form in YES_NO_FORMS:
        wanted = "yes" if rng.random() < 0.5 else "no"
        candidates = [qa for qa in candidates if qa.answer == wanted] or candidates
    return candidates[int(rng.integers(len(candidates)))]


_ITEM = re.compile(rf"an? ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})")
_SEPARATOR = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")


def parse_description(text: str) -> Counter | None:
    """The multiset of (colour, shape) a description names; None when it is not a list of
    `a {color} {shape}` items joined by commas and/or "and" (case, spaces, a final "." ignored)."""
    text = text.strip().lower().removesuffix(".").strip()
    items = _SEPARATOR.split(text)
    matches = [_ITEM.fullmatch(item) for item in items]
    if not text or not all(matches):
        return None
    return Counter(m.groups() for m in matches)


def score_answer(form: str, predicted: str, truth: str) -> bool:
    """Exact match after strip and lower case; `describe`: the same multiset of (colour, shape)."""
    if form not in FORMS:
        raise ValueError(f"unknown question form {form!r}; expected one of {FORMS}")
    if form == "describe":
        named, true = parse_description(predicted), parse_description(truth)
        return named is not None and named == true
    return predicted.strip().lower() == truth.strip().lower()
