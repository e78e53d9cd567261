"""The public text-to-image API: a diffusers-style ``JanusFlowPipeline``.

    pipe = JanusFlowPipeline.from_pretrained("path/to/model", vae="path/to/sdxl-vae")
    images = pipe("a red circle", num_inference_steps=30, guidance_scale=2.0, generator=0).images

A model folder is ours (``config.json`` + ``model.safetensors``) or the official release's; either
way it holds the tokenizer files and ``processor_config.json`` / ``preprocessor_config.json``, and
may hold a ``vae/`` subfolder (a diffusers ``AutoencoderKL``) used when no ``vae`` is given.
:func:`load_model_and_processor` is the one loader shared with understanding and the command line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .best_of import Judge, check_candidates, search
from .errors import CheckpointError, InputError, JanusFlowWarning
from .image_generation_config import ImageGenerationConfig
from .sampler import SamplerConfig, initial_noise, sample_latents
from .vae import check_finite, decode, load_vae, to_pil

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
VAE_SUBFOLDER = "vae"


def default_model_dir() -> Path | None:
    """The embedded default model (``janusflow/default_model``), or None while none is installed."""
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").is_file() else None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r} ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but CUDA is not available")
    return device


def load_model_and_processor(model_dir: str | os.PathLike, device: str | torch.device | None = None,
                             dtype: torch.dtype | None = None, quantize: str | None = None):
    """(model, processor) from one folder, either layout; fp32 on CPU and bf16 on CUDA by default;
    ``quantize="int8"``: the LLM's linear layers in int8 (:mod:`janusflow.quantize`).

    The processor's sizes come from the model's config (image size, image tokens of both paths) and
    its ``max_length`` is at most the LLM's context, so over-long prompts are refused up front.
    """
    from .modeling import JanusFlowModel, default_dtype
    from .processor import JanusFlowProcessor

    from .quantize import check_method, quantize_model

    folder = Path(os.fspath(model_dir))
    quantize = check_method(quantize)  # before loading anything
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    device = resolve_device(device)
    model = quantize_model(JanusFlowModel.from_pretrained(folder, dtype=dtype or default_dtype(device), device=device),
                           quantize)
    config = model.config
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads our config.json and warns about its model_type
    try:
        processor = JanusFlowProcessor.from_pretrained(
            folder, image_size=config.und_vision.image_size, num_image_tokens=config.num_und_image_tokens,
            num_gen_image_tokens=config.num_image_tokens)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load the tokenizer/processor ({str(e).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    context = config.language.max_position_embeddings
    processor.max_length = min(processor.max_length or context, context)
    if len(processor.tokenizer) > config.language.vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer has {len(processor.tokenizer)} tokens but the model's "
                              f"vocabulary is {config.language.vocab_size}")
    return model, processor


@dataclass
class JanusFlowPipelineOutput:
    images: Any  # list of PIL images ("pil"), (B, H, W, 3) float array in [0, 1] ("np"),
    # (B, 3, H, W) tensor in [0, 1] ("pt"), or (B, C, h, w) latents ("latent")


class JanusFlowPipeline:
    """Text-to-image with JanusFlow: prompt rows -> rectified-flow ODE in latent space -> VAE decode."""

    def __init__(self, model, processor, vae=None, image_generation_config: ImageGenerationConfig | None = None):
        self.model, self.processor, self.vae = model, processor, vae
        self.image_generation_config = image_generation_config or ImageGenerationConfig()  # the folder's
        self._judge: Judge | None = None
        self._progress: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, vae=None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, quantize: str | None = None) -> "JanusFlowPipeline":
        """``vae``: a diffusers folder, an ``AutoencoderKL``, or None for ``model_dir/vae`` when present;
        ``quantize``: None or "int8" (:func:`load_model_and_processor`)."""
        model, processor = load_model_and_processor(model_dir, device, dtype, quantize)
        if vae is None and (Path(os.fspath(model_dir)) / VAE_SUBFOLDER / "config.json").is_file():
            vae = Path(os.fspath(model_dir)) / VAE_SUBFOLDER
        if vae is not None:
            vae = load_vae(vae, model.device, dtype)
        return cls(model, processor, vae, ImageGenerationConfig.from_folder(model_dir))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def default_judge(self) -> Judge | None:
        """The judge the model folder names (``image_generation_config.json``), built once; None if none."""
        if self._judge is None:
            self._judge = self.image_generation_config.make_judge(self.model, self.processor)
        return self._judge

    def resolve_candidates(self, prompts: Sequence[str], candidates: int | None, judge: Judge | None,
                           pinned_noise: bool = False) -> tuple[int, Judge | None]:
        """(candidates, judge) for a call. Asked for: as given, the folder's judge when none is passed.
        Not asked for (None): the folder's default, where it can apply: not when the caller pins the
        noise image by image (``latents``, a generator list), with no VAE to show the judge the images,
        or for a prompt the judge cannot read (then plain sampling, with a warning)."""
        if candidates is not None:
            return candidates, judge if judge is not None or candidates == 1 else self.default_judge()
        n = self.image_generation_config.candidates
        if n == 1 or pinned_noise or self.vae is None:
            return 1, None
        judge = judge if judge is not None else self.default_judge()
        try:
            for prompt in prompts:
                judge.validate(prompt)
        except InputError as e:
            warnings.warn(f"one sample an image (the model's default is the best of {n}): {e}", JanusFlowWarning,
                          stacklevel=3)
            return 1, None
        return n, judge

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for tqdm (e.g. ``disable=True``), as in diffusers."""
        self._progress = kwargs

    def __call__(
        self,
        prompt: str | Sequence[str],
        num_inference_steps: int = 30,
        guidance_scale: float = 2.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | int | None = None,
        solver: str = "euler",
        output_type: str = "pil",
        schedule: str = "uniform",
        shift: float = 3.0,
        latents: torch.Tensor | None = None,
        batch_size: int | None = None,
        use_prompt_cache: bool = True,
        callback: Callable[[int, int], None] | None = None,
        candidates: int | None = None,
        judge: Judge | None = None,
    ) -> JanusFlowPipelineOutput:
        """Generate ``num_images_per_prompt`` images for each prompt.

        Images are ordered prompt by prompt (p0 x K, p1 x K, ...). ``generator`` is a
        ``torch.Generator``, a list with one per image, or an int seed; ``latents`` (B, C, S, S)
        replaces the drawn noise. ``batch_size`` caps the images sampled together (None: all);
        the noise is drawn up front, so it does not change the result. ``callback(step, num_steps)``
        runs after every step of every batch. ``candidates`` > 1: each image is the best of that many
        samples by ``judge`` (default: the folder's; ``best_of``: a judge with a ``perfect`` score stops an
        image at its first perfect candidate); ``latents`` or a generator list then has one per candidate.
        ``candidates`` None: the model folder's default (``image_generation_config.json``; the embedded model:
        best of 4), see :meth:`resolve_candidates`; 1 samples as released.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        cfg = SamplerConfig(num_inference_steps, guidance_scale, solver, schedule, shift, use_prompt_cache)
        cfg.validate()
        candidates, judge = self.resolve_candidates(prompts, candidates, judge,
                                                    latents is not None or isinstance(generator, (list, tuple)))
        check_candidates(candidates, judge, prompts)
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if output_type != "latent" and self.vae is None:
            raise InputError("no VAE to decode the latents: pass vae=... (a diffusers AutoencoderKL folder) "
                             "or output_type='latent'")
        if candidates > 1 and self.vae is None:
            raise InputError("the judge reads images: pass vae=... (a diffusers AutoencoderKL folder)")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.processor.build_generation_batch(prompts, num_images_per_prompt, guidance=False)  # validates all
        rows = [p for p in prompts for _ in range(num_images_per_prompt * candidates)]
        if candidates > 1 and isinstance(generator, (list, tuple)) and len(generator) != len(rows):
            raise InputError(f"{len(generator)} generators for {len(rows)} samples ({len(rows) // candidates} "
                             f"images x {candidates} candidates); pass one per sample or a single one")
        z0 = self._noise(len(rows), generator, latents)

        from tqdm.auto import tqdm

        step = max(1, batch_size or len(rows))
        bar = tqdm(total=0, desc="sampling", unit="step", **{"leave": False, **self._progress})

        def progress(k: int, n: int) -> None:
            bar.update(1)
            if callback is not None:
                callback(k, n)

        def sample(chosen: list[int]) -> torch.Tensor:  # the latents of these rows, ``step`` rows at a time
            chunks = [chosen[i:i + step] for i in range(0, len(chosen), step)]
            bar.total += cfg.num_steps * len(chunks)
            bar.refresh()
            out = []
            for chunk in chunks:  # cond rows of this chunk, then (guided) their make_uncond rows
                batch = self.processor.build_generation_batch([rows[i] for i in chunk], 1, guidance=cfg.guided)
                batch = batch.to(self.device)
                out.append(sample_latents(self.model, batch.input_ids, batch.attention_mask, z0[chunk], cfg,
                                          progress=progress).latents)
            z = torch.cat(out)
            check_finite(z)
            return z

        images = pil = None
        try:
            if candidates == 1:
                z = sample(list(range(len(rows))))  # (B, C, S, S)
            else:
                drawn: dict[int, tuple[torch.Tensor, torch.Tensor, Image.Image]] = {}

                def draw(chosen: list[int]) -> list[Image.Image]:
                    z = sample(chosen)
                    images = decode(self.vae, z)  # (len(chosen), 3, H, W) in [-1, 1]
                    pil = to_pil(images)  # what the judge reads
                    drawn.update(zip(chosen, zip(z, images, pil)))
                    return pil

                keep = search(prompts, num_images_per_prompt, candidates, judge, draw)
                z = torch.stack([drawn[k][0] for k in keep])  # (B, ...)
                images = torch.stack([drawn[k][1] for k in keep])
                pil = [drawn[k][2] for k in keep]
        finally:
            bar.close()
        if output_type == "latent":
            return JanusFlowPipelineOutput(z)
        if images is None:
            images = decode(self.vae, z)  # (B, 3, H, W) in [-1, 1]
        if output_type == "pil":
            return JanusFlowPipelineOutput(pil if pil is not None else to_pil(images))
        unit = (images + 1) / 2  # (B, 3, H, W) in [0, 1]
        if output_type == "pt":
            return JanusFlowPipelineOutput(unit)
        return JanusFlowPipelineOutput(unit.permute(0, 2, 3, 1).numpy().astype(np.float32))  # (B, H, W, 3)

    def _noise(self, num: int, generator, latents: torch.Tensor | None) -> torch.Tensor:
        config = self.model.config
        if latents is not None:
            gen = config.gen_vision
            expected = (num, gen.latent_channels, gen.latent_size, gen.latent_size)
            if tuple(latents.shape) != expected:
                raise InputError(f"latents must have shape {expected}, got {tuple(latents.shape)}")
            return latents.to(device=self.device, dtype=torch.float32)
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = torch.Generator().manual_seed(generator)
        return initial_noise(num, config, generator, device=self.device)


# -- writing images: a plain folder and the GenEval layout -------------------------------------------


def generate_to_folder(pipe: JanusFlowPipeline, prompt: str, out_dir: str | os.PathLike, num_images: int = 1,
                       seed: int = 0, **call_kwargs: Any) -> list[Path]:
    """``out_dir/{k:04d}.png`` for k < num_images; noise from ``torch.Generator().manual_seed(seed)``."""
    out = Path(os.fspath(out_dir))
    images = pipe(prompt, num_images_per_prompt=num_images, generator=seed, output_type="pil", **call_kwargs).images
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{k:04d}.png" for k in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    return paths


def read_geneval_metadata(file: str | os.PathLike) -> list[tuple[str, dict]]:
    """(line, object) for each non-empty line of a GenEval metadata file; every object needs a prompt."""
    from .jsonl import read_jsonl

    entries = []
    for number, line, obj in read_jsonl(file, "metadata file"):
        if not isinstance(obj.get("prompt"), str):
            raise InputError(f"{file}:{number}: each line needs a string \"prompt\"")
        entries.append((line, obj))
    if not entries:
        raise InputError(f"{file}: no prompts")
    return entries


def generate_geneval(pipe: JanusFlowPipeline, metadata_file: str | os.PathLike, out_dir: str | os.PathLike,
                     num_images: int = 4, seed: int = 0, show_progress: bool = True,
                     **call_kwargs: Any) -> tuple[int, int]:
    """The GenEval layout: ``out/{i:05d}/metadata.jsonl`` (line i of the metadata file) and
    ``out/{i:05d}/samples/{k:04d}.png``. Prompt i draws its noise from seed + i, so a prompt's
    images do not depend on the others and an interrupted run resumes: complete folders are kept.
    Returns (prompts generated, prompts skipped as already complete)."""
    from tqdm.auto import tqdm

    entries = read_geneval_metadata(metadata_file)
    for number, (_, obj) in enumerate(entries):  # refuse a bad prompt before hours of work
        try:
            pipe.processor.encode_generation_prompt(obj["prompt"])
            if call_kwargs.get("judge") is not None:
                call_kwargs["judge"].validate(obj["prompt"])
        except InputError as e:
            raise InputError(f"prompt {number} ({obj['prompt'][:40]!r}): {e}") from None
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    settings = {"metadata_file": os.fspath(metadata_file), "num_images": num_images, "seed": seed, **call_kwargs,
                "image_generation_config": asdict(pipe.image_generation_config)}  # candidates=None
    (out / "janusflow_generation.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    done = skipped = 0
    for i, (line, obj) in enumerate(tqdm(entries, desc="prompts", unit="prompt", disable=not show_progress)):
        folder, samples = out / f"{i:05d}", out / f"{i:05d}" / "samples"
        paths = [samples / f"{k:04d}.png" for k in range(num_images)]
        if (folder / "metadata.jsonl").is_file() and all(p.is_file() for p in paths):
            skipped += 1
            continue
        images = pipe(obj["prompt"], num_images_per_prompt=num_images, generator=seed + i, **call_kwargs).images
        samples.mkdir(parents=True, exist_ok=True)
        for image, path in zip(images, paths):
            image.save(path)
        (folder / "metadata.jsonl").write_text(line + "\n", encoding="utf-8")
        done += 1
    return done, skipped
