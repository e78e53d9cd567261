"""The model behind the server: a small interface, and its implementation on a model folder.

The server and the web page only call :class:`Engine`'s methods, so they can be tested on a
tiny random model and run on any checkpoint. :class:`ModelEngine` is the real one: the library's
``JanusFlowPipeline`` (generation) and ``JanusFlowChat`` (understanding) on one model folder.

Cancellation is cooperative: ``progress`` (called after every ODE step) and ``streamer.put``
(called for every new token) may raise, which stops the work at once; the server's worker uses
this to enforce its per-request timeout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from ..errors import CheckpointError

Progress = Callable[[int, int], None]  # (steps done, steps in all)
Turn = tuple[str, str]  # (question, answer) of an earlier turn of the same chat


@dataclass(frozen=True)
class DecodedTurn:
    prompt_tokens: int  # the prompt's tokens, image tokens included
    tokens: list[int]  # the answer's ids, the end-of-sentence token excluded
    stopped_at_eos: bool  # False: it ran out of max_new_tokens or of the model's context


class Engine(Protocol):
    default_candidates: int  # what ``candidates=None`` means: the model's image_generation_config.json
    model_id: str  # the name clients use for it (GET /v1/models)
    image_size: int  # side in pixels of the (square) images it draws

    def generate(self, prompt: str, num_images_per_prompt: int, num_inference_steps: int, guidance_scale: float,
                 seed: int, solver: str, progress: Progress | None = None,
                 candidates: int | None = None) -> list[Image.Image]:
        """``num_images_per_prompt`` images for one prompt; the same seed gives the same images. ``candidates`` > 1:
        each image is the best of up to that many by the model's self-check (``best_of``); None: the
        model's default."""

    def ask(self, image: Image.Image, question: str, max_new_tokens: int, streamer=None,
            history: Sequence[Turn] = ()) -> str:
        """The answer to ``question`` about ``image``, after the earlier ``history`` turns.

        ``streamer`` is a transformers streamer (``put(token_ids)``, ``end()``) fed as tokens come.
        """

    def stream_answer(self, image: Image.Image, question: str, max_new_tokens: int,
                      history: Sequence[Turn] = ()) -> Iterator[str]:
        """The answer as it grows, one piece of text at a time."""

    def decode_turn(self, conversation: Sequence[dict], system_prompt: str | None, config,
                    generator=None, streamer=None) -> DecodedTurn:
        """The next Assistant turn of ``conversation`` (``understanding`` messages, images inside, ending
        with a User turn) under ``system_prompt`` (None: the model's default) and a ``DecodingConfig``.
        ``streamer`` gets the prompt's ids, then each new token, and may raise to stop."""

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens left out."""

    def new_generator(self, seed: int):
        """A ``torch.Generator`` on the model's device, seeded."""


def conversation_for(image: Image.Image, question: str, history: Sequence[Turn] = ()) -> list[dict]:
    """The messages of a chat about one image, ending with the new question: the image goes with the
    first question, as in a chat where it was uploaded first."""
    from ..understanding import Conversation

    chat = Conversation()
    for i, (asked, answered) in enumerate(history):
        chat.add_user(asked, [image] if i == 0 else [])
        chat.add_assistant(answered)
    chat.add_user(question, [] if history else [image])
    return chat.messages


class ModelEngine:
    """:class:`~janusflow.pipeline.JanusFlowPipeline` and :class:`~janusflow.understanding.JanusFlowChat`
    sharing one model, greedy answers."""

    def __init__(self, pipe, chat, model_id: str = "janusflow"):
        self.pipe, self.chat, self.model_id = pipe, chat, model_id
        self.processor = pipe.processor
        pipe.set_progress_bar_config(disable=True)  # the server reports progress its own way

    @classmethod
    def from_folder(cls, model_dir: str | os.PathLike, vae_dir: str | os.PathLike | None = None,
                    device: str | None = None, dtype=None, model_id: str | None = None,
                    quantize: str | None = None) -> "ModelEngine":
        """Load ``model_dir`` (weights, config, tokenizer) and the VAE (``vae_dir`` or ``model_dir/vae``).
        ``model_id`` defaults to the folder's name; ``quantize``: None or "int8" (the LLM's linear layers,
        :mod:`janusflow.quantize`)."""
        from ..pipeline import JanusFlowPipeline
        from ..understanding import JanusFlowChat

        pipe = JanusFlowPipeline.from_pretrained(model_dir, vae=vae_dir, device=device, dtype=dtype, quantize=quantize)
        if pipe.vae is None:
            raise CheckpointError(f"{model_dir}: no vae/ folder; pass a VAE folder (a diffusers AutoencoderKL)")
        return cls(pipe, JanusFlowChat(pipe.model, pipe.processor), model_id or Path(model_dir).resolve().name)

    @property
    def default_candidates(self) -> int:
        return self.pipe.image_generation_config.candidates

    @property
    def image_size(self) -> int:
        """latent side x the VAE's upsampling (2 per decoder block after the first)."""
        latent_size = self.pipe.model.config.gen_vision.latent_size
        return latent_size * 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def generate(self, prompt: str, num_images_per_prompt: int, num_inference_steps: int, guidance_scale: float,
                 seed: int, solver: str, progress: Progress | None = None,
                 candidates: int | None = None) -> list[Image.Image]:
        from ..shapes.self_check import judge_for

        judge = judge_for(self.pipe, self.chat) if candidates is not None and candidates > 1 else None  # None: default
        return self.pipe(prompt, num_inference_steps=num_inference_steps, guidance_scale=float(guidance_scale),
                         num_images_per_prompt=num_images_per_prompt, generator=seed, solver=solver, output_type="pil",
                         callback=progress, candidates=candidates, judge=judge).images

    def ask(self, image: Image.Image, question: str, max_new_tokens: int, streamer=None,
            history: Sequence[Turn] = ()) -> str:
        from ..understanding import DecodingConfig

        return self.chat.answer([conversation_for(image, question, history)],
                                DecodingConfig(max_new_tokens=max_new_tokens), streamer=streamer)[0]

    def stream_answer(self, image: Image.Image, question: str, max_new_tokens: int,
                      history: Sequence[Turn] = ()) -> Iterator[str]:
        yield from stream_in_thread(self, image, question, max_new_tokens, history)

    def decode_turn(self, conversation: Sequence[dict], system_prompt: str | None, config,
                    generator=None, streamer=None) -> DecodedTurn:
        result = self.chat.generate([list(conversation)], config, generator=generator, streamer=streamer,
                                    system_prompt=system_prompt)
        return DecodedTurn(int(result.prompt_length), list(result.tokens[0]), bool(result.stopped_at_eos[0]))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.processor.decode(list(ids))

    def new_generator(self, seed: int):
        import torch

        return torch.Generator(device=self.pipe.device).manual_seed(seed)


def text_streamer(engine, timeout: float | None = None):
    """A ``TextIteratorStreamer`` for the engine's tokenizer (new tokens only, special tokens dropped)."""
    from transformers import TextIteratorStreamer

    return TextIteratorStreamer(engine.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                timeout=timeout)


def stream_in_thread(engine, image, question, max_new_tokens, history=()) -> Iterator[str]:
    """Run ``engine.ask`` in a thread and yield its text as it streams; its error is raised here."""
    streamer = text_streamer(engine)
    failure: list[BaseException] = []

    def run():
        try:
            engine.ask(image, question, max_new_tokens, streamer=streamer, history=history)
        except BaseException as e:  # re-raised in the caller's thread below
            failure.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if failure:
        raise failure[0]


def load_engine(model_dir: str | os.PathLike, vae_dir: str | os.PathLike | None = None,
                device: str | None = None, dtype=None, model_id: str | None = None,
                quantize: str | None = None) -> Engine:
    """The engine the command line serves."""
    return ModelEngine.from_folder(model_dir, vae_dir, device=device, dtype=dtype, model_id=model_id, quantize=quantize)
