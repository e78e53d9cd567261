"""``JanusFlowImageProcessor``: the release's understanding preprocessing as a transformers image processor.

Geometry and numbers are those of the official ``VLMImageProcessor`` (:mod:`janusflow.images` holds the
steps): load upright RGB; resize with PIL bicubic so the long side is ``image_size``, each side
``max(int(side / long * S), min_size)`` (truncation); pad to S x S with ``background_color`` centred;
``x * rescale_factor`` (1/255, in float64), then ``(x - image_mean) / image_std`` (0.5 and 0.5: [-1, 1]).
Every number is read from ``preprocessor_config.json``, ours or the release's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs

from .errors import InputError
from .images import (
    BACKGROUND_COLOR, DEFAULT_MIN_SIZE, IMAGE_MEAN, IMAGE_STD, ImageInput, normalize_pixels, resize_and_pad,
)


class JanusFlowImagesKwargs(ImagesKwargs, total=False):
    image_size: int
    min_size: int
    background_color: Sequence[int]


def _as_pil(image: Any) -> ImageInput:
    """Paths, bytes and PIL images pass as they are (``load_image`` reads them); an (H, W, 3) or (3, H, W)
    uint8 array or tensor becomes a PIL image."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = image.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InputError(f"an image array must be uint8 (H, W[, 3]), got {image.dtype} {tuple(image.shape)}")
        return Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)
    return image


def flat_images(images: Any) -> list[ImageInput]:
    """One image, a list of images, or a list of lists (one per text) -> the flat list, in order."""
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    flat: list[ImageInput] = []
    for item in images:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    return flat


class JanusFlowImageProcessor(BaseImageProcessor):
    """Images -> ``pixel_values`` (N, 3, S, S) float32, exactly as the release preprocesses them."""

    model_input_names = ["pixel_values"]
    valid_kwargs = JanusFlowImagesKwargs

    def __init__(
        self,
        image_size: int = 384,
        min_size: int = DEFAULT_MIN_SIZE,
        background_color: Sequence[int] = BACKGROUND_COLOR,
        image_mean: Sequence[float] = IMAGE_MEAN,
        image_std: Sequence[float] = IMAGE_STD,
        rescale_factor: float = 1.0 / 255.0,
        do_normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)  # the release's file names its own class
        super().__init__(**kwargs)
        for name, value in (("image_size", image_size), ("min_size", min_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value, kind in (("background_color", background_color, int), ("image_mean", image_mean, float),
                                  ("image_std", image_std, float)):
            if not isinstance(value, (list, tuple)) or len(value) != 3 or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{name} must be three numbers, got {value!r}")
        if any(s == 0 for s in image_std):
            raise ValueError(f"image_std may not contain 0, got {image_std!r}")
        self.image_size = image_size
        self.min_size = min_size
        self.background_color = [int(v) for v in background_color]
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)

    def resize_and_pad(self, image: ImageInput) -> torch.Tensor:
        """One image -> uint8 (3, S, S): truncating resize to the long side S, centred pad."""
        return resize_and_pad(_as_pil(image), self.image_size, self.min_size, tuple(self.background_color))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:  # (..., 3, S, S) uint8 -> float32
        if not self.do_normalize:
            return (pixels.to(torch.float64) * self.rescale_factor).to(torch.float32)
        return normalize_pixels(pixels, tuple(self.image_mean), tuple(self.image_std), self.rescale_factor)

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """One image or a (nested) list of images -> ``{"pixel_values": (N, 3, S, S)}``, flattened in order.
        Keyword settings (``image_size``, ``min_size``, ...) apply to this call only."""
        if kwargs:
            unknown = sorted(set(kwargs) - set(JanusFlowImagesKwargs.__annotations__) - set(ImagesKwargs.__annotations__))
            if unknown:
                raise TypeError(f"unknown image processor argument(s) {unknown}")
            settings = {**self.to_dict(), **{k: v for k, v in kwargs.items() if v is not None}}
            settings.pop("image_processor_type", None)
            known = ("image_size", "min_size", "background_color", "image_mean", "image_std", "rescale_factor",
                     "do_normalize")
            return type(self)(**{k: settings[k] for k in known}).preprocess(images, return_tensors)
        flat = flat_images(images)
        size = self.image_size
        pixels = torch.stack([self.resize_and_pad(image) for image in flat]) if flat \
            else torch.zeros((0, 3, size, size), dtype=torch.uint8)
        return BatchFeature({"pixel_values": self.normalize(pixels)}, tensor_type=_tensor_type(return_tensors))

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": type(self).__name__,
            "image_size": self.image_size,
            "min_size": self.min_size,
            "background_color": list(self.background_color),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
        }


def _tensor_type(return_tensors: str | None) -> str | None:
    if return_tensors in (None, "pt"):
        return "pt"
    if return_tensors == "np":
        return "np"
    raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
