"""The three JanusFlow objectives, each a sum over the items of a micro-batch.

Returning sums (not means) lets the trainer divide by the item count of the whole step (all
micro-batches, all processes), so each term is a mean over the global batch whatever the task mix:
    total = CE + RF + w_repa * REPA
    CE   = (1 / #answer tokens)   * sum_tokens  -log p(x_{i+1} | x_<=i)          (und + text)
    RF   = (1 / #gen samples)     * sum_samples mean_elements (v_theta(x_t, t) - (x1 - x0))^2
           x0 ~ N(0, I), x1 = VAE latent * scale, x_t = t x1 + (1 - t) x0, t ~ logit-normal
    REPA = (1 / #gen samples)     * sum_samples mean_tokens (1 - cos(h_phi(H_k), sg(f_enc(image))))
H_k: the LLM hidden states of the N latent tokens after block k; h_phi: a 3-layer MLP (training
state, not part of the released model); f_enc: the understanding encoder on the clean image, no
gradient. 1 - cos is the paper's -cos shifted by a constant: same gradient, and 0 at alignment.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..flow import velocity_target
from .collate import IGNORE


def next_token_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of -log p over target tokens; ``labels[:, i]`` is the token at position i (-100: none)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE, reduction="sum")


def _weighted_sum(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return per_sample.sum() if weight is None else (per_sample * weight.to(per_sample)).sum()


def rectified_flow_sum(velocity: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over samples of the per-sample MSE to the straight-line velocity x1 - x0."""
    error = (velocity.float() - velocity_target(x0, x1).float()) ** 2  # (B, C, H, W)
    return _weighted_sum(error.flatten(1).mean(dim=1), weight)


def repa_sum(projected: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over samples of the token-mean (1 - cosine similarity); both (B, N, W)."""
    cosine = F.cosine_similarity(projected.float(), target.float(), dim=-1)  # (B, N)
    return _weighted_sum((1.0 - cosine).mean(dim=1), weight)


class RepaProjector(nn.Module):
    """h_phi: LLM width -> hidden -> hidden -> understanding-encoder width (SiLU between), as REPA."""

    def __init__(self, llm_width: int, hidden: int, target_width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(llm_width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, target_width))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net(hidden_states)
