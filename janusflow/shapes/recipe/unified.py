"""Recipe part 4: the JanusFlow stages on the shapes world, starting from parts 1-3.

    adaptation  the new modules only (aligners, boi, generation encoder/decoder);
                LLM and understanding encoder frozen.                       und : gen : text = 50 : 50 : 0
    pretrain    unified pre-training: everything but the understanding encoder. 14 : 80 : 6
    sft         supervised fine-tuning: everything.                           21 : 70 : 9

(trainable modules and task mixes are the ``janusflow.train.stages`` presets, i.e. the paper's; a
recipe stage names one as its ``phase`` and may run it more than once, e.g. SFT with the contrastive
term after plain SFT).

The model (:func:`model_config`): the LLM of ``parts/llm``, the SigLIP tower of ``parts/und_encoder``,
the VAE of ``parts/vae`` and a new generation encoder/decoder whose patch is latent_size / und_grid,
so both paths see the same token grid (REPA needs it). Its width (``gen_channels`` 128, 2 ConvNeXt
blocks on each side) was chosen by CPU time: one guided velocity evaluation (2 rows) of the whole
model costs about 20 ms of one core, so an image at 30 Euler steps with guidance takes about 0.6 s.

Data (:func:`.streams.shapes_sources`), rendered on the fly, a pure function of (seed, position), so
resume is exact with nothing stored:
    und   a rendered scene and 1 to 3 questions about it (every form, ``sample_question``), the
          image before the first question as at inference, the default system prompt;
    gen   an image that passes its caption: 3/4 of the time a prompt of a random category and a
          scene built for it (``scene_for_prompt``), else a random scene and a true prompt of it
          (``caption_for_scene``); the trainer's latent encoder (the VAE) encodes it;
    text  the LM corpus (``corpus.sample_text``).

:func:`run_stage` trains one stage through ``run.train_stage``: segments, each resumed from the
newest checkpoint and followed by a fast evaluation of the EMA and the raw export (generation:
``eval_prompts`` prompts a category x ``eval_images`` images at the default sampler settings;
understanding: ``eval_questions`` questions on fresh scenes), appended to ``STAGE_DIR/eval.jsonl``;
the better export goes on. ``janusflow recipe shapes`` (recipe/build.py) runs the stages in order.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import JanusFlowConfig
from ...errors import ConfigError
from ..world import CATEGORIES
from .parts import config_from_parts, gen_vision_for, load_parts, und_vision_config
from .streams import shapes_sources

EVAL_SEED = 30_000_001  # fast evaluations: fresh prompts' noise and fresh scenes
REPA_HEAD = "repa_head.safetensors"  # a finished stage's REPA projector, for the next stage to start from


@dataclass
class TrainingSettings:
    """The JanusFlow stages' data and losses (a recipe's ``training``; a stage may replace entries)."""

    repa_layer: int = 2  # REPA aligns the hidden states after this LLM block (of 4)
    repa_weight: float = 1.0
    prompt_dropout: float = 0.1
    # the flow's training times, t = sigmoid(N(time_mean, time_std)) (the paper's logit-normal: 0, 1)
    time_mean: float = 0.0
    time_std: float = 1.0
    # the contrastive term (train/losses.py): captions against a false caption (``negatives``: the
    # swapped twin or one edit away); 0 turns it off (the paper's recipe)
    negative_weight: float = 0.0
    negatives: str = "swap"  # "swap": the swapped twin; "edits": one of the prompts one edit away; "all_edits": in every category
    negative_margin: float = 0.01
    negative_max_t: float = 0.5
    prompt_first_share: float = 0.75  # gen captions: prompt -> scene_for_prompt; else scene -> caption
    # prompt-first scenes: the share that hold distractors beside what the prompt names (up to 4
    # objects); the rest hold only the named objects, what a user asking for two shapes expects
    distractor_share: float = 1.0
    max_turns: int = 3  # und: questions per conversation, 1..max_turns
    # und: how often each question form is drawn (relative; a form not listed weighs 1), e.g.
    # {"relation": 3, "describe": 3} to train more on the hardest forms; empty: uniform (the spec's mix)
    und_form_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    # gen: how often each prompt category is drawn for prompt-first captions (relative, 1 if not listed)
    gen_category_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    # the share of each task (und, gen, text) in a batch, replacing the phase's entry for the tasks
    # listed, e.g. {"und": 60} for 60 : 70 : 9 in sft; empty: the paper's mixes
    task_mix: dict[str, float] = dataclasses.field(default_factory=dict)
    # the module-name prefixes that train, replacing the phase's list, e.g. ["und_encoder",
    # "und_aligner", "boi_embedding"] teaches reading while generation stays bit-identical; empty: the paper's
    trainable: list[str] = dataclasses.field(default_factory=list)
    eval_prompts: int = 4  # fast evaluation after each segment: prompts a category (0: none, the EMA goes on) ...
    eval_images: int = 2  # ... images a prompt ...
    eval_questions: int = 100  # ... and questions on fresh scenes


# -- the model --------------------------------------------------------------------------------------


def model_config(parts_dir: Path, gen_channels: int, gen_layers: int, und_encoder: str = "siglip") -> JanusFlowConfig:
    """``und_encoder``: what reads images for understanding (``UnderstandingVisionConfig.encoder``)."""
    und = dataclasses.replace(und_vision_config(parts_dir / "und_encoder"), encoder=und_encoder)
    config = config_from_parts(parts_dir, gen_vision_for(und, parts_dir / "vae", gen_channels, gen_layers))
    config.und_vision = und
    config.validate()
    return config


def init_from_parts(parts_dir: Path, gen_channels: int, gen_layers: int, seed: int = 0, und_encoder: str = "siglip"):
    """(model, processor): a fresh JanusFlowModel with the LLM and SigLIP weights of the parts copied
    in (fp32); the aligners, boi embedding and generation encoder/decoder are newly initialised."""
    from transformers import AutoTokenizer

    from ...modeling import JanusFlowModel
    from ...processor import JanusFlowProcessor

    config = model_config(parts_dir, gen_channels, gen_layers, und_encoder)
    torch.manual_seed(seed)
    model = load_parts(JanusFlowModel(config), parts_dir)
    tokenizer = AutoTokenizer.from_pretrained(parts_dir / "tokenizer")
    if len(tokenizer) > config.language.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, the LLM {config.language.vocab_size}")
    processor = JanusFlowProcessor(tokenizer, image_size=config.und_vision.image_size,
                                   num_image_tokens=config.num_und_image_tokens,
                                   num_gen_image_tokens=config.num_image_tokens,
                                   max_length=config.language.max_position_embeddings)
    return model.float(), processor


def write_init(parts_dir: Path, folder: Path, gen_channels: int, gen_layers: int, seed: int = 0,
               und_encoder: str = "siglip") -> Path:
    """``folder``: the parts put together as a model folder (config, weights, tokenizer, processor, vae/)."""
    from diffusers import AutoencoderKL

    model, processor = init_from_parts(parts_dir, gen_channels, gen_layers, seed, und_encoder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    AutoencoderKL.from_pretrained(parts_dir / "vae", torch_dtype=torch.float32).save_pretrained(tmp / "vae")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# -- a stage ----------------------------------------------------------------------------------------


def train_config(phase: str, spec, settings: TrainingSettings, start: Path, stage_dir: Path, seed: int):
    """The trainer's config of a stage: ``spec`` (a ``config.StageSpec``) gives the loop, ``phase``
    the paper's trainable modules and task mix, ``settings`` the data and losses."""
    from ...train.config import LossConfig, ModelSource, TrainConfig, VAEConfig
    from ...train.stages import stage_preset

    preset = stage_preset(phase)
    mix = {task: int(share) if float(share).is_integer() else share for task, share in settings.task_mix.items()}
    preset = dataclasses.replace(preset, lr=spec.lr, warmup_steps=spec.warmup_steps, steps=spec.steps,
                                 batch_size=spec.batch_size, decay_steps=spec.decay_steps, ratio={**preset.ratio, **mix},
                                 trainable=list(settings.trainable) or preset.trainable,
                                 # what the shipped model was trained with: the chat-template prompts and no
                                 # opening mix in any stage (the presets now follow the paper's v2 in both)
                                 prompt_format="chat", phases=[])
    config = TrainConfig(
        run_dir=str(stage_dir), seed=seed, model=ModelSource(path=str(start)), vae=VAEConfig(path=str(start / "vae")),
        stage=preset, losses=LossConfig(prompt_dropout=settings.prompt_dropout, time_mean=settings.time_mean,
                                        time_std=settings.time_std, repa_weight=settings.repa_weight,
                                        repa_layer=settings.repa_layer, negative_weight=settings.negative_weight,
                                        negative_margin=settings.negative_margin,
                                        negative_max_t=settings.negative_max_t))
    config.trainer.ema_decay = spec.ema_decay
    config.trainer.save_every = spec.save_every
    config.validate()
    return config


def save_repa_head(stage_dir: Path) -> bool:
    """Keep the REPA projector of the stage's newest checkpoint beside it (exports do not hold it)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ...train.checkpointing import latest_checkpoint

    latest = latest_checkpoint(stage_dir)
    if latest is None:
        return False
    with safe_open(latest / "model.safetensors", framework="pt") as f:
        state = {k.removeprefix("repa_head."): f.get_tensor(k) for k in f.keys() if k.startswith("repa_head.")}
    if state:
        save_file(state, stage_dir / REPA_HEAD)
    return bool(state)


def carry_repa_head(task, previous_stage_dir: Path) -> bool:
    """Start REPA's projector from where the previous stage left it (:func:`save_repa_head`)."""
    from safetensors.torch import load_file

    head, path = task.module.repa_head, previous_stage_dir / REPA_HEAD
    if head is None or not path.is_file():
        return False
    head.load_state_dict(load_file(path))
    return True


def quick_eval(export: Path, settings: TrainingSettings, seed: int = EVAL_SEED) -> dict[str, float]:
    """The fast evaluation of a segment, through the same files and functions as `janusflow eval shapes`."""
    from ..eval_run import evaluate_shapes

    with tempfile.TemporaryDirectory(prefix="janusflow-eval-") as out:
        results = evaluate_shapes(export, out, settings.eval_prompts, settings.eval_images, settings.eval_questions,
                                  seed=seed, show_progress=False, latency_repeats=0)
    gen, und = results["generation"], results["understanding"]
    metrics = {"gen_overall": gen["overall"], "und_overall": und["overall"],
               "score": 0.5 * (gen["overall"] + und["overall"])}
    metrics.update({f"gen_{k}": v for k, v in gen.items() if k in CATEGORIES})
    metrics.update({f"und_{k}": v for k, v in und.items() if k not in ("overall", "n_questions")})
    metrics["seconds_per_image_cpu"] = results["timing"]["generation"]["cpu_seconds_per_image"]
    return metrics


def run_stage(name: str, phase: str, spec, settings: TrainingSettings, start: Path, stage_dir: Path, seed: int,
              carry_from: Path | None = None, runtime=None, deadline: float | None = None) -> tuple[Path, dict[str, Any]]:
    """Train one stage from the model folder ``start`` (resumable); ``carry_from``: the stage folder whose
    REPA projector it starts from. Returns the chosen export and its last evaluation."""
    from ...train.task import JanusFlowTask
    from . import run

    config = train_config(phase, spec, settings, start, stage_dir, seed)
    task = JanusFlowTask(config, sources=shapes_sources(seed, settings))
    if carry_from is not None and carry_repa_head(task, carry_from):
        run.log(name, f"REPA projector carried over from {carry_from.name}")
    resolved = {"stage": name, "phase": phase, "start": str(start), "train": config.to_dict(),
                "settings": dataclasses.asdict(settings)}
    def evaluate(export: Path) -> dict[str, float]:
        return quick_eval(export, settings) if settings.eval_prompts > 0 else {"score": 0.0}  # a tie: the EMA

    export, last = run.train_stage(name, task, spec, stage_dir, evaluate, "score", resolved, runtime=runtime,
                                   deadline=deadline)
    save_repa_head(stage_dir)
    return export, last
