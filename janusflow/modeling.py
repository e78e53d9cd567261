"""The unified JanusFlow model: one LLM, an understanding path and a generation path.

Understanding (autoregressive): ids -> token embeddings, with each image's slots overwritten by
``[boi_embedding, und_aligner(SigLIP(image))]`` -> LLM -> next-token logits.

Generation (rectified flow, as a velocity function): the sequence is
``[prompt embeddings without the last token, t_emb, N latent tokens]``; the time embedding takes
the slot of the prompt's last token (the generation tag), so a prompt of L ids gives an LLM input
of (L - 1) + 1 + N positions under a plain causal mask. The last N hidden states go through
``gen_dec_aligner(gen_dec_aligner_norm(.))`` and the decoder (with the encoder's skip) to a
velocity. Conventions (``t = 0`` is noise, ``t = 1`` data, ``t * 1000`` into the time embedding)
live in :mod:`janusflow.flow`; the ODE, guidance and the prompt cache in :mod:`janusflow.sampler`.

The class is a transformers ``PreTrainedModel`` with ``GenerationMixin``: ``forward`` is the
understanding path (``CausalLMOutputWithPast``), so ``generate(input_ids, pixel_values, ...)`` answers
about images with every ``GenerationConfig`` option; the images are merged into the embeddings on the
prefill step only, after which the LLM's KV cache holds them. ``from_pretrained`` reads our folders and
the official layout (weights converted through :mod:`janusflow.convert`).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import GenerationConfig, GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .config import TOKEN_ID_KEYS, JanusFlowConfig
from .errors import CheckpointError, InputError
from .gen_vision import GenerationDecoder, GenerationEncoder
from .model_files import assign_state, read_config, read_weights, token_ids_from_tokenizer
from .und_vision import UnderstandingEncoder


def cache_kwargs(llm: nn.Module, cache) -> dict[str, object]:
    """``{keyword: cache}`` for a transformers LLM's forward. The keyword is ``cache`` in current
    transformers and ``past_key_values`` in releases before the rename (5.17 among them), which
    ignore an unknown ``cache=`` and build a cache of their own: the LLM's own signature says which."""
    return {_cache_keyword(type(llm)): cache}


@functools.lru_cache(maxsize=None)
def _cache_keyword(llm_class: type) -> str:
    return "cache" if "cache" in inspect.signature(llm_class.forward).parameters else "past_key_values"


#: ``from_pretrained`` keywords that mean nothing for a local folder (hub and loader options).
_IGNORED_LOAD_KWARGS = frozenset({
    "cache_dir", "force_download", "local_files_only", "proxies", "revision", "token", "trust_remote_code",
    "use_safetensors", "low_cpu_mem_usage", "_from_auto", "_from_pipeline", "code_revision", "resume_download",
    "user_agent"})


@dataclass
class GenerationOutput:
    velocity: torch.Tensor  # (B, C, H, W)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # per LLM layer, when asked for
    cache: object | None = None


class JanusFlowPreTrainedModel(PreTrainedModel):
    config_class = JanusFlowConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "SiglipEncoderLayer", "GenerationEncoder", "GenerationDecoder"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to redo: the LLM and SigLIP initialise themselves, the JanusFlow modules keep
        PyTorch's defaults (as in training from the parts) and ``boi_embedding`` is drawn in ``__init__``."""


class JanusFlowForConditionalGeneration(JanusFlowPreTrainedModel, GenerationMixin):
    """JanusFlow: one LLM that answers about images (``forward`` / ``generate``) and is the velocity
    field of rectified-flow image generation (``forward_generation``, driven by :mod:`janusflow.sampler`)."""

    def __init__(self, config: JanusFlowConfig):
        config.validate()
        super().__init__(config)
        D = config.hidden_size
        und, gen = config.und_vision, config.gen_vision
        # understanding
        self.und_encoder = UnderstandingEncoder(und)
        self.und_aligner = nn.Linear(und.width, D)
        self.boi_embedding = nn.Parameter(torch.randn(1, D) * config.language.initializer_range)
        # generation
        self.gen_encoder = GenerationEncoder(gen, D)
        self.gen_enc_aligner = nn.Linear(gen.channels, D)
        self.gen_decoder = GenerationDecoder(gen, D)
        self.gen_dec_aligner_norm = LlamaRMSNorm(D, eps=config.language.rms_norm_eps)
        self.gen_dec_aligner = nn.Linear(D, gen.decoder_in_channels)
        # the LLM
        self.language_model = LlamaForCausalLM(config.language.to_llama())
        # und_vision.encoder "generation" (shared): the VAE reading images for understanding, an object
        # with ``encode(pixels) -> scaled latents`` (janusflow.latent_encoder.VAELatentEncoder), kept out of
        # the weights (it is the folder's vae/); from_pretrained and the training task set it
        self.latent_encoder = None
        self.post_init()

    # ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.boi_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.boi_embedding.dtype

    @property
    def llm(self):
        """The decoder stack (``LlamaModel``): hidden states, no LM head."""
        return self.language_model.model

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(input_ids)

    # -- understanding -------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> aligned image tokens (B, P, D). Decoupled (the default): SigLIP
        and the understanding aligner. Shared (``und_vision.encoder == "generation"``, Table 6's
        ablation): the VAE's clean latent at t = 1 through the generation encoder and its aligner."""
        if self.config.und_vision.encoder == "siglip":
            return self.und_aligner(self.und_encoder(pixel_values))
        if self.latent_encoder is None:
            raise InputError("this model reads images with its generation encoder (und_vision.encoder: "
                             "generation) and has no VAE: load it from a folder with vae/, or set latent_encoder")
        z = self.latent_encoder.encode(pixel_values).to(pixel_values.dtype)  # (B, C, h, w), scaled
        size = self.config.gen_vision.latent_size
        if tuple(z.shape[-2:]) != (size, size):
            raise InputError(f"the VAE makes {tuple(z.shape[-2:])} latents of the {pixel_values.shape[-1]} px "
                             f"understanding images; the generation encoder takes {size} x {size}")
        t = torch.full((z.shape[0],), 1000.0, dtype=z.dtype, device=z.device)  # t = 1: the clean image
        tokens, _, _ = self.encode_latent(z, t)  # (B, N, D), N = P
        return tokens

    def image_slots(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool, True at the boi and image-placeholder ids the config names (``images_seq_mask``)."""
        image_id, boi_id = self.config.image_token_id, self.config.boi_token_id
        if image_id is None or boi_id is None:
            raise InputError("pass images_seq_mask (the processor returns it): this model's config names no "
                             "image_token_id / boi_token_id to find the image slots with")
        return (input_ids == image_id) | (input_ids == boi_id)

    def prepare_inputs_embeds(
        self,
        input_ids: torch.Tensor,  # (B, T)
        pixel_values: torch.Tensor | None = None,  # (B, n, 3, S, S), or (M, 3, S, S): the images in slot order
        images_seq_mask: torch.Tensor | None = None,  # (B, T) True at boi and image slots; None: from the ids
        images_emb_mask: torch.Tensor | None = None,  # (B, n, 1 + P) which image embeddings are used
    ) -> torch.Tensor:
        """Token embeddings with every image's ``[boi, P tokens]`` written into its slots, in order."""
        embeds = self.embed_tokens(input_ids.clamp(min=0))  # (B, T, D)
        if pixel_values is None:
            return embeds
        if images_seq_mask is None:
            images_seq_mask = self.image_slots(input_ids)
        if images_seq_mask.shape[1] < input_ids.shape[1]:  # generated columns (full recompute) hold no image
            images_seq_mask = nn.functional.pad(images_seq_mask, (0, input_ids.shape[1] - images_seq_mask.shape[1]))
        if not bool(images_seq_mask.any()):
            return embeds
        if pixel_values.ndim == 4:  # a flat list of images, filling the slots row by row
            pixel_values = pixel_values[None]
        B, n = pixel_values.shape[:2]
        images = self.encode_images(pixel_values.flatten(0, 1).to(embeds.dtype))  # (B*n, P, D)
        boi = self.boi_embedding.to(images.dtype).expand(images.shape[0], 1, -1)
        images = torch.cat([boi, images], dim=1).reshape(B, -1, images.shape[-1])  # (B, n*(1+P), D)
        if images_emb_mask is None:
            images_emb_mask = torch.ones(images.shape[:2], dtype=torch.bool, device=images.device)
        images_emb_mask = images_emb_mask.reshape(B, -1).to(images.device)
        chosen = images[images_emb_mask]  # (M, D)
        slots = int(images_seq_mask.sum())
        if chosen.shape[0] != slots:
            raise InputError(f"{slots} image slots in the token sequence but {chosen.shape[0]} image embeddings")
        return embeds.masked_scatter(images_seq_mask.to(embeds.device)[..., None], chosen.to(embeds))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        pixel_values: torch.Tensor | None = None,  # (B, n, 3, S, S) in [-1, 1]
        images_seq_mask: torch.Tensor | None = None,  # (B, T)
        images_emb_mask: torch.Tensor | None = None,  # (B, n, 1 + P)
        attention_mask: torch.Tensor | None = None,  # (B, T + cached) 1 = attend, 0 = left padding
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ):
        """Understanding: next-token logits (``CausalLMOutputWithPast``) of a multimodal sequence. Extra
        keywords (the KV cache, under the name this transformers gives it, ...) go to the LLM."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.prepare_inputs_embeds(input_ids, pixel_values, images_seq_mask, images_emb_mask)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, labels=labels, use_cache=use_cache,
                                   logits_to_keep=logits_to_keep, **kwargs)

    def forward_understanding(self, input_ids, attention_mask=None, pixel_values=None, images_seq_mask=None,
                              images_emb_mask=None, **llm_kwargs):
        """Next-token logits for a (multimodal) sequence; extra kwargs go to the LLM (cache, ...)."""
        embeds = self.prepare_inputs_embeds(input_ids, pixel_values, images_seq_mask, images_emb_mask)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, **llm_kwargs)

    def prepare_inputs_for_generation(self, input_ids, *args, pixel_values=None, images_seq_mask=None,
                                      images_emb_mask=None, is_first_iteration=False, **kwargs):
        """transformers' preparation, plus the images on the prefill step only (with a KV cache the
        later steps read them from the cache; without one every step recomputes the whole sequence)."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, is_first_iteration=is_first_iteration,
                                                       **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):
            inputs.update(pixel_values=pixel_values, images_seq_mask=images_seq_mask,
                          images_emb_mask=images_emb_mask)
        return inputs

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resize the LLM's embeddings and LM head (e.g. after adding tokens); the config follows."""
        embeddings = self.language_model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.language.vocab_size = embeddings.num_embeddings
        return embeddings

    # -- generation ----------------------------------------------------------------------------
    def embed_prompt(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids ending with the generation tag -> (B, L - 1, D): the tag's slot goes to t_emb."""
        return self.embed_tokens(prompt_ids)[:, :-1]

    def encode_latent(self, z: torch.Tensor, t: torch.Tensor):
        """Latent (B, C, H, W) and t (B,) on the 0..1000 scale -> (tokens (B, N, D), t_emb (B, D), skip)."""
        skip, t_emb = self.gen_encoder(z, t)  # skip: (B, Ce, h, w)
        tokens = self.gen_enc_aligner(skip.flatten(2).transpose(1, 2))  # (B, N, D), row-major (h, w)
        return tokens, t_emb, skip

    def decode_latent(self, hidden: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """Last N hidden states (B, N, D) -> velocity (B, C, H, W)."""
        B, _, h, w = skip.shape
        x = self.gen_dec_aligner(self.gen_dec_aligner_norm(hidden))  # (B, N, Cd)
        x = x.transpose(1, 2).reshape(B, -1, h, w)  # (B, Cd, h, w)
        return self.gen_decoder(x, skip, t_emb)

    def forward_generation(
        self,
        prefix_embeds: torch.Tensor | None,  # (B, L-1, D) from embed_prompt; None when cached
        z: torch.Tensor,  # (B, C, H, W)
        t: torch.Tensor,  # (B,) on the 0..1000 scale
        attention_mask: torch.Tensor | None = None,  # (B, L-1+1+N) key mask, 1 = attend
        position_ids: torch.Tensor | None = None,
        cache=None,
        output_hidden_states: bool = False,
    ) -> GenerationOutput:
        """The velocity field v(z, t | prompt).

        Without a cache the whole sequence ``[prefix, t_emb, tokens]`` runs through the LLM (the
        reference path). With ``cache`` holding the prefix's keys and values (and ``prefix_embeds``
        None), only ``[t_emb, tokens]`` run; ``position_ids`` must then continue the prefix's.
        """
        tokens, t_emb, skip = self.encode_latent(z, t)
        parts = [t_emb[:, None], tokens]
        if prefix_embeds is not None:
            parts.insert(0, prefix_embeds.to(tokens.dtype))
        out = self.llm(inputs_embeds=torch.cat(parts, dim=1), attention_mask=attention_mask,
                       position_ids=position_ids, use_cache=cache is not None, **cache_kwargs(self.llm, cache),
                       output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state[:, -tokens.shape[1]:]  # (B, N, D)
        velocity = self.decode_latent(hidden, skip, t_emb)
        return GenerationOutput(velocity, out.hidden_states if output_hidden_states else None, cache)

    # -- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *args, dtype: torch.dtype | None = None,
                        **kwargs) -> None:
        """transformers' ``save_pretrained`` (``config.json``, ``generation_config.json``, safetensors,
        sharded by ``max_shard_size``); ``dtype`` casts the saved weights (the model is not changed)."""
        if getattr(self, "quantization_method", None):  # janusflow.quantize: int8 tensors are not plain weights
            raise CheckpointError(f"a {self.quantization_method}-quantized model cannot be saved: save the model "
                                  "before quantizing it (quantization is applied after loading)")
        if dtype is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        state = kwargs.pop("state_dict", None) or self.state_dict()
        kwargs["state_dict"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        config_file = Path(os.fspath(save_directory)) / "config.json"  # it names the model's dtype: the files'
        data = json.loads(config_file.read_text(encoding="utf-8"))
        data["dtype"] = str(dtype).removeprefix("torch.")
        config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args,
                        config: JanusFlowConfig | None = None, dtype: torch.dtype | str | None = None,
                        device_map: Any = None, device: str | torch.device | None = None, **kwargs):
        """Load a local folder of either layout: ours (``config.json`` with ``model_type: janusflow``) or
        the official one (``language_config`` ..., weights converted through :mod:`janusflow.convert`).

        ``dtype`` (or ``torch_dtype``): a torch dtype, its name, or ``"auto"`` (the config's, else the
        stored weights'); default fp32 on CPU, bf16 on CUDA. ``device_map``: a device (``"cpu"``,
        ``"cuda:0"``, an index), ``"auto"`` (CUDA when present), or a map of module names to one device
        (``{"": "cuda:0"}``); the model is not split over devices (the release's 1.3B fits on any GPU).
        ``device`` is the older spelling. Token ids the config lacks are read from the folder's
        ``tokenizer.json``; ``generation_config.json`` is read when present.
        """
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments")
        torch_dtype = kwargs.pop("torch_dtype", None)
        dtype = dtype if dtype is not None else torch_dtype
        attn_implementation = kwargs.pop("attn_implementation", None)
        subfolder = kwargs.pop("subfolder", "") or ""
        adapter_path = (kwargs.pop("adapter_kwargs", None) or {}).get("_adapter_model_path")  # the Auto classes'
        for key in ("key_mapping", "output_loading_info", "quantization_config"):
            if kwargs.get(key, None) in (None, {}, False):
                kwargs.pop(key, None)
        unknown = sorted(set(kwargs) - _IGNORED_LOAD_KWARGS)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained: unsupported argument(s) {unknown}")
        folder = Path(os.fspath(pretrained_model_name_or_path)) / subfolder
        if not folder.is_dir():
            raise CheckpointError(f"model folder not found: {folder} (models are read from local folders)")
        read, official = read_config(folder)
        config = read if config is None else config
        missing_ids = [k for k in TOKEN_ID_KEYS if getattr(config, k) is None]
        for key, value in token_ids_from_tokenizer(folder).items():
            if key in missing_ids:
                setattr(config, key, value)
        config.name_or_path = str(folder)

        device = _placement(device_map if device_map is not None else device)
        model = build_meta(config, cls)
        state = read_weights(folder, config, official, {k: tuple(v.shape) for k, v in model.state_dict().items()})
        model = assign_state(model, state, _resolve_dtype(dtype, config, state, device), device, what=str(folder))
        if adapter_path is not None:  # AutoModel was given a peft adapter folder: its base, then the adapter
            model.load_adapter(os.fspath(adapter_path))
        if config.und_vision.encoder == "generation" and (folder / "vae" / "config.json").is_file():
            from .latent_encoder import VAELatentEncoder

            model.latent_encoder = VAELatentEncoder.from_folder(folder / "vae", config.gen_vision.latent_size)
            model.latent_encoder.to(device)
        if attn_implementation is not None:
            for part in (model.language_model, model.und_encoder.siglip):
                part.set_attn_implementation(attn_implementation)
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder)
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # ids the file was written without
                if getattr(model.generation_config, key) is None:
                    setattr(model.generation_config, key, getattr(config, key))
        return model.eval()


JanusFlowModel = JanusFlowForConditionalGeneration  # the name the pipeline, training and tests use


def build_meta(config: JanusFlowConfig, model_class: type | None = None):
    """The model on the meta device: no memory, weights to be assigned (``model_files.assign_state``)."""
    with torch.device("meta"):
        return (model_class or JanusFlowForConditionalGeneration)(config)


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a model folder of either layout; fp32 on CPU and bf16 on CUDA unless ``dtype`` is given."""
    return JanusFlowForConditionalGeneration.from_pretrained(path, dtype=dtype, device=device)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are far slower there), bf16 on CUDA."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _placement(device_map: Any) -> torch.device:
    """The one device a ``device_map`` names."""
    if device_map is None:
        return torch.device("cpu")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, dict):
        devices = {_placement(d) for d in device_map.values()}
        if len(devices) != 1:
            raise InputError(f"device_map puts modules on {sorted(map(str, devices))}: JanusFlow runs on one "
                             "device; give one (e.g. 'cuda:0', or {'': 'cuda:0'})")
        return devices.pop()
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return torch.device("cuda", device_map)  # transformers' convention: an index is a CUDA device
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device_map {device_map!r} is neither a device, 'auto' nor a module -> device map "
                         f"({e})") from None


def _resolve_dtype(dtype: Any, config: JanusFlowConfig, state: dict[str, torch.Tensor],
                   device: torch.device) -> torch.dtype:
    if dtype is None:
        return default_dtype(device)
    if dtype == "auto":
        if isinstance(config.dtype, torch.dtype):
            return config.dtype
        return next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    return dtype
