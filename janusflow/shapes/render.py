"""Exact, hard-edged rendering of a scene.

Rule: pixel (x, y) takes an object's colour iff its centre (x + 0.5, y + 0.5) lies in the closed
shape (inside or on the edge), with

    square    x0 <= px <= x0 + d  and  y0 <= py <= y0 + d
    circle    (px - cx)^2 + (py - cy)^2 <= (d / 2)^2
    triangle  py <= y0 + d  and  |px - cx| <= (py - y0) / 2
              (apex (cx, y0), base from (x0, y0 + d) to (x0 + d, y0 + d))

For integer x0, y0, d no pixel centre ever lies exactly on an edge (the centres sit on half
integers, the edges do not pass through them), so the closed and the open rule give the same
pixels; all the arithmetic is on multiples of 1/4 and exact in float64. Everything else is the
white background. Objects are painted in scene order (only relevant for invalid, overlapping scenes).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .world import BACKGROUND, IMAGE_SIZE, PALETTE, Obj, Scene


def shape_mask(obj: Obj, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie in `obj` (closed shape)."""
    centres = np.arange(size) + 0.5
    px, py = centres[None, :], centres[:, None]  # (1, W), (H, 1)
    x0, y0, d = obj.x0, obj.y0, obj.d
    if obj.shape == "square":
        return (x0 <= px) & (px <= x0 + d) & (y0 <= py) & (py <= y0 + d)
    if obj.shape == "circle":
        return (px - obj.cx) ** 2 + (py - obj.cy) ** 2 <= (d / 2) ** 2
    if obj.shape == "triangle":
        # half-width grows linearly from 0 at the apex row y0 to d / 2 at the base row y0 + d
        return (py <= y0 + d) & (np.abs(px - obj.cx) <= (py - y0) / 2)
    raise ValueError(f"unknown shape {obj.shape!r}")


def render_array(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 RGB render of `scene` on white."""
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for obj in scene.objects:
        canvas[shape_mask(obj, size)] = PALETTE[obj.color]
    return canvas


def render(scene: Scene) -> Image.Image:
    """64 x 64 RGB PIL image of `scene`."""
    return Image.fromarray(render_array(scene))
