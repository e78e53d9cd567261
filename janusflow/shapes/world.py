"""The shapes world's vocabulary and scene types (spec v1: /work/shared/shapes-world.md).

Coordinates: x to the right, y downwards, origin at the top-left corner of the canvas, in pixels.
Pixel (x, y) covers [x, x + 1] x [y, y + 1]; its centre is (x + 0.5, y + 0.5).
An object of size d at (x0, y0) owns the bounding box [x0, x0 + d] x [y0, y0 + d]; its position
is the centre of that box, (cx, cy) = (x0 + d / 2, y0 + d / 2). Sampled scenes use integer
x0, y0 and d, so every box edge lies on a pixel border.

Spacing ("2 px apart", ``GAP``): two boxes are apart when the gap between them along x or along
y is at least 2 px, e.g. ``b.x0 - (a.x0 + a.d) >= 2``; equivalently the two boxes, each grown by
1 px on every side, do not overlap. With integer coordinates at least two blank pixel columns or
rows separate the objects. A box is inside the canvas when ``x0 >= 2`` and ``x0 + d <= 62``
(likewise for y).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

IMAGE_SIZE = 64
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 75),
    "green": (60, 180, 75),
    "blue": (0, 130, 200),
    "yellow": (255, 225, 25),
    "purple": (145, 30, 180),
    "orange": (245, 130, 48),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {shape: shape + "s" for shape in SHAPES}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
# The six GenEval-like generation categories, in the spec's table order.
CATEGORIES: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr",
)

MIN_SIZE, MAX_SIZE = 12, 20  # side d of an object's box, inclusive
MIN_OBJECTS, MAX_OBJECTS = 1, 4
GAP = 2  # least gap (px) between two boxes, and between a box and the canvas border
RELATION_OFFSET = 8  # a relation holds when the centres differ by at least this (px)


class Placed(Protocol):
    """Anything with a shape, a colour and a position: a scene `Obj` or a scorer detection."""

    shape: str
    color: str

    @property
    def cx(self) -> float: ...

    @property
    def cy(self) -> float: ...


def number_word(n: int) -> str:
    """'zero' .. 'four'; the world never holds more than four objects."""
    if not 0 <= n < len(NUMBER_WORDS):
        raise ValueError(f"no number word for {n}: the shapes world counts 0..4")
    return NUMBER_WORDS[n]


def relation_offset(a: Placed, b: Placed, relation: str) -> float:
    """How far `a` is `relation` `b`, in px (left: b.cx - a.cx, above: b.cy - a.cy, ...)."""
    if relation == "to the left of":
        return b.cx - a.cx
    if relation == "to the right of":
        return a.cx - b.cx
    if relation == "above":
        return b.cy - a.cy
    if relation == "below":
        return a.cy - b.cy
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def relation_holds(a: Placed, b: Placed, relation: str) -> bool:
    """`a relation b` holds by the spec's rule: offset >= 8 px (e.g. left: b.cx - a.cx >= 8)."""
    return relation_offset(a, b, relation) >= RELATION_OFFSET


@dataclass(frozen=True)
class Obj:
    """One object: `shape` of colour `color` in the box [x0, x0 + d] x [y0, y0 + d]."""

    shape: str
    color: str
    x0: int
    y0: int
    d: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in PALETTE:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {COLORS}")
        if self.d <= 0:
            raise ValueError(f"object size must be positive, got d={self.d}")

    @property
    def cx(self) -> float:
        return self.x0 + self.d / 2

    @property
    def cy(self) -> float:
        return self.y0 + self.d / 2


def inside_canvas(obj: Obj) -> bool:
    """The box stays at least GAP px inside the canvas: GAP <= x0 and x0 + d <= 64 - GAP (and y)."""
    lo, hi = GAP, IMAGE_SIZE - GAP
    return lo <= obj.x0 and obj.x0 + obj.d <= hi and lo <= obj.y0 and obj.y0 + obj.d <= hi


def boxes_apart(a: Obj, b: Obj) -> bool:
    """The boxes are separated by a gap of at least GAP px along x or along y."""
    return (
        b.x0 - (a.x0 + a.d) >= GAP
        or a.x0 - (b.x0 + b.d) >= GAP
        or b.y0 - (a.y0 + a.d) >= GAP
        or a.y0 - (b.y0 + b.d) >= GAP
    )


@dataclass(frozen=True)
class Scene:
    """1 to 4 objects on a white 64 x 64 canvas. Object order carries no meaning."""

    objects: tuple[Obj, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))

    def problems(self) -> list[str]:
        """Every way this scene breaks the spec (count, sizes, margins, spacing); [] when valid."""
        found = []
        n = len(self.objects)
        if not MIN_OBJECTS <= n <= MAX_OBJECTS:
            found.append(f"{n} objects, expected {MIN_OBJECTS}..{MAX_OBJECTS}")
        for i, obj in enumerate(self.objects):
            if not MIN_SIZE <= obj.d <= MAX_SIZE or int(obj.d) != obj.d:
                found.append(f"object {i}: size {obj.d} is not an integer in {MIN_SIZE}..{MAX_SIZE}")
            if not inside_canvas(obj):
                found.append(f"object {i}: box not {GAP} px inside the canvas")
            for j in range(i):
                if not boxes_apart(self.objects[j], obj):
                    found.append(f"objects {j} and {i}: boxes less than {GAP} px apart")
        return found

    def validate(self) -> Scene:
        """Raise ValueError naming every problem; return the scene itself when valid."""
        found = self.problems()
        if found:
            raise ValueError("invalid shapes-world scene: " + "; ".join(found))
        return self
