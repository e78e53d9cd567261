"""Writing a pipeline's images to disk: a plain folder and the GenEval layout."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import InputError


def generate_to_folder(pipe, prompt: str, out_dir: str | os.PathLike, num_images: int = 1,
                       seed: int = 0, **call_kwargs: Any) -> list[Path]:
    """``out_dir/{k:04d}.png`` for k < num_images; noise from ``torch.Generator().manual_seed(seed)``."""
    out = Path(os.fspath(out_dir))
    images = pipe(prompt, num_images_per_prompt=num_images, generator=seed, output_type="pil", **call_kwargs).images
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{k:04d}.png" for k in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    return paths


def read_geneval_metadata(file: str | os.PathLike) -> list[tuple[str, dict]]:
    """(line, object) for each non-empty line of a GenEval metadata file; every object needs a prompt."""
    from .jsonl import read_jsonl

    entries = []
    for number, line, obj in read_jsonl(file, "metadata file"):
        if not isinstance(obj.get("prompt"), str):
            raise InputError(f"{file}:{number}: each line needs a string \"prompt\"")
        entries.append((line, obj))
    if not entries:
        raise InputError(f"{file}: no prompts")
    return entries


def generate_geneval(pipe, metadata_file: str | os.PathLike, out_dir: str | os.PathLike,
                     num_images: int = 4, seed: int = 0, show_progress: bool = True,
                     **call_kwargs: Any) -> tuple[int, int]:
    """The GenEval layout: ``out/{i:05d}/metadata.jsonl`` (line i of the metadata file) and
    ``out/{i:05d}/samples/{k:04d}.png``. Prompt i draws its noise from seed + i, so a prompt's
    images do not depend on the others and an interrupted run resumes: complete folders are kept.
    Returns (prompts generated, prompts skipped as already complete)."""
    from tqdm.auto import tqdm

    entries = read_geneval_metadata(metadata_file)
    for number, (_, obj) in enumerate(entries):  # refuse a bad prompt before hours of work
        try:
            pipe.processor.encode_generation_prompt(obj["prompt"])
            if call_kwargs.get("judge") is not None:
                call_kwargs["judge"].validate(obj["prompt"])
        except InputError as e:
            raise InputError(f"prompt {number} ({obj['prompt'][:40]!r}): {e}") from None
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    settings = {"metadata_file": os.fspath(metadata_file), "num_images": num_images, "seed": seed, **call_kwargs,
                "image_generation_config": asdict(pipe.image_generation_config)}  # candidates=None
    (out / "janusflow_generation.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    done = skipped = 0
    for i, (line, obj) in enumerate(tqdm(entries, desc="prompts", unit="prompt", disable=not show_progress)):
        folder, samples = out / f"{i:05d}", out / f"{i:05d}" / "samples"
        paths = [samples / f"{k:04d}.png" for k in range(num_images)]
        if (folder / "metadata.jsonl").is_file() and all(p.is_file() for p in paths):
            skipped += 1
            continue
        images = pipe(obj["prompt"], num_images_per_prompt=num_images, generator=seed + i, **call_kwargs).images
        samples.mkdir(parents=True, exist_ok=True)
        for image, path in zip(images, paths):
            image.save(path)
        (folder / "metadata.jsonl").write_text(line + "\n", encoding="utf-8")
        done += 1
    return done, skipped
