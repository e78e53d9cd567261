"""``janusflow reflow-pairs`` and ``janusflow reflow-train`` (see :mod:`janusflow.train.reflow`).

    janusflow reflow-pairs --model DIR --prompts captions.txt --out pairs.safetensors [--steps 30 --cfg 2]
                           [--judge NAME --min-score S]
    janusflow reflow-filter PAIRS --judge NAME --out kept.safetensors [--min-score S]
    janusflow reflow-train PAIRS CONFIG.yaml [key=value ...]
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


JUDGE = (
    arg("--judge", default=None, metavar="NAME",
        help="keep only the pairs whose image this best-of-N judge accepts (e.g. shapes: the model's self-check)"),
    arg("--min-score", type=float, default=1.0, help="with --judge: the score a pair's image needs (default 1: every check)"),
    arg("--vae", metavar="DIR", help="with --judge: diffusers AutoencoderKL folder (default: MODEL/vae)"),
)


def _load(args: argparse.Namespace):
    """(model, processor, vae or None): the VAE only when a judge reads the images."""
    from ..pipeline import JanusFlowPipeline, load_model_and_processor

    if args.judge is None:
        return (*load_model_and_processor(model_dir(args), args.device, torch_dtype(args), quantize=args.quantize), None)
    pipe = JanusFlowPipeline.from_pretrained(model_dir(args), vae=args.vae, device=args.device,
                                             dtype=torch_dtype(args), quantize=args.quantize)
    if pipe.vae is None:
        raise InputError(f"--judge reads images: {model_dir(args)} has no vae/ folder; pass --vae DIR")
    return pipe.model, pipe.processor, pipe.vae


def _progress(what: str):
    def progress(done: int, total: int) -> None:
        print(f"\r{what} {done}/{total}", end="", file=sys.stderr, flush=True)
    return progress


def _judged(args: argparse.Namespace, pairs, model, processor, vae):
    from ..judges import make_judge
    from .reflow import judge_pairs, keep_judged

    try:
        judge = make_judge(args.judge, model, processor)
    except KeyError as e:
        raise InputError(str(e.args[0])) from None
    scores = judge_pairs(pairs, judge, vae, progress=_progress("judged"))
    print(file=sys.stderr)
    kept = keep_judged(pairs, scores, args.min_score, args.judge)
    print(f"kept {len(kept.captions)} of {len(pairs.captions)} pairs (judge {args.judge}, score >= {args.min_score})",
          file=sys.stderr)
    return kept


@command("reflow-pairs", "draw reflow pairs (noise x0, the model's own latent x1) into a safetensors file",
         arg("--prompts", required=True, metavar="FILE", help="captions: one a line (.txt) or .jsonl"),
         arg("--out", required=True, metavar="PAIRS.safetensors"),
         arg("--steps", type=int, default=30), arg("--cfg", type=float, default=2.0, help="guidance weight w"),
         arg("--solver", default="euler"),
         arg("--seed", type=int, default=0, help="pair i's noise comes from generator seed + i"),
         arg("--batch-size", type=int, default=16), *JUDGE, *MODEL)
def reflow_pairs(args: argparse.Namespace) -> int:
    from ..sampler import SamplerConfig
    from .reflow import generate_pairs, write_pairs

    cfg = SamplerConfig(args.steps, args.cfg, args.solver)
    cfg.validate()
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    captions = read_captions(args.prompts)
    model, processor, vae = _load(args)
    pairs = generate_pairs(model, processor, captions, cfg, args.seed, args.batch_size, _progress("pairs"))
    print(file=sys.stderr)
    if args.judge is not None:
        pairs = _judged(args, pairs, model, processor, vae)
    print(write_pairs(args.out, pairs))
    return 0


@command("reflow-filter", "keep the reflow pairs whose image a judge accepts (pairs drawn without --judge)",
         arg("pairs", metavar="PAIRS", help="a pair file, a folder of them or a glob (joined in name order)"),
         arg("--out", required=True, metavar="PAIRS.safetensors"), *JUDGE, *MODEL)
def reflow_filter(args: argparse.Namespace) -> int:
    from .reflow import read_pair_files, write_pairs

    if args.judge is None:
        raise InputError("reflow-filter needs --judge NAME")
    pairs = read_pair_files(args.pairs)
    model, processor, vae = _load(args)
    print(write_pairs(args.out, _judged(args, pairs, model, processor, vae)))
    return 0


@command("reflow-train", "fine-tune the generator on reflow pairs (the trainer; see docs/training.md, Reflow)",
         arg("pairs", metavar="PAIRS", help="from janusflow reflow-pairs: a file, a folder of them or a glob"),
         arg("config", help="YAML config (as for janusflow train; e.g. configs/reflow.yaml)"),
         arg("overrides", nargs="*", help="key=value overrides, e.g. stage.steps=200 losses.repa_weight=0"))
def reflow_train(args: argparse.Namespace) -> int:
    from .__main__ import fit
    from .config import load_config
    from .reflow import ReflowTask, read_pair_files

    pairs = read_pair_files(args.pairs)  # before building the model
    config = load_config(args.config, args.overrides)
    return fit(ReflowTask(config, pairs), config)
