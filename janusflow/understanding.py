"""Image understanding: answers about one or more images over several turns, decoded by ``generate()``.

The prompt (system prompt, "deepseek" template, each image expanded to boi + N image slots + eoi, see
:mod:`janusflow.processor`) goes to ``model.generate`` (transformers' ``GenerationMixin``): the images are
written into their slots on the prefill step, the LLM's KV cache carries them after, and

    y_k = argmax(logits_k)                          (temperature 0: greedy, or beams with num_beams > 1)
    y_k ~ top_p(top_k(softmax(logits_k / T)))       (temperature T > 0)

until the end-of-sentence token, ``max_new_tokens``, or the model's context. ``use_cache=False`` is the
reference path (the whole sequence recomputed every step). Batches are left padded; positions count
from each row's BOS, so a row decodes as it would alone. ``streamer`` is any transformers streamer
(``TextStreamer``, ``TextIteratorStreamer``), batch size 1. :class:`JanusFlowChat` is a thin convenience
over ``generate`` for messages, batches and multi-turn chats.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .errors import InputError
from .processor import IMAGE_TOKEN, ImageInput, Message, UnderstandingBatch


@dataclass
class DecodingConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens with probability >= top_p
    use_cache: bool = True  # False: the full-recompute reference path
    top_k: int = 0  # sampling among the k most likely tokens; 0: all
    repetition_penalty: float = 1.0  # > 1 lowers the logits of tokens already in the sequence
    num_beams: int = 1  # > 1: beam search (greedy only)

    def validate(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"max_new_tokens must be a positive integer, got {n!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not (isinstance(self.repetition_penalty, (int, float)) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise InputError(f"repetition_penalty must be a positive number, got {self.repetition_penalty!r}")
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise InputError(f"num_beams must be a positive integer, got {self.num_beams!r}")
        if self.num_beams > 1 and self.temperature > 0:
            raise InputError("beam search (num_beams > 1) is greedy: use temperature 0")

    def generation_config(self, max_new_tokens: int, eos_token_id: int | None, pad_token_id: int | None):
        """These settings as a transformers ``GenerationConfig``."""
        from transformers import GenerationConfig

        sampling = self.temperature > 0
        extra = dict(temperature=float(self.temperature), top_p=float(self.top_p), top_k=self.top_k) if sampling \
            else {}
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling, num_beams=self.num_beams,
                                repetition_penalty=float(self.repetition_penalty), use_cache=self.use_cache,
                                eos_token_id=eos_token_id, pad_token_id=pad_token_id, **extra)


@dataclass
class DecodeResult:
    tokens: list[list[int]]  # new ids of each row, the end-of-sentence token excluded
    stopped_at_eos: list[bool]
    prompt_length: int  # T, padded columns included
    time_to_first_token: float = 0.0  # seconds: prefill + the first token's logits
    seconds: float = 0.0  # the whole decode
    logits: torch.Tensor | None = None  # (B, steps, V) the logits each token was chosen from, when recorded


def decode(model, batch: UnderstandingBatch, cfg: DecodingConfig, eos_token_id: int | None, pad_token_id: int,
           generator: torch.Generator | None = None, streamer=None, record_logits: bool = False) -> DecodeResult:
    """Answer every row of a left-padded understanding batch with ``model.generate`` (module docstring).
    ``eos_token_id=None`` leaves the model's own (``generation_config``) end token, if any."""
    try:
        return _decode(model, batch, cfg, eos_token_id, pad_token_id, generator, streamer, record_logits)
    except BaseException:
        if streamer is not None:  # a consumer iterating over the streamer must not wait forever
            streamer.end()
        raise


def _decode(model, batch, cfg, eos_token_id, pad_token_id, generator, streamer, record_logits) -> DecodeResult:
    cfg.validate()
    B, T = batch.input_ids.shape
    if streamer is not None and B != 1:
        raise InputError(f"streaming needs a batch of one conversation, got {B}")
    context = model.config.language.max_position_embeddings
    if T >= context:
        raise InputError(f"the prompt is {T} tokens, leaving no room in the model's context of {context}")
    start = time.perf_counter()
    batch = batch.to(model.device, dtype=model.dtype)
    clock = _FirstTokenClock()
    generation_config = cfg.generation_config(min(cfg.max_new_tokens, context - T), eos_token_id, pad_token_id)
    generation_config.return_dict_in_generate, generation_config.output_logits = True, record_logits
    with torch.inference_mode(), _seeded(generator if cfg.temperature > 0 else None, model.device):
        out = model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
            images_seq_mask=batch.images_seq_mask, images_emb_mask=batch.images_emb_mask,
            generation_config=generation_config, logits_processor=LogitsProcessorList([clock]), streamer=streamer)
    tokens, stopped = [], []
    for row in out.sequences[:, T:].tolist():
        stop = eos_token_id in row if eos_token_id is not None else False
        tokens.append(row[: row.index(eos_token_id)] if stop else row)
        stopped.append(stop)
    logits = torch.stack([step.float().cpu() for step in out.logits], dim=1) if record_logits else None
    return DecodeResult(tokens, stopped, T, (clock.time or start) - start, time.perf_counter() - start, logits)


class _FirstTokenClock(LogitsProcessor):
    """A logits processor that changes nothing and notes when the first token's logits exist."""

    time: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.time is None:
            self.time = time.perf_counter()
        return scores


class _seeded:
    """Sampling in ``generate`` draws from torch's global generator: seed it from ``generator`` (which
    advances, so a generator gives a new draw each call and the same draws from the same seed) and
    restore the global state after."""

    def __init__(self, generator: torch.Generator | None, device: torch.device):
        self.generator, self.device = generator, device

    def __enter__(self):
        if self.generator is None:
            return self
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))
        self._fork = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        self._fork.__enter__()
        torch.manual_seed(seed)
        return self

    def __exit__(self, *exc):
        if self.generator is not None:
            self._fork.__exit__(*exc)
        return False


def user_message(question: str, images: Sequence[ImageInput] = ()) -> Message:
    """A User turn: one ``<image_placeholder>`` line per image (unless the text places them), then the text."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty")
    if images and IMAGE_TOKEN not in question:
        question = "\n".join([IMAGE_TOKEN] * len(images) + [question])
    return {"role": "User", "content": question, "images": list(images)}


@dataclass
class Conversation:
    """Turns of a multi-turn chat; images belong to the User turn that shows them."""

    messages: list[Message] = field(default_factory=list)

    def add_user(self, question: str, images: Sequence[ImageInput] = ()) -> None:
        self.messages.append(user_message(question, images))

    def add_assistant(self, answer: str) -> None:
        self.messages.append({"role": "Assistant", "content": answer})


class JanusFlowChat:
    """Questions about images, one at a time, in batches, or as a multi-turn conversation."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, device=None, dtype=None, quantize=None) -> "JanusFlowChat":
        from .pipeline import load_model_and_processor

        return cls(*load_model_and_processor(model_dir, device, dtype, quantize=quantize))

    def generate(self, conversations: Sequence[Sequence[Message]], config: DecodingConfig | None = None,
                 generator: torch.Generator | int | None = None, streamer=None, record_logits: bool = False,
                 system_prompt: str | None = None, **overrides) -> DecodeResult:
        """Decode the Assistant's next turn of each conversation (messages ending with a User turn) under
        ``system_prompt`` (None: the processor's own; "" none)."""
        config = dataclasses.replace(config, **overrides) if config else DecodingConfig(**overrides)
        prompts = [[*c, {"role": "Assistant", "content": ""}] for c in conversations]
        batch = self.processor.build_understanding_batch(prompts, system_prompt=system_prompt)
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = torch.Generator(device=self.model.device).manual_seed(generator)
        return decode(self.model, batch, config, self.processor.eos_id, self.processor.pad_id, generator, streamer,
                      record_logits)

    def answer(self, conversations: Sequence[Sequence[Message]], config: DecodingConfig | None = None,
               generator=None, streamer=None, **overrides) -> list[str]:
        result = self.generate(conversations, config, generator, streamer, **overrides)
        return [self.processor.decode(row).strip() for row in result.tokens]

    def ask(self, images: Sequence[ImageInput] | ImageInput, question: str, **kwargs) -> str:
        """One question about zero or more images."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        return self.answer([[user_message(question, images)]], **kwargs)[0]

    def ask_batch(self, items: Sequence[tuple[Sequence[ImageInput], str]], **kwargs) -> list[str]:
        """Several independent (images, question) pairs, decoded together (left padded)."""
        return self.answer([[user_message(q, list(images))] for images, q in items], **kwargs)

    def reply(self, conversation: Conversation, **kwargs) -> str:
        """The Assistant's answer to the conversation's last User turn; appended to the conversation."""
        if not conversation.messages or conversation.messages[-1]["role"] != "User":
            raise InputError("the conversation must end with a User turn")
        answer = self.answer([conversation.messages], **kwargs)[0]
        conversation.add_assistant(answer)
        return answer


def print_streamer(tokenizer, file=None):
    """A ``TextStreamer`` that prints the answer (not the prompt) to ``file`` (stdout), leading space removed."""
    import sys

    from transformers import TextStreamer

    class _AnswerStreamer(TextStreamer):
        started = False

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            print(text, file=file or sys.stdout, flush=True, end="\n" if stream_end else "")
            if stream_end:
                self.started = False

    return _AnswerStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
