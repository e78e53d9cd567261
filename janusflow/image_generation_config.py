"""A model folder's image generation defaults: ``image_generation_config.json`` beside ``config.json``.

What a call that does not say otherwise gets (the pipeline, ``janusflow generate``, ``janusflow eval
shapes``, the server and its page). A folder without the file samples as released (one candidate); the
embedded shapes model ships with

    {"candidates": 4, "judge": "shapes"}

so each of its images is the best of up to four samples by the model's own answers about them
(``best_of``; the search stops at the first candidate that passes every check). Fields:

    candidates   int >= 1   samples drawn per image at most (1: plain sampling)
    judge        str|null   who scores the candidates: a judge name of :mod:`janusflow.judges` ("shapes":
                            ``shapes.self_check.ShapesJudge``, registered by ``janusflow.shapes``);
                            needed when candidates > 1

The sampler's own settings (30 Euler steps, guidance 2) are not model-specific and stay as released.
The name is not transformers' ``generation_config.json``, which a released folder may carry for text
decoding (token ids) and which this file must not be confused with.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError
from .judges import find_judge, judge_names, make_judge

FILENAME = "image_generation_config.json"


@dataclass(frozen=True)
class ImageGenerationConfig:
    candidates: int = 1
    judge: str | None = None

    def __post_init__(self) -> None:
        n = self.candidates
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"candidates must be a positive integer, got {n!r}")
        if self.judge is not None and find_judge(self.judge) is None:
            raise ConfigError(f"judge must be one of {judge_names()} or null, got {self.judge!r}")
        if n > 1 and self.judge is None:
            raise ConfigError(f"candidates = {n} needs a judge to pick the best of them")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "ImageGenerationConfig":
        """The folder's ``image_generation_config.json``, or the released defaults when it has none."""
        path = Path(os.fspath(folder)) / FILENAME
        if not path.is_file():
            return cls()
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not readable JSON ({e})") from None
        if not isinstance(fields, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(fields).__name__}")
        unknown = sorted(set(fields) - {"candidates", "judge"})
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {unknown}; known: candidates, judge")
        try:
            return cls(**fields)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(os.fspath(folder)) / FILENAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    def make_judge(self, model, processor):
        """The judge this config names, built on ``model`` and ``processor`` (or None)."""
        return None if self.judge is None else make_judge(self.judge, model, processor)
