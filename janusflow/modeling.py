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
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .config import JanusFlowConfig
from .errors import InputError
from .gen_vision import GenerationDecoder, GenerationEncoder
from .und_vision import UnderstandingEncoder


def cache_kwargs(llm: nn.Module, cache) -> dict[str, object]:
    """``{keyword: cache}`` for a transformers LLM's forward. The keyword is ``cache`` in current
    transformers and ``past_key_values`` in releases before the rename (5.17 among them), which
    ignore an unknown ``cache=`` and build a cache of their own: the LLM's own signature says which."""
    return {_cache_keyword(type(llm)): cache}


@functools.lru_cache(maxsize=None)
def _cache_keyword(llm_class: type) -> str:
    return "cache" if "cache" in inspect.signature(llm_class.forward).parameters else "past_key_values"


@dataclass
class GenerationOutput:
    velocity: torch.Tensor  # (B, C, H, W)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # per LLM layer, when asked for
    cache: object | None = None


class JanusFlowModel(nn.Module):
    def __init__(self, config: JanusFlowConfig):
        super().__init__()
        config.validate()
        self.config = config
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
        """(B, 3, S, S) in [-1, 1] -> aligned image tokens (B, P, D)."""
        return self.und_aligner(self.und_encoder(pixel_values))

    def prepare_inputs_embeds(
        self,
        input_ids: torch.Tensor,  # (B, T)
        pixel_values: torch.Tensor | None = None,  # (B, n, 3, S, S)
        images_seq_mask: torch.Tensor | None = None,  # (B, T) True at boi and image slots
        images_emb_mask: torch.Tensor | None = None,  # (B, n, 1 + P) which image embeddings are used
    ) -> torch.Tensor:
        """Token embeddings with every image's ``[boi, P tokens]`` written into its slots, in order."""
        embeds = self.embed_tokens(input_ids.clamp(min=0))  # (B, T, D)
        if pixel_values is None or images_seq_mask is None or not bool(images_seq_mask.any()):
            return embeds
        B, n = pixel_values.shape[:2]
        images = self.encode_images(pixel_values.flatten(0, 1).to(embeds.dtype))  # (B*n, P, D)
        boi = self.boi_embedding.to(images.dtype).expand(images.shape[0], 1, -1)
        images = torch.cat([boi, images], dim=1).reshape(B, -1, images.shape[-1])  # (B, n*(1+P), D)
        if images_emb_mask is None:
            images_emb_mask = torch.ones(images.shape[:2], dtype=torch.bool, device=images.device)
        images_emb_mask = images_emb_mask.reshape(B, -1)
        chosen = images[images_emb_mask]  # (M, D)
        slots = int(images_seq_mask.sum())
        if chosen.shape[0] != slots:
            raise InputError(f"{slots} image slots in the token sequence but {chosen.shape[0]} image embeddings")
        return embeds.masked_scatter(images_seq_mask[..., None], chosen.to(embeds.dtype))

    def forward_understanding(self, input_ids, attention_mask=None, pixel_values=None, images_seq_mask=None,
                              images_emb_mask=None, **llm_kwargs):
        """Next-token logits for a (multimodal) sequence; extra kwargs go to the LLM (cache, ...)."""
        embeds = self.prepare_inputs_embeds(input_ids, pixel_values, images_seq_mask, images_emb_mask)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, **llm_kwargs)

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
    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        from .checkpoint import save_model

        save_model(self, path, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> "JanusFlowModel":
        """Load our layout or the official one (``config.json`` with ``language_config``)."""
        from .checkpoint import load_model

        return load_model(path, dtype=dtype, device=device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are far slower there), bf16 on CUDA."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
