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

An optional fourth term (ours, not the paper's; off unless ``losses.negative_weight > 0``) teaches
a prompt's details, not just its words. For a sample whose caption c has a *negative* c' (a caption
false of the image, e.g. its two shapes swapped), on the same x0, t and x1:
    NEG  = (1 / #negatives) * sum_samples m * softplus((e(c) - e(c')) / m),  t < t_max only
    e(c) = mean_elements (v_theta(x_t, t | c) - (x1 - x0))^2
a soft hinge (margin m) asking the true caption to explain the image better than the negative.
The noise in e that no prompt can predict is the same in both, so it cancels: the term is a clean
signal where the flow loss barely moves (a model that reads a prompt as a bag of words scores the
same e for both). Above t_max the image itself decides the velocity, and the term stays off.
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


def weighted_sum(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return per_sample.sum() if weight is None else (per_sample * weight.to(per_sample)).sum()


def rectified_flow_sum(velocity: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over samples of the per-sample MSE to the straight-line velocity x1 - x0."""
    return weighted_sum(flow_errors(velocity, x0, x1), weight)


def flow_errors(velocity: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample MSE to the straight-line velocity x1 - x0 (the RF loss before the sum)."""
    return ((velocity.float() - velocity_target(x0, x1).float()) ** 2).flatten(1).mean(dim=1)


def negative_prompt_sum(error_true: torch.Tensor, error_negative: torch.Tensor, margin: float,
                        active: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over samples of m * softplus((e(c) - e(c')) / m), both (K,); ``active`` (K,) 0/1 masks rows."""
    return weighted_sum(margin * F.softplus((error_true - error_negative) / margin), active)


def flow_dpo_loss(error_win: torch.Tensor, ref_error_win: torch.Tensor, error_lose: torch.Tensor,
                  ref_error_lose: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-DPO (Wallace et al., 2023) in flow form, per pair (P,), and its logits (P,):
        L = -log sigmoid(-beta [(e_theta(w) - e_ref(w)) - (e_theta(l) - e_ref(l))])
    e: :func:`flow_errors` of the policy / the frozen reference on the same x0 and t for the preferred
    latent w and the other l. log 2 where the policy is the reference; lower as the policy's error falls
    on w, relative to the reference's, faster than on l."""
    logits = -beta * ((error_win - ref_error_win) - (error_lose - ref_error_lose))
    return -F.logsigmoid(logits), logits


def repa_sum(projected: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over samples of the token-mean (1 - cosine similarity); both (B, N, W)."""
    return weighted_sum(repa_errors(projected, target), weight)


def repa_errors(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample token-mean of 1 - cosine similarity (the REPA loss before the sum)."""
    cosine = F.cosine_similarity(projected.float(), target.float(), dim=-1)  # (B, N)
    return (1.0 - cosine).mean(dim=1)


class RepaProjector(nn.Module):
    """h_phi: LLM width -> hidden -> hidden -> understanding-encoder width (SiLU between), as REPA."""

    def __init__(self, llm_width: int, hidden: int, target_width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(llm_width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, target_width))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net(hidden_states)
