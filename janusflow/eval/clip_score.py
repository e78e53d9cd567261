"""CLIP score: how well each generated image matches its own prompt, by a local CLIP folder.

    CLIPScore(I, C) = 100 * max(cos(E_I(I), E_T(C)), 0)      (torchmetrics' definition; Hessel et al.
                                                             2021 write 2.5 instead of 100)

averaged over every image of a GenEval-layout folder, each against its prompt. E_I and E_T are the
model's projected image and text embeddings (``features.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


def clip_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,): 100 * max(cos, 0) of each image with its own text."""
    if image_embeddings.shape != text_embeddings.shape or image_embeddings.ndim != 2:
        raise InputError(f"image and text embeddings must be (N, D) alike, got {tuple(image_embeddings.shape)} "
                         f"and {tuple(text_embeddings.shape)}")
    cos = torch.nn.functional.cosine_similarity(image_embeddings.double(), text_embeddings.double(), dim=-1)
    return 100 * cos.clamp(min=0)


@dataclass
class ClipScore:
    mean: float
    std: float  # over images (population)
    n: int


def clip_score_of(samples, image_embeddings: torch.Tensor, text_embedder, batch_size: int = 64) -> ClipScore:
    """The mean CLIP score of ``samples`` (``images.Sample``, in the order of ``image_embeddings``)
    against their prompts; each distinct prompt is embedded once."""
    prompts = sorted({s.prompt for s in samples})
    table = torch.cat([text_embedder(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)])
    row = {p: i for i, p in enumerate(prompts)}
    texts = table[[row[s.prompt] for s in samples]]  # (N, D)
    scores = clip_scores(image_embeddings, texts.to(image_embeddings.device))
    return ClipScore(float(scores.mean()), float(scores.std(unbiased=False)), len(scores))
