"""Assemble a trained model folder into the embedded default model (``janusflow/default_model``).

    python -m janusflow.shapes.recipe.assemble runs/recipe/stages/sft/export --out DIR

Writes ``config.json`` + ``model.safetensors`` (fp16), the tokenizer files, ``processor_config.json``,
``image_generation_config.json`` (``GENERATION``: each image the best of up to 4 by the model's self-check)
and ``vae/`` (fp16; the pipeline runs it in fp32), at most ``MAX_MB`` in all, and checks that the
result loads with ``JanusFlowPipeline.from_pretrained`` / ``JanusFlowChat.from_pretrained``. Files
are written to a temporary folder and moved into place one by one; scores of an earlier model there
(``eval_shapes*.json``) are removed. ``janusflow recipe shapes`` assembles its last model this way and
then evaluates it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ...image_generation_config import ImageGenerationConfig

MAX_MB = 25.0
GENERATION = ImageGenerationConfig(candidates=4, judge="shapes")  # the embedded model's sampling defaults
RESULTS = "eval_shapes.json"


def folder_mb(folder: Path) -> float:
    """Size of the files of ``folder`` in MB (1e6 bytes)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def assemble(source: str | os.PathLike, target: str | os.PathLike, dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Copy the model folder ``source`` (ours, with vae/) into ``target`` in ``dtype``; returns a record."""
    from diffusers import AutoencoderKL

    from ...errors import CheckpointError
    from ...pipeline import VAE_SUBFOLDER, load_model_and_processor

    source, target = Path(os.fspath(source)), Path(os.fspath(target))
    if not (source / VAE_SUBFOLDER / "config.json").is_file():
        raise CheckpointError(f"{source}: no {VAE_SUBFOLDER}/ folder; the default model must carry its VAE")
    model, processor = load_model_and_processor(source, device="cpu", dtype=torch.float32)
    staging = target.parent / f".{target.name}.assemble"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, dtype=dtype)
    processor.save_pretrained(staging)
    GENERATION.save(staging)
    AutoencoderKL.from_pretrained(source / VAE_SUBFOLDER, torch_dtype=dtype).save_pretrained(staging / VAE_SUBFOLDER)
    _drop_local_path(staging / VAE_SUBFOLDER / "config.json")
    size = folder_mb(staging)
    if size > MAX_MB:
        shutil.rmtree(staging)
        raise CheckpointError(f"the assembled model is {size:.1f} MB, over the {MAX_MB:g} MB budget")

    target.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target / VAE_SUBFOLDER, ignore_errors=True)
    for old in target.glob("eval_shapes*.json"):  # scores of an earlier model no longer hold
        old.unlink()
    for path in sorted(staging.iterdir()):
        os.replace(path, target / path.name)
    staging.rmdir()
    record: dict[str, Any] = {"source": str(source), "dtype": str(dtype).removeprefix("torch."),
                              "size_mb": round(folder_mb(target), 2),
                              "parameters": sum(p.numel() for p in model.parameters())}
    _check_loads(target)
    return record


def _drop_local_path(config: Path) -> None:
    """diffusers records the folder it loaded from (``_name_or_path``); a path of the build machine
    means nothing in the shipped model."""
    fields = json.loads(config.read_text(encoding="utf-8"))
    fields.pop("_name_or_path", None)
    config.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_loads(target: Path) -> None:
    """The folder must load through the public API exactly as the commands load it."""
    from ...pipeline import JanusFlowPipeline
    from ...understanding import JanusFlowChat

    pipe = JanusFlowPipeline.from_pretrained(target)
    if pipe.vae is None:
        raise RuntimeError(f"{target}: the pipeline found no VAE")
    JanusFlowChat.from_pretrained(target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a trained model folder (ours, with vae/), e.g. runs/recipe/sft/export")
    parser.add_argument("--out", required=True, help="target folder (the embedded model: janusflow/default_model)")
    parser.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    args = parser.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    record = assemble(args.source, args.out, dtype)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
