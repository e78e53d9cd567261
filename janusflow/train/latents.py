"""Latent encoders for training: :mod:`janusflow.latent_encoder` (``LatentEncoder``, ``VAELatentEncoder``),
and a tiny random VAE for tests and smoke runs."""

from __future__ import annotations

import torch

from ..latent_encoder import LatentEncoder, VAELatentEncoder  # noqa: F401  (their home before; still imported from here)


def tiny_vae(latent_channels: int = 4, seed: int = 0):
    """A 2-level random ``AutoencoderKL`` (downsample 2) for tests and smoke runs."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=16)
