"""Image loading and understanding preprocessing, as the official ``VLMImageProcessor`` does it.

``load_image`` turns any path, bytes or PIL image into an upright 8-bit RGB image, with a clear
:class:`~janusflow.errors.InputError` for anything unreadable (corrupt, truncated, a decompression
bomb, zero-size). ``preprocess_image`` resizes the long side to the model's size (bicubic), pads to a
square with (127, 127, 127) centred, and normalises with mean = std = 0.5 to [-1, 1].
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import InputError

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

# SigLIP normalisation of the release: x in [0, 1] -> (x - 0.5) / 0.5 in [-1, 1]. The official pad colour is
# int(mean * 255) per channel = 127.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
BACKGROUND_COLOR = (127, 127, 127)
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
DEFAULT_MIN_SIZE = 14  # official VLMImageProcessor min_size


def load_image(image: ImageInput) -> Image.Image:
    """Open `image` (a path, encoded bytes or a PIL image) as an upright 8-bit RGB PIL image.

    Conversions, in this order:
    * animated images: the first frame;
    * EXIF orientation applied (`ImageOps.exif_transpose`);
    * 16-bit and 32-bit integer and float greyscale scaled to 8 bits (see `_to_uint8`), never clipped;
    * RGBA, LA, PA, RGBa, La and images with a transparency key (P, L, RGB with `info["transparency"]`):
      alpha-composited onto white, then RGB;
    * every other mode (L, 1, P, CMYK, YCbCr, RGBX, HSV, LAB, ...): `Image.convert("RGB")`.
    The result carries no EXIF (its orientation is applied), so loading it again changes nothing.

    Raises `InputError` naming the file for a missing, unreadable, corrupt or truncated file, for an
    image over `PIL.Image.MAX_IMAGE_PIXELS` pixels (decompression bomb guard; None disables it), and for a
    zero-size image.
    """
    if isinstance(image, Image.Image):
        name = f"<PIL image {image.mode} {image.width}x{image.height}>"
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        return _without_exif(_to_rgb(_upright(image, name), name), image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        name = f"<{len(image)} bytes of image data>"
        source: Any = io.BytesIO(bytes(image))
    elif isinstance(image, (str, os.PathLike)):
        name = os.fspath(image)
        source = name
        if not os.path.isfile(name):
            raise InputError(f"image file not found: {name}")
    else:
        raise InputError(f"expected an image path, image bytes or a PIL.Image, got {type(image).__name__}")

    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; both are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # PIL's other warnings describe a damaged file (a truncated TIFF tag, say): it either
            # decodes, and is used, or fails below with a clear error; nothing for the caller to act on
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            with Image.open(source) as opened:
                opened.load()  # decode now, so truncated data fails here and not later
                decoded = _upright(opened, name)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise InputError(f"image {name} is too large ({err}); raise PIL.Image.MAX_IMAGE_PIXELS to allow it") from err
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise InputError(f"cannot read image {name}: the file is corrupt, truncated or not an image ({err})") from err
    return _without_exif(_to_rgb(decoded, name))


def _without_exif(image: Image.Image, original: Image.Image | None = None) -> Image.Image:
    """The result is upright: drop its EXIF so that loading it again (a PIL image passed on) cannot apply
    the orientation twice or trip over EXIF bytes already dealt with. The caller's image is not changed."""
    if "exif" in image.info:
        if image is original:
            image = image.copy()
        del image.info["exif"]
    return image


def _upright(image: Image.Image, name: str) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise InputError(f"image {name} has zero size ({image.width}x{image.height})")
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, struct.error) as err:
        raise InputError(f"image {name} has unreadable EXIF data ({err})") from err


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        image = Image.fromarray(_to_uint8(np.asarray(image), mode, name), mode="L")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    try:
        if mode == "La":
            image = image.convert("LA")
        if has_alpha:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as err:
        raise InputError(f"image {name} has mode {mode}, which cannot be converted to RGB ({err})") from err


def _to_uint8(array: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Scale a high-bit-depth greyscale array to 0..255 (rounded), instead of PIL's clipping.

    * I;16, I;16B, I;16L, I;16N (unsigned 16 bit): v / 257, so 0 -> 0 and 65535 -> 255.
    * I (signed 32 bit): values within 0..255 are taken as 8-bit; within 0..65535 as 16-bit (v / 257);
      any other range is stretched linearly from [min, max] to [0, 255].
    * F (32-bit float): values within [0, 1] are multiplied by 255; within [0, 255] kept; otherwise
      stretched from [min, max]. NaN or infinity is an error.
    """
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError(f"image {name} (mode {mode}) contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        scaled = values / 257.0
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif mode == "I" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:  # a constant image outside 0..65535
        scaled = values
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def preprocess_image(image: ImageInput, image_size: int, min_size: int = DEFAULT_MIN_SIZE) -> torch.Tensor:
    """Image -> float32 tensor (3, S, S) in [-1, 1], as the official `VLMImageProcessor` does it:
    ``normalize_pixels(resize_and_pad(image, S, min_size))``. (`JanusFlowImageProcessor` is the same with
    its settings read from ``preprocessor_config.json``.)"""
    return normalize_pixels(resize_and_pad(image, image_size, min_size))


def resize_and_pad(image: ImageInput, image_size: int, min_size: int = DEFAULT_MIN_SIZE,
                   background: tuple[int, int, int] = BACKGROUND_COLOR) -> torch.Tensor:
    """Image -> uint8 tensor (3, S, S), the official processor's geometry (steps 1-3 below).

    1. `load_image` (RGB, upright, alpha on white).
    2. Resize with PIL bicubic so the long side is S, keeping the aspect ratio. The official rounding:
       side' = max(int(side / long_side * S), min_size)  (truncation, not rounding; min_size = 14 in
       the release, capped at S here so tiny test sizes still give S x S).
    3. Pad to S x S with `background` ((127, 127, 127)), the image centred: offset ((S - w') // 2, (S - h') // 2).
    """
    rgb = load_image(image)
    width, height = rgb.size
    long_side = max(width, height)
    shortest = min(min_size, image_size)
    new_width = max(int(width / long_side * image_size), shortest)
    new_height = max(int(height / long_side * image_size), shortest)
    resized = rgb.resize((new_width, new_height), Image.Resampling.BICUBIC)

    canvas = Image.new("RGB", (image_size, image_size), tuple(background))
    canvas.paste(resized, ((image_size - new_width) // 2, (image_size - new_height) // 2))
    return torch.from_numpy(np.array(canvas, dtype=np.uint8)).permute(2, 0, 1)  # (3, S, S)


def normalize_pixels(pixels: torch.Tensor, mean: tuple[float, ...] = IMAGE_MEAN, std: tuple[float, ...] = IMAGE_STD,
                     rescale_factor: float = 1.0 / 255.0) -> torch.Tensor:
    """uint8 (..., 3, S, S) -> float32 in [-1, 1], on the tensor's device (step 4 of the official
    processor): x / 255, computed in float64 as HF's `rescale`, then float32, then (x - mean) / std
    (mean = std = 0.5 in the release)."""
    unit = (pixels.to(torch.float64) * rescale_factor).to(torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device)[:, None, None]
    return (unit - mean_t) / std_t
