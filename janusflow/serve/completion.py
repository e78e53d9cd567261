"""Chat completions on an :class:`~janusflow.serve.engine.Engine`: sampling settings, stop strings,
several choices, finish reasons, token counts and the text as it streams.

The engine decodes one conversation's next turn (``decode_turn``) and feeds a streamer the prompt's
ids, then each new token. :class:`TextWatcher` is that streamer: it decodes the answer so far and

* stops decoding (by raising :class:`StopStringReached` from ``put``) as soon as the answer holds a
  stop string; the answer is the text before it, as in OpenAI's API;
* hands ``on_text`` each piece of the answer that can no longer change: text that might still turn
  into a stop string, trailing whitespace (the answer is stripped) and an unfinished UTF-8 character
  wait for the next token. So the pieces of a streamed answer add up to the answer returned whole.

Choices are decoded one after the other with one generator: ``seed`` fixes all of them, and they
differ from each other when sampling. Greedy decoding gives every choice the same answer, decoded once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..understanding import DecodingConfig


class StopStringReached(Exception):
    """Raised from the streamer: the answer holds a stop string; decoding stops there."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # 0: only the likeliest token, which is greedy too
    seed: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0

    def decoding_config(self) -> DecodingConfig:
        if self.greedy:
            return DecodingConfig(max_new_tokens=self.max_new_tokens)
        return DecodingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str  # "stop": end-of-sentence token or a stop string; "length": max tokens or the context
    completion_tokens: int  # tokens written, the end-of-sentence token included


@dataclass(frozen=True)
class Completion:
    choices: list[Choice]
    prompt_tokens: int  # template, system prompt, text and image tokens

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


def settled_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` (the answer so far, left-stripped) can no longer change: all but a tail
    that may be the start of a stop string, trailing whitespace, or an unfinished character (U+FFFD)."""
    end = len(text)
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):  # the longest tail that starts this stop string
            if text.endswith(stop[:k]):
                end = min(end, len(text) - k)
                break
    settled = text[:end].rstrip()
    while settled.endswith("\ufffd"):
        settled = settled[:-1].rstrip()
    return len(settled)


class TextWatcher:
    """The streamer of one choice (see the module docstring). ``check`` runs for every token and may
    raise to cancel; ``on_start`` runs once the prompt is read (the request is valid and decoding)."""

    def __init__(self, detokenize: Callable[[list[int]], str], stops: tuple[str, ...] = (),
                 check: Callable[[], None] | None = None, on_start: Callable[[], None] | None = None,
                 on_text: Callable[[str], None] | None = None):
        self.detokenize, self.stops, self.check = detokenize, stops, check
        self.on_start, self.on_text = on_start, on_text
        self.prompt_tokens: int | None = None
        self.tokens: list[int] = []
        self.text = ""  # the answer so far (cut before a stop string once one appears)
        self.sent = ""  # what on_text has been given

    def put(self, value) -> None:
        if self.check is not None:
            self.check()
        ids = value.reshape(-1).tolist() if hasattr(value, "reshape") else list(value)
        if self.prompt_tokens is None:  # the first call carries the prompt's ids
            self.prompt_tokens = len(ids)
            if self.on_start is not None:
                self.on_start()
            return
        self.tokens += ids
        text = self.detokenize(self.tokens).lstrip()
        found = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if found:
            self.text = text[:min(found)]
            raise StopStringReached()
        self.text = text
        self.send(text[:settled_length(text, self.stops)])

    def end(self) -> None:
        pass

    def send(self, upto: str) -> None:
        """Give ``on_text`` what ``upto`` adds to the text sent so far."""
        if self.on_text is not None and len(upto) > len(self.sent) and upto.startswith(self.sent):
            self.on_text(upto[len(self.sent):])
            self.sent = upto


def complete(engine, conversation: list[dict], system_prompt: str | None, params: SamplingParams,
             check: Callable[[], None] | None = None, on_start: Callable[[], None] | None = None,
             on_text: Callable[[int, str], None] | None = None,
             on_done: Callable[[int, str], None] | None = None) -> Completion:
    """``params.n`` answers to ``conversation`` (messages ending with a User turn). ``on_text(index,
    piece)`` streams each choice's text, ``on_done(index, finish_reason)`` ends it."""
    config = params.decoding_config()
    generator = None if params.greedy else engine.new_generator(params.seed)
    choices: list[Choice] = []
    prompt_tokens = 0
    for index in range(params.n):
        if index and params.greedy:
            choice = dataclasses.replace(choices[0], index=index)
            if on_text is not None and choice.text:
                on_text(index, choice.text)
        else:
            watcher = TextWatcher(engine.detokenize, params.stop, check, on_start if index == 0 else None,
                                  (lambda piece, i=index: on_text(i, piece)) if on_text is not None else None)
            try:
                turn = engine.decode_turn(conversation, system_prompt, config, generator, watcher)
                text = engine.detokenize(turn.tokens).strip()
                choice = Choice(index, text, "stop" if turn.stopped_at_eos else "length",
                                len(turn.tokens) + int(turn.stopped_at_eos))
                prompt_tokens = turn.prompt_tokens
            except StopStringReached:
                choice = Choice(index, watcher.text.rstrip(), "stop", len(watcher.tokens))
                prompt_tokens = watcher.prompt_tokens or 0
            watcher.send(choice.text)
        choices.append(choice)
        if on_done is not None:
            on_done(index, choice.finish_reason)
    return Completion(choices, prompt_tokens)
