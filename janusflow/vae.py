"""The image decoder of generation: a diffusers ``AutoencoderKL`` (SDXL-VAE in the release).

Latents leave the sampler in the model's space (``x1 = VAE latent * scaling_factor``, see
:mod:`janusflow.flow`), so decoding is ``vae.decode(z / scaling_factor + shift_factor)`` (shift 0
when the VAE has none, as SDXL), then pixels ``x in [-1, 1] -> uint8((x + 1) / 2 * 255)``, truncated
as the released sampler does. Encoding (img2img) is the inverse on the posterior's mode.

Precision: the SDXL VAE overflows in fp16 (NaN images), so the VAE never runs in fp16. It runs in
fp32, except bf16 on CUDA when asked for explicitly. Non-finite latents (a diverged sampler, a bad
checkpoint) are detected before decoding and reported instead of becoming black images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import CheckpointError, JanusFlowError


class NonFiniteLatentsError(JanusFlowError, FloatingPointError):
    """Latents (or decoded pixels) with NaN or infinite values."""


def vae_dtype(requested: torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """fp32 always, except bf16 on CUDA when requested; fp16 is never used (SDXL-VAE gives NaN)."""
    if requested == torch.bfloat16 and torch.device(device).type == "cuda":
        return torch.bfloat16
    return torch.float32


def load_vae(source, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """An ``AutoencoderKL`` from a local diffusers folder (or an instance, moved), in a safe dtype."""
    from diffusers import AutoencoderKL

    target = vae_dtype(dtype, device)
    if isinstance(source, AutoencoderKL):
        vae = source
    else:
        folder = Path(os.fspath(source))
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: not a diffusers AutoencoderKL folder (no config.json)")
        try:
            vae = AutoencoderKL.from_pretrained(os.fspath(folder), local_files_only=True, torch_dtype=target)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder}: cannot load the VAE ({str(e).splitlines()[0]})") from None
    vae = vae.to(device=device)
    return (vae if vae.dtype == target else vae.to(dtype=target)).eval()


def check_finite(latents: torch.Tensor, what: str = "latents") -> None:
    bad = ~torch.isfinite(latents)
    if bool(bad.any()):
        rows = sorted({int(i) for i in bad.flatten(1).any(dim=1).nonzero().flatten()})
        raise NonFiniteLatentsError(
            f"{what} contain NaN or infinite values (image(s) {rows}); the sampler diverged or the weights are "
            f"broken (fp16 overflow?); try fp32 or bf16")


def onload(module) -> None:
    """Move a module under accelerate's CPU offload (``enable_model_cpu_offload``) to its execution device
    now, before its device is read, as diffusers' ``apply_forward_hook`` does for calls other than
    ``forward``; a no-op without offload."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


@torch.inference_mode()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Sampler latents (B, C, H, W) -> images (B, 3, 8H, 8W) in [-1, 1], float32 on the CPU."""
    check_finite(latents)
    onload(vae)
    C = vae.config.latent_channels
    if latents.ndim != 4 or latents.shape[1] != C:
        raise CheckpointError(f"the VAE takes {C}-channel latents; the model made {tuple(latents.shape)}")
    shift = vae.config.shift_factor or 0.0
    z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + shift
    images = vae.decode(z).sample.float().clamp_(-1, 1).cpu()
    check_finite(images, "decoded images")
    return images


@torch.inference_mode()
def encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> latents (B, C, H/f, W/f) in the model's space, fp32: the mode of
    the VAE's posterior, ``(mode - shift_factor) * scaling_factor`` (what training encodes)."""
    onload(vae)
    mode = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    shift = vae.config.shift_factor or 0.0
    return ((mode.float() - shift) * vae.config.scaling_factor).contiguous()  # the encoder's layout may not be


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, truncated like the release."""
    return ((images.permute(0, 2, 3, 1).numpy() + 1) / 2 * 255).astype(np.uint8)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(array) for array in to_uint8(images)]
