"""The public text-to-image API: ``JanusFlowPipeline``, a diffusers ``DiffusionPipeline``.

    pipe = JanusFlowPipeline.from_pretrained("path/to/model", vae="path/to/sdxl-vae")
    images = pipe("a red circle", num_inference_steps=30, guidance_scale=2.0, generator=0).images
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)  # a solver swap

Components: ``model`` (JanusFlow), ``processor``, ``vae`` (a diffusers ``AutoencoderKL``; optional:
without one only ``output_type="latent"`` works) and ``scheduler`` (default diffusers'
``FlowMatchEulerDiscreteScheduler`` with shift 1: the released sampler). A call builds the prompt
rows (conditional rows, then the unconditional rows of guidance: ``make_uncond``'s pad rows, or the
rows of ``negative_prompt``), draws the noise, runs the scheduler loop over the guided velocity
(:func:`janusflow.sampler.denoise`) and decodes. Folder layouts: :mod:`janusflow.loading`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from .best_of import Judge, check_candidates, search
from .errors import InputError, JanusFlowWarning
from .flow import as_scheduler_model, interpolate, time_from_sigma
from .image_folders import generate_geneval, generate_to_folder, read_geneval_metadata  # noqa: F401 (public)
from .image_generation_config import ImageGenerationConfig
from .loading import (  # noqa: F401 (public names of this module)
    VAE_SUBFOLDER, load_components, load_model_and_processor, resolve_device, save_components,
)
from .prompt_rows import generation_rows
from .sampler import SOLVERS, SamplerConfig, denoise, guided_field, initial_noise
from .schedulers import SCHEDULERS, make_scheduler, set_timesteps, strength_start_index
from .vae import check_finite, decode, onload, to_pil, vae_dtype

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


def default_model_dir() -> Path | None:
    """The embedded default model (``janusflow/default_model``), or None while none is installed."""
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").is_file() else None


@dataclass
class JanusFlowPipelineOutput(BaseOutput):
    images: Any  # list of PIL images ("pil"), (B, H, W, 3) float array in [0, 1] ("np"),
    # (B, 3, H, W) tensor in [0, 1] ("pt"), or (B, C, h, w) latents ("latent")


@dataclass
class ImageStart:
    """Where an image-conditioned flow starts (img2img, inpainting): the VAE latents x1 of each prompt's
    image (P or 1, C, H, W), the strength, and for inpainting the latent mask (P or 1, 1, H, W), 1 where
    the model paints and 0 where the image's latents are re-imposed."""

    latents: torch.Tensor
    strength: float
    mask: torch.Tensor | None = None


def _per_row(per_prompt: torch.Tensor, owners: list[int]) -> torch.Tensor:
    """(P or 1, ...) -> (B, ...): each sample row's prompt's entry (a single entry serves every row)."""
    pick = torch.tensor(owners) if per_prompt.shape[0] > 1 else torch.zeros(len(owners), dtype=torch.long)
    return per_prompt[pick]


class JanusFlowPipeline(DiffusionPipeline):
    """Text-to-image with JanusFlow: prompt rows -> rectified-flow ODE in latent space -> VAE decode."""

    model_cpu_offload_seq = "model->vae"
    _optional_components = ["vae", "scheduler"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, model, processor, vae=None, scheduler=None,
                 image_generation_config: ImageGenerationConfig | None = None):
        super().__init__()
        self.register_modules(model=model, processor=processor, vae=vae,
                              scheduler=scheduler if scheduler is not None else make_scheduler("euler"))
        self.image_generation_config = image_generation_config or ImageGenerationConfig()  # the folder's
        self._judge: Judge | None = None
        self._interrupt = False
        self._guidance_scale = 1.0
        self._num_timesteps = 0

    # -- loading, saving, moving -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, vae=None, scheduler=None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        torch_dtype: torch.dtype | None = None, quantize: str | None = None,
                        **kwargs: Any) -> "JanusFlowPipeline":
        """A local model folder (ours or the official layout) or a folder ``save_pretrained`` wrote.
        ``vae``: a diffusers folder, an ``AutoencoderKL``, or None for the folder's ``vae/`` when present;
        ``scheduler``: an instance, or None for the folder's (else Euler, as released). ``torch_dtype``
        (or ``dtype``): the model's; default fp32 on CPU, bf16 on CUDA (the VAE never runs in fp16).
        ``quantize``: None or "int8" (the LLM's linear layers, :mod:`janusflow.quantize`)."""
        unknown = sorted(set(kwargs) - {"local_files_only", "use_safetensors", "low_cpu_mem_usage"})
        if unknown:
            raise InputError(f"JanusFlowPipeline.from_pretrained got unexpected argument(s) {unknown}")
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise InputError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass one")
        components = load_components(pretrained_model_name_or_path, vae, scheduler, device, dtype or torch_dtype,
                                      quantize=quantize)
        pipe = cls(**components)
        pipe.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: "JanusFlowPipeline", **kwargs: Any) -> "JanusFlowPipeline":
        """Another JanusFlow pipeline (text-to-image, img2img, inpainting) on the same components."""
        settings = {**pipeline.components, "image_generation_config": pipeline.image_generation_config, **kwargs}
        pipe = cls(**settings)
        pipe.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        variant: str | None = None, max_shard_size: int | str | None = None,
                        push_to_hub: bool = False, **kwargs: Any) -> None:
        """``model_index.json`` and one subfolder a component (:mod:`janusflow.loading`); reloads with
        ``from_pretrained``."""
        if push_to_hub:
            raise InputError("push_to_hub is not supported: janusflow saves to a local folder")
        save_components(self, save_directory, safe_serialization=safe_serialization, variant=variant,
                        max_shard_size=max_shard_size)

    def to(self, *args: Any, **kwargs: Any) -> "JanusFlowPipeline":
        """diffusers' ``to``, then the VAE back to a safe dtype (fp32, or bf16 on CUDA; never fp16)."""
        super().to(*args, **kwargs)
        if self.vae is not None:
            target = vae_dtype(self.vae.dtype, self.vae.device)
            if self.vae.dtype != target:
                self.vae.to(dtype=target)
        return self

    # -- diffusers' call-state properties ---------------------------------------------------------------

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # -- best of N ---------------------------------------------------------------------------------------

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
                          stacklevel=4)
            return 1, None
        return n, judge

    # -- the call ----------------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | Sequence[str],
        num_inference_steps: int = 30,
        guidance_scale: float = 2.0,
        negative_prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        guidance_interval: tuple[float, float] | None = None,
        batch_size: int | None = None,
        use_prompt_cache: bool = True,
        candidates: int | None = None,
        judge: Judge | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        shift: float | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> JanusFlowPipelineOutput | tuple:
        """Generate ``num_images_per_prompt`` images for each prompt.

        Images are ordered prompt by prompt (p0 x K, p1 x K, ...). ``generator`` is a
        ``torch.Generator``, a list with one per image, or an int seed; ``latents`` (B, C, S, S)
        replaces the drawn noise. ``negative_prompt`` (one, or one a prompt): its rows replace the
        unconditional rows of guidance ("" keeps the release's pad rows). ``guidance_interval``
        (t_lo, t_hi): guidance only for t_lo <= t <= t_hi (t = 0 noise, 1 data), the conditional
        velocity alone elsewhere. ``callback_on_step_end(pipe, i, timestep, tensors)`` runs after every
        scheduler step with the tensors named in ``callback_on_step_end_tensor_inputs`` and may return
        new ``latents``; ``callback(step, num_steps)`` (progress) likewise. ``batch_size`` caps the images
        sampled together (None: all); the noise is drawn up front, so it does not change the result.
        ``candidates`` > 1: each image is the best of that many samples by ``judge`` (default: the
        folder's; see :mod:`janusflow.best_of`); ``latents`` or a generator list then has one per
        candidate. ``candidates`` None: the model folder's default (``image_generation_config.json``; the
        embedded model: best of 4), see :meth:`resolve_candidates`; 1 samples as released.
        ``solver`` ("euler", "heun", "midpoint") / ``schedule`` ("uniform", "shifted") / ``shift``: a
        scheduler for this call instead of ``self.scheduler`` (see :mod:`janusflow.schedulers`).
        """
        return self._generate(
            None, prompt=prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt, generator=generator,
            latents=latents, output_type=output_type, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            guidance_interval=guidance_interval, batch_size=batch_size, use_prompt_cache=use_prompt_cache,
            candidates=candidates, judge=judge, solver=solver, schedule=schedule, shift=shift, callback=callback)

    def check_prompts(self, prompt) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        return list(prompts)

    def call_scheduler(self, solver: str | None, schedule: str | None, shift: float | None):
        """``self.scheduler``, or a scheduler of the asked solver/schedule on its config."""
        if solver is None and schedule is None and shift is None:
            return self.scheduler
        SamplerConfig(solver=solver or "euler", schedule=schedule or "shifted", shift=3.0 if shift is None else shift
                      ).validate()
        cls = SCHEDULERS[solver] if solver is not None else type(self.scheduler)
        if schedule == "uniform":
            s = 1.0
        elif schedule == "shifted" or shift is not None:
            s = 3.0 if shift is None else float(shift)
        else:
            s = self.scheduler.config.get("shift", 1.0)
        return cls.from_config(self.scheduler.config, shift=s)

    def _negatives(self, negative_prompt, prompts: list[str]) -> list[str] | None:
        if negative_prompt is None:
            return None
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        if not isinstance(negatives, Sequence) or not all(isinstance(n, str) for n in negatives):
            raise InputError(f"negative_prompt must be a string or a list of strings, got {negative_prompt!r}")
        if len(negatives) != len(prompts):
            raise InputError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one or one a prompt")
        for text in negatives:
            if text.strip():
                self.processor.encode_generation_prompt(text)  # its length, before any sampling
        return list(negatives)

    def prompt_rows(self, texts: list[str], negatives: list[str] | None, guided: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, L) ids and mask of these sample rows (:func:`janusflow.prompt_rows.generation_rows`)."""
        return generation_rows(self.processor, texts, negatives, guided)

    def _callback_inputs(self, callback_on_step_end, names: Sequence[str]) -> list[str]:
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            names = callback_on_step_end.tensor_inputs
        unknown = [n for n in names if n not in self._callback_tensor_inputs]
        if unknown:
            raise InputError(f"callback_on_step_end_tensor_inputs: {unknown} not among {self._callback_tensor_inputs}")
        return list(names)

    @torch.inference_mode()
    def _generate(self, start: ImageStart | None, *, prompt, num_inference_steps, guidance_scale, negative_prompt,
                  num_images_per_prompt, generator, latents, output_type, return_dict, callback_on_step_end,
                  callback_on_step_end_tensor_inputs, guidance_interval, batch_size, use_prompt_cache, candidates,
                  judge, solver, schedule, shift, callback):
        """The three pipelines' call: checks everything, then samples (in chunks, in best-of rounds)."""
        prompts = self.check_prompts(prompt)
        interval = tuple(guidance_interval) if isinstance(guidance_interval, (list, tuple)) else guidance_interval
        cfg = SamplerConfig(num_inference_steps, guidance_scale, use_prompt_cache=use_prompt_cache,
                            guidance_interval=interval)
        cfg.validate()
        template = self.call_scheduler(solver, schedule, shift)
        negatives = self._negatives(negative_prompt, prompts) if cfg.guided else None
        tensor_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
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
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.processor.build_generation_batch(prompts, num_images_per_prompt, guidance=False)  # validates all
        per_prompt = num_images_per_prompt * candidates
        owners = [p for p in range(len(prompts)) for _ in range(per_prompt)]  # the prompt of each sample row
        if candidates > 1 and isinstance(generator, (list, tuple)) and len(generator) != len(owners):
            raise InputError(f"{len(generator)} generators for {len(owners)} samples ({len(owners) // candidates} "
                             f"images x {candidates} candidates); pass one per sample or a single one")
        device = self._execution_device
        z0 = self._noise(len(owners), generator, latents, device)
        self._guidance_scale, self._interrupt = guidance_scale, False

        step = max(1, batch_size or len(owners))
        bar = self.progress_bar(total=0)

        def progress(k: int, n: int) -> None:
            bar.update(1)
            if callback is not None:
                callback(k, n)

        def sample(chosen: list[int]) -> torch.Tensor:  # the latents of these rows, ``step`` rows at a time
            out = []
            for first in range(0, len(chosen), step):
                chunk = chosen[first:first + step]
                rows = [owners[i] for i in chunk]
                out.append(self._sample_chunk(
                    [prompts[p] for p in rows], None if negatives is None else [negatives[p] for p in rows],
                    rows, z0[chunk], cfg, template, start, callback_on_step_end, tensor_inputs, bar, progress))
            z = torch.cat(out)
            check_finite(z)
            return z

        images = pil = None
        try:
            if candidates == 1:
                z = sample(list(range(len(owners))))  # (B, C, S, S)
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
            if output_type != "latent" and images is None:
                images = decode(self.vae, z)  # (B, 3, H, W) in [-1, 1]
        finally:
            bar.close()
            self.maybe_free_model_hooks()
        if output_type == "latent":
            result = z
        elif output_type == "pil":
            result = pil if pil is not None else to_pil(images)
        else:
            unit = (images + 1) / 2  # (B, 3, H, W) in [0, 1]
            result = unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy().astype(np.float32)
        return JanusFlowPipelineOutput(images=result) if return_dict else (result,)

    def _sample_chunk(self, texts: list[str], negatives: list[str] | None, owners: list[int], z0: torch.Tensor,
                      cfg: SamplerConfig, template, start: ImageStart | None, callback_on_step_end,
                      tensor_inputs: list[str], bar, progress) -> torch.Tensor:
        """Latents (B, C, S, S) of B sample rows from their noise ``z0``: one scheduler run."""
        device = z0.device
        onload(self.model)  # under CPU offload: back on the GPU (a best-of round's decode moved it away)
        ids, mask = self.prompt_rows(texts, negatives, cfg.guided)
        scheduler = type(template).from_config(template.config)  # a fresh state for every run
        set_timesteps(scheduler, cfg.num_steps, device, self.model.config.num_image_tokens)
        begin, z, x1, known = 0, z0, None, None
        if start is not None:
            begin = strength_start_index(scheduler, cfg.num_steps, start.strength)
            x1 = _per_row(start.latents, owners).to(device=device, dtype=torch.float32).contiguous()  # (B, C, S, S)
            known = None if start.mask is None else 1 - _per_row(start.mask, owners).to(device)  # (B, 1, S, S)
            z = interpolate(z0, x1, torch.full((len(owners),), time_from_sigma(scheduler.sigmas[begin])))
        self._num_timesteps = len(scheduler.timesteps) - begin
        bar.total += self._num_timesteps
        bar.refresh()
        velocity, _ = guided_field(self.model, ids.to(device), mask.to(device), z0, cfg)

        def after_step(i: int, timestep: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            if known is not None:  # the image's region back on its own path at the current t
                t = time_from_sigma(scheduler.sigmas[scheduler.step_index])
                z = (1 - known) * z + known * interpolate(z0, x1, torch.full((z.shape[0],), t))
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, timestep, {name: z for name in tensor_inputs}) or {}
                z = outputs.pop("latents", z)
            return z

        model_output = as_scheduler_model(velocity, scheduler.config.num_train_timesteps)
        return denoise(model_output, z.float(), scheduler, begin, after_step, progress, lambda: self._interrupt)

    def _noise(self, num: int, generator, latents: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        config = self.model.config
        if latents is not None:
            gen = config.gen_vision
            expected = (num, gen.latent_channels, gen.latent_size, gen.latent_size)
            if tuple(latents.shape) != expected:
                raise InputError(f"latents must have shape {expected}, got {tuple(latents.shape)}")
            return latents.to(device=device, dtype=torch.float32)
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = torch.Generator().manual_seed(generator)
        return initial_noise(num, config, generator, device=device)


__all__ = ["JanusFlowPipeline", "JanusFlowPipelineOutput", "ImageStart", "SOLVERS", "load_model_and_processor",
           "default_model_dir", "generate_geneval", "generate_to_folder", "read_geneval_metadata"]
