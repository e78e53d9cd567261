"""The official JanusFlow checkpoint layout <-> ours: one key map, built from the config.

Official names come from DeepSeek's ``MultiModalityCausalLM`` (timm SigLIP with fused qkv,
``mid_block.res_blocks`` ConvNeXt blocks, ``beg_of_und_embed`` ...). Every key of ours maps to one
official key, except three fused/reshaped groups:
  * SigLIP ``attn.qkv`` (3W, W)   <-> ``self_attn.{q,k,v}_proj``   (rows split in thirds, q k v)
  * SigLIP ``attn_pool.q`` + ``attn_pool.kv`` <-> ``head.attention.in_proj_*`` (q rows, then k, v)
  * SigLIP ``pos_embed`` (1, P, W) <-> ``embeddings.position_embedding.weight`` (P, W)
The map is enumerated from the model built for the config, so missing, unexpected and mis-shaped
keys are found before any tensor is copied, and reported by name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .config import GenerationVisionConfig, JanusFlowConfig, LanguageConfig, UnderstandingVisionConfig
from .errors import CheckpointError, ConfigError

# ---------------------------------------------------------------------------------------------
# config

#: The named towers of the official ``siglip_vit.SigLIP_MODEL_CONFIG``.
OFFICIAL_SIGLIP = {
    "siglip_so400m_patch14_384": dict(image_size=336, patch_size=14, width=1152, layers=27, heads=16, mlp_ratio=3.7362),
    "siglip_so400m_patch14_224": dict(image_size=224, patch_size=14, width=1152, layers=27, heads=16, mlp_ratio=3.7362),
    "siglip_large_patch16_384": dict(image_size=384, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4),
    "siglip_large_patch16_256": dict(image_size=256, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4),
}

_LLAMA_KEYS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
               "tie_word_embeddings", "initializer_range"}


def is_official_config(data: dict[str, Any]) -> bool:
    return isinstance(data, dict) and "language_config" in data


def _section(data: dict, name: str) -> dict:
    section = data.get(name)
    if not isinstance(section, dict):
        raise ConfigError(f"official config: missing or malformed {name!r}")
    return section


def config_from_official(data: dict[str, Any], latent_size: int = 48) -> JanusFlowConfig:
    """Read the official nested ``config.json`` (``MultiModalityConfig``)."""
    if not is_official_config(data):
        raise ConfigError("official config: no 'language_config' section")
    lang = _section(data, "language_config")
    if lang.get("model_type", "llama") != "llama":
        raise ConfigError(f"official config: language model type {lang.get('model_type')!r} is not supported")
    for flag in ("attention_bias", "mlp_bias"):
        if lang.get(flag):
            raise ConfigError(f"official config: language_config.{flag}=true is not supported")
    if lang.get("rope_scaling"):
        raise ConfigError("official config: language_config.rope_scaling is not supported")
    if lang.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"official config: hidden_act {lang['hidden_act']!r} is not supported")
    try:
        language = LanguageConfig(
            vocab_size=int(lang["vocab_size"]), hidden_size=int(lang["hidden_size"]),
            intermediate_size=int(lang["intermediate_size"]), num_hidden_layers=int(lang["num_hidden_layers"]),
            num_attention_heads=int(lang["num_attention_heads"]),
            num_key_value_heads=int(lang.get("num_key_value_heads") or lang["num_attention_heads"]),
            max_position_embeddings=int(lang.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(lang.get("rms_norm_eps", 1e-6)), rope_theta=float(lang.get("rope_theta", 10000.0)),
            tie_word_embeddings=bool(lang.get("tie_word_embeddings", False)),
            initializer_range=float(lang.get("initializer_range", 0.02)))
    except KeyError as e:
        raise ConfigError(f"official config: language_config lacks {e.args[0]!r}") from None

    und = _section(data, "vision_und_enc_config")
    if "CLIPVisionTower" not in str(und.get("cls", "")):
        raise ConfigError(f"official config: understanding encoder class {und.get('cls')!r} is not supported")
    p = und.get("params", {})
    name = p.get("model_name", "siglip_large_patch16_384")
    tower = p.get("siglip_model_config") or OFFICIAL_SIGLIP.get(name)
    if tower is None:
        raise ConfigError(f"official config: unknown SigLIP model {name!r} and no siglip_model_config given")
    if p.get("select_feature", "patch") not in ("same", "patch"):
        raise ConfigError(f"official config: select_feature {p.get('select_feature')!r} is not supported")
    if p.get("pixel_mean") is not None or p.get("pixel_std") is not None:
        raise ConfigError("official config: pixel_mean/pixel_std inside the tower are not supported")
    select = int(p.get("select_layer", -1))
    depth = min(tower["layers"], tower["layers"] + select + 1) if select <= 0 else min(tower["layers"], select)
    und_vision = UnderstandingVisionConfig(
        image_size=int(p.get("image_size", 224)), patch_size=int(tower["patch_size"]), width=int(tower["width"]),
        num_layers=depth, num_heads=int(tower["heads"]), mlp_dim=int(tower["width"] * tower["mlp_ratio"]),
        use_attention_pool=tower.get("global_pool", "map") == "map")

    enc = _section(data, "vision_gen_enc_config").get("params", {})
    dec = _section(data, "vision_gen_dec_config").get("params", {})
    enc_channels = list(enc.get("block_out_channels", [768]))
    dec_channels = list(dec.get("block_out_channels", [768]))
    if len(set(enc_channels)) != 1 or dec_channels[-1] != enc_channels[-1]:
        raise ConfigError(f"official config: encoder channels {enc_channels} and decoder channels {dec_channels} "
                          "must be one and the same width")
    kernel, stride = int(enc.get("kernel_size", 7)), int(enc.get("stride", 4))
    padding = enc.get("padding")
    padding = math.ceil(kernel - stride) if padding is None else int(padding)
    latent_channels = int(enc.get("input_channels", 3))
    if int(dec.get("out_channels", 3)) != latent_channels:
        raise ConfigError("official config: decoder out_channels differs from encoder input_channels")
    for part, params in (("vision_gen_enc_config", enc), ("vision_gen_dec_config", dec)):
        if int(params.get("hidden_size", 2048)) != language.hidden_size:
            raise ConfigError(f"official config: {part}.params.hidden_size differs from the LLM width")
    gen_vision = GenerationVisionConfig(
        latent_channels=latent_channels, latent_size=latent_size, kernel_size=kernel, stride=stride,
        padding=padding, channels=enc_channels[0], encoder_layers=int(enc.get("layers_in_middle", 2)),
        decoder_in_channels=int(dec.get("in_channels", 768)), decoder_layers=int(dec.get("layers_in_middle", 2)),
        upsamples=int(dec.get("upsamples", 2)), norm_eps=float(enc.get("norm_eps", 1e-6)),
        use_bias=bool(enc.get("use_bias", True)), encoder_mid_block=bool(enc.get("use_mid_block", True)),
        decoder_mid_block=bool(dec.get("use_mid_block", True)))
    config = JanusFlowConfig(language=language, und_vision=und_vision, gen_vision=gen_vision)
    config.validate("official config")
    return config


def config_to_official(config: JanusFlowConfig) -> dict[str, Any]:
    """Write the official nested layout, loadable by DeepSeek's ``MultiModalityCausalLM``."""
    lang = config.language
    und, gen = config.und_vision, config.gen_vision
    tower = dict(image_size=und.image_size, patch_size=und.patch_size, width=und.width, layers=und.num_layers,
                 heads=und.num_heads, mlp_ratio=und.mlp_dim / und.width,
                 global_pool="map" if und.use_attention_pool else "token", use_checkpoint=False)
    und_params: dict[str, Any] = {"image_size": und.image_size, "select_feature": "same", "select_layer": -1}
    named = [n for n, t in OFFICIAL_SIGLIP.items()
             if (t["patch_size"], t["width"], t["layers"], t["heads"], int(t["width"] * t["mlp_ratio"]))
             == (und.patch_size, und.width, und.num_layers, und.num_heads, und.mlp_dim)]
    if named and und.use_attention_pool:
        und_params["model_name"] = named[0]
    else:
        und_params["model_name"] = f"siglip_custom_patch{und.patch_size}_{und.image_size}"
        und_params["siglip_model_config"] = tower
    common = dict(norm_eps=gen.norm_eps, use_bias=gen.use_bias, hidden_size=lang.hidden_size)
    enc = {**common, "input_channels": gen.latent_channels, "kernel_size": gen.kernel_size, "stride": gen.stride,
           "padding": gen.padding, "block_out_channels": [gen.channels], "layers_in_middle": gen.encoder_layers,
           "use_mid_block": gen.encoder_mid_block, "elementwize_affine": True}
    dec = {**common, "in_channels": gen.decoder_in_channels, "out_channels": gen.latent_channels,
           "block_out_channels": [gen.channels], "upsamples": gen.upsamples, "layers_in_middle": gen.decoder_layers,
           "use_mid_block": gen.decoder_mid_block, "elementwise_affine": True}
    return {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "language_config": {"model_type": "llama", "hidden_act": "silu", "attention_bias": False,
                            **{k: getattr(lang, k) for k in sorted(_LLAMA_KEYS)}},
        "vision_und_enc_config": {"cls": "CLIPVisionTower", "model_type": "vision_und_enc", "params": und_params},
        "vision_gen_enc_config": {"cls": "ShallowUViTEncoder", "model_type": "vision_gen_enc", "params": enc},
        "vision_gen_dec_config": {"cls": "ShallowUViTDecoder", "model_type": "vision_gen_dec", "params": dec},
    }


OFFICIAL_MODEL_TYPE = "multi_modality"


class JanusFlowOfficialConfig(JanusFlowConfig):
    """``AutoConfig``'s reader for the release's ``config.json`` (``model_type: multi_modality``).

    It never stays one: ``from_dict`` converts the nested layout with :func:`config_from_official` and
    returns a plain :class:`~janusflow.config.JanusFlowConfig`, so ``AutoModel`` then picks
    ``JanusFlowForConditionalGeneration``, whose ``from_pretrained`` converts the weights.
    """

    model_type = OFFICIAL_MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        if not isinstance(config_dict, dict):
            raise ConfigError(f"official config: expected a JSON object, got {type(config_dict).__name__}")
        ours = config_from_official(config_dict).to_dict()
        ours.pop("transformers_version", None)
        return JanusFlowConfig.from_dict(ours, **kwargs)


# ---------------------------------------------------------------------------------------------
# weights

_TOWER = "vision_und_enc_model.vision_tower."
_CONVNEXT = {"depthwise": "depthwise", "norm": "norm", "mlp_in": "channelwise_linear_1",
             "grn": "channelwise_norm", "mlp_out": "channelwise_linear_2", "film": "cond_embeds_mapper"}
# (pattern on our key, replacement giving the official key); first match wins
_RENAMES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"^language_model\.(.*)$", r"language_model.\1"),
    (r"^boi_embedding$", "beg_of_und_embed"),
    (r"^und_aligner\.(.*)$", r"vision_und_enc_aligner.\1"),
    (r"^gen_enc_aligner\.(.*)$", r"vision_gen_enc_aligner.\1"),
    (r"^gen_dec_aligner_norm\.(.*)$", r"vision_gen_dec_aligner_norm.\1"),
    (r"^gen_dec_aligner\.(.*)$", r"vision_gen_dec_aligner.\1"),
    (r"^gen_encoder\.time_embed\.(.*)$", r"vision_gen_enc_model.time_embed.\1"),
    (r"^gen_encoder\.patch_embed\.(.*)$", r"vision_gen_enc_model.in_conv.\1"),
    (r"^gen_(en|de)coder\.blocks\.(\d+)\.(\w+)\.(.*)$",
     lambda m: f"vision_gen_{m[1]}c_model.mid_block.res_blocks.{m[2]}.{_CONVNEXT[m[3]]}.{m[4]}"),
    (r"^gen_decoder\.input_norm\.(.*)$", r"vision_gen_dec_model.input_norm.\1"),
    (r"^gen_decoder\.unpatchify\.(\d+)\.norm\.(.*)$", r"vision_gen_dec_model.out_convs.\1.norm.\2"),
    (r"^gen_decoder\.unpatchify\.(\d+)\.proj\.(.*)$", r"vision_gen_dec_model.out_convs.\1.unpatch_conv.\2"),
    (r"^und_encoder\.siglip\.embeddings\.patch_embedding\.(.*)$", _TOWER + r"patch_embed.proj.\1"),
    (r"^und_encoder\.siglip\.encoder\.layers\.(\d+)\.layer_norm(\d)\.(.*)$", _TOWER + r"blocks.\1.norm\2.\3"),
    (r"^und_encoder\.siglip\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(.*)$", _TOWER + r"blocks.\1.attn.proj.\2"),
    (r"^und_encoder\.siglip\.encoder\.layers\.(\d+)\.mlp\.(fc\d)\.(.*)$", _TOWER + r"blocks.\1.mlp.\2.\3"),
    (r"^und_encoder\.siglip\.post_layernorm\.(.*)$", _TOWER + r"norm.\1"),
    (r"^und_encoder\.siglip\.head\.probe$", _TOWER + "attn_pool.latent"),
    (r"^und_encoder\.siglip\.head\.attention\.out_proj\.(.*)$", _TOWER + r"attn_pool.proj.\1"),
    (r"^und_encoder\.siglip\.head\.layernorm\.(.*)$", _TOWER + r"attn_pool.norm.\1"),
    (r"^und_encoder\.siglip\.head\.mlp\.(fc\d)\.(.*)$", _TOWER + r"attn_pool.mlp.\1.\2"),
]


@dataclass(frozen=True)
class Rule:
    """``ours`` keys are computed from ``official`` keys (and back) by one of four kinds."""

    kind: str  # "copy" | "pos_embed" | "qkv" | "pool_qkv"
    ours: tuple[str, ...]
    official: tuple[str, ...]


def _one_to_one(key: str) -> str | None:
    for pattern, repl in _RENAMES:
        m = re.match(pattern, key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def key_map(our_keys: list[str]) -> list[Rule]:
    """Rules covering every key of our state dict (``our_keys``), in a stable order."""
    rules: list[Rule] = []
    done: set[str] = set()
    for key in our_keys:
        if key in done:
            continue
        m = re.match(r"^und_encoder\.siglip\.encoder\.layers\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)$", key)
        if m:
            layer, kind = m[1], m[2]
            ours = tuple(f"und_encoder.siglip.encoder.layers.{layer}.self_attn.{x}_proj.{kind}" for x in "qkv")
            rules.append(Rule("qkv", ours, (f"{_TOWER}blocks.{layer}.attn.qkv.{kind}",)))
        elif m := re.match(r"^und_encoder\.siglip\.head\.attention\.in_proj_(weight|bias)$", key):
            ours = (key,)
            rules.append(Rule("pool_qkv", ours, (f"{_TOWER}attn_pool.q.{m[1]}", f"{_TOWER}attn_pool.kv.{m[1]}")))
        elif key == "und_encoder.siglip.embeddings.position_embedding.weight":
            ours = (key,)
            rules.append(Rule("pos_embed", ours, (f"{_TOWER}pos_embed",)))
        else:
            official = _one_to_one(key)
            if official is None:
                raise CheckpointError(f"no official name for our key {key!r}")
            ours = (key,)
            rules.append(Rule("copy", ours, (official,)))
        done.update(ours)
    return rules


def _to_official(rule: Rule, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if rule.kind == "copy":
        return tensors
    if rule.kind == "pos_embed":
        return [tensors[0][None]]  # (P, W) -> (1, P, W)
    if rule.kind == "qkv":
        return [torch.cat(tensors, dim=0)]  # q, k, v rows -> fused qkv
    if rule.kind == "pool_qkv":
        w = tensors[0].shape[0] // 3
        return [tensors[0][:w], tensors[0][w:]]  # in_proj -> q, kv (k then v)
    raise AssertionError(rule.kind)


def _to_ours(rule: Rule, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if rule.kind == "copy":
        return tensors
    if rule.kind == "pos_embed":
        return [tensors[0][0]]
    if rule.kind == "qkv":
        return list(tensors[0].chunk(3, dim=0))
    if rule.kind == "pool_qkv":
        return [torch.cat(tensors, dim=0)]
    raise AssertionError(rule.kind)


def official_shapes(rules: list[Rule], our_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes the official checkpoint must have, derived from ours (works on meta tensors)."""
    shapes = {}
    for rule in rules:
        fake = [torch.empty(our_shapes[k], device="meta") for k in rule.ours]
        for key, t in zip(rule.official, _to_official(rule, fake)):
            shapes[key] = tuple(t.shape)
    return shapes


def check_keys(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise one error naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(f"{k}: checkpoint {list(found[k])}, model {list(expected[k])}"
                   for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems))


def official_to_ours(state: dict[str, torch.Tensor], our_shapes: dict[str, tuple[int, ...]],
                     what: str = "official checkpoint") -> dict[str, torch.Tensor]:
    """Rename/split/fuse an official state dict into ours, after checking every key and shape."""
    rules = key_map(list(our_shapes))
    check_keys({k: tuple(v.shape) for k, v in state.items()}, official_shapes(rules, our_shapes), what)
    out = {}
    for rule in rules:
        for key, t in zip(rule.ours, _to_ours(rule, [state[k] for k in rule.official])):
            out[key] = t.contiguous()
    return out


def ours_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for rule in key_map(list(state)):
        for key, t in zip(rule.official, _to_official(rule, [state[k] for k in rule.ours])):
            out[key] = t.contiguous()
    return out
