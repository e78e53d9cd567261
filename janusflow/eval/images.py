"""Image folders for the generation metrics: the GenEval layout, a reference folder, and the
sampling settings that made the samples.

    GenEval layout   DIR/{i:05d}/metadata.jsonl (one line, with "prompt"), DIR/{i:05d}/samples/*.png
    settings         DIR/janusflow_generation.json, written by ``janusflow generate --geneval-metadata``
                     (pipeline.generate_geneval): steps, guidance, solver, seed, candidates, ...
    reference        any folder of .png / .jpg / .jpeg / .webp / .bmp files, searched recursively
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import InputError

SETTINGS_FILE = "janusflow_generation.json"  # pipeline.generate_geneval writes it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Sample:
    path: Path
    prompt: str
    index: int  # the prompt's folder number


def geneval_samples(folder: str | os.PathLike) -> list[Sample]:
    """Every sample image of a GenEval-layout folder with its prompt, in folder and file order."""
    from ..jsonl import read_jsonl

    root = Path(os.fspath(folder))
    if not root.is_dir():
        raise InputError(f"samples folder not found: {root}")
    prompt_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not prompt_dirs:
        raise InputError(f"{root}: not the GenEval layout (no 00000/, 00001/, ... folders)")
    samples = []
    for prompt_dir in prompt_dirs:
        lines = read_jsonl(prompt_dir / "metadata.jsonl", "GenEval metadata file")
        if not lines or not isinstance(lines[0][2].get("prompt"), str):
            raise InputError(f"{prompt_dir / 'metadata.jsonl'}: needs a line with a string \"prompt\"")
        paths = sorted((prompt_dir / "samples").glob("*.png"))
        if not paths:
            raise InputError(f"{prompt_dir / 'samples'}: no .png samples")
        samples += [Sample(p, lines[0][2]["prompt"], int(prompt_dir.name)) for p in paths]
    return samples


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted."""
    root = Path(os.fspath(folder))
    if not root.is_dir():
        raise InputError(f"reference folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None


def sampling_settings(folder: str | os.PathLike, override: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The settings that made the samples: ``override`` (a JSON file) if given, else the folder's
    ``janusflow_generation.json``, else None (unknown: the folder was made by another tool)."""
    path = Path(os.fspath(override)) if override is not None else Path(os.fspath(folder)) / SETTINGS_FILE
    if not path.is_file():
        if override is not None:
            raise InputError(f"sampling settings file not found: {path}")
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(settings, dict):
        raise InputError(f"{path}: not a JSON object")
    return settings
