"""Carry a recipe run to another machine (a GPU lease is a fresh machine for a fixed time).

:func:`pack` writes what the next machine needs to go on from a run folder: the records, the parts and
the models that the stages not yet done still read, and the assembled model, as one tar cut into files
of at most 15 MiB (what a lease hands back); :func:`unpack` restores it. A stage in progress travels
without its checkpoints (with the optimizer's state they are too large to carry), so it starts over
on the next machine.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from .build import MODEL, PART_FOLDERS, done_record, stage_dir, stored_config
from .config import RecipeConfig
from .run import log

PACK_PART_BYTES = 15 * 2**20  # a pack's files, each under the 16 MiB a lease hands back


def needed_later(out: Path, config: RecipeConfig) -> set[str]:
    """Finished stages whose model an unfinished stage still reads."""
    pending = [n for n in config.order if done_record(out, n) is None]
    return {need for n in pending for need in config.needs(n) if done_record(out, need) is not None}


def pack(out: str | os.PathLike, pack_dir: str | os.PathLike) -> list[Path]:
    """What another machine needs to go on from ``out`` (the records, the parts, the models the stages
    left still read, the assembled model), as a tar in files of at most 15 MiB: ``pack_dir/recipe.tar.NNN``.
    A stage in progress travels without its checkpoints, so it starts over there."""
    out, pack_dir = Path(os.fspath(out)), Path(os.fspath(pack_dir))
    config = stored_config(out)
    keep_models = needed_later(out, config)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        parts = [f"parts/{PART_FOLDERS[config.stages[n].kind]}" for n in keep_models if n in config.stages
                 and config.stages[n].kind in PART_FOLDERS]
        for path in ("config.yaml", "sessions.jsonl", "recipe.json", MODEL, *parts):
            if (out / path).exists():
                tar.add(out / path, arcname=path)
        for name in config.order:
            sdir = stage_dir(out, name)
            if done_record(out, name) is None:
                continue
            for item in sorted(sdir.iterdir()):
                small = item.is_file() and item.suffix in (".json", ".jsonl", ".csv", ".yaml", ".safetensors")
                if small or (name in keep_models and item.name == done_record(out, name).get("model")):
                    tar.add(item, arcname=str(item.relative_to(out)))
    data = buffer.getvalue()
    pack_dir.mkdir(parents=True, exist_ok=True)
    for old in pack_dir.glob("recipe.tar.*"):
        old.unlink()
    files = []
    for i in range(0, max(len(data), 1), PACK_PART_BYTES):
        files.append(pack_dir / f"recipe.tar.{i // PACK_PART_BYTES:03d}")
        files[-1].write_bytes(data[i:i + PACK_PART_BYTES])
    log("pack", f"{len(data) / 2**20:.1f} MiB in {len(files)} file(s) under {pack_dir}")
    return files


def unpack(pack_dir: str | os.PathLike, out: str | os.PathLike) -> None:
    """Restore a :func:`pack` into ``out`` (an empty or missing folder, or one of the same recipe)."""
    pack_dir, out = Path(os.fspath(pack_dir)), Path(os.fspath(out))
    files = sorted(pack_dir.glob("recipe.tar.*"))
    if not files:
        raise FileNotFoundError(f"{pack_dir} holds no recipe.tar.NNN files")
    data = b"".join(f.read_bytes() for f in files)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(out, filter="data")
    log("unpack", f"{len(data) / 2**20:.1f} MiB into {out}")
