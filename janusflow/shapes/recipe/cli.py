"""``janusflow recipe shapes``: build the embedded model from nothing (recipe/build.py, docs/recipe.md).

    janusflow recipe shapes --out DIR [--config configs/recipe/shapes.yaml] [--device cuda] [--seed S]
                            [--set stages.unified.steps=3000 ...] [--until STAGE] [--time-limit SECONDS]
                            [--only STAGE[,STAGE]] [--redo STAGE] [--pack DIR] [--unpack DIR] [--list]

Rerun the same command to continue: finished stages are skipped, a stopped one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ...cli import arg, command
from ...errors import InputError

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "recipe" / "shapes.yaml"  # the repository's


@command("recipe", "build the embedded model from nothing: every part, the JanusFlow stages, the evaluation",
         arg("suite", choices=("shapes",), help="the recipe: shapes (the embedded world's model)"),
         arg("--out", required=True, metavar="DIR", help="the run folder; the model is assembled into DIR/model"),
         arg("--config", default=str(DEFAULT_CONFIG), metavar="FILE",
             help="the recipe (default: configs/recipe/shapes.yaml, the GPU preset; "
                  "configs/recipe/shapes-smoke.yaml: tiny, seconds on a CPU)"),
         arg("--seed", type=int, default=None, help="the recipe's seed (default: the config's)"),
         arg("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
             help="change the config, e.g. stages.unified.steps=3000 or training.repa_weight=0 (repeat)"),
         arg("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)"),
         arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
         arg("--data-workers", type=int, default=0, metavar="N",
             help="processes building the next batches while one trains (a GPU needs several)"),
         arg("--until", default=None, metavar="STAGE", help="stop after this stage"),
         arg("--time-limit", type=float, default=None, metavar="SECONDS",
             help="stop this session after this long (the stage in training writes a checkpoint first)"),
         arg("--only", default=None, metavar="STAGES", help="run only these stages (comma-separated; inputs done)"),
         arg("--redo", default=None, metavar="STAGE", help="forget this stage's results and every later stage's first"),
         arg("--pack", default=None, metavar="DIR",
             help="afterwards, write what another machine needs to continue into DIR (files of at most 15 MiB)"),
         arg("--unpack", default=None, metavar="DIR", help="first, restore a --pack from DIR into --out"),
         arg("--list", action="store_true",
             help="print the stages and their status in --out, and run none (--unpack and --pack still apply)"))
def recipe_main(args: argparse.Namespace) -> int:
    from .build import Session, describe, run_recipe
    from .pack import pack, unpack
    from .config import load_recipe

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.data_workers < 0 or (args.time_limit is not None and not args.time_limit > 0):
        raise InputError("--data-workers must be >= 0 and --time-limit > 0")
    overrides = [*args.overrides, *([f"seed={args.seed}"] if args.seed is not None else [])]
    config = load_recipe(args.config, overrides)
    out = Path(args.out)
    if args.unpack:
        unpack(args.unpack, out)
    if args.list:
        print(describe(config, out if out.is_dir() else None))
        if args.pack:
            pack(out, args.pack)
        return 0
    session = Session(device=args.device, data_workers=args.data_workers, time_limit=args.time_limit,
                      until=args.until, only=[s for s in (args.only or "").split(",") if s], redo=args.redo,
                      command=command_line(args))
    record = run_recipe(config, out, session)
    if args.pack:
        pack(out, args.pack)
    ended = record["sessions"][-1]["ended"]
    left = [name for name, stage in record["stages"].items() if stage["status"] != "done"]
    print(f"recipe: {ended}; {len(record['stages']) - len(left)} of {len(record['stages'])} stages done"
          + (f" (left: {', '.join(left)})" if left else "") + f"; {out / 'recipe.json'}")
    for name, scores in record["scores"].items():
        print(f"  {name}: generation {scores['generation']['overall']:.3f}, "
              f"understanding {scores['understanding']['overall']:.3f}")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as given (options in a fixed order), for the record."""
    words = ["janusflow", "recipe", args.suite, "--out", args.out]
    if args.config != str(DEFAULT_CONFIG):
        words += ["--config", args.config]
    for flag, value in (("--seed", args.seed), ("--device", args.device if args.device != "auto" else None),
                        ("--threads", args.threads), ("--data-workers", args.data_workers or None),
                        ("--until", args.until), ("--time-limit", args.time_limit), ("--only", args.only),
                        ("--redo", args.redo), ("--pack", args.pack), ("--unpack", args.unpack)):
        if value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for item in args.overrides:
        words += ["--set", item]
    return shlex.join(words)


@command("ablation", "the paper's ablations (Table 6) on the shapes world: arms of the recipe x seeds, curves",
         arg("suite", choices=("shapes",), help="the world: shapes"),
         arg("--config", required=True, metavar="FILE",
             help="the ablation (configs/ablations/*.yaml: repa, shared, tasks; *-cpu.yaml: the CPU scale)"),
         arg("--out", required=True, metavar="DIR", help="DIR/ARM/seedS: one recipe run folder a run"),
         arg("--seeds", default=None, metavar="S,S,...", help="the recipe seeds (default: the ablation's)"),
         arg("--parts", default=None, metavar="DIR",
             help="take the parts from DIR (a parts folder, or a model folder: its LLM, SigLIP, VAE and "
                  "tokenizer) instead of building them; every arm starts from them"),
         arg("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
             help="change every arm's recipe, e.g. stages.unified.steps=300 (repeat)"),
         arg("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)"),
         arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
         arg("--data-workers", type=int, default=0, metavar="N", help="processes building the next batches"),
         arg("--time-limit", type=float, default=None, metavar="SECONDS",
             help="stop this session after this long (the run in training checkpoints first; rerun to continue)"))
def ablation_main(args: argparse.Namespace) -> int:
    import time

    from .ablation import run_ablation
    from .build import Session

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise InputError(f"--seeds: comma-separated integers, got {args.seeds!r}") from None
    if args.data_workers < 0 or (args.time_limit is not None and not args.time_limit > 0):
        raise InputError("--data-workers must be >= 0 and --time-limit > 0")
    words = ["janusflow", "ablation", args.suite, "--config", args.config, "--out", args.out]
    for flag, value in (("--seeds", args.seeds), ("--parts", args.parts), ("--device", args.device),
                        ("--threads", args.threads), ("--time-limit", args.time_limit)):
        if value is not None:
            words += [flag, str(value)]
    for item in args.overrides:
        words += ["--set", item]
    deadline = time.monotonic() + args.time_limit if args.time_limit else None
    session = Session(device=args.device, data_workers=args.data_workers, time_limit=args.time_limit,
                      command=shlex.join(words))
    result = run_ablation(args.config, args.out, seeds, args.overrides, args.parts, session, deadline)
    from .ablation import table

    print(f"ablation: {result['question']}".rstrip(": "))
    print(table(result, result["metrics"], result["train_metrics"]), end="")
    name = Path(args.config).stem
    print(", ".join(str(Path(args.out) / f"{name}.{ext}") for ext in ("json", "md", "png")))
    return 0
