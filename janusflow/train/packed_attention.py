"""Document masks for packed rows, through the transformers LLM.

A packed row's tokens attend causally within their own segment and never across (``document``
holds each token's segment number):

    allowed[q, k] = document[q] == document[k]  and  k <= q

Two ways to apply it, both through the LLM's own forward (transformers returns a 4D mask or a
``BlockMask`` it is given unchanged):
* ``sdpa`` (the reference, any device): a dense (R, 1, T, T) boolean mask for torch's
  ``scaled_dot_product_attention`` (an additive float mask when the LLM runs ``eager``);
* ``flex``: a FlexAttention ``BlockMask`` (``create_block_mask``), whose kernel skips the blocks
  between segments (most of a row of short segments). The LLM's attention is switched, with
  transformers' ``AttentionInterface``, to :func:`flex_or_sdpa`: FlexAttention for a ``BlockMask``,
  transformers' SDPA for anything else (so every unpacked call behaves exactly as before).
  Compiled on CUDA; on the CPU (torch 2.13) FlexAttention runs unfused and forward only.
"""

from __future__ import annotations

import functools

import torch

FLEX = "janusflow_flex"  # the attention implementation name registered with transformers


def resolve_attention(choice: str, device: torch.device, head_dim: int) -> str:
    """``data.attention`` -> "sdpa" or "flex" ("auto": flex on CUDA when torch has it and the heads are
    of 16 or more, the least its compiled kernel takes; else sdpa)."""
    if choice not in ("auto", "sdpa", "flex"):
        raise ValueError(f"data.attention must be auto, sdpa or flex, got {choice!r}")
    usable = flex_available() and (device.type != "cuda" or head_dim >= 16)
    if choice == "auto":
        return "flex" if device.type == "cuda" and usable else "sdpa"
    if choice == "flex" and not usable:
        raise ValueError("data.attention=flex needs torch.nn.attention.flex_attention (torch >= 2.5) and, on "
                         f"CUDA, attention heads of 16 or more (the LLM's are {head_dim})")
    return choice


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def dense_document_mask(document: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(R, T) segment numbers -> (R, 1, T, T) boolean mask, True = attend; with ``dtype`` the additive
    form (0 where attended, the dtype's minimum elsewhere) that eager attention adds to its scores."""
    T = document.shape[1]
    causal = torch.ones((T, T), dtype=torch.bool, device=document.device).tril()
    allowed = (document[:, :, None] == document[:, None, :]) & causal  # (R, T, T)
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=document.device).masked_fill(~allowed,
                                                                                     torch.finfo(dtype).min)


def block_document_mask(document: torch.Tensor):
    """(R, T) segment numbers -> a FlexAttention ``BlockMask`` of the same rule."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_segment_causal(b, h, q, k):
        return (document[b, q] == document[b, k]) & (k <= q)

    R, T = document.shape
    return create_block_mask(same_segment_causal, R, None, T, T, device=document.device)


def document_mask(document: torch.Tensor, language_model, dtype: torch.dtype):
    """The mask for the LLM's attention implementation: a BlockMask (flex), a boolean mask (sdpa) or
    an additive one (eager)."""
    implementation = language_model.config._attn_implementation
    if implementation == FLEX:
        return block_document_mask(document)
    if implementation == "sdpa":
        return dense_document_mask(document)
    if implementation == "eager":
        return dense_document_mask(document, dtype)
    raise ValueError(f"packed rows need sdpa, eager or flex attention; the LLM uses {implementation!r}")


def use_flex_attention(language_model) -> None:
    """Switch a transformers LLM to :func:`flex_or_sdpa` (registered once under :data:`FLEX`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FLEX, flex_or_sdpa)
    AttentionMaskInterface.register(FLEX, sdpa_mask)  # 2D masks become SDPA's boolean masks, as before
    language_model.set_attn_implementation(FLEX)


def flex_or_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """FlexAttention for a ``BlockMask``, transformers' SDPA for anything else. q: (B, H, T, d),
    k and v: (B, H_kv, T, d); returns (B, T, H, d) as transformers' attention functions do."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError("packed FlexAttention has no attention dropout; set the LLM's attention_dropout to 0")
    out = _flex_kernel(query.device.type)(query, key, value, block_mask=attention_mask, scale=scaling,
                                          enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=None)
def _flex_kernel(device_type: str):
    """Compiled FlexAttention on CUDA (the fused block-sparse kernel); unfused elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention
