"""Best-of-N sampling, judged by the model itself.

A unified model can check its own images: each image a caller asks for is drawn as N candidates
(N independent noises through the same sampler), a *judge* scores every candidate against the prompt,
and the best one is kept. The judge reads the image with the model's understanding path, so this needs
no second model; what it scores with is the judge's business (``shapes.self_check.ShapesJudge`` asks
the questions whose answers a shapes-world prompt fixes).

Row layout (noise drawn in this order): prompt p, image j, candidate c is row (p * K + j) * N + c,
K = images per prompt. With N = 1 the rows, and so the images, are those of plain sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from .errors import InputError


class Judge(Protocol):
    """Scores candidate images against a prompt; higher is better."""

    def validate(self, prompt: str) -> None:
        """Raise ``InputError`` for a prompt this judge cannot score (called before any sampling)."""

    def __call__(self, prompt: str, images: Sequence[Image.Image]) -> Sequence[float]:
        """One score per image."""


def check_candidates(candidates: int, judge: Judge | None, prompts: Sequence[str]) -> None:
    if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1:
        raise InputError(f"candidates must be a positive integer, got {candidates!r}")
    if candidates > 1:
        if judge is None:
            raise InputError("candidates > 1 needs a judge to pick the best of them")
        for prompt in prompts:
            judge.validate(prompt)


def best_candidates(prompts: Sequence[str], images_per_prompt: int, candidates: int,
                    images: Sequence[Image.Image], judge: Judge) -> list[int]:
    """Indices (into ``images``, laid out as above) of the kept candidate of every requested image:
    the highest score of its N, the first of them on a tie."""
    per_prompt = images_per_prompt * candidates
    if len(images) != len(prompts) * per_prompt:
        raise ValueError(f"expected {len(prompts) * per_prompt} candidate images, got {len(images)}")
    keep = []
    for p, prompt in enumerate(prompts):
        first = p * per_prompt
        scores = [float(s) for s in judge(prompt, images[first:first + per_prompt])]
        if len(scores) != per_prompt:
            raise ValueError(f"the judge returned {len(scores)} scores for {per_prompt} images")
        for j in range(images_per_prompt):
            group = range(j * candidates, (j + 1) * candidates)
            keep.append(first + max(group, key=lambda k: (scores[k], -k)))
    return keep
