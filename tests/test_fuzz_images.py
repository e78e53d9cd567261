"""Fuzz campaign (hypothesis) over image loading: odd modes, formats, EXIF orientations (and damaged
EXIF), animation, truncation, wrong magic bytes, decompression bombs. Every input must give an upright
8-bit RGB image or an ``InputError``, never another exception or a hang (see tests/fuzzing.py)."""

from __future__ import annotations

import io

import pytest
import torch
from fuzzing import FUZZ, TRIED, alarm, encoded_images, pil_images, report_inputs_tried  # noqa: F401  (autouse)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from janusflow.errors import InputError
from janusflow.processor import load_image, preprocess_image

# =========================================================================================================
# Images


def assert_rgb(image: Image.Image) -> None:
    assert image.mode == "RGB" and image.width > 0 and image.height > 0
    image.load()


@pytest.mark.filterwarnings("error::UserWarning")  # a damaged file is loaded or refused, never warned about
@settings(FUZZ, max_examples=300)
@given(encoded_images())
def test_fuzz_image_loading(sample):
    data, damage, note, size = sample
    TRIED["images (bytes)"] += 1
    with alarm():
        try:
            image = load_image(data)
        except InputError:
            return
    assert_rgb(image)
    if damage == "none" and note["orientation"] in (5, 6, 7, 8):
        assert image.size == (size[1], size[0])  # EXIF rotation by 90 degrees applied
    with alarm():
        pixels = preprocess_image(image, 32)
    assert pixels.shape == (3, 32, 32) and torch.isfinite(pixels).all() and pixels.abs().max() <= 1


@settings(FUZZ, max_examples=120)
@given(pil_images())
def test_fuzz_image_objects(image):
    TRIED["images (PIL objects)"] += 1
    with alarm():
        try:
            assert_rgb(load_image(image))
        except InputError:
            pass


@settings(FUZZ, max_examples=40)
@given(kind=st.sampled_from(["missing", "folder", "empty"]))
def test_fuzz_image_paths(kind, tmp_path_factory):
    TRIED["images (paths)"] += 1
    folder = tmp_path_factory.mktemp("paths")
    path = {"missing": folder / "nope.png", "folder": folder, "empty": folder / "empty.png"}[kind]
    if kind == "empty":
        path.write_bytes(b"")
    with alarm(), pytest.raises(InputError):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_an_image_with_damaged_exif_loads_the_same_twice(fmt):
    # found by the campaign: a JPEG whose EXIF header has one byte flipped loads (its reader skips the
    # EXIF), but the loaded image, passed on as a PIL image (preprocess_image), failed on the EXIF bytes
    exif = Image.Exif()
    exif[0x0112] = 1
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (10, 20, 30)).save(buffer, fmt, exif=exif.tobytes())
    data = buffer.getvalue()
    at = max(data.find(b"MM\x00*"), data.find(b"II*\x00"))
    assert at >= 0
    data = data[:at] + b"L" + data[at + 1:]
    try:
        once = load_image(data)
    except InputError:
        return  # refused at once, with a clear error: fine
    twice = load_image(once)
    assert "exif" not in once.info and twice.size == once.size == (3, 2)
    assert preprocess_image(once, 8).shape == (3, 8, 8)
