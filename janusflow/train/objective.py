"""The JanusFlow objective: CE + RF + w * REPA (+ the optional contrastive term) of a micro-batch.

A micro-batch holds up to three parts (understanding rows, text rows, generation rows), in the
ratio of the stage's mix, each with its own forward pass:
  und:  ids with images -> LLM -> logits -> CE on answer tokens
  text: ids -> LLM -> logits -> CE on every token after BOS
  gen:  [prompt[:-1], t_emb, N latent tokens] -> LLM -> velocity -> RF; hidden states after block k
        -> REPA projector -> cosine with the understanding encoder's features of the clean image;
        rows with a negative caption run again with it on the same x_t -> the contrastive term
or, packed (``data.packing``), one pass over rows holding segments of every task
(:mod:`.packed_forward`): the same sums. The losses are defined in :mod:`.losses`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..flow import TIME_SCALE, interpolate
from ..modeling import JanusFlowModel
from ..processor import position_ids_from_left_padding
from ..prompt_rows import generation_mask
from .collate import JanusFlowBatch
from .config import LossConfig
from .losses import RepaProjector, flow_errors, negative_prompt_sum, next_token_ce_sum, repa_sum, weighted_sum
from .packed_forward import packed_sums, packed_terms
from .trainer import share


class JanusFlowObjective(nn.Module):
    """forward(batch, totals) -> (CE + RF + w * REPA, logs), each term a share of its global mean."""

    def __init__(self, model: JanusFlowModel, losses: LossConfig):
        super().__init__()
        self.model = model
        self.losses = losses
        cfg = model.config
        self.repa_head = None
        if losses.repa_weight > 0:
            if losses.repa_layer > cfg.language.num_hidden_layers:
                raise ConfigError(f"losses.repa_layer is {losses.repa_layer} but the LLM has "
                                  f"{cfg.language.num_hidden_layers} blocks")
            if cfg.und_vision.grid != cfg.gen_vision.latent_grid:
                raise ConfigError(
                    f"REPA needs the same token grid on both sides: the understanding encoder makes a "
                    f"{cfg.und_vision.grid}x{cfg.und_vision.grid} grid (image_size {cfg.und_vision.image_size} / "
                    f"patch {cfg.und_vision.patch_size}), the generation encoder a {cfg.gen_vision.latent_grid}x"
                    f"{cfg.gen_vision.latent_grid} grid (latent {cfg.gen_vision.latent_size} / stride "
                    f"{cfg.gen_vision.stride}); change one, or set losses.repa_weight=0")
            self.repa_head = RepaProjector(cfg.hidden_size, losses.repa_hidden or cfg.hidden_size, cfg.und_vision.width)

    def forward(self, batch: JanusFlowBatch, totals: dict[str, float]):
        model, zero = self.model, self.model.boi_embedding.new_zeros(())
        ce_und = ce_text = rf = repa = neg = zero
        neg_logs: dict[str, torch.Tensor] = {}
        if batch.und is not None:
            b = batch.und
            logits = model.forward_understanding(b.input_ids, b.attention_mask, b.pixel_values, b.images_seq_mask,
                                                 b.images_emb_mask).logits
            ce_und = next_token_ce_sum(logits, b.labels)
        if batch.text is not None:
            b = batch.text
            ce_text = next_token_ce_sum(model.forward_understanding(b.input_ids, b.attention_mask).logits, b.labels)
        if batch.gen is not None:
            rf, repa, neg, neg_logs = self._flow_terms(batch.gen)
        if batch.packed is not None:
            terms = packed_terms(model, batch.packed, self.repa_head, self.losses.repa_layer)
            ce_und, ce_text, rf, repa = packed_sums(terms, batch.packed.weight)
        ce = share(ce_und + ce_text, totals, "ce_tokens")
        rf_mean, repa_mean = share(rf, totals, "gen_samples"), share(repa, totals, "gen_samples")
        neg_mean = share(neg, totals, "neg_samples")
        loss = ce + rf_mean + self.losses.repa_weight * repa_mean + self.losses.negative_weight * neg_mean
        logs: dict[str, float] = {}  # keys chosen from the global totals: the same on every process
        if totals.get("ce_tokens", 0) > 0:
            logs["ce"] = float(ce.detach())
        for key, value, count in (("ce_und", ce_und, "ce_und_tokens"), ("ce_text", ce_text, "ce_text_tokens")):
            if totals.get(count, 0) > 0:
                logs[key] = float(share(value.detach(), totals, count))
        if totals.get("gen_samples", 0) > 0:
            logs["rf"] = float(rf_mean.detach())
            if self.repa_head is not None:
                logs["repa"] = float(repa_mean.detach())
        if self.uses_negatives and totals.get("neg_samples", 0) > 0:
            logs["neg"] = float(neg_mean.detach())
            # how often the true caption explains the image better than its negative (t < t_max rows)
            logs["neg_win"] = float(share(neg_logs.get("wins", zero), totals, "neg_samples"))
        return loss, logs

    @property
    def uses_negatives(self) -> bool:
        return self.losses.negative_weight > 0

    def _flow_terms(self, g):
        model = self.model
        x1 = g.latents
        N = model.config.gen_vision.grid_for(x1.shape[-1]) ** 2
        prefix = model.embed_prompt(g.input_ids)  # (B, L-1, D)
        mask = generation_mask(g.attention_mask, N)  # (B, L-1+1+N), the t slot attends
        x_t = interpolate(g.x0, x1, g.t)
        out = model.forward_generation(prefix, x_t, g.t * TIME_SCALE, attention_mask=mask,
                                       position_ids=position_ids_from_left_padding(mask),
                                       output_hidden_states=self.repa_head is not None)
        errors = flow_errors(out.velocity, g.x0, x1)  # (B,)
        rf = weighted_sum(errors, g.weight)
        neg, neg_logs = self._negative_term(g, x_t, errors, N)
        if self.repa_head is None:
            return rf, rf.new_zeros(()), neg, neg_logs
        projected = self.repa_head(out.hidden_states[self.losses.repa_layer][:, -N:])  # (B, N, W)
        if g.und_features is not None:
            target = g.und_features
        else:
            with torch.no_grad():  # no gradient into the understanding encoder
                target = model.und_encoder(g.und_pixels.to(projected.dtype))  # (B, N, W)
        return rf, repa_sum(projected, target, g.weight), neg, neg_logs

    def _negative_term(self, g, x_t: torch.Tensor, errors: torch.Tensor, N: int):
        """The contrastive term's sum over the rows it uses (:func:`negative_rows`), and its wins; the
        negative captions of the other rows are not run."""
        zero = errors.new_zeros(())
        if not self.uses_negatives or g.neg_rows is None:
            return zero, {}
        used = negative_rows(g, self.losses.negative_max_t)
        if not bool(used.any()):
            return zero, {}
        rows, ids, prompt_mask = g.neg_rows[used], g.neg_ids[used], g.neg_mask[used]
        mask = generation_mask(prompt_mask, N)
        out = self.model.forward_generation(self.model.embed_prompt(ids), x_t[rows], g.t[rows] * TIME_SCALE,
                                            attention_mask=mask, position_ids=position_ids_from_left_padding(mask))
        error_negative = flow_errors(out.velocity, g.x0[rows], g.latents[rows])  # (K,)
        weight = None if g.weight is None else g.weight[rows]
        neg = negative_prompt_sum(errors[rows], error_negative, self.losses.negative_margin, weight)
        wins = (errors[rows] < error_negative).float().sum().detach()
        return neg, {"wins": wins}


def negative_rows(g, max_t: float) -> torch.Tensor:
    """(K,) bool over ``g.neg_rows``: the rows the contrastive term uses (t < max_t, not a placeholder)."""
    used = g.t[g.neg_rows] < max_t
    return used if g.weight is None else used & (g.weight[g.neg_rows] > 0)
