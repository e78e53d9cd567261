"""The three objectives on packed rows: one LLM pass over every segment of a micro-batch.

    embeds  = token embeddings, each understanding image's [boi, P tokens] in its slots
              (``prepare_inputs_embeds``), each generation segment's t_emb and N latent tokens
              (``encode_latent`` of x_t = t x1 + (1 - t) x0) written into its slots
    hidden  = LLM(embeds, document mask, position ids restarting per segment)
    CE      = -log p(label[i+1] | hidden[i]) summed over the targets, und and text apart
    RF      = per-segment MSE of decode_latent(hidden at its N tokens, skip, t_emb) to x1 - x0
    REPA    = per-segment token-mean 1 - cos(h_phi(H_k at its N tokens), f_enc(image))
The same sums the unpacked path (:mod:`.task`) computes row by row; tests/test_packing.py checks
that they agree to rounding, per sample and in their gradients. Logits are computed only where a
label follows: the LM head over a whole 4,096-token row would be the largest tensor of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..flow import TIME_SCALE, interpolate
from .collate import IGNORE
from .losses import flow_errors, repa_errors, weighted_sum
from .packed_attention import document_mask
from .packing import TASK_CODE, PackedBatch


@dataclass
class PackedTerms:
    token_ce: torch.Tensor  # (K,) -log p of each target, in row-major order of the targets
    target_task: torch.Tensor  # (K,) TASK_CODE of each target's segment
    target_document: torch.Tensor  # (K, 2) (row, segment number) of each target
    flow_errors: torch.Tensor | None = None  # (G,) per generation segment
    repa: torch.Tensor | None = None  # (G,) per generation segment, 1 - cos token mean

    def ce_sum(self, task: str) -> torch.Tensor:
        return self.token_ce[self.target_task == TASK_CODE[task]].sum()


def packed_terms(model, batch: PackedBatch, repa_head=None, repa_layer: int = 0) -> PackedTerms:
    """Per-target CE and per-segment flow and REPA errors of a packed micro-batch (on its device)."""
    embeds = model.prepare_inputs_embeds(batch.input_ids, batch.pixel_values, batch.images_seq_mask,
                                         batch.images_emb_mask)  # (R, T, D)
    R, T, D = embeds.shape
    G = batch.num_gen
    if G:
        x_t = interpolate(batch.x0, batch.latents, batch.t)
        tokens, t_emb, skip = model.encode_latent(x_t, batch.t * TIME_SCALE)  # (G, N, D), (G, D), skip
        N = tokens.shape[1]
        flat = embeds.reshape(R * T, D)
        flat = flat.index_copy(0, batch.time_index, t_emb.to(flat.dtype))
        flat = flat.index_copy(0, batch.token_index.reshape(-1), tokens.reshape(G * N, D).to(flat.dtype))
        embeds = flat.reshape(R, T, D)
    mask = document_mask(batch.document, model.language_model, embeds.dtype)
    out = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=batch.position_ids, use_cache=False,
                    output_hidden_states=G > 0 and repa_head is not None)
    hidden = out.last_hidden_state  # (R, T, D)

    targets = batch.labels[:, 1:] != IGNORE  # (R, T-1): position i predicts label[i + 1]
    head = model.language_model.get_output_embeddings()
    logits = head(hidden[:, :-1][targets])  # (K, V)
    token_ce = F.cross_entropy(logits.float(), batch.labels[:, 1:][targets], reduction="none")
    rows = torch.arange(R, device=targets.device)[:, None].expand(R, T - 1)[targets]
    terms = PackedTerms(token_ce, batch.segment_task[:, 1:][targets],
                        torch.stack([rows, batch.document[:, 1:][targets]], dim=1))
    if not G:
        return terms
    latent_hidden = hidden.reshape(R * T, D)[batch.token_index]  # (G, N, D)
    velocity = model.decode_latent(latent_hidden, skip, t_emb)
    terms.flow_errors = flow_errors(velocity, batch.x0, batch.latents)
    if repa_head is not None:
        projected = repa_head(out.hidden_states[repa_layer].reshape(R * T, D)[batch.token_index])  # (G, N, W)
        if batch.und_features is not None:
            target = batch.und_features
        else:
            with torch.no_grad():  # no gradient into the understanding encoder
                target = model.und_encoder(batch.und_pixels.to(projected.dtype))
        terms.repa = repa_errors(projected, target)
    return terms


def packed_sums(terms: PackedTerms, weight: torch.Tensor | None):
    """(CE und, CE text, RF, REPA) sums of a packed micro-batch, as the unpacked path returns them."""
    zero = terms.token_ce.new_zeros(())
    rf = weighted_sum(terms.flow_errors, weight) if terms.flow_errors is not None else zero
    repa = weighted_sum(terms.repa, weight) if terms.repa is not None else zero
    return terms.ce_sum("und"), terms.ce_sum("text"), rf, repa
