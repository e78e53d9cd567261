"""JanusFlow as a :class:`~janusflow.train.trainer.TrainTask`: the model, its three losses, its data.

A micro-batch holds up to three parts (understanding rows, text rows, generation rows), in the
ratio of the stage's mix; each part runs its own forward pass:
  und:  ids with images -> LLM -> logits -> CE on answer tokens
  text: ids -> LLM -> logits -> CE on every token after BOS
  gen:  [prompt[:-1], t_emb, N latent tokens] -> LLM -> velocity -> RF; hidden states after block k
        -> REPA projector -> cosine with the understanding encoder's features of the clean image;
        rows with a negative caption run again with it on the same x_t -> the contrastive term
The losses are defined in :mod:`.losses`; the batch layout in :mod:`.collate`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import JanusFlowConfig
from ..errors import ConfigError, InputError
from ..flow import TIME_SCALE, interpolate
from ..modeling import JanusFlowModel
from ..processor import JanusFlowProcessor, position_ids_from_left_padding
from ..prompt_rows import generation_mask
from . import lora as lora_utils
from .collate import (IGNORE, CollateConfig, GenItem, JanusFlowBatch, ce_batch, encode_conversation, encode_text,
                      gen_batch, to_model_inputs, und_batch)
from .config import LossConfig, TrainConfig
from .losses import RepaProjector, flow_errors, negative_prompt_sum, next_token_ce_sum, repa_sum, weighted_sum
from ..tokenizer_build import IMAGE_TOKEN
from .samples import TASKS, CaptionSample, ConversationSample, TextSample
from .mixture import MixSchedule
from .sources import Epochs, open_source
from .trainer import Shard, share


# In the release's weights but never used by JanusFlow (it reads SigLIP's tokens, not the pooled vector)
UNUSED = ("und_encoder.siglip.head.",)


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


def build_model(config: TrainConfig) -> tuple[JanusFlowModel, JanusFlowProcessor]:
    """The model to train (a folder, or fresh from a preset / config.json) and its processor."""
    src = config.model
    dtype = getattr(torch, src.dtype)
    if src.path is not None:
        model = JanusFlowModel.from_pretrained(src.path, dtype=dtype)
    else:
        mcfg = JanusFlowConfig.load(src.config) if src.config else JanusFlowConfig.from_name(src.preset)
        torch.manual_seed(config.seed)
        model = JanusFlowModel(mcfg).to(dtype)
    tokenizer_dir = src.tokenizer or src.path
    if tokenizer_dir is None:
        raise ConfigError("model.tokenizer: a tokenizer folder is needed for a model built from a preset")
    mcfg = model.config
    processor = JanusFlowProcessor.from_pretrained(
        tokenizer_dir, image_size=mcfg.und_vision.image_size, num_image_tokens=mcfg.num_und_image_tokens,
        num_gen_image_tokens=mcfg.num_image_tokens, max_length=mcfg.language.max_position_embeddings)
    if len(processor.tokenizer) > mcfg.language.vocab_size:
        raise ConfigError(f"the tokenizer has {len(processor.tokenizer)} tokens, more than the model's "
                          f"vocab_size {mcfg.language.vocab_size}")
    return model, processor


def build_latent_encoder(config: TrainConfig, model: JanusFlowModel):
    from .latents import VAELatentEncoder, tiny_vae

    gen = model.config.gen_vision
    if config.vae.path is not None:
        encoder = VAELatentEncoder.from_folder(config.vae.path, gen.latent_size)
    elif config.vae.tiny_random:
        encoder = VAELatentEncoder(tiny_vae(gen.latent_channels, config.seed), gen.latent_size)
    else:
        return None
    if encoder.latent_channels != gen.latent_channels:
        raise ConfigError(f"the VAE makes {encoder.latent_channels}-channel latents, the model takes "
                          f"{gen.latent_channels}")
    return encoder


def placeholder_sample(task: str):
    """A row that runs the forward pass and adds nothing (its labels are ignored, its weight is 0)."""
    from PIL import Image

    image = Image.new("RGB", (8, 8), (127, 127, 127))
    if task == "und":
        return ConversationSample([{"role": "User", "content": IMAGE_TOKEN}, {"role": "Assistant", "content": "x"}],
                                  [image])
    return TextSample("x") if task == "text" else CaptionSample("x", image)


class JanusFlowTask:
    """The JanusFlow recipe on the generic trainer. ``sources`` (task -> Source, list, function or
    iterable) override ``config.data`` for in-memory data such as the shapes world."""

    def __init__(self, config: TrainConfig, model: JanusFlowModel | None = None,
                 processor: JanusFlowProcessor | None = None, latent_encoder=None,
                 sources: dict[str, Any] | None = None, use_cache: bool = True):
        config.validate()
        self.config = config
        if model is None or processor is None:
            model, processor = build_model(config)
        self.processor = processor
        if config.lora.enabled:
            lora_utils.apply_lora(model, config.lora.r, config.lora.alpha, config.lora.dropout,
                                  config.lora.target_modules)
        if config.trainer.gradient_checkpointing:  # recompute each block's activations in backward
            for part in (model.language_model, model.und_encoder.siglip):
                if hasattr(part, "activation_checkpointing_enable"):  # transformers >= 5.x
                    part.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.module = JanusFlowObjective(model, config.losses)
        self.model = model
        self.latent_encoder = latent_encoder if latent_encoder is not None else build_latent_encoder(config, model)

        stage = config.stage
        self.schedule = MixSchedule(stage.ratio, stage.batch_size, [(p.until_step, p.ratio) for p in stage.phases])
        self.mixture = self.schedule.final  # the stage's own mix (after its phases)
        specs = {task: getattr(config.data, task) for task in TASKS}
        specs.update(sources or {})
        self.sources = {}
        for task in TASKS:
            if not self.schedule.uses(task):
                continue
            if not specs.get(task):
                raise ConfigError(f"the stage's ratio asks for {task} data but data.{task} is empty")
            source = open_source(task, specs[task])
            if task == "gen" and config.data.cache and use_cache:
                from .cache import CachedSource, fingerprint

                names = [n for n, _ in model.und_encoder.named_parameters(prefix="und_encoder")]
                frozen_encoder = not any(stage.trains(n) for n in names)
                source = CachedSource(source, config.data.cache, frozen_encoder, fingerprint(config))
            self.sources[task] = Epochs(source, config.seed, config.data.shuffle)
        if self.schedule.uses("gen") and self.latent_encoder is None:
            raise ConfigError("generation data needs a VAE: set vae.path (a diffusers AutoencoderKL folder)")
        gen = model.config.gen_vision
        gen_size = self.latent_encoder.image_size if self.latent_encoder is not None else 0
        self.collate = CollateConfig(
            latent_shape=(gen.latent_channels, gen.latent_size, gen.latent_size), gen_image_size=gen_size,
            prompt_dropout=config.losses.prompt_dropout, time_distribution=config.losses.time_distribution,
            time_mean=config.losses.time_mean, time_std=config.losses.time_std,
            repa=self.module.repa_head is not None, max_text_tokens=config.data.max_text_tokens, seed=config.seed,
            prompt_format=stage.prompt_format)
        self.device = torch.device("cpu")
        self.base = {"step": 0, "positions": {k: 0 for k in TASKS}}
        self.next_step = 0
        self.read_count = self.skip_count = 0
        self.pad_parts = False

    # -- TrainTask --------------------------------------------------------------------------------
    def setup(self, ctx) -> None:
        self.device = ctx.device
        self.pad_parts = ctx.active and self.config.trainer.distributed == "fsdp"
        if self.latent_encoder is not None:
            self.latent_encoder.to(ctx.device)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        stage, use_lora = self.config.stage, lora_utils.has_lora(self.model)
        chosen = {}
        for name, p in self.module.named_parameters():
            if name.startswith("repa_head."):
                chosen[name] = p
                continue
            inner = name.removeprefix("model.")
            if inner.startswith(UNUSED):
                continue
            if use_lora and inner.startswith("language_model."):
                if lora_utils.is_lora_parameter(inner):
                    chosen[name] = p
            elif stage.trains(inner) and not lora_utils.is_lora_parameter(inner):
                chosen[name] = p
        return chosen

    def micro_batches(self, step: int, shard: Shard) -> list[JanusFlowBatch]:
        return [self.on_device(batch) for batch in self.cpu_micro_batches(step, shard)]

    def cpu_micro_batches(self, step: int, shard: Shard) -> list[JanusFlowBatch]:
        """The micro-batches before any device work (generation images not yet encoded by the VAE):
        what data workers build (:mod:`.prefetch`)."""
        slots = self._slots(step)
        self.advance(step)
        # FSDP: every process must run the same forward passes, so a part present anywhere in the
        # step is run everywhere (with a placeholder row that adds nothing where it has no sample)
        needed = {task for task, _, _ in slots} if self.pad_parts else set()
        return [self._collate(part, needed) for part in shard.split(slots)]

    def advance(self, step: int) -> None:
        self.next_step = step + 1

    def on_device(self, batch: JanusFlowBatch) -> JanusFlowBatch:
        """On the device, once: the 8-bit images to float inputs, and the generation images encoded
        into latents by the VAE."""
        batch = to_model_inputs(batch)
        if batch.gen is not None and batch.gen.latents is None:
            with torch.no_grad():
                batch.gen.latents = self.latent_encoder.encode(batch.gen.gen_pixels.to(self.device))
            batch.gen.gen_pixels = None
        return batch

    def counts(self, batch: JanusFlowBatch) -> dict[str, float]:
        counts = {"samples": 0.0, "tokens": 0.0, "ce_tokens": 0.0, "ce_und_tokens": 0.0, "ce_text_tokens": 0.0,
                  "gen_samples": 0.0, "neg_samples": 0.0, "skipped": float(batch.skipped)}
        for key, part in (("und", batch.und), ("text", batch.text)):
            if part is not None and key not in batch.placeholders:
                counts["samples"] += part.input_ids.shape[0]
                counts["tokens"] += float(part.attention_mask.sum())
                counts[f"ce_{key}_tokens"] = float(part.num_targets)
        counts["ce_tokens"] = counts["ce_und_tokens"] + counts["ce_text_tokens"]
        if batch.gen is not None and "gen" not in batch.placeholders:
            g = batch.gen
            rows = g.input_ids.shape[0]
            counts["samples"] += rows
            counts["gen_samples"] = float(rows)
            counts["tokens"] += float(g.attention_mask.sum()) + rows * self.model.config.num_image_tokens
            if self.module.uses_negatives and g.neg_rows is not None:  # the contrastive term's rows
                counts["neg_samples"] = float(negative_rows(g, self.config.losses.negative_max_t).sum())
        return counts

    def state_dict(self) -> dict[str, Any]:
        """The data position: samples of each task read before ``next_step``, and how to continue."""
        return {"base": self.base, "ratio": self.mixture.weights, "phases": self.schedule.phases(),
                "batch_size": self.schedule.batch_size, "next_step": self.next_step,
                "positions": self._positions(self.next_step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base, self.next_step = state["base"], state["next_step"]
        if (state["ratio"] != self.mixture.weights or state.get("phases", []) != self.schedule.phases()
                or state["batch_size"] != self.schedule.batch_size):
            # the mix changed on resume: continue every stream where the checkpoint left it
            self.base = {"step": self.next_step, "positions": state["positions"]}

    def export(self, directory: Path, model: JanusFlowModel | None = None) -> None:
        """``save_pretrained`` of the model (LoRA merged), its processor and its VAE (``vae/``)."""
        model = self.model if model is None else model
        model = lora_utils.merged_copy(model) if lora_utils.has_lora(model) else model
        model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        if self.latent_encoder is not None and hasattr(self.latent_encoder, "save_pretrained"):
            self.latent_encoder.save_pretrained(Path(directory) / "vae")

    def export_state(self, directory: Path, state: dict[str, torch.Tensor]) -> None:
        """Export from a full state dict of :attr:`module` (FSDP runs, where the module is sharded)."""
        from ..checkpoint import build_meta

        model = build_meta(self.model.config).to_empty(device="cpu")
        if lora_utils.has_lora(self.model):
            lora = self.config.lora
            lora_utils.apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        from ..checkpoint import _materialize_buffers

        _materialize_buffers(model, torch.device("cpu"))
        self.export(directory, model)

    # -- data -------------------------------------------------------------------------------------
    def _positions(self, step: int) -> dict[str, int]:
        rel = self.schedule.positions(step, self.base["step"])
        return {k: self.base["positions"][k] + rel[k] for k in TASKS}

    def _slots(self, step: int) -> list[tuple[str, int, tuple[int, int]]]:
        """(task, position in its stream, random key) of each slot of the global batch of ``step``."""
        base_pos, base_step = self.base["positions"], self.base["step"]
        return [(task, base_pos[task] + position, (base_step, slot))  # key: unique even after a rebase
                for task, position, slot in self.schedule.step_slots(step, base_step)]

    def _collate(self, part: list[tuple[str, int, tuple[int, int]]], needed: set[str] = frozenset()) -> JanusFlowBatch:
        rows: dict[str, list] = {task: [] for task in TASKS}
        skipped = 0
        for task, position, slot in part:
            self.read_count += 1
            try:
                rows[task].append(self._encode(task, self.sources[task].read(position), slot))
            except Exception as e:  # noqa: BLE001 - one bad sample must not end the run; it is counted
                skipped += 1
                self._report_skip(task, position, e)
        placeholders = tuple(task for task in TASKS if task in needed and not rows[task])
        for task in placeholders:
            rows[task].append(self._encode(task, placeholder_sample(task), -1, placeholder=True))
        batch = JanusFlowBatch(skipped=skipped, placeholders=placeholders)
        if rows["und"]:
            batch.und = und_batch(self.processor, rows["und"])
        if rows["text"]:
            batch.text = ce_batch(rows["text"], self.processor.pad_id)
        if rows["gen"]:
            batch.gen = gen_batch(self.processor, rows["gen"])
        return batch

    def _encode(self, task: str, sample, slot, placeholder: bool = False):
        """One sample -> its row; a placeholder row's labels are all ignored and its weight is 0."""
        if task == "und":
            ids, labels, pixels = encode_conversation(self.processor, sample)
            return ids, [IGNORE] * len(ids) if placeholder else labels, pixels
        if task == "text":
            ids, labels = encode_text(self.processor, sample, self.collate.max_text_tokens)
            return ids, [IGNORE] * len(ids) if placeholder else labels
        item = GenItem(self.processor, sample, self.collate, slot)
        item.weight = 0.0 if placeholder else 1.0
        return item

    def _report_skip(self, task: str, position: int, error: Exception) -> None:
        self.skip_count += 1
        if self.skip_count <= 10 or self.skip_count % 100 == 0:
            print(f"skipped {task} sample at position {position} ({type(error).__name__}: {error}); "
                  f"{self.skip_count} skipped so far", file=sys.stderr, flush=True)
        limit = self.config.data.max_skip_fraction
        if self.read_count >= 50 and self.skip_count > limit * self.read_count:
            raise InputError(f"{self.skip_count} of {self.read_count} samples were unreadable (over "
                             f"data.max_skip_fraction = {limit}); check the data paths and formats")
