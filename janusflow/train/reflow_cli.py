"""``janusflow reflow-pairs`` and ``janusflow reflow-train`` (see :mod:`janusflow.train.reflow`).

    janusflow reflow-pairs --model DIR --prompts captions.txt --out pairs.safetensors [--steps 30 --cfg 2]
    janusflow reflow-train pairs.safetensors CONFIG.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import MODEL, arg, command, model_dir, torch_dtype
from ..errors import InputError


def read_captions(path: str | Path) -> list[str]:
    """One caption a line (``.txt``), or ``.jsonl`` objects with "caption" or "prompt"."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no prompts file {path}")
    captions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
                captions.append(record.get("caption") or record["prompt"])
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                raise InputError(f"{path}:{number}: expected a JSON object with \"caption\" or \"prompt\"") from None
        else:
            captions.append(line.strip())
    if not captions:
        raise InputError(f"{path} holds no captions")
    return captions


@command("reflow-pairs", "draw reflow pairs (noise x0, the model's own latent x1) into a safetensors file",
         arg("--prompts", required=True, metavar="FILE", help="captions: one a line (.txt) or .jsonl"),
         arg("--out", required=True, metavar="PAIRS.safetensors"),
         arg("--steps", type=int, default=30), arg("--cfg", type=float, default=2.0, help="guidance weight w"),
         arg("--solver", default="euler"), arg("--seed", type=int, default=0),
         arg("--batch-size", type=int, default=16), *MODEL)
def reflow_pairs(args: argparse.Namespace) -> int:
    from ..pipeline import load_model_and_processor
    from ..sampler import SamplerConfig
    from .reflow import generate_pairs, write_pairs

    cfg = SamplerConfig(args.steps, args.cfg, args.solver)
    cfg.validate()
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    captions = read_captions(args.prompts)
    model, processor = load_model_and_processor(model_dir(args), args.device, torch_dtype(args), quantize=args.quantize)

    def progress(done: int, total: int) -> None:
        print(f"\rpairs {done}/{total}", end="", file=sys.stderr, flush=True)

    pairs = generate_pairs(model, processor, captions, cfg, args.seed, args.batch_size, progress)
    print(file=sys.stderr)
    print(write_pairs(args.out, pairs))
    return 0


@command("reflow-train", "fine-tune the generator on reflow pairs (the trainer; see docs/training.md, Reflow)",
         arg("pairs", metavar="PAIRS.safetensors", help="from janusflow reflow-pairs"),
         arg("config", help="YAML config (as for janusflow train; e.g. configs/reflow.yaml)"),
         arg("overrides", nargs="*", help="key=value overrides, e.g. stage.steps=200 losses.repa_weight=0"))
def reflow_train(args: argparse.Namespace) -> int:
    from .__main__ import fit
    from .config import load_config
    from .reflow import ReflowTask, read_pairs

    pairs = read_pairs(args.pairs)  # before building the model
    config = load_config(args.config, args.overrides)
    return fit(ReflowTask(config, pairs), config)
