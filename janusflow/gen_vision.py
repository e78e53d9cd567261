"""Generation encoder and decoder: the ConvNeXt "shallow U-ViT" around the LLM.

Latent (B, C, H, W) --encoder--> feature map (B, Ce, H/2, W/2) --tokens--> LLM
LLM hidden states --aligner--> (B, Cd, H/2, W/2) --decoder (+ encoder skip)--> velocity (B, C, H, W)

Math, as the released model computes it (NCHW tensors; "NHWC" means the op runs channels-last):
  ConvNeXt block with condition c (the time embedding, width D):
      y = depthwise7x7(x);  y = Linear2(GRN(GELU(Linear1(RMSNorm(y)))))   (NHWC, 4x expansion)
      x = x + y;  scale, shift = Linear(SiLU(c)).chunk(2);  x = shift + x * (1 + scale)
  GlobalResponseNorm (NHWC): g = ||x||_2 over (H, W); n = g / (mean_channels(g) + 1e-6)
      out = bias + (weight * n + 1) * x
  Time embedding: Linear2(SiLU(Linear1([cos(t f_i), sin(t f_i)]))), f_i = 10000^(-i / (Ce/2)),
      t on the 0..1000 scale (diffusers ``Timesteps(flip_sin_to_cos=True, shift=0)``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .config import GenerationVisionConfig


def _channels_last(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` over the channel dim of an NCHW tensor."""
    return fn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN on NHWC tensors. Parameters keep the released (1, 1, 1, C) shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        g = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.bias + (self.weight * n + 1) * x


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv + channel MLP with GRN, residual, then FiLM by the time embedding."""

    def __init__(self, channels: int, cond_size: int, eps: float, bias: bool, expansion: int = 4):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels, bias=bias)
        self.norm = LlamaRMSNorm(channels, eps=eps)
        self.mlp_in = nn.Linear(channels, expansion * channels, bias=bias)
        self.grn = GlobalResponseNorm(expansion * channels)
        self.mlp_out = nn.Linear(expansion * channels, channels, bias=bias)
        self.film = nn.Linear(cond_size, 2 * channels, bias=bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.mlp_out(self.grn(F.gelu(self.mlp_in(self.norm(y)))))
        x = x + y.permute(0, 3, 1, 2)
        scale, shift = self.film(F.silu(cond)).chunk(2, dim=1)  # (B, C) each
        return shift[:, :, None, None] + x * (1 + scale[:, :, None, None])


class Unpatchify(nn.Module):
    """RMSNorm, 1x1 conv to ``out * 2 * 2`` channels, PixelShuffle(2): doubles the grid."""

    def __init__(self, in_channels: int, out_channels: int, eps: float, bias: bool, factor: int = 2):
        super().__init__()
        self.norm = LlamaRMSNorm(in_channels, eps=eps)
        self.proj = nn.Conv2d(in_channels, out_channels * factor * factor, kernel_size=1, bias=bias)
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.proj(_channels_last(self.norm, x)))


class GenerationEncoder(nn.Module):
    """Noisy latent + time -> (feature map, time embedding). The feature map is also the skip."""

    def __init__(self, cfg: GenerationVisionConfig, hidden_size: int):
        super().__init__()
        self.time_proj = Timesteps(cfg.channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(cfg.channels, hidden_size, sample_proj_bias=cfg.use_bias)
        self.patch_embed = nn.Conv2d(cfg.latent_channels, cfg.channels, kernel_size=cfg.kernel_size,
                                     stride=cfg.stride, padding=cfg.padding)
        n_blocks = cfg.encoder_layers if cfg.encoder_mid_block else 0
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.channels, hidden_size, cfg.norm_eps, cfg.use_bias) for _ in range(n_blocks))

    def embed_time(self, t: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """``t`` on the 0..1000 scale, shape (B,) or scalar -> (B, D)."""
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        return self.time_embed(self.time_proj(t).to(dtype))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t_emb = self.embed_time(t, z.shape[0], z.dtype)  # (B, D)
        x = self.patch_embed(z)  # (B, Ce, H/2, W/2)
        for block in self.blocks:
            x = block(x, t_emb)
        return x, t_emb


class GenerationDecoder(nn.Module):
    """Aligned LLM output (B, Cd, h, w) + encoder skip (B, Ce, h, w) + time -> velocity (B, C, H, W)."""

    def __init__(self, cfg: GenerationVisionConfig, hidden_size: int):
        super().__init__()
        self.input_norm = LlamaRMSNorm(cfg.decoder_in_channels, eps=cfg.norm_eps)
        width = cfg.decoder_channels
        n_blocks = cfg.decoder_layers if cfg.decoder_mid_block else 0
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(width, hidden_size, cfg.norm_eps, cfg.use_bias) for _ in range(n_blocks))
        stages = []
        for i in range(cfg.upsamples):
            last = i == cfg.upsamples - 1
            stages.append(Unpatchify(width if i == 0 else cfg.channels,
                                     cfg.latent_channels if last else cfg.channels, cfg.norm_eps, cfg.use_bias))
        self.unpatchify = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_channels_last(self.input_norm, x), skip], dim=1)  # LLM path first, skip second
        for block in self.blocks:
            x = block(x, t_emb)
        for stage in self.unpatchify:
            x = stage(x)
        return x
