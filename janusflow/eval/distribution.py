"""FID and KID between two image sets, computed by torchmetrics on embeddings of a local model.

torchmetrics' Inception weights would download, so the features are those of a local CLIP or
SigLIP folder (``features.ImageEmbedder``); the number is then "FID in that feature space" and is
written with the feature's name, never compared with Inception FIDs. Each image is embedded once
and both metrics read the same (N, D) embeddings (a ``feature`` module that passes them through):

    FID = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))        means and covariances of the embeddings
    KID = MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3, unbiased, the mean (and std) over
          ``subsets`` random subsets of ``subset_size`` embeddings of each set (seeded)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError

KID_SUBSET_SIZE = 1000  # torchmetrics' (and the KID paper's) default, lowered to the smaller set's size


class _Embeddings(nn.Module):
    """The torchmetrics ``feature`` for embeddings computed beforehand: (N, D) in, the same out."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings


@dataclass
class DistributionScores:
    fid: float
    kid_mean: float
    kid_std: float
    kid_subsets: int
    kid_subset_size: int
    n_real: int
    n_generated: int


def fid_kid(real: torch.Tensor, generated: torch.Tensor, kid_subsets: int = 100, seed: int = 0) -> DistributionScores:
    """FID and KID of (N_r, D) and (N_g, D) embeddings (see the module docstring)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise InputError(f"embeddings must be (N, D) with one D, got {tuple(real.shape)} and {tuple(generated.shape)}")
    if min(len(real), len(generated)) < 2:
        raise InputError(f"FID and KID need at least 2 images a set, got {len(real)} reference and "
                         f"{len(generated)} generated")
    if kid_subsets < 1:
        raise InputError(f"the number of KID subsets must be at least 1, got {kid_subsets}")
    feature = _Embeddings(real.shape[1])
    real, generated = real.double(), generated.double()
    fid = FrechetInceptionDistance(feature=feature)
    fid.update(real, real=True)
    fid.update(generated, real=False)
    subset_size = min(KID_SUBSET_SIZE, len(real), len(generated))
    kid = KernelInceptionDistance(feature=feature, subsets=kid_subsets, subset_size=subset_size)
    kid.update(real, real=True)
    kid.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return DistributionScores(float(fid.compute()), float(kid_mean), float(kid_std), kid_subsets, subset_size,
                              len(real), len(generated))
