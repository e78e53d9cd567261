"""A trained stage of the recipe, and the parts 1-3 (VAE, tokenizer, SigLIP, LM).

:func:`train_stage` runs the shared trainer (`janusflow.train.Trainer`) in segments of ``segment``
steps under STAGE_DIR: each segment resumes from the newest checkpoint, trains, exports the weights
(EMA and raw) and evaluates both on fresh data (STAGE_DIR/eval.jsonl, STAGE_DIR/progress.json). A
stage finishes when its evaluation meets its target (not before ``min_steps``) or its step budget is
spent. Stop it at any moment (Ctrl-C or SIGTERM writes a checkpoint first; so does the session's
deadline, :class:`Stopped`) and run it again to continue: batch ``step`` is a pure function of the
stage's seed and ``step``, so the continued run is the run that was not stopped.

    vae        AutoencoderKL on fresh scenes                    -> parts/vae/ (fp16)
    tokenizer  byte-level BPE on the world's text (seconds)     -> parts/tokenizer/
    siglip     SigLIP image tower vs a small text tower         -> parts/und_encoder/ (fp16)
    lm         Llama LM on the world's text                     -> parts/llm/ (fp16)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .assemble import folder_mb

Metric = dict[str, float]


class Stopped(Exception):
    """The session ended before the stage did (its deadline, Ctrl-C, SIGTERM); a checkpoint holds
    where it was, and running the recipe again continues from there."""


@dataclass
class Runtime:
    """Where a stage runs; changes the speed, not the recipe (a run is the same with any number of
    data workers, and a stage resumes on another device)."""

    device: str = "auto"  # "auto": CUDA when available (bf16 autocast), else the CPU (fp32)
    data_workers: int = 0  # processes building the next batches (janusflow.train.prefetch)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Atomically (two processes running stages side by side may write the same summary)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def log(stage: str, text: str) -> None:
    print(f"[recipe {stage}] {text}", flush=True)


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


@contextmanager
def stop_at(deadline: float | None, trainer) -> Iterator[None]:
    """Ask ``trainer`` to stop (finish the step, checkpoint, return) once ``deadline`` (monotonic) passes.
    The request is repeated until the run returns: the trainer rewrites its flag every step."""
    if deadline is None:
        yield
        return
    done = threading.Event()

    def request() -> None:
        if not done.wait(max(0.0, deadline - time.monotonic())):
            while not done.wait(0.05):
                trainer.stop_requested = True

    watcher = threading.Thread(target=request, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def best_export(stage_dir: Path, evaluate: Callable[[Path], Metric], key: str, tiebreak: str | None = None) -> Metric:
    """Evaluate the EMA export and the raw one; return the better's metrics by `key`, then
    `tiebreak`, with "weights" naming its folder (the EMA on a tie). (Early on the EMA still carries much
    of the initial weights: decay 0.999 keeps 0.999^n of them after n steps, without bias correction.)"""
    found = [{**evaluate(stage_dir / name), "weights": name}
             for name in ("export", "export-raw") if (stage_dir / name).is_dir()]
    return max(found, key=lambda m: (m[key], m[tiebreak] if tiebreak else 0.0))


def train_stage(name: str, task, spec, stage_dir: Path, evaluate: Callable[[Path], Metric], key: str,
                resolved: dict[str, Any], tiebreak: str | None = None, runtime: Runtime | None = None,
                deadline: float | None = None) -> tuple[Path, Metric]:
    """Train ``task`` in segments until eval[key] >= spec.target (and step >= spec.min_steps) or
    spec.steps are done; ``spec`` is a ``config.StageSpec``. Returns the chosen export folder and its
    evaluation; raises :class:`Stopped` when stopped before."""
    from ...train import Trainer, TrainerConfig

    runtime = runtime or Runtime()
    stage_dir.mkdir(parents=True, exist_ok=True)
    progress_path = stage_dir / "progress.json"
    progress = read_json(progress_path) if progress_path.is_file() else {"train_seconds": 0.0, "evals": []}
    segment = spec.segment or spec.steps
    while True:
        last = progress["evals"][-1] if progress["evals"] else None
        reached = last is not None and last[key] >= spec.target and last["step"] >= spec.min_steps
        if last is not None and (reached or last["step"] >= spec.steps):
            return stage_dir / last.get("weights", "export"), last
        if past(deadline):
            raise Stopped(f"{name}: the session's time is up at step {last['step'] if last else 0}")
        done = last["step"] if last else 0
        goal = min(spec.steps, (done // segment + 1) * segment)
        config = TrainerConfig(
            run_dir=str(stage_dir), steps=goal, lr=spec.lr, warmup_steps=spec.warmup_steps,
            decay_steps=spec.decay_steps, schedule_steps=spec.steps, ema_decay=spec.ema_decay,
            save_every=spec.save_every, log_every=10, progress=False, device=runtime.device,
            data_workers=runtime.data_workers)
        trainer = Trainer(task, config, resolved_config={**resolved, "trainer": dataclasses.asdict(config)})
        start = time.perf_counter()
        with stop_at(deadline, trainer):
            result = trainer.fit()
        progress["train_seconds"] += time.perf_counter() - start
        write_json(progress_path, progress)
        if result["stopped"]:
            raise Stopped(f"{name}: stopped at step {result['step']}")
        start = time.perf_counter()
        metrics = {"step": goal, "train_seconds": round(progress["train_seconds"], 1),
                   **best_export(stage_dir, evaluate, key, tiebreak)}
        metrics["eval_seconds"] = round(time.perf_counter() - start, 1)
        progress["evals"].append(metrics)
        write_json(progress_path, progress)
        with open(stage_dir / "eval.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        log(name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


# -- parts 1-3 ------------------------------------------------------------------------------------
# Each returns its record (the stage's DONE.json); its part goes to part_dir, in fp16 but the tokenizer.


def build_vae(spec, size: str, scenes, stage_dir: Path, part_dir: Path, seed: int, runtime: Runtime | None = None,
              deadline: float | None = None) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    from .vae import TINY_VAE, VAEConfig, VAETask, evaluate_vae

    cfg = TINY_VAE if size == "tiny" else VAEConfig()
    task = VAETask(cfg, batch_size=spec.batch_size, seed=seed, scale_scenes=scenes.scale_scenes)

    def evaluate(export: Path) -> Metric:
        vae = AutoencoderKL.from_pretrained(export)
        return {**evaluate_vae(vae, scenes.eval_scenes), "scaling_factor": vae.config.scaling_factor}

    resolved = {"stage": "vae", "vae": dataclasses.asdict(cfg), "spec": dataclasses.asdict(spec)}
    export, last = train_stage("vae", task, spec, stage_dir, evaluate, "read_exact", resolved, tiebreak="psnr",
                               runtime=runtime, deadline=deadline)
    # keep fp16 weights; evaluate exactly what is kept (loaded back in fp32) on more fresh scenes
    shutil.rmtree(part_dir, ignore_errors=True)
    AutoencoderKL.from_pretrained(export, torch_dtype=torch.float16).save_pretrained(part_dir)
    kept = AutoencoderKL.from_pretrained(part_dir, torch_dtype=torch.float32)
    start = time.perf_counter()
    final = evaluate_vae(kept, scenes.final_eval_scenes, seed=20_000_003)
    final["seconds_per_image"] = (time.perf_counter() - start) / scenes.final_eval_scenes
    return {"train": last, "kept_fp16": final, "scaling_factor": kept.config.scaling_factor,
            "parameters": sum(p.numel() for p in kept.parameters()), "size_mb": round(folder_mb(part_dir), 2)}


def build_tokenizer(vocab_size: int, corpus_scenes: int, part_dir: Path) -> dict[str, Any]:
    from ...tokenizer_build import build_tokenizer as build
    from .corpus import tokenizer_corpus

    shutil.rmtree(part_dir, ignore_errors=True)
    tokenizer = build(tokenizer_corpus(num_scenes=corpus_scenes), vocab_size, part_dir)
    return {"vocab_size": len(tokenizer)}


def load_tokenizer(part_dir: Path):
    from transformers import AutoTokenizer

    if not part_dir.is_dir():
        raise FileNotFoundError(f"{part_dir} is missing: the tokenizer stage has not run")
    return AutoTokenizer.from_pretrained(part_dir)


def build_siglip(spec, size: str, scenes, stage_dir: Path, part_dir: Path, tokenizer_dir: Path, seed: int,
                 runtime: Runtime | None = None, deadline: float | None = None) -> dict[str, Any]:
    from transformers import SiglipTextModel, SiglipVisionModel

    from .siglip import SiglipConfig, SiglipTask, evaluate_siglip, tiny_siglip

    tokenizer = load_tokenizer(tokenizer_dir)
    cfg = tiny_siglip() if size == "tiny" else SiglipConfig()
    task = SiglipTask(tokenizer, cfg, batch_size=spec.batch_size, seed=seed)

    def evaluate(export: Path) -> Metric:
        # the exported weights, in a fresh pair
        pair = SiglipTask(tokenizer, cfg, batch_size=spec.batch_size).module
        pair.vision = SiglipVisionModel.from_pretrained(export / "und_encoder")
        pair.text = SiglipTextModel.from_pretrained(export / "text_tower")
        head = read_json(export / "siglip_head.json")
        with torch.no_grad():
            pair.log_temperature.fill_(float(np.log(head["temperature"])))
            pair.bias.fill_(head["bias"])
        return {**evaluate_siglip(pair, tokenizer, scenes.eval_scenes), **head}

    resolved = {"stage": "siglip", "siglip": dataclasses.asdict(cfg), "spec": dataclasses.asdict(spec)}
    export, last = train_stage("siglip", task, spec, stage_dir, evaluate, "describe_top1", resolved,
                               tiebreak="prompt_bal_acc", runtime=runtime, deadline=deadline)
    shutil.rmtree(part_dir, ignore_errors=True)
    SiglipVisionModel.from_pretrained(export / "und_encoder").to(torch.float16).save_pretrained(part_dir)
    return {"train": last, "vision": dataclasses.asdict(cfg.vision), "size_mb": round(folder_mb(part_dir), 2),
            "parameters": sum(p.numel() for p in task.module.vision.parameters())}


def build_lm(spec, size: str, scenes, stage_dir: Path, part_dir: Path, tokenizer_dir: Path, seed: int,
             runtime: Runtime | None = None, deadline: float | None = None) -> dict[str, Any]:
    from transformers import LlamaForCausalLM

    from .lm import LMTask, default_language, evaluate_lm, tiny_language

    tokenizer = load_tokenizer(tokenizer_dir)
    cfg = (tiny_language if size == "tiny" else default_language)(len(tokenizer))
    task = LMTask(tokenizer, cfg, batch_size=spec.batch_size, seed=seed)

    def evaluate(export: Path) -> Metric:
        return evaluate_lm(LlamaForCausalLM.from_pretrained(export), tokenizer, scenes.eval_scenes)

    resolved = {"stage": "lm", "language": dataclasses.asdict(cfg), "spec": dataclasses.asdict(spec)}
    export, last = train_stage("lm", task, spec, stage_dir, evaluate, "qa_acc", resolved, runtime=runtime,
                               deadline=deadline)
    shutil.rmtree(part_dir, ignore_errors=True)
    LlamaForCausalLM.from_pretrained(export).to(torch.float16).save_pretrained(part_dir)
    return {"train": last, "language": dataclasses.asdict(cfg), "size_mb": round(folder_mb(part_dir), 2),
            "parameters": sum(p.numel() for p in task.module.parameters())}
