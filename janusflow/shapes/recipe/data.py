"""Shapes-world batches rendered on the fly, shared by the recipe's parts.

Every batch is a pure function of (seed, step): `batch_rng(seed, step)` seeds a fresh
`numpy.random.Generator`, so a resumed run sees exactly the batches it would have seen without
stopping, and no data position needs saving. Evaluation uses seeds no training run uses
(`EVAL_SEED`), so its scenes are fresh.

Pixels follow the processor's convention: uint8 x -> x / 127.5 - 1 in [-1, 1].
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch

from ..render import render_array
from ..sampler import sample_scene
from ..scorer import Detection, detect_objects
from ..world import Scene

EVAL_SEED = 10_000_019  # evaluation scenes; training seeds are small integers


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of batch `step` of a run seeded `seed`."""
    return np.random.default_rng([seed, step])


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8 (clamped, rounded)."""
    images = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return images.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def scene_images(rng: np.random.Generator, batch_size: int) -> tuple[list[Scene], torch.Tensor]:
    """`batch_size` random scenes and their renders, (B, 3, 64, 64) in [-1, 1]."""
    scenes = [sample_scene(rng) for _ in range(batch_size)]
    return scenes, to_pixels(np.stack([render_array(s) for s in scenes]))


# ------------------------------------------------------------------------------------------------
# Reading an image back: does the scorer see exactly the scene's objects?


def read_matches(scene: Scene, image: np.ndarray | list[Detection], tolerance: float = 1.0) -> bool:
    """The scorer reads in `image` (or gave `found` detections) exactly the (shape, colour)
    multiset of `scene`, each within `tolerance` px of its object in cx and cy (best matching)."""
    found = image if isinstance(image, list) else detect_objects(image)
    truth = scene.objects
    if Counter((d.shape, d.color) for d in found) != Counter((o.shape, o.color) for o in truth):
        return False
    for look in {(o.shape, o.color) for o in truth}:
        objs = [o for o in truth if (o.shape, o.color) == look]
        dets = [d for d in found if (d.shape, d.color) == look]
        if not any(
            all(abs(o.cx - d.cx) <= tolerance and abs(o.cy - d.cy) <= tolerance for o, d in zip(objs, order))
            for order in itertools.permutations(dets)
        ):
            return False
    return True
