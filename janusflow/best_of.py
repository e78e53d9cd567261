"""Best-of-N sampling, judged by the model itself.

A unified model can check its own images: each image a caller asks for is drawn as N candidates
(N independent noises through the same sampler), a *judge* scores every candidate against the prompt,
and the best one is kept. The judge reads the image with the model's understanding path, so this needs
no second model; what it scores with is the judge's business (``shapes.self_check.ShapesJudge`` asks
the questions whose answers a shapes-world prompt fixes).

Row layout (noise drawn in this order): prompt p, image j, candidate c is row (p * K + j) * N + c,
K = images per prompt. With N = 1 the rows, and so the images, are those of plain sampling.

Early stop: a judge with a ``perfect`` score (one no candidate can beat) lets the search draw the
candidates in rounds, candidate c of every image still searching in round c, and stop an image at its
first candidate that scores ``perfect``. The kept candidate is the one the full search keeps (the
highest score, the first of them on a tie), from the same noise rows; only the candidates after it
are never drawn. A judge without ``perfect`` sees all N candidates in one round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from PIL import Image

from .errors import InputError


class Judge(Protocol):
    """Scores candidate images against a prompt; higher is better. Optionally ``perfect``: the
    highest score it can give (a candidate scoring it ends its image's search)."""

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


def search(prompts: Sequence[str], images_per_prompt: int, candidates: int, judge: Judge,
           draw: Callable[[list[int]], Sequence[Image.Image]]) -> list[int]:
    """The kept row (layout above) of every requested image. ``draw(rows)`` samples the given rows
    (ascending) and returns their images in that order; it is called once a round."""
    perfect = getattr(judge, "perfect", None)
    per_round = candidates if perfect is None else 1
    n = len(prompts) * images_per_prompt
    best: list[tuple[float, int] | None] = [None] * n  # (score, candidate) of each image so far
    searching = list(range(n))
    for first in range(0, candidates, per_round):
        rows = [b * candidates + c for b in searching for c in range(first, min(first + per_round, candidates))]
        images = draw(rows)
        if len(images) != len(rows):
            raise ValueError(f"drew {len(images)} images for {len(rows)} rows")
        by_prompt: dict[int, list[int]] = {}  # prompt -> positions in ``rows``
        for i, row in enumerate(rows):
            by_prompt.setdefault(row // (images_per_prompt * candidates), []).append(i)
        for p, mine in by_prompt.items():  # one judge call per prompt and round
            scores = [float(s) for s in judge(prompts[p], [images[i] for i in mine])]
            if len(scores) != len(mine):
                raise ValueError(f"the judge returned {len(scores)} scores for {len(mine)} images")
            for i, score in zip(mine, scores):
                b, c = divmod(rows[i], candidates)
                if best[b] is None or score > best[b][0]:  # candidates come in order: a tie keeps the first
                    best[b] = (score, c)
        searching = [b for b in searching if perfect is None or best[b][0] < perfect]
        if not searching:
            break
    return [b * candidates + best[b][1] for b in range(n)]


class CountingJudge:
    """A judge that counts the candidates it was shown (``read``); scores as ``judge`` does."""

    def __init__(self, judge: Judge):
        self.judge, self.read = judge, 0
        if getattr(judge, "perfect", None) is not None:
            self.perfect = judge.perfect

    def validate(self, prompt: str) -> None:
        self.judge.validate(prompt)

    def __call__(self, prompt: str, images: Sequence[Image.Image]) -> Sequence[float]:
        self.read += len(images)
        return self.judge(prompt, images)
