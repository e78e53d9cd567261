"""Prompt rows as the LLM reads them: left padding, the unconditional rows of classifier-free
guidance (or a negative prompt's rows in their place), position ids that count from each row's BOS,
and the key mask of a generation sequence.

Batches are LEFT padded (pad id, attention mask 0), so every prompt ends in the last column, where
the sampler puts the time embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def make_uncond(
    tokens: torch.Tensor, attention_mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unconditional (CFG) rows for generation prompts; the sampler and the training prompt dropout both call this.

    Official convention (JanusFlow README loop): a prompt row has L ids, BOS first and the generation tag
    last; the sampler drops the tag's embedding and puts the time embedding at position L-1. The
    unconditional row keeps BOS, sets ids 1..L-1 to pad, and masks key positions 1..L-2:

        tokens          [BOS, t1, ..., t_{L-2}, GEN]  ->  [BOS, pad, ..., pad, pad]
        attention_mask  [1,   1,  ...,  1,      1  ]  ->  [1,   0,   ...,  0,   1 ]

    so the row sees only BOS, the time embedding (position L-1, mask 1) and the image tokens.

    Left-padded batches (rows of different lengths): the row's BOS is its first attended column b; columns
    before b stay as they are (pad, mask 0), b keeps BOS and mask 1, columns b+1..L-1 become pad, their mask
    is 0 except the last column (mask 1). Applying it twice gives the same rows.

    Position ids must count from the row's BOS, not from the mask's cumulative sum: the masked columns
    inside an unconditional row still occupy positions (the official rows use positions 0..S-1), see
    `position_ids_from_left_padding`.

    Args:
        tokens: (B, L) prompt ids, left padded, each row ending with the generation tag.
        attention_mask: (B, L) key mask, 1 = attend, 0 = left padding.
        pad_id: id written into the dropped positions.

    Returns:
        (uncond_tokens, uncond_mask), same shapes and dtypes as the inputs.
    """
    if tokens.ndim != 2 or tokens.shape != attention_mask.shape:
        raise ValueError(f"tokens and attention_mask must both be (B, L), got {tuple(tokens.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    length = tokens.shape[1]
    attended = attention_mask != 0
    if length == 0 or not bool(attended[:, -1].all()):
        raise ValueError("make_uncond expects left-padded rows: the last column must be attended in every row")
    bos_index = attended.to(torch.int64).argmax(dim=1)  # (B,) first attended column
    columns = torch.arange(length, device=tokens.device)[None, :]  # (1, L)
    after_bos = columns > bos_index[:, None]  # (B, L)
    uncond_tokens = tokens.masked_fill(after_bos, pad_id)
    uncond_mask = attention_mask.masked_fill(after_bos & (columns < length - 1), 0)
    return uncond_tokens, uncond_mask


def position_ids_from_left_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) position ids that count from each row's first attended column (its BOS): 0, 1, 2, ...

    Padding columns before BOS get 0 (they are masked). Zeros inside a row (unconditional rows from
    `make_uncond`) do not shift later positions, matching the official rows' positions 0..S-1.
    """
    attended = attention_mask != 0
    bos_index = attended.to(torch.int64).argmax(dim=1, keepdim=True)  # (B, 1)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :]
    return (columns - bos_index).clamp(min=0)


def generation_mask(prompt_mask: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
    """(R, L) prompt mask -> (R, L-1+1+N) key mask of the generation sequence [prompt[:-1], t_emb, N
    image tokens]: the prompt's mask without the generation tag's column, then 1 for the t slot (which
    takes the tag's place) and every image token."""
    R, L = prompt_mask.shape
    ones = torch.ones(R, 1 + num_image_tokens, dtype=prompt_mask.dtype, device=prompt_mask.device)
    return torch.cat([prompt_mask[:, : L - 1], ones], dim=1)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, mask), both (B, max length) int64, padding on the left."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.int64)
            mask[i, width - len(row):] = 1
    return ids, mask


def generation_rows(processor, texts: Sequence[str], negatives: Sequence[str] | None, guided: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, L) ids and mask of the sampler's rows: the B conditional rows of ``texts``, then (guided) B
    unconditional rows: ``make_uncond``'s (the release), or each row's negative prompt, whose rows then
    replace them ("" keeps ``make_uncond``'s row). All left padded together."""
    if not guided or negatives is None:
        batch = processor.build_generation_batch(list(texts), 1, guidance=guided)
        return batch.input_ids, batch.attention_mask
    pad = processor.pad_id
    cond = [processor.encode_generation_prompt(p) for p in texts]
    negative = [processor.encode_generation_prompt(n) if n.strip() else c for n, c in zip(negatives, cond)]
    ids, mask = left_pad(cond + negative, pad)  # (2B, L)
    B = len(cond)
    empty = torch.tensor([not n.strip() for n in negatives])
    uncond_ids, uncond_mask = make_uncond(ids[B:], mask[B:], pad)
    ids[B:][empty], mask[B:][empty] = uncond_ids[empty], uncond_mask[empty]
    return ids, mask
