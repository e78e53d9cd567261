"""A tiny random model folder (the "tiny" preset, a small BPE tokenizer, a small VAE) for tests.

Random weights, built offline in about a second: the answers are nonsense and the images noise,
but every code path from an HTTP request to pixels and tokens is the real one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CORPUS = [
    "User: what is in this image?\n\nAssistant: a red circle above a blue square.",
    "a green triangle left of a yellow star", "how many shapes are there? three",
    "Describe the image in detail.", "You are a helpful language and vision assistant.",
] * 20


def build_tiny_model_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``path/`` (config.json, model.safetensors, tokenizer, processor_config.json) and ``path/vae/``."""
    from diffusers import AutoencoderKL

    from ..config import JanusFlowConfig
    from ..modeling import JanusFlowModel
    from ..processor import JanusFlowProcessor
    from ..tokenizer_build import build_tokenizer

    folder = Path(path)
    config = JanusFlowConfig.from_name("tiny")
    torch.manual_seed(seed)
    model = JanusFlowModel(config)
    model.save_pretrained(folder)
    tokenizer = build_tokenizer(CORPUS, config.language.vocab_size)
    JanusFlowProcessor(tokenizer, image_size=config.und_vision.image_size,
                       num_image_tokens=config.num_und_image_tokens,
                       num_gen_image_tokens=config.num_image_tokens,
                       max_length=config.language.max_position_embeddings).save_pretrained(folder)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=config.gen_vision.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4,
        sample_size=config.gen_vision.latent_size * 4)  # 3 blocks: latents are 4x smaller than images
    vae.save_pretrained(folder / "vae")
    return folder
