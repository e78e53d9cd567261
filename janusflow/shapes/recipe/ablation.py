"""The paper's ablations (JanusFlow, Table 6) on the shapes world: arms of the recipe, seeds, curves.

    recipe: ../recipe/shapes.yaml     # every arm is this recipe (a path relative to the ablation file) ...
    changes: {stages: {unified: {steps: 1000}}}   # ... with these changes (every arm: the same budget) ...
    stage: unified                    # ... run up to this stage (no assembly, no final evaluation)
    arms:                             # ... and each arm's own changes
      repa:    {}
      no_repa: {training: {repa_weight: 0}}
    metrics: [gen_overall, und_overall]  # the curves and the table (keys of unified.quick_eval)
    seeds: [0, 1, 2]

``janusflow ablation shapes --config configs/ablations/repa.yaml --out DIR`` runs every arm at every
seed with the recipe's own machinery (``build.run_recipe``: resumable, a folder a run), in
``DIR/ARM/seedS``. The parts (VAE, tokenizer, SigLIP, LM) are the arms' common ground: they are
built once a seed (in the first arm's folder) and copied into the other arms' folders, or, with
``parts=DIR``, taken from a parts folder or a model folder (its LLM, SigLIP, VAE and tokenizer;
:func:`parts_from_model`), so only the JanusFlow stages differ. The curves are the JanusFlow stages'
evaluations (``stages/NAME/eval.jsonl``, one a segment), their steps counted from the first JanusFlow
stage. :func:`collect` writes ``DIR/NAME.json``, ``DIR/NAME.md`` (the table) and ``DIR/NAME.png`` (the
curves), NAME the ablation file's stem. Ablations run into one ``DIR`` share their identical arms (an arm
of the same name and the same resolved recipe runs once: ``repa`` is also the unified arm of ``tasks``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...train.config import build
from .build import PART_FOLDERS, Session, done_record, prepare, run_recipe, stage_dir, stored_config
from .config import PART_KINDS, RecipeConfig, apply_overrides, from_data, merge, read_yaml
from .run import log, read_json, write_json


@dataclass
class AblationConfig:
    recipe: str  # the recipe every arm starts from, relative to the ablation file
    stage: str  # the arms run up to this janusflow stage
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> recipe changes
    changes: dict[str, Any] = field(default_factory=dict)  # recipe changes for every arm (before the arm's)
    metrics: list[str] = field(default_factory=lambda: ["gen_overall", "und_overall"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # training losses (log.csv columns: rf the flow loss, ce_und the answers' cross-entropy, repa ...), each
    # averaged over the last quarter of the steps: at scales too small for the scores to move, the losses do
    train_metrics: list[str] = field(default_factory=lambda: ["rf", "ce_und"])
    question: str = ""  # what the ablation asks, for the table


def load_ablation(path: str | os.PathLike) -> tuple[AblationConfig, Path]:
    """The ablation of ``path`` (``base:`` chains allowed) and the recipe file it names."""
    path = Path(os.fspath(path)).resolve()
    ablation = build(AblationConfig, read_yaml(path), "ablation")
    if not ablation.arms:
        raise ConfigError("ablation.arms: no arm (an arm is a name and its recipe changes)")
    if not ablation.seeds or not ablation.metrics:
        raise ConfigError("ablation: seeds and metrics must not be empty")
    return ablation, path.parent / ablation.recipe


def arm_config(ablation: AblationConfig, recipe: Path, arm: str, seed: int, overrides: list[str] = ()) -> RecipeConfig:
    """The resolved recipe of one arm at one seed (``overrides``: ``key=value`` for every arm)."""
    data = merge(merge(read_yaml(recipe), ablation.changes), ablation.arms[arm] or {})
    config = from_data(apply_overrides(data, [*overrides, f"seed={seed}"]))
    if ablation.stage not in config.stages or config.stages[ablation.stage].kind != "janusflow":
        raise ConfigError(f"ablation.stage: {ablation.stage!r} is not a janusflow stage of arm {arm}")
    return config


def common_ground(config: RecipeConfig) -> dict[str, Any]:
    """What the arms must share so they can share their parts."""
    stages = {n: dataclasses.asdict(s) for n, s in config.stages.items() if s.kind in PART_KINDS}
    return {"seed": config.seed, "parts": dataclasses.asdict(config.parts), "stages": stages,
            "sizes": [config.model.parts, config.model.vocab_size]}


def janusflow_stages(config: RecipeConfig, until: str) -> list[str]:
    names = [n for n in config.stages if config.stages[n].kind == "janusflow"]
    return names[:names.index(until) + 1]


# -- the parts ----------------------------------------------------------------------------------------


def parts_from_model(model_dir: Path, parts_dir: Path) -> Path:
    """A parts folder (llm/, und_encoder/, vae/, tokenizer/) of a JanusFlow model folder: its LLM,
    SigLIP tower, VAE and tokenizer, in fp32 (the JanusFlow modules around them are not kept)."""
    from transformers import AutoTokenizer

    from ...modeling import JanusFlowModel

    if (parts_dir / "llm" / "config.json").is_file():
        return parts_dir
    tmp = parts_dir.with_name(parts_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = JanusFlowModel.from_pretrained(model_dir)
    model.language_model.save_pretrained(tmp / "llm")
    model.und_encoder.siglip.save_pretrained(tmp / "und_encoder")
    shutil.copytree(model_dir / "vae", tmp / "vae")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp / "tokenizer")
    shutil.rmtree(parts_dir, ignore_errors=True)
    tmp.rename(parts_dir)
    return parts_dir


def import_parts(source: Path, run_dir: Path, config: RecipeConfig, origin: str) -> None:
    """Mark ``run_dir``'s part stages done with the parts of ``source`` (a parts folder, or a run
    folder whose part stages are done: their records come along)."""
    prepare(run_dir, config)
    is_run = (source / "config.yaml").is_file()
    for name, spec in config.stages.items():
        if spec.kind not in PART_KINDS or done_record(run_dir, name) is not None:
            continue
        folder = PART_FOLDERS[spec.kind]
        src = (source / "parts" if is_run else source) / folder
        if not (src / ("tokenizer.json" if spec.kind == "tokenizer" else "config.json")).is_file():
            raise ConfigError(f"{src}: no {spec.kind} part to take")
        shutil.rmtree(run_dir / "parts" / folder, ignore_errors=True)
        shutil.copytree(src, run_dir / "parts" / folder)
        record = done_record(source, name) if is_run else None
        stage_dir(run_dir, name).mkdir(parents=True, exist_ok=True)
        write_json(stage_dir(run_dir, name) / "DONE.json", {**(record or {}), "imported_from": origin})


# -- the run ------------------------------------------------------------------------------------------


def run_ablation(config_path: str | os.PathLike, out: str | os.PathLike, seeds: list[int] | None = None,
                 overrides: list[str] = (), parts: str | os.PathLike | None = None,
                 session: Session | None = None, deadline: float | None = None) -> dict[str, Any]:
    """Every arm at every seed up to ``ablation.stage`` (resumable: rerun to continue), then
    :func:`collect`. ``deadline`` (``time.monotonic()``): the session ends there, the run in training
    checkpointing first; a run that stops early stops the whole ablation there."""
    import time

    ablation, recipe = load_ablation(config_path)
    out = Path(os.fspath(out))
    out.mkdir(parents=True, exist_ok=True)
    session = session or Session()
    seeds = list(seeds) if seeds else ablation.seeds
    shared = None
    if parts is not None:
        parts = Path(os.fspath(parts))
        shared = parts if (parts / "llm").is_dir() else parts_from_model(parts, out / "parts")
    for seed in seeds:
        configs = {arm: arm_config(ablation, recipe, arm, seed, list(overrides)) for arm in ablation.arms}
        first = next(iter(configs))
        for arm, config in configs.items():
            if common_ground(config) != common_ground(configs[first]):
                raise ConfigError(f"arm {arm} changes the parts; the arms of an ablation share them")
        for arm, config in configs.items():
            run_dir = out / arm / f"seed{seed}"
            prepare(run_dir, config)  # a folder run with another recipe is refused, naming the difference
            if done_record(run_dir, ablation.stage) is not None:
                continue
            if shared is not None:
                import_parts(shared, run_dir, config, str(shared))
            elif arm != first:
                import_parts(out / first / f"seed{seed}", run_dir, config, f"{first}/seed{seed}")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                log("ablation", "the session's time is up; run the same command again to continue")
                return collect(config_path, out)
            log("ablation", f"arm {arm}, seed {seed}")
            run_recipe(config, run_dir, dataclasses.replace(session, until=ablation.stage, time_limit=left))
            if done_record(run_dir, ablation.stage) is None:
                log("ablation", f"stopped in arm {arm}, seed {seed}; run the same command again to continue")
                return collect(config_path, out)
    return collect(config_path, out)


# -- the results --------------------------------------------------------------------------------------


def curves(run_dir: Path, stages: list[str], metric: str) -> list[tuple[float, float]]:
    """(step, metric) of each evaluation of ``stages`` (steps counted from the first one's start)."""
    points, offset = [], 0
    config = read_json(run_dir / "recipe.json")["config"] if (run_dir / "recipe.json").is_file() else None
    for name in stages:
        path = stage_dir(run_dir, name) / "eval.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if metric in row:
                    points.append((offset + row["step"], float(row[metric])))
        offset += config["stages"][name]["steps"] if config else 0
    return points


def late_loss(run_dir: Path, stage: str, column: str) -> float | None:
    """The mean of ``column`` of the stage's log.csv over its last quarter of logged steps."""
    import csv

    path = stage_dir(run_dir, stage) / "log.csv"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        values = [float(r[column]) for r in csv.DictReader(f) if r.get(column) not in (None, "")]
    tail = values[len(values) - max(1, len(values) // 4):]
    return sum(tail) / len(tail) if values else None


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def collect(config_path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """NAME.json (every curve; per arm and metric the last evaluation's and the curve's mean over
    seeds, with their standard deviation), NAME.md and NAME.png of the runs found in ``out``."""
    from .curves import draw_curves

    ablation, _ = load_ablation(config_path)
    out = Path(os.fspath(out))
    result: dict[str, Any] = {"question": ablation.question, "stage": ablation.stage, "metrics": ablation.metrics,
                              "train_metrics": ablation.train_metrics, "arms": {}}
    panels: dict[str, dict[str, list]] = {m: {} for m in ablation.metrics}
    for arm in ablation.arms:
        runs = sorted((p for p in (out / arm).glob("seed*") if (p / "config.yaml").is_file()),
                      key=lambda p: int(p.name[4:]))
        entry: dict[str, Any] = {"seeds": {}, "final": {}, "curve_mean": {}, "steps": None}
        for run_dir in runs:
            config = stored_config(run_dir)  # as it ran (with any --set)
            stages = janusflow_stages(config, ablation.stage)
            entry["steps"] = sum(config.stages[n].steps for n in stages)
            entry["batch_sizes"] = [config.stages[n].batch_size for n in stages]
            entry["seeds"][run_dir.name] = {m: curves(run_dir, stages, m) for m in ablation.metrics}
            if done_record(run_dir, ablation.stage) is not None:
                for m in ablation.train_metrics:
                    value = late_loss(run_dir, ablation.stage, m)
                    if value is not None:
                        entry.setdefault("train_late", {}).setdefault(m, []).append(value)
                        entry.setdefault("per_seed", {}).setdefault(run_dir.name, {})[f"train {m}"] = value
        for m in ablation.metrics:
            found = [c[m] for c in entry["seeds"].values() if c[m] and c[m][-1][0] >= (entry["steps"] or 0)]
            panels[m][arm] = found  # finished runs only: a run still in training would bend the mean
            finished = [c[-1][1] for c in found]
            for seed, c in entry["seeds"].items():
                if c[m] and c[m][-1][0] >= (entry["steps"] or 0):
                    row = entry.setdefault("per_seed", {}).setdefault(seed, {})
                    row[f"{m} (last)"], row[f"{m} (curve mean)"] = c[m][-1][1], sum(y for _, y in c[m]) / len(c[m])
            if finished:
                entry["final"][m] = [*_mean_sd(finished), len(finished)]
                entry["curve_mean"][m] = [*_mean_sd([sum(y for _, y in c) / len(c) for c in found]), len(finished)]
        entry["train_late"] = {m: [*_mean_sd(v), len(v)] for m, v in entry.get("train_late", {}).items()}
        result["arms"][arm] = entry
    result["paired"] = paired(result)
    name = Path(config_path).stem
    write_json(out / f"{name}.json", result)
    (out / f"{name}.md").write_text(table(result, ablation.metrics, ablation.train_metrics) + "\n"
                                    + paired_table(result), encoding="utf-8")
    if any(curves for by_arm in panels.values() for curves in by_arm.values()):
        draw_curves(panels, out / f"{name}.png", title=f"{name}: {ablation.question}")
    return result


def table(result: dict[str, Any], metrics: list[str], train_metrics: list[str] = ()) -> str:
    """Markdown: per arm the last evaluation (mean +- sd over seeds, n), the curve's mean, and the
    training losses over the compared stage's last quarter."""
    head = ("| arm | steps | " + " | ".join(f"{m} (last) | {m} (curve mean)" for m in metrics)
            + "".join(f" | train {m} (last quarter)" for m in train_metrics) + " |")
    lines = [head, "|" + "---|" * (2 + 2 * len(metrics) + len(train_metrics))]
    for arm, e in result["arms"].items():
        cells = []
        for m in metrics:
            for key in ("final", "curve_mean"):
                v = e[key].get(m)
                cells.append(f"{v[0]:.3f} ± {v[1]:.3f} (n={v[2]})" if v else "-")
        for m in train_metrics:
            v = e.get("train_late", {}).get(m)
            cells.append(f"{v[0]:.4f} ± {v[1]:.4f} (n={v[2]})" if v else "-")
        lines.append(f"| {arm} | {e['steps'] or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired(result: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Each arm against the first, seed by seed (at a seed every arm draws the same data and noise):
    per measure the mean difference (arm - first), its standard error and the number of seeds."""
    arms = list(result["arms"].values())
    names = list(result["arms"])
    out: dict[str, dict[str, list[float]]] = {}
    base = arms[0].get("per_seed", {}) if arms else {}
    for name, entry in zip(names[1:], arms[1:]):
        diffs: dict[str, list[float]] = {}
        for seed, row in entry.get("per_seed", {}).items():
            for key, value in row.items():
                if key in base.get(seed, {}):
                    diffs.setdefault(key, []).append(value - base[seed][key])
        out[name] = {k: [(m := _mean_sd(v))[0], m[1] / math.sqrt(len(v)), len(v)] for k, v in diffs.items()}
    return out


def paired_table(result: dict[str, Any]) -> str:
    """Markdown: the paired differences against the first arm (mean +- standard error, seeds)."""
    first = next(iter(result["arms"]), "-")
    lines = [f"Paired by seed: arm - {first} (mean ± standard error, n seeds)", "",
             "| arm | measure | difference |", "|---|---|---|"]
    for arm, measures in result.get("paired", {}).items():
        for key, (mean, se, n) in measures.items():
            lines.append(f"| {arm} | {key} | {mean:+.4f} ± {se:.4f} (n={n}) |")
    return "\n".join(lines) + "\n"
