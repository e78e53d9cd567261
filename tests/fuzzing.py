"""What the fuzz campaigns share (tests/test_fuzz*.py): hypothesis settings, a wall-clock alarm
per input, the count of inputs tried (printed at the end of each module), and the image strategies
(images and HTTP requests carrying them)."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import signal
import struct
import warnings
import zlib

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

TRIED: collections.Counter = collections.Counter()
STATUSES: collections.Counter = collections.Counter()  # of the fuzzed HTTP requests
PER_INPUT_SECONDS = 20
# CI runs a fixed sample of inputs (derandomized: a failure reproduces on every run); a campaign draws
# fresh ones each run: JANUSFLOW_FUZZ_RANDOM=1 python -m pytest tests/test_fuzz*.py
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                derandomize=os.environ.get("JANUSFLOW_FUZZ_RANDOM", "") in ("", "0"))


@contextlib.contextmanager
def alarm(seconds: float = PER_INPUT_SECONDS):
    """Fail an input that runs longer than ``seconds`` (SIGALRM in the main thread)."""
    def expired(signum, frame):
        raise TimeoutError(f"input still running after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module", autouse=True)
def report_inputs_tried(request):
    yield
    total = sum(TRIED.values())
    lines = [f"fuzz: {total} inputs tried"] + [f"  {name}: {count}" for name, count in sorted(TRIED.items())]
    if STATUSES:
        lines.append(f"  HTTP statuses: {dict(sorted(STATUSES.items()))}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))
    TRIED.clear()  # each module reports its own inputs
    STATUSES.clear()


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "I", "I;16", "F", "CMYK", "YCbCr", "HSV", "LAB", "RGBX",
         "La", "RGBa"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM"]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + \
        struct.pack("<HH", width, height) + b"\x00\x02\x02D\x01\x00;"


@st.composite
def pil_images(draw):
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    seed = draw(st.integers(0, 2**16))
    noise = torch.randint(0, 256, (size[1], size[0]), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    base = Image.fromarray(noise.numpy(), mode="L")  # deterministic: hypothesis replays draws
    try:
        image = base.convert(mode) if mode not in ("La", "RGBa", "PA") else base.convert("RGBA").convert(mode)
    except (ValueError, OSError):
        image = Image.new(mode, size)
    if draw(st.booleans()) and mode in ("P", "L", "RGB"):
        image.info["transparency"] = (0, 0, 0) if mode == "RGB" else 0
    return image


@st.composite
def encoded_images(draw):
    """(bytes, what was done): an image saved in some format, maybe EXIF-rotated, animated or damaged."""
    image = draw(pil_images())
    fmt = draw(st.sampled_from(FORMATS))
    kwargs, note = {}, {"orientation": None}
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
        orientation = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 255]))
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes() if draw(st.booleans()) else draw(st.binary(max_size=40))
        note["orientation"] = orientation if isinstance(kwargs["exif"], bytes) and kwargs["exif"].startswith(b"Exif") else None
    if fmt in ("GIF", "PNG", "WEBP") and draw(st.booleans()):
        frames = [image.copy() for _ in range(draw(st.integers(1, 3)))]
        kwargs.update(save_all=True, append_images=frames, duration=50, loop=0)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # Pillow deprecates some mode/format pairs (I as PNG); once
            warnings.simplefilter("ignore", DeprecationWarning)  # removed they raise, handled below
            image.save(buffer, fmt, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, AttributeError, struct.error):
        buffer = io.BytesIO()  # this mode/format/EXIF combination cannot be written: plain PNG instead
        Image.new("RGB", image.size, (90, 120, 200)).save(buffer, "PNG")
        note["orientation"] = None
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "magic", "bomb-png", "bomb-gif", "garbage"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    elif damage == "magic":
        data = draw(st.binary(min_size=1, max_size=8)) + data[8:]
    elif damage == "bomb-png":
        data = png_declaring(draw(st.integers(20_000, 2**31 - 1)), draw(st.integers(20_000, 2**31 - 1)))
    elif damage == "bomb-gif":
        data = gif_declaring(draw(st.integers(20_000, 65535)), draw(st.integers(20_000, 65535)))
    elif damage == "garbage":
        data = draw(st.binary(max_size=300))
    return data, damage, note, image.size
