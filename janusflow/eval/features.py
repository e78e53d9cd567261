"""Image and text embeddings from a local CLIP or SigLIP folder, through transformers.

Nothing downloads: the folder must hold the model (``config.json`` + weights) and, for text, its
tokenizer; it is opened with ``local_files_only=True`` under ``HF_HUB_OFFLINE=1``. The image side is
an ``nn.Module`` from uint8 images (N, 3, H, W) to embeddings (N, D), the form torchmetrics takes as
a custom ``feature`` extractor:

    x = resize(images / 255) -> (N, 3, S, S)    S: the vision tower's image size; bicubic with
                                                antialiasing; the shorter side to S then a centre crop
                                                when the folder's processor crops (CLIP), else a
                                                squash to S x S (SigLIP)
    x = (x - mean) / std                        mean, std: preprocessor_config.json, else the model
                                                family's (CLIP's, or 0.5 for SigLIP)
    embedding = get_image_features(x)           the projected embedding of a CLIP / SigLIP model;
                                                a vision tower alone gives its pooled output
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")


@contextmanager
def offline():
    """No network for the hub while loading: HF_HUB_OFFLINE=1 (restored afterwards); and no loading bar."""
    from transformers.utils import logging

    before, bar = os.environ.get("HF_HUB_OFFLINE"), logging.is_progress_bar_enabled()
    os.environ["HF_HUB_OFFLINE"] = "1"
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before
        if bar:
            logging.enable_progress_bar()


def model_folder(path: str | os.PathLike | None, option: str, tokenizer: bool = False) -> Path:
    """``path`` as a local transformers folder (with a tokenizer if asked), or an InputError naming
    ``option`` and the path."""
    if path is None:
        raise InputError(f"{option} DIR is required (a local CLIP or SigLIP folder; nothing is downloaded)")
    folder = Path(os.fspath(path))
    if not folder.is_dir():
        raise InputError(f"{option}: model folder not found: {folder} (weights come from local folders only)")
    if not (folder / "config.json").is_file():
        raise InputError(f"{option}: {folder} is not a transformers model folder (no config.json)")
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers 5 would build an empty tokenizer from config.json alone
        raise InputError(f"{option}: no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)})")
    return folder


class ImageEmbedder(nn.Module):
    """uint8 images (N, 3, H, W) -> (N, D) float32 embeddings of a local CLIP / SigLIP folder."""

    def __init__(self, folder: str | os.PathLike, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, option: str = "--feature-model"):
        super().__init__()
        from transformers import AutoModel

        self.folder = model_folder(folder, option)
        with offline():
            try:
                self.model = AutoModel.from_pretrained(self.folder, local_files_only=True, dtype=dtype).eval()
            except (OSError, ValueError, KeyError) as e:
                raise InputError(f"{option}: cannot load {self.folder}: {' '.join(str(e).split())[:300]}") from None
        self.model.to(device or "cpu")
        config = self.model.config
        vision = getattr(config, "vision_config", config)
        self.family = "siglip" if "siglip" in config.model_type else "clip"
        self.image_size = int(vision.image_size)
        processor = self._processor_config()
        mean, std = (CLIP_MEAN, CLIP_STD) if self.family == "clip" else (HALF, HALF)
        self.crop = bool(processor.get("do_center_crop", self.family == "clip"))
        self.register_buffer("mean", torch.tensor(processor.get("image_mean", mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(processor.get("image_std", std)).view(1, 3, 1, 1), persistent=False)
        self.to(self.model.device)
        self.projected = hasattr(self.model, "get_image_features")
        self.num_features = int(self.forward(torch.zeros(1, 3, self.image_size, self.image_size,
                                                         dtype=torch.uint8)).shape[-1])  # torchmetrics reads it

    def _processor_config(self) -> dict:
        path = self.folder / "preprocessor_config.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not a JSON file ({e})") from None

    @property
    def name(self) -> str:
        """What the numbers were computed on, to be written beside them."""
        output = "image embedding (projected)" if self.projected else "pooled output"
        return f"{self.model.config.model_type} {output}, {self.num_features}-d, {self.folder.resolve()}"

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float (N, 3, S, S) in [0, 1] (see the module docstring)."""
        x = images.to(self.mean.device, torch.float32) / 255
        H, W = x.shape[-2:]
        S = self.image_size
        if not self.crop:
            return F.interpolate(x, size=(S, S), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        scale = S / min(H, W)
        size = (max(S, round(H * scale)), max(S, round(W * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (size[0] - S) // 2, (size[1] - S) // 2
        return x[:, :, top:top + S, left:left + S]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_pixels(self.resize(images))

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> (N, D)."""
        x = ((pixels - self.mean) / self.std).to(self.model.dtype)
        if self.projected:
            out = self.model.get_image_features(pixel_values=x)
        else:
            out = self.model(pixel_values=x)
        embedding = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: an output object
        return embedding.float()  # (N, D)


class TextEmbedder:
    """Texts -> (N, D) float32 embeddings with the same folder's text tower and tokenizer."""

    def __init__(self, image_embedder: ImageEmbedder, option: str = "--clip-model"):
        from transformers import AutoTokenizer

        self.model = image_embedder.model
        if not hasattr(self.model, "get_text_features"):
            raise InputError(f"{option}: {image_embedder.folder} has no text tower (a vision model alone)")
        model_folder(image_embedder.folder, option, tokenizer=True)
        with offline():
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(image_embedder.folder, local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise InputError(f"{option}: no tokenizer in {image_embedder.folder} "
                                 f"({' '.join(str(e).split())[:200]})") from None
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.max_length = int(text_config.max_position_embeddings)
        self.padding = "max_length" if image_embedder.family == "siglip" else True  # SigLIP was trained padded

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.model.device)
        out = self.model.get_text_features(**tokens)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()  # (N, D)


def pil_to_uint8(image) -> torch.Tensor:
    """A PIL RGB image -> uint8 (1, 3, H, W)."""
    import numpy as np

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]


def embed_images(embedder: ImageEmbedder, paths, batch_size: int = 32, show_progress: bool = False,
                 desc: str = "images") -> torch.Tensor:
    """(N, D) embeddings of image files of any sizes (each resized alone, then embedded in batches)."""
    from tqdm.auto import tqdm

    from .images import load_rgb

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    paths = list(paths)
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not show_progress):
        pixels = torch.cat([embedder.resize(pil_to_uint8(load_rgb(p))) for p in paths[start:start + batch_size]])
        out.append(embedder.embed_pixels(pixels).cpu())  # (b, D)
    return torch.cat(out)
