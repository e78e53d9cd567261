"""The exact image reader and the generation / understanding scores of the shapes world.

Reading an image (`detect_objects`):
1. Snap every pixel to the nearest of white and the six palette colours (Euclidean distance in
   RGB; an exact tie goes to the earlier of white, red, green, blue, yellow, purple, orange).
2. Split each colour into 4-connected components; components under 20 px are noise, dropped.
3. Name each component's shape by its fill ratio, pixels / (width * height) of its pixel bounding
   box, as the nearest of square 1.0, circle 0.785, triangle 0.5. The thresholds are the midpoints:
   fill >= 0.8925 square, 0.6425 <= fill < 0.8925 circle, fill < 0.6425 triangle.
4. Position (cx, cy) is the centre of the object's box, read from the component's pixel box
   [xmin, xmax + 1] x [ymin, ymax + 1]: cx = (xmin + xmax + 1) / 2 and, for circles and squares,
   cy = (ymin + ymax + 1) / 2. A triangle's apex only touches the top row of its box when d is even
   (that row's pixel centres miss the apex point), so a triangle's box is read as the square of side
   `width` standing on its base row: cy = ymax + 1 - width / 2. On renders of this world both
   rules give the true (cx, cy) exactly.

Scores: a category's score is the share of its images that pass, overall is the mean over the
categories present (all six: GenEval's overall). Understanding: accuracy per question form and
overall accuracy over all answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .world import BACKGROUND, CATEGORIES, COLORS, PALETTE, Placed, relation_holds

if TYPE_CHECKING:
    from .prompts import PromptSpec

MIN_COMPONENT_PIXELS = 20
# Fill ratio of each shape's bounding box, in tie-break order (a tie goes to the fuller shape).
FILL_RATIOS: dict[str, float] = {"square": 1.0, "circle": 0.785, "triangle": 0.5}
# Snapping targets: index 0 is white, index i >= 1 is COLORS[i - 1].
SNAP_COLORS = np.array([BACKGROUND, *PALETTE.values()], dtype=np.int64)  # (7, 3)


@dataclass(frozen=True)
class Detection:
    """An object read from an image. `box` = (xmin, ymin, xmax + 1, ymax + 1) in pixel edges."""

    shape: str
    color: str
    cx: float
    cy: float
    n_pixels: int
    fill: float
    box: tuple[int, int, int, int]


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"expected a PIL image or an (H, W, 3) uint8 array, got {array.dtype} {array.shape}"
        )
    return array


def snap_colors(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) int: 0 for white, i >= 1 for palette colour COLORS[i - 1] (nearest in RGB)."""
    rgb = _as_rgb_array(image).astype(np.int64)  # (H, W, 3)
    dist2 = ((rgb[:, :, None, :] - SNAP_COLORS[None, None]) ** 2).sum(-1)  # (H, W, 7)
    return dist2.argmin(-1)  # argmin keeps the first of equal distances


def connected_components(classes: np.ndarray) -> np.ndarray:
    """4-connected components of equal values in the (H, W) array `classes`.

    Returns (H, W) labels; a component's label is the smallest flat index (y * W + x) of its
    pixels. Min-label propagation between equal 4-neighbours, with pointer jumping
    (label <- label of the pixel the label names) to converge in few sweeps.
    """
    h, w = classes.shape
    labels = np.arange(h * w).reshape(h, w)
    same_x = classes[:, 1:] == classes[:, :-1]  # pixel (y, x) joins (y, x + 1)
    same_y = classes[1:, :] == classes[:-1, :]  # pixel (y, x) joins (y + 1, x)
    while True:
        new = labels.copy()
        new[:, 1:] = np.where(same_x, np.minimum(new[:, 1:], labels[:, :-1]), new[:, 1:])
        new[:, :-1] = np.where(same_x, np.minimum(new[:, :-1], labels[:, 1:]), new[:, :-1])
        new[1:, :] = np.where(same_y, np.minimum(new[1:, :], labels[:-1, :]), new[1:, :])
        new[:-1, :] = np.where(same_y, np.minimum(new[:-1, :], labels[1:, :]), new[:-1, :])
        new = new.ravel()[new].reshape(h, w)  # pointer jumping; stays inside the component
        if np.array_equal(new, labels):
            return labels
        labels = new


def shape_from_fill(fill: float) -> str:
    """The shape whose fill ratio is nearest to `fill` (ties to the fuller shape)."""
    return min(FILL_RATIOS, key=lambda shape: abs(FILL_RATIOS[shape] - fill))


def detect_objects(image: Image.Image | np.ndarray) -> list[Detection]:
    """Every object the scorer reads in `image`, ordered by the top-left-most pixel."""
    classes = snap_colors(image)
    labels = connected_components(classes)
    ids, counts = np.unique(labels[classes != 0], return_counts=True)
    found = []
    for label, count in zip(ids.tolist(), counts.tolist()):
        if count < MIN_COMPONENT_PIXELS:
            continue
        ys, xs = np.nonzero(labels == label)
        xmin, xmax, ymin, ymax = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
        width, height = xmax - xmin + 1, ymax - ymin + 1
        fill = count / (width * height)
        shape = shape_from_fill(fill)
        cx = (xmin + xmax + 1) / 2
        cy = ymax + 1 - width / 2 if shape == "triangle" else (ymin + ymax + 1) / 2
        color = COLORS[int(classes.flat[label]) - 1]
        found.append(Detection(shape, color, cx, cy, count, fill, (xmin, ymin, xmax + 1, ymax + 1)))
    return found


def passes(prompt: PromptSpec, objects: Sequence[Placed]) -> bool:
    """Whether `objects` (detections, or a scene's true objects) pass `prompt` (spec's table)."""
    of_shape = [o for o in objects if o.shape == prompt.shape]
    tag = prompt.tag
    if tag == "single_object":
        return len(of_shape) >= 1
    if tag == "two_object":
        return len(of_shape) >= 1 and any(o.shape == prompt.shape2 for o in objects)
    if tag == "counting":
        return len(of_shape) == prompt.number and len(objects) == prompt.number
    if tag == "colors":
        return len(of_shape) >= 1 and all(o.color == prompt.color for o in of_shape)
    if tag == "position":
        of_shape2 = [o for o in objects if o.shape == prompt.shape2]
        return any(relation_holds(a, b, prompt.relation) for a in of_shape for b in of_shape2)
    if tag == "color_attr":
        return any(o.color == prompt.color for o in of_shape) and any(
            o.shape == prompt.shape2 and o.color == prompt.color2 for o in objects
        )
    raise ValueError(f"unknown generation category {tag!r}; expected one of {CATEGORIES}")


def score_image(prompt: PromptSpec, image: Image.Image | np.ndarray) -> bool:
    """Read `image` and say whether it passes `prompt`."""
    return passes(prompt, detect_objects(image))


def score_generation(results: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """(category tag, passed) pairs -> {tag: share passed, ..., "overall": mean over tags}."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for tag, passed in results:
        if tag not in CATEGORIES:
            raise ValueError(f"unknown generation category {tag!r}; expected one of {CATEGORIES}")
        by_tag[tag].append(bool(passed))
    if not by_tag:
        raise ValueError("score_generation needs at least one result")
    scores = {tag: float(np.mean(by_tag[tag])) for tag in CATEGORIES if tag in by_tag}
    scores["overall"] = float(np.mean(list(scores.values())))
    return scores


def score_understanding(results: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """(question form, answered right) pairs -> {form: accuracy, ..., "overall": accuracy}.

    "overall" is the accuracy over all answers (each question weighs the same). Use
    `questions.score_answer(form, predicted, truth)` to get each bool.
    """
    by_form: dict[str, list[bool]] = defaultdict(list)
    for form, correct in results:
        by_form[form].append(bool(correct))
    if not by_form:
        raise ValueError("score_understanding needs at least one result")
    scores = {form: float(np.mean(answers)) for form, answers in by_form.items()}
    scores["overall"] = float(np.mean([c for answers in by_form.values() for c in answers]))
    return scores
