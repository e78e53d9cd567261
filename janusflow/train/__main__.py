"""Command line: ``python -m janusflow.train CONFIG.yaml [key=value ...]`` (also ``janusflow train``).

    python -m janusflow.train configs/toy-sft.yaml stage.steps=200 run_dir=runs/mine
    torchrun --nproc_per_node=4 -m janusflow.train configs/toy-sft.yaml      # DDP (FSDP: trainer.distributed=fsdp)
    python -m janusflow.train cache CONFIG.yaml [key=value ...]             # precompute VAE latents / REPA targets
    python -m janusflow.train toy-data FOLDER                               # write a toy dataset + tokenizer

Training resumes from the newest checkpoint in ``run_dir`` (``trainer.resume=false`` to start
over); SIGTERM or Ctrl-C writes a checkpoint and exits with status 0. On completion the model is
exported to ``run_dir/export`` (EMA weights; raw ones in ``export-raw``), loadable with
``JanusFlowModel.from_pretrained`` and ``JanusFlowProcessor.from_pretrained``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import JanusFlowError


def add_train_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on an argparse subparsers object; the parser's ``func(args) -> int`` runs it."""
    parser = subparsers.add_parser("train", help="train JanusFlow (a stage of the recipe) from a YAML config",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    parser.set_defaults(func=run_from_args, run=run_from_args)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config, or 'cache' / 'toy-data' followed by its arguments")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage.steps=100 trainer.grad_accum=2")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        if args.config == "toy-data":
            return _toy_data(args.overrides)
        if args.config == "cache":
            return _cache(args.overrides)
        return _train(args.config, args.overrides)
    except JanusFlowError as e:  # bad config, data or files: one line, status 1 (as `janusflow`)
        print(f"error: {e}", file=sys.stderr)
        return 1


def _train(config_path: str, overrides: list[str]) -> int:
    from .config import load_config
    from .task import JanusFlowTask

    config = load_config(config_path, overrides)
    return fit(JanusFlowTask(config), config)


def fit(task, config) -> int:
    """Train ``task`` under ``config``'s trainer settings (resuming from its checkpoints); says where an
    interrupted run stopped. Returns the exit code."""
    from .distributed import teardown
    from .trainer import Trainer

    try:
        result = Trainer(task, config.trainer_config(), resolved_config=config.to_dict()).fit()
    finally:
        teardown()
    if result["stopped"]:
        print(f"interrupted at step {result['step']}; checkpoint {result['checkpoint']}", file=sys.stderr)
    return 0


def _cache(argv: list[str]) -> int:
    from .cache import build_cache
    from .config import load_config
    from .task import JanusFlowTask

    if not argv:
        print("usage: python -m janusflow.train cache CONFIG.yaml [key=value ...]", file=sys.stderr)
        return 2
    config = load_config(argv[0], argv[1:])
    folder = build_cache(JanusFlowTask(config, use_cache=False), config)
    print(f"cache written to {folder}")
    return 0


def _toy_data(argv: list[str]) -> int:
    from .toydata import write_toy_data

    if len(argv) != 1:
        print("usage: python -m janusflow.train toy-data FOLDER", file=sys.stderr)
        return 2
    paths = write_toy_data(argv[0])
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m janusflow.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
