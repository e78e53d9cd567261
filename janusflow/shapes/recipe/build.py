"""``janusflow recipe shapes``: the embedded model from nothing, every stage in order, resumable.

    OUT/config.yaml          the resolved recipe (a rerun must resolve to the same, or it is refused)
    OUT/sessions.jsonl       one line a session: command line, device, what ran, how it ended
    OUT/recipe.json          the summary: seed, sessions, per stage its status, wall time and result, scores
    OUT/parts/               vae/, tokenizer/, und_encoder/, llm/ (parts 1-3)
    OUT/stages/NAME/         a stage's run: checkpoints, log.csv, eval.jsonl, exports, DONE.json, wall.json
    OUT/model/               the assembled model (what ships), with eval_shapes*.json and recipe.json
    OUT/eval/best_of_N/      the final evaluation's images and answers

A stage is done when its DONE.json exists; done stages are skipped, so rerunning the same command
continues a stopped run (a trained stage from its newest checkpoint). A session may stop early on
purpose: after a stage (``until``), at a deadline (``time_limit``: the training in progress writes a
checkpoint and stops), or on Ctrl-C / SIGTERM. ``only`` runs some stages alone (their inputs done),
e.g. two in two processes at once on one GPU. recipe/pack.py carries a run folder to another machine.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import ConfigError
from .config import PARTS, RecipeConfig, from_data, stage_seed, to_data
from .run import Runtime, Stopped, log, past, read_json, write_json

PART_FOLDERS = {"vae": "vae", "tokenizer": "tokenizer", "siglip": "und_encoder", "lm": "llm"}
MODEL = "model"


@dataclass
class Session:
    """How this invocation runs the recipe; none of it changes what the recipe makes."""

    device: str = "auto"
    data_workers: int = 0
    time_limit: float | None = None  # seconds of this session
    until: str | None = None  # stop after this stage
    only: list[str] = field(default_factory=list)  # run just these stages
    redo: str | None = None  # forget this stage and every later one first
    command: str = ""  # the command line, for the record


def stage_dir(out: Path, name: str) -> Path:
    return out / "stages" / name


def done_record(out: Path, name: str) -> dict[str, Any] | None:
    path = stage_dir(out, name) / "DONE.json"
    return read_json(path) if path.is_file() else None


def model_dir(out: Path, name: str) -> Path:
    """The model folder a finished janusflow or soup stage left."""
    record = done_record(out, name)
    if record is None:
        raise FileNotFoundError(f"the {name} stage has not finished")
    return stage_dir(out, name) / record["model"]


# -- the run folder -----------------------------------------------------------------------------------


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r} then, {b!r} now"


def prepare(out: Path, config: RecipeConfig) -> None:
    """``out`` holds this recipe: new, or made by the same resolved config."""
    out.mkdir(parents=True, exist_ok=True)
    path, data = out / "config.yaml", to_data(config)
    if path.is_file():
        before = yaml.safe_load(path.read_text(encoding="utf-8"))
        diff = first_difference(before, data)
        if diff:
            raise ConfigError(f"{out} was started with another recipe ({diff}); run the same config and --set "
                              "again, or use another --out")
        return
    tmp = path.with_name(f".config.yaml.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def stored_config(out: Path) -> RecipeConfig:
    return from_data(yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")))


def forget(out: Path, config: RecipeConfig, name: str) -> None:
    """Remove ``name``'s results and those of every later stage (``--redo``)."""
    order = config.order
    for later in order[order.index(name):]:
        shutil.rmtree(stage_dir(out, later), ignore_errors=True)
        spec = config.stages.get(later)
        if spec is not None and spec.kind in PART_FOLDERS:
            shutil.rmtree(out / "parts" / PART_FOLDERS[spec.kind], ignore_errors=True)
    if "assemble" in order[order.index(name):]:
        shutil.rmtree(out / MODEL, ignore_errors=True)
    shutil.rmtree(out / "eval", ignore_errors=True)


def device_name(runtime: Runtime) -> str:
    import torch

    from ...pipeline import resolve_device

    device = resolve_device(None if runtime.device == "auto" else runtime.device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda, bf16 autocast)"
    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads (fp32)")


# -- the stages ---------------------------------------------------------------------------------------


def run_stage(out: Path, config: RecipeConfig, name: str, runtime: Runtime, deadline: float | None) -> dict[str, Any]:
    """Run one stage to its end; returns its record (written to DONE.json by the caller)."""
    import torch

    from . import run, unified

    seed = stage_seed(config.seed, name)
    sdir, parts = stage_dir(out, name), out / "parts"
    if name == "assemble":
        from .assemble import assemble

        return assemble(model_dir(out, config.model_stage()), out / MODEL)
    if name == "eval":
        return evaluate(out, config, runtime)
    spec = config.stages[name]
    torch.manual_seed(seed)  # whatever a stage initialises, it does so alike in every session
    size = config.model.parts
    if spec.kind == "vae":
        return run.build_vae(spec, size, config.parts, sdir, parts / "vae", seed, runtime, deadline)
    if spec.kind == "tokenizer":
        return run.build_tokenizer(config.model.vocab_size, config.parts.corpus_scenes, parts / "tokenizer")
    if spec.kind == "siglip":
        return run.build_siglip(spec, size, config.parts, sdir, parts / "und_encoder", parts / "tokenizer", seed,
                                runtime, deadline)
    if spec.kind == "lm":
        return run.build_lm(spec, size, config.parts, sdir, parts / "llm", parts / "tokenizer", seed, runtime, deadline)
    if spec.kind == "soup":
        from .soup import soup

        soup([model_dir(out, m) for m in spec.models], sdir / MODEL, spec.weights or None)
        return {"model": MODEL, "models": spec.models, "weights": spec.weights or [1.0] * len(spec.models)}
    # janusflow
    carry = None
    if spec.start == PARTS:
        start = sdir / "init"
        if not (start / "config.json").is_file():
            unified.write_init(parts, start, config.model.gen_channels, config.model.gen_layers, seed,
                               config.model.und_encoder)
    else:
        start = model_dir(out, spec.start)
        carry = stage_dir(out, spec.start) if spec.carry_repa else None
    export, last = unified.run_stage(name, spec.phase, spec, config.stage_training(name), start, sdir, seed,
                                     carry, runtime, deadline)
    return {"model": export.name, "start": spec.start, "train": last}


def evaluate(out: Path, config: RecipeConfig, runtime: Runtime) -> dict[str, Any]:
    """``janusflow eval shapes`` of the assembled model, once per ``evaluation.candidates`` entry; the
    model's default is kept as ``eval_shapes.json``, the others as ``eval_shapes_best_of_N.json``."""
    from ..eval_run import evaluate_shapes
    from .assemble import GENERATION, RESULTS

    e, record = config.evaluation, {}
    device = None if runtime.device == "auto" else runtime.device
    for n in e.candidates:
        name = RESULTS if n == GENERATION.candidates else f"eval_shapes_best_of_{n}.json"
        results = evaluate_shapes(out / MODEL, out / "eval" / f"best_of_{n}", e.prompts, e.images, e.questions,
                                  seed=e.seed, device=device, show_progress=False, candidates=n,
                                  latency_repeats=e.latency_repeats)
        results["model"] = MODEL
        write_json(out / MODEL / name, results)
        record[f"best_of_{n}"] = {"file": name, "generation": results["generation"],
                                  "understanding": results["understanding"],
                                  "device": results["settings"]["device"], "dtype": results["settings"]["dtype"],
                                  "seconds_per_image": results["timing"]["generation"]["wall_seconds_per_image"],
                                  "cpu_seconds_per_image": results["timing"]["generation"]["cpu_seconds_per_image"]}
    return record


def add_wall(out: Path, name: str, seconds: float) -> float:
    path = stage_dir(out, name) / "wall.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    total = (read_json(path)["seconds"] if path.is_file() else 0.0) + seconds
    write_json(path, {"seconds": round(total, 1)})
    return total


# -- the summary --------------------------------------------------------------------------------------


def summary(out: Path, config: RecipeConfig) -> dict[str, Any]:
    """recipe.json: what the folder holds, rebuilt from the stages' own files (so two processes running
    stages side by side cannot lose each other's records)."""
    import json

    sessions = []
    if (out / "sessions.jsonl").is_file():
        sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text(encoding="utf-8").splitlines() if line]
    stages = {}
    for name in config.order:
        record, wall = done_record(out, name), stage_dir(out, name) / "wall.json"
        seconds = read_json(wall)["seconds"] if wall.is_file() else 0.0
        kind = config.stages[name].kind if name in config.stages else name
        status = "done" if record is not None else "started" if stage_dir(out, name).is_dir() else "pending"
        stages[name] = {"kind": kind, "status": status, "seed": stage_seed(config.seed, name),
                        "wall_seconds": seconds, **({"result": record} if record is not None else {})}
    scores = (done_record(out, "eval") or {})
    return {"recipe": "shapes", "seed": config.seed, "complete": all(s["status"] == "done" for s in stages.values()),
            "wall_seconds": round(sum(s["wall_seconds"] for s in stages.values()), 1),
            "scores": {k: {"generation": v["generation"], "understanding": v["understanding"]} for k, v in scores.items()},
            "sessions": sessions, "stages": stages, "config": to_data(config)}


def write_summary(out: Path, config: RecipeConfig) -> dict[str, Any]:
    record = summary(out, config)
    write_json(out / "recipe.json", record)
    if (out / MODEL / "config.json").is_file():
        write_json(out / MODEL / "recipe.json", record)
    return record


# -- a session ----------------------------------------------------------------------------------------


def targets(config: RecipeConfig, session: Session, out: Path) -> list[str]:
    order = config.order
    for name in [session.until, session.redo, *session.only]:
        if name is not None and name not in order:
            raise ConfigError(f"no stage {name!r}; the stages are {', '.join(order)}")
    if session.only:
        for name in session.only:
            missing = [n for n in config.needs(name) if done_record(out, n) is None and n not in session.only]
            if missing:
                raise ConfigError(f"{name} needs {', '.join(missing)} first")
        return [n for n in order if n in session.only]
    return order[:order.index(session.until) + 1] if session.until else order


def run_recipe(config: RecipeConfig, out: str | os.PathLike, session: Session | None = None) -> dict[str, Any]:
    """Run (or continue) the recipe in ``out``; returns recipe.json's record. A stop before the end
    (``until``, the time limit, Ctrl-C) is not an error: the record says what is left."""
    session = session or Session()
    out = Path(os.fspath(out))
    deadline = time.monotonic() + session.time_limit if session.time_limit else None
    prepare(out, config)
    if session.redo:
        targets(config, session, out)  # the name is a stage
        forget(out, config, session.redo)
    todo = targets(config, session, out)
    runtime = Runtime(session.device, session.data_workers)
    started, ran, ended = time.time(), [], "failed"
    previous = _stop_on_sigterm()
    try:
        for name in todo:
            if done_record(out, name) is not None:
                log(name, "done already; skipped")
                continue
            if past(deadline):
                raise Stopped(f"the session's time is up before {name}")
            log(name, "starting")
            ran.append(name)
            clock = time.perf_counter()
            try:
                record = run_stage(out, config, name, runtime, deadline)
            finally:
                wall = add_wall(out, name, time.perf_counter() - clock)
            write_json(stage_dir(out, name) / "DONE.json", record)
            log(name, f"done ({wall:.0f} s in all)")
            write_summary(out, config)
        ended = "done"
        if session.only:
            ended = f"done with {', '.join(todo)} (--only)"
        elif session.until and session.until != config.order[-1]:
            ended = f"stopped after {session.until} (--until)"
    except Stopped as e:
        ended = f"stopped: {e}"
        log("session", f"{ended}; run the same command again to continue")
    except KeyboardInterrupt:
        ended = "interrupted"
        raise
    except Exception as e:
        ended = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        raise
    finally:
        import json

        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        line = {"command": session.command, "started": datetime.datetime.fromtimestamp(started).isoformat(
            timespec="seconds"), "seconds": round(time.time() - started, 1), "device": device_name(runtime),
            "data_workers": runtime.data_workers, "python": sys.version.split()[0], "torch": _torch_version(),
            "ran": ran, "ended": ended}
        with open(out / "sessions.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        record = write_summary(out, config)
    return record


def _stop_on_sigterm():
    """SIGTERM (a lease's `timeout`) ends the session as a stop, recorded, rather than a kill. The
    trainer installs its own handler while it trains (checkpoint first) and puts this one back."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Stopped("SIGTERM")

    return signal.signal(signal.SIGTERM, handler)


def _torch_version() -> str:
    import torch

    return torch.__version__


def describe(config: RecipeConfig, out: Path | None = None) -> str:
    """A table of the stages: kind, steps x batch, inputs, and (with ``out``) status."""
    lines = [f"{'stage':<12} {'kind':<10} {'steps x batch':<16} {'reads':<24} status"]
    for name in config.order:
        spec = config.stages.get(name)
        size = f"{spec.steps} x {spec.batch_size}" if spec is not None and spec.steps else ""
        status = ""
        if out is not None:
            status = "done" if done_record(out, name) is not None else "started" if stage_dir(out, name).is_dir() else ""
        lines.append(f"{name:<12} {spec.kind if spec else name:<10} {size:<16} {','.join(config.needs(name)):<24} {status}")
    return "\n".join(lines)

