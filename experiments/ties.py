"""TIES merging: several fine-tunes of one base added to it with less interference than their mean.

    python -m experiments.ties OUT BASE FT_A FT_B [...] [--keep 0.2] [--weights 1,1.3]
        [--scale 1] [--only language_model]

Task arithmetic adds each fine-tune's change to the base, tau_i = theta_i - theta_base. Averaged,
two changes that disagree on a weight cancel, and each one's small, noisy entries dilute the
other's large ones. TIES (Yadav et al., 2023, "TIES-Merging: Resolving Interference When Merging
Models") merges them in three steps, here tensor by tensor:

    trim:   tau_i' = w_i tau_i where |w_i tau_i| is among its tensor's largest `keep` share, else 0
    elect:  gamma  = sign(sum_i tau_i')
    merge:  tau    = sum_i [sign(tau_i') = gamma] tau_i' / #{i : sign(tau_i') = gamma, tau_i' != 0}
    theta  = theta_base + scale * tau

so an entry that only one fine-tune changed much gets that change whole, not halved. ``--weights``
scales each change before the merge (ours; 1 each in the paper), ``--only`` restricts the merge to
some top-level modules (the names of ``janusflow.train.stages.MODULES``) and keeps the base's
tensors elsewhere. Every folder must hold the same model config, tensors and VAE; OUT gets the
base's config, tokenizer, processor and VAE and the merged weights in fp32 (``assemble`` makes the
shipped fp16 model of it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from janusflow.errors import CheckpointError, ConfigError
from janusflow.shapes.recipe.soup import (check_ingredients, check_only, parse_weights_and_only, read_state_like, selected_keys,
                   write_merged)


def ties_delta(deltas: list[torch.Tensor], keep: float) -> torch.Tensor:
    """The TIES merge of one tensor's (already weighted) changes: trim each to its largest ``keep``
    share by magnitude, elect each entry's sign by the sum, average the changes that agree with it."""
    stacked = torch.stack([d.float().reshape(-1) for d in deltas])
    if keep < 1.0:
        n = max(1, int(keep * stacked.shape[1]))
        # the n-th largest magnitude of each change; ties at the threshold are all kept
        threshold = stacked.abs().topk(n, dim=1).values[:, -1:]
        stacked = torch.where(stacked.abs() >= threshold, stacked, torch.zeros_like(stacked))
    elected = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    merged = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
    return merged.reshape(deltas[0].shape)


def ties(base: str | os.PathLike, finetunes: list[str | os.PathLike], out: str | os.PathLike, keep: float = 0.2,
         weights: list[float] | None = None, scale: float = 1.0, only: list[str] | None = None) -> Path:
    """Write ``base`` + ``scale`` x the TIES merge of ``finetunes``' changes from it to ``out``
    (on the modules in ``only``; the base's tensors elsewhere)."""
    base, out = Path(os.fspath(base)), Path(os.fspath(out))
    finetunes = [Path(os.fspath(f)) for f in finetunes]
    weights = [1.0] * len(finetunes) if weights is None else [float(w) for w in weights]
    if not finetunes:
        raise ConfigError("TIES needs at least one fine-tuned model folder beside the base")
    if len(weights) != len(finetunes) or any(not w > 0 for w in weights):
        raise ConfigError(f"one positive weight a fine-tune: {len(finetunes)} fine-tunes, weights {weights}")
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep is the share of each change kept, in (0, 1], got {keep}")
    if not scale > 0:
        raise ConfigError(f"scale must be positive, got {scale}")
    check_only(only, "merge")
    check_ingredients([base, *finetunes], out)

    base_state = read_state_like(base, None, base)
    states = [read_state_like(f, base_state, base) for f in finetunes]
    merged = selected_keys(base_state, only, base)
    result = {k: v.float() for k, v in base_state.items()}
    for k in merged:
        deltas = [w * (s[k].float() - result[k]) for w, s in zip(weights, states)]
        result[k] = result[k] + scale * ties_delta(deltas, keep)
    recipe = {"base": str(base), "finetunes": {str(f): w for f, w in zip(finetunes, weights)},
              "keep": keep, "scale": scale, "only": only}
    return write_merged(base, out, result, {"ties": recipe})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the merged model's folder (replaced)")
    parser.add_argument("base", help="the model folder the fine-tunes started from")
    parser.add_argument("finetunes", nargs="+", help="model folders fine-tuned from the base")
    parser.add_argument("--keep", type=float, default=0.2, help="the share of each change's entries kept, per tensor (0.2)")
    parser.add_argument("--weights", default=None, help="comma-separated, one a fine-tune: each change's scale (default: 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="lambda: the merged change's scale (1)")
    parser.add_argument("--only", default=None, metavar="MODULES",
                        help="comma-separated top-level modules to merge; the rest is the base's (default: every module)")
    args = parser.parse_args(argv)
    weights, only = parse_weights_and_only(parser, args)
    try:
        print(ties(args.base, args.finetunes, args.out, args.keep, weights, args.scale, only))
    except (ConfigError, CheckpointError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
