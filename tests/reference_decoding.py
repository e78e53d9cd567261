"""The hand-written decoding loop that ``janusflow.understanding`` used before it decoded through
``model.generate``, kept as the reference the new path is tested against (same greedy ids)."""

from __future__ import annotations

import time

import torch

from janusflow.errors import InputError
from janusflow.modeling import cache_kwargs
from janusflow.processor import UnderstandingBatch, position_ids_from_left_padding
from janusflow.understanding import DecodeResult, DecodingConfig


def select_next(logits: torch.Tensor, cfg: DecodingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids: argmax, or a top-p sample at the given temperature."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    if cfg.top_p < 1:
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= cfg.top_p  # mass before a token already >= p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)  # the most likely token always stays
    choice = torch.multinomial(sorted_probs, 1, generator=generator)  # (B, 1); multinomial renormalises
    return order.gather(-1, choice).squeeze(-1)


@torch.inference_mode()
def reference_decode(model, batch: UnderstandingBatch, cfg: DecodingConfig, eos_token_id: int | None,
                     pad_token_id: int, generator: torch.Generator | None = None, streamer=None,
                     record_logits: bool = False) -> DecodeResult:
    """The decoding loop that ``generate()`` replaced: prefill, then one token a step against the cache."""
    cfg.validate()
    B, T = batch.input_ids.shape
    if streamer is not None and B != 1:
        raise InputError(f"streaming needs a batch of one conversation, got {B}")
    context = model.config.language.max_position_embeddings
    if T >= context:
        raise InputError(f"the prompt is {T} tokens, leaving no room in the model's context of {context}")
    max_new = min(cfg.max_new_tokens, context - T)
    start = time.perf_counter()
    batch = batch.to(model.device, dtype=model.dtype)
    prompt = model.prepare_inputs_embeds(batch.input_ids, batch.pixel_values, batch.images_seq_mask,
                                         batch.images_emb_mask)  # (B, T, D)
    mask = batch.attention_mask  # (B, T) grows by one column a step
    positions = position_ids_from_left_padding(mask)  # (B, T)
    lm = model.language_model
    if streamer is not None:
        streamer.put(batch.input_ids.cpu())
    cached: dict = {}
    if cfg.use_cache:
        from transformers import DynamicCache

        cached = cache_kwargs(lm, DynamicCache(config=lm.config))  # {keyword: cache}, one for the whole answer
        logits = lm(inputs_embeds=prompt, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **cached).logits[:, -1]  # (B, V)
    else:
        logits = lm(inputs_embeds=prompt, attention_mask=mask, position_ids=positions).logits[:, -1]

    generated = torch.empty(B, 0, dtype=torch.long, device=model.device)  # (B, k)
    finished = torch.zeros(B, dtype=torch.bool, device=model.device)
    first_token_time, history = 0.0, []
    for k in range(max_new):
        if record_logits:
            history.append(logits.float().cpu())
        token = select_next(logits, cfg, generator)
        if eos_token_id is not None:
            token = token.masked_fill(finished, pad_token_id)  # finished rows only pad
            finished = finished | (token == eos_token_id)
        generated = torch.cat([generated, token[:, None]], dim=1)
        if k == 0:
            first_token_time = time.perf_counter() - start
        if streamer is not None and not bool(finished[0]):
            streamer.put(token.cpu())
        if bool(finished.all()) or k == max_new - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if cfg.use_cache:  # one new token against the cached keys/values
            logits = lm(input_ids=token[:, None], attention_mask=mask, position_ids=positions[:, -1:],
                        use_cache=True, **cached).logits[:, -1]
        else:  # reference: the prompt and every answer token, from scratch
            embeds = torch.cat([prompt, model.embed_tokens(generated)], dim=1)
            logits = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]

    tokens, stopped = [], []
    for row in generated.tolist():
        stop = eos_token_id in row if eos_token_id is not None else False
        tokens.append(row[: row.index(eos_token_id)] if stop else row)
        stopped.append(stop)
    return DecodeResult(tokens, stopped, T, first_token_time, time.perf_counter() - start,
                        torch.stack(history, dim=1) if record_logits else None)
