"""Latent encoders: images -> the latents the rectified flow is trained on (and that a shared-encoder
model's understanding path reads, ``und_vision.encoder: generation``).

Anything with ``image_size`` (pixel side it takes), ``latent_channels``, ``to(device)`` and
``encode(pixels) -> latents`` plugs in (tests use a tiny random ``AutoencoderKL``; a run of the
shapes world uses its own trained one). :class:`VAELatentEncoder` wraps a diffusers
``AutoencoderKL``: ``x1 = (mean of q(z | image) - shift_factor) * scaling_factor`` (the mean, not
a sample, so that a latent cache and a live encoder give the same numbers). Unlike
:func:`janusflow.vae.encode` (inference mode, for img2img) its latents may enter a graph that is
differentiated.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

from .errors import ConfigError


class LatentEncoder(Protocol):
    image_size: int
    latent_channels: int

    def to(self, device: torch.device) -> "LatentEncoder": ...
    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...  # (B, 3, P, P) in [-1, 1] -> (B, C, H, W)


class VAELatentEncoder:
    def __init__(self, vae, latent_size: int):
        self.vae = vae.eval().requires_grad_(False)
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.image_size = latent_size * self.downsample

    @classmethod
    def from_folder(cls, path: str | os.PathLike, latent_size: int) -> "VAELatentEncoder":
        from diffusers import AutoencoderKL

        if not os.path.isdir(path):
            raise ConfigError(f"vae: no folder {path} (a diffusers AutoencoderKL folder is needed)")
        return cls(AutoencoderKL.from_pretrained(os.fspath(path), local_files_only=True), latent_size)

    def to(self, device) -> "VAELatentEncoder":
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        mean = self.vae.encode(pixels.to(param.device, param.dtype)).latent_dist.mode()  # (B, C, H, W)
        return ((mean - self.shift_factor) * self.scaling_factor).float()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.vae.save_pretrained(os.fspath(path))
