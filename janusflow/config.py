"""Typed configuration of the unified JanusFlow model.

Every size a module needs comes from here; modules contain no size literals. The preset
``"janusflow-1.3b"`` reproduces the released checkpoint (``shared/reference``); the small presets
exist for tests and for the embedded shapes-world model.

Derived sizes are properties (``num_image_tokens``, ``latent_grid``), never stored twice.
Conversion to and from the official nested ``config.json`` lives in :mod:`janusflow.convert`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from .errors import ConfigError

MODEL_TYPE = "janusflow"


def _from_dict(cls, data: dict[str, Any], where: str):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        expected = known[name].type
        if expected in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{where}.{name}: expected an integer, got {value!r}")
        if expected in ("float", float) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ConfigError(f"{where}.{name}: expected a number, got {value!r}")
        if expected in ("bool", bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
        kwargs[name] = float(value) if expected in ("float", float) else value
    obj = cls(**kwargs)
    obj.validate(where)
    return obj


def _positive(where: str, **values: int | float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{where}.{name} must be positive, got {value}")


@dataclass
class LanguageConfig:
    """The Llama-type LLM (built with ``transformers.LlamaForCausalLM``)."""

    vocab_size: int = 102400
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    max_position_embeddings: int = 16384
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def validate(self, where: str = "language") -> None:
        _positive(where, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                  intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
                  num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
                  max_position_embeddings=self.max_position_embeddings, rms_norm_eps=self.rms_norm_eps)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"{where}: hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"{where}: num_attention_heads must be a multiple of num_key_value_heads")

    def to_llama(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range,
            attention_bias=False,
            mlp_bias=False,
            hidden_act="silu",
        )


UND_ENCODERS = ("siglip", "generation")  # UnderstandingVisionConfig.encoder


@dataclass
class UnderstandingVisionConfig:
    """SigLIP ViT reading images for understanding (transformers ``SiglipVisionModel``).

    ``num_layers`` is the depth actually built (the official ``select_layer`` already applied).
    The output is the last block's tokens after the final LayerNorm, in row-major patch order.
    """

    image_size: int = 384
    patch_size: int = 16
    width: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_dim: int = 4096
    layer_norm_eps: float = 1e-6
    use_attention_pool: bool = True  # present in the release's weights, unused by JanusFlow
    # what reads an image for understanding: "siglip" (this encoder and the understanding aligner, the
    # paper's decoupled encoders) or "generation" (the VAE's clean latent, t = 1, through the generation
    # encoder and its aligner: one shared encoder, the paper's Table 6 ablation). Written to config.json
    # only when not "siglip".
    encoder: str = "siglip"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    def validate(self, where: str = "und_vision") -> None:
        _positive(where, image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                  num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim)
        if self.image_size % self.patch_size:
            raise ConfigError(f"{where}: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ConfigError(f"{where}: width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.encoder not in UND_ENCODERS:
            raise ConfigError(f"{where}.encoder must be one of {UND_ENCODERS}, got {self.encoder!r}")

    def to_siglip(self):
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(
            hidden_size=self.width,
            intermediate_size=self.mlp_dim,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_channels=3,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="gelu",  # exact erf GELU, as the official timm tower
            layer_norm_eps=self.layer_norm_eps,
            vision_use_head=self.use_attention_pool,
        )


@dataclass
class GenerationVisionConfig:
    """Generation encoder/decoder (ConvNeXt shallow U-ViT) around the LLM, in VAE latent space.

    Encoder: ``Conv2d(latent_channels -> channels, kernel, stride, padding)`` patchifies the latent
    (2x2 in the release: 4x48x48 -> 768x24x24 -> 576 tokens), then ``encoder_layers`` ConvNeXt
    blocks. Time: sinusoidal features of width ``channels`` -> MLP -> LLM width.
    Decoder: RMSNorm of the aligned LLM output (``decoder_in_channels``), concatenated with the
    encoder's feature map (long skip), ``decoder_layers`` ConvNeXt blocks on the sum of both widths,
    then ``upsamples`` unpatchify stages (RMSNorm, 1x1 conv, PixelShuffle(2)).
    """

    latent_channels: int = 4
    latent_size: int = 48
    kernel_size: int = 2
    stride: int = 2
    padding: int = 0
    channels: int = 768
    encoder_layers: int = 2
    decoder_in_channels: int = 768
    decoder_layers: int = 2
    upsamples: int = 1
    norm_eps: float = 1e-6
    use_bias: bool = True
    encoder_mid_block: bool = True
    decoder_mid_block: bool = True

    def grid_for(self, latent_side: int) -> int:
        """Side of the token grid the encoder makes from a latent of side ``latent_side``."""
        return (latent_side + 2 * self.padding - self.kernel_size) // self.stride + 1

    @property
    def latent_grid(self) -> int:
        return self.grid_for(self.latent_size)

    @property
    def num_image_tokens(self) -> int:
        return self.latent_grid**2

    @property
    def decoder_channels(self) -> int:
        return self.decoder_in_channels + self.channels

    def validate(self, where: str = "gen_vision") -> None:
        _positive(where, latent_channels=self.latent_channels, latent_size=self.latent_size,
                  kernel_size=self.kernel_size, stride=self.stride, channels=self.channels,
                  decoder_in_channels=self.decoder_in_channels, upsamples=self.upsamples,
                  norm_eps=self.norm_eps)
        if self.padding < 0 or self.encoder_layers < 0 or self.decoder_layers < 0:
            raise ConfigError(f"{where}: padding and layer counts must be >= 0")
        if self.latent_grid * 2**self.upsamples != self.latent_size:
            raise ConfigError(
                f"{where}: the decoder must return the latent size: a {self.latent_size} latent gives a "
                f"{self.latent_grid} token grid and {self.upsamples} PixelShuffle(2) stage(s) give "
                f"{self.latent_grid * 2 ** self.upsamples}")


#: The typed sections of :class:`JanusFlowConfig` (name -> dataclass), in ``config.json`` order.
SECTIONS = {"language": LanguageConfig, "und_vision": UnderstandingVisionConfig, "gen_vision": GenerationVisionConfig}
#: Special token ids a model folder may record (filled from its tokenizer when absent, see modeling).
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "image_token_id", "boi_token_id")


@functools.lru_cache(maxsize=1)
def _generic_keys() -> frozenset[str]:
    """Top-level keys that transformers itself writes or passes to every config (not ours to reject)."""
    from transformers import GenerationConfig, PretrainedConfig

    return frozenset(PretrainedConfig().to_dict()) | frozenset(GenerationConfig._get_default_generation_params()) | {
        "name_or_path", "_name_or_path", "_commit_hash", "torch_dtype", "attn_implementation",
        "experts_implementation", "output_attentions", "num_labels", "auto_map", "per_layer_config",
        "tie_word_embeddings", "use_cache", "transformers_version", "architectures", "model_type"}


def _is_torch_dtype_name(name: str) -> bool:
    import torch

    return isinstance(getattr(torch, name, None), torch.dtype)


class JanusFlowConfig(PretrainedConfig):
    """The unified model: LLM + understanding path + generation path + aligners.

    A transformers ``PretrainedConfig`` (``model_type = "janusflow"``: ``AutoConfig`` reads it once
    ``janusflow`` is imported) whose content is three typed sections, ``language``, ``und_vision`` and
    ``gen_vision``, plus the special token ids the folder's tokenizer uses. Sections are given as
    dataclasses or as the dicts of ``config.json``; unknown keys and wrong types are refused by name.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        language: LanguageConfig | dict[str, Any] | None = None,
        und_vision: UnderstandingVisionConfig | dict[str, Any] | None = None,
        gen_vision: GenerationVisionConfig | dict[str, Any] | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        image_token_id: int | None = None,  # <image_placeholder>: the understanding image slots
        boi_token_id: int | None = None,  # <begin_of_image>: the slot of beg_of_und_embed
        **kwargs: Any,
    ) -> None:
        for name, value in (("language", language), ("und_vision", und_vision), ("gen_vision", gen_vision)):
            kind = SECTIONS[name]
            if value is None:
                value = kind()
            elif isinstance(value, dict):
                value = _from_dict(kind, value, f"config.{name}")
            elif not isinstance(value, kind):
                raise ConfigError(f"config.{name}: expected an object, got {type(value).__name__}")
            setattr(self, name, value)
        for key, value in zip(TOKEN_ID_KEYS, (bos_token_id, eos_token_id, pad_token_id, image_token_id,
                                              boi_token_id)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"config.{key}: expected a token id (an integer >= 0) or null, got {value!r}")
            setattr(self, key, value)
        model_type = kwargs.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"config: model_type is {model_type!r}, expected {MODEL_TYPE!r} "
                              "(official checkpoints are read by janusflow.convert)")
        for key in ("dtype", "torch_dtype"):  # transformers turns a name into getattr(torch, name)
            name = kwargs.get(key)
            if isinstance(name, str) and name != "auto" and not _is_torch_dtype_name(name):
                raise ConfigError(f"config.{key}: {name!r} is not a torch dtype (e.g. 'float32', 'bfloat16')")
        unknown = sorted(k for k in kwargs if k not in _generic_keys())
        if unknown:
            raise ConfigError(f"config: unknown key(s) {unknown}; known sections are {sorted(SECTIONS)}")
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return self.language.hidden_size

    @property
    def num_image_tokens(self) -> int:
        """Tokens one generated image occupies in the LLM sequence."""
        return self.gen_vision.num_image_tokens

    @property
    def num_und_image_tokens(self) -> int:
        """Tokens one understood image occupies (SigLIP patches; the boi slot comes on top)."""
        return self.und_vision.num_tokens

    def validate(self, where: str = "config") -> None:
        self.language.validate(f"{where}.language")
        self.und_vision.validate(f"{where}.und_vision")
        self.gen_vision.validate(f"{where}.gen_vision")
        if self.und_vision.encoder == "generation" and self.num_image_tokens != self.num_und_image_tokens:
            raise ConfigError(f"{where}.und_vision.encoder: generation (shared) needs the generation grid's "
                              f"{self.num_image_tokens} tokens to fill the {self.num_und_image_tokens} image slots")

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None):
        """The LLM's ``LlamaConfig`` (what generation and KV caches are sized from), with this folder's
        special token ids (not the Llama defaults 1 and 2)."""
        text = self.language.to_llama()
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(text, key, getattr(self, key))
        return text

    def __eq__(self, other: object) -> bool:
        """Equal when they describe the same model: the sections and the token ids."""
        if not isinstance(other, JanusFlowConfig):
            return NotImplemented
        keys = (*SECTIONS, *TOKEN_ID_KEYS)
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    __hash__ = None  # mutable

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for name in SECTIONS:
            output[name] = dataclasses.asdict(getattr(self, name))
        if output["und_vision"]["encoder"] == "siglip":  # the default: folders read and write as before
            del output["und_vision"]["encoder"]
        for key in TOKEN_ID_KEYS:  # unknown ids are left out (None would read as "no such token")
            if output.get(key) is None:
                output.pop(key, None)
        return output

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """``config.json`` content -> config (transformers' ``from_dict``, with our checks by name)."""
        if not isinstance(config_dict, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(config_dict).__name__}")
        return super().from_dict(dict(config_dict), **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` content (what ``save_pretrained`` writes) to the file ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string(use_diff=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "JanusFlowConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data)

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str) -> "JanusFlowConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
        return PRESETS[name]()


def _release() -> JanusFlowConfig:
    return JanusFlowConfig()


def _tiny() -> JanusFlowConfig:
    """Hidden 32, 2 layers, 32 px understanding images, 8x8 latents: for unit tests."""
    return JanusFlowConfig(
        language=LanguageConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
        und_vision=UnderstandingVisionConfig(image_size=32, patch_size=8, width=16, num_layers=2, num_heads=2,
                                             mlp_dim=32),
        gen_vision=GenerationVisionConfig(latent_channels=4, latent_size=8, channels=16, decoder_in_channels=16,
                                          encoder_layers=1, decoder_layers=1),
    )


def _small() -> JanusFlowConfig:
    """A mid-size model (hidden 256, 4 layers) for benchmarks and quick experiments."""
    return JanusFlowConfig(
        language=LanguageConfig(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024),
        und_vision=UnderstandingVisionConfig(image_size=64, patch_size=8, width=128, num_layers=3, num_heads=4,
                                             mlp_dim=512),
        gen_vision=GenerationVisionConfig(latent_channels=4, latent_size=16, channels=128, decoder_in_channels=128,
                                          encoder_layers=1, decoder_layers=1),
    )


PRESETS = {
    "janusflow-1.3b": _release,
    "tiny": _tiny,
    "small": _small,
}
