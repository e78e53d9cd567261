"""Reflow (2-rectified flow, Liu et al. 2022): straighten the generator's paths by training it on
(noise, image) pairs drawn from itself.

1. Pairs: for caption c and noise x0 ~ N(0, I), x1 = ODE_theta(x0 | c), the model's own sample
   (the sampler's Euler steps and guidance, ``sample_latents``). A pair file is one safetensors shard:
       x0       (M, C, H, W) float32    the initial noise, t = 0
       x1       (M, C, H, W) float32    the latent the ODE reached, t = 1
       metadata {"format": "janusflow-reflow-pairs", "captions": JSON list of M strings,
                 "sampler": JSON of the sampler settings}
   Optionally judged (:func:`judge_pairs`, :func:`keep_judged`): x1 decoded and scored by a best-of-N
   judge, only the pairs it accepts kept, so the straightened paths lead to images the judge accepts.
   Shards drawn in parallel are joined by :func:`read_pair_files` (a folder, a glob or a list).
2. Training: the rectified-flow loss on the pairs, the pair's x0 in place of fresh noise:
       x_t = t x1 + (1 - t) x0,   loss = E_t || v_theta(x_t, t | c) - (x1 - x0) ||^2
   (``JanusFlowTask``'s generation rows with ``x0`` and the cached latent taken from the pair:
   :class:`ReflowTask`). The flow of the pairs' coupling is straighter than the independent one, so
   the fine-tuned model's ODE paths are straighter and fewer steps reach the same image.
   Straightness of a sampled path z_0 .. z_n (0 for a straight line, :func:`path_straightness`):
       S = mean_k || v_k - (z_n - z_0) ||^2 / || z_n - z_0 ||^2
The pairs carry no images, so REPA is off (``losses.repa_weight=0``). With guided pairs the model
learns the guided map; sample it with guidance 1 (one evaluation a step) or keep w (docs/training.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, InputError
from ..sampler import SamplerConfig, initial_noise, sample_latents
from .samples import CaptionSample
from .task import JanusFlowTask

FORMAT = "janusflow-reflow-pairs"


@dataclass
class ReflowSample(CaptionSample):
    """A caption with its pair: ``latent`` is x1 (t = 1), ``noise`` the x0 (t = 0) the ODE started from."""

    noise: torch.Tensor | None = None  # (C, H, W)


@dataclass
class Pairs:
    captions: list[str]
    x0: torch.Tensor  # (M, C, H, W)
    x1: torch.Tensor  # (M, C, H, W)
    sampler: dict

    def samples(self) -> list[ReflowSample]:
        return [ReflowSample(caption, latent=self.x1[i], noise=self.x0[i]) for i, caption in enumerate(self.captions)]


def concat_pairs(parts: Sequence[Pairs]) -> Pairs:
    """Several pair sets as one, in order (e.g. shards drawn in parallel processes); their samplers are
    kept as ``{"parts": [...]}`` when they differ."""
    if not parts:
        raise InputError("no reflow pairs to join")
    shapes = {tuple(p.x0.shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise InputError(f"reflow pair files with different latent shapes cannot be joined: {sorted(shapes)}")
    if len(parts) == 1:
        return parts[0]
    samplers = [p.sampler for p in parts]
    sampler = samplers[0] if all(s == samplers[0] for s in samplers) else {"parts": samplers}
    return Pairs([c for p in parts for c in p.captions], torch.cat([p.x0 for p in parts]),
                 torch.cat([p.x1 for p in parts]), sampler)


def pair_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A pair file, a folder of them (its ``*.safetensors`` in name order), a glob, or a list of these."""
    import glob

    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[Path] = []
    for item in specs:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.safetensors"))
        elif path.is_file():
            found = [path]
        else:
            found = [Path(f) for f in sorted(glob.glob(os.fspath(item)))]
        if not found:
            raise InputError(f"no reflow pair file at {item}")
        files += found
    return files


def read_pair_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> Pairs:
    """:func:`pair_files`' files read and joined (:func:`concat_pairs`)."""
    return concat_pairs([read_pairs(path) for path in pair_files(spec)])


def select_pairs(pairs: Pairs, keep: Sequence[bool] | torch.Tensor, **sampler_notes) -> Pairs:
    """The pairs where ``keep`` is true; ``sampler_notes`` are added to the sampler record."""
    keep = torch.as_tensor(keep, dtype=torch.bool)
    if keep.shape != (len(pairs.captions),):
        raise ValueError(f"keep has shape {tuple(keep.shape)}, expected ({len(pairs.captions)},)")
    index = keep.nonzero().flatten()
    return Pairs([pairs.captions[i] for i in index.tolist()], pairs.x0[index], pairs.x1[index],
                 {**pairs.sampler, **sampler_notes})


@torch.inference_mode()
def judge_pairs(pairs: Pairs, judge, vae, batch_size: int = 64,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(M,) the judge's score of each pair's image (x1 decoded by ``vae``). ``judge(prompt, images)``
    -> one score an image, as for best-of-N (:mod:`janusflow.best_of`, :mod:`janusflow.judges`); the
    pairs of one caption are judged together, ``batch_size`` images at a time."""
    from ..vae import decode, to_pil

    by_caption: dict[str, list[int]] = {}
    for i, caption in enumerate(pairs.captions):
        by_caption.setdefault(caption, []).append(i)
    scores = torch.empty(len(pairs.captions))
    done = 0
    for caption, rows in by_caption.items():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            images = to_pil(decode(vae, pairs.x1[chunk]))
            scores[chunk] = torch.tensor([float(s) for s in judge(caption, images)])
            done += len(chunk)
            if progress is not None:
                progress(done, len(pairs.captions))
    return scores


def keep_judged(pairs: Pairs, scores: torch.Tensor, min_score: float, judge_name: str) -> Pairs:
    """The pairs whose image the judge scored at least ``min_score`` (reflow then straightens the paths
    to the images the judge accepts only); the sampler record says which judge kept how many of how many."""
    keep = scores >= min_score
    if not keep.any():
        raise InputError(f"the judge {judge_name!r} scored no pair at least {min_score}: nothing to keep")
    return select_pairs(pairs, keep, judge=judge_name, min_score=min_score, drawn=len(pairs.captions),
                        kept=int(keep.sum()))


def write_pairs(path: str | os.PathLike, pairs: Pairs) -> Path:
    """One safetensors shard (written to a temporary file, then renamed)."""
    from safetensors.torch import save_file

    check_pairs(pairs, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    metadata = {"format": FORMAT, "captions": json.dumps(pairs.captions), "sampler": json.dumps(pairs.sampler)}
    save_file({"x0": pairs.x0.float().contiguous(), "x1": pairs.x1.float().contiguous()}, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def read_pairs(path: str | os.PathLike) -> Pairs:
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise InputError(f"no reflow pair file {path}")
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT or set(f.keys()) != {"x0", "x1"}:
                raise InputError(f"{path} is not a reflow pair file (format {FORMAT!r} with tensors x0 and x1)")
            x0, x1 = f.get_tensor("x0"), f.get_tensor("x1")
        captions, sampler = json.loads(metadata["captions"]), json.loads(metadata.get("sampler", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as e:
        raise InputError(f"{path}: cannot read the pairs ({e})") from None
    pairs = Pairs(captions, x0, x1, sampler)
    check_pairs(pairs, str(path))
    return pairs


def check_pairs(pairs: Pairs, where: str) -> None:
    M = len(pairs.captions)
    if pairs.x0.ndim != 4 or pairs.x0.shape != pairs.x1.shape or pairs.x0.shape[0] != M:
        raise InputError(f"{where}: x0 {tuple(pairs.x0.shape)} and x1 {tuple(pairs.x1.shape)} must both be "
                         f"(M, C, H, W) with M = {M} captions")
    if not all(isinstance(c, str) and c.strip() for c in pairs.captions):
        raise InputError(f"{where}: every caption must be a non-empty string")
    if not (torch.isfinite(pairs.x0).all() and torch.isfinite(pairs.x1).all()):
        raise InputError(f"{where}: the pairs hold non-finite values")


@torch.inference_mode()
def generate_pairs(model, processor, captions: Sequence[str], cfg: SamplerConfig, seed: int = 0,
                   batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> Pairs:
    """x1 = ODE(x0 | caption) with the model's own sampler, x0 drawn from ``seed`` (pair i's noise from
    generator seed + i, so a pair does not depend on the batch it was drawn in)."""
    cfg.validate()
    if not captions:
        raise InputError("no captions to draw pairs for")
    config = model.config
    x0s, x1s = [], []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start:start + batch_size])
        batch = processor.build_generation_batch(chunk, guidance=cfg.guided)
        z0 = initial_noise(len(chunk), config, [torch.Generator().manual_seed(seed + start + i)
                                                for i in range(len(chunk))], device=model.device)
        x1 = sample_latents(model, batch.input_ids.to(model.device), batch.attention_mask.to(model.device), z0,
                            cfg).latents
        x0s.append(z0.float().cpu())
        x1s.append(x1.float().cpu())
        if progress is not None:
            progress(start + len(chunk), len(captions))
    return Pairs(list(captions), torch.cat(x0s), torch.cat(x1s), {**asdict(cfg), "seed": seed})


def path_straightness(trajectory: torch.Tensor, velocities: torch.Tensor) -> torch.Tensor:
    """(n+1, B, ...) states and (n, B, ...) velocities -> (B,) mean_k ||v_k - (z_n - z_0)||^2 / ||z_n - z_0||^2."""
    chord = (trajectory[-1] - trajectory[0]).flatten(1)  # (B, D)
    deviation = (velocities.flatten(2) - chord[None]).pow(2).sum(-1)  # (n, B)
    return deviation.mean(0) / chord.pow(2).sum(-1).clamp_min(1e-12)


class PairLatents:
    """The latent encoder of a run whose generation rows all hold their latents (the pairs' x1): there
    is no image to encode. A run that should export a VAE with the model sets ``vae.path`` instead."""

    image_size = 0

    def __init__(self, latent_channels: int):
        self.latent_channels = latent_channels

    def to(self, device) -> "PairLatents":
        return self

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise InputError("a reflow row without its latent: every generation row must come from the pairs")


class ReflowTask(JanusFlowTask):
    """``JanusFlowTask`` whose generation rows are reflow pairs: the flow loss at x_t = t x1 + (1 - t) x0
    with the pair's x0 and x1. Understanding and text rows, if the stage's ratio asks for them, come
    from ``config.data`` as usual."""

    def __init__(self, config, pairs: Pairs | str | os.PathLike | Sequence[str | os.PathLike], **kwargs):
        if config.losses.repa_weight > 0:
            raise ConfigError("reflow pairs carry no images for REPA's target: set losses.repa_weight=0")
        self.pairs = pairs if isinstance(pairs, Pairs) else read_pair_files(pairs)
        sources = {**kwargs.pop("sources", {}), "gen": self.pairs.samples()}
        if config.vae.path is None and not config.vae.tiny_random:
            kwargs.setdefault("latent_encoder", PairLatents(self.pairs.x0.shape[1]))
        super().__init__(config, sources=sources, use_cache=False, **kwargs)
        gen = self.model.config.gen_vision
        expected = (gen.latent_channels, gen.latent_size, gen.latent_size)
        if tuple(self.pairs.x0.shape[1:]) != expected:
            raise InputError(f"the pairs' latents are {tuple(self.pairs.x0.shape[1:])}, the model's {expected}")

    def _encode(self, task: str, sample, slot, placeholder: bool = False):
        item = super()._encode(task, sample, slot, placeholder)
        if task == "gen" and getattr(sample, "noise", None) is not None:
            item.x0 = sample.noise  # the pair's noise, not a fresh draw: the coupling is what reflow learns
        return item
