"""The release's "deepseek" conversation template as a Jinja chat template, and chat messages in every form.

The template (what transformers renders for ``processor.apply_chat_template`` and
``tokenizer.apply_chat_template``) writes exactly what :meth:`JanusFlowProcessor.apply_sft_template`
writes (tests hold them equal)::

    ret = system_prompt + "\\n\\n" if system_prompt else ""
    for message i (content stripped):  role + ": " + content + ("\\n\\n" if i is even else EOS)  (content non-empty)
                                        role + ":"                                              (content empty)
    return ret.strip()

Roles are "User" and "Assistant", alternating from "User". A ``system`` message, first, replaces the
default system prompt (``default_system_prompt``, which the processor passes; the release's otherwise).
Content is a string or a list of parts: ``{"type": "image", ...}`` becomes ``<image_placeholder>``,
``{"type": "text", "text": ...}`` its text, joined by newlines (images before the question, as the
release's examples write them). ``add_generation_prompt`` adds the empty Assistant turn ("Assistant:").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from PIL import Image

from .errors import InputError
from .tokenizer_build import EOS_TOKEN, IMAGE_TOKEN

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)

CHAT_TEMPLATE = (
    "{%- set ns = namespace(system=default_system_prompt if default_system_prompt is defined else '"
    + DEFAULT_SYSTEM_PROMPT + "', text='', turn=0) -%}\n"
    "{%- for message in messages -%}\n"
    "  {%- if message['content'] is string -%}\n"
    "    {%- set content = message['content'] -%}\n"
    "  {%- else -%}\n"
    "    {%- set parts = namespace(items=[]) -%}\n"
    "    {%- for part in message['content'] -%}\n"
    "      {%- if part['type'] == 'image' -%}{%- set parts.items = parts.items + ['" + IMAGE_TOKEN + "'] -%}\n"
    "      {%- elif part['type'] == 'text' -%}{%- set parts.items = parts.items + [part['text']] -%}\n"
    "      {%- else -%}{{- raise_exception('unsupported content part type ' + part['type']) -}}\n"
    "      {%- endif -%}\n"
    "    {%- endfor -%}\n"
    "    {%- set content = parts.items | join('\\n') -%}\n"
    "  {%- endif -%}\n"
    "  {%- set role = message['role'] | lower -%}\n"
    "  {%- if role == 'system' -%}\n"
    "    {%- if not loop.first -%}{{- raise_exception('a system message must come first') -}}{%- endif -%}\n"
    "    {%- set ns.system = content -%}\n"
    "  {%- else -%}\n"
    "    {%- if role != ['user', 'assistant'][ns.turn % 2] -%}\n"
    "      {{- raise_exception('roles must alternate user, assistant, user, ...') -}}\n"
    "    {%- endif -%}\n"
    "    {%- set content = content | trim -%}\n"
    "    {%- if content -%}\n"
    "      {%- set ns.text = ns.text + role | capitalize + ': ' + content + ['\\n\\n', '" + EOS_TOKEN
    + "'][ns.turn % 2] -%}\n"
    "    {%- else -%}\n"
    "      {%- set ns.text = ns.text + role | capitalize + ':' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set ns.turn = ns.turn + 1 -%}\n"
    "  {%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt and ns.turn % 2 == 1 -%}{%- set ns.text = ns.text + 'Assistant:' -%}{%- endif -%}\n"
    "{{- ((ns.system + '\\n\\n' if ns.system else '') + ns.text) | trim -}}\n"
)

_ROLES = {"user": "User", "assistant": "Assistant"}
_IMAGE_KEYS = ("image", "url", "path", "base64")


def normalize_messages(conversation: Sequence[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]], list[Any]]:
    """Chat messages in any accepted form -> (system prompt or None, [{"role": "User" | "Assistant",
    "content": str}], images in order of their placeholders).

    Accepted: string content (today's messages, images in an ``"images"`` list, placed by
    ``<image_placeholder>`` in the text), content parts (``{"type": "image", "image" | "url" | "path": ...}``
    and ``{"type": "text", "text": ...}``; an image part without a source leaves the image to be passed
    separately), roles in either case, and one leading ``system`` message.
    """
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence) or not conversation:
        raise InputError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages")
    system: str | None = None
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}")
        role, content = message["role"], message["content"]
        if not isinstance(role, str):
            raise InputError(f"message {i} has role {role!r}")
        text, found = _content_text(content, i)
        if role.lower() == "system":
            if i != 0:
                raise InputError(f"message {i} is a system message; only the first message may be one")
            system = text
            continue
        if role.lower() not in _ROLES:
            raise InputError(f"message {i} has role {role!r}; roles are system, user and assistant")
        listed = message.get("images")
        if listed is not None:
            if isinstance(listed, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)) \
                    or not isinstance(listed, Sequence):
                raise InputError(f"message {i} 'images' must be a list of images, got {type(listed).__name__}")
            found.extend(listed)
        images.extend(found)
        messages.append({"role": _ROLES[role.lower()], "content": text})
    return system, messages, images


def _content_text(content: Any, i: int) -> tuple[str, list[Any]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, Sequence) or isinstance(content, (bytes, bytearray)):
        raise InputError(f"message {i} content must be a string or a list of parts, got {type(content).__name__}")
    pieces, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            pieces.append(IMAGE_TOKEN)
            sources = [part[k] for k in _IMAGE_KEYS if part.get(k) is not None]
            images.extend(sources[:1])
        elif kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        else:
            raise InputError(f"message {i}: content parts are {{'type': 'image'}} or {{'type': 'text', 'text': ...}}, "
                             f"got {part!r:.80}")
    return "\n".join(pieces), images
