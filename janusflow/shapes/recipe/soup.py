"""A model soup: the weighted mean of the weights of models fine-tuned from one start.

    python -m janusflow.shapes.recipe.soup OUT MODEL_A MODEL_B [...] [--weights 1,1] [--only language_model]

Models fine-tuned from the same weights tend to stay in one basin of the loss, so their mean keeps
much of what each learned (Wortsman et al., 2022, "Model soups"). Here it joins a model that reads
above/below (a relation phase) with the one it started from, whose generation was better.

    theta_soup = sum_i w_i * theta_i / sum_i w_i

``--only`` restricts the mean to some top-level modules (the names of ``janusflow.train.stages.MODULES``);
every other tensor is the first folder's. With two folders, base and fine-tune, weights 1 : 1 and
``--only language_model``, that is task arithmetic (Ilharco et al., 2023) on the LLM alone at half
strength, theta = theta_base + (theta_ft - theta_base) / 2 there, and the rest of the base kept:
what a generation-only fine-tune wrote into the LLM, without what it wrote into the generation
encoder and decoder.

Every folder must hold the same model config, the same tensors (names and shapes) and the same
VAE (decoding must not change under the soup). OUT gets the first folder's config, tokenizer,
processor and VAE and the mean in fp32; ``assemble`` then makes the shipped (fp16) model of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...checkpoint import CONFIG, WEIGHTS, read_config, read_safetensors, weight_files
from ...errors import CheckpointError, ConfigError
from ...train.stages import MODULES

VAE_WEIGHTS = Path("vae") / "diffusion_pytorch_model.safetensors"


def check_only(only: list[str] | None, verb: str) -> None:
    """``only`` names top-level modules (None: every module)."""
    if only is not None and (not only or any(m not in MODULES for m in only)):
        raise ConfigError(f"only: the modules to {verb} are among {MODULES}, got {only}")


def check_ingredients(folders: list[Path], out: Path) -> None:
    """Every folder is a model folder of one architecture and one VAE, and ``out`` is none of them."""
    if out.resolve() in {f.resolve() for f in folders}:
        raise ConfigError(f"{out}: the merge would overwrite one of its ingredients")
    first, configs = folders[0], []
    for folder in folders:
        if not (folder / CONFIG).is_file():
            raise CheckpointError(f"{folder}: no {CONFIG} (not a model folder)")
        configs.append(read_config(folder))  # (config, layout): the architecture, not the file's bookkeeping
        if configs[-1] != configs[0]:
            raise CheckpointError(f"{folder}: its {CONFIG} differs from {first}'s; merging needs one architecture")
    ours = read_safetensors([first / VAE_WEIGHTS])
    for folder in folders[1:]:
        theirs = read_safetensors([folder / VAE_WEIGHTS])
        if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
            raise CheckpointError(f"{folder}: its VAE differs from {first}'s; the merged model's images would not decode alike")


def read_state_like(folder: Path, reference: dict[str, torch.Tensor] | None, first: Path) -> dict[str, torch.Tensor]:
    """``folder``'s weights, checked to hold the same tensors (names and shapes) as ``reference``."""
    state = read_safetensors(weight_files(folder))
    if reference is None:
        return state
    if state.keys() != reference.keys():
        diff = sorted(set(state) ^ set(reference))[:5]
        raise CheckpointError(f"{folder}: its tensors differ from {first}'s (e.g. {diff})")
    for k, v in state.items():
        if v.shape != reference[k].shape:
            raise CheckpointError(f"{folder}: {k} has shape {tuple(v.shape)}, {first} has {tuple(reference[k].shape)}")
    return state


def selected_keys(state: dict[str, torch.Tensor], only: list[str] | None, folder: Path) -> set[str]:
    """The names of ``state``'s tensors in the top-level modules ``only`` (None: every tensor)."""
    keys = {k for k in state if only is None or k.split(".")[0] in only}
    if not keys:
        raise ConfigError(f"only: no tensor of {folder} belongs to {only}")
    return keys


def write_merged(first: Path, out: Path, result: dict[str, torch.Tensor], recipe: dict) -> Path:
    """``out``: ``first``'s config, tokenizer, processor and VAE with the weights ``result`` (fp32),
    the recipe in the safetensors metadata; written beside ``out`` and moved in at the end."""
    staging = out.parent / f".{out.name}.merge"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(first, staging, ignore=shutil.ignore_patterns("parts", WEIGHTS, "eval_shapes.json"))
    save_file({k: v.float().contiguous() for k, v in result.items()}, staging / WEIGHTS,
              metadata={k: json.dumps(v) for k, v in recipe.items()})
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def soup(folders: list[str | os.PathLike], out: str | os.PathLike, weights: list[float] | None = None,
         only: list[str] | None = None) -> Path:
    """Write the weighted mean of ``folders``' weights (equal weights by default) to ``out``; with
    ``only``, the mean of those top-level modules' tensors and the first folder's everywhere else."""
    folders = [Path(os.fspath(f)) for f in folders]
    out = Path(os.fspath(out))
    weights = [1.0] * len(folders) if weights is None else [float(w) for w in weights]
    if len(folders) < 2:
        raise ConfigError("a soup needs at least two model folders")
    if len(weights) != len(folders) or any(not w > 0 for w in weights):
        raise ConfigError(f"one positive weight a folder: {len(folders)} folders, weights {weights}")
    check_only(only, "average")
    check_ingredients(folders, out)

    first = folders[0]
    first_state = read_state_like(first, None, first)
    averaged = selected_keys(first_state, only, first)
    result = {k: v.float() * (weights[0] if k in averaged else 1.0) for k, v in first_state.items()}
    for folder, w in zip(folders[1:], weights[1:]):
        state = read_state_like(folder, first_state, first)
        for k in averaged:
            result[k] += w * state[k].float()
    total = sum(weights)
    for k in averaged:
        result[k] /= total
    return write_merged(first, out, result, {"soup": {"weights": {str(f): w for f, w in zip(folders, weights)},
                                                      "only": only}})


def parse_weights_and_only(parser: argparse.ArgumentParser,
                           args: argparse.Namespace) -> tuple[list[float] | None, list[str] | None]:
    """The command line's ``--weights`` (comma-separated numbers) and ``--only`` (module names)."""
    try:
        weights = None if args.weights is None else [float(w) for w in args.weights.split(",")]
    except ValueError:
        parser.error(f"--weights {args.weights!r}: comma-separated numbers")
    only = None if args.only is None else [m.strip() for m in args.only.split(",") if m.strip()]
    return weights, only


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the soup's model folder (replaced)")
    parser.add_argument("models", nargs="+", help="model folders fine-tuned from one start")
    parser.add_argument("--weights", default=None, help="comma-separated, one a model (default: equal)")
    parser.add_argument("--only", default=None, metavar="MODULES",
                        help=f"comma-separated top-level modules to average (of {', '.join(MODULES)}); "
                             "the rest is the first model's (default: every module)")
    args = parser.parse_args(argv)
    weights, only = parse_weights_and_only(parser, args)
    try:
        print(soup(args.models, args.out, weights, only))
    except (ConfigError, CheckpointError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
