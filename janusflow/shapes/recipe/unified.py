"""Recipe part 4: the three JanusFlow stages on the shapes world, starting from parts 1-3.

    adapt    adaptation: the new modules only (aligners, boi, generation encoder/decoder);
             LLM and understanding encoder frozen.                        und : gen : text = 50 : 50 : 0
    unified  unified pre-training: everything but the understanding encoder. 14 : 80 : 6
    sft      supervised fine-tuning: everything.                          21 : 70 : 9

(trainable modules and task mixes are the ``janusflow.train.stages`` presets, i.e. the paper's).

The model (:func:`model_config`): the LLM of ``parts/llm`` (Llama, hidden 256, 4 blocks, vocab 470),
the SigLIP tower of ``parts/und_encoder`` (64 px, patch 8: an 8 x 8 token grid), the VAE of
``parts/vae`` (64 x 64 pixels <-> 4 x 16 x 16 latents) and a new generation encoder/decoder whose
patch is latent_size / und_grid (2 x 2 here), so both paths see the same 8 x 8 grid (REPA needs it).
Its width (``gen_channels`` 128, 2 ConvNeXt blocks on each side) was chosen by CPU time: one
guided velocity evaluation (2 rows) of the whole model costs about 20 ms of one core, so an image at
30 Euler steps with guidance takes about 0.6 s (the target is < 1 s; width 192 gives 0.8 s, 256 1.05 s).

Data (:func:`.streams.shapes_sources`), rendered on the fly, a pure function of (seed, position), so
resume is exact with nothing stored:
    und   a rendered scene and 1 to 3 questions about it (every form, ``sample_question``), the
          image before the first question as at inference, the default system prompt;
    gen   an image that passes its caption: 3/4 of the time a prompt of a random category and a
          scene built for it (``scene_for_prompt``), else a random scene and a true prompt of it
          (``caption_for_scene``); the trainer's latent encoder (the VAE) encodes it;
    text  the LM corpus (``corpus.sample_text``).

Each stage runs through ``run.train_stage``: segments of ``segment`` steps, each resumed from the
newest checkpoint and followed by a fast evaluation of the EMA and the raw export (generation:
``eval_prompts`` prompts a category x ``eval_images`` images at the default sampler settings;
understanding: ``eval_questions`` questions on fresh scenes), appended to ``RUN_DIR/STAGE/eval.jsonl``.
A stage starts from the previous stage's chosen export (``adapt`` from ``RUN_DIR/init``, the parts
put together) and carries the REPA projector over. At the end of ``sft`` the model is assembled
(fp16) into the default model folder (the parent of the parts folder) and evaluated there.

    python -m janusflow.shapes.recipe.run --stages adapt,unified,sft --threads 1 --nice 10
    python -m janusflow.shapes.recipe.unified train --preset quick     # a preset of part 4's own
    python -m janusflow.shapes.recipe.unified snapshot-parts --out runs/part4/model/parts
        # parts 2-3 from their newest evaluated exports while they still train; then
        # train --parts-dir runs/part4/model/parts --run-dir runs/part4 assembles into runs/part4/model
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import JanusFlowConfig
from ...errors import ConfigError
from ..world import CATEGORIES
from .parts import config_from_parts, gen_vision_for, load_parts, und_vision_config
from .streams import shapes_sources

# The three stages: (recipe stage name, janusflow.train stage preset giving trainable modules and mix)
STAGE_PRESETS = {"adapt": "adaptation", "unified": "pretrain", "sft": "sft"}
STAGE_ORDER = ("adapt", "unified", "sft")
INIT = "init"  # RUN_DIR/init: the parts put together, the model adaptation starts from
EVAL_SEED = 30_000_001  # fast evaluations: fresh prompts' noise and fresh scenes


@dataclass
class StagePlan:
    """One stage's loop settings (see ``run.StageSettings``) plus what the trainer's stage needs."""

    steps: int
    segment: int
    batch_size: int
    lr: float
    warmup_steps: int = 50
    decay_steps: int = 0  # a linear cool-down of the lr to 0 over the last decay_steps of `steps`
    ema_decay: float = 0.998
    save_every: int = 50
    max_seconds: float = 0.0  # training-time budget (0: the step budget alone)


@dataclass
class UnifiedSettings:
    adapt: StagePlan
    unified: StagePlan
    sft: StagePlan
    gen_channels: int = 128  # generation encoder width (= decoder input width)
    gen_layers: int = 2  # ConvNeXt blocks in the encoder and in the decoder
    repa_layer: int = 2  # REPA aligns the hidden states after this LLM block (of 4)
    repa_weight: float = 1.0
    prompt_dropout: float = 0.1
    # the flow's training times, t = sigmoid(N(time_mean, time_std)) (the paper's logit-normal: 0, 1); a
    # negative mean draws more of the early times where a picture's layout is decided (recipe/settle.py)
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
    # every stage: the share of each task (und, gen, text) in a batch, replacing the stage preset's entry
    # for the tasks listed, e.g. {"und": 60} for 60 : 70 : 9 in sft; empty: the paper's mixes
    task_mix: dict[str, float] = dataclasses.field(default_factory=dict)
    # every stage: the module-name prefixes that train, replacing the stage preset's list, e.g.
    # ["und_encoder", "und_aligner", "boi_embedding"] teaches reading while generation stays bit-identical
    # (the LLM and the generation modules frozen); empty: the paper's (janusflow.train.stages)
    trainable: list[str] = dataclasses.field(default_factory=list)
    eval_prompts: int = 10  # fast evaluation after each segment: prompts a category ...
    eval_images: int = 2  # ... images a prompt ...
    eval_questions: int = 200  # ... and questions on fresh scenes
    final_prompts: int = 50  # evaluation of the assembled (fp16) model
    final_images: int = 4
    final_questions: int = 1000
    final_eval: bool = True  # False: assemble only (evaluate later: python -m janusflow.shapes.recipe.assemble)
    seed: int = 4  # the stages' data streams and random draws; a run continuing a trained model (--start)
    #                wants another one, or it sees again the samples its model was trained on


PRESETS: dict[str, UnifiedSettings] = {
    # sized for the 2-core CPU: a step of 32 samples takes about 3-6 s (shared machine)
    "default": UnifiedSettings(
        adapt=StagePlan(steps=1000, segment=250, batch_size=32, lr=1e-3, warmup_steps=50),
        unified=StagePlan(steps=20_000, segment=1000, batch_size=32, lr=5e-4, warmup_steps=100),
        sft=StagePlan(steps=4000, segment=500, batch_size=32, lr=1e-4, warmup_steps=50),
    ),
    # a first model in an afternoon of this machine (about 3 h of wall time under shared load)
    "quick": UnifiedSettings(
        adapt=StagePlan(steps=500, segment=250, batch_size=32, lr=1e-3, warmup_steps=50),
        unified=StagePlan(steps=3000, segment=750, batch_size=32, lr=5e-4, warmup_steps=100),
        sft=StagePlan(steps=1000, segment=500, batch_size=32, lr=1e-4, warmup_steps=50),
    ),
    # one GPU (an H200 was measured): batches of 256, training-time budgets, fewer fast-evaluation
    # images; the assembled model is evaluated afterwards (on the CPU it ships for)
    "gpu": UnifiedSettings(
        adapt=StagePlan(steps=1_000_000, segment=1_000_000, batch_size=256, lr=1e-3, warmup_steps=100,
                        save_every=500, max_seconds=45),
        unified=StagePlan(steps=1_000_000, segment=1_000_000, batch_size=256, lr=1e-3, warmup_steps=200,
                          save_every=500, max_seconds=200),
        sft=StagePlan(steps=1_000_000, segment=1_000_000, batch_size=256, lr=2e-4, warmup_steps=100,
                      save_every=500, max_seconds=60),
        eval_prompts=4, eval_images=2, eval_questions=100, final_eval=False,
    ),
    "tiny": UnifiedSettings(
        adapt=StagePlan(steps=2, segment=1, batch_size=4, lr=1e-3, warmup_steps=1, save_every=1),
        unified=StagePlan(steps=2, segment=2, batch_size=4, lr=1e-3, warmup_steps=1, save_every=1),
        sft=StagePlan(steps=2, segment=2, batch_size=4, lr=1e-3, warmup_steps=1, save_every=1),
        gen_channels=16, gen_layers=1, repa_layer=1,
        eval_prompts=1, eval_images=1, eval_questions=3, final_prompts=1, final_images=1, final_questions=3,
    ),
}


# -- the model --------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def model_config(parts_dir: Path, settings: UnifiedSettings) -> JanusFlowConfig:
    und = und_vision_config(parts_dir / "und_encoder")
    return config_from_parts(parts_dir, gen_vision_for(und, parts_dir / "vae", settings.gen_channels,
                                                       settings.gen_layers))


def init_from_parts(parts_dir: Path, settings: UnifiedSettings, seed: int = 0):
    """(model, processor): a fresh JanusFlowModel with the LLM and SigLIP weights of the parts copied
    in (fp32); the aligners, boi embedding and generation encoder/decoder are newly initialised."""
    from transformers import AutoTokenizer

    from ...modeling import JanusFlowModel
    from ...processor import JanusFlowProcessor

    config = model_config(parts_dir, settings)
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


def write_init(parts_dir: Path, folder: Path, settings: UnifiedSettings, seed: int = 0) -> Path:
    """``folder``: the parts put together as a model folder (config, weights, tokenizer, processor, vae/)."""
    from diffusers import AutoencoderKL

    model, processor = init_from_parts(parts_dir, settings, seed)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    AutoencoderKL.from_pretrained(parts_dir / "vae", torch_dtype=torch.float32).save_pretrained(tmp / "vae")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# -- the stages -------------------------------------------------------------------------------------


def train_config(stage: str, plan: StagePlan, settings: UnifiedSettings, start: Path, stage_dir: Path, seed: int):
    from ...train.config import LossConfig, ModelSource, TrainConfig, VAEConfig
    from ...train.stages import stage_preset

    preset = stage_preset(STAGE_PRESETS[stage])
    mix = {task: int(share) if float(share).is_integer() else share for task, share in settings.task_mix.items()}
    preset = dataclasses.replace(preset, lr=plan.lr, warmup_steps=plan.warmup_steps, steps=plan.steps,
                                 batch_size=plan.batch_size, decay_steps=plan.decay_steps, ratio={**preset.ratio, **mix},
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
    config.trainer.ema_decay = plan.ema_decay
    config.trainer.save_every = plan.save_every
    config.validate()
    return config


def carry_repa_head(task, previous_stage_dir: Path) -> bool:
    """Start REPA's projector from where the previous stage left it (it is not in the export)."""
    from safetensors import safe_open

    from ...train.checkpointing import latest_checkpoint

    latest = latest_checkpoint(previous_stage_dir)
    head = task.module.repa_head
    if latest is None or head is None:
        return False
    with safe_open(latest / "model.safetensors", framework="pt") as f:
        state = {k.removeprefix("repa_head."): f.get_tensor(k) for k in f.keys() if k.startswith("repa_head.")}
    if not state:
        return False
    head.load_state_dict(state)
    return True


def quick_eval(export: Path, settings: UnifiedSettings, seed: int = EVAL_SEED) -> dict[str, float]:
    """The fast evaluation of a segment, through the same files and functions as `janusflow eval shapes`."""
    from ..cli import evaluate_shapes

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


def _settings_for(recipe_settings) -> UnifiedSettings:
    """run.py hands every stage its RecipeSettings; part 4 follows its size (tiny for tests)."""
    if isinstance(recipe_settings, UnifiedSettings):
        return recipe_settings
    return PRESETS["tiny" if getattr(recipe_settings, "lm_size", "default") == "tiny" else "default"]


def stage_start(stage: str, run_dir: Path, parts_dir: Path, settings: UnifiedSettings) -> Path:
    """The model folder a stage starts from: the parts put together, or the previous stage's choice."""
    index = STAGE_ORDER.index(stage)
    if index == 0:
        init = run_dir / INIT
        if not (init / "config.json").is_file():
            write_init(parts_dir, init, settings)
        return init
    previous = run_dir / STAGE_ORDER[index - 1]
    done = previous / "DONE.json"
    if not done.is_file():
        raise FileNotFoundError(f"{done} is missing: run the {STAGE_ORDER[index - 1]} stage first")
    return previous / _read_json(done)["train"].get("weights", "export")


def run_stage(stage: str, recipe_settings, run_dir: Path, parts_dir: Path, runtime=None,
              start: Path | None = None) -> None:
    """Train one stage (resumable) and record it in RUN_DIR/STAGE/DONE.json; ``start`` replaces the model
    folder it starts from (default: :func:`stage_start`), e.g. to continue training a shipped model."""
    from ...train.task import JanusFlowTask
    from . import run

    settings = _settings_for(recipe_settings)
    plan: StagePlan = getattr(settings, stage)
    stage_dir = run_dir / stage
    start = start if start is not None else stage_start(stage, run_dir, parts_dir, settings)
    config = train_config(stage, plan, settings, start, stage_dir, settings.seed)
    task = JanusFlowTask(config, sources=shapes_sources(settings.seed, settings))
    if STAGE_ORDER.index(stage) > 0 and carry_repa_head(task, run_dir / STAGE_ORDER[STAGE_ORDER.index(stage) - 1]):
        run._log(stage, "REPA projector carried over from the previous stage")
    loop = run.StageSettings(**dataclasses.asdict(plan), target=1.0)  # a StagePlan is loop settings, no target
    resolved = {"stage": stage, "start": str(start), "train": config.to_dict(), "settings": dataclasses.asdict(settings)}
    export, last = run.train_stage(stage, task, loop, stage_dir, lambda e: quick_eval(e, settings), "score", resolved,
                                   runtime=runtime)
    record: dict[str, Any] = {"train": last, "start": str(start)}
    if stage == STAGE_ORDER[-1]:
        from .assemble import assemble

        target = parts_dir.parent
        start_time = time.perf_counter()
        record["assembled"] = assemble(export, target, evaluate=settings.final_eval, settings=settings)
        record["assemble_seconds"] = round(time.perf_counter() - start_time, 1)
    run.finish(stage, stage_dir, export, record)


def stage_adapt(recipe_settings, run_dir: Path, parts_dir: Path, runtime=None) -> None:
    run_stage("adapt", recipe_settings, run_dir, parts_dir, runtime=runtime)


def stage_unified(recipe_settings, run_dir: Path, parts_dir: Path, runtime=None) -> None:
    run_stage("unified", recipe_settings, run_dir, parts_dir, runtime=runtime)


def stage_sft(recipe_settings, run_dir: Path, parts_dir: Path, runtime=None) -> None:
    run_stage("sft", recipe_settings, run_dir, parts_dir, runtime=runtime)


STAGES = {"adapt": stage_adapt, "unified": stage_unified, "sft": stage_sft}


# -- parts from runs still in progress ------------------------------------------------------------


def snapshot_parts(recipe_dir: Path, parts_dir: Path, out: Path) -> dict[str, str]:
    """A parts folder for part 4 while parts 2-3 are still training: each part from ``parts_dir`` when
    finished there, else the newest evaluated export of its stage in ``recipe_dir`` (the better of EMA
    and raw, as that stage's last evaluation chose). Returns part -> where it came from."""
    from transformers import LlamaForCausalLM, SiglipVisionModel

    stages = {"vae": "vae", "tokenizer": "tokenizer", "und_encoder": "siglip", "llm": "lm"}
    out.mkdir(parents=True, exist_ok=True)
    origin = {}
    for part, stage in stages.items():
        shutil.rmtree(out / part, ignore_errors=True)
        if (parts_dir / part / "config.json").is_file() or (parts_dir / part / "tokenizer.json").is_file():
            shutil.copytree(parts_dir / part, out / part)
            origin[part] = str(parts_dir / part)
            continue
        progress = recipe_dir / stage / "progress.json"
        if not progress.is_file() or not _read_json(progress)["evals"]:
            raise FileNotFoundError(f"{part}: not in {parts_dir} and no evaluated export under {recipe_dir / stage}")
        last = _read_json(progress)["evals"][-1]
        export = recipe_dir / stage / last.get("weights", "export")
        if part == "llm":
            LlamaForCausalLM.from_pretrained(export, dtype=torch.float32).save_pretrained(out / part)
        else:
            SiglipVisionModel.from_pretrained(export / "und_encoder", dtype=torch.float32).save_pretrained(out / part)
        origin[part] = f"{export} (step {last['step']})"
    (out / "SNAPSHOT.json").write_text(json.dumps(origin, indent=2) + "\n", encoding="utf-8")
    return origin


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os

    from .run import PARTS_DIR, Runtime, _log, add_runtime_arguments, stage_settings, with_overrides

    parser = argparse.ArgumentParser(description="part 4 on its own, with a preset of its own (run.py runs "
                                     "the default preset after parts 1-3)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="the stages, in order, resumable (finished stages are skipped)")
    train.add_argument("--preset", default="default", choices=sorted(PRESETS))
    train.add_argument("--stages", default=",".join(STAGE_ORDER))
    train.add_argument("--run-dir", default="runs/recipe")
    train.add_argument("--parts-dir", default=str(PARTS_DIR), help="the model is assembled into its parent")
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--nice", type=int, default=0)
    train.add_argument("--steps", action="append", default=[], metavar="STAGE=N",
                       help="override a stage's step budget, e.g. unified=6000 (to extend a finished stage, "
                            "delete its DONE.json and the later stages' folders first)")
    train.add_argument("--start", default=None, metavar="DIR",
                       help="a model folder (ours, with vae/) the first stage of --stages starts from, instead of "
                            "the previous stage's export, e.g. --stages unified,sft --start janusflow/default_model")
    add_runtime_arguments(train)
    snap = sub.add_parser("snapshot-parts", help=snapshot_parts.__doc__.split(".")[0])
    snap.add_argument("--recipe-dir", default="runs/recipe")
    snap.add_argument("--parts-dir", default=str(PARTS_DIR))
    snap.add_argument("--out", required=True, help="e.g. runs/part4/model/parts (the model is assembled beside it)")
    args = parser.parse_args(argv)
    if args.command == "snapshot-parts":
        print(json.dumps(snapshot_parts(Path(args.recipe_dir), Path(args.parts_dir), Path(args.out)), indent=2))
        return
    if args.nice:
        os.nice(args.nice)
    torch.set_num_threads(args.threads)
    run_dir, parts_dir = Path(args.run_dir), Path(args.parts_dir)
    settings = with_overrides(PRESETS[args.preset], args.steps, parser, field="steps", flag="--steps")
    settings = stage_settings(settings, args, parser)
    runtime = Runtime(args.device, args.data_workers)
    stages = [s for s in args.stages.split(",") if s]
    for stage in stages:
        if stage not in STAGE_ORDER:
            parser.error(f"unknown stage {stage!r}; stages are {list(STAGE_ORDER)}")
    start = Path(args.start) if args.start else None
    if start is not None and not (start / "config.json").is_file():
        parser.error(f"--start {args.start}: not a model folder (no config.json)")
    for i, stage in enumerate(stages):
        if (run_dir / stage / "DONE.json").is_file():
            _log(stage, f"already done ({run_dir / stage / 'DONE.json'}); skipped")
            continue
        _log(stage, f"starting (preset {args.preset})")
        run_stage(stage, settings, run_dir, parts_dir, runtime=runtime, start=start if i == 0 else None)


if __name__ == "__main__":
    main()
