"""Hand-off from the recipe's parts 1-3 to the JanusFlow stages: a config and a model built from
``janusflow/default_model/parts/``.

    parts/vae/          diffusers AutoencoderKL (its config holds the measured scaling_factor)
    parts/tokenizer/    HF fast tokenizer (the official special tokens at ids 0..6)
    parts/und_encoder/  transformers SiglipVisionModel -> JanusFlowModel.und_encoder.siglip
    parts/llm/          transformers LlamaForCausalLM  -> JanusFlowModel.language_model

`config_from_parts` reads the sizes from the parts' own configs; `model_from_parts` builds a
JanusFlowModel of that config and loads the pre-trained LLM and understanding encoder into it (the
generation encoder/decoder and the aligners keep their fresh initialisation, as in the paper).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...config import GenerationVisionConfig, JanusFlowConfig, LanguageConfig, UnderstandingVisionConfig
from ...errors import ConfigError


def _config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise ConfigError(f"{path}: no config.json (run `python -m janusflow.shapes.recipe.run` to build the parts)")
    return json.loads(file.read_text(encoding="utf-8"))


def _rope_theta(llm: dict) -> float:
    """transformers 5 keeps it in rope_parameters, 4.x at the top level."""
    return llm.get("rope_parameters", {}).get("rope_theta") or llm.get("rope_theta", 10000.0)


def config_from_parts(parts_dir: str | Path, gen_vision: GenerationVisionConfig | None = None) -> JanusFlowConfig:
    """The JanusFlowConfig whose LLM and understanding encoder are the parts', and whose generation
    path works on the VAE's latents (default: 2 x 2 patches, so the token grid is latent / 2)."""
    parts = Path(parts_dir)
    llm, und, vae = _config(parts / "llm"), _config(parts / "und_encoder"), _config(parts / "vae")
    language = LanguageConfig(
        vocab_size=llm["vocab_size"], hidden_size=llm["hidden_size"], intermediate_size=llm["intermediate_size"],
        num_hidden_layers=llm["num_hidden_layers"], num_attention_heads=llm["num_attention_heads"],
        num_key_value_heads=llm["num_key_value_heads"], max_position_embeddings=llm["max_position_embeddings"],
        rms_norm_eps=llm["rms_norm_eps"], rope_theta=float(_rope_theta(llm)),
        tie_word_embeddings=llm["tie_word_embeddings"],
    )
    und_vision = UnderstandingVisionConfig(
        image_size=und["image_size"], patch_size=und["patch_size"], width=und["hidden_size"],
        num_layers=und["num_hidden_layers"], num_heads=und["num_attention_heads"], mlp_dim=und["intermediate_size"],
        layer_norm_eps=und["layer_norm_eps"], use_attention_pool=und.get("vision_use_head", True),
    )
    downsample = 2 ** (len(vae["block_out_channels"]) - 1)
    if gen_vision is None:
        gen_vision = GenerationVisionConfig(latent_channels=vae["latent_channels"],
                                            latent_size=vae["sample_size"] // downsample, channels=128,
                                            decoder_in_channels=128, encoder_layers=1, decoder_layers=1)
    config = JanusFlowConfig(language=language, und_vision=und_vision, gen_vision=gen_vision)
    config.validate()
    if und_vision.grid != gen_vision.latent_grid:
        raise ConfigError(f"the understanding encoder's {und_vision.grid}x{und_vision.grid} grid differs from the "
                          f"generation grid {gen_vision.latent_grid}x{gen_vision.latent_grid}: REPA needs them equal")
    return config


def model_from_parts(parts_dir: str | Path, gen_vision: GenerationVisionConfig | None = None):
    """A JanusFlowModel (fp32) with the pre-trained LLM and understanding encoder loaded."""
    from transformers import LlamaForCausalLM, SiglipVisionModel

    from ...modeling import JanusFlowModel

    parts = Path(parts_dir)
    model = JanusFlowModel(config_from_parts(parts, gen_vision))
    llm = LlamaForCausalLM.from_pretrained(parts / "llm", dtype=torch.float32)
    encoder = SiglipVisionModel.from_pretrained(parts / "und_encoder", dtype=torch.float32)
    model.language_model.load_state_dict(llm.state_dict())
    model.und_encoder.siglip.load_state_dict(encoder.state_dict())
    return model
