"""One command for the recipe's parts, in order, each resumable:

    python -m janusflow.shapes.recipe.run [--run-dir runs/recipe] [--stages vae,tokenizer,siglip,lm]

    vae        AutoencoderKL on fresh scenes                    -> parts/vae/
    tokenizer  byte-level BPE on the world's text (seconds)     -> parts/tokenizer/
    siglip     SigLIP image tower vs a small text tower         -> parts/und_encoder/
    lm         Llama LM on the world's text                     -> parts/llm/
    adapt, unified, sft   part 4, the three JanusFlow stages        -> default_model/ (recipe/unified.py)

A trained stage runs the shared trainer (`janusflow.train.Trainer`) in segments of
`segment` steps under RUN_DIR/STAGE: each segment resumes from the newest checkpoint, trains,
exports the weights (EMA and raw) and evaluates both on fresh data (RUN_DIR/STAGE/eval.jsonl). A stage
finishes when its evaluation meets its target or its step budget is spent; its export is copied
(fp16) into the parts folder and RUN_DIR/STAGE/DONE.json records the final evaluation and the
wall time. Finished stages are skipped. Stop at any moment (Ctrl-C or SIGTERM writes a
checkpoint; a kill loses at most `save_every` steps) and rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

PARTS_DIR = Path("runs/recipe/model/parts")  # the model is assembled into its parent


@dataclass
class StageSettings:
    steps: int  # step budget
    segment: int  # steps between evaluations
    batch_size: int
    lr: float
    warmup_steps: int = 100
    decay_steps: int = 0  # the last decay_steps of the step budget cool the lr linearly down to 0
    ema_decay: float = 0.999
    save_every: int = 100
    target: float = 1.0  # the evaluation's key metric to reach (stage stops early when reached)
    min_steps: int = 0  # but not before this step
    max_seconds: float = 0.0  # training-time budget, summed over sessions (0: the step budget alone)


@dataclass
class Runtime:
    """Where a stage runs; changes the speed, not the recipe (a run is the same with any number of
    data workers, and a stage resumes on another device)."""

    device: str = "auto"  # "auto": CUDA when available (bf16 autocast), else the CPU (fp32)
    data_workers: int = 0  # processes building the next batches (janusflow.train.prefetch)


@dataclass
class RecipeSettings:
    vae: StageSettings
    siglip: StageSettings
    lm: StageSettings
    vae_size: str = "default"  # "default" or "tiny": VAEConfig preset
    siglip_size: str = "default"
    lm_size: str = "default"
    vocab_size: int = 512
    eval_scenes: int = 256  # per evaluation during training
    final_eval_scenes: int = 1000  # evaluation of the shipped (fp16) artifact
    scale_scenes: int = 1024  # fresh scenes measuring the VAE's latent std


PRESETS: dict[str, RecipeSettings] = {
    "default": RecipeSettings(
        # the scorer reads 99.8% of reconstructions right by step 1000; steps 1000-2000 flatten
        # colours and backgrounds (PSNR 32.5 -> 36.1 dB)
        vae=StageSettings(steps=30_000, segment=500, batch_size=32, lr=1e-3, target=0.995, min_steps=2000),
        siglip=StageSettings(steps=20_000, segment=500, batch_size=128, lr=1e-3, target=0.95),
        lm=StageSettings(steps=20_000, segment=500, batch_size=16, lr=1e-3, target=0.99),  # 16 x 128 tokens
    ),
    # one GPU (an H100/H200 was measured): bigger batches, a training-time budget per stage rather
    # than a step budget, one evaluation at the end (--budget STAGE=SECONDS changes a budget)
    "gpu": RecipeSettings(
        vae=StageSettings(steps=30_000, segment=2000, batch_size=128, lr=1e-3, target=0.995, min_steps=2000,
                          save_every=500),
        siglip=StageSettings(steps=1_000_000, segment=1_000_000, batch_size=512, lr=1e-3, warmup_steps=200,
                             save_every=1000, target=0.95, max_seconds=180),
        lm=StageSettings(steps=1_000_000, segment=1_000_000, batch_size=64, lr=1e-3, warmup_steps=200,
                         save_every=1000, target=0.99, max_seconds=180),
    ),
    # for tests: seconds, not hours
    "tiny": RecipeSettings(
        vae=StageSettings(steps=4, segment=2, batch_size=4, lr=1e-3, warmup_steps=1, save_every=2),
        siglip=StageSettings(steps=4, segment=2, batch_size=8, lr=1e-3, warmup_steps=1, save_every=2),
        lm=StageSettings(steps=4, segment=2, batch_size=4, lr=1e-3, warmup_steps=1, save_every=2),
        vae_size="tiny", siglip_size="tiny", lm_size="tiny", vocab_size=320,
        eval_scenes=4, final_eval_scenes=4, scale_scenes=16,
    ),
}

Metric = dict[str, float]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _log(stage: str, text: str) -> None:
    print(f"[recipe {stage}] {text}", flush=True)


def best_export(stage_dir: Path, evaluate: Callable[[Path], Metric], key: str, tiebreak: str | None = None) -> Metric:
    """Evaluate the EMA export and the raw one; return the better's metrics by `key`, then
    `tiebreak`, with "weights" naming its folder. (Early on the EMA still carries much of the
    initial weights: decay 0.999 keeps 0.999^n of them after n steps, without bias correction.)"""
    found = [{**evaluate(stage_dir / name), "weights": name}
             for name in ("export", "export-raw") if (stage_dir / name).is_dir()]
    return max(found, key=lambda m: (m[key], m[tiebreak] if tiebreak else 0.0))


def train_stage(
    name: str,
    task,
    settings: StageSettings,
    stage_dir: Path,
    evaluate: Callable[[Path], Metric],
    key: str,
    resolved: dict[str, Any],
    tiebreak: str | None = None,
    runtime: Runtime | None = None,
) -> tuple[Path, Metric]:
    """Train `task` in segments until eval[key] >= settings.target (and step >= settings.min_steps)
    or the budget (steps, or training seconds when settings.max_seconds is set) is spent.
    Returns the final export folder and its evaluation."""
    from ...train import Trainer, TrainerConfig

    runtime = runtime or Runtime()
    stage_dir.mkdir(parents=True, exist_ok=True)
    progress_path = stage_dir / "progress.json"
    progress = _read_json(progress_path) if progress_path.is_file() else {"train_seconds": 0.0, "evals": []}
    while True:
        last = progress["evals"][-1] if progress["evals"] else None
        reached = last is not None and last[key] >= settings.target and last["step"] >= settings.min_steps
        left = settings.max_seconds - progress["train_seconds"] if settings.max_seconds else math.inf
        if last is not None and (reached or last["step"] >= settings.steps or left <= 0):
            return stage_dir / last.get("weights", "export"), last
        done = last["step"] if last else 0
        goal = min(settings.steps, (done // settings.segment + 1) * settings.segment)
        config = TrainerConfig(
            run_dir=str(stage_dir), steps=goal, lr=settings.lr, warmup_steps=settings.warmup_steps,
            decay_steps=settings.decay_steps, schedule_steps=settings.steps,
            ema_decay=settings.ema_decay, save_every=settings.save_every, log_every=10, progress=False,
            device=runtime.device, data_workers=runtime.data_workers,
            max_seconds=max(left, 1e-9) if math.isfinite(left) else 0.0,
        )
        start = time.perf_counter()
        result = Trainer(task, config, resolved_config={**resolved, "trainer": dataclasses.asdict(config)}).fit()
        progress["train_seconds"] += time.perf_counter() - start
        goal = result["step"]  # less than asked when the time budget ran out
        if result["stopped"]:
            _write_json(progress_path, progress)
            _log(name, f"stopped at step {result['step']}; rerun the same command to continue")
            sys.exit(130)
        start = time.perf_counter()
        metrics = {"step": goal, "train_seconds": round(progress["train_seconds"], 1),
                   **best_export(stage_dir, evaluate, key, tiebreak)}
        metrics["eval_seconds"] = round(time.perf_counter() - start, 1)
        progress["evals"].append(metrics)
        _write_json(progress_path, progress)
        with open(stage_dir / "eval.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        _log(name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


def finish(name: str, stage_dir: Path, part_dir: Path, record: dict[str, Any]) -> None:
    _write_json(stage_dir / "DONE.json", record)
    size = sum(p.stat().st_size for p in part_dir.rglob("*") if p.is_file())
    _log(name, f"done: {part_dir} ({size / 1e6:.2f} MB) {json.dumps(record)}")


# -- stages ---------------------------------------------------------------------------------------


def stage_vae(settings: RecipeSettings, run_dir: Path, parts_dir: Path, runtime: Runtime | None = None) -> None:
    from diffusers import AutoencoderKL

    from .vae import TINY_VAE, VAEConfig, VAETask, evaluate_vae

    stage_dir, part_dir = run_dir / "vae", parts_dir / "vae"
    cfg = TINY_VAE if settings.vae_size == "tiny" else VAEConfig()
    s = settings.vae
    task = VAETask(cfg, batch_size=s.batch_size, seed=1, scale_scenes=settings.scale_scenes)

    def evaluate(export: Path) -> Metric:
        vae = AutoencoderKL.from_pretrained(export)
        return {**evaluate_vae(vae, settings.eval_scenes), "scaling_factor": vae.config.scaling_factor}

    resolved = {"stage": "vae", "vae": dataclasses.asdict(cfg), "settings": dataclasses.asdict(s)}
    export, last = train_stage("vae", task, s, stage_dir, evaluate, "read_exact", resolved, tiebreak="psnr",
                               runtime=runtime)
    # ship fp16 weights; evaluate exactly what ships (loaded back in fp32) on more fresh scenes
    shutil.rmtree(part_dir, ignore_errors=True)
    AutoencoderKL.from_pretrained(export, torch_dtype=torch.float16).save_pretrained(part_dir)
    shipped = AutoencoderKL.from_pretrained(part_dir, torch_dtype=torch.float32)
    start = time.perf_counter()
    final = evaluate_vae(shipped, settings.final_eval_scenes, seed=20_000_003)
    final["seconds_per_image"] = (time.perf_counter() - start) / settings.final_eval_scenes
    finish("vae", stage_dir, part_dir, {"train": last, "shipped_fp16": final,
                                        "scaling_factor": shipped.config.scaling_factor,
                                        "parameters": sum(p.numel() for p in shipped.parameters())})


def stage_tokenizer(settings: RecipeSettings, run_dir: Path, parts_dir: Path, runtime: Runtime | None = None) -> None:
    from ...tokenizer_build import build_tokenizer
    from .corpus import tokenizer_corpus

    stage_dir, part_dir = run_dir / "tokenizer", parts_dir / "tokenizer"
    stage_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shutil.rmtree(part_dir, ignore_errors=True)
    tokenizer = build_tokenizer(tokenizer_corpus(), settings.vocab_size, part_dir)
    finish("tokenizer", stage_dir, part_dir, {"vocab_size": len(tokenizer), "seconds": time.perf_counter() - start})


def _tokenizer(parts_dir: Path):
    from transformers import AutoTokenizer

    path = parts_dir / "tokenizer"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: run the tokenizer stage first (--stages tokenizer)")
    return AutoTokenizer.from_pretrained(path)


def stage_siglip(settings: RecipeSettings, run_dir: Path, parts_dir: Path, runtime: Runtime | None = None) -> None:
    from transformers import SiglipVisionModel

    from .siglip import SiglipConfig, SiglipTask, evaluate_siglip, tiny_siglip

    stage_dir, part_dir = run_dir / "siglip", parts_dir / "und_encoder"
    tokenizer = _tokenizer(parts_dir)
    cfg = tiny_siglip() if settings.siglip_size == "tiny" else SiglipConfig()
    s = settings.siglip
    task = SiglipTask(tokenizer, cfg, batch_size=s.batch_size, seed=2)

    def evaluate(export: Path) -> Metric:
        # the EMA weights, as exported, into a fresh pair
        from transformers import SiglipTextModel

        pair = SiglipTask(tokenizer, cfg, batch_size=s.batch_size).module
        pair.vision = SiglipVisionModel.from_pretrained(export / "und_encoder")
        pair.text = SiglipTextModel.from_pretrained(export / "text_tower")
        head = _read_json(export / "siglip_head.json")
        with torch.no_grad():
            pair.log_temperature.fill_(float(np.log(head["temperature"])))
            pair.bias.fill_(head["bias"])
        return {**evaluate_siglip(pair, tokenizer, settings.eval_scenes), **head}

    resolved = {"stage": "siglip", "siglip": dataclasses.asdict(cfg), "settings": dataclasses.asdict(s)}
    export, last = train_stage("siglip", task, s, stage_dir, evaluate, "describe_top1", resolved,
                               tiebreak="prompt_bal_acc", runtime=runtime)
    shutil.rmtree(part_dir, ignore_errors=True)
    SiglipVisionModel.from_pretrained(export / "und_encoder").to(torch.float16).save_pretrained(part_dir)
    finish("siglip", stage_dir, part_dir, {"train": last, "vision": dataclasses.asdict(cfg.vision),
                                           "parameters": sum(p.numel() for p in task.module.vision.parameters())})


def stage_lm(settings: RecipeSettings, run_dir: Path, parts_dir: Path, runtime: Runtime | None = None) -> None:
    from transformers import LlamaForCausalLM

    from .lm import LMTask, default_language, evaluate_lm, tiny_language

    stage_dir, part_dir = run_dir / "lm", parts_dir / "llm"
    tokenizer = _tokenizer(parts_dir)
    cfg = (tiny_language if settings.lm_size == "tiny" else default_language)(len(tokenizer))
    s = settings.lm
    task = LMTask(tokenizer, cfg, batch_size=s.batch_size, seed=3)

    def evaluate(export: Path) -> Metric:
        return evaluate_lm(LlamaForCausalLM.from_pretrained(export), tokenizer, settings.eval_scenes)

    resolved = {"stage": "lm", "language": dataclasses.asdict(cfg), "settings": dataclasses.asdict(s)}
    export, last = train_stage("lm", task, s, stage_dir, evaluate, "qa_acc", resolved, runtime=runtime)
    shutil.rmtree(part_dir, ignore_errors=True)
    LlamaForCausalLM.from_pretrained(export).to(torch.float16).save_pretrained(part_dir)
    finish("lm", stage_dir, part_dir, {"train": last, "language": dataclasses.asdict(cfg),
                                       "parameters": sum(p.numel() for p in task.module.parameters())})


STAGES: dict[str, Callable[..., None]] = {  # (settings, run_dir, parts_dir, runtime=None)
    "vae": stage_vae,
    "tokenizer": stage_tokenizer,
    "siglip": stage_siglip,
    "lm": stage_lm,
}


def _part4(name: str) -> Callable[..., None]:
    def stage(settings: RecipeSettings, run_dir: Path, parts_dir: Path, runtime: Runtime | None = None) -> None:
        from .unified import STAGES as PART4

        PART4[name](settings, run_dir, parts_dir, runtime)
    return stage


STAGES.update({name: _part4(name) for name in ("adapt", "unified", "sft")})  # part 4: recipe/unified.py


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    parser.add_argument("--data-workers", type=int, default=0, metavar="N",
                        help="processes building the next batches while one trains (a GPU needs several)")
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                        help="a training-time budget for a stage, summed over sessions (e.g. siglip=600); "
                             "the stage ends at its step budget or this, whichever comes first")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE", dest="overrides",
                        help="change one setting of a stage's preset, e.g. unified.batch_size=512 or unified.lr=5e-4, "
                             "a numeric setting of the whole recipe, e.g. repa_weight=0, or a table entry, e.g. "
                             "und_form_weights.relation=3, or a list of names, e.g. trainable=und_encoder,und_aligner")


def with_overrides(settings, items: list[str], parser: argparse.ArgumentParser, field: str | None = None,
                   flag: str = "--set"):
    """``settings`` (a dataclass of per-stage settings) with ``STAGE.FIELD=VALUE`` changes (numbers >= 0),
    ``FIELD=VALUE`` for a numeric setting of the whole recipe (e.g. ``repa_weight=0``; >= 0 but for ``SIGNED``),
    ``FIELD=true|false`` for a switch of the whole recipe (e.g. ``final_eval=false``), ``FIELD=WORD`` for a
    choice of the whole recipe (e.g. ``negatives=edits``; checked where it is used), ``FIELD=A,B`` for a
    list of names (e.g. ``trainable=und_encoder,und_aligner``; empty: the default) and
    ``TABLE.KEY=VALUE`` for an entry of a table of numbers (e.g. ``und_form_weights.relation=3``); with
    ``field``, the items are ``STAGE=VALUE`` for that field (``--budget``: max_seconds, > 0)."""
    for item in items:
        key, _, text = item.partition("=")
        stage, _, name = (key, "", field) if field else key.partition(".")
        if not field and not name and _is_field_of_type(settings, stage, (bool,)):  # e.g. final_eval=false
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
            if value is None:
                parser.error(f"{flag} {item!r}: {stage} takes true or false")
            settings = dataclasses.replace(settings, **{stage: value})
            continue
        if not field and not name and _is_field_of_type(settings, stage, (list,)):  # e.g. trainable=und_encoder,und_aligner
            settings = dataclasses.replace(settings, **{stage: [part.strip() for part in text.split(",") if part.strip()]})
            continue
        if not field and not name and _is_field_of_type(settings, stage, (str,)):  # a word, e.g. negatives=edits
            settings = dataclasses.replace(settings, **{stage: text.strip()})
            continue
        if not field and not name and _is_field_of_type(settings, stage, (int, float)):  # a recipe-wide number
            value = _number(type(getattr(settings, stage)), stage, text, item, parser, flag, signed=stage in SIGNED)
            settings = dataclasses.replace(settings, **{stage: value})
            continue
        plan = getattr(settings, stage, None)
        if not field and name and isinstance(plan, dict):  # a table of numbers, e.g. und_form_weights.relation=3
            value = _number(float, name, text, item, parser, flag)
            settings = dataclasses.replace(settings, **{stage: {**plan, name: value}})
            continue
        known = {f.name for f in dataclasses.fields(plan)} if dataclasses.is_dataclass(plan) else set()
        if name not in known:
            form = f"STAGE={field.upper()}" if field else f"STAGE.FIELD=VALUE with FIELD one of {sorted(known) or '...'}"
            parser.error(f"{flag} {item!r}: expected {form} with STAGE a stage of this preset")
        value = _number(type(getattr(plan, name)), name, text, item, parser, flag,
                        positive=field == "max_seconds")  # a budget of 0 s would mean none
        settings = dataclasses.replace(settings, **{stage: dataclasses.replace(plan, **{name: value})})
    return settings


def _is_field_of_type(settings, name: str, types: tuple[type, ...]) -> bool:
    return (dataclasses.is_dataclass(settings) and name in {f.name for f in dataclasses.fields(settings)}
            and type(getattr(settings, name)) in types)


SIGNED = frozenset({"time_mean"})  # the recipe-wide numbers that may be negative


def _number(kind: type, name: str, text: str, item: str, parser: argparse.ArgumentParser, flag: str,
            positive: bool = False, signed: bool = False):
    """``text`` as a ``kind`` (int or float), >= 0 (> 0 when ``positive``, any finite number when ``signed``)."""
    try:
        value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or (value < 0 and not signed) or (positive and value == 0):
        bound = "" if signed else " > 0" if positive else " >= 0"
        parser.error(f"{flag} {item!r}: {name} takes a{' finite' if signed else ''} number{bound} ({kind.__name__})")
    return value


def stage_settings(settings, args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The preset's settings with the command line's ``--budget`` and ``--set`` changes."""
    settings = with_overrides(settings, args.budget, parser, field="max_seconds", flag="--budget")
    return with_overrides(settings, args.overrides, parser)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/recipe", help="checkpoints, logs, evaluations")
    parser.add_argument("--parts-dir", default=str(PARTS_DIR), help="where finished artifacts are copied")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {list(STAGES)}")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_runtime_arguments(parser)
    parser.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by N (background runs)")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)

    torch.set_num_threads(args.threads)
    settings = stage_settings(PRESETS[args.preset], args, parser)
    runtime = Runtime(args.device, args.data_workers)
    run_dir, parts_dir = Path(args.run_dir), Path(args.parts_dir)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    for name in stages:
        if (run_dir / name / "DONE.json").is_file():
            _log(name, f"already done ({run_dir / name / 'DONE.json'}); skipped")
            continue
        _log(name, "starting")
        STAGES[name](settings, run_dir, parts_dir, runtime)


if __name__ == "__main__":
    main()
