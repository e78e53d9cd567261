"""The batches the processor builds: understanding conversations and text-to-image prompt rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class UnderstandingSample:
    """One conversation, tokenized with its images expanded to boi, N x image, eoi."""

    sft_format: str
    input_ids: torch.Tensor  # (T,) int64
    pixel_values: torch.Tensor  # (num_images, 3, S, S) float32


@dataclass
class UnderstandingBatch:
    """Left-padded understanding batch in the official layout (B rows, T columns, up to M images a row)."""

    sft_format: list[str]
    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64, 1 = attend, 0 = left padding
    pixel_values: torch.Tensor  # (B, M, 3, S, S), zeros where a row has fewer images
    images_seq_mask: torch.Tensor  # (B, T) bool, True at boi and image ids
    images_emb_mask: torch.Tensor  # (B, M, N + 1) bool, True for each real image (beg_of_und_embed + N tokens)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "UnderstandingBatch":
        """Move every tensor to `device`; `dtype` applies to `pixel_values` only."""
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.images_seq_mask = self.images_seq_mask.to(device)
        self.images_emb_mask = self.images_emb_mask.to(device)
        self.pixel_values = self.pixel_values.to(device=device, dtype=dtype)
        return self


@dataclass
class GenerationBatch:
    """Prompt rows for text-to-image sampling: conditional rows first, then their unconditional rows.

    With P prompts and K images per prompt the conditional rows are p0 x K, p1 x K, ... (R_c = P*K rows);
    with guidance the next R_c rows are `make_uncond` of those, in the same order.
    """

    input_ids: torch.Tensor  # (R, L) int64, left padded with pad_id, every row ends with the generation tag
    attention_mask: torch.Tensor  # (R, L) int64
    prompt_lengths: torch.Tensor  # (R,) int64, unpadded length of each row
    num_cond_rows: int
    sft_format: list[str]  # the text of each conditional row

    @property
    def guidance(self) -> bool:
        return self.input_ids.shape[0] > self.num_cond_rows

    def to(self, device: torch.device | str) -> "GenerationBatch":
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.prompt_lengths = self.prompt_lengths.to(device)
        return self
