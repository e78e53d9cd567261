"""Recipe part 1: a small VAE (diffusers `AutoencoderKL`) for the shapes world's 64 x 64 images.

Model: `len(block_out_channels) - 1` downsamplings, so (16, 32, 64) maps 3 x 64 x 64 pixels to a
C x 16 x 16 latent (factor 4); one ResNet block a level (the decoder has one more, as diffusers
builds it), an attention mid block at the latent resolution.

Loss, per image x in [-1, 1] with reconstruction x' = decode(z), z ~ q(z | x):

    loss = |x - x'|_1 + mse_weight * |x - x'|^2 + edge_weight * mean_edge |x - x'|_1 + kl_weight * KL

where the L1 and MSE terms are means over all pixel values, the edge term is the mean L1 over the
pixels that touch a colour change (4-neighbourhood) of x (object borders carry every bit the
scorer reads: shape by fill ratio, position by pixel box), and KL = KL(q(z | x) || N(0, I))
averaged over latent elements. No perceptual or adversarial term: the world has flat colours and
hard edges, and an exact reader.

After training, the latent scale is measured: `scaling_factor = 1 / std(z)` over fresh scenes
(z the posterior mean), stored in the VAE config, as Stable Diffusion's 0.18215 was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .data import EVAL_SEED, batch_rng, read_matches, scene_images, to_uint8
from ..scorer import detect_objects, snap_colors
from ...train.trainer import share


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    image_size: int = 64
    mid_block_add_attention: bool = True
    # loss
    mse_weight: float = 1.0
    edge_weight: float = 1.0
    kl_weight: float = 1e-6

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor


TINY_VAE = VAEConfig(block_out_channels=(8, 16), norm_num_groups=4, mid_block_add_attention=False)


def build_vae(cfg: VAEConfig):
    from diffusers import AutoencoderKL

    for width in cfg.block_out_channels:
        if width % cfg.norm_num_groups:
            raise ValueError(f"norm_num_groups {cfg.norm_num_groups} must divide every width {cfg.block_out_channels}")
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.image_size,
        scaling_factor=1.0,  # measured after training: measure_scaling_factor
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def edge_mask(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float: 1 where a pixel differs from one of its 4 neighbours, else 0."""
    differs = torch.zeros_like(pixels[:, :1])
    step_x = (pixels[..., :, 1:] != pixels[..., :, :-1]).any(1, keepdim=True).float()  # (B, 1, H, W-1)
    step_y = (pixels[..., 1:, :] != pixels[..., :-1, :]).any(1, keepdim=True).float()  # (B, 1, H-1, W)
    differs[..., :, 1:] += step_x
    differs[..., :, :-1] += step_x
    differs[..., 1:, :] += step_y
    differs[..., :-1, :] += step_y
    return (differs > 0).float()


def vae_loss_terms(vae, pixels: torch.Tensor, cfg: VAEConfig, sample: bool = True) -> dict[str, torch.Tensor]:
    """Per-image terms of the loss above, each (B,); "loss" is their weighted sum.
    `pixels` (B, 3, H, W) in [-1, 1]."""
    posterior = vae.encode(pixels).latent_dist
    latents = posterior.sample() if sample else posterior.mode()  # (B, C, h, w)
    recon = vae.decode(latents).sample
    error = (recon - pixels).abs()  # (B, 3, H, W)
    l1 = error.mean((1, 2, 3))
    mse = error.pow(2).mean((1, 2, 3))
    edges = edge_mask(pixels)  # (B, 1, H, W)
    edge = (error * edges).sum((1, 2, 3)) / (edges.sum((1, 2, 3)) * pixels.shape[1]).clamp(min=1)
    kl = posterior.kl() / latents[0].numel()  # diffusers sums over (C, h, w)
    loss = l1 + cfg.mse_weight * mse + cfg.edge_weight * edge + cfg.kl_weight * kl
    return {"loss": loss, "l1": l1, "mse": mse, "edge": edge, "kl": kl}


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Decode the posterior mean: (B, 3, H, W) -> (B, 3, H, W)."""
    return vae.decode(vae.encode(pixels).latent_dist.mode()).sample


@torch.no_grad()
def evaluate_vae(vae, num_scenes: int = 256, batch_size: int = 64, seed: int = EVAL_SEED) -> dict[str, float]:
    """Reconstruction quality on fresh scenes (posterior mean, decoded, rounded to uint8):

    read_exact    share of scenes the scorer reads right: (shape, colour) multiset equal, every
                  position within 1 px (read_exact_2px: within 2 px)
    snap_error    share of pixels whose snapped palette class differs from the render's
    psnr          on [0, 255]
    """
    was_training = vae.training
    vae.eval()
    exact = exact2 = 0
    wrong_pixels = total_pixels = 0
    sq_error = 0.0
    rng = np.random.default_rng(seed)
    done = 0
    while done < num_scenes:
        scenes, pixels = scene_images(rng, min(batch_size, num_scenes - done))
        truth, recon = to_uint8(pixels), to_uint8(reconstruct(vae, pixels))
        sq_error += float(((truth.astype(np.float64) - recon) ** 2).sum())
        for scene, true_image, image in zip(scenes, truth, recon):
            found = detect_objects(image)
            exact += read_matches(scene, found, tolerance=1.0)
            exact2 += read_matches(scene, found, tolerance=2.0)
            wrong_pixels += int((snap_colors(image) != snap_colors(true_image)).sum())
            total_pixels += image.shape[0] * image.shape[1]
        done += len(scenes)
    vae.train(was_training)
    mse = sq_error / (total_pixels * 3)
    return {
        "read_exact": exact / num_scenes,
        "read_exact_2px": exact2 / num_scenes,
        "snap_error": wrong_pixels / total_pixels,
        "psnr": float(10 * np.log10(255.0**2 / max(mse, 1e-12))),
    }


@torch.no_grad()
def measure_scaling_factor(vae, num_scenes: int = 1024, batch_size: int = 128, seed: int = EVAL_SEED + 1) -> float:
    """1 / std of the posterior means of fresh scenes (all elements pooled)."""
    rng = np.random.default_rng(seed)
    latents = []
    for start in range(0, num_scenes, batch_size):
        _, pixels = scene_images(rng, min(batch_size, num_scenes - start))
        latents.append(vae.encode(pixels).latent_dist.mode().flatten())
    return float(1.0 / torch.cat(latents).std())


class VAEObjective(nn.Module):
    """The trainer's module: forward(pixels, totals) -> (this micro-batch's share of the mean loss, logs)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.vae = build_vae(cfg)

    def forward(self, pixels: torch.Tensor, totals: dict[str, float]):
        terms = vae_loss_terms(self.vae, pixels, self.cfg)
        shares = {name: share(value.sum(), totals, "samples") for name, value in terms.items()}
        loss = shares.pop("loss")
        return loss, {f"vae_{name}": float(value.detach()) for name, value in shares.items()}


class VAETask:
    """Recipe part 1 as a `janusflow.train.TrainTask`: batches of fresh random scenes, rendered on the
    fly; batch `step` is a pure function of (seed, step), so there is no data position to save."""

    def __init__(self, cfg: VAEConfig | None = None, batch_size: int = 32, seed: int = 0, scale_scenes: int = 1024):
        self.cfg = cfg or VAEConfig()
        self.batch_size = batch_size
        self.seed = seed
        self.scale_scenes = scale_scenes  # fresh scenes measuring the latent std at export
        self.module = VAEObjective(self.cfg)

    @property
    def vae(self):
        return self.module.vae

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.module.named_parameters())

    def micro_batches(self, step: int, shard) -> list[torch.Tensor]:
        _, pixels = scene_images(batch_rng(self.seed, step), self.batch_size)
        return [torch.stack(part) if part else pixels[:0] for part in shard.split(list(pixels))]

    def counts(self, batch: torch.Tensor) -> dict[str, float]:
        return {"samples": float(len(batch))}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def export(self, directory: Path) -> None:
        """save_pretrained with the measured latent scale (1 / std of fresh latents) in the config."""
        self.vae.eval()
        self.vae.register_to_config(scaling_factor=measure_scaling_factor(self.vae, self.scale_scenes))
        self.vae.save_pretrained(directory)
        self.vae.train()
