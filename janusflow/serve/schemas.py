"""Request and response bodies of the HTTP API, with the configured limits written into the schema.

The models are built per app from its :class:`ServeLimits`, so the OpenAPI spec states the real
bounds (``maxLength``, ``maximum``, ...) and a client or a property-based tester can read them.
(No ``from __future__ import annotations`` here: pydantic must see the bounds as objects.)
"""

import base64
import binascii
import io
import threading
from typing import Literal, Optional

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..sampler import SOLVERS
from .limits import ServeLimits

MAX_SEED = 2**63 - 1
DATA_URL_PREFIX_CHARS = 64  # room for "data:image/jpeg;base64," before the base64 text


class ServeError(Exception):
    """A request the server refuses: HTTP ``status``, the ``field`` at fault and why; ``code`` names the
    kind of refusal for the OpenAI-compatible routes (``queue_full``, ``timeout``, ...)."""

    def __init__(self, status: int, field: Optional[str], message: str, headers: Optional[dict] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.field, self.message, self.headers, self.code = status, field, message, headers or {}, code


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong and why")
    field: Optional[str] = Field(None, description="the request field at fault (None: the request as a whole)")


class GenerateResponse(BaseModel):
    images: list[str] = Field(description="base64-encoded PNG images, in order")
    seed: int = Field(description="the seed used (the one given, or the one drawn)")


class AskResponse(BaseModel):
    answer: str


class HealthResponse(BaseModel):
    status: Literal["ok"]
    busy: bool = Field(description="the model is running a request now")
    waiting: int = Field(description="requests waiting for the model")
    limits: dict[str, float]


def check_text(value: str, what: str) -> str:
    """Text must be encodable as UTF-8 (no lone surrogates) and not blank."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the {what} is not valid Unicode text (it holds a lone surrogate)") from None
    if not value.strip():
        raise ValueError(f"the {what} is empty or only whitespace")
    return value


# One vocabulary with the library and the command line (num_inference_steps, ...); the old names stay
# accepted. {new name: old name}.
OLD_NAMES = {"num_inference_steps": "steps", "num_images_per_prompt": "num_images"}
CONFLICT = "conflicting_names"  # the error type of a body giving both names with different values


def declare_old_names(old_names: dict[str, str]):
    """A ``json_schema_extra`` that lists each old name beside its new one (deprecated), so the spec
    says what the server accepts."""
    def extra(schema: dict) -> None:
        properties = schema.get("properties", {})
        for new, old in old_names.items():
            if new in properties:
                properties[old] = {**{k: v for k, v in properties[new].items() if k != "default"}, "deprecated": True,
                                   "title": old, "description": f"old name of {new}; give one of the two"}
    return extra


def merge_old_names(body, old_names: dict[str, str] = OLD_NAMES):
    """A body giving a setting under its old name as well as its new one keeps one copy when both say
    the same (same JSON type and value), and is refused when they differ."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for new, old in old_names.items():
        if new in body and old in body:
            a, b = body[new], body[old]
            if type(a) is not type(b) or a != b:
                raise PydanticCustomError(CONFLICT, "{new} = {a} and its old name {old} = {b} disagree; give one",
                                          {"new": new, "old": old, "a": repr(a), "b": repr(b)})
            del body[old]
    return body


def request_models(limits: ServeLimits):
    """(GenerateRequest, AskRequest) carrying ``limits`` in their fields."""

    class GenerateRequest(BaseModel):
        """Text-to-image: ``num_images_per_prompt`` images for one prompt."""

        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=declare_old_names(OLD_NAMES))
        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars,
                            description="what to draw", examples=["a red circle above a blue square"])
        num_images_per_prompt: int = Field(1, ge=1, le=limits.max_images_per_request,
                                           validation_alias=AliasChoices("num_images_per_prompt", "num_images"),
                                           description="images to draw (old name: num_images)")
        num_inference_steps: int = Field(min(30, limits.max_steps), ge=1, le=limits.max_steps,
                                         validation_alias=AliasChoices("num_inference_steps", "steps"),
                                         description="ODE steps (old name: steps)")
        guidance_scale: float = Field(2.0, ge=0.0, le=limits.max_guidance_scale, allow_inf_nan=False,
                                      description="classifier-free guidance weight w (1 = no guidance)")
        seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="noise seed; null draws one")
        solver: Literal[tuple(SOLVERS)] = Field("euler", description="ODE solver")
        candidates: Optional[int] = Field(None, ge=1, le=limits.max_candidates,
                                          description="draw each image up to this many times and keep the one the "
                                                      "model's own answers about it judge best (shapes-world "
                                                      "prompts; 1: plain sampling; null: the model's default)")

        @model_validator(mode="before")
        @classmethod
        def _old_names(cls, body):
            return merge_old_names(body)

        @field_validator("prompt")
        @classmethod
        def _prompt(cls, value: str) -> str:
            return check_text(value, "prompt")

    class AskRequest(BaseModel):
        """Image understanding: answer a question about one image."""

        model_config = ConfigDict(extra="forbid", strict=True)
        image: str = Field(min_length=1, max_length=limits.max_image_base64_chars + DATA_URL_PREFIX_CHARS,
                           description="a PNG or JPEG image, base64-encoded (a data: URL prefix is allowed)")
        question: str = Field(min_length=1, max_length=limits.max_question_chars,
                              examples=["What is in this image?"])
        max_new_tokens: int = Field(min(128, limits.max_new_tokens), ge=1, le=limits.max_new_tokens)

        @field_validator("question")
        @classmethod
        def _question(cls, value: str) -> str:
            return check_text(value, "question")

    return GenerateRequest, AskRequest


# -- images ------------------------------------------------------------------------------------------
_load_lock = threading.Lock()  # load_image changes the process's warning filters while it decodes
IMAGE_FORMATS = ("PNG", "JPEG")


def decode_image_bytes(data: bytes, limits: ServeLimits, field: str = "image"):
    """Encoded PNG/JPEG bytes -> upright RGB PIL image, refusing what is over the limits.

    The size is read from the header before any pixel is decoded, so a decompression bomb (a small
    file declaring a huge image) is refused without allocating it.
    """
    from PIL import Image, UnidentifiedImageError

    from ..errors import InputError
    from ..processor import load_image

    if len(data) > limits.max_image_bytes:
        raise ServeError(413, field, f"the image is {len(data)} bytes, over the limit of {limits.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as header:
            kind, (width, height) = header.format, header.size
    except Image.DecompressionBombError:
        raise ServeError(413, field, f"the image declares more than {limits.max_image_pixels} pixels") from None
    except UnidentifiedImageError:
        raise ServeError(422, field, "not an image file (no known image format starts this way)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ServeError(422, field, f"not a readable image ({e})") from None
    if kind not in IMAGE_FORMATS:
        raise ServeError(415, field, f"the image is {kind}; PNG and JPEG are accepted")
    if width * height > limits.max_image_pixels:
        raise ServeError(413, field, f"the image is {width}x{height} = {width * height} pixels, over the limit "
                                     f"of {limits.max_image_pixels}")
    try:
        with _load_lock:
            return load_image(data)
    except InputError as e:
        raise ServeError(422, field, str(e)) from None


def decode_image_base64(text: str, limits: ServeLimits, field: str = "image"):
    """A base64 string (optionally a ``data:image/...;base64,`` URL) -> RGB PIL image."""
    if text.startswith("data:"):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise ServeError(422, field, "a data URL must look like data:image/png;base64,....")
    if len(text) > limits.max_image_base64_chars:
        raise ServeError(413, field, f"the image is over the limit of {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ServeError(422, field, f"not valid base64 ({e})") from None
    return decode_image_bytes(data, limits, field)


def encode_png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
