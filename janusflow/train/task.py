"""JanusFlow as a :class:`~janusflow.train.trainer.TrainTask`: the model, its objective, its data.

Each step's slots come from the stage's task mix (:mod:`.mixture`, phases included); each sample is
encoded by :mod:`.collate` and batched per task (unpacked: ``stage.batch_size`` samples a step), or
packed into ``stage.batch_size`` rows of ``data.seq_len`` tokens (:mod:`.packing`, ``data.packing``).
The objective and its forward passes are in :mod:`.objective`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import image_generation_config
from ..config import JanusFlowConfig
from ..errors import ConfigError, InputError
from ..modeling import JanusFlowModel
from ..processor import JanusFlowProcessor
from . import lora as lora_utils
from .collate import (IGNORE, CollateConfig, GenItem, JanusFlowBatch, ce_batch, conversation_ids, encode_conversation,
                      encode_text, gen_batch, generation_prompt_ids, prompt_dropped, to_model_inputs, und_batch)
from .config import TrainConfig
from .mixture import MixSchedule
from .objective import JanusFlowObjective, negative_rows
from .packed_attention import resolve_attention, use_flex_attention
from .packing import Packer, packed_counts, packed_micro_batches
from .samples import TASKS, CaptionSample, ConversationSample, TextSample, placeholder_sample
from .sources import Epochs, open_source, sample_generator
from .trainer import Shard


# In the release's weights but never used by JanusFlow (it reads SigLIP's tokens, not the pooled vector)
UNUSED = ("und_encoder.siglip.head.",)


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
    from ..latent_encoder import VAELatentEncoder
    from .latents import tiny_vae

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
        if model.config.und_vision.encoder == "generation":  # one shared encoder: understanding reads latents too
            if self.latent_encoder is None:
                raise ConfigError("und_vision.encoder: generation reads images through the VAE: set vae.path")
            model.latent_encoder = self.latent_encoder

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
        self.packer = None
        if config.data.packing:
            if self.module.uses_negatives:
                raise ConfigError("losses.negative_weight > 0 (the contrastive term) does not run on packed rows: "
                                  "set data.packing=false for it")
            self.collate.max_text_tokens = min(self.collate.max_text_tokens, config.data.seq_len)
            self.packer = Packer(self.schedule, config.data.seq_len, self._read, self._measure, self._report_skip)
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
        language = self.model.config.language
        head_dim = language.hidden_size // language.num_attention_heads
        if self.packer is not None and resolve_attention(self.config.data.attention, ctx.device, head_dim) == "flex":
            use_flex_attention(self.model.language_model)

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

    def plan(self, step: int):
        """Packing: which samples fill the rows of ``step`` (sequential and cheap; the trainer's process
        plans in step order, data workers build the rows). None unpacked: a step is a function of itself."""
        return self.packer.plan(step) if self.packer is not None else None

    def cpu_micro_batches(self, step: int, shard: Shard, plan=None) -> list[JanusFlowBatch]:
        """The micro-batches before any device work (generation images not yet encoded by the VAE):
        what data workers build (:mod:`.prefetch`)."""
        if self.packer is not None:
            plan = plan if plan is not None else self.packer.plan(step)
            self.advance(step)
            return packed_micro_batches(self, plan, shard)
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
        for part in (batch.gen, batch.packed):
            if part is not None and part.latents is None and part.gen_pixels is not None:
                with torch.no_grad():
                    part.latents = self.latent_encoder.encode(part.gen_pixels.to(self.device))
                part.gen_pixels = None
        return batch

    def counts(self, batch: JanusFlowBatch) -> dict[str, float]:
        counts = {"samples": 0.0, "tokens": 0.0, "ce_tokens": 0.0, "ce_und_tokens": 0.0, "ce_text_tokens": 0.0,
                  "gen_samples": 0.0, "neg_samples": 0.0, "skipped": float(batch.skipped)}
        if batch.packed is not None:
            counts.update(packed_counts(batch.packed))
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
        state = {"base": self.base, "ratio": self.mixture.weights, "phases": self.schedule.phases(),
                 "batch_size": self.schedule.batch_size, "next_step": self.next_step}
        if self.packer is None:
            return {**state, "positions": self._positions(self.next_step)}
        packing = self.packer.state_at(self.next_step)  # the planner may be steps ahead (data workers)
        return {**state, "positions": dict(packing["positions"]), "packing": packing}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base, self.next_step = state["base"], state["next_step"]
        changed = (state["ratio"] != self.mixture.weights or state.get("phases", []) != self.schedule.phases()
                   or state["batch_size"] != self.schedule.batch_size)
        if self.packer is not None:  # packed: the planner's state, or a fresh one where the streams were
            packing = state.get("packing") or {"step": self.next_step, "positions": dict(state["positions"]),
                                               "phase": -1, "slot": 0, "key": 0, "waiting": []}
            self.packer.load_state(packing, changed or "packing" not in state)
        elif changed or "packing" in state:
            # the mix (or packing) changed on resume: continue every stream where the checkpoint left it
            self.base = {"step": self.next_step, "positions": state["positions"]}

    def export(self, directory: Path, model: JanusFlowModel | None = None) -> None:
        """``save_pretrained`` of the model (LoRA merged, and the adapter alone in peft's format in
        ``adapter/``), its processor, its VAE (``vae/``) and the base folder's
        ``image_generation_config.json`` (its best-of-N defaults), if it has one."""
        model = self.model if model is None else model
        if lora_utils.has_lora(model):
            lora_utils.save_adapter(model, Path(directory) / lora_utils.ADAPTER_SUBFOLDER, self.config.model.path)
            model = lora_utils.merged_copy(model)
        model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        base = self.config.model.path  # a fine-tune keeps its base folder's image generation defaults
        if base is not None and (Path(base) / image_generation_config.FILENAME).is_file():
            image_generation_config.ImageGenerationConfig.from_folder(base).save(directory)
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

    def _read(self, task: str, position: int):
        self.read_count += 1
        return self.sources[task].read(position)

    def _measure(self, task: str, sample, key) -> int:
        """A sample's length in a packed row (its segment, see packing.py), without reading its images."""
        if task == "und":
            length = len(conversation_ids(self.processor, sample)[0])
        elif task == "text":
            length = len(encode_text(self.processor, sample, self.collate.max_text_tokens)[0])
        else:
            dropped = prompt_dropped(sample_generator(self.collate.seed, "gen", key), self.collate)
            prompt = 2 if dropped else len(generation_prompt_ids(self.processor, sample.caption,
                                                                  self.collate.prompt_format))
            length = prompt + self.model.config.num_image_tokens
        if length > self.config.data.seq_len:
            raise InputError(f"a {task} sample of {length} tokens does not fit a row of data.seq_len = "
                             f"{self.config.data.seq_len}")
        return length

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
