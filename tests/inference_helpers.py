"""Tiny models, tokenizers, VAEs and model folders for the inference tests (sampler, pipeline,
understanding, CLI). Weights are re-drawn at a scale where outputs depend on the inputs (the
default init std 0.02 makes a tiny random LLM say the same thing whatever it reads)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from janusflow.config import JanusFlowConfig
from janusflow.modeling import JanusFlowModel
from janusflow.processor import JanusFlowProcessor
from janusflow.tokenizer_build import build_tokenizer

CORPUS = [
    "a red circle above a blue square", "two green triangles left of a yellow star",
    "what color is the shape in the image?", "how many objects are there?", "describe the picture",
    "User: Assistant: You are a helpful language and vision assistant.",
    "the quick brown fox jumps over the lazy dog", "answer with one word",
] * 10


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Norm weights 1 + 0.1 N(0,1), other 1-D parameters 0.1 N(0,1), embeddings N(0,1), matrices
    N(0,1)/sqrt(fan_in) (as the parity fixture draws them)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g)
        if p.ndim == 1:
            p.copy_(1 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.1 * noise)
        elif name.endswith(("embed_tokens.weight", "position_embedding.weight", "boi_embedding")):
            p.copy_(noise)
        else:
            p.copy_(noise / math.sqrt(p[0].numel()))
    return model.eval()


def tiny_config(official_latents: bool = False) -> JanusFlowConfig:
    """The "tiny" preset; ``official_latents``: with the release's 48 x 48 latents (576 image tokens),
    which is what an official-layout config.json implies (it does not store the latent size)."""
    config = JanusFlowConfig.from_name("tiny")
    if official_latents:
        config.gen_vision.latent_size, config.language.max_position_embeddings = 48, 1024
        config.gen_vision.upsamples = 1
    return config


def tiny_model(seed: int = 0, official_latents: bool = False) -> JanusFlowModel:
    torch.manual_seed(seed)
    return randomize(JanusFlowModel(tiny_config(official_latents)), seed)


def tiny_processor(model: JanusFlowModel, folder: str | Path | None = None) -> JanusFlowProcessor:
    config = model.config
    tokenizer = build_tokenizer(CORPUS, config.language.vocab_size, folder)
    return JanusFlowProcessor(tokenizer, image_size=config.und_vision.image_size,
                              num_image_tokens=config.num_und_image_tokens,
                              num_gen_image_tokens=config.num_image_tokens,
                              max_length=config.language.max_position_embeddings)


def tiny_vae(latent_channels: int = 4, seed: int = 0, shift_factor: float | None = None):
    """A 2-level AutoencoderKL (latent side x2 -> image side), scaling factor 0.5."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
                         shift_factor=shift_factor).eval()


def make_model_folder(folder: str | Path, seed: int = 0, with_vae: bool = True, official: bool = False,
                      official_latents: bool = False) -> Path:
    """config.json + model.safetensors (ours or the official layout), tokenizer, processor_config.json, vae/."""
    folder = Path(folder)
    model = tiny_model(seed, official_latents or official)
    if official:
        from janusflow.checkpoint import export_official

        export_official(model, folder)
    else:
        model.save_pretrained(folder)
    tiny_processor(model).save_pretrained(folder)
    if with_vae:
        tiny_vae(model.config.gen_vision.latent_channels, seed).save_pretrained(folder / "vae")
    return folder
