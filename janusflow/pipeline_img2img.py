"""Image-conditioned generation, training-free: img2img and inpainting on the text-to-image flow.

Img2img. The image's VAE latent x1 and the noise x0 give the point of the straight path where the
flow starts,

    x_t0 = t0 * x1 + (1 - t0) * x0,      t0 = 1 - strength (the nearest grid point t_k),

and the scheduler runs the rest of its grid from there (diffusers' ``set_begin_index``). Strength 1
starts at t = 0 from the noise alone: text-to-image from the same noise, exactly. Strength 0 is the
image's own latents (no step).

Inpainting. ``mask_image`` is white where the model paints, black where the image is kept. After every
scheduler step the kept region's latents are put back on their own path at the step's t,

    z <- m * z + (1 - m) * (t * x1 + (1 - t) * x0),     m = 1 in the painted latent cells,

so at t = 1 the kept cells are the image's latents; the painted cells see them through the model's
attention at every step. A latent cell is painted when any of its pixels is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .best_of import Judge
from .errors import InputError
from .pipeline import ImageStart, JanusFlowPipeline, JanusFlowPipelineOutput
from .vae import encode


def _images_for(prompts: list[str], images, what: str) -> list:
    """One image for every prompt, or a single image for all of them (as a list)."""
    if isinstance(images, (list, tuple)):
        if len(images) not in (1, len(prompts)):
            raise InputError(f"{len(images)} {what}s for {len(prompts)} prompts; give one, or one a prompt")
        return list(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        if images.shape[0] not in (1, len(prompts)):
            raise InputError(f"{images.shape[0]} {what}s for {len(prompts)} prompts; give one, or one a prompt")
        return list(images)
    if images is None:
        raise InputError(f"no {what} given")
    return [images]


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or not 0 <= strength <= 1:
        raise InputError(f"strength must be a number in [0, 1] (1: from pure noise), got {strength!r}")
    return float(strength)


class JanusFlowImg2ImgPipeline(JanusFlowPipeline):
    """Image + text -> image: the flow started part way along the image's straight path to its latent."""

    def image_size(self) -> int:
        return self.model.config.gen_vision.latent_size * self.vae_scale_factor()

    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_images(self, prompts: list[str], image) -> torch.Tensor:
        """(P or 1, C, S, S) latents of the image(s): diffusers' ``VaeImageProcessor`` (PIL, arrays or
        tensors in [0, 1], resized to the model's image size) then the VAE's encoder."""
        from diffusers.image_processor import VaeImageProcessor

        if self.vae is None:
            raise InputError("img2img encodes the image with the VAE: pass vae=... (a diffusers AutoencoderKL)")
        images = _images_for(prompts, image, "image")
        processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor(), do_convert_rgb=True)
        side = self.image_size()
        try:
            pixels = processor.preprocess(images, height=side, width=side)  # (P, 3, S, S) in [-1, 1]
        except (ValueError, TypeError) as e:
            raise InputError(f"image: {e}") from None
        if pixels.shape[0] not in (1, len(prompts)):
            raise InputError(f"{pixels.shape[0]} images for {len(prompts)} prompts; give one, or one a prompt")
        return encode(self.vae, pixels.float())

    def latent_mask(self, prompts: list[str], mask_image) -> torch.Tensor:
        """(P or 1, 1, s, s) in {0, 1}: 1 for a latent cell with any painted (white) pixel."""
        from diffusers.image_processor import VaeImageProcessor

        masks = _images_for(prompts, mask_image, "mask_image")
        processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor(), do_normalize=False, do_binarize=True,
                                      do_convert_grayscale=True)
        side = self.image_size()
        try:
            pixels = processor.preprocess(masks, height=side, width=side)  # (P, 1, S, S) in {0, 1}
        except (ValueError, TypeError) as e:
            raise InputError(f"mask_image: {e}") from None
        if pixels.shape[0] not in (1, len(prompts)):
            raise InputError(f"{pixels.shape[0]} masks for {len(prompts)} prompts; give one, or one a prompt")
        return F.max_pool2d(pixels.float(), self.vae_scale_factor())  # (P, 1, s, s)

    def __call__(
        self,
        prompt: str | Sequence[str],
        image=None,
        strength: float = 0.6,
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
        """Text-to-image's call (:meth:`JanusFlowPipeline.__call__`: the same options, ``latents`` the noise
        x0) from ``image`` (one, or one a prompt) at ``strength`` (the share of the flow that runs)."""
        start = ImageStart(self.encode_images(self.check_prompts(prompt), image), _check_strength(strength))
        return self._generate(
            start, prompt=prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt, generator=generator,
            latents=latents, output_type=output_type, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            guidance_interval=guidance_interval, batch_size=batch_size, use_prompt_cache=use_prompt_cache,
            candidates=candidates, judge=judge, solver=solver, schedule=schedule, shift=shift, callback=callback)


class JanusFlowInpaintPipeline(JanusFlowImg2ImgPipeline):
    """Image + mask + text -> image: the model paints the white region, the rest is kept (see above)."""

    def __call__(
        self,
        prompt: str | Sequence[str],
        image=None,
        mask_image=None,
        strength: float = 1.0,
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
        """Img2img's call with ``mask_image`` (white: paint, black: keep; one, or one a prompt); strength 1
        (the default) paints the masked region from noise."""
        prompts = self.check_prompts(prompt)
        if mask_image is None:
            raise InputError("inpainting needs a mask_image (white where the model paints)")
        start = ImageStart(self.encode_images(prompts, image), _check_strength(strength),
                           self.latent_mask(prompts, mask_image))
        return self._generate(
            start, prompt=prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt, generator=generator,
            latents=latents, output_type=output_type, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            guidance_interval=guidance_interval, batch_size=batch_size, use_prompt_cache=use_prompt_cache,
            candidates=candidates, judge=judge, solver=solver, schedule=schedule, shift=shift, callback=callback)
