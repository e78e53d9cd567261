"""Hand-off from the recipe's parts 1-3 to the JanusFlow stages: a config and a model built from
``OUT/parts/`` (``janusflow recipe shapes``).

    parts/vae/          diffusers AutoencoderKL (its config holds the measured scaling_factor)
    parts/tokenizer/    HF fast tokenizer (the official special tokens at ids 0..6)
    parts/und_encoder/  transformers SiglipVisionModel -> JanusFlowModel.und_encoder.siglip
    parts/llm/          transformers LlamaForCausalLM  -> JanusFlowModel.language_model

`config_from_parts` reads the sizes from the parts' own configs (`language_config`,
`und_vision_config`; `gen_vision_for` sizes the generation path to the understanding encoder's
token grid); `model_from_parts` builds a JanusFlowModel of that config and loads the pre-trained
LLM and understanding encoder into it (`load_parts`; the generation encoder/decoder and the
aligners keep their fresh initialisation, as in the paper).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ...config import GenerationVisionConfig, JanusFlowConfig, LanguageConfig, UnderstandingVisionConfig
from ...errors import ConfigError


def _config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise ConfigError(f"{path}: no config.json (`janusflow recipe shapes` builds the parts)")
    return json.loads(file.read_text(encoding="utf-8"))


def language_config(llm_dir: Path) -> LanguageConfig:
    """The ``LanguageConfig`` of a ``LlamaForCausalLM`` folder (parts/llm)."""
    c = _config(llm_dir)
    return LanguageConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
        max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=c["rms_norm_eps"],
        # transformers 5 keeps rope_theta in rope_parameters, 4.x at the top level
        rope_theta=float((c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", 10000.0))),
        tie_word_embeddings=c.get("tie_word_embeddings", False), initializer_range=c["initializer_range"])


def und_vision_config(und_dir: Path) -> UnderstandingVisionConfig:
    """The ``UnderstandingVisionConfig`` of a ``SiglipVisionModel`` folder (parts/und_encoder)."""
    c = _config(und_dir)
    return UnderstandingVisionConfig(
        image_size=c["image_size"], patch_size=c["patch_size"], width=c["hidden_size"],
        num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
        layer_norm_eps=c["layer_norm_eps"], use_attention_pool=c.get("vision_use_head", True))


def gen_vision_for(und: UnderstandingVisionConfig, vae_dir: Path, channels: int, layers: int) -> GenerationVisionConfig:
    """Generation encoder/decoder on the VAE's latents with the understanding encoder's token grid:
    patch (kernel = stride) latent_size / grid, and log2(patch) PixelShuffle(2) stages back."""
    c = _config(vae_dir)
    latent_size = c["sample_size"] // 2 ** (len(c["block_out_channels"]) - 1)
    patch = latent_size // und.grid
    if patch < 1 or patch * und.grid != latent_size or patch & (patch - 1):
        raise ConfigError(f"the VAE's {latent_size}x{latent_size} latents cannot be cut into the understanding "
                          f"encoder's {und.grid}x{und.grid} grid by a power-of-two patch")
    return GenerationVisionConfig(
        latent_channels=c["latent_channels"], latent_size=latent_size, kernel_size=patch, stride=patch,
        channels=channels, encoder_layers=layers, decoder_in_channels=channels, decoder_layers=layers,
        upsamples=int(math.log2(patch)))


def config_from_parts(parts_dir: str | Path, gen_vision: GenerationVisionConfig | None = None) -> JanusFlowConfig:
    """The JanusFlowConfig whose LLM and understanding encoder are the parts', and whose generation
    path works on the VAE's latents (default: 2 x 2 patches, so the token grid is latent / 2)."""
    parts = Path(parts_dir)
    language, und_vision = language_config(parts / "llm"), und_vision_config(parts / "und_encoder")
    if gen_vision is None:
        vae = _config(parts / "vae")
        downsample = 2 ** (len(vae["block_out_channels"]) - 1)
        gen_vision = GenerationVisionConfig(latent_channels=vae["latent_channels"],
                                            latent_size=vae["sample_size"] // downsample, channels=128,
                                            decoder_in_channels=128, encoder_layers=1, decoder_layers=1)
    config = JanusFlowConfig(language=language, und_vision=und_vision, gen_vision=gen_vision)
    config.validate()
    if und_vision.grid != gen_vision.latent_grid:
        raise ConfigError(f"the understanding encoder's {und_vision.grid}x{und_vision.grid} grid differs from the "
                          f"generation grid {gen_vision.latent_grid}x{gen_vision.latent_grid}: REPA needs them equal")
    return config


def load_parts(model, parts_dir: str | Path):
    """``model`` (a JanusFlowModel of ``config_from_parts``) with the parts' LLM and understanding
    encoder weights loaded (strict); its other modules keep their initialisation."""
    from transformers import LlamaForCausalLM, SiglipVisionModel

    parts = Path(parts_dir)
    llm = LlamaForCausalLM.from_pretrained(parts / "llm", dtype=torch.float32)
    encoder = SiglipVisionModel.from_pretrained(parts / "und_encoder", dtype=torch.float32)
    model.language_model.load_state_dict(llm.state_dict(), strict=True)
    model.und_encoder.siglip.load_state_dict(encoder.state_dict(), strict=True)
    return model


def model_from_parts(parts_dir: str | Path, gen_vision: GenerationVisionConfig | None = None):
    """A JanusFlowModel (fp32) with the pre-trained LLM and understanding encoder loaded."""
    from ...modeling import JanusFlowModel

    return load_parts(JanusFlowModel(config_from_parts(parts_dir, gen_vision)), parts_dir)
