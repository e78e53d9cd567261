"""One training sample per task, and how records of the documented file formats become samples.

Three tasks, three schemas (any source may yield them: files, tar shards, or Python code such as
the shapes world, which can stream samples without writing files):

* :class:`ConversationSample` (``und``): a chat whose User turns may hold images; the loss is
  next-token cross-entropy on the Assistant turns only.
* :class:`CaptionSample` (``gen``): an image and its caption; the loss is rectified flow on the
  image's VAE latent given the caption (and REPA). ``latent`` / ``und_features`` may be given
  precomputed (the cache), then ``image`` is not read. An optional ``negative`` caption, one that
  is *false* of the image, adds the contrastive term of :mod:`.losses` (when its weight is on).
* :class:`TextSample` (``text``): plain text; cross-entropy on every token.

Records (one JSON object per jsonl line, or per tar-shard key):

* understanding, LLaVA style: ``{"image": "a.jpg" | ["a.jpg", ...], "conversations":
  [{"from": "human", "value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}``;
  or ours: ``{"images": [...], "messages": [{"role": "User", "content": "<image_placeholder>..."},
  {"role": "Assistant", "content": "..."}]}``. Optional ``"system"``: a system prompt.
* generation: ``{"image": "a.jpg", "caption": "..."}`` (``"prompt"`` or ``"text"`` also accepted);
  optional ``"negative": "..."``, a caption the image does not match (e.g. its objects swapped).
* text: ``{"text": "..."}``.
Relative image paths are relative to the jsonl file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from ..errors import InputError
from ..processor import ImageInput
from ..tokenizer_build import IMAGE_TOKEN

TASKS = ("und", "gen", "text")
LLAVA_IMAGE = "<image>"
_LLAVA_ROLES = {"human": "User", "user": "User", "gpt": "Assistant", "assistant": "Assistant"}


@dataclass
class ConversationSample:
    messages: list[dict[str, str]]  # {"role": "User" | "Assistant", "content": str}, alternating
    images: list[ImageInput] = field(default_factory=list)  # one per <image_placeholder>, in order
    system: str | None = None  # None: the processor's default system prompt


@dataclass
class CaptionSample:
    caption: str
    image: ImageInput | None = None
    latent: torch.Tensor | None = None  # (C, H, W), already times the VAE scaling factor
    und_features: torch.Tensor | None = None  # (N, W) REPA target of the same crop
    negative: str | None = None  # a caption false of the image: the contrastive term's other prompt


@dataclass
class TextSample:
    text: str


Sample = Union[ConversationSample, CaptionSample, TextSample]
SAMPLE_TYPES = {"und": ConversationSample, "gen": CaptionSample, "text": TextSample}


def _image_ref(value: Any, base: Path | None) -> ImageInput:
    if isinstance(value, (str, os.PathLike)) and base is not None and not os.path.isabs(value):
        return os.fspath(base / value)
    return value


def conversation_from_record(record: dict[str, Any], base: Path | None = None) -> ConversationSample:
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}")
    images = record.get("images", record.get("image", []))
    images = [images] if isinstance(images, (str, bytes, os.PathLike)) else list(images or [])
    images = [_image_ref(im, base) for im in images]
    system = record.get("system")
    if "messages" in record:
        messages = [{"role": str(m["role"]).capitalize(), "content": str(m["content"])} for m in record["messages"]]
    elif "conversations" in record:
        messages = []
        for turn in record["conversations"]:
            role = _LLAVA_ROLES.get(str(turn.get("from", "")).lower())
            if turn.get("from") == "system":
                system = str(turn.get("value", ""))
                continue
            if role is None:
                raise InputError(f"unknown conversation role {turn.get('from')!r}")
            messages.append({"role": role, "content": str(turn.get("value", "")).replace(LLAVA_IMAGE, IMAGE_TOKEN)})
    else:
        raise InputError("an understanding record needs 'conversations' (LLaVA) or 'messages'")
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if placeholders == 0 and images and messages:  # LLaVA data sometimes omits the tag: image first
        messages[0]["content"] = IMAGE_TOKEN + "\n" + messages[0]["content"]
    return ConversationSample(messages, images, system)


def caption_from_record(record: dict[str, Any], base: Path | None = None) -> CaptionSample:
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}")
    caption = next((record[k] for k in ("caption", "prompt", "text") if k in record), None)
    if not isinstance(caption, str) or not caption.strip():
        raise InputError("a generation record needs a non-empty 'caption'")
    if "image" not in record:
        raise InputError("a generation record needs an 'image'")
    negative = record.get("negative")
    if negative is not None and (not isinstance(negative, str) or not negative.strip()):
        raise InputError("a generation record's 'negative' must be a non-empty caption")
    if negative is not None and negative.strip() == caption.strip():
        raise InputError("a generation record's 'negative' caption is its own caption")
    return CaptionSample(caption, _image_ref(record["image"], base), negative=negative)


def text_from_record(record: dict[str, Any], base: Path | None = None) -> TextSample:
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str) or not text:
        raise InputError("a text record needs a non-empty 'text'")
    return TextSample(text)


FROM_RECORD = {"und": conversation_from_record, "gen": caption_from_record, "text": text_from_record}


def check_sample(task: str, sample: Any) -> Sample:
    """The sample itself if it has the task's type; a plain dict is read as a record."""
    if isinstance(sample, dict):
        return FROM_RECORD[task](sample)
    if not isinstance(sample, SAMPLE_TYPES[task]):
        raise InputError(f"a {task!r} source yielded {type(sample).__name__}, expected {SAMPLE_TYPES[task].__name__}")
    return sample


def placeholder_sample(task: str):
    """A row that runs the forward pass and adds nothing (its labels are ignored, its weight is 0)."""
    from PIL import Image

    image = Image.new("RGB", (8, 8), (127, 127, 127))
    if task == "und":
        return ConversationSample([{"role": "User", "content": IMAGE_TOKEN}, {"role": "Assistant", "content": "x"}],
                                  [image])
    return TextSample("x") if task == "text" else CaptionSample("x", image)
