"""OpenAI chat messages -> what the model reads: a system prompt, alternating User / Assistant turns
and the images of each user turn.

* ``system`` (or ``developer``) messages come first; their text replaces the model's default system
  prompt (an empty one: no system prompt). The model has one system prompt, so a system message
  after the conversation has started is refused.
* Consecutive messages of one role are joined into one turn (the template alternates User, Assistant).
  The conversation starts with a user message and ends with one: the answer is the next turn.
* A user message's parts keep their order: each image becomes an ``<image_placeholder>`` line where
  it stands among the text parts (the processor expands it to the image's tokens).
* Images are ``data:image/...;base64,`` URLs. An http(s) URL is fetched only when the server runs with
  ``--allow-remote-images``, within ``remote_image_timeout_s`` and ``max_image_bytes``; either way the
  image passes the same checks as an upload (format, bytes, pixels read from the header).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool

from ..tokenizer_build import IMAGE_TOKEN, SPECIAL_TOKENS
from .limits import ServeLimits
from .schemas import ServeError, decode_image_base64, decode_image_bytes

REMOTE_SCHEMES = ("http://", "https://")


@dataclass
class ChatPrompt:
    system_prompt: str | None  # None: the model's default
    conversation: list[dict]  # {"role": "User" | "Assistant", "content": str, "images": [PIL.Image, ...]}


@dataclass
class _Turn:
    role: str
    pieces: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (field, url)


def _text_of(content) -> str:
    """A system or assistant message's text: a string or text parts, joined."""
    if content is None:
        return ""
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


def _check_free_text(text: str, where: str, reserved=(IMAGE_TOKEN,)) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ServeError(400, where, "the text is not valid Unicode (it holds a lone surrogate)") from None
    found = [t for t in reserved if t in text]
    if found:
        raise ServeError(400, where, f"the text contains reserved token(s) {found}; images go in image_url parts")


def collect_turns(messages) -> tuple[str | None, list[_Turn]]:
    """(system prompt, turns) of validated request messages; images not yet read."""
    system: list[str] | None = None
    turns: list[_Turn] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if message.role in ("system", "developer"):
            if turns:
                raise ServeError(400, f"{where}.role", "a system message must come before the conversation "
                                                      "(the model has one system prompt)")
            text = _text_of(message.content)
            _check_free_text(text, f"{where}.content", SPECIAL_TOKENS)
            system = (system or []) + [text.strip()]
            continue
        role = "User" if message.role == "user" else "Assistant"
        turn = _Turn(role)
        if role == "User" and not isinstance(message.content, str):
            for j, part in enumerate(message.content):
                if part.type == "text":
                    _check_free_text(part.text, f"{where}.content.{j}.text")
                    turn.pieces.append(part.text)
                else:
                    turn.pieces.append(IMAGE_TOKEN)
                    turn.images.append((f"{where}.content.{j}.image_url", part.image_url.url))
        else:
            text = _text_of(message.content)
            _check_free_text(text, f"{where}.content")
            turn.pieces.append(text)
        if not "".join(turn.pieces).strip():
            raise ServeError(400, f"{where}.content", "the message is empty")
        if turns and turns[-1].role == role:  # the template alternates: one turn per run of a role
            turns[-1].pieces += turn.pieces
            turns[-1].images += turn.images
        else:
            turns.append(turn)
    if not turns or turns[0].role != "User":
        raise ServeError(400, "messages", "the conversation must start with a user message (after any system "
                                          "messages)")
    if turns[-1].role != "User":
        raise ServeError(400, "messages", "the last message must be the user's: the answer is the next turn")
    return ("\n\n".join(system) if system is not None else None), turns


async def read_messages(messages, limits: ServeLimits, allow_remote: bool) -> ChatPrompt:
    """Validated request messages -> a :class:`ChatPrompt` with every image read (or a ServeError)."""
    system_prompt, turns = collect_turns(messages)
    refs = [ref for turn in turns for ref in turn.images]
    if len(refs) > limits.max_chat_images:
        raise ServeError(400, "messages", f"the messages hold {len(refs)} images, over the limit of "
                                          f"{limits.max_chat_images}")
    images = {}
    for where, url in refs:
        images[where] = await read_image_url(url, limits, allow_remote, where)
    conversation = []
    for turn in turns:
        content = "\n".join(piece.strip() for piece in turn.pieces if piece.strip())
        conversation.append({"role": turn.role, "content": content, "images": [images[w] for w, _ in turn.images]})
    return ChatPrompt(system_prompt, conversation)


async def read_image_url(url: str, limits: ServeLimits, allow_remote: bool, where: str):
    """A data: URL, or (when allowed) an http(s) URL -> upright RGB PIL image."""
    if url.startswith("data:"):
        return await run_in_threadpool(decode_image_base64, url, limits, where)
    if url.lower().startswith(REMOTE_SCHEMES):
        if not allow_remote:
            raise ServeError(400, where, "this server does not fetch remote images: send the image as a data: URL "
                                         "(data:image/png;base64,...), or start it with --allow-remote-images",
                             code="remote_images_disabled")
        data = await fetch(url, limits, where)
        return await run_in_threadpool(decode_image_bytes, data, limits, where)
    raise ServeError(400, where, "an image_url must be a data: URL (data:image/png;base64,...)"
                                 + (" or an http(s) URL" if allow_remote else ""))


async def fetch(url: str, limits: ServeLimits, where: str) -> bytes:
    """GET ``url``: at most ``max_image_bytes`` bytes (by Content-Length, or by counting), all within
    ``remote_image_timeout_s`` seconds (connecting, redirects and reading together)."""
    import httpx

    max_bytes, seconds = limits.max_image_bytes, limits.remote_image_timeout_s

    async def get() -> bytes:
        async with httpx.AsyncClient(follow_redirects=True, max_redirects=3, timeout=seconds) as client:
            async with client.stream("GET", url, headers={"Accept": "image/png, image/jpeg"}) as response:
                if response.status_code != 200:
                    raise ServeError(400, where, f"fetching the image gave HTTP {response.status_code}",
                                     code="image_fetch_failed")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise ServeError(413, where, f"the image is {declared} bytes, over the limit of {max_bytes}")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise ServeError(413, where, f"the image is over the limit of {max_bytes} bytes")
                return bytes(data)

    try:
        return await asyncio.wait_for(get(), seconds)
    except asyncio.TimeoutError:
        raise ServeError(400, where, f"fetching the image took over {seconds:g} s", code="image_fetch_failed") from None
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, ValueError) as e:
        raise ServeError(400, where, f"cannot fetch the image ({type(e).__name__}: {e})",
                         code="image_fetch_failed") from None
