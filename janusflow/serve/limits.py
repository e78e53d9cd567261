"""Limits of the HTTP API and the web page: every size a request may have, and the queue.

Each limit is a field of :class:`ServeLimits` with its default and meaning; the command line sets
any of them with ``--limit NAME=VALUE`` and ``docs/serve.md`` lists them. A request over a limit
gets a 4xx JSON error naming the field; a full queue gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class ServeLimits:
    max_prompt_chars: int = field(default=1000, metadata={"doc": "characters in a generation prompt"})
    max_question_chars: int = field(default=2000, metadata={"doc": "characters in a question (and in each chat message)"})
    max_image_bytes: int = field(default=10 * 2**20, metadata={
        "doc": "bytes of an uploaded image, decoded from base64 (or fetched)"})
    max_image_pixels: int = field(default=4096 * 4096, metadata={
        "doc": "width x height of an uploaded image, read from its header before decoding (decompression bombs)"})
    max_steps: int = field(default=100, metadata={"doc": "ODE steps of one generation"})
    max_images_per_request: int = field(default=4, metadata={"doc": "images one generation request may ask for"})
    max_candidates: int = field(default=4, metadata={
        "doc": "samples drawn for each image of a request that asks for the best of several (self-check)"})
    max_guidance_scale: float = field(default=20.0, metadata={"doc": "largest classifier-free guidance weight"})
    max_new_tokens: int = field(default=512, metadata={"doc": "tokens one answer may have"})
    max_chat_messages: int = field(default=32, metadata={"doc": "messages in one chat completion request"})
    max_chat_images: int = field(default=4, metadata={"doc": "images in one chat completion request, all messages together"})
    max_choices: int = field(default=4, metadata={"doc": "choices (n) one chat completion request may ask for"})
    remote_image_timeout_s: float = field(default=10.0, metadata={
        "doc": "seconds to fetch one http(s) image of a chat message (only with --allow-remote-images)"})
    max_body_bytes: int = field(default=16 * 2**20, metadata={"doc": "bytes of a request body"})
    max_queue: int = field(default=8, metadata={"doc": "requests waiting for the model; one more gets 503"})
    request_timeout_s: float = field(default=300.0, metadata={
        "doc": "seconds a request may wait and run; then 503 and the work is cancelled at its next step"})
    retry_after_s: int = field(default=10, metadata={"doc": "the Retry-After header (seconds) of a 503"})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"limit {f.name} must be a positive number, got {value!r}")
            if f.type in ("int", int) and not isinstance(value, int):
                raise ConfigError(f"limit {f.name} must be an integer, got {value!r}")

    @property
    def max_image_base64_chars(self) -> int:
        """Longest base64 text that can decode to ``max_image_bytes`` (4 characters per 3 bytes)."""
        return 4 * -(-self.max_image_bytes // 3)

    def replace(self, assignments: list[str]) -> "ServeLimits":
        """A copy with ``NAME=VALUE`` assignments applied (the ``--limit`` flag)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes = {}
        for item in assignments:
            name, sep, text = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in fields:
                raise ConfigError(f"--limit {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
            kind = int if fields[name].type in ("int", int) else float
            try:
                changes[name] = kind(text)
            except ValueError:
                raise ConfigError(f"--limit {item!r}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
        return dataclasses.replace(self, **changes)

    @classmethod
    def documentation(cls) -> list[tuple[str, object, str]]:
        """(name, default, meaning) of every limit, for the docs and ``--help``."""
        return [(f.name, f.default, f.metadata["doc"]) for f in dataclasses.fields(cls)]
