"""An optional cache of VAE latents and REPA targets, computed once for every generation sample.

``python -m janusflow.train cache CONFIG.yaml`` writes ``<data.cache>/gen.safetensors`` (``latents``
(n, C, H, W) float32 and, with REPA on, ``features`` (n, N, W) float16) and ``gen.json`` (which
files, how many samples). Training with ``data.cache`` set reads them instead of decoding and
encoding images. The cache is of the *centre* crop (no random crop when cached). The REPA
features are the understanding encoder's at cache time: they are used only in stages where that
encoder is frozen; when it trains (SFT) the features are recomputed live from the same crop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..processor import load_image, preprocess_image
from .collate import crop_square, latent_encoder_pixels, to_uint8


def fingerprint(config) -> dict:
    import glob

    files = []
    for spec in config.data.gen:
        for path in map(Path, sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]):
            stat = path.stat() if path.exists() else None
            files.append([os.fspath(path), stat.st_size if stat else None, int(stat.st_mtime) if stat else None])
    return {"files": files, "vae": config.vae.path}


class CachedSource:
    """A generation source whose samples carry their cached latent (and features, when allowed)."""

    def __init__(self, source, folder: str | os.PathLike, use_features: bool, expected: dict):
        self.source, self.task, self.length = source, source.task, source.length
        folder = Path(folder)
        meta_file = folder / "gen.json"
        if not meta_file.is_file():
            raise ConfigError(f"data.cache: no cache in {folder}; build it with `python -m janusflow.train cache`")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta["fingerprint"] != expected or meta["count"] != source.length:
            raise ConfigError(f"data.cache: {folder} was built for other data or another VAE; rebuild it")
        self._reader = safe_open(os.fspath(folder / "gen.safetensors"), framework="pt")
        self.use_features = use_features and "features" in self._reader.keys()

    def read(self, position: int):
        sample = self.source.read(position)
        sample.latent = self._reader.get_slice("latents")[position].float()
        if self.use_features:
            sample.und_features = self._reader.get_slice("features")[position].float()
            sample.image = None
        return sample


@torch.no_grad()
def build_cache(task, config) -> Path:
    """Encode every generation sample of ``task``'s gen source once (centre crop)."""
    if "gen" not in task.sources or not config.data.cache:
        raise ConfigError("cache: needs data.gen and data.cache (the folder to write)")
    source = task.sources["gen"].source
    if source.length is None:
        raise ConfigError("cache: the generation source is endless; only files can be cached")
    encoder, model = task.latent_encoder, task.model
    size, und_size = encoder.image_size, task.processor.image_size
    latents, features = [], []
    batch: list[torch.Tensor] = []
    und_batch: list[torch.Tensor] = []

    def flush():
        if batch:
            latents.append(encoder.encode(torch.stack(batch)).cpu())
            if task.module.repa_head is not None:
                features.append(model.und_encoder(torch.stack(und_batch)).half().cpu())
            batch.clear()
            und_batch.clear()

    for i in tqdm(range(source.length), desc="cache"):
        sample = source.read(i)  # an unreadable sample fails here: fix the data, then build again
        crop = crop_square(load_image(sample.image), size, None)
        batch.append(latent_encoder_pixels(to_uint8(crop)))
        und_batch.append(preprocess_image(crop, und_size, task.processor.min_size))
        if len(batch) == 32:
            flush()
    flush()
    folder = Path(config.data.cache)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"latents": torch.cat(latents).contiguous()}
    if features:
        tensors["features"] = torch.cat(features).contiguous()
    tmp = folder / "gen.safetensors.tmp"
    save_file(tensors, os.fspath(tmp))
    os.replace(tmp, folder / "gen.safetensors")
    meta = {"count": source.length, "fingerprint": fingerprint(config), "image_size": size}
    (folder / "gen.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return folder
