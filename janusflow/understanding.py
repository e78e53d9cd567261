"""Image understanding: autoregressive decoding over one or more images and several turns.

The prompt (system prompt, "deepseek" template, each image expanded to boi + N image slots + eoi,
see :mod:`janusflow.processor`) is embedded once with the images written into their slots; then

    logits_k = LLM(prompt, y_1 .. y_{k-1})[-1],   y_k = argmax(logits_k)            (temperature 0)
                                                  y_k ~ top_p(softmax(logits_k / T)) (temperature T > 0)

until the end-of-sentence token, ``max_new_tokens``, or the model's context. The fast path keeps
the LLM's keys and values in a ``DynamicCache`` (prefill once, then one token a step); the
reference path (``use_cache=False``) recomputes the whole sequence every step. Batches are left
padded; positions count from each row's BOS, so a row decodes as it would alone. ``streamer`` is
any transformers streamer (``TextStreamer``, ``TextIteratorStreamer``): it gets the prompt ids,
then each new token, then ``end()``, as with ``generate`` (batch size 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputError
from .modeling import cache_kwargs
from .processor import IMAGE_TOKEN, ImageInput, Message, UnderstandingBatch, position_ids_from_left_padding


@dataclass
class DecodingConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens with probability >= top_p
    use_cache: bool = True  # False: the full-recompute reference path

    def validate(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"max_new_tokens must be a positive integer, got {n!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")


@dataclass
class DecodeResult:
    tokens: list[list[int]]  # new ids of each row, the end-of-sentence token excluded
    stopped_at_eos: list[bool]
    prompt_length: int  # T, padded columns included
    time_to_first_token: float = 0.0  # seconds: prefill + the first token
    seconds: float = 0.0  # the whole decode
    logits: torch.Tensor | None = None  # (B, steps, V) the logits each token was chosen from, when recorded


def select_next(logits: torch.Tensor, cfg: DecodingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids: argmax, or a top-p sample at the given temperature."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    if cfg.top_p < 1:
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= cfg.top_p  # mass before a token already >= p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)  # the most likely token always stays
    choice = torch.multinomial(sorted_probs, 1, generator=generator)  # (B, 1); multinomial renormalises
    return order.gather(-1, choice).squeeze(-1)


def decode(model, batch: UnderstandingBatch, cfg: DecodingConfig, eos_token_id: int | None, pad_token_id: int,
           generator: torch.Generator | None = None, streamer=None, record_logits: bool = False) -> DecodeResult:
    """Answer every row of a left-padded understanding batch (see the module docstring)."""
    try:
        return _decode(model, batch, cfg, eos_token_id, pad_token_id, generator, streamer, record_logits)
    finally:  # also on errors: a consumer iterating over the streamer must not wait forever
        if streamer is not None:
            streamer.end()


@torch.inference_mode()
def _decode(model, batch, cfg, eos_token_id, pad_token_id, generator, streamer, record_logits) -> DecodeResult:
    cfg.validate()
    B, T = batch.input_ids.shape
    if streamer is not None and B != 1:
        raise InputError(f"streaming needs a batch of one conversation, got {B}")
    context = model.config.language.max_position_embeddings
    if T >= context:
        raise InputError(f"the prompt is {T} tokens, leaving no room in the model's context of {context}")
    max_new = min(cfg.max_new_tokens, context - T)
    start = time.perf_counter()
    batch = batch.to(model.device, dtype=model.dtype)
    prompt = model.prepare_inputs_embeds(batch.input_ids, batch.pixel_values, batch.images_seq_mask,
                                         batch.images_emb_mask)  # (B, T, D)
    mask = batch.attention_mask  # (B, T) grows by one column a step
    positions = position_ids_from_left_padding(mask)  # (B, T)
    lm = model.language_model
    if streamer is not None:
        streamer.put(batch.input_ids.cpu())
    cached: dict = {}
    if cfg.use_cache:
        from transformers import DynamicCache

        cached = cache_kwargs(lm, DynamicCache(config=lm.config))  # {keyword: cache}, one for the whole answer
        logits = lm(inputs_embeds=prompt, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **cached).logits[:, -1]  # (B, V)
    else:
        logits = lm(inputs_embeds=prompt, attention_mask=mask, position_ids=positions).logits[:, -1]

    generated = torch.empty(B, 0, dtype=torch.long, device=model.device)  # (B, k)
    finished = torch.zeros(B, dtype=torch.bool, device=model.device)
    first_token_time, history = 0.0, []
    for k in range(max_new):
        if record_logits:
            history.append(logits.float().cpu())
        token = select_next(logits, cfg, generator)
        if eos_token_id is not None:
            token = token.masked_fill(finished, pad_token_id)  # finished rows only pad
            finished = finished | (token == eos_token_id)
        generated = torch.cat([generated, token[:, None]], dim=1)
        if k == 0:
            first_token_time = time.perf_counter() - start
        if streamer is not None and not bool(finished[0]):
            streamer.put(token.cpu())
        if bool(finished.all()) or k == max_new - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if cfg.use_cache:  # one new token against the cached keys/values
            logits = lm(input_ids=token[:, None], attention_mask=mask, position_ids=positions[:, -1:],
                        use_cache=True, **cached).logits[:, -1]
        else:  # reference: the prompt and every answer token, from scratch
            embeds = torch.cat([prompt, model.embed_tokens(generated)], dim=1)
            logits = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]

    tokens, stopped = [], []
    for row in generated.tolist():
        stop = eos_token_id in row if eos_token_id is not None else False
        tokens.append(row[: row.index(eos_token_id)] if stop else row)
        stopped.append(stop)
    return DecodeResult(tokens, stopped, T, first_token_time, time.perf_counter() - start,
                        torch.stack(history, dim=1) if record_logits else None)


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

        return cls(*load_model_and_processor(model_dir, device, dtype, quantize))

    def generate(self, conversations: Sequence[Sequence[Message]], config: DecodingConfig | None = None,
                 generator: torch.Generator | int | None = None, streamer=None, record_logits: bool = False,
                 **overrides) -> DecodeResult:
        """Decode the Assistant's next turn of each conversation (messages ending with a User turn)."""
        config = dataclasses.replace(config, **overrides) if config else DecodingConfig(**overrides)
        prompts = [[*c, {"role": "Assistant", "content": ""}] for c in conversations]
        batch = self.processor.build_understanding_batch(prompts)
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


# -- the LLaVA evaluation layout ----------------------------------------------------------------------


def read_llava_questions(question_file: str | os.PathLike, image_folder: str | os.PathLike | None) -> list[dict]:
    """Lines ``{"question_id", "image", "text"}`` (``image`` relative to ``image_folder``, optional)."""
    from .jsonl import read_jsonl

    path = Path(os.fspath(question_file))
    questions = []
    for number, _, item in read_jsonl(path, "question file"):
        if "question_id" not in item or not isinstance(item.get("text"), str):
            raise InputError(f"{path}:{number}: each line needs \"question_id\" and a string \"text\"")
        image = item.get("image")
        if image is not None:
            if image_folder is None:
                raise InputError(f"{path}:{number}: the question has an image; pass the image folder")
            image = Path(os.fspath(image_folder)) / image
            if not image.is_file():
                raise InputError(f"{path}:{number}: image file not found: {image}")
        questions.append({"question_id": item["question_id"], "text": item["text"], "image": image})
    if not questions:
        raise InputError(f"{path}: no questions")
    return questions


def answer_llava_questions(chat: JanusFlowChat, question_file, image_folder, answers_file, model_id: str,
                           batch_size: int = 8, config: DecodingConfig | None = None, show_progress: bool = True,
                           generator=None) -> int:
    """Answer a LLaVA question file in batches; each output line is
    ``{"question_id", "prompt", "text", "model_id"}`` (prompt = the question's text), in input order.
    LLaVA's ``<image>`` marker in a question becomes the image's place; otherwise the image comes first."""
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    config = config or DecodingConfig()
    config.validate()
    questions = read_llava_questions(question_file, image_folder)
    out = Path(os.fspath(answers_file))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f, tqdm(total=len(questions), desc="questions", unit="q",
                                                        disable=not show_progress) as bar:
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            conversations = [[user_message(q["text"].replace("<image>", IMAGE_TOKEN),
                                           [q["image"]] if q["image"] is not None else [])] for q in chunk]
            answers = chat.answer(conversations, config, generator)
            for q, answer in zip(chunk, answers):
                f.write(json.dumps({"question_id": q["question_id"], "prompt": q["text"], "text": answer,
                                    "model_id": model_id}, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(chunk))
    return len(questions)


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
