"""Understanding encoder: a SigLIP ViT (transformers ``SiglipVisionModel``).

The release's tower is timm's ``VisionTransformer``: conv patch embedding with bias, learned
position embedding, no class token, pre-LN blocks (LayerNorm eps 1e-6, fused qkv with bias,
exact-erf GELU), final LayerNorm. transformers' SigLIP vision model computes the same function
with split q/k/v projections; :mod:`janusflow.convert` maps the weights. The attention-pool head
exists in the weights but JanusFlow reads the token features, never the pooled vector.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import UnderstandingVisionConfig


class UnderstandingEncoder(nn.Module):
    """Pixels in [-1, 1], (B, 3, S, S) -> token features (B, (S/p)^2, W) after the final LayerNorm."""

    def __init__(self, cfg: UnderstandingVisionConfig):
        super().__init__()
        from transformers import SiglipVisionModel

        self.cfg = cfg
        self.siglip = SiglipVisionModel(cfg.to_siglip())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, size, size):
            raise ValueError(f"understanding images must be (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}")
        return self.siglip(pixel_values=pixel_values).last_hidden_state
